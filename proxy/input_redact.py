"""A policy input document with its secrets taken out, fit to be kept (the decision log).

The gate hands the policy an input whose fixed secret headers are already ``"[redacted]"``
(``policy/input.py``). What it keeps for later (``hitl-proxy policy replay``) must hold
less still, because it outlives the request:

* headers and query parameters *named* like secrets (``token``, ``secret``, ``password``,
  ``signature``, ``credential``, ``api-key``/``apikey``/``api_key``, ``key``, ``session``,
  and the configured ``proxy.secret_headers``) are ``"[redacted]"``;
* in a parsed body (JSON or form) and in ``input.mcp`` (tool arguments), every value under a
  key named like a secret is ``"[redacted]"``, at any depth;
* ``body_text`` is kept only as a summary: the same fields redacted in the text
  (``"password": "..."``, ``password=...``), cut to ``SUMMARY_BYTES``; a parsed body whose
  redacted JSON is larger than that is dropped (the row says ``body_cut``).

A policy replayed over such a document sees what it saw, minus the secrets and the tail of
big bodies; ``policy replay`` says how many documents were cut.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

from proxy.redact import REDACTED, SECRET_FIELD_WORDS, SECRET_QUERY_NAMES, is_secret_field

SUMMARY_BYTES = 4096
_WORDS = "|".join(re.escape(w) for w in SECRET_FIELD_WORDS)
_EXACT = "|".join(re.escape(w) for w in sorted(SECRET_QUERY_NAMES))
# A secret-named field in text: JSON ("password": "x") or form/query (password=x).
_TEXT_FIELD = re.compile(
    rf'(?i)("(?:[^"]*(?:{_WORDS})[^"]*|{_EXACT})"\s*:\s*)("(?:[^"\\]|\\.)*"|[^,}}\]\s]+)'
    rf'|((?:^|(?<=[&?;\s]))(?:[\w.-]*(?:{_WORDS})[\w.-]*|{_EXACT})=)([^&\s]*)')


def secret_name(name: str, extra: Iterable[str] = ()) -> bool:
    """Whether a header, query parameter or body field of this name holds a secret (the
    classes of ``proxy.redact``, the one place that knows them)."""
    return _secret_name(name, tuple(extra))


@functools.lru_cache(maxsize=4096)  # the same header and field names come again and again
def _secret_name(name: str, extra: tuple[str, ...]) -> bool:
    return is_secret_field(name, extra)


def scrub(value: Any, extra: Iterable[str] = ()) -> Any:
    """``value`` with every value under a secret-named key replaced, at any depth."""
    if isinstance(value, dict):
        return {k: REDACTED if secret_name(str(k), extra) else scrub(v, extra) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, extra) for v in value]
    return value


def _may_hold_secret(text: str) -> bool:
    """A cheap test before the regex (which costs tens of µs on a body): any secret word?"""
    low = text.lower()
    return any(w in low for w in SECRET_FIELD_WORDS) or any(w in low for w in SECRET_QUERY_NAMES)


def scrub_text(text: str) -> str:
    if not _may_hold_secret(text):
        return text
    def repl(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            return f'{m.group(1)}"{REDACTED}"'
        return f"{m.group(3)}{REDACTED}"

    return _TEXT_FIELD.sub(repl, text)


def redact_input(doc: dict[str, Any], extra: Iterable[str] = ()) -> tuple[dict[str, Any], bool]:
    """(the document as it may be kept, whether its body was cut to the summary)."""
    extra = tuple(extra)
    out = {k: v for k, v in doc.items() if k != "request"}
    for key in ("mcp", "mcp_calls"):  # tool arguments (the decision log keeps every call's)
        if key in out:
            out[key] = scrub(out[key], extra)
    req = doc.get("request")
    cut = False
    if isinstance(req, dict):
        r = dict(req)
        if isinstance(r.get("headers"), dict):
            r["headers"] = {k: REDACTED if secret_name(k, extra) else v for k, v in r["headers"].items()}
        if isinstance(r.get("query"), dict):
            r["query"] = {k: [REDACTED for _ in v] if secret_name(k, extra) and isinstance(v, list)
                          else (REDACTED if secret_name(k, extra) else v) for k, v in r["query"].items()}
        if r.get("body") is not None:
            # The raw size bounds the parsed body's: no second serialization to measure it.
            big = int(r.get("body_size") or 0) > SUMMARY_BYTES
            r["body"] = None if big else scrub(r["body"], extra)
            cut = cut or big
        if isinstance(r.get("body_text"), str):
            text = scrub_text(r["body_text"])
            raw = text.encode()
            if len(raw) > SUMMARY_BYTES:
                text, cut = raw[:SUMMARY_BYTES].decode("utf-8", "ignore"), True
            r["body_text"] = text
        out["request"] = r
    return out, cut
