"""``hitl-proxy policy replay``: a running hitl-proxy records a mix of real traffic (httpx
agents through the proxy to a recording upstream) in its decision log; the command, run as
a real subprocess against a changed policy, prints the expected counts and changes, holds
no secret, and writes nothing."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.conftest import HITL, Hitl, Upstream

POLICY_V1 = r'''
package hitl

import rego.v1

default decision := {"action": "allow", "rule": "default"}

decision := {"action": "hold", "message": "large charge", "rule": "payments.large"} if {
	input.request.path == "/charges"
	input.request.body.amount > 100
}

decision := {"action": "deny", "message": "no deletes", "rule": "deletes"} if input.request.method == "DELETE"

decision := {"action": "hold", "message": "refunds, trying out", "rule": "refunds.new", "shadow": true} if {
	input.request.path == "/refunds"
}
'''

# The change under review: the threshold drops to 10, deletes are no longer denied, and the
# refunds rule leaves shadow mode.
POLICY_V2 = r'''
package hitl

import rego.v1

default decision := {"action": "allow", "rule": "default"}

decision := {"action": "hold", "message": "charge", "rule": "payments.large"} if {
	input.request.path == "/charges"
	input.request.body.amount > 10
}

decision := {"action": "hold", "message": "refunds", "rule": "refunds.new"} if input.request.path == "/refunds"
'''

SECRET = "sk_live_REPLAYSECRET42"


def db_rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def replay(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HITL, "policy", "replay", "-c", str(config), *args], capture_output=True,
                          text=True, timeout=60, cwd=config.parent, check=False)


def record_mix(hitl: Hitl, upstream: Upstream) -> None:
    secret_headers = {"Authorization": f"Bearer {SECRET}", "X-Api-Token": SECRET, "Cookie": f"sid={SECRET}"}
    with hitl.agent() as agent:
        for i in range(5):
            assert agent.get(upstream.url(f"/items/{i}"), headers=secret_headers).status_code == 200
        for _ in range(3):
            r = agent.post(upstream.url(f"/charges?api_key={SECRET}"), headers=secret_headers,
                           json={"amount": 50, "password": SECRET, "card": {"cvc": SECRET}})
            assert r.status_code == 200
        for amount in (500, 900):
            r = agent.post(upstream.url("/charges"), json={"amount": amount, "token": SECRET})
            assert r.json()["error"]["code"] == "approval_pending"
        assert agent.delete(upstream.url("/x")).json()["error"]["code"] == "denied_by_policy"
        assert agent.post(upstream.url("/refunds"), content=f"amount=5&secret={SECRET}",
                          headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 200


def test_replay_of_a_recorded_mix_gives_the_expected_counts_for_a_changed_policy(
        make_hitl: Callable[..., Hitl], upstream: Upstream, tmp_path: Path) -> None:
    hitl = make_hitl({"hold.client_wait": "1s"}, policy=POLICY_V1)
    record_mix(hitl, upstream)
    db = tmp_path / "data" / "hitl.db"
    deadline = time.monotonic() + 10  # the log is written in batches, off the request path
    while db_rows(db, "SELECT COUNT(*) FROM decision_log")[0][0] < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert db_rows(db, "SELECT COUNT(*) FROM decision_log")[0][0] == 12

    # No secret reached the store's log or audit; the policy-relevant fields did.
    stored = json.dumps(db_rows(db, "SELECT * FROM decision_log")) + json.dumps(db_rows(db, "SELECT * FROM audit"))
    assert SECRET not in stored
    bodies = [json.loads(str(r[0]))["request"]["body"] for r in db_rows(db, "SELECT input FROM decision_log")]
    assert {"amount": 50, "password": "[redacted]", "card": {"cvc": "[redacted]"}} in bodies

    v1 = tmp_path / "config.yaml"
    v2_policies = tmp_path / "policies-v2"
    v2_policies.mkdir()
    (v2_policies / "main.rego").write_text(POLICY_V2)
    config = yaml.safe_load(v1.read_text())
    config["policy"]["paths"] = [str(v2_policies)]
    v2 = tmp_path / "config-v2.yaml"
    v2.write_text(yaml.safe_dump(config))
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "data").iterdir() if p.suffix == ".db"}

    out = replay(v2, "--since", "1h", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["requests"] == 12
    assert report["recorded"] == {"allow": 8, "hold": 3, "deny": 1, "error": 0}
    assert report["now"] == {"allow": 6, "hold": 6, "deny": 0, "error": 0}
    assert (report["recorded_shadow"], report["now_shadow"]) == (1, 0)
    assert report["rules"] == {"default": {"allow": 6}, "payments.large": {"hold": 5}, "refunds.new": {"hold": 1}}
    assert [(c["was"], c["now"], c["count"]) for c in report["changes"]] == [
        ("allow/default", "hold/payments.large", 3), ("deny/deletes", "allow/default", 1)]
    assert report["changes"][0]["examples"][0] == "anonymous POST 127.0.0.1/charges"

    text = replay(v2, "--since", "1h")
    assert text.returncode == 0, text.stderr
    assert "Replayed 12 requests recorded in the last 1h" in text.stdout
    assert "       3  was allow/default -> now hold/payments.large" in text.stdout
    assert "       1  was deny/deletes -> now allow/default" in text.stdout
    for output in (out.stdout, out.stderr, text.stdout, text.stderr):
        assert SECRET not in output

    same = replay(v1, "--since", "1h", "--json")
    assert json.loads(same.stdout)["changes"] == []  # the recorded policy agrees with itself
    assert replay(v1, "--since", "1h").stdout.count("Changed decisions: 0 (none)") == 1
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "data").iterdir() if p.suffix == ".db"}
    assert after == before  # read-only


def test_replay_never_creates_state(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.rego").write_text(POLICY_V2)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "nowhere"), "policy": {"paths": ["policies"]},
                                      "store": {"url": f"sqlite:///{tmp_path / 'nowhere' / 'hitl.db'}"}}))
    out = replay(config)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("hitl-proxy: no store at ") and out.stderr.count("\n") == 1
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "nowhere").mkdir()
    sqlite3.connect(tmp_path / "nowhere" / "hitl.db").close()  # an empty file: not a store with a log
    out = replay(config)
    assert out.returncode == 2 and "has no decision log yet" in out.stderr
    assert replay(config, "--since", "soon").stderr.startswith("hitl-proxy: --since:")


MCP_V1 = r'''
package hitl

import rego.v1

default decision := {"action": "allow", "rule": "default"}
'''

MCP_V2 = r'''
package hitl

import rego.v1

default decision := {"action": "allow", "rule": "default"}

decision := {"action": "hold", "message": "email", "rule": "mcp.email"} if input.mcp.tool == "send_email"
'''


def test_replay_judges_mcp_messages_call_by_call(make_hitl: Callable[..., Hitl], upstream: Upstream,
                                                  tmp_path: Path) -> None:
    hitl = make_hitl(policy=MCP_V1)
    with hitl.agent() as agent:
        for i, tool in enumerate(("send_email", "search", "send_email")):
            call = {"jsonrpc": "2.0", "id": i, "method": "tools/call",
                    "params": {"name": tool, "arguments": {"to": "a@example.com", "api_key": SECRET}}}
            r = agent.post(upstream.url("/mcp"), json=call, headers={"Accept": "application/json"})
            assert r.status_code == 200, r.text
    db = tmp_path / "data" / "hitl.db"
    deadline = time.monotonic() + 10
    while db_rows(db, "SELECT COUNT(*) FROM decision_log")[0][0] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert SECRET not in json.dumps(db_rows(db, "SELECT input FROM decision_log"))
    (tmp_path / "policies" / "test.rego").write_text(MCP_V2)  # the change under review
    out = replay(tmp_path / "config.yaml", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["now"]["hold"] == 2 and report["now"]["allow"] == 1
    assert [(c["was"], c["now"], c["count"]) for c in report["changes"]] == [("allow/default", "hold/mcp.email", 2)]
