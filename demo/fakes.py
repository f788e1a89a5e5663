"""Loopback fakes of the APIs the shipped policies know, for ``make demo``.

Each fake is a real HTTP server on its own loopback address (127.0.0.2, 127.0.0.3, ...):
the shipped policies tell services apart by host, and the demo's policy data names these
addresses as Stripe, SendGrid, Slack and the SQL gateway. Each answers the way its real API
does for the few calls the demo agent makes (the MCP server speaks JSON-RPC), and logs what reached it, so the demo shows that
a denied or rejected request never arrived.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

Answer = tuple[int, dict[str, Any] | None]


def _stripe(method: str, path: str, body: dict[str, Any]) -> Answer:
    if method == "GET" and path.startswith("/v1/customers/"):
        return 200, {"id": path.rsplit("/", 1)[1], "object": "customer", "email": "billing@customer.example.org"}
    if method == "POST" and path == "/v1/charges":
        return 200, {"id": f"ch_{secrets.token_hex(8)}", "object": "charge", "status": "succeeded",
                     "amount": int(body.get("amount", 0)), "currency": body.get("currency", "usd"),
                     "customer": body.get("customer")}
    return 404, {"error": {"type": "invalid_request_error", "message": f"Unrecognized request URL ({method} {path})"}}


def _sendgrid(method: str, path: str, body: dict[str, Any]) -> Answer:
    if method == "POST" and path == "/v3/mail/send":
        return 202, None
    return 404, {"errors": [{"message": "not found"}]}


def _slack(method: str, path: str, body: dict[str, Any]) -> Answer:
    if path == "/api/conversations.list":
        return 200, {"ok": True, "channels": [{"id": "C0ANNOUNCE", "name": "announcements"},
                                              {"id": "C0TEAM", "name": "team"}]}
    if path == "/api/chat.postMessage":
        return 200, {"ok": True, "channel": body.get("channel"), "ts": "1795000000.000100"}
    return 200, {"ok": False, "error": "unknown_method"}


def _sql(method: str, path: str, body: dict[str, Any]) -> Answer:
    if method == "POST" and path == "/query":
        statement = str(body.get("sql", ""))
        if statement.lower().startswith("select"):
            return 200, {"rows": [{"count": 1342}], "statement": statement}
        return 200, {"rows_affected": 0, "statement": statement}
    return 404, {"error": "not found"}


def _mcp(method: str, path: str, body: dict[str, Any]) -> Answer:
    """An MCP server on the streamable-HTTP transport, answering with JSON."""
    rpc = body.get("method")
    if method != "POST" or path != "/mcp" or not isinstance(rpc, str):
        return 405, {"error": "POST JSON-RPC 2.0 to /mcp"}
    if rpc == "tools/call":
        params = body.get("params") or {}
        text = f"{params.get('name')} done: {json.dumps(params.get('arguments'))}"
        return 200, {"jsonrpc": "2.0", "id": body.get("id"),
                     "result": {"content": [{"type": "text", "text": text}], "isError": False}}
    if rpc == "tools/list":
        tools = [{"name": n, "inputSchema": {"type": "object"}} for n in ("search_tickets", "send_sms")]
        return 200, {"jsonrpc": "2.0", "id": body.get("id"), "result": {"tools": tools}}
    return 200, {"jsonrpc": "2.0", "id": body.get("id"), "result": {}}


@dataclass(frozen=True)
class FakeApi:
    name: str  # what reviewers read, e.g. "Stripe"
    route: str  # the proxy route the agent uses: http://PROXY/<route>/...
    address: str  # its own loopback address
    policy_host: dict[str, Any]  # its row in the policies' config.hosts
    answer: Callable[[str, str, dict[str, Any]], Answer]


FAKES = (
    FakeApi("Stripe", "stripe", "127.0.0.2", {"use": "payments", "api": "stripe", "name": "Stripe (demo fake)"}, _stripe),
    FakeApi("SendGrid", "sendgrid", "127.0.0.3", {"use": "email", "api": "sendgrid", "name": "SendGrid (demo fake)"},
            _sendgrid),
    FakeApi("Slack", "slack", "127.0.0.4", {"use": "posting", "api": "slack", "name": "Slack (demo fake)"}, _slack),
    FakeApi("SQL gateway", "db", "127.0.0.5", {"use": "database", "api": "sql", "name": "the SQL gateway (demo fake)"},
            _sql),
    # MCP calls are judged by mcp.rego on any host; this row only names the server.
    FakeApi("MCP server", "mcp", "127.0.0.6", {"use": "mcp", "name": "the support MCP server (demo fake)"}, _mcp),
)


@dataclass
class RunningFake:
    api: FakeApi
    server: ThreadingHTTPServer
    received: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.api.address}:{self.server.server_address[1]}"


def start(api: FakeApi, log: Callable[[str], None]) -> RunningFake:
    holder: dict[str, RunningFake] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # the demo prints its own lines
            pass

        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            body: dict[str, Any] = {}
            if raw:
                if "json" in (self.headers.get("content-type") or ""):
                    try:
                        loaded = json.loads(raw)
                        body = loaded if isinstance(loaded, dict) else {}
                    except ValueError:
                        body = {}
                else:
                    body = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
            status, answer = api.answer(self.command, path, body)
            holder["fake"].received.append(f"{self.command} {path}")
            log(f"{self.command} {path}")
            data = json.dumps(answer).encode() if answer is not None else b""
            self.send_response(status)
            if answer is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    server = ThreadingHTTPServer((api.address, 0), Handler)
    server.daemon_threads = True
    fake = RunningFake(api, server)
    holder["fake"] = fake
    threading.Thread(target=server.serve_forever, daemon=True, name=f"fake-{api.route}").start()
    return fake
