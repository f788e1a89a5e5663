"""Header hygiene shared by both directions of the proxy (RFC 9110 §7.6.1)."""

from __future__ import annotations

from collections.abc import Iterable

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Our own credentials on reverse routes; never forwarded.
AGENT_HEADER = "x-hitl-agent"


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def strip_request_headers(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Drop hop-by-hop headers (and those the Connection header names), the agent's proxy
    credentials, Host (rebuilt from the URL) and Content-Length (recomputed from the body)."""
    items = list(headers)
    drop = HOP_BY_HOP | _connection_tokens(items) | {"host", "content-length", AGENT_HEADER}
    return tuple((n, v) for n, v in items if n.lower() not in drop)


def strip_response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop hop-by-hop headers and any X-HITL-* the upstream sent: an upstream must not be
    able to forge an approval header."""
    items = list(headers)
    drop = HOP_BY_HOP | _connection_tokens(items)
    return [(n, v) for n, v in items if n.lower() not in drop and not n.lower().startswith("x-hitl-")]


def to_wire(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Header names and values as the bytes that go on the wire.

    Headers are read as latin-1 (every byte maps to one character), so encoding them back
    as latin-1 passes an agent's or upstream's non-ASCII bytes (0xE9) through unchanged;
    h11 itself would encode text as ASCII and fail. A character beyond latin-1 can only
    come from the proxy's own text or a reviewer's edit: it is sent as UTF-8.
    """
    return [(_wire(n), _wire(v)) for n, v in headers]


def _wire(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")
