"""Hostile request heads sent to a running proxy over raw sockets (issue 12, items 8, 9, 12):
what the agent gets back, and what the recording upstream did or did not receive."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Hitl, Upstream


def exchange(hitl: Hitl, data: bytes, timeout: float = 10) -> tuple[bytes, bool]:
    """Send raw bytes; return everything the proxy answered and whether it closed the connection."""
    with socket.create_connection(hitl.runtime.proxy_address, timeout=timeout) as sock:
        sock.sendall(data)
        answer, closed = b"", False
        deadline = time.monotonic() + timeout
        sock.settimeout(1.0)
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if answer:
                    break  # answered and kept open
                continue
            if not chunk:
                closed = True
                break
            answer += chunk
        return answer, closed


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# -- item 8: Content-Length and Transfer-Encoding together ----------------------------------

SMUGGLE_SHAPES = [
    ("Content-Length: {n}\r\nTransfer-Encoding: chunked\r\n"),
    ("Transfer-Encoding: chunked\r\nContent-Length: {n}\r\n"),
    ("Content-Length: 0\r\nTransfer-Encoding: chunked\r\n"),
    ("Transfer-Encoding: chunked\r\nContent-length: 4\r\n"),
]


@pytest.mark.parametrize("framing", SMUGGLE_SHAPES)
def test_content_length_with_transfer_encoding_is_refused_and_the_connection_closed(
        hitl: Hitl, upstream: Upstream, framing: str) -> None:
    smuggled = (f"GET {upstream.url('/smuggled')} HTTP/1.1\r\nHost: 127.0.0.1:{upstream.port}\r\n\r\n").encode()
    body = b"0\r\n\r\n" + smuggled
    head = (f"POST {upstream.url('/front')} HTTP/1.1\r\nHost: 127.0.0.1:{upstream.port}\r\n"
            + framing.format(n=len(body)) + "\r\n").encode()
    answer, closed = exchange(hitl, head + body)
    assert status_of(answer) == 400, answer[:300]
    assert b'"bad_request"' in answer
    assert b"connection: close" in answer.lower()
    assert closed
    assert answer.count(b"HTTP/1.1 ") == 1  # no second answer: the trailing bytes were not a request
    assert upstream.received == []


def test_chunked_body_followed_by_a_pipelined_request_forwards_both_exactly(hitl: Hitl,
                                                                            upstream: Upstream) -> None:
    # The honest counterpart: chunked alone frames the body; the next request is a real one.
    host = f"Host: 127.0.0.1:{upstream.port}\r\n"
    data = (f"POST {upstream.url('/one')} HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n"
            f"5\r\nhello\r\n0\r\n\r\n"
            f"GET {upstream.url('/two')} HTTP/1.1\r\n{host}Connection: close\r\n\r\n").encode()
    answer, _ = exchange(hitl, data)
    assert answer.count(b"HTTP/1.1 200") == 2
    assert [(r.method, r.path, r.body) for r in upstream.received] == [
        ("POST", "/one", b"hello"), ("GET", "/two", b"")]


# -- item 9: the header size limit is enforced on what was read ------------------------------

@pytest.mark.parametrize("shape", ["one 70 KiB line", "many small lines", "70 KiB of whitespace"])
def test_a_head_over_64_kib_gets_431_and_nothing_is_forwarded(hitl: Hitl, upstream: Upstream,
                                                               shape: str) -> None:
    if shape == "one 70 KiB line":
        extra = "X-Big: " + "a" * (70 * 1024) + "\r\n"
    elif shape == "many small lines":
        extra = "".join(f"X-H{i}: " + "b" * 1000 + "\r\n" for i in range(70))
    else:  # h11 strips it from the value: only the bytes read show the size
        extra = "X-Pad: " + " " * (70 * 1024) + "a\r\n"
    head = (f"GET {upstream.url('/big')} HTTP/1.1\r\nHost: 127.0.0.1:{upstream.port}\r\n"
            + extra + "\r\n").encode()
    answer, closed = exchange(hitl, head)
    assert status_of(answer) == 431, answer[:300]
    assert b'"bad_request"' in answer
    assert closed
    assert upstream.received == []


def test_a_head_under_the_limit_is_forwarded(hitl: Hitl, upstream: Upstream) -> None:
    head = (f"GET {upstream.url('/fine')} HTTP/1.1\r\nHost: 127.0.0.1:{upstream.port}\r\n"
            f"X-Big: {'a' * 30000}\r\nConnection: close\r\n\r\n").encode()
    answer, _ = exchange(hitl, head)
    assert status_of(answer) == 200
    assert upstream.received[0].headers["x-big"] == "a" * 30000


# -- item 12: non-ASCII header bytes pass through as bytes ----------------------------------

def test_a_non_ascii_header_byte_on_an_allowed_request_reaches_the_upstream(hitl: Hitl,
                                                                            upstream: Upstream) -> None:
    head = (f"GET {upstream.url('/latin')} HTTP/1.1\r\nHost: 127.0.0.1:{upstream.port}\r\n"
            "Connection: close\r\n").encode() + b"X-Name: caf\xe9\r\n\r\n"
    answer, _ = exchange(hitl, head)
    assert status_of(answer) == 200, answer[:300]
    [got] = upstream.received
    assert got.headers["x-name"] == "caf\xe9"  # http.server reads header bytes as latin-1


def test_a_non_ascii_header_byte_on_a_held_request_is_stored_and_forwarded_on_approval(
        make_hitl: Any, upstream: Upstream) -> None:
    hitl = make_hitl({"hold.client_wait": "30s"})
    head = (f"POST {upstream.url('/hold/latin')} HTTP/1.1\r\nHost: 127.0.0.1:{upstream.port}\r\n"
            "Content-Length: 2\r\nConnection: close\r\n").encode() + b"X-Name: caf\xe9\r\n\r\nhi"
    box: dict[str, bytes] = {}
    thread = threading.Thread(target=lambda: box.update(answer=exchange(hitl, head, timeout=30)[0]))
    thread.start()
    [item] = hitl.wait_pending()
    assert upstream.received == []
    with hitl.api() as api:
        assert api.post(f"/api/requests/{item['id']}/approve", json={}).status_code == 200
    thread.join(30)
    assert status_of(box["answer"]) == 200, box["answer"][:300]
    [got] = upstream.received
    assert got.headers["x-name"] == "caf\xe9"
    assert got.body == b"hi"
    with hitl.api() as api:
        assert api.get(f"/api/requests/{item['id']}").json()["status"] == "forwarded"


class RawUpstream:
    """An upstream that answers every connection with fixed bytes (a non-ASCII header)."""

    def __init__(self, answer: bytes) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.received.append(data)
                conn.sendall(self.answer)


@pytest.fixture
def latin_upstream() -> Iterator[RawUpstream]:
    server = RawUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Up: caf\xe9\r\n"
                         b"Connection: close\r\n\r\nok")
    yield server
    server.sock.close()


def test_a_non_ascii_header_byte_from_the_upstream_reaches_the_agent(hitl: Hitl,
                                                                     latin_upstream: RawUpstream) -> None:
    port = latin_upstream.port
    answer, _ = exchange(hitl, f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                               "Connection: close\r\n\r\n".encode())
    assert status_of(answer) == 200, answer[:300]
    assert b"X-Up: caf\xe9\r\n" in answer
    assert answer.endswith(b"ok")


# -- a HEAD request refused by the gate still gets its answer -------------------------------

@pytest.mark.parametrize("path", ["/a%2Fb", "/deny/x"])
def test_a_refused_head_request_gets_a_head_answer_without_a_body(hitl: Hitl, upstream: Upstream,
                                                                   path: str) -> None:
    """A response to HEAD has no body (RFC 9110 §9.3.2): the gate's refusal is the head
    alone, never a dropped connection (the fuzz over request heads found one)."""
    head = (f"HEAD {upstream.url(path)} HTTP/1.1\r\nHost: 127.0.0.1:{upstream.port}\r\n"
            "Connection: close\r\n\r\n").encode()
    answer, _ = exchange(hitl, head)
    assert status_of(answer) in (400, 403), answer[:300]
    head_part, _, rest = answer.partition(b"\r\n\r\n")
    assert b"x-hitl-request-id" in head_part.lower() and rest == b""
    assert upstream.received == []
