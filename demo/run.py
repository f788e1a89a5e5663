"""``make demo``: the whole loop, offline, in one command.

It starts loopback fakes of Stripe, SendGrid, Slack, a SQL gateway and an MCP server
(``demo/fakes.py``),
then ``hitl-proxy serve`` with a config made for them in a temporary folder: reverse routes
(``proxy.routes``) to the fakes, the SSRF guard opened for their loopback addresses only, and
the shipped policies with their host table pointed at the fakes. Then a scripted agent sends
a realistic mix through the proxy, each request in its own thread as a busy agent would:
reads, a small and a large charge, an email to a customer, a DROP TABLE and a post from a brand
account, and two MCP tool calls. The demo prints each answer as the agent gets it, a running summary, and the login URL
where a reviewer approves or rejects what is held. It ends when the agent has every answer
(or after ``--duration`` seconds); on a terminal the gate then keeps running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from demo.fakes import FAKES, RunningFake, start
from proxy.credentials import hash_secret, new_token

ROOT = Path(__file__).resolve().parent.parent
HELD = ("approved", "rejected", "timed out", "waiting")


@dataclass(frozen=True)
class Step:
    label: str
    route: str
    method: str
    path: str
    json: dict[str, Any] | None = None
    form: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)


STEPS = (
    Step("read customer cus_123", "stripe", "GET", "/v1/customers/cus_123",
         headers={"Authorization": "Bearer sk_test_demo_key"}),
    Step("list Slack channels", "slack", "GET", "/api/conversations.list",
         headers={"Authorization": "Bearer xoxb-demo-token"}),
    Step("count orders (SELECT)", "db", "POST", "/query", json={"sql": "SELECT count(*) FROM orders"}),
    Step("charge 25.00 USD", "stripe", "POST", "/v1/charges",
         form={"amount": "2500", "currency": "usd", "customer": "cus_123"},
         headers={"Authorization": "Bearer sk_test_demo_key"}),
    Step("charge 2,500.00 USD", "stripe", "POST", "/v1/charges",
         form={"amount": "250000", "currency": "usd", "customer": "cus_123"},
         headers={"Authorization": "Bearer sk_test_demo_key", "Idempotency-Key": "demo-charge-2500"}),
    Step("email a customer", "sendgrid", "POST", "/v3/mail/send",
         json={"personalizations": [{"to": [{"email": "ann@customer.example.org"}]}],
               "from": {"email": "billing@example.com"}, "subject": "Your invoice",
               "content": [{"type": "text/plain", "value": "Hi Ann, your invoice is attached."}]},
         headers={"Authorization": "Bearer SG.demo-key"}),
    Step("DROP TABLE customers", "db", "POST", "/query", json={"sql": "DROP TABLE customers"}),
    Step("post in #announcements (brand account)", "slack", "POST", "/api/chat.postMessage",
         json={"channel": "C0ANNOUNCE", "text": "Big news: our new plan is live!"},
         headers={"Authorization": "Bearer xoxb-demo-token"}),
    Step("MCP tool search_tickets", "mcp", "POST", "/mcp",
         json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": "search_tickets", "arguments": {"query": "refund"}}},
         headers={"Accept": "application/json, text/event-stream"}),
    Step("MCP tool send_sms", "mcp", "POST", "/mcp",
         json={"jsonrpc": "2.0", "id": 2, "method": "tools/call",
               "params": {"name": "send_sms", "arguments": {"to": "+15550100", "text": "Your refund is on its way"}}},
         headers={"Accept": "application/json, text/event-stream"}),
)


class Board:
    """The outcome of every step, and the lines the demo prints (one writer at a time)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcomes: dict[str, str] = {}
        self.started = time.monotonic()
        self.first_approval: float | None = None
        self.closed = False  # after the final summary, late answers (the gate stopping) are not news
        self.held_ids: set[str] = set()  # the review items the queue has shown

    def say(self, text: str) -> None:
        with self.lock:
            if self.closed:
                return
            print(f"[{time.monotonic() - self.started:5.1f}s] {text}", flush=True)

    def settle(self, step: Step, outcome: str, detail: str) -> None:
        with self.lock:
            if self.closed:
                return
            self.outcomes[step.label] = outcome
            if outcome == "approved" and self.first_approval is None:
                self.first_approval = time.monotonic() - self.started
        self.say(f"agent ← {step.label}: {outcome.upper()} {detail}")
        self.say(f"        {self.summary()}")

    def summary(self) -> str:
        values = list(self.outcomes.values())
        count = {name: values.count(name) for name in ("allowed", "denied", *HELD[:-1], "error")}
        decided = count["approved"] + count["rejected"] + count["timed out"]
        held = max(len(self.held_ids), decided)
        in_flight = len(STEPS) - len(values) - (held - decided)
        return (f"summary: {count['allowed']} allowed · {count['denied']} denied · {held} held "
                f"({count['approved']} approved, {count['rejected']} rejected, {held - decided} awaiting review)"
                + (f" · {count['timed out']} timed out" if count["timed out"] else "")
                + (f" · {in_flight} in flight" if in_flight > 0 else "")
                + (f" · {count['error']} errors" if count["error"] else ""))


