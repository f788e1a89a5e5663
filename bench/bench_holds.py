"""Held requests: what 10,000 waiting agents cost, and how fast an approval reaches the upstream.

    .venv/bin/python bench/bench_holds.py [--holds 10000] [--wait 30] [--decisions 100]

One ``hitl-proxy serve`` process (SQLite store, ``allow_networks: [127.0.0.0/8]``) with a policy
that holds every POST and allows the rest; a recording upstream in its own process notes when
the first byte of each forwarded hold arrives. Two benchmarks, each a table:

1. Hold capacity: ``--holds`` agents (default 10,000), each on its own connection, send a POST
   that is held and wait for its answer. Reported: the proxy's RSS before and after
   (/proc/PID/status), the CPU it uses while they wait (utime + stime from /proc/PID/stat over
   ``--wait`` seconds, in % of one core), and pass-through (wrk, GET, ``--conns`` connections,
   ``--duration`` seconds) without and with the holds, as req/s and CPU ms per request (the
   latter survives a noisy machine).
2. Decision latency: ``--decisions`` held requests approved through the review API, one at a
   time and then all at once (a burst); for each, the time from sending the approval to the
   first byte of the forwarded request at the upstream (p50, p99, max).

Finally the proxy is stopped (SIGTERM) and the time until every agent still waiting has its
``approval_pending`` answer is shown. The bench raises its own open-file limit (and so the
proxy's, which it starts) to the hard limit with ``resource.setrlimit``: each hold is one socket
on each side. Pinned as the other benchmarks are (harness.py: with taskset and two cores, the
proxy and the upstream on one core, the agents and wrk on the other). Prints tables; asserts
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    HITL,
    LOAD_CORE,
    PIN,
    PY,
    SERVER_CORE,
    free_port,
    hitl_config,
    machine_header,
    on_core,
    process_cpu,
    rss_mib,
    start,
    stop,
    wait_port,
)
from harness import wrk as harness_wrk

TOKEN = "hitl_bench000_" + "b" * 43
TOKEN_HASH = "sha256:" + __import__("hashlib").sha256(TOKEN.encode()).hexdigest()

POLICY = '''package hitl

import rego.v1

default decision := {"action": "allow", "rule": "bench.pass"}

decision := {"action": "hold", "rule": "bench.hold", "message": "bench hold"} if input.request.method == "POST"
'''

# -- the recording upstream (a subprocess: `bench_holds.py --upstream PORT`) ----------------
def run_upstream(port: int) -> None:
    """Answer everything with a small 200; print ``<path> <monotonic>`` when the first byte of a
    request to /hold/... arrives (CLOCK_MONOTONIC is one clock for every process on the host)."""
    response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"ok\":true}\n"
    out = sys.stdout

    class Proto(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.buf = b""
            self.first = 0.0

        def data_received(self, data: bytes) -> None:
            if not self.buf:
                self.first = time.monotonic()
            self.buf += data
            while True:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buf[:end]
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if len(self.buf) < end + 4 + length:
                    return
                self.buf = self.buf[end + 4 + length:]
                path = head.split(b" ", 2)[1]
                if path.startswith(b"/hold/"):
                    out.write(f"{path.decode()} {self.first:.6f}\n")
                    out.flush()
                self.transport.write(response)
                self.first = time.monotonic()

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


class Arrivals:
    """The upstream's lines, read in a thread: path → first-byte time, and a count per path."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.first: dict[str, float] = {}
        self.count: dict[str, int] = {}
        self.cond = threading.Condition()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            path, at = line.split()
            with self.cond:
                self.first.setdefault(path, float(at))
                self.count[path] = self.count.get(path, 0) + 1
                self.cond.notify_all()

    def wait_for(self, path: str, timeout: float) -> float | None:
        with self.cond:
            self.cond.wait_for(lambda: path in self.first, timeout)
            return self.first.get(path)


# -- the proxy ------------------------------------------------------------------------------
def start_proxy(tmp: Path, port: int, review: int, holds: int, store: str,
                workers: int) -> subprocess.Popen[bytes]:
    config = hitl_config(tmp, "proxy", port, POLICY, workers, settings={
        "proxy": {"shutdown_grace": "20s"},
        "review": {"listen": f"127.0.0.1:{review}", "tokens": [{"name": "bench", "token_hash": TOKEN_HASH}]},
        "store": {"url": store},
        "hold": {"client_wait": "30m", "timeout": "1h", "max_pending_per_agent": holds + 10},
    })
    return start([HITL, "serve", "-c", str(config)], core=SERVER_CORE)


