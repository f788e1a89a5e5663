"""``proxy.workers``: several processes serve one proxy listener over one store. Requests
spread across them, counts add up in one /metrics, a hold made in a worker is approved
from the primary's review API and forwarded once, and no worker outlives its primary."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from proxy.config import load_settings
from proxy.errors import ConfigError
from tests.conftest import ServeProcess, Upstream, run_serve, write_config


def workers_of(primary: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--worker-of" in cmdline and cmdline[cmdline.index(b"--worker-of") + 1] == str(primary).encode():
                found.append(int(entry.name))
    return found


def wait_for(check, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    return check()


@pytest.fixture
def two_workers(tmp_path: Path) -> ServeProcess:
    serve = run_serve(write_config(tmp_path, {"proxy.workers": 2, "hold.client_wait": "20s"}))
    yield serve
    serve.stop()


def token(tmp_path: Path) -> str:
    return (tmp_path / "data" / "admin-token").read_text().strip()


def test_requests_spread_over_the_workers_and_count_in_one_metrics(
        two_workers: ServeProcess, upstream: Upstream, tmp_path: Path) -> None:
    primary = two_workers.proc.pid
    assert "(2 processes)" in two_workers.lines[0]
    [worker] = workers_of(primary)
    for i in range(40):  # a new connection each: the kernel picks a process per connection
        with httpx.Client(proxy=two_workers.proxy_url, trust_env=False, timeout=10) as client:
            assert client.get(upstream.url(f"/spread/{i}")).status_code == 200
    metrics = httpx.get(two_workers.review_url + "/metrics", trust_env=False).text
    assert 'hitl_requests_total{action="allow",rule="default"} 40.0' in metrics
    # Each process counts into its own file: the worker's exists, so it served some of them.
    [folder] = (tmp_path / "data").glob("metrics-*")
    assert folder.name.startswith(f"metrics-{primary}-")
    assert any(f.name.endswith(f"_{worker}.db") for f in folder.iterdir())


def test_holds_made_in_workers_are_approved_from_the_primary_and_forwarded_once(
        two_workers: ServeProcess, upstream: Upstream, tmp_path: Path) -> None:
    results: dict[int, httpx.Response] = {}

    def agent(i: int) -> None:
        with httpx.Client(proxy=two_workers.proxy_url, trust_env=False, timeout=30) as client:
            results[i] = client.post(upstream.url(f"/hold/w{i}"), content=b"pay")

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    with httpx.Client(base_url=two_workers.review_url, headers={"Authorization": f"Bearer {token(tmp_path)}"},
                      trust_env=False, timeout=10) as api:
        pending = wait_for(lambda: len(items := api.get("/api/requests").json()["items"]) == 8 and items)
        assert pending, "the holds made in both processes should all be listed"
        for item in pending:
            assert api.post(f"/api/requests/{item['id']}/approve", json={}).status_code == 200
    for t in threads:
        t.join(30)
    assert sorted(r.status_code for r in results.values()) == [200] * 8
    for i in range(8):
        assert upstream.count(f"/hold/w{i}") == 1


def test_workers_stop_with_the_primary(two_workers: ServeProcess) -> None:
    [worker] = workers_of(two_workers.proc.pid)
    assert two_workers.stop(signal.SIGTERM) == 0
    assert wait_for(lambda: not Path(f"/proc/{worker}").exists())


def test_workers_end_when_the_primary_is_killed(two_workers: ServeProcess) -> None:
    [worker] = workers_of(two_workers.proc.pid)
    two_workers.stop(signal.SIGKILL)
    assert wait_for(lambda: not Path(f"/proc/{worker}").exists() or _zombie(worker))


def test_a_worker_that_dies_is_replaced(two_workers: ServeProcess, upstream: Upstream) -> None:
    primary = two_workers.proc.pid
    [worker] = workers_of(primary)
    os.kill(worker, signal.SIGKILL)
    replacement = wait_for(lambda: [w for w in workers_of(primary) if w != worker])
    assert replacement, "the primary should start another worker"
    for i in range(10):
        with httpx.Client(proxy=two_workers.proxy_url, trust_env=False, timeout=10) as client:
            assert client.get(upstream.url(f"/after/{i}")).status_code == 200
    assert any("exited" in line and str(worker) in line for line in two_workers.lines)


def _server_pid(local_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` accepted the loopback connection whose client side is ``local_port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == local_port:  # remote end: our client socket
                inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in inodes:
                    return pid
            except OSError:
                continue
    return None


def test_a_worker_killed_mid_forward_is_failed_interrupted_by_the_primary_and_never_resent(
        two_workers: ServeProcess, upstream: Upstream, tmp_path: Path) -> None:
    """store/sql.py Rule 6 across processes: the primary sweeps the dead worker's forward."""
    primary = two_workers.proc.pid
    [worker] = workers_of(primary)
    host, port = two_workers.proxy_url.removeprefix("http://").split(":")
    # Open connections until one lands on the worker (the kernel picks by the 4-tuple).
    for _ in range(50):
        sock = socket.create_connection((host, int(port)), timeout=10)
        owner = wait_for(lambda s=sock: _server_pid(s.getsockname()[1], [primary, worker]), 5)
        if owner == worker:
            break
        sock.close()
    else:
        pytest.fail("no connection landed on the worker")
    target = upstream.url("/hold/mid?stall=30")
    sock.sendall(f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n\r\nonce".encode())
    with httpx.Client(base_url=two_workers.review_url, headers={"Authorization": f"Bearer {token(tmp_path)}"},
                      trust_env=False, timeout=10) as api:
        [item] = wait_for(lambda: api.get("/api/requests", params={"status": "pending"}).json()["items"])
        assert api.post(f"/api/requests/{item['id']}/approve", json={}).status_code == 200
        assert wait_for(lambda: upstream.count("/hold/mid") == 1), "the worker never forwarded"
        os.kill(worker, signal.SIGKILL)  # mid-forward: the upstream is holding the response
        sock.close()
        rec = wait_for(lambda: (r := api.get(f"/api/requests/{item['id']}").json())["status"] == "failed" and r,
                       20)
    upstream.release.set()
    assert rec and rec["failure_reason"] == "interrupted"
    assert upstream.count("/hold/mid") == 1


@pytest.mark.parametrize(("value", "message"), [
    ("0", "proxy.workers: 0 is too small (expected 1 or more)"),
    ("65", "proxy.workers: 65 is too large (expected 64 or less)"),
    ("two", "proxy.workers: 'two' is not a whole number"),
])
def test_a_bad_workers_count_is_refused(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, {"HITL_PROXY_WORKERS": value})
    assert str(err.value).startswith(message)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True
