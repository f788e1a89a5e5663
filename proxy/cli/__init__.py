"""The ``hitl-proxy`` command line (DESIGN §3)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from typing import Any

from proxy import __version__
from proxy.errors import ConfigError

EXAMPLES = """\
examples:
  hitl-proxy serve                          # embedded defaults: proxy :8080, review :8081
  hitl-proxy serve -c config.yaml --role proxy
  hitl-proxy pending
  hitl-proxy approve 0193ab... --comment "looks right"
  hitl-proxy reject 0193ab... --comment "wrong customer: use cus_456"
  echo -n 's3cret' | hitl-proxy hash-password
  hitl-proxy new-token ops-bot
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hitl-proxy", description="A human-in-the-loop gate for AI agents.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"hitl-proxy {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the proxy and the review listener")
    serve.add_argument("-c", "--config", help="config file (YAML); default: embedded defaults")
    serve.add_argument("--role", choices=("all", "proxy", "review"), default="all",
                       help="run both listeners (all) or one of them")
    # Set by the primary on the proxy.workers processes it starts (proxy/cli/workers.py).
    serve.add_argument("--worker-of", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)

    ca = sub.add_parser("ca", help="the local CA that agents trust for intercepted HTTPS")
    ca.add_argument("action", choices=("path", "export"))
    ca.add_argument("-c", "--config")

    policy = sub.add_parser("policy", help="evaluate or test policies")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    ev = policy_sub.add_parser("eval", help="print the decision for a sample input")
    ev.add_argument("-c", "--config")
    ev.add_argument("--input", help="input document (JSON file, or - for stdin)")
    ev.add_argument("--method", default=None)
    ev.add_argument("--url", default=None)
    ev.add_argument("--body", default=None)
    ev.add_argument("--agent", default="anonymous")
    ev.add_argument("--explain", action="store_true", help="show which rule matched")
    pt = policy_sub.add_parser("test", help="run the Rego tests (test_ rules in *_test.rego)")
    pt.add_argument("paths", nargs="*", help="policy folders (default: policy.paths)")
    pt.add_argument("-c", "--config")
    pt.add_argument("-v", "--verbose", action="store_true")

    for name, helptext in (("pending", "list pending requests"), ("approve", "approve a held request"),
                           ("reject", "reject a held request"), ("comment", "comment on a held request")):
        c = sub.add_parser(name, help=helptext)
        if name != "pending":
            c.add_argument("id")
            c.add_argument("--comment", default="" if name == "approve" else None,
                           required=name != "approve")
        if name == "approve":
            c.add_argument("--grant-minutes", type=int, default=None)
        if name == "pending":
            c.add_argument("--json", action="store_true", help="print the raw JSON")
            c.add_argument("--status", default="pending")
        c.add_argument("--url", default=os.environ.get("HITL_URL"), help="review API (env HITL_URL)")
        c.add_argument("--token", default=os.environ.get("HITL_TOKEN"), help="bearer token (env HITL_TOKEN)")
        c.add_argument("-c", "--config")

    audit = sub.add_parser("audit", help="check or export the audit chain")
    audit.add_argument("action", choices=("verify", "export"))
    audit.add_argument("-c", "--config")
    audit.add_argument("-o", "--output", help="file to write (default: stdout)")

    sub.add_parser("hash-password", help="read a secret on stdin, print its argon2id hash")
    nt = sub.add_parser("new-token", help="print a fresh token and the config line with its hash")
    nt.add_argument("name")
    nt.add_argument("--agent", action="store_true", help="for proxy.agents instead of review.tokens")
    return p


def _settings(path: str | None) -> Any:
    from proxy.config import load_settings

    return load_settings(path, os.environ)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"hitl-proxy: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "serve":
        return _serve(args)
    if cmd == "hash-password":
        return _hash_password()
    if cmd == "new-token":
        return _new_token(args.name, args.agent)
    if cmd in ("pending", "approve", "reject", "comment"):
        from proxy.cli.client import run_client

        return run_client(args, _settings(args.config))
    if cmd == "audit":
        from proxy.cli.offline import audit

        return audit(_settings(args.config), args.action, args.output)
    if cmd == "ca":
        from proxy.cli.offline import ca

        return ca(_settings(args.config), args.action)
    if cmd == "policy":
        from proxy.cli.offline import policy

        return policy(args, _settings(getattr(args, "config", None)))
    raise AssertionError(cmd)  # pragma: no cover


def _serve(args: argparse.Namespace) -> int:
    from proxy.cli.runtime import serve
    from proxy.cli.workers import WorkerError
    from proxy.errors import StoreError
    from proxy.policy.engine import PolicyLoadError
    from proxy.server import ListenError

    settings = _settings(args.config)
    from proxy.logs import setup_logging

    setup_logging(settings.log)
    try:
        return asyncio.run(serve(settings, args.role, args.worker_of, args.ready_fd))
    except (ListenError, PolicyLoadError, StoreError, WorkerError) as exc:
        print(f"hitl-proxy: {exc}", file=sys.stderr)
        return 2


def _hash_password() -> int:
    from proxy.credentials import hash_secret

    if sys.stdin.isatty():
        secret = getpass.getpass("secret: ")
        if getpass.getpass("again: ") != secret:
            print("hitl-proxy: the two entries differ", file=sys.stderr)
            return 1
    else:
        secret = sys.stdin.read().rstrip("\r\n")
    if not secret:
        print("hitl-proxy: empty secret", file=sys.stderr)
        return 1
    print(hash_secret(secret))
    return 0


def _new_token(name: str, agent: bool) -> int:
    from proxy.credentials import hash_secret, new_token

    token = new_token()
    hashed = hash_secret(token)
    print(f"token: {token}")
    if agent:
        print("add under proxy.agents:")
        print(f"  - {{id: {json.dumps(name)}, token_hash: {json.dumps(hashed)}}}")
    else:
        print("add under review.tokens:")
        print(f"  - {{name: {json.dumps(name)}, token_hash: {json.dumps(hashed)}, groups: []}}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
