"""Checking secrets against argon2id hashes, without paying argon2 on every request.

argon2 is slow on purpose (tens of milliseconds). Agents present their token on every
request and reviewers' tools on every API call, so a verified (hash, token) pair is
remembered by the SHA-256 of the token: repeated presentations cost one hash lookup.
Failures are never cached, so a guess always pays full price; the argon2 work runs in a
thread so the event loop keeps serving while it does.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters


def hash_secret(secret: str) -> str:
    return _hasher.hash(secret)


def admin_token_path(data_dir: Path) -> Path:
    """Where `serve` writes the admin token it mints, for the local CLI to find."""
    return data_dir / "admin-token"


def new_token() -> str:
    return "hitl_" + secrets.token_urlsafe(32)


def verify_now(hashed: str, secret: str) -> bool:
    try:
        return _hasher.verify(hashed, secret)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


class VerifiedCache:
    def __init__(self, max_entries: int = 4096) -> None:
        self._ok: dict[tuple[str, str], bool] = {}
        self._max = max_entries
        # Concurrent first presentations of one credential share a single argon2 run.
        self._inflight: dict[tuple[str, str], asyncio.Future[bool]] = {}

    async def verify(self, hashed: str, secret: str) -> bool:
        key = (hashed, hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest())
        if key in self._ok:
            return True
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.ensure_future(asyncio.to_thread(verify_now, hashed, secret))
        self._inflight[key] = future
        try:
            ok = await asyncio.shield(future)
        finally:
            self._inflight.pop(key, None)
        if ok:
            if len(self._ok) >= self._max:
                self._ok.pop(next(iter(self._ok)))
            self._ok[key] = True
        return ok