def wait_healthy(port: int, timeout: float = 30) -> None:
    wait_port(port, timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.1)
    raise RuntimeError("the review listener never became healthy")


def pending_ids(store: str) -> dict[str, str]:
    """target path → record id of every pending hold, read from the store itself."""
    query = "SELECT target, id FROM requests WHERE status='pending'"
    if store.startswith("sqlite:///"):
        db = store.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
            return dict(conn.execute(query).fetchall())
    import psycopg

    url, _, params = store.partition("?")
    schema = dict(p.split("=", 1) for p in params.split("&") if p).get("schema")
    with psycopg.connect(url, autocommit=True) as conn:
        if schema:
            conn.execute(f"SET search_path TO {schema}")
        return dict(conn.execute(query).fetchall())  # type: ignore[arg-type]


def processes(pid: int) -> list[int]:
    """The proxy and its proxy.workers processes (its children)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def summed(measure: Any, pid: int) -> float:
    """``measure`` (RSS, CPU seconds) summed over the proxy's processes."""
    out = 0.0
    for p in processes(pid):
        with contextlib.suppress(OSError):
            out += measure(p)
    return out


# -- load -----------------------------------------------------------------------------------
def wrk(proxy_port: int, upstream_port: int, conns: int, duration: int, tmp: Path,
        pid: int) -> tuple[float, float]:
    """(req/s, proxy CPU ms per request, all its processes) of absolute-form GETs through the proxy."""
    try:
        result = harness_wrk(proxy_port, upstream_port, conns, duration, tmp, path="/pass",
                             cpu=lambda: summed(process_cpu, pid))
    except RuntimeError:  # wrk printed no result
        return float("nan"), float("nan")
    return result["rps"], result["cpu_us"] / 1000


