"""What the gate answers the data plane with, for a request it let through."""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.relay import Stream


@dataclass(slots=True)
class Reply:
    """What the data plane sends back for a request the gate let through."""

    request_id: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes | None = None  # a stored response (held requests, replays)
    stream: Stream | None = None  # a live upstream response (allowed requests, relayed holds)
    approved_by: tuple[str, ...] = ()
    replayed: bool = False
    extra_headers: list[tuple[str, str]] = field(default_factory=list)
    sent: bytes | None = None  # the body forwarded for a held request (to re-address MCP answers)

    def gate_headers(self) -> list[tuple[str, str]]:
        out = [("X-HITL-Request-Id", self.request_id)]
        if self.approved_by:
            out.append(("X-HITL-Approved-By", ", ".join(self.approved_by)))
        if self.replayed:
            out.append(("X-HITL-Replayed", "true"))
        return out + self.extra_headers
