"""Secrets are never shown: not to the policy, the review API, the UI, the audit or the CLI.

The README (Security model) names the classes, and this module is the one place that knows them:

- headers: ``authorization``, ``proxy-authorization``, ``cookie``, ``set-cookie``,
  ``x-api-key``, any name containing ``token``, ``secret``, ``api-key``/``apikey``,
  ``password``, ``signature`` or ``credential``, and the names configured in
  ``proxy.secret_headers``;
- query-string values whose name looks like a secret (``key``, ``token``, ``secret``,
  ``password``, ``signature``, ``api_key``, ``access_token``, ...), in every URL shown.

The raw values stay only on the held request itself, for as long as it needs them to be
forwarded (``store/sql.py``, Rule 4). Everything shown says ``REDACTED`` instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote_plus, urlsplit, urlunsplit

REDACTED = "[redacted]"

SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)
# A header whose name contains one of these is a secret (x-auth-token, x-goog-api-key, ...).
SECRET_HEADER_PARTS = ("token", "secret", "api-key", "apikey", "password", "signature", "credential")
# Query parameter names, lower-cased with "-" read as "_": a name containing one of these
# parts, or equal to one of the exact names, or ending in "_key", is a secret.
SECRET_QUERY_PARTS = ("token", "secret", "password", "passwd", "signature", "credential", "api_key",
                      "apikey", "private_key", "access_key", "session")
SECRET_QUERY_NAMES = frozenset({"key", "sig", "auth", "pwd", "pass", "jwt", "hmac", "cvc", "cvv"})
# Words that mark a field of a body or input document (any of the above) as a secret.
SECRET_FIELD_WORDS = tuple(dict.fromkeys((*SECRET_HEADER_PARTS, *SECRET_QUERY_PARTS, "cookie", "authorization")))


class Redactor:
    """The header classes plus the configured names (``proxy.secret_headers``)."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.names = SECRET_HEADERS | {e.lower() for e in extra}

    def is_secret(self, name: str) -> bool:
        name = name.lower()
        return name in self.names or any(part in name for part in SECRET_HEADER_PARTS)

    def headers(self, headers: Iterable[tuple[str, str]]) -> dict[str, str]:
        """Lower-cased name → value; repeated headers joined with ", "; secrets as REDACTED."""
        out: dict[str, str] = {}
        for name, value in headers:
            key = name.lower()
            if self.is_secret(key):
                out[key] = REDACTED
            elif key in out:
                out[key] = f"{out[key]}, {value}"
            else:
                out[key] = value
        return out


def is_secret(name: str, extra: Iterable[str] = ()) -> bool:
    """Whether a header name (any case) is one whose value must not be shown."""
    return Redactor(extra).is_secret(name)


def redact_headers(headers: Iterable[tuple[str, str]], extra: Iterable[str] = ()) -> dict[str, str]:
    return Redactor(extra).headers(headers)


def is_secret_param(name: str) -> bool:
    """Whether a query parameter's value must not be shown (``api_key``, ``X-Amz-Signature``...)."""
    key = name.lower().replace("-", "_").strip()
    return (key in SECRET_QUERY_NAMES or key.endswith("_key")
            or any(part in key for part in SECRET_QUERY_PARTS))


def is_secret_field(name: str, extra: Iterable[str] = ()) -> bool:
    """Whether a header, query parameter or body field of this name holds a secret."""
    return Redactor(extra).is_secret(name) or is_secret_param(name)


def redact_query(query: str) -> str:
    """``a=1&token=abc`` → ``a=1&token=[redacted]``; everything else kept byte for byte."""
    if not query:
        return query
    parts = []
    for item in query.split("&"):
        name, eq, _value = item.partition("=")
        if eq and is_secret_param(unquote_plus(name)):
            parts.append(f"{name}={REDACTED}")
        else:
            parts.append(item)
    return "&".join(parts)


def redact_url(url: str) -> str:
    """A URL (absolute, or a path with a query) as it may be shown: secret query values and
    any password in the authority redacted."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:{REDACTED}@{hostport}" if ":" in userinfo else netloc
    return urlunsplit(parts._replace(netloc=netloc, query=redact_query(parts.query)))

