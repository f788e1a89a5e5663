"""The upstream side's wire format (proxy/wire.py): what h11 refused is still refused, and a
hostile upstream's connection is never handed to the next request."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from proxy.wire import ResponseError, ResponseParser, request_head
from tests.conftest import Hitl

# -- the request head ------------------------------------------------------------------------


def test_a_request_head_is_written_as_given() -> None:
    head = request_head(b"POST", b"/v1/x?a=1", [(b"Host", b"api.example"), (b"X-Caf", b"caf\xe9")])
    assert head == b"POST /v1/x?a=1 HTTP/1.1\r\nHost: api.example\r\nX-Caf: caf\xe9\r\n\r\n"


@pytest.mark.parametrize(("method", "target", "headers"), [
    (b"GET", b"/", [(b"X-A", b"1\r\nX-Injected: 1")]),
    (b"GET", b"/", [(b"X-A", b"1\nX-Injected: 1")]),
    (b"GET", b"/", [(b"X-A", b"a\x00b")]),
    (b"GET", b"/", [(b"X-A", b" padded")]),
    (b"GET", b"/", [(b"X A", b"1")]),
    (b"GET", b"/", [(b"X-A:", b"1")]),
    (b"GET", b"/", [(b"X-A: 1\r\nX-Injected", b"1")]),
    (b"GET", b"/", [(b"X-A", b"1\r\n"), (b"X-B", b"2")]),
    (b"GET", b"/", [(b"X-A", b"1\r")]),
    (b"GET", b"/", [(b"", b"1")]),
    (b"GET", b"/a b", []),
    (b"GET", b"/a\r\nX: 1", []),
    (b"GET", b"", []),
    (b"G T", b"/", []),
    (b"GET\r\n", b"/", []),
])
def test_a_request_head_h11_would_refuse_is_refused(method: bytes, target: bytes,
                                                    headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(ValueError):
        request_head(method, target, headers)


# -- the response parser -----------------------------------------------------------------------

def parse(data: bytes, head_only: bool = False, max_head: int = 65536) -> ResponseParser:
    parser = ResponseParser(head_only=head_only, max_head=max_head)
    parser.feed(data)
    return parser


HOSTILE = {
    "CL and TE": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    "two CLs": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
    "bad chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n",
    "chunk without CRLF": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiXX0\r\n\r\n",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "bare LF": b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    "space before colon": b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
    "NUL in a value": b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "negative CL": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    "gzip coding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "gzip then chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "HTTP/2.0": b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    "not HTTP": b"XTTP/1.1 200 OK\r\n\r\n",
    "four-digit status": b"HTTP/1.1 1000 X\r\nContent-Length: 0\r\n\r\n",
    "unrequested 101": b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_malformed_response_is_refused(name: str) -> None:
    with pytest.raises(ResponseError):
        parse(HOSTILE[name])


def test_whitespace_around_a_response_header_value_is_dropped() -> None:
    p = parse(b"HTTP/1.1 200 OK\r\nX-A: \t padded \t\r\nContent-Length: 0\r\n\r\n")
    assert p.headers == [(b"X-A", b"padded"), (b"Content-Length", b"0")]


def test_a_response_head_over_the_limit_is_refused() -> None:
    with pytest.raises(ResponseError, match="over 100 bytes"):
        parse(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 200 + b"\r\n", max_head=100)


def test_a_plain_response_with_latin1_bytes_and_a_reusable_connection() -> None:
    p = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Up: caf\xe9\r\n\r\nhi")
    assert (p.status, p.reason, p.headers, p.take(), p.done, p.reusable) == (
        200, b"OK", [(b"Content-Length", b"2"), (b"X-Up", b"caf\xe9")], b"hi", True, True)


def test_interim_responses_are_skipped_and_trailers_dropped() -> None:
    p = parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: </a>\r\n\r\n"
              b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-T: 1\r\n\r\n")
    assert (p.status, p.reason, p.headers, p.take(), p.reusable) == (
        201, b"Created", [(b"Transfer-Encoding", b"chunked")], b"hi", True)


def test_a_body_read_until_close() -> None:
    p = parse(b"HTTP/1.1 200 OK\r\n\r\nabc")
    assert not p.done
    p.eof()
    assert (p.take(), p.done, p.reusable) == (b"abc", True, False)


def test_a_close_before_a_framed_body_ends_is_an_error() -> None:
    p = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(ResponseError):
        p.eof()


def test_an_answer_to_head_has_no_body_whatever_its_headers_say() -> None:
    p = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", head_only=True)
    assert (p.done, p.take(), p.reusable) == (True, b"", True)
    p = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", head_only=True)
    assert (p.done, p.take(), p.reusable) == (True, b"", False)  # a body to HEAD: not reused


@pytest.mark.parametrize("after", [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"garbage"])
def test_bytes_after_the_response_keep_it_but_not_the_connection(after: bytes) -> None:
    p = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx" + after)
    assert (p.status, p.headers, p.take(), p.done, p.reusable) == (
        200, [(b"Content-Length", b"1")], b"x", True, False)


# -- through the proxy, against a hostile upstream ---------------------------------------------

class ScriptedUpstream:
    """A keep-alive upstream that answers the n-th request (over all connections) with
    ``answers[n]``, then keeps the connection open (or closes it, with ``close``); it counts
    the connections it accepted."""

    def __init__(self, answers: list[bytes], close: bool = False) -> None:
        self.close = close
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.answers = answers
        self.connections = 0
        self.requests = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                data = data.split(b"\r\n\r\n", 1)[1]  # the tests send no request bodies
                with self._lock:
                    answer = self.answers[min(self.requests, len(self.answers) - 1)]
                    self.requests += 1
                conn.sendall(answer)
                if self.close:
                    return


@pytest.fixture
def scripted() -> Iterator[list[ScriptedUpstream]]:
    made: list[ScriptedUpstream] = []
    yield made
    for server in made:
        server.sock.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize("name", ["CL and TE", "gzip coding", "HTTP/2.0", "bad chunk size", "obs-fold"])
def test_a_hostile_response_is_a_502_and_its_connection_is_not_reused(
        hitl: Hitl, scripted: list[ScriptedUpstream], name: str) -> None:
    server = ScriptedUpstream([HOSTILE[name], OK])
    scripted.append(server)
    with hitl.agent() as agent:
        bad = agent.get(f"http://127.0.0.1:{server.port}/one")
        good = agent.get(f"http://127.0.0.1:{server.port}/two")
    assert bad.status_code == 502, bad.text
    assert bad.json()["error"]["code"] == "upstream_error"
    assert (good.status_code, good.text, server.connections) == (200, "ok", 2)


def test_an_upstream_header_with_trailing_whitespace_reaches_the_agent_trimmed(
        hitl: Hitl, scripted: list[ScriptedUpstream]) -> None:
    server = ScriptedUpstream([b"HTTP/1.1 200 OK\r\nX-Up: spaced  \r\nContent-Length: 2\r\n\r\nok"])
    scripted.append(server)
    with hitl.agent() as agent:
        r = agent.get(f"http://127.0.0.1:{server.port}/ws")
    assert (r.status_code, r.headers["x-up"], r.text) == (200, "spaced", "ok")


def test_a_head_answer_with_a_content_length_leaves_the_connection_reusable(
        hitl: Hitl, scripted: list[ScriptedUpstream]) -> None:
    server = ScriptedUpstream([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", OK])
    scripted.append(server)
    with hitl.agent() as agent:
        head = agent.head(f"http://127.0.0.1:{server.port}/h")
        good = agent.get(f"http://127.0.0.1:{server.port}/g")
    assert (head.status_code, head.headers["content-length"], head.content) == (200, "5", b"")
    assert (good.status_code, good.text, server.connections) == (200, "ok", 1)


def test_a_body_sent_to_head_is_dropped_with_its_connection(
        hitl: Hitl, scripted: list[ScriptedUpstream]) -> None:
    server = ScriptedUpstream([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", OK])
    scripted.append(server)
    with hitl.agent() as agent:
        head = agent.head(f"http://127.0.0.1:{server.port}/h")
        good = agent.get(f"http://127.0.0.1:{server.port}/g")
    assert (head.status_code, head.content) == (200, b"")
    assert (good.status_code, good.text, server.connections) == (200, "ok", 2)


def test_an_interim_response_before_the_answer_is_skipped(
        hitl: Hitl, scripted: list[ScriptedUpstream]) -> None:
    server = ScriptedUpstream([b"HTTP/1.1 100 Continue\r\n\r\n" + OK])
    scripted.append(server)
    with hitl.agent() as agent:
        through = agent.get(f"http://127.0.0.1:{server.port}/x")
    assert (through.status_code, through.text) == (200, "ok")
