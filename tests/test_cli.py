"""The ``hitl-proxy`` command line, run as a real process: help for every command, the review
client (pending, show, approve, reject, grants) against a real server, the commands that read
local state and never create it, ``config check``, and one-line errors instead of tracebacks."""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from proxy.cli import STATUSES, build_parser
from tests.conftest import HITL, ROOT, Hitl, Upstream, write_config
from tests.test_core_flow import in_background


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HITL_")}
    return subprocess.run([HITL, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False,
                          env={**clean, **(env or {})}, input=input)


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hitl-proxy: "), out.stderr
    return lines[0]


def api_args(hitl: Hitl) -> list[str]:
    return ["--url", hitl.review_url, "--token", hitl.admin_token]


# -- help ------------------------------------------------------------------------------------

def _subparsers(parser: argparse.ArgumentParser, path: str = "hitl-proxy") -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _subparsers(sub, f"{path} {name}")
    return found


def test_every_command_has_a_description_and_every_option_has_help() -> None:
    commands = _subparsers(build_parser())
    names = {path for path, _ in commands}
    for expected in ("hitl-proxy show", "hitl-proxy grants", "hitl-proxy grants revoke",
                     "hitl-proxy config check", "hitl-proxy ca export", "hitl-proxy audit verify"):
        assert expected in names
    for path, parser in commands[1:]:
        assert parser.description, f"{path} has no description"
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"{path}: {action.option_strings or action.dest} has no help"


def test_ca_export_help_is_its_own_and_pending_status_lists_its_values() -> None:
    out = cli("ca", "export", "--help")
    assert out.returncode == 0
    assert "usage: hitl-proxy ca export" in out.stdout and "PEM" in out.stdout
    assert "never creates" in out.stdout
    pending = cli("pending", "--help").stdout
    assert all(status in pending for status in STATUSES)
    bad = cli("pending", "--status", "waiting")
    assert bad.returncode == 2 and "pending, approved, forwarding" in bad.stderr


def test_audit_verify_rejects_an_output_file() -> None:
    out = cli("audit", "verify", "-o", "x.jsonl")
    assert out.returncode == 2 and "unrecognized arguments: -o" in out.stderr
    assert "-o FILE" in cli("audit", "export", "--help").stdout


# -- the review client -----------------------------------------------------------------------

def test_show_prints_the_whole_request_with_secrets_redacted_and_its_grant(hitl: Hitl, upstream: Upstream) -> None:
    def send() -> httpx.Response:
        with hitl.agent() as agent:
            return agent.post(upstream.url("/hold/charge"), content=b'{"amount": 25000}',
                              headers={"Authorization": "Bearer sk_live_topsecret",
                                       "Content-Type": "application/json"})

    thread, box = in_background(send)
    [item] = hitl.wait_pending()
    rid = item["id"]
    approved = cli("approve", rid, "--comment", "ok", "--grant-minutes", "30", *api_args(hitl))
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.strip() == f"{rid}: approved"
    thread.join(30)
    assert box["result"].status_code == 200

    out = cli("show", rid, *api_args(hitl))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "sk_live_topsecret" not in text and "authorization: [redacted]" in text
    assert f"POST {upstream.url('/hold/charge')}" in text
    assert "anonymous wants to POST /hold/charge" in text  # the policy's message
    assert '{"amount": 25000}' in text
    assert "admin approve: ok" in text
    assert "response:  200" in text
    assert "grant:" in text and "(active)" in text


def test_grants_lists_and_revokes(hitl: Hitl, upstream: Upstream) -> None:
    thread, box = in_background(lambda: hitl.agent().post(upstream.url("/hold/g"), content=b"x"))
    [item] = hitl.wait_pending()
    with hitl.api() as api:
        assert api.post(f"/api/requests/{item['id']}/approve", json={"grant_minutes": 10}).status_code == 200
    thread.join(30)
    listed = cli("grants", *api_args(hitl))
    assert listed.returncode == 0 and "POST" in listed.stdout and "/hold/g" in listed.stdout
    with hitl.api() as api:
        [grant] = api.get("/api/grants").json()["items"]
    revoked = cli("grants", "revoke", grant["id"], *api_args(hitl))
    assert revoked.returncode == 0 and revoked.stdout.strip() == f"{grant['id']}: revoked"
    assert cli("grants", *api_args(hitl)).stdout.strip() == "no active grants"
    everything = cli("grants", "--all", *api_args(hitl)).stdout
    assert grant["id"] in everything and "revoked by admin" in everything
    assert box["result"].status_code == 200


def test_reject_prints_the_outcome_and_pending_shows_the_quorum(hitl: Hitl, upstream: Upstream) -> None:
    thread, box = in_background(lambda: hitl.agent().post(upstream.url("/hold/r?approvals=2"), content=b"x"))
    [item] = hitl.wait_pending()
    listed = cli("pending", *api_args(hitl)).stdout
    assert item["id"] in listed and "0/2 approvals" in listed
    out = cli("reject", item["id"], "--comment", "wrong customer", *api_args(hitl))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{item['id']}: rejected"
    thread.join(30)
    assert box["result"].status_code == 403 and upstream.count() == 0
    assert item["id"] in cli("pending", "--status", "rejected,expired", *api_args(hitl)).stdout


def test_an_unauthorized_cli_call_says_how_to_authenticate(hitl: Hitl) -> None:
    line = one_line_error(cli("pending", "--url", hitl.review_url, "--token", "wrong"))
    assert "401" in line and "--token" in line and "HITL_TOKEN" in line and "-c" in line


def test_an_unknown_request_and_an_unreachable_api_are_one_line(hitl: Hitl) -> None:
    assert "404" in one_line_error(cli("show", "nope", *api_args(hitl)))
    line = one_line_error(cli("pending", "--url", "http://127.0.0.1:9", "--token", "t"))
    assert "cannot reach the review API" in line


# -- commands that read local state never create it ------------------------------------------

@pytest.mark.parametrize("command", [["ca", "path"], ["ca", "export"], ["audit", "verify"],
                                     ["audit", "export"], ["config", "check"]])
def test_state_reading_commands_in_an_empty_folder_create_nothing(tmp_path: Path, command: list[str]) -> None:
    line = one_line_error(cli(*command, cwd=tmp_path))
    assert str(tmp_path) in line  # names the file or folder that is missing
    assert list(tmp_path.iterdir()) == []


def test_audit_verify_on_a_mistyped_store_path_refuses_instead_of_an_empty_chain(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"store": {"url": f"sqlite:///{tmp_path / 'data' / 'hitl.bd'}"}})
    line = one_line_error(cli("audit", "verify", "-c", str(config)))
    assert "no store at" in line and "hitl.bd" in line
    assert not (tmp_path / "data").exists()
    missing = one_line_error(cli("ca", "path", "-c", str(tmp_path / "nope.yaml")))
    assert "nope.yaml: config file not found" in missing


