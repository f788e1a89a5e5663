"""Who is the agent? (docs/agent-contract.md)

``Proxy-Authorization: Basic id:token`` for forward-proxy requests, ``X-HITL-Agent: id:token``
for reverse routes. A configured agent must present its token; an id that is not configured
is refused too (otherwise any agent could claim any name in the policy's input). Without
credentials the agent is ``anonymous``, unless ``require_agent_auth`` is on.
"""

from __future__ import annotations

import base64
import binascii

from proxy.config import AgentCredential
from proxy.credentials import SHA256_PREFIX, FailureLimiter, VerifiedCache
from proxy.errors import ProxyAuthRequired
from proxy.model import ANONYMOUS, Agent


class AgentAuthenticator:
    def __init__(self, agents: tuple[AgentCredential, ...], require: bool,
                 limiter: FailureLimiter | None = None) -> None:
        self._hashes = {a.id: a.token_hash for a in agents}
        self._require = require
        self._cache = VerifiedCache()
        self._limiter = limiter or FailureLimiter()

    async def identify(self, address: str, proxy_authorization: str | None,
                       agent_header: str | None) -> Agent:
        if proxy_authorization is not None:
            agent_id, token = _parse_basic(proxy_authorization)
        elif agent_header is not None:
            agent_id, _, token = agent_header.partition(":")
        else:
            if self._require:
                raise ProxyAuthRequired("this proxy requires agent credentials: "
                                        "Proxy-Authorization: Basic base64(agent-id:token)")
            return Agent(ANONYMOUS, address)
        hashed = self._hashes.get(agent_id)
        # The cheap answers first: a sha256: entry, or a pair argon2 already verified. Only
        # then may a credential cost argon2 work, and only while the address is under its
        # failure limit — a known agent keeps working while a neighbour guesses.
        if hashed is not None and token and self._cache.cached(hashed, token):
            return Agent(agent_id, address)
        wait = self._limiter.wait(address)
        if wait:
            exc = ProxyAuthRequired(f"too many failed credential attempts from {address}; "
                                    f"retry in {int(wait) + 1} s")
            exc.retry_after = int(wait) + 1
            raise exc
        if hashed is None or not token or hashed.startswith(SHA256_PREFIX) \
                or not await self._cache.verify(hashed, token):
            self._limiter.failed(address)
            raise ProxyAuthRequired(f"unknown agent or wrong token for {agent_id!r}")
        return Agent(agent_id, address)


def _parse_basic(value: str) -> tuple[str, str]:
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic":
        raise ProxyAuthRequired("Proxy-Authorization must use the Basic scheme")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ProxyAuthRequired("Proxy-Authorization is not valid base64 of id:token") from exc
    agent_id, sep, token = decoded.partition(":")
    if not sep:
        raise ProxyAuthRequired("Proxy-Authorization must be Basic base64(agent-id:token)")
    return agent_id, token
