"""Web UI sessions: who the browser is, and proof that a state-changing call came from our page.

Theory of operation:

1. A session is a signed cookie, ``hitl_session = <payload>.<hmac>``: HMAC-SHA256 with a 32-byte
   key kept in ``<data_dir>/ui-session-key`` (created 0600 on first use), so sessions survive a
   restart and nothing secret rides in the cookie itself.
2. The payload names how the reviewer logged in (``m``: ``password`` | ``admin`` | ``header``) and a
   *binding* (``b``) that must still hold on every request: a digest of the user's current
   password hash (changing a password logs its sessions out), a digest of this process's admin
   token (a restart mints a new one, so old admin sessions end), or the user named by the trusted
   header on this very request. Groups always come from the current config or header, never
   from the cookie.
3. The CSRF token is ``HMAC(key, "csrf|" + sid)``: derived, never stored, different per session.
   Cookie sessions must send it as ``X-CSRF-Token`` (fetch) or the ``csrf`` form field on every
   state-changing method; a missing or wrong one is a 403 ``csrf_failed``.
4. Logout revokes the session id until the session would have expired anyway. Revocations are
   checked in memory (no file read per request) and kept in ``<data_dir>/ui-revoked-sessions``
   (JSON ``{sid: expiry}``, 0600, replaced atomically, pruned of expired ids on every write),
   read at start: a logged-out cookie stays refused after a restart. A write merges what the
   file already holds, so processes sharing the data dir do not drop each other's logouts.
5. Login failures are counted per client address and per network over a sliding minute, and
   per account with an exponential back-off (``LoginLimiter``): a password cannot be guessed at
   speed, from one address or from many. The admin login link works once: its use is recorded
   in the store, which every process serving the UI shares.
6. A trusted identity header sent twice is refused (``AmbiguousIdentity``), never "first wins".
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request

from proxy.config import Settings, UserCredential
from proxy.credentials import VerifiedCache, hash_secret
from proxy.errors import GateError
from proxy.files import private_dir
from proxy.model import Reviewer

log = logging.getLogger("hitl.review")

COOKIE = "hitl_session"
LOGIN_COOKIE = "hitl_login"  # double-submit token for the login form (login CSRF)
SESSION_SECONDS = 12 * 3600
KEY_BYTES = 32
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_TRACKED = 10_000  # addresses, networks, accounts the login limiter remembers
ACCOUNT_FREE_FAILURES = 5
ACCOUNT_BACKOFF = 30.0
ACCOUNT_BACKOFF_MAX = 15 * 60.0


class CsrfFailed(GateError):
    status, code = 403, "csrf_failed"


class AmbiguousIdentity(GateError):
    """The trusted header (or its groups header) came more than once: which one the auth
    proxy meant cannot be known, so neither is believed."""

    status, code = 400, "ambiguous_identity"


@dataclass(frozen=True, slots=True)
class Session:
    sid: str
    user: str
    method: str  # password | admin | header
    binding: str
    expires: float


def load_key(data_dir: Path) -> bytes:
    """The signing key, created with mode 0600 on first use, written whole or not at all: a
    temporary file, fsynced, then linked into place (two processes racing to create it both
    end up reading the one that won). A file too short to be a key (an empty or truncated one
    left by an older version's crash mid-write) is replaced: an HMAC with a known or tiny key
    lets anyone forge a session."""
    path = data_dir / "ui-session-key"
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = None
    if key is not None and len(key) >= KEY_BYTES:
        return key
    if key is not None:
        log.warning("%s holds %d bytes, too short to be a key; writing a new one (its sessions end)",
                    path, len(key))
    private_dir(data_dir)
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".ui-session-key.")  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        if key is None:
            with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
                os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    key = path.read_bytes()
    if len(key) < KEY_BYTES:  # only a file changed under us gets here
        raise OSError(f"{path} holds {len(key)} bytes, too short to be a session key; delete it")
    return key


def load_revoked(path: Path, now: float) -> dict[str, float]:
    """The revoked session ids still worth refusing; a missing or unreadable file is none."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(sid): float(exp) for sid, exp in data.items()
            if isinstance(exp, (int, float)) and exp > now}


