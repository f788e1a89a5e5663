"""What recording allowed traffic in the decision log costs on the pass-through path.

Two measurements, printed as tables (nothing asserted):

1. Per judged request, in µs, for a small GET and a JSON POST: ``DecisionRecorder.judged``
   on the event loop (a list append), and the redaction + ``json.dumps`` that the writer does
   later in a worker thread, beside the policy evaluation they follow.
2. End to end: hitl-proxy (one process, allow-all policy) under wrk, with
   ``policy.decision_log: 0`` (off), ``decision_log_allowed: 0.1`` and ``1.0`` (every
   allowed request), rounds interleaved so that load from elsewhere on the machine spreads
   over all three.

    .venv/bin/python bench/bench_decision_log.py --duration 5 --rounds 3 --conns 1,32
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import (
    HITL,
    ROOT,
    SERVER_CORE,
    free_port,
    hitl_config,
    process_cpu,
    start,
    start_nginx,
    start_python_upstream,
    stop,
    wait_port,
    wrk,
)

from proxy.decision_log import DecisionRecorder
from proxy.model import Action, Agent, AgentRequest, Decision
from proxy.policy.embedded import EmbeddedEngine
from proxy.policy.input import build_input

POLICIES = ROOT / "policies"
_LOOP = asyncio.new_event_loop()


def engine_call(engine: EmbeddedEngine, doc: dict[str, object]) -> None:
    _LOOP.run_until_complete(engine.decide(doc))

MODES = {"off": (0, 1.0), "allowed 10%": (100000, 0.1), "allowed 100%": (100000, 1.0)}


def judged_cost(n: int = 20000) -> dict[str, float]:
    """µs per DecisionRecorder.judged call (the store is never reached: no flush runs)."""
    recorder = DecisionRecorder(store=None, max_rows=10**9)
    allow = Decision(Action.ALLOW, rule="default")
    agent = Agent("billing-agent", "127.0.0.1")
    headers = (("host", "api.example.com"), ("user-agent", "python-httpx/0.28"), ("accept", "*/*"),
               ("authorization", "Bearer sk_test_x"), ("content-type", "application/json"))
    reqs = {
        "GET, no body": AgentRequest("GET", "https", "api.example.com", 443, "/v1/items?limit=10", headers),
        "POST, 200 B JSON": AgentRequest("POST", "https", "api.stripe.com", 443, "/v1/charges", headers,
                                         b'{"amount": 5000, "currency": "usd", "customer": "cus_123", '
                                         b'"description": "' + b"x" * 120 + b'"}'),
    }
    out = {}
    engine = EmbeddedEngine.load([POLICIES], "data.hitl.decision")
    for label, req in reqs.items():
        doc = build_input(req, agent, time.time())
        evals = []
        for i in range(2000):  # the shipped policies, each input new (no decision cache hit)
            varied = build_input(req, agent, time.time() + i)
            t = time.perf_counter()
            engine_call(engine, varied)
            evals.append((time.perf_counter() - t) * 1e6)
        out[f"{label}: policy eval"] = statistics.median(evals)
        on_loop, off_loop = [], []
        for _ in range(5):
            recorder._judged.clear()
            t = time.perf_counter()
            for _ in range(n // 5):
                recorder.judged(doc, allow, 0.0, False)
            on_loop.append((time.perf_counter() - t) / (n // 5) * 1e6)
            batch = recorder._judged[:2000]
            t = time.perf_counter()
            recorder._rows_of(batch)
            off_loop.append((time.perf_counter() - t) / len(batch) * 1e6)
        recorder._judged.clear()
        out[f"{label}: redact + JSON (writer)"] = statistics.median(off_loop)
        out[f"{label}: judged() (event loop)"] = statistics.median(on_loop)
    return out


def start_hitl(tmp: Path, name: str, max_rows: int, share: float) -> tuple[int, Any]:
    port = free_port()
    config = hitl_config(tmp, name.replace(" ", "-").replace("%", ""), port, settings={
        "policy": {"decision_log": max_rows, "decision_log_allowed": share}})
    return port, start([HITL, "serve", "-c", str(config)], core=SERVER_CORE)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", default="1,32")
    args = ap.parse_args()

    costs = judged_cost()
    print("\nPer request, median µs: the policy evaluation (shipped policies, a new input each time),"
          "\nDecisionRecorder.judged on the event loop, and the redaction + JSON in the writer thread\n")
    for label, us in costs.items():
        print(f"  {label:<34} {us:>7.1f}")

    conns = [int(c) for c in args.conns.split(",")]
    results: dict[tuple[str, int], list[dict[str, float]]] = {(m, c): [] for m in MODES for c in conns}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        up_port = free_port()
        upstream = start_nginx(tmp, up_port) or start_python_upstream(up_port)
        procs: dict[str, Any] = {"upstream": upstream}
        ports = {}
        try:
            for mode, (rows, share) in MODES.items():
                ports[mode], procs[mode] = start_hitl(tmp, mode, rows, share)
            wait_port(up_port)
            for port in ports.values():
                wait_port(port)
                wrk(port, up_port, max(conns), 1, tmp)  # warm-up
            for _ in range(args.rounds):
                for c in conns:
                    for mode, port in ports.items():
                        results[(mode, c)].append(wrk(port, up_port, c, args.duration, tmp,
                                                      cpu=functools.partial(process_cpu, procs[mode].pid)))
        finally:
            for proc in procs.values():
                stop(proc)
    print(f"\npass-through, allow-all policy, wrk {args.duration}s x {args.rounds} rounds (interleaved), "
          "median of rounds; CPU: the proxy's own, all its threads\n")
    print(f"{'decision log':<14} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/req':>10}")
    for c in conns:
        base = None
        for mode in MODES:
            runs = results[(mode, c)]
            rps = statistics.median(r["rps"] for r in runs)
            base = base or rps
            print(f"{mode:<14} {c:>5} {rps:>9.0f} {statistics.median(r['p50'] for r in runs):>8.2f} "
                  f"{statistics.median(r['p99'] for r in runs):>8.2f} "
                  f"{statistics.median(r['cpu_us'] for r in runs):>10.0f}   ({(rps / base - 1) * 100:+.1f}% req/s)")
    return 0


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    raise SystemExit(main())
