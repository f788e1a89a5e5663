"""Checking secrets without letting a stranger make the proxy do expensive work.

Two kinds of stored hash:

- ``sha256:<hex>`` for tokens the proxy mints (``hitl-proxy new-token``): 256 random bits,
  so a fast hash is as safe as a slow one (nobody can enumerate 2^256 guesses) and a
  look-up is one SHA-256 and one dictionary probe, whatever the number of tokens.
- ``$argon2id$...`` for passwords, and for tokens in configs written before (still
  accepted). argon2 costs tens of milliseconds and 64 MiB on purpose.

Minted tokens read ``hitl_<id>_<secret>``: the shape tells the proxy that the token can
only match a ``sha256:`` entry, so junk in that shape never reaches argon2, and the id
names the credential in logs without revealing it.

argon2 runs on one dedicated thread (never the loop's default executor, which DNS
resolution uses), with a bounded queue; a verified (hash, secret) pair is remembered so
an agent or tool presenting its credential on every request pays once. Failures are
counted per client address (``FailureLimiter``): past the limit, argon2 work for that
address stops until the window passes.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters

SHA256_PREFIX = "sha256:"
_MINTED = re.compile(r"hitl_[0-9a-f]{8}_[A-Za-z0-9_-]{43}")
_SHA256_HASH = re.compile(r"sha256:[0-9a-f]{64}")

# One thread: at most one argon2 run (64 MiB) at a time per process, whatever arrives.
_ARGON2 = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hitl-argon2")
MAX_QUEUED_ARGON2 = 16  # beyond this many waiting checks a new one is refused (fail closed)


def hash_secret(secret: str) -> str:
    """An argon2id hash: for passwords, and any secret a person chose."""
    return _hasher.hash(secret)


def token_hash(token: str) -> str:
    """The ``sha256:`` hash of a minted (high-entropy) token."""
    return SHA256_PREFIX + _sha256_hex(token)


def is_token_hash(value: str) -> bool:
    return bool(_SHA256_HASH.fullmatch(value))


def admin_token_path(data_dir: Path) -> Path:
    """Where `serve` writes the admin token it mints, for the local CLI to find."""
    return data_dir / "admin-token"


def new_token() -> str:
    """``hitl_<id>_<secret>``: 32 bits of id (to name it), 256 bits of secret."""
    return f"hitl_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"


def is_minted(token: str) -> bool:
    """A token in the minted shape: only a ``sha256:`` entry can match it."""
    return bool(_MINTED.fullmatch(token))


def token_id(token: str) -> str | None:
    return token[5:13] if is_minted(token) else None


def verify_now(hashed: str, secret: str) -> bool:
    if hashed.startswith(SHA256_PREFIX):
        return hmac.compare_digest(hashed, token_hash(secret))
    try:
        return _hasher.verify(hashed, secret)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


class VerifiedCache:
    """Verification with the expensive part remembered: successes only, so a guess always
    pays full price — which ``FailureLimiter`` bounds per address."""

    argon2_runs = 0  # process-wide count of argon2 verifications (tests, diagnostics)

    def __init__(self, max_entries: int = 4096) -> None:
        self._ok: dict[tuple[str, str], bool] = {}
        self._max = max_entries
        # Concurrent first presentations of one credential share a single argon2 run.
        self._inflight: dict[tuple[str, str], asyncio.Future[bool]] = {}

    def cached(self, hashed: str, secret: str) -> bool:
        """True when this pair verified before, or is a ``sha256:`` match (both cheap)."""
        if hashed.startswith(SHA256_PREFIX):
            return verify_now(hashed, secret)
        return (hashed, _sha256_hex(secret)) in self._ok

    async def verify(self, hashed: str, secret: str) -> bool:
        if hashed.startswith(SHA256_PREFIX):
            return verify_now(hashed, secret)
        key = (hashed, _sha256_hex(secret))
        if key in self._ok:
            return True
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        if len(self._inflight) >= MAX_QUEUED_ARGON2:
            return False  # a flood of distinct guesses: refuse rather than queue without bound
        loop = asyncio.get_running_loop()
        future = asyncio.ensure_future(loop.run_in_executor(_ARGON2, verify_now, hashed, secret))
        self._inflight[key] = future
        VerifiedCache.argon2_runs += 1
        try:
            ok = await asyncio.shield(future)
        finally:
            self._inflight.pop(key, None)
        if ok:
            if len(self._ok) >= self._max:
                self._ok.pop(next(iter(self._ok)))
            self._ok[key] = True
        return ok


class FailureLimiter:
    """Failed credential checks per client address in a sliding window.

    ``wait(address)`` is the number of seconds until the address may make the proxy
    verify another credential the expensive way (0 when it may now). Memory is bounded:
    at most ``max_addresses`` addresses are tracked, the oldest forgotten first.
    """

    def __init__(self, limit: int = 10, window: float = 60.0, max_addresses: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._max = max_addresses
        self._clock = clock
        self._fails: dict[str, collections.deque[float]] = {}

    def wait(self, address: str) -> float:
        times = self._fails.get(address)
        if times is None or len(times) < self.limit:
            return 0.0
        remaining = self.window - (self._clock() - times[0])
        if remaining <= 0:
            del self._fails[address]
            return 0.0
        return remaining

    def failed(self, address: str) -> None:
        times = self._fails.pop(address, None)  # re-inserted last: the dict stays in LRU order
        if times is None:
            times = collections.deque(maxlen=self.limit)
            if len(self._fails) >= self._max:
                self._fails.pop(next(iter(self._fails)))
        times.append(self._clock())
        self._fails[address] = times