def save_revoked(path: Path, revoked: dict[str, float]) -> None:
    """Write atomically: a crash mid-write leaves the old file, never half a one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(revoked, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class _Window:
    """Failures per key over a sliding window; at most ``limit`` before the key waits."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        now = self.clock()
        q = self._failures.setdefault(key, deque())
        while q and q[0] <= now - self.window:
            q.popleft()
        return q

    def blocked(self, key: str) -> int:
        q = self._recent(key)
        if len(q) < self.limit:
            if not q:
                self._failures.pop(key, None)  # keep the table small
            return 0
        return max(1, int(q[0] + self.window - self.clock()) + 1)

    def failed(self, key: str) -> None:
        self._recent(key).append(self.clock())
        if len(self._failures) > MAX_TRACKED:  # a flood of keys: forget the oldest
            self._failures.pop(next(iter(self._failures)))


class LoginLimiter:
    """Failed logins, counted three ways; any one of them can make the next attempt wait:

    - per client address: ``limit`` per ``window`` seconds;
    - per network (IPv4 /24, IPv6 /64): ``network_limit`` per window, because one guesser
      owns many addresses of a network (127.0.0.0/8 alone has 16 million);
    - per account name (known or not, so waiting does not list users): after
      ``ACCOUNT_FREE_FAILURES`` failures in a row, each further try waits ``ACCOUNT_BACKOFF``
      seconds doubling per failure, up to ``ACCOUNT_BACKOFF_MAX``; a successful login resets it.
    """

    def __init__(self, limit: int = 5, window: float = 60.0, network_limit: int = 20,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._address = _Window(limit, window, clock)
        self._network = _Window(network_limit, window, clock)
        self._accounts: dict[str, tuple[int, float]] = {}  # name → (failures in a row, last at)

    def blocked(self, address: str, account: str | None = None) -> int:
        """Seconds until this address (and account) may try again; 0 when it may now."""
        wait = max(self._address.blocked(address), self._network.blocked(_network(address)))
        if account is not None and account in self._accounts:
            count, last = self._accounts[account]
            if count >= ACCOUNT_FREE_FAILURES:
                backoff = min(ACCOUNT_BACKOFF * 2 ** (count - ACCOUNT_FREE_FAILURES), ACCOUNT_BACKOFF_MAX)
                remaining = last + backoff - self.clock()
                if remaining > 0:
                    wait = max(wait, int(remaining) + 1)
        return wait

    def failed(self, address: str, account: str | None = None) -> None:
        self._address.failed(address)
        self._network.failed(_network(address))
        if account is not None:
            count, _ = self._accounts.pop(account, (0, 0.0))
            self._accounts[account] = (count + 1, self.clock())
            if len(self._accounts) > MAX_TRACKED:
                self._accounts.pop(next(iter(self._accounts)))

    def succeeded(self, account: str) -> None:
        self._accounts.pop(account, None)


def _network(address: str) -> str:
    """The bucket an address shares with its neighbours: its /24 (IPv4) or /64 (IPv6)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class Sessions:
    def __init__(self, settings: Settings, admin_token: str | None, key: bytes | None = None) -> None:
        self.settings = settings
        self.key = key if key is not None else load_key(settings.data_dir)
        self.secure = settings.review.public_url.lower().startswith("https://")
        self._admin = _digest(admin_token) if admin_token else None
        self._admin_token = admin_token
        self._users: dict[str, UserCredential] = {u.name: u for u in settings.review.users}
        self._revoked_path = settings.data_dir / "ui-revoked-sessions"
        self._revoked = load_revoked(self._revoked_path, time.time())
        self._verified = VerifiedCache()
        self.limiter = LoginLimiter()

    # -- cookies -------------------------------------------------------------------------
    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self.key, payload.encode(), hashlib.sha256).digest())

    def issue(self, user: str, method: str, binding: str) -> tuple[Session, str]:
        session = Session(secrets.token_urlsafe(16), user, method, binding, time.time() + SESSION_SECONDS)
        payload = _b64(json.dumps({"sid": session.sid, "u": user, "m": method, "b": binding,
                                   "exp": int(session.expires)}, separators=(",", ":")).encode())
        return session, f"{payload}.{self._sign(payload)}"

    def parse(self, cookie: str | None) -> Session | None:
        if not cookie or cookie.count(".") != 1:
            return None
        payload, sig = cookie.split(".")
        if not hmac.compare_digest(sig.encode(), self._sign(payload).encode()):
            return None
        try:
            data = json.loads(_unb64(payload))
            session = Session(str(data["sid"]), str(data["u"]), str(data["m"]), str(data["b"]),
                              float(data["exp"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires <= time.time() or session.sid in self._revoked:
            return None
        return session

    def revoke(self, session: Session) -> None:
        now = time.time()
        merged = {**load_revoked(self._revoked_path, now), **self._revoked, session.sid: session.expires}
        self._revoked = {sid: exp for sid, exp in merged.items() if exp > now}
        try:
            self._revoked_path.parent.mkdir(parents=True, exist_ok=True)
            save_revoked(self._revoked_path, self._revoked)
        except OSError as exc:  # still logged out here; only a restart would forget it
            log.error("cannot record the logout in %s: %s", self._revoked_path, exc)

    def csrf_token(self, session: Session) -> str:
        return _b64(hmac.new(self.key, f"csrf|{session.sid}".encode(), hashlib.sha256).digest())

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest((token or "").encode(), self.csrf_token(session).encode())

    def cookie_kwargs(self) -> dict[str, object]:
        return {"httponly": True, "samesite": "lax", "secure": self.secure, "path": "/"}

    # -- logging in ----------------------------------------------------------------------
    async def check_password(self, name: str, password: str) -> tuple[Session, str] | None:
        user = self._users.get(name)
        if user is None:
            # Pay the same argon2 price for an unknown name, so timing does not list users.
            await self._verified.verify(await asyncio.to_thread(_dummy_hash), password)
            return None
        if not await self._verified.verify(user.password_hash, password):
            return None
        return self.issue(name, "password", _digest(user.password_hash))

    def check_admin_token(self, token: str) -> tuple[Session, str] | None:
        if not self._admin_token or not token:
            return None
        if not hmac.compare_digest(_digest(token), self._admin or ""):
            return None
        return self.issue("admin", "admin", self._admin or "")

    def header_user(self, request: Request) -> tuple[str, tuple[str, ...]] | None:
        """The reviewer named by the trusted header, when the peer is one of its proxies."""
        trusted = self.settings.review.trusted_header
        if trusted is None or request.client is None:
            return None
        try:
            peer = ipaddress.ip_address(request.client.host)
        except ValueError:
            return None
        if not any(peer in net for net in trusted.from_networks):
            return None
        for name in (trusted.user, trusted.groups):
            if name and len(request.headers.getlist(name)) > 1:
                raise AmbiguousIdentity(f"{name} was sent more than once; refusing to pick one")
        user = request.headers.get(trusted.user, "").strip()
        if not user:
            return None
        groups: tuple[str, ...] = ()
        if trusted.groups:
            raw = request.headers.get(trusted.groups, "")
            groups = tuple(g.strip() for g in raw.split(",") if g.strip())
        return user, groups

    # -- resolving a request -------------------------------------------------------------
    def reviewer_for(self, session: Session, request: Request) -> Reviewer | None:
        """The reviewer a valid session stands for now, or None when its binding broke."""
        if session.method == "password":
            user = self._users.get(session.user)
            if user is None or _digest(user.password_hash) != session.binding:
                return None
            return Reviewer(user.name, user.groups)
        if session.method == "admin":
            if self._admin is None or not hmac.compare_digest(session.binding, self._admin):
                return None
            return Reviewer("admin", ("admin",))
        if session.method == "header":
            named = self.header_user(request)
            if named is None or named[0] != session.user:
                return None
            return Reviewer(named[0], named[1])
        return None

    def current(self, request: Request) -> tuple[Session, Reviewer] | None:
        session = self.parse(request.cookies.get(COOKIE))
        if session is None:
            return None
        reviewer = self.reviewer_for(session, request)
        return None if reviewer is None else (session, reviewer)

    async def api_reviewer(self, request: Request) -> Reviewer | None:
        """The ``ReviewerAuth.session_reviewer`` hook: cookie session (+ CSRF on unsafe
        methods), or, for reads only, the trusted header itself."""
        found = self.current(request)
        if found is not None:
            session, reviewer = found
            if request.method in UNSAFE_METHODS and not self.csrf_ok(
                    session, request.headers.get("x-csrf-token")):
                raise CsrfFailed("missing or wrong X-CSRF-Token for this session; reload the page")
            return reviewer
        named = self.header_user(request)
        if named is not None:
            if request.method in UNSAFE_METHODS:
                # The auth proxy's own cookie rides along on cross-site posts too: a header alone
                # is no proof the page made this call.
                raise CsrfFailed("state-changing calls need the web UI's session and X-CSRF-Token")
            return Reviewer(named[0], named[1])
        return None


_dummy: list[str] = []


def _dummy_hash() -> str:
    if not _dummy:
        _dummy.append(hash_secret(secrets.token_urlsafe(16)))
    return _dummy[0]
