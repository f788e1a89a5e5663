"""Pass-through overhead: requests/s and latency through hitl-proxy, tinyproxy and squid vs
direct, with wrk sending absolute-form requests (as HTTP_PROXY clients do), plus the policy
evaluation cost. Prints tables; asserts nothing.

    make bench                      # or: .venv/bin/python bench/run.py --duration 10
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
HITL = str(Path(PY).parent / "hitl-proxy")

ALLOW_ALL = 'package hitl\n\ndecision := {"action": "allow", "rule": "bench"}\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def start(cmd: list[str], **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, **kw)  # type: ignore[call-overload]


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def wrk(proxy_port: int | None, upstream_port: int, conns: int, duration: int, tmp: Path) -> dict[str, float]:
    threads = min(2, conns)
    if proxy_port is None:
        target = f"http://127.0.0.1:{upstream_port}/"
        args = []
    else:
        script = tmp / "absolute.lua"
        script.write_text(f'wrk.path = "http://127.0.0.1:{upstream_port}/bench"\n'
                          f'wrk.headers["Host"] = "127.0.0.1:{upstream_port}"\n')
        target = f"http://127.0.0.1:{proxy_port}/"
        args = ["-s", str(script)]
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", *args, target],
                         check=False, capture_output=True, text=True, timeout=duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = {p: _ms(re.search(rf"\s{p}%\s+([\d.]+\w+)", out).group(1)) for p in ("50", "99")}  # type: ignore[union-attr]
    return {"rps": rps, "p50": lat["50"], "p99": lat["99"], "non2xx": float(errors.group(1)) if errors else 0.0}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def start_hitl(tmp: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    (tmp / "policies").mkdir(exist_ok=True)
    (tmp / "policies" / "bench.rego").write_text(ALLOW_ALL)
    review = free_port()
    config = tmp / f"hitl-{workers}.yaml"
    config.write_text(
        f"data_dir: {tmp}/data-{workers}\nproxy:\n  listen: 127.0.0.1:{port}\n  workers: {workers}\n"
        f"  allow_networks: [127.0.0.0/8]\n  ca_dir: {tmp}/data-{workers}/ca\nreview:\n  listen: 127.0.0.1:{review}\n"
        f"policy:\n  paths: [{tmp}/policies]\nstore:\n  url: sqlite:///{tmp}/data-{workers}/hitl.db\n"
        f"log:\n  level: warning\n  format: json\n")
    return start([HITL, "serve", "-c", str(config)])


def start_tinyproxy(tmp: Path, port: int) -> subprocess.Popen[bytes] | None:
    if not shutil.which("tinyproxy"):
        return None
    conf = tmp / "tinyproxy.conf"
    conf.write_text(f"Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 200\nLogLevel Critical\n"
                    f"Allow 127.0.0.1\nDisableViaHeader Yes\n")
    return start(["tinyproxy", "-d", "-c", str(conf)])


def start_squid(tmp: Path, port: int) -> subprocess.Popen[bytes] | None:
    squid = shutil.which("squid") or ("/usr/sbin/squid" if Path("/usr/sbin/squid").exists() else None)
    if not squid:
        return None
    conf = tmp / "squid.conf"
    conf.write_text(
        f"http_port 127.0.0.1:{port}\nhttp_access allow all\ncache deny all\nshutdown_lifetime 0 seconds\n"
        f"pid_filename {tmp}/squid.pid\ncache_log {tmp}/squid-cache.log\naccess_log none\n"
        f"coredump_dir {tmp}\nworkers 1\n")
    return start([squid, "-N", "-f", str(conf)])


def policy_eval_p50(n: int = 3000) -> dict[str, tuple[float, float]]:
    """p50 µs of input build + evaluation + decision parse with the shipped policies, for a
    GET to an unlisted host (allow) and a Stripe charge (hold): each input new (the path or
    the amount changes every time), and the same input again (the engine's decision cache)."""
    sys.path.insert(0, str(ROOT))
    from proxy.model import Agent, AgentRequest
    from proxy.policy.embedded import EmbeddedEngine
    from proxy.policy.input import build_input

    engine = EmbeddedEngine.load([ROOT / "policies"])
    agent = Agent("billing-agent", "127.0.0.1")

    def allow(i: int) -> AgentRequest:
        return AgentRequest("GET", "https", "example.com", 443, f"/v1/items/{i}?page=2",
                            (("host", "example.com"), ("user-agent", "agent/1.0"), ("accept", "*/*")), b"")

    def hold(i: int) -> AgentRequest:
        body = b'{"amount": %d, "currency": "usd", "customer": "cus_123"}' % (25000 + i)
        return AgentRequest("POST", "https", "api.stripe.com", 443, "/v1/charges",
                            (("host", "api.stripe.com"), ("content-type", "application/json")), body)

    def p50(make: Any, vary: bool) -> float:
        samples = []
        for i in range(n):
            r = make(i if vary else 0)
            t = time.perf_counter()
            coro = engine.decide(build_input(r, agent, time.time()))
            try:  # decide() never awaits anything: drive the coroutine by hand, no loop overhead
                coro.send(None)
            except StopIteration:
                pass
            samples.append(time.perf_counter() - t)
        return statistics.median(samples) * 1e6

    return {"new": (p50(allow, True), p50(hold, True)), "repeated": (p50(allow, False), p50(hold, False))}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--conns", default="1,32")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="proxy.workers for the second hitl-proxy row (default: the core count)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk is not installed (make bench installs it)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        up_port, tiny_port, squid_port = free_port(), free_port(), free_port()
        procs = {"upstream": start([PY, str(ROOT / "bench" / "upstream_server.py"), str(up_port)])}
        ports: dict[str, int | None] = {"direct": None}
        for workers in sorted({1, args.workers}):
            name = f"hitl-proxy/{workers}"  # proxy.workers: processes serving the listener
            ports[name] = free_port()
            procs[name] = start_hitl(tmp, ports[name], workers)  # type: ignore[arg-type]
        tiny = start_tinyproxy(tmp, tiny_port)
        squid = start_squid(tmp, squid_port)
        if tiny:
            procs["tinyproxy"], ports["tinyproxy"] = tiny, tiny_port
        if squid:
            procs["squid"], ports["squid"] = squid, squid_port
        try:
            wait_port(up_port)
            for name, port in ports.items():
                if port is not None:
                    wait_port(port)
            rows = []
            for conns in (int(c) for c in args.conns.split(",")):
                base = None
                for name, port in ports.items():
                    wrk(port, up_port, conns, 1, tmp)  # warm-up
                    res = wrk(port, up_port, conns, args.duration, tmp)
                    base = base or res
                    rows.append((name, conns, res, base))
        finally:
            for proc in procs.values():
                stop(proc)
    print(f"\npass-through, allow-all policy, wrk {args.duration}s per row, {os.cpu_count()} cores shared "
          "by wrk, upstream and proxy; hitl-proxy/N = proxy.workers N\n")
    print(f"{'target':<14} {'conns':>5} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8} {'non-2xx':>8}")
    for name, conns, res, base in rows:
        print(f"{name:<14} {conns:>5} {res['rps']:>10.0f} {res['p50']:>8.2f} {res['p99']:>8.2f} "
              f"{res['p50'] - base['p50']:>8.2f} {res['p99'] - base['p99']:>8.2f} {res['non2xx']:>8.0f}")
    evals = policy_eval_p50()
    print("\npolicy evaluation, shipped policies (input build + eval + decision parse), p50 µs of 3000\n")
    print(f"{'input':<34} {'each new':>9} {'repeated':>9}")
    for i, label in enumerate(("GET to an unlisted host (allow)", "POST Stripe charge (hold)")):
        print(f"{label:<34} {evals['new'][i]:>9.0f} {evals['repeated'][i]:>9.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
