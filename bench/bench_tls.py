"""HTTPS through hitl-proxy: blind-tunnel throughput against direct, and intercepted req/s.

    .venv/bin/python bench/bench_tls.py [--duration 8] [--runs 3]

An HTTPS upstream (a thread per connection, a trustme certificate) runs in its own process; ``hitl-proxy
serve`` in another, with an allow-all policy whose ``intercept`` rule makes ``localhost`` a
blind tunnel and ``127.0.0.1`` intercepted. The load generator is a small asyncio client (wrk
cannot CONNECT): it opens its connections once (CONNECT + TLS through the proxy, or TLS
straight to the upstream) and then sends keep-alive requests, reading each response by its
Content-Length. With ``--runs N`` each case runs N times, direct and tunnel interleaved, and
the table shows each case's median run. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

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
    process_cpu,
    start,
    start_tinyproxy,
    stop,
    wait_port,
)

BIG = 1024 * 1024
SMALL_BODY = b'{"ok": true}\n'

POLICY = '''package hitl

import rego.v1

decision := {"action": "allow", "rule": "bench"}

default intercept := true

intercept := false if input.request.host == "localhost"
'''


# -- the upstream (a subprocess) -----------------------------------------------------------
# A thread per connection with blocking TLS sockets: an answer is one sendall, which OpenSSL
# encrypts and writes record by record (16 KiB each, as nginx's default ssl_buffer_size
# does). The asyncio server this replaces pumped records in Python at ~70% of a core (~55%
# now): on two shared cores that starved whichever process ran beside it.
def _response(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


BIG_RESPONSE, SMALL_RESPONSE = _response(os.urandom(BIG)), _response(SMALL_BODY)


def _answer(conn: socket.socket) -> None:
    buf = b""
    while True:
        while (end := buf.find(b"\r\n\r\n")) < 0:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
        head, buf = buf[:end], buf[end + 4:]
        conn.sendall(BIG_RESPONSE if b" /big " in head.split(b"\r\n", 1)[0] + b" " else SMALL_RESPONSE)


def _serve_upstream(port: int, cert: str, key: str) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    def serve_one(conn: socket.socket, tls: bool) -> None:
        try:
            with ctx.wrap_socket(conn, server_side=True) if tls else conn as sock:
                _answer(sock)
        except (OSError, ssl.SSLError):
            conn.close()

    def accept(listener: socket.socket, tls: bool) -> None:
        while True:
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=serve_one, args=(conn, tls), daemon=True).start()

    # The same answers over plain HTTP on port + 1: the gate's cost without any TLS.
    listeners = [socket.create_server(("127.0.0.1", p), backlog=1024) for p in (port, port + 1)]
    threading.Thread(target=accept, args=(listeners[1], False), daemon=True).start()
    accept(listeners[0], True)


# -- the load generator --------------------------------------------------------------------
async def _open(target: tuple[str, int], host: str, proxy: int | None,
                ctx: ssl.SSLContext | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if ctx is None:  # plain HTTP through the proxy (absolute-form requests)
        assert proxy is not None
        return await asyncio.open_connection("127.0.0.1", proxy, limit=2 * BIG)
    if proxy is None:
        return await asyncio.open_connection(target[0], target[1], ssl=ctx, server_hostname=host,
                                             limit=2 * BIG)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy, limit=2 * BIG)
    writer.write(f"CONNECT {host}:{target[1]} HTTP/1.1\r\nHost: {host}:{target[1]}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if head.split(b" ", 2)[1:2] != [b"200"]:  # tinyproxy answers HTTP/1.0 200
        raise RuntimeError(f"CONNECT refused: {head!r}")
    await writer.start_tls(ctx, server_hostname=host)
    return reader, writer


async def _worker(target: tuple[str, int], host: str, proxy: int | None, ctx: ssl.SSLContext | None,
                  path: str, until: float, totals: list[int]) -> None:
    reader, writer = await _open(target, host, proxy, ctx)
    url = path if ctx is not None else f"http://{host}:{target[1]}{path}"
    request = f"GET {url} HTTP/1.1\r\nHost: {host}:{target[1]}\r\n\r\n".encode()
    try:
        while time.perf_counter() < until:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"bad response: {head[:200]!r}")
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            await reader.readexactly(length)
            totals[0] += 1
            totals[1] += length
    finally:
        writer.close()


async def _load(target: tuple[str, int], host: str, proxy: int | None, ctx: ssl.SSLContext | None,
                path: str, conns: int, duration: float) -> tuple[float, float]:
    totals = [0, 0]
    start_at = time.perf_counter()
    until = start_at + duration
    await asyncio.gather(*(_worker(target, host, proxy, ctx, path, until, totals) for _ in range(conns)))
    elapsed = time.perf_counter() - start_at
    return totals[0] / elapsed, totals[1] / elapsed


def group_cpu(pgid: int) -> float:
    """CPU seconds used so far by the live processes of a process group (tinyproxy forks)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def self_cpu() -> float:
    """CPU seconds used so far by this process (the load generator)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load(*args: object) -> tuple[float, float]:
    return asyncio.run(_load(*args))  # type: ignore[arg-type]


def free_port_pair() -> int:
    """A free port whose successor is free too."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free ports")


