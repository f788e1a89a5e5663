"""``hitl-proxy policy test|eval``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from proxy.config import Settings, load_settings
from proxy.errors import CommandError, GateError, PolicyError
from proxy.policy.engine import PolicyLoadError
from proxy.policy.rego_tests import TestResult, run_tests


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, os.environ)


def test_command(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths] or list(_settings(args).policy.paths)
    try:
        results = run_tests(paths)
    except PolicyLoadError as exc:
        for line in exc.message.splitlines():  # one line per problem, each naming its file
            print(f"hitl-proxy: {line}", file=sys.stderr)
        return 2
    failed = [r for r in results if not r.passed]
    for r in results:
        if args.verbose or not r.passed:
            print(_test_line(r))
    print("-" * 60)
    if not results:
        print(f"no tests found under {', '.join(map(str, paths))} "
              "(rules named test_* in *_test.rego files); the policies compile")
        return 1
    print(f"PASS: {len(results) - len(failed)}/{len(results)}"
          + (f"\nFAIL: {len(failed)}/{len(results)}" if failed else ""))
    return 1 if failed else 0


def _test_line(r: TestResult) -> str:
    where = f"{r.file}:{r.line}: " if r.file else ""
    return f"{where}data.{r.package}.{r.name}: {'PASS' if r.passed else 'FAIL'}" + (
        f" ({r.error})" if r.error else "")


def eval_command(args: argparse.Namespace) -> int:
    from proxy.cli.runtime import load_policy

    settings = _settings(args)
    doc = _input_document(args)
    try:
        engine = load_policy(settings)
        decision = asyncio.run(engine.decide(doc))
    except PolicyLoadError as exc:
        raise CommandError(exc.message.replace("\n", "; ")) from exc
    except PolicyError as exc:
        raise CommandError(exc.message, exit_code=1) from exc
    out = {"action": decision.action.value, "message": decision.message, "rule": decision.rule,
           "reviewers": list(decision.reviewers), "approvals": decision.approvals,
           "timeout": decision.timeout, "on_timeout": decision.on_timeout, "grantable": decision.grantable}
    print(json.dumps(out, indent=2))
    if args.explain:
        print(f"matched rule: {decision.rule}")
    return 0


def _input_document(args: argparse.Namespace) -> dict[str, Any]:
    if args.input:
        where = "stdin" if args.input == "-" else args.input
        try:
            raw = sys.stdin.read() if args.input == "-" else Path(args.input).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"--input {where}: cannot read: {getattr(exc, 'strerror', None) or exc}") from exc
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--input {where}: not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise CommandError(f"--input {where}: the input document must be a JSON object")
        return doc
    if not args.url:
        raise CommandError("give --input FILE or --url URL [--method M] [--body B]")
    from proxy.model import Agent, AgentRequest
    from proxy.policy.input import build_input
    from proxy.server import parse_target

    body = (args.body or "").encode()
    # The content type curl would send: -d '{...}' is JSON to APIs that take it, -d a=b a form.
    media = "application/json" if body[:1] in (b"{", b"[") else \
        "application/x-www-form-urlencoded" if b"=" in body else None
    headers = (("content-type", media),) if media else ()
    try:
        scheme, host, port, target = parse_target(args.url, {})
        request = AgentRequest((args.method or ("POST" if body else "GET")).upper(), scheme, host,
                               port, target, headers, body)
    except (GateError, ValueError) as exc:
        raise CommandError(f"--url {args.url!r}: {getattr(exc, 'message', exc)}") from exc
    doc = build_input(request, Agent(args.agent, "127.0.0.1"), time.time())
    from proxy import mcp

    rpc = mcp.read(request, doc["request"]["body"], media)
    if rpc is not None:  # a JSON-RPC body: judged as the gate would judge its (first) call
        doc["mcp"] = rpc.policy_inputs()[0]
    return doc
