"""Secret headers are never shown: not to the policy, the review API, the UI or the audit.

The fixed set is below; operators may add names in the config. The raw values stay
only on the held request itself, for as long as it needs them to be forwarded.
"""

from __future__ import annotations

from collections.abc import Iterable

SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)

REDACTED = "[redacted]"


def is_secret(name: str, extra: Iterable[str] = ()) -> bool:
    """Whether a header name (any case) is one whose value must not be shown."""
    name = name.lower()
    return name in SECRET_HEADERS or any(name == e.lower() for e in extra)


def redact_headers(headers: Iterable[tuple[str, str]], extra: Iterable[str] = ()) -> dict[str, str]:
    """Lower-cased name → value; repeated headers joined with ", "; secrets as "[redacted]"."""
    secret = SECRET_HEADERS | {e.lower() for e in extra}
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if key in secret:
            out[key] = REDACTED
        elif key in out:
            out[key] = f"{out[key]}, {value}"
        else:
            out[key] = value
    return out