class Agents:
    """Agents on their own connections, each sending one held POST and waiting for its answer."""

    def __init__(self, proxy_port: int, upstream_port: int) -> None:
        self.proxy_port, self.upstream_port = proxy_port, upstream_port
        self.tasks: dict[str, asyncio.Task[int]] = {}

    async def send(self, n: int, open_at_once: int = 200) -> None:
        gate = asyncio.Semaphore(open_at_once)
        sent: list[asyncio.Future[None]] = []
        for i in range(n):
            path = f"/hold/{i}"
            ready = asyncio.get_running_loop().create_future()
            sent.append(ready)
            self.tasks[path] = asyncio.create_task(self._one(path, gate, ready))
        await asyncio.gather(*sent)

    async def _one(self, path: str, gate: asyncio.Semaphore, ready: asyncio.Future[None]) -> int:
        async with gate:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.proxy_port)
            except OSError:
                ready.set_result(None)
                return -1
            body = b'{"to": "customer-%s", "amount": 4200, "note": "bench"}' % path[6:].encode()
            writer.write(b"POST http://127.0.0.1:%d%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (self.upstream_port, path.encode(), self.upstream_port, len(body), body))
            await writer.drain()
        ready.set_result(None)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            return int(head.split(b" ", 2)[1])
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return -1
        finally:
            writer.close()

    def statuses(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for task in self.tasks.values():
            if task.done() and not task.cancelled():
                out[task.result()] = out.get(task.result(), 0) + 1
        return out


async def approve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rid: str) -> int:
    writer.write(b"POST /api/requests/%s/approve HTTP/1.1\r\nHost: review\r\nAuthorization: Bearer %s\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}" % (rid.encode(), TOKEN.encode()))
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    if not samples:
        return float("nan"), float("nan"), float("nan")
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99, ordered[-1]


async def decisions(review: int, ids: list[tuple[str, str]], arrivals: Arrivals,
                    burst: bool) -> tuple[list[float], int]:
    """Approve each (path, id) on a connection opened beforehand; return decision → first byte
    at the upstream, in ms, and how many approvals were not answered 200."""
    loop = asyncio.get_running_loop()
    sent_at: dict[str, float] = {}

    async def one(path: str, rid: str, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> int:
        sent_at[path] = time.monotonic()
        try:
            return await approve(*conn, rid)
        except (OSError, asyncio.IncompleteReadError):
            return -1
        finally:
            conn[1].close()

    codes = []
    if burst:
        conns = [await asyncio.open_connection("127.0.0.1", review) for _ in ids]
        codes = await asyncio.gather(*(one(p, r, c) for (p, r), c in zip(ids, conns, strict=True)))
    else:
        for path, rid in ids:
            codes.append(await one(path, rid, await asyncio.open_connection("127.0.0.1", review)))
            await loop.run_in_executor(None, arrivals.wait_for, path, 10.0)
    out = []
    for path, _ in ids:
        at = await loop.run_in_executor(None, arrivals.wait_for, path, 10.0)
        if at is not None:
            out.append((at - sent_at[path]) * 1000)
    return out, sum(1 for c in codes if c != 200)


# -- the run --------------------------------------------------------------------------------
def raise_fd_limit(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def bench(args: argparse.Namespace, tmp: Path, loop: asyncio.AbstractEventLoop) -> None:
    """Synchronous, with ``loop`` run for the asynchronous parts (the agents, the approvals):
    between them the agents' sockets simply wait in the kernel."""
    if PIN:  # the agents (this process) on the load core; the proxy and the upstream on the server's
        os.sched_setaffinity(0, {LOAD_CORE})
    limit = raise_fd_limit(args.holds + 1000)
    up_port, proxy_port, review = free_port(), free_port(), free_port()
    upstream = subprocess.Popen(on_core(SERVER_CORE, [PY, __file__, "--upstream", str(up_port)]), stdout=subprocess.PIPE,
                                text=True, start_new_session=True)
    arrivals = Arrivals(upstream)
    total = args.holds + 2 * args.decisions  # the approved ones are held like the others first
    store = args.store or f"sqlite:///{tmp}/proxy/data/hitl.db"  # hitl_config's data_dir
    proxy = start_proxy(tmp, proxy_port, review, total, store, args.workers)
    has_wrk = shutil.which("wrk") is not None
    try:
        wait_port(up_port)
        wait_healthy(review)
        wait_port(proxy_port)
        pid = proxy.pid
        if has_wrk:
            wrk(proxy_port, up_port, args.conns, 1, tmp, pid)  # warm-up
        time.sleep(1)
        rss_idle = summed(rss_mib, pid)
        plain = wrk(proxy_port, up_port, args.conns, args.duration, tmp, pid) if has_wrk else None
        time.sleep(1)
        rss_before = summed(rss_mib, pid)

        agents = Agents(proxy_port, up_port)
        started = time.monotonic()
        cpu_at = summed(process_cpu, pid)
        loop.run_until_complete(agents.send(total))
        deadline = time.monotonic() + args.hold_timeout
        held = 0
        while time.monotonic() < deadline:
            held = len(pending_ids(store))
            if held >= total:
                break
            time.sleep(0.5)
        hold_secs = time.monotonic() - started
        hold_cpu = summed(process_cpu, pid) - cpu_at
        time.sleep(2)  # settle
        rss_held = summed(rss_mib, pid)
        cpu_at, t0 = summed(process_cpu, pid), time.monotonic()
        time.sleep(args.wait)
        waiting_pct = (summed(process_cpu, pid) - cpu_at) / (time.monotonic() - t0) * 100
        loaded = wrk(proxy_port, up_port, args.conns, args.duration, tmp, pid) if has_wrk else None
        rss_after = summed(rss_mib, pid)

        print(machine_header())
        kind = "SQLite" if store.startswith("sqlite") else "PostgreSQL"
        procs = "one process" if args.workers == 1 else f"proxy.workers {args.workers} (RSS and CPU summed)"
        print(f"\nhold capacity: {total} agents with a held POST each (small JSON), `hitl-proxy serve`,"
              f" {procs}, {kind} store; open-file limit raised to {limit} (resource.setrlimit)\n")
        rows = [
            ("RSS idle (after warm-up)", f"{rss_idle:.0f} MiB"),
            ("RSS before the holds (after wrk)", f"{rss_before:.0f} MiB"),
            (f"RSS with {held} holds waiting", f"{rss_held:.0f} MiB"),
            ("RSS per hold", f"{(rss_held - rss_before) * 1024 / max(1, held):.1f} KiB"),
            ("RSS after wrk with the holds", f"{rss_after:.0f} MiB"),
            (f"time to hold {held}", f"{hold_secs:.1f} s ({hold_cpu * 1e6 / max(1, held):.0f} µs proxy CPU each)"),
            (f"proxy CPU while they wait ({args.wait:.0f} s)", f"{waiting_pct:.2f} % of a core"),
        ]
        if plain and loaded:
            rows += [
                (f"pass-through, no holds (wrk c={args.conns})", f"{plain[0]:.0f} req/s, {plain[1]:.3f} CPU ms/req"),
                (f"pass-through, {held} holds waiting", f"{loaded[0]:.0f} req/s, {loaded[1]:.3f} CPU ms/req"),
                ("with holds ÷ without", f"{loaded[0] / plain[0]:.2f}× req/s, {plain[1] / loaded[1]:.2f}× CPU/req"),
            ]
        else:
            rows.append(("pass-through", "skipped: wrk is not installed (make bench installs it)"))
        width = max(len(r[0]) for r in rows)
        for label, value in rows:
            print(f"{label:<{width}}  {value}", flush=True)

        ids = pending_ids(store)
        picks = [(f"/hold/{i}", ids[f"/hold/{i}"]) for i in range(args.holds, total) if f"/hold/{i}" in ids]
        one_by_one, failed1 = loop.run_until_complete(decisions(review, picks[:args.decisions], arrivals, burst=False))
        burst, failed2 = loop.run_until_complete(decisions(review, picks[args.decisions:], arrivals, burst=True))
        print(f"\ndecision latency: approval sent to the review API → first byte of the forwarded request"
              f" at the upstream, ms (with the other {held - len(picks)} holds waiting)\n")
        print(f"{'approvals':<22} {'n':>5} {'p50':>8} {'p99':>8} {'max':>8} {'non-200':>8}")
        for label, samples, failed in (("one by one", one_by_one, failed1), ("burst (all at once)", burst, failed2)):
            p50, p99, top = percentiles(samples)
            print(f"{label:<22} {len(samples):>5} {p50:>8.2f} {p99:>8.2f} {top:>8.2f} {failed:>8}", flush=True)
        loop.run_until_complete(asyncio.sleep(1))  # the approved agents read their answers
        answered = agents.statuses()
        twice = sum(1 for c in arrivals.count.values() if c > 1)

        stop_at = time.monotonic()
        os.killpg(proxy.pid, signal.SIGTERM)
        waiting = [t for t in agents.tasks.values() if not t.done()]
        if waiting:
            loop.run_until_complete(asyncio.wait(waiting, timeout=60))
        stop_secs = time.monotonic() - stop_at
        pending_answers = agents.statuses().get(503, 0)
    finally:
        stop(proxy)
        stop(upstream)  # type: ignore[arg-type]
    print(f"\nagents answered after the approvals (status: count): {answered}; forwarded twice: {twice}")
    print(f"SIGTERM → every waiting agent answered: {stop_secs:.1f} s ({pending_answers} approval_pending)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--holds", type=int, default=10_000, help="agents waiting on a hold (default 10000)")
    ap.add_argument("--wait", type=float, default=30.0, help="seconds the proxy's CPU is read while they wait")
    ap.add_argument("--decisions", type=int, default=100,
                    help="approvals one by one, and as many again in a burst (default 100)")
    ap.add_argument("--conns", type=int, default=32, help="wrk connections for pass-through (default 32)")
    ap.add_argument("--duration", type=int, default=5, help="wrk seconds per pass-through row (default 5)")
    ap.add_argument("--hold-timeout", type=float, default=120.0, help="give up waiting for the holds after this")
    ap.add_argument("--workers", type=int, default=1,
                    help="proxy.workers (default 1); with more, approvals made in the primary reach agents"
                         " held in the workers through the change feed")
    ap.add_argument("--store", help="store.url (default: SQLite in a temporary folder), e.g. a"
                                    " postgresql://…?schema=NAME URL to measure LISTEN/NOTIFY")
    ap.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.upstream is not None:
        run_upstream(args.upstream)
        return 0
    loop = asyncio.new_event_loop()
    try:
        with tempfile.TemporaryDirectory() as d:
            bench(args, Path(d), loop)
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
