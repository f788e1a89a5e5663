"""review.slack and reviewers' slack ids: refused at start with one line naming the key,
secrets never printed; and the store's record of each posted message, on SQLite and
PostgreSQL (what keeps a restart, or a second process, from posting twice)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.config import load_settings
from proxy.errors import ConfigError
from proxy.model import AgentRequest, HoldStatus, OnTimeout
from proxy.slack_blocks import hold_message
from proxy.store.records import HoldRecord
from proxy.store.sql import SqlBackend
from tests.postgres import pg_url_fixture  # noqa: F401 - pg_url, for store_opener
from tests.test_config import HASH
from tests.test_durability import T0, _record, backend, store_opener  # noqa: F401 - fixtures

SECRET = "0123456789abcdef0123456789abcdef"
GOOD = {"bot_token": "xoxb-1-2-abc", "signing_secret": SECRET, "channel": "C0123ABCD"}
ALICE = {"name": "alice", "password_hash": HASH, "slack": "U0ALICE"}


def load(tmp_path: Path, review: dict[str, object]) -> object:
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"review": review}))  # JSON is YAML
    return load_settings(path, env={})


def test_a_good_slack_section_loads_and_its_secrets_stay_out_of_its_repr(tmp_path: Path) -> None:
    settings = load(tmp_path, {"users": [ALICE], "slack": GOOD})
    slack = settings.review.slack  # type: ignore[attr-defined]
    assert slack.channel == "C0123ABCD" and slack.api_url == "https://slack.com/api"
    assert settings.review.users[0].slack == "U0ALICE"  # type: ignore[attr-defined]
    printed = repr(settings)
    assert "xoxb-1-2-abc" not in printed and SECRET not in printed and "C0123ABCD" in printed


@pytest.mark.parametrize("review, key, problem", [
    ({"users": [ALICE], "slack": {**GOOD, "channel": None}}, "review.slack.channel", "required"),
    ({"users": [ALICE], "slack": {k: v for k, v in GOOD.items() if k != "bot_token"}},
     "review.slack.bot_token", "required"),
    ({"users": [ALICE], "slack": {**GOOD, "bot_token": "xoxp-user-token"}}, "review.slack.bot_token", "xoxb-"),
    ({"users": [ALICE], "slack": {**GOOD, "signing_secret": "short"}}, "review.slack.signing_secret",
     "not a signing secret"),
    ({"users": [ALICE], "slack": {**GOOD, "channel": "general"}}, "review.slack.channel", "channel id"),
    ({"users": [ALICE], "slack": {**GOOD, "api_url": "ftp://x"}}, "review.slack.api_url", "http"),
    ({"users": [ALICE], "slack": {**GOOD, "webhook": "x"}}, "review.slack.webhook", "unknown key"),
    ({"users": [ALICE], "slack": "xoxb-1"}, "review.slack", "expected a mapping"),
    ({"users": [{**ALICE, "slack": "alice"}]}, "review.users[0].slack", "Slack member id"),
    ({"users": [ALICE, {**ALICE, "name": "bob"}]}, "review.users[1].slack", "already acts as 'alice'"),
    ({"users": [ALICE], "tokens": [{"name": "bot", "token_hash": HASH, "slack": "U0ALICE"}]},
     "review.tokens[0].slack", "already acts as 'alice'"),
    ({"users": [{**ALICE, "slack": None}], "slack": GOOD}, "review.slack", "no reviewer"),
])
def test_bad_slack_settings_are_refused_with_one_line_naming_the_key(
        tmp_path: Path, review: dict[str, object], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, review)
    assert caught.value.key == key
    assert problem in caught.value.problem
    line = str(caught.value)
    assert "\n" not in line and "xoxb-1-2-abc" not in line and SECRET not in line


def test_a_user_and_a_token_of_one_name_may_share_a_slack_id(tmp_path: Path) -> None:
    settings = load(tmp_path, {"users": [ALICE], "tokens": [{"name": "alice", "token_hash": HASH,
                                                               "slack": "U0ALICE"}], "slack": GOOD})
    assert settings.review.tokens[0].slack == "U0ALICE"  # type: ignore[attr-defined]


# -- the store -----------------------------------------------------------------------------

def test_one_claim_posts_a_message_and_the_store_remembers_it(backend: SqlBackend) -> None:  # noqa: F811
    rec = _record()
    backend.create(rec)
    assert backend.slack_unsynced(T0) == (rec.id,)  # pending, never posted
    assert backend.slack_claim(rec.id) is True
    assert backend.slack_claim(rec.id) is False  # a second process, or a restart: no second post
    assert backend.slack_unsynced(T0) == ()
    backend.slack_release(rec.id)  # the post failed: someone may try again
    assert backend.slack_claim(rec.id) is True
    backend.slack_posted(rec.id, "C0123ABCD", "1700000000.000100", "pending")
    got = backend.get(rec.id)
    assert got is not None and (got.slack_channel, got.slack_ts, got.slack_shown) == (
        "C0123ABCD", "1700000000.000100", "pending")
    assert backend.slack_claim(rec.id) is False
    assert backend.slack_unsynced(T0) == ()
    backend.decide(rec.id, "alice", "reject", "no", T0 + 1)
    assert backend.slack_unsynced(T0) == (rec.id,)  # the message still shows it pending
    backend.slack_shown(rec.id, "rejected")
    assert backend.slack_unsynced(T0) == ()


def test_a_hold_past_its_deadline_is_not_posted(backend: SqlBackend) -> None:  # noqa: F811
    rec = _record(deadline=T0 + 10)
    backend.create(rec)
    assert backend.slack_unsynced(T0 + 11) == ()


def test_a_store_made_before_the_slack_columns_gets_them(tmp_path: Path) -> None:
    import sqlite3

    from proxy.store.sqlite import SqliteBackend

    path = tmp_path / "old.db"
    old = SqliteBackend(path)
    old.close()
    conn = sqlite3.connect(path)
    for column in ("slack_channel", "slack_ts", "slack_shown"):
        conn.execute(f"ALTER TABLE requests DROP COLUMN {column}")
    conn.close()
    store = SqliteBackend(path)
    try:
        rec = _record()
        store.create(rec)
        assert store.slack_claim(rec.id) is True
    finally:
        store.close()


# -- message limits --------------------------------------------------------------------------

def test_a_huge_request_stays_within_block_kit_limits() -> None:
    req = AgentRequest("POST", "https", "api.example.com", 443, "/" + "p" * 5000 + "?token=abc&q=1",
                       (("Content-Type", "application/json"),),
                       json.dumps({"api_key": "sk_live_x", "text": "<!here>" * 5000}).encode())
    rec = HoldRecord(id="0" * 24, status=HoldStatus.PENDING, fingerprint="f", agent="<@U1>" * 200,
                     agent_address="", request=req, message="<!channel> " * 100, rule="r" * 500,
                     reviewers=("group:finance",) * 300, approvals_needed=1, grantable=True,
                     on_timeout=OnTimeout.DENY,
                     created_at=T0, deadline=T0 + 60, updated_at=T0)
    message = hold_message(rec, "https://review.example.test")
    sent = json.dumps(message)
    assert "<!here>" not in sent and "<!channel>" not in sent and "<@U1>" not in sent
    assert "sk_live_x" not in sent and "token=abc" not in sent  # redacted body and query
    assert len(message["blocks"]) <= 50
    assert len(message["blocks"][0]["text"]["text"]) <= 150
    for block in message["blocks"]:
        for item in [block.get("text"), *block.get("fields", []), *block.get("elements", [])]:
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                assert len(item["text"]) <= 3000
            if isinstance(item, dict) and item.get("type") == "button":
                assert len(item["text"]["text"]) <= 75 and len(item["value"]) <= 2000


def test_config_check_prints_the_slack_section_with_its_secrets_elided(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import HITL

    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"data_dir": str(tmp_path / "data"), "policy": {"paths": [str(tmp_path)]},
                                "review": {"users": [ALICE], "slack": GOOD}}))
    (tmp_path / "p.rego").write_text('package hitl\n\ndefault decision := {"action": "allow"}\n')
    done = subprocess.run([HITL, "config", "check", "-c", str(path)], check=False, capture_output=True,
                          text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "C0123ABCD" in done.stdout and "U0ALICE" in done.stdout
    assert "xoxb-1-2-abc" not in done.stdout + done.stderr and SECRET not in done.stdout + done.stderr


def test_the_slack_app_manifest_asks_for_chat_write_and_points_interactivity_at_the_route() -> None:
    import yaml

    manifest = yaml.safe_load((Path(__file__).parent.parent / "deploy/slack/manifest.yaml").read_text())
    assert manifest["oauth_config"]["scopes"]["bot"] == ["chat:write"]
    interactivity = manifest["settings"]["interactivity"]
    assert interactivity["is_enabled"] is True
    assert interactivity["request_url"].startswith("https://")
    assert interactivity["request_url"].endswith("/slack/interactions")