def run_step(step: Step, proxy: str, agent_auth: str, board: Board, stop: threading.Event) -> None:
    headers = {**step.headers, "X-HITL-Agent": agent_auth}
    with httpx.Client(base_url=f"{proxy}/{step.route}", trust_env=False, timeout=90) as client:
        board.say(f"agent → {step.label}: {step.method} /{step.route}{step.path}")
        told = False
        while not stop.is_set():
            try:
                r = client.request(step.method, step.path, json=step.json, data=step.form, headers=headers)
            except httpx.HTTPError as exc:
                board.settle(step, "error", f"({exc})")
                return
            error = _error(r)
            # An MCP call is answered on the JSON-RPC level (200, the text for the model in
            # the result); the gate names its answer in X-HITL-Error.
            code = r.headers.get("x-hitl-error") or error.get("code")
            if code is not None and "message" not in error:
                error = {"code": code, "message": _mcp_text(r)}
            if code == "approval_pending":
                # The agent contract: a human is deciding; send the identical request again
                # after Retry-After seconds to get the result.
                if not told:
                    board.say(f"agent … {step.label}: still pending, retrying every "
                              f"{r.headers.get('retry-after', '5')}s (the identical request)")
                    told = True
                stop.wait(float(r.headers.get("retry-after", "5")))
                continue
            if r.status_code < 400 and code is None:
                by = r.headers.get("x-hitl-approved-by")
                outcome = "approved" if by else "allowed"
                board.settle(step, outcome, f"→ {r.status_code} from the fake {_fake_name(step)}"
                             + (f" (approved by {by})" if by else ""))
            elif code == "rejected_by_reviewer":
                board.settle(step, "rejected", f"→ {r.status_code}: {error.get('message')}")
            elif code == "denied_by_policy":
                board.settle(step, "denied", f"→ {r.status_code}: {error.get('message')}")
            elif code == "approval_timed_out":
                board.settle(step, "timed out", f"→ {r.status_code}: {error.get('message')}")
            else:
                board.settle(step, "error", f"→ {r.status_code}: {error.get('code')}: {error.get('message')}")
            return


