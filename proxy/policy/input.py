"""The policy input document (docs/policies.md), built from an ``AgentRequest``.

    {"request": {"method", "scheme", "host", "port", "path", "raw_path", "query", "headers",
                 "body", "body_text", "body_size", "body_truncated"},
     "agent": {"id", "address"},
     "time": {"unix", "iso"}}

Canonical forms, so that a policy comparing strings cannot be sidestepped by spelling:
``method`` is upper-cased, ``host`` lower-cased without a trailing dot, header names
lower-cased, ``path`` normalized (``proxy/urlnorm.py``; ``raw_path`` is the spelling the
agent sent). Secret headers arrive as ``"[redacted]"``.

A body larger than ``max_body`` (``policy.max_input_body_bytes``) is neither decoded nor
parsed: ``body`` and ``body_text`` are null, ``body_size`` its size, ``body_truncated``
true. Handing rego-cpp a document of megabytes costs seconds (every string is copied in
through a C call) and would stall every connection the process serves; a policy that
must see a body holds the requests whose body it could not read.
"""

from __future__ import annotations

import json
import time as _time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

from proxy.model import Agent, AgentRequest, utf8_text
from proxy.redact import redact_headers

MAX_INPUT_BODY = 256 * 1024  # policy.max_input_body_bytes' default


def build_input(
    request: AgentRequest, agent: Agent, now: float, secret_headers: Iterable[str] = (),
    max_body: int = MAX_INPUT_BODY,
) -> dict[str, Any]:
    headers = redact_headers(request.headers, secret_headers)
    truncated = len(request.body) > max_body
    body_text = None if truncated else utf8_text(request.body)
    return {
        "request": {
            "method": request.method.upper(),
            "scheme": request.scheme,
            "host": canonical_host(request.host),
            "port": request.port,
            "path": request.path,
            "raw_path": request.raw_path or request.path,
            "query": parse_qs(request.query_string, keep_blank_values=True),
            "headers": headers,
            "body": None if truncated else parse_body(request.header("content-type"), request.body,
                                                      body_text),
            "body_text": body_text,
            "body_size": len(request.body),
            "body_truncated": truncated,
        },
        "agent": {"id": agent.id, "address": agent.address},
        "time": _time_doc(now),
    }


def connect_input(host: str, port: int, agent: Agent, now: float) -> dict[str, Any]:
    """The input for ``CONNECT host:port``, asked before any byte of the tunnel is read."""
    return {
        "request": {"method": "CONNECT", "host": canonical_host(host), "port": port},
        "agent": {"id": agent.id, "address": agent.address},
        "time": _time_doc(now),
    }


def canonical_host(host: str) -> str:
    return host.lower().rstrip(".")


def parse_body(content_type: str | None, body: bytes, text: str | None = None) -> Any:
    """JSON (``application/json``, ``*+json``) or form data, else None; unparseable → None.

    Form data maps a name to its value, or to the list of values when it is repeated.
    """
    if not content_type or not body:
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        try:
            return json.loads(body, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            return None
    if media == "application/x-www-form-urlencoded":
        if text is None:
            return None
        try:
            fields = parse_qs(text, keep_blank_values=True, strict_parsing=False)
        except ValueError:
            return None
        return {name: values[0] if len(values) == 1 else values for name, values in fields.items()}
    return None



def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: Python accepts them, JSON does not


def _time_doc(now: float) -> dict[str, Any]:
    unix = int(now)
    return {"unix": unix, "iso": _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime(unix))}
