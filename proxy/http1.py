"""HTTP/1.1 on the agent-facing side: read a request, write a response, stream bodies.

``HTTPConnection`` wraps one asyncio stream pair. Requests are parsed by httptools (llhttp,
in C); responses are written by hand. It never decides anything; it turns bytes into
requests and back, maps protocol errors to ``BadRequest`` (400 / 431), and enforces time
limits on a slow or silent client.

h11 did this before; its pure-Python state machine cost about a tenth of the proxy's CPU per
request. What h11 refused is still refused: llhttp is strict (no obs-fold, no bare LF, no
Content-Length with Transfer-Encoding, no bad chunk sizes, no duplicate Content-Length, only
known methods), and ``_check`` adds what llhttp accepts and h11 did not: HTTP/0.9 and 2.x
request lines, a target outside visible ASCII, a transfer coding other than ``chunked``, an
HTTP/1.1 request without Host, and the 64 KiB head limit (431), measured on the bytes read.
Responses follow h11's framing rules: Content-Length when given (and held to), else chunked
(close-delimited for an HTTP/1.0 client), no body on HEAD, 1xx, 204, 304 or a 2xx to CONNECT,
and ``Connection: close`` whenever the connection will not be kept.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Iterable
from http import HTTPStatus

import httptools

from proxy.errors import BadRequest, BodyTooLarge, GateError
from proxy.headers import to_wire
from proxy.wire import TARGET, header_lines, read_within

MAX_HEADER_BYTES = 64 * 1024
READ_CHUNK = 64 * 1024
HEAD_TIMEOUT = 30.0  # a client has this long to finish sending a request head
IDLE_TIMEOUT = 75.0  # a keep-alive connection with no new request is closed after this
BODY_TIMEOUT = 60.0  # gap allowed between body chunks
LINGER_SECONDS = 2.0  # after an error mid-request: how long unread request bytes are drained
LINGER_BYTES = 1024 * 1024

_NO_BODY = frozenset({204, 304})


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class Request:
    """A request head: method, target and version as sent; header names lower-cased (as
    h11 gave them), values with surrounding whitespace stripped, in the agent's order."""

    __slots__ = ("headers", "http_version", "method", "target")

    def __init__(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                 http_version: str) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = http_version


def head_size(event: Request) -> int:
    """The bytes the request head took on the wire, at least: request line, each header as
    ``name: value CRLF``, the final CRLF (whitespace around values is not counted)."""
    size = len(event.method) + len(event.target) + len(b"  HTTP/1.1\r\n\r\n")
    for name, value in event.headers:
        size += len(name) + len(value) + 4
    return size


def _check(event: Request) -> None:
    """What llhttp accepts and h11 refused (see the module docstring)."""
    if event.http_version not in ("1.1", "1.0"):
        raise BadRequest(f"malformed HTTP request: unsupported HTTP version {event.http_version}")
    if not TARGET.fullmatch(event.target):
        raise BadRequest("malformed HTTP request: the request target must be visible ASCII")
    if head_size(event) > MAX_HEADER_BYTES:
        raise BadRequest(f"request head is over the {MAX_HEADER_BYTES}-byte limit", status=431)
    host = chunked = False
    for name, value in event.headers:
        if name == b"transfer-encoding":  # h11 took exactly one "chunked", nothing else
            if value.lower() != b"chunked" or chunked:
                raise BadRequest(f"malformed HTTP request: unsupported transfer coding {value[:100]!r}")
            chunked = True
        host = host or name == b"host"
    if not host and event.http_version == "1.1":
        raise BadRequest("malformed HTTP request: missing mandatory Host header")


class ClientGone(Exception):
    """The agent closed the connection or stopped sending."""


# Parser events, in the order of the bytes: a request head, a body chunk, the end of a
# message, a refusal (the parser stops there).
_DATA, _END = 1, 2


class HTTPConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._parser = httptools.HttpRequestParser(self)
        self._events: deque[Request | bytes | int | BadRequest] = deque()
        self._dead = False  # the parser refused something or a protocol switch is pending
        # The head being parsed: its parts, and the bytes it took on the wire so far.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_open = True  # between messages or inside a head (not in a body)
        self._head_bytes = 0
        self._tail = b""  # the last bytes read while in a head: a CRLFCRLF may span two reads
        self._in_message = False
        self._trailing = b""  # bytes after a CONNECT head: the tunnel's first bytes
        # The current exchange.
        self._their_done = False  # the request's end was read
        self._keep_alive = True
        self._http11 = True
        self._expect_continue = False
        self._connect = False  # the current request is a CONNECT
        self._switched = False  # a 2xx to CONNECT was sent: the socket now carries a tunnel
        self._our = 0  # 0 nothing sent, 1 head sent, 2 response complete
        self._framing = 0  # 0 no body, 1 Content-Length, 2 chunked, 3 until close
        self._remaining = 0
        self._must_close = False
        # A response head waits here for its first body bytes: one send() instead of two.
        self._pending = b""
        # Set when we answer an error before reading the whole request: see close().
        self._linger = False
        self._head_only = False  # the current request is HEAD: its answers carry no body
        self._peer: str | None = None

    @property
    def peer(self) -> str:
        if self._peer is None:  # asked for every request: looked up once per connection
            peer = self.writer.get_extra_info("peername")
            self._peer = str(peer[0]) if peer else "unknown"
        return self._peer

    @property
    def trailing_data(self) -> bytes:
        """Bytes that followed a CONNECT head (the agent did not wait for the 200)."""
        return self._trailing

    @property
    def switched(self) -> bool:
        """A 2xx answered a CONNECT: what follows on the socket is the tunnel's."""
        return self._switched

    # -- parsing -------------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        if self._dead:
            return
        if self._head_open:
            seen = self._tail + data
            end = seen.find(b"\r\n\r\n")
            # A head that began in the middle of a read (after a pipelined request) is counted
            # from this read on; its size by parts is checked too (_check).
            if end >= 0:
                self._head_bytes += end + 4 - len(self._tail)
            else:
                self._head_bytes += len(data)
            self._tail = seen[-3:]
            if self._head_bytes > MAX_HEADER_BYTES:
                self._refuse(BadRequest(f"request head is over the {MAX_HEADER_BYTES}-byte limit", status=431))
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0]) if exc.args else len(data)
            if self._parser.get_method() == b"CONNECT":  # the rest is the tunnel's, if one opens
                self._trailing = data[offset:]
                self._dead = True
            else:  # an Upgrade the proxy does not perform: parse on as plain HTTP/1.1
                self._parser = httptools.HttpRequestParser(self)
                self._feed(data[offset:])
        except httptools.HttpParserError as exc:
            self._refuse(BadRequest(f"malformed HTTP request: {exc}"))

    def _refuse(self, exc: BadRequest) -> None:
        self._events.append(exc)
        self._dead = True

    def on_message_begin(self) -> None:
        self._in_message = True
        self._url = b""
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value.strip(b" \t")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._events.append(Request(parser.get_method(), self._url, self._headers, parser.get_http_version()))
        self._url, self._headers = b"", []  # the head is the event's now: a held request keeps one copy
        self._head_open = False
        self._head_bytes = 0
        self._tail = b""

    def on_body(self, body: bytes) -> None:
        self._events.append(body)

    def on_message_complete(self) -> None:
        self._events.append(_END)
        self._in_message = False
        self._head_open = True

    async def _next_event(self, timeout: float, head: bool = False) -> Request | bytes | int:
        while not self._events:
            if head and self._in_message:
                timeout = HEAD_TIMEOUT  # a head began: no longer idle, HEAD_TIMEOUT per read
            try:
                data = await read_within(self.reader, self.writer, timeout, READ_CHUNK)
            except (TimeoutError, ConnectionError) as exc:
                raise ClientGone() from exc
            if not data:
                if self._in_message or (self._head_open and self._head_bytes):
                    # docs/agent-contract.md: a malformed request is 400 bad_request
                    raise BadRequest("malformed HTTP request: the client closed the connection "
                                     "in the middle of a request")
                raise ClientGone()
            self._feed(data)
        event = self._events.popleft()
        if isinstance(event, BadRequest):
            self._events.appendleft(event)  # the parser stopped there: every later call sees it
            raise BadRequest(event.message, status=event.status)
        return event

    async def receive_request(self) -> Request | None:
        """The next request's head, or None when the client closed the connection cleanly."""
        if self._our == 2 and self._their_done:  # the next exchange on a kept-alive connection
            self._our = 0
            self._their_done = False
        timeout = IDLE_TIMEOUT if not self._in_message and not self._events else HEAD_TIMEOUT
        self._head_only = False
        try:
            event = await self._next_event(timeout, head=True)
        except ClientGone:
            return None
        if not isinstance(event, Request):
            raise BadRequest(f"expected a request, got {type(event).__name__}")
        self._head_only = event.method == b"HEAD"
        self._connect = event.method == b"CONNECT"
        _check(event)
        self._http11 = keep_alive = event.http_version == "1.1"
        expect = False
        for name, value in event.headers:
            if name == b"connection" and b"close" in (t.strip() for t in value.lower().split(b",")):
                keep_alive = False
            elif name == b"expect" and value.lower() == b"100-continue":
                expect = self._http11
        self._keep_alive = keep_alive
        self._expect_continue = expect
        return event

    async def read_body(self, limit: int, declared: int | None) -> bytes:
        if declared is not None and declared > limit:
            raise BodyTooLarge(f"request body of {declared} bytes is over the {limit}-byte limit")
        if self._expect_continue and not self._events and self._our == 0:
            self._expect_continue = False
            await self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = b""
        while True:
            event = await self._next_event(BODY_TIMEOUT)
            if event is _END:
                self._their_done = True
                return body
            if isinstance(event, bytes):
                body += event
                if len(body) > limit:
                    raise BodyTooLarge(f"request body is over the {limit}-byte limit")
            else:  # pragma: no cover - the parser yields a head only after an end
                raise BadRequest(f"unexpected {type(event).__name__} in request body")

    # -- writing -------------------------------------------------------------------------
    async def _write(self, data: bytes) -> None:
        self.writer.write(data)
        try:
            await self.writer.drain()
        except ConnectionError as exc:
            raise ClientGone() from exc

    async def send_head(self, status: int, headers: Iterable[tuple[str, str]], reason: str = "") -> None:
        if self._our != 0:
            raise ClientGone("cannot send response: a response head was already sent")
        if "\r" in reason or "\n" in reason:
            raise ClientGone("cannot send response: a line break in the reason phrase")
        wire = to_wire(headers)
        length: bytes | None = None
        chunked = False
        for name, value in wire:
            lowered = name.lower()
            if lowered == b"content-length":
                length = value
            elif lowered == b"transfer-encoding":
                chunked = True
            elif lowered == b"connection" and b"close" in value.lower():
                self._keep_alive = False
        if self._connect and 200 <= status < 300:  # a tunnel: no framing, and sent at once
            self._switched = True
            self._our = 2
            await self._write(self._head(status, reason, wire))
            return
        if status < 200 or status in _NO_BODY:
            self._framing = 0
        elif chunked or length is None:
            wire = [(n, v) for n, v in wire if n.lower() not in (b"content-length", b"transfer-encoding")]
            if self._http11:
                wire.append((b"Transfer-Encoding", b"chunked"))
                self._framing = 2
            else:  # an HTTP/1.0 client: the body ends with the connection
                self._framing = 3
                self._must_close = not self._head_only
        else:
            if not length.isdigit():
                raise ClientGone(f"cannot send response: bad Content-Length {length[:40]!r}")
            self._framing = 1
            self._remaining = int(length)
        if self._head_only:
            self._framing = 0
        if not self._keep_alive or self._must_close or self._connect:
            self._must_close = True
            wire = [(n, v) for n, v in wire if n.lower() != b"connection"]
            wire.append((b"Connection", b"close"))
        self._pending = self._head(status, reason, wire)
        self._our = 1

    @staticmethod
    def _head(status: int, reason: str, wire: list[tuple[bytes, bytes]]) -> bytes:
        try:
            lines = header_lines(wire)
        except ValueError as exc:
            raise ClientGone(f"cannot send response: {exc}") from exc
        return b"".join((b"HTTP/1.1 %d " % status, reason.encode("latin-1", "replace"), b"\r\n", lines, b"\r\n"))

    async def send_data(self, data: bytes) -> None:
        if not data:
            return
        if self._our != 1:
            raise ClientGone("cannot send response: body data outside a response")
        framing = self._framing
        if framing == 1:
            if len(data) > self._remaining:
                raise ClientGone("cannot send response: too much data for the declared Content-Length")
            self._remaining -= len(data)
        elif framing == 2:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        elif framing == 0:
            raise ClientGone("cannot send response: this response has no body")
        if self._pending:
            data = self._pending + data
            self._pending = b""
        await self._write(data)

    async def end(self) -> None:
        if self._our != 1:
            raise ClientGone("cannot send response: no response to end")
        if self._framing == 1 and self._remaining:
            raise ClientGone("cannot send response: too little data for the declared Content-Length")
        data = self._pending + (b"0\r\n\r\n" if self._framing == 2 else b"")
        self._pending = b""
        self._our = 2
        if data:
            await self._write(data)

    async def send_error(self, exc: GateError, request_id: str) -> None:
        body = json.dumps(exc.body(request_id)).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   ("X-HITL-Request-Id", exc.request_id or request_id)]
        if exc.retry_after is not None:
            headers.append(("Retry-After", str(exc.retry_after)))
        headers += exc.headers
        if exc.status == 407:
            headers.append(("Proxy-Authenticate", 'Basic realm="hitl-proxy"'))
        if exc.status in (400, 413, 431) or not self._their_done or self._connect:
            headers.append(("Connection", "close"))
            self._linger = not self._their_done or self._connect
        await self.send_head(exc.status, headers, _phrase(exc.status))
        if not self._head_only:  # an answer to HEAD has no body (RFC 9110 §9.3.2)
            await self.send_data(body)
        await self.end()

    async def _drain_unread(self) -> None:
        """A lingering close: after an error answered mid-request, stop writing and read
        (and discard) what the client still sends, for a bounded time and size. Closing
        with unread bytes makes the kernel send a reset, which can destroy the error
        response before the client reads it. Nothing read here is ever parsed."""
        try:
            if self.writer.can_write_eof():
                self.writer.write_eof()
            async with asyncio.timeout(LINGER_SECONDS):
                drained = 0
                while drained < LINGER_BYTES:
                    data = await self.reader.read(READ_CHUNK)
                    if not data:
                        return
                    drained += len(data)
        except (TimeoutError, ConnectionError, OSError, RuntimeError):
            return

    @property
    def can_send(self) -> bool:
        return self._our == 0

    @property
    def reusable(self) -> bool:
        return (self._our == 2 and self._their_done and self._keep_alive and not self._must_close
                and not self._switched)

    async def close(self) -> None:
        if self._linger:
            await self._drain_unread()
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (ConnectionError, TimeoutError, OSError):
            pass
