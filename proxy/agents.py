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
from proxy.credentials import VerifiedCache
from proxy.errors import ProxyAuthRequired
from proxy.model import ANONYMOUS, Agent


class AgentAuthenticator:
    def __init__(self, agents: tuple[AgentCredential, ...], require: bool) -> None:
        self._hashes = {a.id: a.token_hash for a in agents}
        self._require = require
        self._cache = VerifiedCache()

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
        if hashed is None or not token or not await self._cache.verify(hashed, token):
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
