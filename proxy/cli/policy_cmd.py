"""``hitl-proxy policy test|eval``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from proxy.config import Settings
from proxy.errors import PolicyError
from proxy.policy.embedded import run_tests
from proxy.policy.engine import PolicyLoadError


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.policy_command == "test":
        return _test([Path(p) for p in args.paths] or list(settings.policy.paths), args.verbose)
    return _eval(args, settings)


def _test(paths: list[Path], verbose: bool) -> int:
    try:
        results = run_tests(paths)
    except PolicyLoadError as exc:
        print(f"hitl-proxy: {exc}", file=sys.stderr)
        return 2
    failed = [r for r in results if not r.passed]
    for r in results:
        if verbose or not r.passed:
            line = f"data.{r.package}.{r.name}: {'PASS' if r.passed else 'FAIL'}"
            print(line + (f" ({r.error})" if r.error else ""))
    print("-" * 60)
    if not results:
        print("no tests found (rules named test_* in *_test.rego files)")
        return 1
    print(f"PASS: {len(results) - len(failed)}/{len(results)}" + (f"\nFAIL: {len(failed)}/{len(results)}" if failed else ""))
    return 1 if failed else 0


def _eval(args: argparse.Namespace, settings: Settings) -> int:
    from proxy.cli.runtime import load_policy

    if args.input:
        raw = sys.stdin.read() if args.input == "-" else Path(args.input).read_text()
        doc: dict[str, Any] = json.loads(raw)
    elif args.url:
        from proxy.model import Agent, AgentRequest
        from proxy.policy.input import build_input
        from proxy.server import parse_target

        scheme, host, port, target = parse_target(args.url, {})
        body = (args.body or "").encode()
        # The content type curl would send: -d '{...}' is JSON to APIs that take it, -d a=b a form.
        media = "application/json" if body[:1] in (b"{", b"[") else \
            "application/x-www-form-urlencoded" if b"=" in body else None
        headers = (("content-type", media),) if media else ()
        doc = build_input(AgentRequest((args.method or ("POST" if body else "GET")).upper(), scheme, host,
                                       port, target, headers, body), Agent(args.agent, "127.0.0.1"), time.time())
    else:
        print("hitl-proxy: give --input FILE or --url URL [--method M] [--body B]", file=sys.stderr)
        return 2
    try:
        engine = load_policy(settings)
        decision = asyncio.run(engine.decide(doc))
    except (PolicyLoadError, PolicyError) as exc:
        print(f"hitl-proxy: {exc}", file=sys.stderr)
        return 1
    out = {"action": decision.action.value, "message": decision.message, "rule": decision.rule,
           "reviewers": list(decision.reviewers), "approvals": decision.approvals,
           "timeout": decision.timeout, "on_timeout": decision.on_timeout, "grantable": decision.grantable}
    print(json.dumps(out, indent=2))
    if args.explain:
        print(f"matched rule: {decision.rule}")
    return 0
