"""The ``hitl-proxy`` command line.

Every command is an argparse subparser with its own help and description, and names the
function that carries it out (``set_defaults(run=...)``); ``main`` calls it and turns the
project's errors into one line on stderr and a non-zero exit, in one place. The command
modules are imported only when their command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from proxy import __version__
from proxy.errors import CommandError, ConfigError, GateError, StoreError

EXAMPLES = """\
examples:
  hitl-proxy serve                          # embedded defaults: proxy :8080, review :8081
  hitl-proxy serve -c config.yaml --role proxy
  hitl-proxy config check -c config.yaml
  hitl-proxy pending
  hitl-proxy show 0193ab...
  hitl-proxy approve 0193ab... --comment "looks right"
  hitl-proxy reject 0193ab... --comment "wrong customer: use cus_456"
  hitl-proxy grants --all
  echo -n 's3cret' | hitl-proxy hash-password
  hitl-proxy new-token ops-bot

Each command has its own help: hitl-proxy COMMAND --help.
"""

STATUSES = ("pending", "approved", "forwarding", "forwarded", "rejected", "expired", "failed")
CONFIG_HELP = "config file (YAML); default: embedded defaults and HITL_* variables"
Run = Callable[[argparse.Namespace], int]


def _command(sub: Any, name: str, help: str, description: str, run: Run,
             epilog: str | None = None) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=description, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=run)
    return parser


def _actions(parser: argparse.ArgumentParser, name: str) -> Any:
    """The required ACTION of a command with sub-actions (``config check``, ``ca path`` …)."""
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION", help="one of:")


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE", help=CONFIG_HELP)


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("HITL_URL"),
                        help="the review API (env HITL_URL; default: review.listen of the config)")
    parser.add_argument("--token", default=os.environ.get("HITL_TOKEN"),
                        help="bearer token of a review.tokens entry (env HITL_TOKEN; default: the "
                             "admin token that `serve` wrote under data_dir)")
    _config_option(parser)


def _status_list(value: str) -> str:
    wanted = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in wanted if s not in STATUSES]
    if bad or not wanted:
        raise argparse.ArgumentTypeError(f"{value!r}: use one or more of {', '.join(STATUSES)}")
    return ",".join(wanted)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hitl-proxy", description="A human-in-the-loop gate for AI agents.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"hitl-proxy {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="one of these (each has its own --help):")
    _serve_parser(sub)
    _config_parser(sub)
    _ca_parser(sub)
    _policy_parser(sub)
    _review_parsers(sub)
    _audit_parser(sub)
    _identity_parsers(sub)
    return p


def _serve_parser(sub: Any) -> None:
    serve = _command(sub, "serve", "run the proxy and the review listener",
                     "Run the proxy listener (agents) and the review listener (UI, API, /metrics). "
                     "With no reviewer configured, print a one-time admin login URL.", _serve)
    _config_option(serve)
    serve.add_argument("--role", choices=("all", "proxy", "review"), default="all",
                       help="run both listeners (all, the default) or one of them, for deployments "
                            "that scale them apart over one PostgreSQL store")
    # Set by the primary on the proxy.workers processes it starts (proxy/cli/workers.py).
    serve.add_argument("--worker-of", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)


def _config_parser(sub: Any) -> None:
    config = _command(sub, "config", "check a configuration without serving",
                      "Work with a configuration file.", _missing_action)
    actions = _actions(config, "config")
    check = _command(actions, "check", "validate a config and its policies",
                     "Validate the config (file and HITL_* variables) and compile its policies, "
                     "without serving and without creating anything. Print the effective settings "
                     "(secrets elided) and exit 0, or one line per problem and exit 2.",
                     _run("proxy.cli.config_check", "check"))
    _config_option(check)


def _ca_parser(sub: Any) -> None:
    ca = _command(sub, "ca", "the local CA that agents trust for intercepted HTTPS",
                  "The local certificate authority: `serve` creates it under proxy.ca_dir on first "
                  "start; agents trust its certificate. `path` and `export` only read it.",
                  _missing_action)
    actions = _actions(ca, "ca")
    for name, help, description in (
        ("path", "print where the CA certificate (PEM) is",
         ("Print the path of the CA certificate (ca.pem under proxy.ca_dir). Stops with one line "
          "when there is none yet: it never creates one.")),
        ("export", "print the CA certificate (PEM), for agents to trust",
         ("Print the CA certificate as PEM on stdout, e.g. `hitl-proxy ca export > hitl-ca.pem`, "
          "then point the agent at it (curl --cacert, SSL_CERT_FILE, REQUESTS_CA_BUNDLE, "
          "NODE_EXTRA_CA_CERTS). The private key is never printed. Stops with one line when there "
          "is no CA yet: it never creates one.")),
        ("init", "create the CA now (before the first `serve`)",
         ("Create the CA under proxy.ca_dir if there is none, and print its certificate's path: for "
          "deployments that hand the CA to agents before the proxy first starts.")),
    ):
        _config_option(_command(actions, name, help, description, _run("proxy.cli.offline", f"ca_{name}")))


def _policy_parser(sub: Any) -> None:
    policy = _command(sub, "policy", "evaluate, test or replay policies",
                      "Work with the Rego policies offline.", _missing_action)
    actions = _actions(policy, "policy")

    ev = _command(actions, "eval", "print the decision for a sample request",
                  "Evaluate the policies of the config for one request, given as a full input "
                  "document (--input) or built from --url, --method and --body as the proxy "
                  "would build it.", _run("proxy.cli.policy_cmd", "eval_command"),
                  epilog="example:\n  hitl-proxy policy eval --method POST "
                         "--url https://api.stripe.com/v1/charges --body amount=25000")
    _config_option(ev)
    ev.add_argument("--input", metavar="FILE", help="input document (JSON file, or - for stdin)")
    ev.add_argument("--method", default=None, help="HTTP method (default: POST with --body, else GET)")
    ev.add_argument("--url", default=None, help="absolute URL of the request")
    ev.add_argument("--body", default=None,
                    help="request body; JSON when it starts with { or [, a form when it holds =")
    ev.add_argument("--agent", default="anonymous", help="the agent id (default: anonymous)")
    ev.add_argument("--explain", action="store_true", help="also print which rule matched")

    pt = _command(actions, "test", "run the Rego tests (test_ rules in *_test.rego)",
                  "Compile every .rego file under the paths (tests or not), reporting each file's "
                  "errors, then run the test_ rules of the *_test.rego files. Exit 0 when all "
                  "pass, 1 when one fails or none exist, 2 when a file does not compile.",
                  _run("proxy.cli.policy_cmd", "test_command"))
    pt.add_argument("paths", nargs="*", help="policy folders or files (default: policy.paths)")
    _config_option(pt)
    pt.add_argument("-v", "--verbose", action="store_true", help="print every test, passed ones too")
    rp = _command(actions, "replay", "re-judge recorded traffic against the policies on disk",
                  "Re-judge the requests recorded in the decision log (policy.decision_log) against "
                  "the policies of the config, and print what they would allow, hold and deny, per "
                  "rule, and every changed decision. Read-only: no traffic is sent, nothing is "
                  "written, and a missing store is reported, never created.",
                  _run("proxy.cli.replay", "replay_command"),
                  epilog="example:\n  hitl-proxy policy replay --since 24h -c config.yaml")
    rp.add_argument("--since", default="24h", metavar="DURATION",
                    help="how far back to replay (e.g. 30m, 24h, 7d; default 24h)")
    _config_option(rp)
    rp.add_argument("--json", action="store_true", help="print the report as JSON")
    # Further policy actions are added here, each with _command(actions, ...).


def _review_parsers(sub: Any) -> None:
    client = "proxy.cli.client"
    pending = _command(sub, "pending", "list held requests",
                       "List requests from the review API, oldest deadline first.",
                       _run(client, "pending"))
    pending.add_argument("--status", type=_status_list, default="pending", metavar="STATUS[,STATUS]",
                         help=f"which requests: {', '.join(STATUSES)} (default: pending; several "
                              "separated by commas)")
    pending.add_argument("--json", action="store_true", help="print the API's JSON items")
    _client_options(pending)

    show = _command(sub, "show", "show one request whole",
                    "Show one request: message, agent, destination, headers (secrets redacted), body, "
                    "decisions, comments, grants made from it and the response status.",
                    _run(client, "show"))
    show.add_argument("id", help="the request id (from `pending` or the UI)")
    show.add_argument("--json", action="store_true", help="print the API's JSON record")
    _client_options(show)

    for name, help, description in (
        ("approve", "approve a held request",
         "Approve a held request. It is forwarded once the policy's number of approvals is reached."),
        ("reject", "reject a held request, with feedback for the agent",
         "Reject a held request. The comment goes back to the agent as its model's feedback."),
        ("comment", "comment on a held request without deciding",
         "Add a comment other reviewers see; it is included in the agent's feedback on rejection."),
    ):
        c = _command(sub, name, help, description, _run(client, "decide"))
        c.add_argument("id", help="the request id (from `pending` or the UI)")
        if name == "approve":
            c.add_argument("--comment", default="", help="a note kept with the decision")
            c.add_argument("--grant-minutes", type=int, default=None, metavar="N",
                           help="also grant standing approval for N minutes to the same agent, "
                                "method and path (when the policy marks the hold grantable)")
        else:
            c.add_argument("--comment", required=True,
                           help="the feedback for the agent" if name == "reject" else "the comment")
        _client_options(c)

    grants = _command(sub, "grants", "list standing approvals, or revoke one",
                      "List active grants (standing approvals made by reviewers), all of them with "
                      "--all, or revoke one with `grants revoke ID`.", _run(client, "grants"))
    grants.add_argument("--all", action="store_true", help="include expired and revoked grants")
    grants.add_argument("--json", action="store_true", help="print the API's JSON items")
    _client_options(grants)
    actions = grants.add_subparsers(dest="grants_command", metavar="ACTION",
                                    help="optional; without it, list the grants:")
    revoke = _command(actions, "revoke", "revoke a grant", "Revoke a grant at once.",
                      _run(client, "revoke"))
    revoke.add_argument("grant_id", metavar="ID", help="the grant id (from `grants`)")
    _client_options(revoke)


def _audit_parser(sub: Any) -> None:
    audit = _command(sub, "audit", "check or export the audit chain",
                     "The audit log: every hold, decision and forward, in a SHA-256 hash chain. "
                     "Reads the store of the config; never creates one.", _missing_action)
    actions = _actions(audit, "audit")
    verify = _command(actions, "verify", "check the hash chain",
                      "Recompute the hash chain: exit 0 when intact, 1 naming the first broken seq.",
                      _run("proxy.cli.offline", "audit_verify"))
    _config_option(verify)
    export = _command(actions, "export", "write the audit log as JSON lines",
                      "Write every audit record as one JSON object per line.",
                      _run("proxy.cli.offline", "audit_export"))
    _config_option(export)
    export.add_argument("-o", "--output", metavar="FILE", help="file to write (default: stdout)")


def _identity_parsers(sub: Any) -> None:
    _command(sub, "hash-password", "read a secret on stdin, print its argon2id hash",
             "Read a secret from stdin (prompting twice on a terminal) and print its argon2id hash, "
             "for review.users[].password_hash or a token_hash.", lambda args: _hash_password())
    nt = _command(sub, "new-token", "print a fresh token and the config line with its hash",
                  "Print a new random token and the config line that holds its hash.",
                  lambda args: _new_token(args.name, args.agent))
    nt.add_argument("name", help="the reviewer (review.tokens) or agent (proxy.agents) it identifies")
    nt.add_argument("--agent", action="store_true", help="for proxy.agents instead of review.tokens")


def _run(module: str, function: str) -> Run:
    def run(args: argparse.Namespace) -> int:
        import importlib

        command: Run = getattr(importlib.import_module(module), function)
        return command(args)

    return run


def _missing_action(args: argparse.Namespace) -> int:  # argparse requires the action first
    raise CommandError(f"{args.command}: give an action (see hitl-proxy {args.command} --help)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)  # type: ignore[no-any-return]
    except ConfigError as exc:
        print(f"hitl-proxy: config error: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"hitl-proxy: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (`audit export | head`): stop quietly, as coreutils do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return 130
    except (GateError, StoreError) as exc:
        print(f"hitl-proxy: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if isinstance(exc, _startup_errors()):
            print(f"hitl-proxy: {_one_line(exc)}", file=sys.stderr)
            return 2
        raise


def _startup_errors() -> tuple[type[Exception], ...]:
    from proxy.cli.workers import WorkerError
    from proxy.policy.engine import PolicyLoadError
    from proxy.server import ListenError

    return (ListenError, PolicyLoadError, WorkerError)


def _one_line(exc: Exception) -> str:
    text = str(exc).strip()
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__


def _serve(args: argparse.Namespace) -> int:
    from proxy.cli.runtime import run, serve
    from proxy.config import load_settings
    from proxy.logs import setup_logging

    settings = load_settings(args.config, os.environ)
    setup_logging(settings.log)
    return run(serve(settings, args.role, args.worker_of, args.ready_fd))


def _hash_password() -> int:
    from proxy.credentials import hash_secret

    if sys.stdin.isatty():
        secret = getpass.getpass("secret: ")
        if getpass.getpass("again: ") != secret:
            raise CommandError("the two entries differ", exit_code=1)
    else:
        secret = sys.stdin.read().rstrip("\r\n")
    if not secret:
        raise CommandError("empty secret", exit_code=1)
    print(hash_secret(secret))
    return 0


def _new_token(name: str, agent: bool) -> int:
    from proxy.credentials import new_token, token_hash

    token = new_token()  # hitl_<id>_<secret>: 256 random bits, so its sha256 is its hash
    hashed = token_hash(token)
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
