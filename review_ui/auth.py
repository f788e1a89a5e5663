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
from proxy.credentials import VerifiedCache
from proxy.model import Reviewer

ADMIN = Reviewer("admin", ("admin",))


class ReviewerAuth:
    def __init__(self, tokens: tuple[TokenCredential, ...], admin_token: str | None = None) -> None:
        self._tokens = tokens
        self._admin_digest = hashlib.sha256(admin_token.encode()).digest() if admin_token else None
        self._cache = VerifiedCache()
        # Set by the web UI: resolves a session cookie (and checks CSRF on unsafe methods).
        self.session_reviewer: Callable[[Request], Awaitable[Reviewer | None]] | None = None

    def is_admin_token(self, token: str) -> bool:
        if self._admin_digest is None:
            return False
        return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self._admin_digest)

    async def check_token(self, token: str) -> Reviewer | None:
        if self.is_admin_token(token):
            return ADMIN
        for cred in self._tokens:
            if await self._cache.verify(cred.token_hash, token):
                return Reviewer(cred.name, cred.groups)
        return None

    async def reviewer(self, request: Request) -> Reviewer | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return await self.check_token(token.strip())
        if self.session_reviewer is not None:
            return await self.session_reviewer(request)
        return None
