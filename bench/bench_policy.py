"""Policy evaluation cost with the shipped policies: input build + evaluation + decision
parse, for a GET to an unlisted host (allow) and a Stripe charge (hold), each input new
(the path or the amount changes every time) and the same input again (the engine's
decision cache). Prints a table; asserts nothing.

    .venv/bin/python bench/bench_policy.py [--n 3000]

``make bench`` runs it after the pass-through table of ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LABELS = ("GET to an unlisted host (allow)", "POST Stripe charge (hold)")


def policy_eval_samples(n: int = 3000) -> dict[str, tuple[list[float], list[float]]]:
    """Seconds per decision, ``n`` samples each: {"new": (allow, hold), "repeated": (…)}."""
    sys.path.insert(0, str(ROOT))
    from proxy.model import Agent, AgentRequest
    from proxy.policy.embedded import ROUTE_AFTER, EmbeddedEngine
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

    async def warm() -> None:
        """As a busy gate: enough evaluations for the engine to prepare its routes, and
        one round per host after that, for each host to learn the route it needs."""
        for round_ in range(6):  # each input new: the decision cache would answer a repeat
            for i in range(ROUTE_AFTER if round_ == 0 else 8):
                for make in (allow, hold):
                    await engine.decide(build_input(make(-1 - i - 1000 * round_), agent, time.time()))
            engine.settle()

    asyncio.run(warm())

    def samples(make: Callable[[int], AgentRequest], vary: bool) -> list[float]:
        out = []
        for i in range(n):
            r = make(i if vary else 0)
            t = time.perf_counter()
            coro = engine.decide(build_input(r, agent, time.time()))
            try:  # decide() never awaits anything: drive the coroutine by hand, no loop overhead
                coro.send(None)
            except StopIteration:
                pass
            out.append(time.perf_counter() - t)
        return out

    try:
        return {"new": (samples(allow, True), samples(hold, True)),
                "repeated": (samples(allow, False), samples(hold, False))}
    finally:
        engine.close()


def policy_eval_p50(n: int = 3000) -> dict[str, tuple[float, float]]:
    """p50 µs of input build + evaluation + decision parse: {"new": (allow, hold), "repeated": (…)}."""
    return {kind: (_pct(a, 50), _pct(h, 50)) for kind, (a, h) in policy_eval_samples(n).items()}


def _pct(samples: list[float], p: int) -> float:
    if p == 50:
        return statistics.median(samples) * 1e6
    return statistics.quantiles(samples, n=100)[p - 1] * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="samples per row")
    args = ap.parse_args()
    runs: dict[str, Any] = policy_eval_samples(args.n)
    print(f"\npolicy evaluation, shipped policies (input build + eval + decision parse), µs of {args.n}\n")
    print(f"{'input':<34} {'new p50':>8} {'new p99':>8} {'rep p50':>8} {'rep p99':>8}")
    for i, label in enumerate(LABELS):
        new, rep = runs["new"][i], runs["repeated"][i]
        print(f"{label:<34} {_pct(new, 50):>8.0f} {_pct(new, 99):>8.0f} "
              f"{_pct(rep, 50):>8.0f} {_pct(rep, 99):>8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
