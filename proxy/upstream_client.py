"""The gate's way out, as a protocol: what it needs of the network, and nothing more.

The gate judges and holds; how bytes reach an upstream (pooled h11 connections, the SSRF
guard's resolved addresses, TLS) is ``upstream.Upstream``'s business. Like httpx's transport
seam, anything with these two calls can stand in for it (another transport, a recorder).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from proxy.model import AgentRequest
    from proxy.upstream import OpenResponse


class UpstreamClient(Protocol):
    async def destination(self, host: str, port: int, *, fresh: bool = False) -> list[str]:
        """The addresses of ``host`` the SSRF guard allows; raises ``GateError`` when none."""
        ...

    async def open(self, req: AgentRequest, extra_headers: Iterable[tuple[str, str]] = (),
                   *, fresh: bool = False) -> OpenResponse:
        """Send ``req`` and return the response as it streams in; raises ``GateError``."""
        ...
