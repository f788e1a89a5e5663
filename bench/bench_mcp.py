"""What recognizing MCP costs the traffic that is not MCP. Prints tables; asserts nothing.

1. The data plane: ``mcp.read`` on top of ``build_input`` (which the gate runs anyway), for
   the requests agents send most, and for an MCP tool call.
2. The shipped policies: one evaluation of a non-MCP request with the MCP module
   (policies/) and without it (the policies as they were before it, from git), with the
   decision cache off, so every evaluation runs rego-cpp.

    .venv/bin/python bench/bench_mcp.py [--rounds 200000] [--before c716a3d]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy import mcp
from proxy.model import Agent, AgentRequest
from proxy.policy.embedded import EmbeddedEngine
from proxy.policy.input import build_input

AGENT = Agent("billing-agent", "10.0.0.7")
JSON = (("content-type", "application/json"),)
FORM = (("content-type", "application/x-www-form-urlencoded"),)


def requests() -> dict[str, AgentRequest]:
    small = json.dumps({"amount": 5000, "currency": "usd", "customer": "cus_123"}).encode()
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 200}] * 40, "model": "m"}).encode()
    call = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                       "params": {"name": "send_email", "arguments": {"to": "a@b.c", "subject": "s"}}}).encode()
    return {
        "GET, no body": AgentRequest("GET", "https", "api.example.com", 443, "/v1/items?limit=10", ()),
        "POST JSON, 60 B": AgentRequest("POST", "https", "api.stripe.com", 443, "/v1/charges", JSON, small),
        "POST JSON, 8.5 KB": AgentRequest("POST", "https", "api.openai.com", 443, "/v1/chat", JSON, big),
        "POST form, 40 B": AgentRequest("POST", "https", "api.stripe.com", 443, "/v1/charges", FORM,
                                        b"amount=5000&currency=usd&customer=cus_1"),
        "MCP tools/call": AgentRequest("POST", "http", "mcp.internal", 80, "/mcp", JSON, call),
    }


def per_call_ns(fn: object, rounds: int) -> float:
    best = []
    for _ in range(5):
        started = time.perf_counter_ns()
        for _ in range(rounds):
            fn()  # type: ignore[operator]
        best.append((time.perf_counter_ns() - started) / rounds)
    return min(best)


def data_plane(rounds: int) -> None:
    print(f"\n1. mcp.read on top of build_input (best of 5 x {rounds:,} calls, ns per request,")
    print("   the cost of calling an empty lambda subtracted)")
    empty = per_call_ns(lambda: None, rounds)
    print(f"{'request':<20} {'build_input':>12} {'mcp.read':>10} {'share':>7}")
    for name, req in requests().items():
        doc = build_input(req, AGENT, 1795000000.0)
        body, ctype = doc["request"]["body"], doc["request"]["headers"].get("content-type")
        base = per_call_ns(lambda req=req: build_input(req, AGENT, 1795000000.0), max(rounds // 10, 1000))
        extra = per_call_ns(lambda req=req, body=body, ctype=ctype: mcp.read(req, body, ctype),
                            rounds if name != "MCP tools/call" else max(rounds // 10, 1000))
        base, extra = base - empty, extra - empty
        print(f"{name:<20} {base:>12,.0f} {extra:>10,.0f} {extra / base:>7.1%}")


def policy(before: str, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "policies"
        old.mkdir()
        names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{before}:policies"],
                               capture_output=True, text=True, check=True).stdout.split()
        for name in names:
            if not name.endswith("_test.rego"):
                text = subprocess.run(["git", "-C", str(ROOT), "show", f"{before}:policies/{name}"],
                                      capture_output=True, text=True, check=True).stdout
                (old / name).write_text(text)
        # The same policies twice: their difference is what load on the machine alone makes.
        engines = {"without mcp.rego": EmbeddedEngine.load([old]),
                   "with mcp.rego": EmbeddedEngine.load([ROOT / "policies"]),
                   "without, again": EmbeddedEngine.load([old])}
        cases = {name: build_input(req, AGENT, 1795000000.0) for name, req in requests().items()
                 if not name.startswith("MCP")}
        print(f"\n2. one policy evaluation, decision cache off (median of {rounds:,}, µs; the two")
        print("   policy sets alternate, so load on the machine weighs on both alike)")
        print(f"{'request':<20} " + " ".join(f"{k:>18}" for k in engines) + f" {'with-without':>12} {'noise (A/A)':>11}")
        for engine in engines.values():
            engine._cache = None  # every evaluation runs rego-cpp
        for name, doc in cases.items():
            samples: dict[str, list[int]] = {k: [] for k in engines}
            for _ in range(rounds):
                for key, engine in engines.items():
                    started = time.perf_counter_ns()
                    engine._evaluate(engine._entrypoint, doc)
                    samples[key].append(time.perf_counter_ns() - started)
            row = [statistics.median(v) / 1000 for v in samples.values()]
            print(f"{name:<20} " + " ".join(f"{v:>18.1f}" for v in row)
                  + f" {row[1] - row[0]:>+11.1f} {row[2] - row[0]:>+11.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200_000)
    parser.add_argument("--policy-rounds", type=int, default=2000)
    parser.add_argument("--before", default="c716a3d", help="the commit whose policies had no MCP module")
    args = parser.parse_args()
    data_plane(args.rounds)
    policy(args.before, args.policy_rounds)


if __name__ == "__main__":
    main()
