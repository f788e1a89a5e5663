"""Pass-through cost: requests/s and added latency through hitl-proxy, tinyproxy and squid
against going straight to nginx, with wrk sending absolute-form GETs of a 1 KiB body (as
HTTP_PROXY clients do) and an allow-all policy. Prints a Markdown table; asserts nothing.

    make bench                      # every benchmark, with the setup it needs
    .venv/bin/python bench/run.py [--duration 8] [--reps 2] [--baseline REV] [--workers N]

With two cores and taskset, wrk runs on core 0 and each server (nginx beside it) on core 1:
one process of hitl-proxy gets one core, as a sidecar pinned to one core does. Every cell
runs ``--reps`` times, the targets interleaved so that drift on the machine hits them all
alike; a cell shows the range over its runs. ``--baseline REV`` adds a column for hitl-proxy
at another commit (checked out into a temporary git worktree, run with this environment),
so a change is measured before and after in one run.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    HITL,
    ROOT,
    free_port,
    hitl_config,
    machine_header,
    process_cpu,
    rss_mib,
    start,
    start_hitl,
    start_nginx,
    start_python_upstream,
    start_squid,
    start_tinyproxy,
    stop,
    wait_port,
    wrk,
)

Result = dict[str, float]


def _span(values: list[float], fmt: Callable[[float], str]) -> str:
    lo, hi = min(values), max(values)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}–{fmt(hi)}"


def _rps(v: float) -> str:
    return f"{v / 1000:.1f}k" if v >= 10000 else f"{v / 1000:.2f}k" if v >= 1000 else f"{v:.0f}"


def _ms(v: float) -> str:
    return f"{v:.2f}"


def _us(v: float) -> str:
    return f"{v:.0f}"


def _added(v: float) -> str:
    return f"+{v:.2f}" if v >= 0 else f"{v:.2f}"


def table(runs: dict[tuple[str, int], list[Result]], names: list[str], conns: list[int]) -> str:
    """The Markdown table: a row per measure, a column per target, and hitl ÷ tinyproxy."""
    header = ["path", *names]
    ratio = "tinyproxy" in names and "hitl-proxy" in names
    if ratio:
        header.append("hitl ÷ tinyproxy")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    direct = {c: [r["p50"] for r in runs[("direct", c)]] for c in conns}

    def row(label: str, cell: Callable[[str, int], str], c: int, ratio_of: str | None) -> None:
        cells = [cell(name, c) for name in names]
        if ratio:
            if ratio_of:
                mine = sorted(r[ratio_of] for r in runs[("hitl-proxy", c)])
                theirs = sorted(r[ratio_of] for r in runs[("tinyproxy", c)])
                cells.append(f"**{sum(mine) / sum(theirs):.2f}×**")
            else:
                cells.append("—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for c in conns:
        row(f"HTTP c={c} req/s", lambda n, c: _span([r["rps"] for r in runs[(n, c)]], _rps), c, "rps")
        row(f"HTTP c={c} p50 ms" + (" (added over direct)" if c == 1 else ""),
            lambda n, c: _span([r["p50"] for r in runs[(n, c)]], _ms) if n == "direct" else
            _span([r["p50"] - min(direct[c]) for r in runs[(n, c)]], _added), c, None)
        row(f"HTTP c={c} p99 ms", lambda n, c: _span([r["p99"] for r in runs[(n, c)]], _ms), c, None)
        row(f"HTTP c={c} server CPU µs/request", lambda n, c: _span([r["cpu_us"] for r in runs[(n, c)]], _us),
            c, None)
    errors = {n: sum(r["errors"] for c in conns for r in runs[(n, c)]) for n in names}
    if any(errors.values()):
        lines.append("\nerrors (non-2xx or socket errors): "
                     + ", ".join(f"{n} {int(e)}" for n, e in errors.items() if e))
    return "\n".join(lines)


def baseline_tree(rev: str, tmp: Path) -> Path:
    path = tmp / "baseline-src"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), rev], check=True)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=8, help="seconds per run (default 8)")
    ap.add_argument("--reps", type=int, default=2, help="runs per cell, targets interleaved (default 2)")
    ap.add_argument("--conns", default="1,32", help="connection counts (default 1,32)")
    ap.add_argument("--baseline", metavar="REV", help="also measure hitl-proxy at this git revision")
    ap.add_argument("--workers", type=int, default=1,
                    help="also measure hitl-proxy with proxy.workers N (processes; unpinned cores)")
    ap.add_argument("--only", help="comma-separated targets to run (direct is always run)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk is not installed (make bench installs it)", file=sys.stderr)
        return 1
    conns = [int(c) for c in args.conns.split(",")]
    print(machine_header(), flush=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        up_port = free_port()
        upstream = start_nginx(tmp, up_port)
        upstream_name = "nginx"
        if upstream is None:
            print("# nginx is not installed: the upstream is bench/upstream_server.py (Python; slower)")
            upstream, upstream_name = start_python_upstream(up_port), "python"
        procs = {"upstream": upstream}
        ports: dict[str, int | None] = {"direct": None}
        wanted = set(args.only.split(",")) if args.only else None

        def add(name: str, proc: subprocess.Popen[bytes] | None, port: int) -> None:
            if proc is not None:
                procs[name], ports[name] = proc, port

        def want(name: str) -> bool:
            return wanted is None or name in wanted

        if want("tinyproxy"):
            port = free_port()
            add("tinyproxy", start_tinyproxy(tmp, port), port)
        if want("squid"):
            port = free_port()
            add("squid", start_squid(tmp, port), port)
        if want("hitl-proxy"):
            port = free_port()
            add("hitl-proxy", start_hitl(hitl_config(tmp, "hitl", port)), port)
        worktree = None
        try:
            if args.baseline:
                worktree = baseline_tree(args.baseline, tmp)
                port = free_port()
                add(f"hitl-proxy@{args.baseline}", start_hitl(hitl_config(tmp, "base", port), worktree), port)
            if args.workers > 1:
                port = free_port()
                proc = start([HITL, "serve", "-c", str(hitl_config(tmp, "multi", port, workers=args.workers))])
                add(f"hitl-proxy/{args.workers}", proc, port)
            wait_port(up_port)
            for port in ports.values():
                if port is not None:
                    wait_port(port)
            time.sleep(1.0)  # started: policies compiled, store opened
            idle = {n: rss_mib(procs[n].pid) for n in procs if n.startswith("hitl-proxy")}
            runs: dict[tuple[str, int], list[Result]] = {(n, c): [] for n in ports for c in conns}
            for rep in range(args.reps):
                for c in conns:
                    for name, port in ports.items():
                        if rep == 0:
                            wrk(port, up_port, c, 1, tmp)  # warm-up: connections, caches, pools
                        pid = procs["upstream" if port is None else name].pid
                        runs[(name, c)].append(wrk(port, up_port, c, args.duration, tmp,
                                                   cpu=functools.partial(process_cpu, pid)))
                        print(f"  {name} c={c} run {rep + 1}: {runs[(name, c)][-1]['rps']:.0f} req/s",
                              file=sys.stderr, flush=True)
        finally:
            for proc in procs.values():
                stop(proc)
            if worktree is not None:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
    print(f"\n## Pass-through: absolute-form GET of a 1 KiB body from {upstream_name}, allow-all policy, "
          f"one process each; wrk {args.duration:g} s × {args.reps} runs per cell (range)\n")
    print(table(runs, list(ports), conns))
    if idle:
        print("\nRSS of hitl-proxy at rest, before the load: "
              + ", ".join(f"{n} {mib:.0f} MiB" for n, mib in idle.items())
              + " (proxy.workers > 1: the parent process only)")
    if "tinyproxy" in ports:
        print("\ntinyproxy closes the agent's connection after every response (wrk reconnects); the "
              "others keep it alive.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
