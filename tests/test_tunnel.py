"""Blind tunnels through real sockets: bytes arrive unchanged both ways, half-close, an upstream
or agent that goes away, the idle timeout, back-pressure and the byte counters. Every test
runs twice: with os.splice (where the OS has it) and with the portable buffer copy."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.tunnel import CAN_SPLICE
from tests.conftest import Hitl

# Every CONNECT is allowed and blind.
BLIND_POLICY = '''package hitl

import rego.v1

decision := {"action": "allow", "rule": "tunnel"}

intercept := false
'''

MiB = 1024 * 1024


@pytest.fixture(params=["splice", "copy"])
def proxy(request: pytest.FixtureRequest, make_hitl: Callable[..., Hitl]) -> Hitl:
    if request.param == "splice" and not CAN_SPLICE:
        pytest.skip("os.splice is not available here")
    hitl = make_hitl(policy=BLIND_POLICY)
    handler(hitl).splice = request.param == "splice"
    return hitl


def handler(hitl: Hitl) -> Any:
    return hitl.runtime._proxy.connect.__self__  # the ConnectHandler


class OneShotServer:
    """Accepts one connection and runs ``serve(conn)`` on it in a thread."""

    def __init__(self, serve: Callable[[socket.socket], Any]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.result: Any = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(serve,), daemon=True)
        self.thread.start()

    def _run(self, serve: Callable[[socket.socket], Any]) -> None:
        self.listener.settimeout(10)
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(10)
                self.result = serve(conn)
        finally:
            self.done.set()

    def wait(self) -> Any:
        assert self.done.wait(15), "the upstream did not finish"
        return self.result

    def close(self) -> None:
        self.listener.close()
        self.thread.join(15)


@pytest.fixture
def servers() -> Iterator[Callable[[Callable[[socket.socket], Any]], OneShotServer]]:
    made: list[OneShotServer] = []

    def make(serve: Callable[[socket.socket], Any]) -> OneShotServer:
        made.append(OneShotServer(serve))
        return made[-1]

    yield make
    for server in made:
        server.close()


def connect(hitl: Hitl, port: int, first: bytes = b"") -> socket.socket:
    """A blind tunnel to 127.0.0.1:port (``first`` is sent together with the CONNECT head)."""
    sock = socket.create_connection(hitl.runtime.proxy_address, timeout=10)
    sock.sendall(f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode() + first)
    head = b""
    while not head.endswith(b"\r\n\r\n") and len(head) < 65536:
        byte = sock.recv(1)  # one byte at a time: nothing after the head is read here
        assert byte, f"the proxy closed the connection after {head!r}"
        head += byte
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(MiB):
        chunks.append(chunk)
    return b"".join(chunks)


def send_then_shut(sock: socket.socket, data: bytes) -> threading.Thread:
    def run() -> None:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, f"not within 10s: {what}"
        time.sleep(0.02)


def tunnel_bytes(hitl: Hitl) -> dict[str, float]:
    text = httpx.get(hitl.review_url + "/metrics", trust_env=False).text
    return {s.labels["direction"]: s.value for family in text_string_to_metric_families(text)
            if family.name == "hitl_tunnel_bytes" for s in family.samples if s.name.endswith("_total")}


def no_connections(hitl: Hitl) -> bool:
    return not hitl.runtime._proxy._connections


# -- the data --------------------------------------------------------------------------------
def test_large_transfers_both_ways_arrive_byte_identical_and_are_counted(proxy: Hitl,
                                                                         servers: Any) -> None:
    up, down = os.urandom(6 * MiB), os.urandom(7 * MiB)

    def serve(conn: socket.socket) -> bytes:
        sender = send_then_shut(conn, down)  # at the same time as the agent's upload
        got = read_all(conn)
        sender.join(10)
        return got

    server = servers(serve)
    with connect(proxy, server.port) as sock:
        sender = send_then_shut(sock, up)
        got = read_all(sock)
        sender.join(10)
    assert (len(got), digest(got)) == (len(down), digest(down))
    received = server.wait()
    assert (len(received), digest(received)) == (len(up), digest(up))
    expected = {"to_upstream": len(up), "to_agent": len(down)}
    eventually(lambda: tunnel_bytes(proxy) == expected, f"counters {expected}")


def test_bytes_sent_with_the_connect_head_reach_the_upstream_first(proxy: Hitl, servers: Any) -> None:
    # 300 kB behind the CONNECT head, before the 200: part of it is read by the HTTP layer
    # (h11's trailing data, the stream's buffer) before the tunnel takes the socket over.
    early = os.urandom(300_000)
    server = servers(lambda conn: conn.sendall(digest(read_all(conn)).encode()))
    with connect(proxy, server.port, first=early) as sock:
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == digest(early).encode()
    eventually(lambda: tunnel_bytes(proxy)["to_upstream"] == len(early), "to_upstream counted")


def test_half_close_the_agent_stops_sending_and_still_receives_the_whole_answer(proxy: Hitl,
                                                                                 servers: Any) -> None:
    answer = os.urandom(5 * MiB)

    def serve(conn: socket.socket) -> int:
        size = len(read_all(conn))  # the agent's EOF arrives ...
        conn.sendall(answer)  # ... and the answer goes back after it
        return size

    server = servers(serve)
    with connect(proxy, server.port) as sock:
        sock.sendall(b"q" * MiB)
        sock.shutdown(socket.SHUT_WR)
        got = read_all(sock)
    assert digest(got) == digest(answer)
    assert server.wait() == MiB


def test_a_slow_agent_holds_the_upstream_back(proxy: Hitl, servers: Any) -> None:
    total, block = 128 * MiB, bytes(range(256)) * 4096  # far more than every buffer on the way
    sent = [0]

    def serve(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        while sent[0] < total:
            conn.sendall(block)
            sent[0] += len(block)

    server = servers(serve)
    with connect(proxy, server.port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        time.sleep(1)  # the agent reads nothing for a while
        assert sent[0] < total, "the proxy kept reading from the upstream while the agent read nothing"
        received = 0
        while received < total:
            chunk = sock.recv(MiB)
            assert chunk[:1] == bytes([received % 256]), "bytes out of order"
            received += len(chunk)
    server.wait()


# -- the ends --------------------------------------------------------------------------------
def test_upstream_closing_passes_its_eof_on_and_the_tunnel_ends_with_the_agent(proxy: Hitl,
                                                                                servers: Any) -> None:
    farewell = os.urandom(2 * MiB)
    server = servers(lambda conn: conn.sendall(farewell))  # then the upstream closes its socket
    with connect(proxy, server.port) as sock:
        assert digest(read_all(sock)) == digest(farewell)  # all of it, then EOF
        server.wait()
        sock.shutdown(socket.SHUT_WR)  # the agent is done too
        eventually(lambda: no_connections(proxy), "the proxy closed the agent's connection")
        assert sock.recv(1) == b""


def test_an_agent_that_resets_gets_both_sockets_closed(proxy: Hitl, servers: Any) -> None:
    # The upstream stays open and silent: only the failure on the agent's side can end the
    # tunnel (a half-close alone would leave it open until the upstream finished).
    saw_eof, release = threading.Event(), threading.Event()

    def serve(conn: socket.socket) -> bytes:
        data = conn.recv(1)
        saw_eof.set()
        release.wait(10)
        return data

    server = servers(serve)
    sock = connect(proxy, server.port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # linger 0: a reset, not a FIN
    try:
        assert saw_eof.wait(10), "the proxy did not close the upstream side"
        eventually(lambda: no_connections(proxy), "the proxy closed the agent's connection")
    finally:
        release.set()
    assert server.wait() == b""


def test_an_idle_tunnel_is_closed_on_both_sides(proxy: Hitl, servers: Any) -> None:
    handler(proxy).idle_timeout = 0.3
    server = servers(lambda conn: conn.recv(1))
    with connect(proxy, server.port) as sock:
        assert read_all(sock) == b""  # neither side sent anything: the proxy hung up
    assert server.wait() == b""
    eventually(lambda: no_connections(proxy), "the proxy closed the agent's connection")


def test_one_busy_direction_keeps_the_tunnel_from_idling(proxy: Hitl, servers: Any) -> None:
    handler(proxy).idle_timeout = 1.0

    def serve(conn: socket.socket) -> None:
        for _ in range(40):  # 2 s in all, never 1 s without a byte
            conn.sendall(b"t" * 1024)
            time.sleep(0.05)

    server = servers(serve)
    with connect(proxy, server.port) as sock:  # the agent sends nothing at all
        assert read_all(sock) == b"t" * 40 * 1024
    server.wait()
