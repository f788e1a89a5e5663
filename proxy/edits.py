"""What a reviewer's edit may change (docs/policies.md): checked when approving, so that a bad
edit is a 400 that changes nothing, never a record that fails at forward time.

Header names must be RFC 9110 tokens; values visible ASCII, spaces and tabs (no CR, LF or
NUL: no header injection). Hop-by-hop and framing headers are the proxy's to set, never a
reviewer's: Host comes from the URL, Content-Length from the body.
"""

from __future__ import annotations

import re

from proxy.errors import BadRequest
from proxy.headers import AGENT_HEADER, HOP_BY_HOP

TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
VALUE = re.compile(r"[\x20-\x7e\t]*")
FRAMING = frozenset({"host", "content-length", AGENT_HEADER})
MAX_EDITED_HEADERS = 100
MAX_VALUE = 8192


def check_header_edits(headers: dict[str, str | None]) -> None:
    """Raise ``BadRequest`` naming the first edit that may not be forwarded."""
    if len(headers) > MAX_EDITED_HEADERS:
        raise BadRequest(f"an edit may change at most {MAX_EDITED_HEADERS} headers")
    for name, value in headers.items():
        if not TOKEN.fullmatch(name):
            raise BadRequest(f"edit.headers: {name!r} is not a valid header name (letters, digits and "
                             "!#$%&'*+.^_`|~- only)")
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in FRAMING or lower.startswith("x-hitl-"):
            raise BadRequest(f"edit.headers: {name} is set by the proxy, not by a reviewer's edit")
        if value is None:
            continue
        if len(value) > MAX_VALUE or not VALUE.fullmatch(value):
            raise BadRequest(f"edit.headers: the value of {name} must be printable ASCII on one line "
                             f"(no CR, LF or NUL), at most {MAX_VALUE} characters")