def _error(r: httpx.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        return {}
    inner = body.get("error") if isinstance(body, dict) else None
    return inner if isinstance(inner, dict) else {}


def _mcp_text(r: httpx.Response) -> str:
    """The text the gate wrote for the model into an MCP answer."""
    try:
        result = r.json().get("result") or {}
        return str(result["content"][0]["text"])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return r.text[:200]


def _fake_name(step: Step) -> str:
    return next(f.name for f in FAKES if f.route == step.route)


def watch_holds(review: str, token: str, board: Board, stop: threading.Event) -> None:
    """Announce each new hold as the review queue shows it (what a reviewer sees)."""
    seen: set[str] = set()
    with httpx.Client(base_url=review, trust_env=False, timeout=10,
                      headers={"Authorization": f"Bearer {token}"}) as api:
        while not stop.wait(0.5):
            try:
                items = api.get("/api/requests", params={"status": "pending"}).json()["items"]
            except (httpx.HTTPError, ValueError, KeyError):
                continue
            for item in items:
                if item["id"] not in seen:
                    seen.add(item["id"])
                    with board.lock:
                        board.held_ids.add(item["id"])
                    needs = item["approvals_needed"]
                    board.say(f"HELD for a reviewer: {item['message']} (id {item['id']}"
                              + (f", needs {needs} approvals" if needs > 1 else "") + ")")


# -- set-up ----------------------------------------------------------------------------------

def free_or_any(address: str) -> str:
    """The address when it is free, else the same host on any free port."""
    host, _, port = address.rpartition(":")
    with socket.socket() as probe:
        try:
            probe.bind((host, int(port)))
        except OSError:
            return f"{host}:0"
    return address


def write_config(folder: Path, fakes: list[RunningFake], proxy: str, review: str, agent_hash: str) -> Path:
    """The shipped policies, unchanged, with their host table pointed at the fakes."""
    policies = folder / "policies"
    policies.mkdir()
    for rego in (ROOT / "policies").glob("*.rego"):
        if not rego.name.endswith("_test.rego"):
            shutil.copy(rego, policies / rego.name)
    data = yaml.safe_load((ROOT / "policies" / "data.yaml").read_text())
    config = data["hitl"]["config"]
    config["hosts"] = {f.api.address: f.api.policy_host for f in fakes}
    config["domains"] = {}
    config["posting"]["brand_approvals"] = 1  # the demo has one reviewer: the admin
    (policies / "data.yaml").write_text(
        "# The shipped policies' data, with hosts pointing at the demo's loopback fakes.\n"
        + yaml.safe_dump(data, sort_keys=False))
    settings = {
        "data_dir": str(folder / "data"),
        "proxy": {"listen": proxy, "ca_dir": str(folder / "data" / "ca"),
                  "routes": {f.api.route: f.url for f in fakes},
                  # the SSRF guard blocks loopback; open it for the fakes' addresses only
                  "allow_networks": [f"{f.api.address}/32" for f in fakes],
                  "agents": [{"id": "demo-agent", "token_hash": agent_hash}]},
        "review": {"listen": review},
        "policy": {"paths": [str(policies)]},
        "store": {"url": f"sqlite:///{folder / 'data' / 'hitl.db'}"},
        # short waits, so the demo's agent shows the retry rule within a minute
        "hold": {"client_wait": "20s", "retry_after": "3s", "timeout": "10m"},
        "log": {"format": "text", "level": "warning"},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


@dataclass
class Gate:
    proc: subprocess.Popen[str]
    proxy: str = ""
    review: str = ""
    login: str = ""
    stopping: bool = False


def start_gate(config: Path, timeout: float = 60) -> Gate:
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "-c", str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    gate = Gate(proc)
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline and not (gate.proxy and gate.review and gate.login):
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("hitl-proxy demo: the gate did not start")
        print(f"  {line.rstrip()}", flush=True)
        if "proxy listening on " in line:
            gate.proxy = line.split("listening on ", 1)[1].split()[0]
        elif "review listening on " in line:
            gate.review = line.split("listening on ", 1)[1].split()[0]
        elif "log in as admin at " in line:
            gate.login = line.split(" at ", 1)[1].strip()
    if not gate.login:
        proc.kill()
        raise SystemExit("hitl-proxy demo: the gate did not become ready in time")
    out = proc.stdout
    def relay() -> None:  # the gate's warnings, while the demo runs
        for line in out:
            if gate.proc.returncode is None and not gate.stopping:
                print(f"  [gate] {line.rstrip()}", flush=True)

    threading.Thread(target=relay, daemon=True).start()
    return gate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proxy-listen", default="127.0.0.1:8080",
                        help="where agents connect (another free port if this one is taken)")
    parser.add_argument("--review-listen", default="127.0.0.1:8081",
                        help="the review UI (another free port if this one is taken)")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds even if requests still wait")
    parser.add_argument("--keep-running", action=argparse.BooleanOptionalAction, default=None,
                        help="keep the gate running after the agent is done (default: on a terminal)")
    args = parser.parse_args(argv)
    keep = sys.stdin.isatty() if args.keep_running is None else args.keep_running

    board = Board()
    folder = Path(tempfile.mkdtemp(prefix="hitl-demo-"))
    def logger(name: str) -> Callable[[str], None]:
        return lambda line: board.say(f"fake {name} received {line}")

    fakes = [start(api, logger(api.name)) for api in FAKES]
    token = new_token()
    config = write_config(folder, fakes, free_or_any(args.proxy_listen), free_or_any(args.review_listen),
                          hash_secret(token))
    print("hitl-proxy demo: fake " + ", ".join(f"{f.api.name} ({f.url})" for f in fakes), flush=True)
    gate = start_gate(config)
    admin = gate.login.rsplit("token=", 1)[1]
    print(f"""
  Open the review UI and decide what the agent asks:   {gate.login}
  (or in another terminal: .venv/bin/hitl-proxy pending --url {gate.review} --token {admin}
   then .venv/bin/hitl-proxy approve ID --url {gate.review} --token {admin})
  The agent goes through the proxy's routes: {", ".join(f"{gate.proxy}/{f.api.route}" for f in fakes)}
""", flush=True)

    stop = threading.Event()
    threading.Thread(target=watch_holds, args=(gate.review, admin, board, stop), daemon=True).start()
    threads = []
    for step in STEPS:
        thread = threading.Thread(target=run_step, args=(step, gate.proxy, f"demo-agent:{token}", board, stop),
                                  daemon=True)
        thread.start()
        threads.append(thread)
        time.sleep(0.3)  # one after the other, so the story reads in order
    deadline = None if args.duration is None else board.started + args.duration
    try:
        while any(t.is_alive() for t in threads):
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.2)
        done = not any(t.is_alive() for t in threads)
        with board.lock:
            board.closed = True
        print(f"\n{board.summary()}" + (" — the agent is done" if done else
                                       f" — stopped after {args.duration:g}s"), flush=True)
        if board.first_approval is not None:
            print(f"first approved request answered {board.first_approval:.1f}s after the agent started")
        for fake in fakes:
            print(f"  the fake {fake.api.name} received: {', '.join(fake.received) or 'nothing'}")
        if keep and done:
            print(f"\nThe gate keeps running: look around {gate.review} (audit, grants). Ctrl-C to stop.",
                  flush=True)
            while gate.proc.poll() is None:
                time.sleep(0.5)
        return 0 if done else 3
    except KeyboardInterrupt:
        print(f"\n{board.summary()} — interrupted")
        return 130
    finally:
        stop.set()
        gate.stopping = True
        gate.proc.terminate()
        try:
            gate.proc.wait(15)
        except subprocess.TimeoutExpired:
            gate.proc.kill()
        for fake in fakes:
            fake.server.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
