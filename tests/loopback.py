"""One base for the tests' recording servers: a real HTTP/1.1 server on 127.0.0.1 (plain, or
TLS with a test CA's certificate), a thread per connection, that hands every request, whatever
its method, to the subclass's ``handle``. The fakes of upstreams, webhooks, Slack and the
agents' APIs are each a ``handle`` over this."""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class LoopbackServer:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.lock = threading.Lock()
        self.release = threading.Event()  # a fake that stalls waits on this; close() sets it
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _dispatch(self) -> None:
                outer.handle(self)

            def __getattr__(self, name: str) -> Any:
                # do_GET, do_POST, any method: the proxy under test may forward any of them.
                if name.startswith("do_"):
                    return self._dispatch
                raise AttributeError(name)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True,
                                                 do_handshake_on_connect=False)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def read_body(request: BaseHTTPRequestHandler) -> bytes:
    length = int(request.headers.get("Content-Length") or 0)
    return request.rfile.read(length) if length else b""


def headers_of(request: BaseHTTPRequestHandler) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


def answer(request: BaseHTTPRequestHandler, status: int, body: bytes | dict[str, Any] | list[Any],
           content_type: str = "application/json", headers: dict[str, str] | None = None) -> None:
    """A complete response with Content-Length; no body bytes on an answer to HEAD."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    request.send_response(status)
    request.send_header("Content-Type", content_type)
    request.send_header("Content-Length", str(len(payload)))
    for name, value in (headers or {}).items():
        request.send_header(name, value)
    request.end_headers()
    if request.command != "HEAD":
        request.wfile.write(payload)
