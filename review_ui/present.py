"""How the web UI shows a request: bodies pretty-printed, times as ages and countdowns.

Pure functions over the API's JSON records (``serialize.request_json``); the templates
escape everything they print, so nothing here needs to, or may, produce markup.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from proxy.redact import REDACTED

PREVIEW_CHARS = 4000  # what a body shows before "Show all"
FULL_CHARS = 1_000_000  # beyond this even "Show all" stops: the page would not be readable

STATUS_LABELS = {
    "pending": "Pending", "approved": "Approved", "forwarding": "Forwarding",
    "forwarded": "Approved · sent", "rejected": "Rejected", "expired": "Expired", "failed": "Failed",
}
# The badge colour family of each status: waiting, good, bad, neutral.
STATUS_TONE = {
    "pending": "wait", "approved": "good", "forwarding": "good", "forwarded": "good",
    "rejected": "bad", "expired": "muted", "failed": "bad",
}


@dataclass
class Body:
    kind: str  # empty | json | form | text | binary
    pretty: str = ""  # what is shown (full, capped at FULL_CHARS)
    preview: str = ""  # the first PREVIEW_CHARS of it
    truncated: bool = False  # preview is shorter than pretty
    capped: bool = False  # pretty itself was cut at FULL_CHARS
    form: list[tuple[str, str]] = field(default_factory=list)
    editable: str = ""  # the raw text a reviewer edits
    size: int = 0


def content_type(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def is_json_type(ctype: str) -> bool:
    return ctype == "application/json" or ctype.endswith("+json")


def present_body(text: str | None, size: int, headers: dict[str, str]) -> Body:
    if size == 0:
        return Body("empty")
    if text is None:
        return Body("binary", size=size)
    ctype = content_type(headers)
    kind, pretty, form = "text", text, []
    if is_json_type(ctype) or (not ctype and text.lstrip()[:1] in ("{", "[")):
        try:
            pretty = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
            kind = "json"
        except ValueError:
            kind = "text"  # says JSON, is not: show it as sent
    elif ctype == "application/x-www-form-urlencoded":
        form = parse_qsl(text, keep_blank_values=True)
        kind = "form"
        pretty = "\n".join(f"{k} = {v}" for k, v in form)
    capped = len(pretty) > FULL_CHARS
    shown = pretty[:FULL_CHARS]
    return Body(kind, shown, shown[:PREVIEW_CHARS], len(shown) > PREVIEW_CHARS, capped,
                form[:200], text, size)


@dataclass
class ToolCall:
    method: str | None
    tool: str | None
    arguments: str  # pretty JSON


def tool_calls(summary: dict[str, Any] | None) -> list[ToolCall]:
    """The MCP calls of a request (``request_json``'s ``mcp``), arguments pretty-printed."""
    if not summary:
        return []
    return [ToolCall(c["method"], c["tool"],
                     json.dumps(c["arguments"] if c["arguments"] is not None else {}, indent=2,
                                ensure_ascii=False)[:FULL_CHARS])
            for c in summary["calls"]]


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value)  # 3.11 reads a trailing Z


def duration(seconds: float) -> str:
    """A compact human duration: 45s, 12m, 3h 5m, 2d 4h."""
    s = int(abs(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def age(value: str | None, now: datetime | None = None) -> str:
    t = parse_time(value)
    if t is None:
        return ""
    return duration(((now or datetime.now(UTC)) - t).total_seconds()) + " ago"


def time_left(value: str | None, now: datetime | None = None) -> str:
    t = parse_time(value)
    if t is None:
        return ""
    left = (t - (now or datetime.now(UTC))).total_seconds()
    return "due now" if left <= 0 else duration(left) + " left"


def clock(value: str | None) -> str:
    """An RFC 3339 time as a short UTC reading; the page's script shows local time."""
    t = parse_time(value)
    return "" if t is None else t.strftime("%Y-%m-%d %H:%M:%S UTC")


def who_decided(item: dict[str, Any]) -> str:
    names = [d["reviewer"] for d in item.get("decisions", [])]
    return ", ".join(dict.fromkeys(names)) or ("(deadline)" if item["status"] == "expired" else "")


def editable_headers(headers: dict[str, str]) -> str:
    """The headers a reviewer may edit, one ``name: value`` a line; secrets stay out."""
    return "\n".join(f"{k}: {v}" for k, v in headers.items() if v != REDACTED)


def jinja_filters() -> dict[str, Any]:
    return {"age": age, "time_left": time_left, "clock": clock, "who_decided": who_decided,
            "status_label": lambda s: STATUS_LABELS.get(s, s), "tone": lambda s: STATUS_TONE.get(s, "muted")}
