"""Who is calling the review API.

A configured bearer token (``review.tokens``) acts as the reviewer its ``name`` says. With
no reviewer configured at all, ``serve`` mints an admin token at start (printed as a login
URL, and written to ``<data_dir>/admin-token`` for the local CLI). The web UI's session
cookie is resolved by the ``sessions`` hook, when the UI is mounted.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable

from starlette.requests import Request

from proxy.config import TokenCredential
from proxy.credentials import SHA256_PREFIX, FailureLimiter, VerifiedCache, is_minted, token_hash
from proxy.model import Reviewer

ADMIN = Reviewer("admin", ("admin",))


class ReviewerAuth:
    """Bearer tokens: ``sha256:`` entries are one dictionary probe; argon2 entries (configs
    from before minted tokens) are tried only for a token that is not in the minted shape,
    only while the caller's address is under its failure limit, and a success is cached."""

    def __init__(self, tokens: tuple[TokenCredential, ...], admin_token: str | None = None,
                 limiter: FailureLimiter | None = None) -> None:
        self._by_digest = {cred.token_hash: cred for cred in tokens if cred.token_hash.startswith(SHA256_PREFIX)}
        self._argon2 = tuple(cred for cred in tokens if not cred.token_hash.startswith(SHA256_PREFIX))
        self._admin_digest = hashlib.sha256(admin_token.encode()).digest() if admin_token else None
        self._cache = VerifiedCache()
        self._verified: dict[str, TokenCredential] = {}  # sha256 of a token argon2 accepted
        self.limiter = limiter or FailureLimiter()
        # Set by the web UI: resolves a session cookie (and checks CSRF on unsafe methods).
        self.session_reviewer: Callable[[Request], Awaitable[Reviewer | None]] | None = None

    def is_admin_token(self, token: str) -> bool:
        if self._admin_digest is None:
            return False
        return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self._admin_digest)

    async def check_token(self, token: str, address: str = "unknown") -> Reviewer | None:
        if self.is_admin_token(token):
            return ADMIN
        digest = token_hash(token)  # one SHA-256, then dictionary probes: cost independent of N
        cred = self._by_digest.get(digest) or self._verified.get(digest)
        if cred is not None:
            return Reviewer(cred.name, cred.groups)
        if is_minted(token) or not self._argon2 or self.limiter.wait(address):
            self.limiter.failed(address)
            return None
        for candidate in self._argon2:
            if await self._cache.verify(candidate.token_hash, token):
                if len(self._verified) >= 4096:
                    self._verified.pop(next(iter(self._verified)))
                self._verified[digest] = candidate
                return Reviewer(candidate.name, candidate.groups)
        self.limiter.failed(address)
        return None

    async def reviewer(self, request: Request) -> Reviewer | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            address = request.client.host if request.client else "unknown"
            return await self.check_token(token.strip(), address)
        if self.session_reviewer is not None:
            return await self.session_reviewer(request)
        return None
