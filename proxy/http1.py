"""h11 glue for the agent-facing side: read a request, write a response, stream bodies.

``HTTPConnection`` wraps one asyncio stream pair and one ``h11.Connection``. It never
decides anything; it turns bytes into events and back, maps h11's protocol errors to
``BadRequest`` (400 / 431), and enforces time limits on a slow or silent client.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

import h11

from proxy.errors import BadRequest, BodyTooLarge, GateError
from proxy.headers import to_wire

MAX_HEADER_BYTES = 64 * 1024
READ_CHUNK = 64 * 1024
HEAD_TIMEOUT = 30.0  # a client has this long to finish sending a request head
IDLE_TIMEOUT = 75.0  # a keep-alive connection with no new request is closed after this
BODY_TIMEOUT = 60.0  # gap allowed between body chunks
LINGER_SECONDS = 2.0  # after an error mid-request: how long unread request bytes are drained
LINGER_BYTES = 1024 * 1024


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def head_size(event: h11.Request) -> int:
    """The bytes the request head took on the wire, at least: request line, each header as
    ``name: value CRLF``, the final CRLF (h11 strips optional whitespace, so never more)."""
    size = len(event.method) + len(event.target) + len(b"  HTTP/1.1\r\n\r\n")
    for name, value in event.headers.raw_items():
        size += len(name) + len(value) + 4
    return size


def check_head(event: h11.Request) -> None:
    """Limits and framing rules on a complete request head (h11 checks only the rest).

    h11's ``max_incomplete_event_size`` bounds a head still being read; a head that
    arrives complete in one read is never measured, so the size is checked here (431).
    Content-Length together with Transfer-Encoding is the request-smuggling shape: a
    front end and a back end may frame the body differently, so RFC 9112 §6.3 says to
    refuse it and close the connection (400, Connection: close in ``send_error``).
    """
    if head_size(event) > MAX_HEADER_BYTES:
        raise BadRequest(f"request head is over the {MAX_HEADER_BYTES}-byte limit", status=431)
    names = {name for name, _ in event.headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        raise BadRequest("a request with both Content-Length and Transfer-Encoding is ambiguous "
                         "(RFC 9112 section 6.3); send one of them")


class ClientGone(Exception):
    """The agent closed the connection or stopped sending."""


class HTTPConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        # A response head waits here for its first body bytes: one send() instead of two.
        self._pending = bytearray()
        # Set when we answer an error before reading the whole request: see close().
        self._linger = False
        self._fed = 0  # bytes received while waiting for the current request head
        self._head_only = False  # the current request is HEAD: its answers carry no body

    @property
    def peer(self) -> str:
        peer = self.writer.get_extra_info("peername")
        return str(peer[0]) if peer else "unknown"

    async def _next_event(self, timeout: float) -> Any:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                # docs/agent-contract.md: a malformed request is 400 bad_request (431 for an oversize head);
                # h11's other hints (501 for an unknown transfer coding) are answered as 400.
                status = 431 if exc.error_status_hint == 431 else 400
                raise BadRequest(f"malformed HTTP request: {exc}", status=status) from exc
            if event is not h11.NEED_DATA:
                return event
            try:
                # asyncio.timeout, not wait_for: no extra task per read on the hot path.
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(READ_CHUNK)
            except (TimeoutError, ConnectionError) as exc:
                raise ClientGone() from exc
            self._fed += len(data)
            self.conn.receive_data(data)

    async def receive_request(self) -> h11.Request | None:
        """The next request's head, or None when the client closed the connection cleanly."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        timeout = IDLE_TIMEOUT if self.conn.their_state is h11.IDLE else HEAD_TIMEOUT
        # Bytes of a pipelined next request may already be buffered: they count as read.
        self._fed = len(self.conn.trailing_data[0])
        self._head_only = False
        try:
            event = await self._next_event(timeout)
        except ClientGone:
            return None
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise BadRequest(f"expected a request, got {type(event).__name__}")
        self._head_only = event.method == b"HEAD"
        check_head(event)
        # More than the limit arrived while this head was read: measure the head on the bytes
        # themselves (h11 strips whitespace, so the event alone can undercount); what is
        # still buffered after the head is body or the next request.
        if self._fed > MAX_HEADER_BYTES and self._fed - len(self.conn.trailing_data[0]) > MAX_HEADER_BYTES:
            raise BadRequest(f"request head is over the {MAX_HEADER_BYTES}-byte limit", status=431)
        return event

    async def read_body(self, limit: int, declared: int | None) -> bytes:
        if declared is not None and declared > limit:
            raise BodyTooLarge(f"request body of {declared} bytes is over the {limit}-byte limit")
        if self.conn.they_are_waiting_for_100_continue:
            await self._send(h11.InformationalResponse(status_code=100, headers=[]))
        body = bytearray()
        while True:
            event = await self._next_event(BODY_TIMEOUT)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > limit:
                    raise BodyTooLarge(f"request body is over the {limit}-byte limit")
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise ClientGone()
            else:  # pragma: no cover - h11 yields only these here
                raise BadRequest(f"unexpected {type(event).__name__} in request body")

    async def _send(self, event: Any, flush: bool = True) -> None:
        try:
            data = self.conn.send(event)
        except h11.LocalProtocolError as exc:
            raise ClientGone(f"cannot send response: {exc}") from exc
        if data:
            self._pending += data
        # A 2xx to CONNECT switches protocols: nothing else follows from h11, so send now.
        if (flush or self.conn.our_state is h11.SWITCHED_PROTOCOL) and self._pending:
            self.writer.write(bytes(self._pending))
            self._pending.clear()
            try:
                await self.writer.drain()
            except ConnectionError as exc:
                raise ClientGone() from exc

    async def send_head(self, status: int, headers: Iterable[tuple[str, str]], reason: str = "") -> None:
        await self._send(h11.Response(status_code=status, headers=to_wire(headers),
                                      reason=reason.encode("latin-1", "replace")), flush=False)

    async def send_data(self, data: bytes) -> None:
        if data:
            await self._send(h11.Data(data=data))

    async def end(self) -> None:
        await self._send(h11.EndOfMessage())

    async def send_error(self, exc: GateError, request_id: str) -> None:
        body = json.dumps(exc.body(request_id)).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   ("X-HITL-Request-Id", exc.request_id or request_id)]
        if exc.retry_after is not None:
            headers.append(("Retry-After", str(exc.retry_after)))
        headers += exc.headers
        if exc.status == 407:
            headers.append(("Proxy-Authenticate", 'Basic realm="hitl-proxy"'))
        if exc.status in (400, 413, 431) or self.conn.their_state not in (h11.DONE, h11.IDLE):
            headers.append(("Connection", "close"))
            self._linger = self.conn.their_state is not h11.DONE
        await self.send_head(exc.status, headers, _phrase(exc.status))
        if not self._head_only:  # h11 refuses a body on an answer to HEAD (RFC 9110 §9.3.2)
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
        return self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE)

    @property
    def reusable(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    async def close(self) -> None:
        if self._linger:
            await self._drain_unread()
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (ConnectionError, TimeoutError, OSError):
            pass