def test_ca_init_creates_what_ca_path_and_export_then_read(tmp_path: Path) -> None:
    made = cli("ca", "init", cwd=tmp_path)
    assert made.returncode == 0 and made.stdout.strip().endswith("hitl-data/ca/ca.pem")
    assert cli("ca", "path", cwd=tmp_path).stdout == made.stdout
    exported = cli("ca", "export", cwd=tmp_path).stdout
    assert exported.startswith("-----BEGIN CERTIFICATE-----") and "PRIVATE" not in exported


def test_audit_export_into_a_pipe_closed_early_stops_quietly(tmp_path: Path) -> None:
    from proxy.store import open_backend

    config = write_config(tmp_path)
    backend = open_backend(f"sqlite:///{tmp_path / 'data' / 'hitl.db'}")
    for i in range(600):  # well over a pipe's 64 KiB buffer
        backend.audit_append(time.time(), "note", None, "test", {"i": i, "pad": "x" * 200})
    backend.close()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HITL_")}
    proc = subprocess.Popen([HITL, "audit", "export", "-c", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=clean)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"{")
    proc.stdout.close()  # as `| head -1` does
    assert proc.wait(30) != 0
    assert proc.stderr.read() == b""
    assert cli("audit", "verify", "-c", str(config)).stdout.strip() == "audit chain intact: 600 records"


# -- config check ----------------------------------------------------------------------------

def test_config_check_prints_the_effective_settings_with_secrets_elided(tmp_path: Path) -> None:
    config = write_config(tmp_path, {
        "review.users": [{"name": "alice", "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
                          "groups": ["finance"]}],
        "notify.webhooks": [{"url": "https://hooks.slack.com/services/T0/B0/hooksecret", "format": "slack"}],
        "hold.timeout": "30m",
    })
    out = cli("config", "check", "-c", str(config), env={"HITL_STORE_URL": "postgresql://u:pgsecret@db/x?schema=hitl"})
    assert out.returncode == 0, out.stderr
    assert "hooksecret" not in out.stdout and "pgsecret" not in out.stdout and "argon2id" not in out.stdout
    shown = yaml.safe_load(out.stdout)
    assert shown["hold"]["timeout"] == "30m"
    [alice] = shown["review"]["users"]
    assert alice["name"] == "alice" and alice["password_hash"] == "<elided>" and alice["groups"] == ["finance"]
    assert shown["store"]["url"] == "postgresql://u:<elided>@db/x?schema=hitl"
    assert "config OK" in out.stdout and "1 policy file" in out.stdout
    assert not (tmp_path / "data").exists()  # validated, nothing created


