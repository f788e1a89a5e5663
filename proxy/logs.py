"""Logging: human-readable on a terminal, JSON lines otherwise (or as configured), and the
one access line per agent request.

The access line (logger ``hitl.access``) is written once per request, after the reply, by
the listener (``server.py``). Its fields come from whoever knows them: the listener knows the
method, target and status; the gate knows the agent, the action and the rule. Rather than
thread a record through every call, the listener opens an ``Access`` for the request in a
context variable and the gate ``note``s into it — request-scoped, per asyncio task, so
concurrent connections never mix lines.

What the line never holds: header values, bodies, query strings (API keys travel in them)
or the agent-facing message (a policy may quote the body in it). Only the ``error`` code.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

from proxy.config import LogSettings
from proxy.store.records import new_id

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

access_log = logging.getLogger("hitl.access")
decision_log = logging.getLogger("hitl.decision")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(settings: LogSettings) -> None:
    fmt = settings.format
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
    logging.getLogger("uvicorn.error").setLevel(max(logging.WARNING, root.level))
    # httpx logs every request it sends at INFO, URL and query included: keep it quiet.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))


# -- the access line ----------------------------------------------------------------------

_current: ContextVar[Access | None] = ContextVar("hitl_access", default=None)


class Access:
    """One agent request's access line, filled in by the listener and the gate."""

    __slots__ = (
        "_token",
        "action",
        "agent",
        "client",
        "error",
        "host",
        "method",
        "path",
        "request_id",
        "rule",
        "started",
        "status",
    )

    def __init__(self, client: str) -> None:
        self.started = time.perf_counter()
        self.client = client
        self.request_id: str | None = None
        self.agent: str | None = None
        self.method: str | None = None
        self.host: str | None = None
        self.path: str | None = None
        self.action: str | None = None
        self.rule: str | None = None
        self.status: int | None = None
        self.error: str | None = None
        self._token: Token[Access | None] = _current.set(self)

    def request(self, method: str, target: str) -> None:
        """The request head as received; the gate refines host and path once parsed."""
        self.method = method
        if target.startswith("/"):
            self.path = target.split("?", 1)[0]
        elif method == "CONNECT":
            self.host = target
        else:  # absolute form: scheme://authority/path?query
            rest = target.split("://", 1)[-1]
            authority, slash, path = rest.partition("/")
            self.host = authority.rpartition("@")[2]
            self.path = "/" + path.split("?", 1)[0] if slash else "/"

    def finish(self, request_id: str | None = None) -> None:
        """Write the line (when a request was read at all) and close the context. A request
        that got no id (the client went away before the gate named it) gets one here, and
        only when the line is written."""
        _current.reset(self._token)
        if self.method is None or not access_log.isEnabledFor(logging.INFO):
            return
        fields = {
            "request_id": self.request_id or request_id or new_id(), "client": self.client, "agent": self.agent,
            "method": self.method, "host": self.host, "path": self.path, "action": self.action,
            "rule": self.rule, "status": self.status, "error": self.error,
            "latency_ms": round((time.perf_counter() - self.started) * 1000, 3),
        }
        outcome = f"{self.action}/{self.rule}" if self.action else (self.error or "-")
        access_log.info("%s %s %s%s -> %s %s %.1fms", self.agent or "-", self.method, self.host or "",
                        self.path or "", self.status if self.status is not None else "-", outcome,
                        fields["latency_ms"], extra=fields)


def note(**fields: Any) -> None:
    """Add fields to the current request's access line (no-op outside a request)."""
    rec = _current.get()
    if rec is not None:
        for key, value in fields.items():
            setattr(rec, key, value)


def log_decision(request_id: str, outcome: str, rule: str, agent: str, actor: str,
                 wait_seconds: float | None = None) -> None:
    """One structured line per decision on a held request (``hitl.decision``)."""
    decision_log.info("%s %s by %s (rule %s, agent %s)", request_id, outcome, actor, rule, agent,
                      extra={"request_id": request_id, "outcome": outcome, "rule": rule, "agent": agent,
                             "actor": actor, "wait_seconds": None if wait_seconds is None
                             else round(wait_seconds, 3)})