# -- the run -------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--runs", type=int, default=1, help="runs per case; the table shows the median")
    ap.add_argument("--upstream", nargs=3, metavar=("PORT", "CERT", "KEY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.upstream:
        _serve_upstream(int(args.upstream[0]), args.upstream[1], args.upstream[2])
        return 0
    import trustme

    if PIN:  # this process is the load generator: core 0; upstream and proxies: core 1
        os.sched_setaffinity(0, {LOAD_CORE})
    print(machine_header(), flush=True)

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        leaf.cert_chain_pems[0].write_to_path(str(tmp / "up.pem"))
        leaf.private_key_pem.write_to_path(str(tmp / "up.key"))
        ca.cert_pem.write_to_path(str(tmp / "up-ca.pem"))
        up_port = free_port_pair()  # TLS upstream on it, plain HTTP on the next port
        proxy_port, review_port = free_port(), free_port()
        while {proxy_port, review_port} & {up_port, up_port + 1}:
            proxy_port, review_port = free_port(), free_port()
        config = hitl_config(tmp, "hitl", proxy_port, POLICY, settings={
            "proxy": {"upstream_ca_bundle": str(tmp / "up-ca.pem")},
            "review": {"listen": f"127.0.0.1:{review_port}"}})
        procs = [start([PY, __file__, "--upstream", str(up_port), str(tmp / "up.pem"), str(tmp / "up.key")],
                       core=SERVER_CORE),
                 start([HITL, "serve", "-c", str(config)], core=SERVER_CORE)]
        tiny_port = free_port()
        tiny = start_tinyproxy(tmp, tiny_port)  # for comparison: a C proxy's blind tunnel, when installed
        try:
            wait_port(up_port)
            wait_port(proxy_port)
            if tiny:
                wait_port(tiny_port)
            ca_file = config.parent / "data" / "ca" / "ca.pem"
            deadline = time.monotonic() + 20  # the port is bound before the CA is loaded
            while not ca_file.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            target, plain = ("127.0.0.1", up_port), ("127.0.0.1", up_port + 1)
            up_ctx = ssl.create_default_context(cafile=str(tmp / "up-ca.pem"))
            hitl_ctx = ssl.create_default_context(cafile=str(ca_file))
            cases = [
                ("direct, 1 MiB GET", target, "localhost", None, up_ctx, "/big", 8),
                ("blind tunnel, 1 MiB GET", target, "localhost", proxy_port, up_ctx, "/big", 8),
                ("direct, small GET", target, "127.0.0.1", None, up_ctx, "/small", 32),
                ("plain HTTP via proxy", plain, "127.0.0.1", proxy_port, None, "/small", 32),
                ("intercepted, small GET", target, "127.0.0.1", proxy_port, hitl_ctx, "/small", 32),
            ]
            if tiny:
                cases.append(("tinyproxy tunnel, 1 MiB GET", target, "localhost", tiny_port, up_ctx, "/big", 8))
            runs: dict[str, list[tuple[float, float, float, float, float]]] = {c[0]: [] for c in cases}
            for name, tgt, host, via, ctx, path, conns in cases:
                load(tgt, host, via, ctx, path, conns, 1)  # warm-up: connections, leaf certificate
            for _ in range(args.runs):
                for name, tgt, host, via, ctx, path, conns in cases:
                    via_tiny = tiny is not None and via == tiny_port

                    def via_cpu(via_tiny: bool = via_tiny) -> float:
                        return group_cpu(tiny.pid) if via_tiny else process_cpu(procs[1].pid)  # type: ignore[union-attr]

                    cpu0 = [process_cpu(procs[0].pid), via_cpu(), self_cpu()]
                    t0 = time.perf_counter()
                    rps, bps = load(tgt, host, via, ctx, path, conns, args.duration)
                    wall = time.perf_counter() - t0
                    up, hitl, client = ((now - was) / wall for now, was in zip(
                        [process_cpu(procs[0].pid), via_cpu(), self_cpu()], cpu0))
                    runs[name].append((rps, bps, hitl if via else 0.0, up, client))
            rows = [(name, conns, *sorted(runs[name], key=lambda r: r[0])[(args.runs - 1) // 2])
                    for name, _t, _h, _v, _c, _p, conns in cases]
        finally:
            for proc in [*procs, *([tiny] if tiny else [])]:
                stop(proc)
    print(f"\nHTTPS through hitl-proxy, {args.duration:g}s per row (median of {args.runs}), keep-alive "
          f"connections opened once; "
          + (f"client on core {LOAD_CORE}, upstream and proxy on core {SERVER_CORE}" if PIN else
             f"{os.cpu_count()} cores shared by client, upstream and proxy")
          + " (load average now "
          f"{os.getloadavg()[0]:.1f})\n")
    print(f"{'case':<26} {'conns':>5} {'req/s':>9} {'MiB/s':>9} {'proxy CPU':>9} {'req/s per proxy core':>21}"
          f" {'upstream CPU':>12} {'client CPU':>10}")
    for name, conns, rps, bps, cpu, up, client in rows:
        per_core = f"{rps / cpu:>21.0f}" if cpu else f"{'':>21}"
        print(f"{name:<26} {conns:>5} {rps:>9.0f} {bps / BIG:>9.1f} {cpu:>9.0%} {per_core} "
              f"{up:>12.0%} {client:>10.0%}")
    if args.runs > 1:
        ratios = [t[1] / d[1] for d, t in zip(runs[cases[0][0]], runs[cases[1][0]])]
        print("\nblind tunnel / direct, run by run: " + ", ".join(f"{r:.2f}" for r in ratios))
    if tiny:
        print(f"tinyproxy's blind tunnel: {rows[5][3] / rows[0][3]:.2f}x direct")
    direct, tunnel = rows[0][3], rows[1][3]
    print(f"\nblind tunnel throughput: {tunnel / direct:.2f}x direct (target >= 0.8x); "
          f"intercepted: {rows[4][2]:.0f} req/s (target >= 1000)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