def test_config_check_names_every_problem_on_its_own_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"proxy.lisen": "x", "hold.timeout": "5 minutes",
                                     "store.url": "sqlite:///x.db?busy_timeout=soon&journal=off"})
    out = cli("config", "check", "-c", str(config))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 3
    assert any("proxy.lisen: unknown key (did you mean proxy.listen?)" in line for line in lines)
    assert any("hold.timeout" in line for line in lines)
    assert any("store.url: busy_timeout must be a number" in line for line in lines)

    (tmp_path / "policies" / "test.rego").write_text("package hitl\ndecision := {\n")
    (tmp_path / "policies" / "other.rego").write_text("package hitl\nx if { input.a == }\n")
    broken = cli("config", "check", "-c", str(write_config(tmp_path, policy="package hitl\ndecision := {\n")))
    assert broken.returncode == 2
    assert "test.rego:" in broken.stderr and "other.rego:" in broken.stderr


def test_store_url_options_are_checked_when_the_config_loads(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"store.url": f"sqlite:///{tmp_path / 'data' / 'hitl.db'}?journal=off"})
    line = one_line_error(cli("serve", "-c", str(config)))
    assert "store.url: unsupported sqlite option(s) journal" in line
    assert not (tmp_path / "data").exists()
    config = write_config(tmp_path, {"store.url": "postgresql://root@127.0.0.1/test?schema=Bad-Name"})
    assert "schema must be a lower-case SQL name" in one_line_error(cli("audit", "verify", "-c", str(config)))


# -- policy eval and policy test -------------------------------------------------------------

def test_policy_eval_bad_url_and_bad_input_are_one_line(tmp_path: Path) -> None:
    config = str(write_config(tmp_path))
    assert "--url" in one_line_error(cli("policy", "eval", "-c", config, "--url", "ftp://x/y"))
    assert "--url" in one_line_error(cli("policy", "eval", "-c", config, "--url", "http://[::1"))
    (tmp_path / "in.json").write_text("{not json")
    assert "not JSON" in one_line_error(cli("policy", "eval", "-c", config, "--input", str(tmp_path / "in.json")))
    assert "cannot read" in one_line_error(cli("policy", "eval", "-c", config, "--input", str(tmp_path / "no.json")))
    assert "not JSON" in one_line_error(cli("policy", "eval", "-c", config, "--input", "-", input="[1,"))
    ok = cli("policy", "eval", "-c", config, "--url", "http://example.com/deny/1", "--method", "DELETE")
    assert ok.returncode == 0 and '"action": "deny"' in ok.stdout


def test_policy_test_reports_the_compile_error_of_every_file_even_without_tests(tmp_path: Path) -> None:
    (tmp_path / "a.rego").write_text("package hitl\nimport rego.v1\nx := 1 +\n")
    (tmp_path / "b.rego").write_text("package hitl\nimport rego.v1\n\ny if { input.x == }\n")
    out = cli("policy", "test", str(tmp_path))
    assert out.returncode == 2 and "no tests" not in out.stdout + out.stderr
    assert f"{tmp_path / 'a.rego'}:3:" in out.stderr and f"{tmp_path / 'b.rego'}:4:" in out.stderr

    (tmp_path / "a.rego").write_text("package hitl\nimport rego.v1\nx := 1\n")
    (tmp_path / "b.rego").write_text("package hitl\nimport rego.v1\ny := 2\n")
    none = cli("policy", "test", str(tmp_path))
    assert none.returncode == 1 and "no tests found" in none.stdout


def test_policy_test_prints_each_failing_test_with_its_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text("package hitl\nimport rego.v1\nlimit := 100\n")
    (tmp_path / "p_test.rego").write_text(
        "package hitl\nimport rego.v1\n\ntest_ok if limit == 100\n\ntest_wrong if limit == 5\n")
    out = cli("policy", "test", str(tmp_path))
    assert out.returncode == 1
    assert f"{tmp_path / 'p_test.rego'}:6: data.hitl.test_wrong: FAIL" in out.stdout
    assert "test_ok" not in out.stdout and "FAIL: 1/2" in out.stdout
    verbose = cli("policy", "test", "-v", str(tmp_path)).stdout
    assert f"{tmp_path / 'p_test.rego'}:4: data.hitl.test_ok: PASS" in verbose


def test_shipped_policies_pass_through_the_cli() -> None:
    out = cli("policy", "test", cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS:" in out.stdout


def test_audit_verify_on_a_postgres_schema_that_does_not_exist_creates_nothing(tmp_path: Path) -> None:
    from tests.postgres import POSTGRES, admin

    conn = admin()  # skips without a server, fails in CI
    schema = f"nc_missing_{os.getpid()}"
    try:
        config = write_config(tmp_path, {"store.url": f"{POSTGRES}?schema={schema}"})
        assert "no hitl-proxy store" in one_line_error(cli("audit", "verify", "-c", str(config)))
        found = conn.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s",
                             (schema,)).fetchone()
        assert found is None
    finally:
        conn.close()
