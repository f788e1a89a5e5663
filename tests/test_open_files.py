"""A serving process raises its open-files limit: every waiting agent holds a connection."""

from __future__ import annotations

import resource
import socket
from pathlib import Path

from tests.conftest import Upstream, run_serve, write_config

LOW = 256


def _limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line in /proc/PID/limits")


def test_serve_raises_its_soft_limit_and_serves_more_agents_than_it_allowed(
        tmp_path: Path, upstream: Upstream) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= 2 * LOW, "the test needs a hard limit above its low soft limit"
    # Started with the soft limit a careless unit file leaves (prlimit execs serve with it).
    serve = run_serve(write_config(tmp_path), wrapper=("prlimit", f"--nofile={LOW}:{hard}", "--"))
    try:
        soft_now, hard_now = _limits(serve.proc.pid)
        assert (soft_now, hard_now) == (hard, hard)
        # More agents connected at once than the soft limit it was started with: each one is
        # accepted and answered (at 256 descriptors, accept would fail with EMFILE).
        port = int(serve.proxy_url.rsplit(":", 1)[1])
        agents = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(LOW + 64)]
        try:
            request = (f"GET {upstream.url('/many')} HTTP/1.1\r\nHost: 127.0.0.1:{upstream.port}\r\n\r\n").encode()
            for sock in agents:  # one at a time: the upstream is a small threaded server
                sock.sendall(request)
                answer = sock.recv(4096)
                assert answer.startswith(b"HTTP/1.1 200"), answer
        finally:
            for sock in agents:
                sock.close()
        assert upstream.count("/many") == LOW + 64
    finally:
        serve.stop()
