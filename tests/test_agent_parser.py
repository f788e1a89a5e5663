"""The agent side's parser (proxy/http1.py, httptools): what h11 refused is still refused
with a clean 400 and nothing forwarded; what it accepted is forwarded and answered with
h11's framing rules. Raw sockets against a running proxy."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from tests.conftest import Hitl, Upstream
from tests.test_http_parsing import exchange, status_of
from tests.test_upstream_wire import ScriptedUpstream


def head(upstream: Upstream, first_line: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [first_line.replace("{UP}", f"127.0.0.1:{upstream.port}"), *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


REFUSED = {
    "HTTP/0.9 request line": "GET http://{UP}/a",
    "HTTP/2 request line": "GET http://{UP}/a HTTP/2\r\nHost: {UP}",
    "HTTP/9.9": "GET http://{UP}/a HTTP/9.9\r\nHost: {UP}",
    "a non-ASCII byte in the target": "GET http://{UP}/caf\xe9 HTTP/1.1\r\nHost: {UP}",
    "HTTP/1.1 without Host": "GET http://{UP}/a HTTP/1.1",
    "gzip then chunked": "POST http://{UP}/a HTTP/1.1\r\nHost: {UP}\r\nTransfer-Encoding: gzip, chunked",
    "chunked then identity": "POST http://{UP}/a HTTP/1.1\r\nHost: {UP}\r\nTransfer-Encoding: chunked, identity",
    "two Transfer-Encodings": "POST http://{UP}/a HTTP/1.1\r\nHost: {UP}\r\nTransfer-Encoding: chunked\r\n"
                              "Transfer-Encoding: chunked",
    "obs-fold": "GET http://{UP}/a HTTP/1.1\r\nHost: {UP}\r\nX-A: 1\r\n  2",
    "a space before the colon": "GET http://{UP}/a HTTP/1.1\r\nHost: {UP}\r\nX-A : 1",
    "a NUL in a value": "GET http://{UP}/a HTTP/1.1\r\nHost: {UP}\r\nX-A: a\x00b",
    "a bad Content-Length": "POST http://{UP}/a HTTP/1.1\r\nHost: {UP}\r\nContent-Length: 1e3",
    "two Content-Lengths": "POST http://{UP}/a HTTP/1.1\r\nHost: {UP}\r\nContent-Length: 1\r\nContent-Length: 2",
    "a method that is not one": "G T http://{UP}/a HTTP/1.1\r\nHost: {UP}",
}


@pytest.mark.parametrize("name", REFUSED)
def test_a_head_h11_refused_is_a_400_and_nothing_is_forwarded(hitl: Hitl, upstream: Upstream,
                                                              name: str) -> None:
    answer, closed = exchange(hitl, head(upstream, REFUSED[name]) + b"xx")
    assert status_of(answer) == 400, answer[:300]
    assert b'"bad_request"' in answer and b"connection: close" in answer.lower()
    assert closed
    assert answer.count(b"HTTP/1.1 ") == 1
    assert upstream.received == []


def test_a_bare_lf_head_is_refused(hitl: Hitl, upstream: Upstream) -> None:
    answer, closed = exchange(hitl, f"GET {upstream.url('/a')} HTTP/1.1\nHost: x\n\n".encode())
    assert (status_of(answer), closed, upstream.received) == (400, True, [])


def test_whitespace_around_a_header_value_is_not_forwarded(hitl: Hitl, upstream: Upstream) -> None:
    answer, _ = exchange(hitl, head(upstream, "GET http://{UP}/ws HTTP/1.1", "Host: {UP}",
                                    "X-Pad: \t padded \t", "Connection: close"))
    assert status_of(answer) == 200, answer[:300]
    assert upstream.received[0].headers["x-pad"] == "padded"


def test_a_request_after_a_malformed_one_in_the_same_read_is_never_served(hitl: Hitl,
                                                                          upstream: Upstream) -> None:
    data = head(upstream, "GET http://{UP}/first HTTP/1.1", "Host: {UP}") + b"GARBAGE\r\n\r\n" + \
        head(upstream, "GET http://{UP}/third HTTP/1.1", "Host: {UP}")
    answer, closed = exchange(hitl, data)
    assert answer.count(b"HTTP/1.1 200") == 1 and answer.count(b"HTTP/1.1 400") == 1, answer[:600]
    assert closed
    assert [r.path for r in upstream.received] == ["/first"]


def test_three_pipelined_requests_in_one_write_are_answered_in_order(hitl: Hitl, upstream: Upstream) -> None:
    data = b"".join(head(upstream, f"GET http://{{UP}}/p{i} HTTP/1.1", "Host: {UP}") for i in range(3))
    answer, _ = exchange(hitl, data + head(upstream, "GET http://{UP}/last HTTP/1.1", "Host: {UP}",
                                           "Connection: close"))
    assert answer.count(b"HTTP/1.1 200") == 4
    assert [r.path for r in upstream.received] == ["/p0", "/p1", "/p2", "/last"]


def test_an_http10_client_is_answered_and_the_connection_closed(hitl: Hitl, upstream: Upstream) -> None:
    answer, closed = exchange(hitl, head(upstream, "GET http://{UP}/old HTTP/1.0"))
    assert status_of(answer) == 200 and b"connection: close" in answer.lower() and closed


def test_expect_100_continue_gets_a_100_before_the_body_is_sent(hitl: Hitl, upstream: Upstream) -> None:
    with socket.create_connection(hitl.runtime.proxy_address, timeout=10) as sock:
        sock.sendall(head(upstream, "POST http://{UP}/cont HTTP/1.1", "Host: {UP}", "Content-Length: 5",
                          "Expect: 100-continue", "Connection: close"))
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        sock.sendall(b"hello")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert status_of(answer) == 200
    assert upstream.received[0].body == b"hello"


def test_an_upgrade_request_is_forwarded_as_plain_http_and_the_next_one_served(
        hitl: Hitl, upstream: Upstream) -> None:
    data = head(upstream, "GET http://{UP}/up HTTP/1.1", "Host: {UP}", "Connection: upgrade",
                "Upgrade: websocket") + head(upstream, "GET http://{UP}/after HTTP/1.1", "Host: {UP}",
                                             "Connection: close")
    answer, _ = exchange(hitl, data)
    assert answer.count(b"HTTP/1.1 200") == 2, answer[:600]
    assert [r.path for r in upstream.received] == ["/up", "/after"]
    assert "upgrade" not in upstream.received[0].headers  # hop-by-hop: never forwarded


@pytest.mark.parametrize(("version", "framing"), [("1.1", b"transfer-encoding: chunked"), ("1.0", None)])
def test_an_upstream_body_without_a_length_is_chunked_for_http11_and_closed_for_http10(
        hitl: Hitl, version: str, framing: bytes | None) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nno length here"
    server = ScriptedUpstream([answer], close=True)
    try:
        data = (f"GET http://127.0.0.1:{server.port}/x HTTP/{version}\r\nHost: 127.0.0.1:{server.port}\r\n"
                "Connection: close\r\n\r\n").encode()
        deadline = time.monotonic() + 10
        with socket.create_connection(hitl.runtime.proxy_address, timeout=10) as sock:
            sock.sendall(data)
            answer = b""
            while time.monotonic() < deadline and (chunk := sock.recv(65536)):
                answer += chunk
    finally:
        server.sock.close()
    head_part, _, body = answer.partition(b"\r\n\r\n")
    assert status_of(answer) == 200, answer[:300]
    if framing is not None:
        assert framing in head_part.lower()
        assert body == b"e\r\nno length here\r\n0\r\n\r\n"
    else:
        assert b"transfer-encoding" not in head_part.lower() and b"content-length" not in head_part.lower()
        assert body == b"no length here"


# -- time limits (http1.HEAD_TIMEOUT / IDLE_TIMEOUT, proxy.upstream_timeout) ------------------

def closed_within(sock: socket.socket, seconds: float) -> bytes:
    """Everything the proxy sent until it closed the connection, within ``seconds``."""
    sock.settimeout(seconds)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_a_client_that_stalls_mid_head_is_disconnected(hitl: Hitl, upstream: Upstream,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("proxy.http1.HEAD_TIMEOUT", 0.3)
    with socket.create_connection(hitl.runtime.proxy_address, timeout=10) as sock:
        sock.sendall(f"GET {upstream.url('/slow')} HTTP/1.1\r\nHost: 127.0.0.1".encode())
        started = time.monotonic()
        assert closed_within(sock, 10) == b""  # closed, nothing answered
    assert time.monotonic() - started < 5
    assert upstream.received == []


def test_an_idle_keep_alive_connection_is_closed_and_others_still_served(
        hitl: Hitl, upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("proxy.http1.IDLE_TIMEOUT", 0.3)
    with socket.create_connection(hitl.runtime.proxy_address, timeout=10) as sock:
        sock.sendall(head(upstream, "GET http://{UP}/one HTTP/1.1", "Host: {UP}"))
        answer = closed_within(sock, 10)  # answered, then closed once idle
    assert status_of(answer) == 200 and answer.endswith(b"}")
    answer, _ = exchange(hitl, head(upstream, "GET http://{UP}/two HTTP/1.1", "Host: {UP}", "Connection: close"))
    assert status_of(answer) == 200
    assert [r.path for r in upstream.received] == ["/one", "/two"]


def test_an_upstream_that_does_not_answer_in_time_is_a_502_and_is_not_reused(make_hitl: Any) -> None:
    hitl = make_hitl({"proxy.upstream_timeout": "300ms"})
    silent = ScriptedUpstream([b"", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    try:
        with hitl.agent() as agent:
            started = time.monotonic()
            late = agent.get(f"http://127.0.0.1:{silent.port}/late")
            waited = time.monotonic() - started
            again = agent.get(f"http://127.0.0.1:{silent.port}/again")
    finally:
        silent.sock.close()
    assert late.status_code == 502 and "timed out" in late.json()["error"]["message"]
    assert waited < 5
    assert (again.status_code, again.text, silent.connections) == (200, "ok", 2)
