"""HTTP/1.1 on the upstream side, in C where it counts: the request head is written by hand,
the response is parsed by httptools (llhttp, the parser of Node.js and uvicorn).

h11 did both before; on the pass-through path its pure-Python state machine cost about a
fifth of the proxy's CPU per request. What h11 refused is still refused here:

- a request head is checked before it is written (``request_head``): a method that is not a
  token, a target with a space or a control character, a header name that is not a token,
  a value with CR, LF or NUL (header injection) raise ``ValueError``;
- a response is parsed strictly (llhttp without its leniencies: Content-Length together
  with Transfer-Encoding, a duplicate Content-Length, bad chunk sizes, obs-fold, bare LF
  are errors), and on top of it ``ResponseParser`` refuses what llhttp would accept and h11
  did not: a protocol other than HTTP/1.0 or 1.1, a transfer coding other than ``chunked``,
  a head over ``max_head`` bytes.
"""

from __future__ import annotations

import asyncio
import re

import httptools

# h11's grammar (RFC 9110 §5.1, §5.5): a token, and a field value without NUL, CR, LF or
# whitespace at either end.
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
TARGET = re.compile(rb"[\x21-\x7e]+")  # a request target: visible ASCII (h11's, and http1.py's check)


# Header lines as written: one match over all of them instead of two per header.
_LINES = re.compile(rb"(?:" + _TOKEN.pattern + rb": " + _VALUE.pattern + rb"\r\n)*")


def header_lines(headers: list[tuple[bytes, bytes]]) -> bytes:
    """``name: value CRLF`` for each header, or ValueError naming the first one h11 would
    refuse (a name that is not a token; a value with NUL, CR, LF or whitespace at an end)."""
    out: list[bytes] = []
    for name, value in headers:
        out += (name, b": ", value, b"\r\n")
    lines = b"".join(out)
    # One line per header: a CR LF inside a name or value would add one (header injection).
    if lines.count(b"\n") != len(out) // 4 or not _LINES.fullmatch(lines):
        for name, value in headers:
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"illegal header name {name[:100]!r}")
            if not _VALUE.fullmatch(value):
                raise ValueError(f"illegal header value {value[:100]!r}")
        raise ValueError("illegal header")  # pragma: no cover - one of the above failed
    return lines


def request_head(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The request line and headers as sent, or ValueError naming what h11 would refuse."""
    if not _TOKEN.fullmatch(method):
        raise ValueError(f"illegal method {method!r}")
    if not TARGET.fullmatch(target):
        raise ValueError(f"illegal request target {target!r}")
    return b"".join((method, b" ", target, b" HTTP/1.1\r\n", header_lines(headers), b"\r\n"))


async def read_within(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float,
                      size: int = 65536) -> bytes:
    """``reader.read(size)``, or TimeoutError when nothing came within ``timeout`` seconds;
    the connection is then closed (every caller gives it up on a timeout anyway).

    A plain timer instead of ``asyncio.timeout()``: no Timeout object, no task cancellation
    and uncancel on every read (two reads per forwarded request). When it fires, it closes the
    transport, which ends the read with EOF; the flag tells that EOF from the peer's."""
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        writer.close()

    handle = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        data = await reader.read(size)
    finally:
        handle.cancel()
    if expired:
        raise TimeoutError()
    return data


class ResponseError(Exception):
    """The upstream's bytes are not a well-formed HTTP/1.1 response."""


class ResponseParser:
    """One response (after any 1xx interim ones) on a kept-alive connection.

    ``feed`` what is read; ``head_done`` once the status and headers are in (``status``,
    ``reason``, ``headers``), ``body`` collects body bytes until ``take``, ``done`` when the
    message ended. ``eof`` says what the end of the stream means. ``reusable`` tells whether
    the connection may carry another exchange."""

    __slots__ = ("_error", "_extra", "_framed", "_head_only", "_interim", "_max_head", "_parser", "_seen",
                 "body", "done", "head_done", "headers", "keep_alive", "reason", "status")

    def __init__(self, *, head_only: bool, max_head: int) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = head_only  # an answer to HEAD: no body whatever the headers say
        self._max_head = max_head
        self._seen = 0  # bytes fed before the final head was complete
        self._interim = False
        self._framed = False  # Content-Length or chunked: EOF before the end is an error
        self._extra = False  # bytes after the response, or a body to HEAD: do not reuse
        self._error: ResponseError | None = None  # raised in a callback (httptools wraps it)
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.head_done = False
        self.done = False
        self.keep_alive = False

    def feed(self, data: bytes) -> None:
        if not self.head_done:
            self._seen += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            raise ResponseError("an unrequested protocol switch (101)") from exc
        except httptools.HttpParserError as exc:
            if self._error is not None:
                raise self._error from None
            if self.done:  # garbage after a complete response: deliver it, drop the connection
                self._extra = True
                return
            raise ResponseError(str(exc) or type(exc).__name__) from exc
        if not self.head_done and self._seen > self._max_head:
            raise ResponseError(f"response head over {self._max_head} bytes")

    def eof(self) -> None:
        """The upstream closed its side: the end of a body framed by the close, else an error."""
        if self.done:
            return
        if self.head_done and not self._framed:
            self.done = True
            self.keep_alive = False
            return
        raise ResponseError("connection closed before the response was complete")

    def take(self) -> bytes:
        data = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        self.body.clear()
        return data

    @property
    def reusable(self) -> bool:
        return self.done and self.keep_alive and not self._extra

    # -- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.done:  # an unsolicited second response
            self._extra = True
            return
        self.reason = b""  # after a 1xx: the final response's own
        self.headers = []

    def on_status(self, reason: bytes) -> None:
        if not self.head_done:
            self.reason += reason  # llhttp may hand it over in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done and not self.done:  # trailers are dropped, as h11 did
            self.headers.append((name, value.strip(b" \t")))  # llhttp keeps trailing whitespace

    def on_headers_complete(self) -> None:
        if self.done:
            return
        parser = self._parser
        if parser.get_http_version() not in ("1.1", "1.0"):
            raise self._fail(f"unsupported protocol HTTP/{parser.get_http_version()}")
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True  # 100 Continue, 103 Early Hints: the real answer follows
            return
        self.status = status
        self.head_done = True
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"transfer-encoding":
                if value.strip().lower() != b"chunked":
                    raise self._fail(f"unsupported transfer coding {value!r}")
                self._framed = True
            elif lowered == b"content-length":
                self._framed = True
        if self._head_only:
            self.done = True
            self.keep_alive = parser.should_keep_alive()

    def _fail(self, reason: str) -> ResponseError:
        self._error = ResponseError(reason)
        return self._error

    def on_body(self, body: bytes) -> None:
        if self.done:  # a body to HEAD, or bytes of an unsolicited response
            self._extra = True
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if not self.done:
            self.done = True
            self.keep_alive = self._parser.should_keep_alive()
