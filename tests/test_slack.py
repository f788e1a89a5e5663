"""Approvals in Slack, against a fake of Slack's Web API on 127.0.0.1 (review.slack.api_url).

The fake records chat.postMessage, chat.update, views.open, chat.postEphemeral and the posts
to an interaction's response_url, and answers as Slack does (``{"ok": true, "ts": ...}``).
Interactions are built and signed exactly as Slack builds them: a form-encoded ``payload=``
holding the JSON, signed v0 over the raw body with the app's signing secret.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from proxy.credentials import hash_secret
from tests.conftest import Hitl, Upstream, start_hitl, write_config
from tests.loopback import LoopbackServer, answer, headers_of, read_body
from tests.test_core_flow import in_background
from tests.test_metrics import scrape, wait_until

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BOT = "xoxb-1234-5678-test"
CHANNEL = "C0APPROVE"
TOKENS = {"carol": "tok-carol-0123456789"}


class FakeSlack(LoopbackServer):
    """Slack's Web API as far as hitl-proxy uses it. ``mode``: ok | fail (HTTP 500) | hang."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.mode = "ok"
        super().__init__()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        raw = read_body(request)
        name = request.path.rsplit("/", 1)[-1] if request.path.startswith("/api/") else "respond"
        with self.lock:
            self.calls.append((name, json.loads(raw or b"{}"), headers_of(request)))
            n = len(self.calls)
        if self.mode == "hang":
            self.release.wait(30)
        if self.mode == "fail":
            answer(request, 500, b"upstream connect error", "application/json; charset=utf-8")
            return
        reply: dict[str, Any] = {"ok": True}
        if name == "chat.postMessage":
            reply |= {"channel": CHANNEL, "ts": f"1700000000.{n:06d}"}
        answer(request, 200, reply, "application/json; charset=utf-8")

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def of(self, method: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for name, body, _ in self.calls if name == method]

    def wait(self, method: str, count: int = 1, timeout: float = 10) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.of(method)) >= count, timeout)
        return self.of(method)


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack()
    yield fake
    fake.close()


@functools.cache
def hashed(secret: str) -> str:
    return hash_secret(secret)  # argon2 takes its time on purpose: once per secret per run


def slack_config(fake: FakeSlack) -> dict[str, Any]:
    return {
        "review.public_url": "https://review.example.test",
        "review.users": [
            {"name": "alice", "password_hash": hashed("pw-alice"), "groups": ["finance"], "slack": "UALICE"},
            {"name": "bob", "password_hash": hashed("pw-bob"), "groups": ["ops"], "slack": "UBOB"},
        ],
        "review.tokens": [{"name": name, "token_hash": hashed(t)} for name, t in TOKENS.items()],
        "review.slack": {"bot_token": BOT, "signing_secret": SECRET, "channel": CHANNEL,
                         "api_url": fake.api_url},
    }


@pytest.fixture
def gate(make_hitl: Callable[..., Hitl], slack: FakeSlack) -> Hitl:
    return make_hitl(slack_config(slack))


# -- Slack's side of an interaction -----------------------------------------------------------

def signed(body: bytes, secret: str = SECRET, ts: int | None = None) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    sig = "v0=" + hmac.new(secret.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": sig,
            "Content-Type": "application/x-www-form-urlencoded"}


def form(payload: dict[str, Any]) -> bytes:
    return urlencode({"payload": json.dumps(payload)}).encode()


def click(fake: FakeSlack, message: dict[str, Any], action_id: str, user: str) -> dict[str, Any]:
    """A block_actions payload for a button of a posted message, as Slack sends it."""
    [button] = [b for block in message["blocks"] if block["type"] == "actions"
                for b in block["elements"] if b["action_id"] == action_id]
    ts = message["ts"]
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": "T0TEAM"},
        "api_app_id": "A0APP", "token": "legacy-verification-token",
        "container": {"type": "message", "message_ts": ts, "channel_id": CHANNEL, "is_ephemeral": False},
        "trigger_id": "1337.42.abcdef", "team": {"id": "T0TEAM", "domain": "example"},
        "enterprise": None, "is_enterprise_install": False,
        "channel": {"id": CHANNEL, "name": "approvals"},
        "message": {"type": "message", "subtype": "bot_message", "text": message["text"], "ts": ts,
                    "bot_id": "B0BOT", "blocks": message["blocks"]},
        "state": {"values": {}},
        "response_url": fake.api_url.replace("/api", f"/respond/{user}"),
        "actions": [{"action_id": button["action_id"], "block_id": "hitl_actions", "text": button["text"],
                     "value": button["value"], "style": button.get("style"), "type": "button",
                     "action_ts": f"{time.time():.6f}"}],
    }


def submission(view: dict[str, Any], user: str, comment: str) -> dict[str, Any]:
    """The view_submission of the reject modal, as Slack sends it."""
    return {
        "type": "view_submission", "team": {"id": "T0TEAM", "domain": "example"},
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": "T0TEAM"},
        "api_app_id": "A0APP", "token": "legacy-verification-token", "trigger_id": "1337.43.abcdef",
        "view": {**view, "id": "V0VIEW", "team_id": "T0TEAM", "hash": "1700000000.abc",
                 "state": {"values": {"comment": {"comment": {"type": "plain_text_input", "value": comment}}}}},
        "response_urls": [], "is_enterprise_install": False, "enterprise": None,
    }


def send(hitl: Hitl, payload: dict[str, Any], **sign_args: Any) -> httpx.Response:
    body = form(payload)
    return httpx.post(hitl.review_url + "/slack/interactions", content=body, headers=signed(body, **sign_args),
                      trust_env=False, timeout=10)


def posted(fake: FakeSlack, index: int = 0) -> dict[str, Any]:
    """The index-th posted message with its ts, as the channel shows it."""
    message = fake.wait("chat.postMessage", index + 1)[index]
    return {**message, "ts": f"1700000000.{_nth_call(fake, 'chat.postMessage', index):06d}"}


def _nth_call(fake: FakeSlack, method: str, index: int) -> int:
    with fake.lock:
        numbers = [i + 1 for i, (name, _, _) in enumerate(fake.calls) if name == method]
    return numbers[index]


def texts(message: dict[str, Any]) -> str:
    return json.dumps(message["blocks"], ensure_ascii=False)


def api(hitl: Hitl) -> httpx.Client:
    return hitl.api(TOKENS["carol"])


def record(hitl: Hitl, request_id: str) -> dict[str, Any]:
    with api(hitl) as client:
        return client.get(f"/api/requests/{request_id}").json()  # type: ignore[no-any-return]


def hold(hitl: Hitl, upstream: Upstream, path: str = "/hold/pay", body: bytes = b'{"amount": 250}'
         ) -> tuple[threading.Thread, dict[str, Any], str]:
    """An agent's request that waits for review, and its id once it is pending."""
    agent = hitl.agent()
    thread, box = in_background(lambda: agent.post(upstream.url(path), content=body,
                                                   headers={"Content-Type": "application/json"}))
    deadline = time.monotonic() + 10
    with api(hitl) as client:
        while time.monotonic() < deadline:
            items = client.get("/api/requests", params={"status": "pending"}).json()["items"]
            if items:
                return thread, box, items[0]["id"]
            time.sleep(0.05)
    raise AssertionError("no pending request")


def approve_decisions(hitl: Hitl, request_id: str) -> list[dict[str, Any]]:
    with api(hitl) as client:
        items = client.get("/api/audit", params={"request_id": request_id}).json()["items"]
    return [r for r in items if r["event"] in ("approve", "reject", "approved", "rejected")]


# -- 1. a hold is posted ------------------------------------------------------------------------

def test_a_hold_is_posted_with_its_facts_a_link_and_buttons(gate: Hitl, slack: FakeSlack, upstream: Upstream) -> None:
    _thread, box, rid = hold(gate, upstream, "/hold/pay?reviewers=alice")
    message = posted(slack)
    assert message["channel"] == CHANNEL
    [(_, _, headers)] = [c for c in slack.calls if c[0] == "chat.postMessage"]
    assert headers["authorization"] == f"Bearer {BOT}"
    header = message["blocks"][0]
    assert header["type"] == "header" and "wants to POST /hold/pay" in header["text"]["text"]
    shown = texts(message)
    assert f"https://review.example.test/requests/{rid}" in shown
    assert "127.0.0.1" in shown and '\\"amount\\": 250' in shown  # destination and body summary
    assert "<!date^" in shown  # the deadline, in each reader's time zone
    [actions] = [b for b in message["blocks"] if b["type"] == "actions"]
    assert [b["action_id"] for b in actions["elements"]] == ["hitl_approve", "hitl_approve_grant", "hitl_reject"]
    assert all(b["value"].startswith(f"{rid}:") for b in actions["elements"])
    assert actions["elements"][1]["text"]["text"] == "Approve + grant 1h"
    assert message["parse"] == "none" and message["link_names"] is False
    assert box == {} and upstream.count() == 0  # the agent still waits; nothing was sent


def test_a_hold_needing_two_approvals_offers_no_grant_until_the_last(gate: Hitl, slack: FakeSlack,
                                                                      upstream: Upstream) -> None:
    hold(gate, upstream, "/hold/pay?approvals=2")
    [actions] = [b for b in posted(slack)["blocks"] if b["type"] == "actions"]
    assert [b["action_id"] for b in actions["elements"]] == ["hitl_approve", "hitl_reject"]


# -- 2. signatures --------------------------------------------------------------------------------

@pytest.mark.parametrize("forgery", ["wrong secret", "stale", "future", "tampered", "unsigned", "bad stamp",
                                     "huge stamp"])
def test_forged_and_stale_signatures_are_refused_and_change_nothing(gate: Hitl, slack: FakeSlack,
                                                                    upstream: Upstream, forgery: str) -> None:
    _thread, _box, rid = hold(gate, upstream)
    body = form(click(slack, posted(slack), "hitl_approve", "UALICE"))
    headers = signed(body)
    if forgery == "wrong secret":
        headers = signed(body, secret="0" * 32)
    elif forgery == "stale":
        headers = signed(body, ts=int(time.time()) - 320)
    elif forgery == "future":
        headers = signed(body, ts=int(time.time()) + 320)
    elif forgery == "tampered":
        body = body.replace(b"UALICE", b"UBOB00")
    elif forgery == "unsigned":
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
    elif forgery == "bad stamp":
        headers["X-Slack-Request-Timestamp"] = "1e9"
    elif forgery == "huge stamp":
        headers["X-Slack-Request-Timestamp"] = "9" * 5000
    r = httpx.post(gate.review_url + "/slack/interactions", content=body, headers=headers, trust_env=False)
    assert r.status_code == 401
    assert r.json()["error"] == "unauthorized"
    time.sleep(0.3)
    assert record(gate, rid)["status"] == "pending"
    assert approve_decisions(gate, rid) == []
    assert slack.of("respond") == [] and upstream.count() == 0


@pytest.mark.parametrize("age, ok", [(-301, False), (-300, True), (0, True), (300, True), (301, False)])
def test_the_signature_window_is_five_minutes_either_way(age: int, ok: bool) -> None:
    from review_ui.slack import signature_ok

    now, body = 1_700_000_000.0, b"payload=%7B%7D"
    headers = signed(body, ts=int(now) + age)
    assert signature_ok(SECRET, headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"],
                        body, now) is ok
    assert not signature_ok(SECRET[:-1] + "x", headers["X-Slack-Request-Timestamp"],
                            headers["X-Slack-Signature"], body, now)


def test_a_signed_body_that_is_not_an_interaction_is_a_400(gate: Hitl) -> None:
    body = b"payload=%7Bnot+json"
    r = httpx.post(gate.review_url + "/slack/interactions", content=body, headers=signed(body), trust_env=False)
    assert r.status_code == 400


# -- 3. who may click --------------------------------------------------------------------------------

@pytest.mark.parametrize("user, refusal", [("UNOBODY", "not a reviewer"), ("UBOB", "may not decide")])
def test_unknown_and_ineligible_users_get_an_ephemeral_refusal_and_change_nothing(
        gate: Hitl, slack: FakeSlack, upstream: Upstream, user: str, refusal: str) -> None:
    _thread, _box, rid = hold(gate, upstream, "/hold/pay?reviewers=group:finance")
    message = posted(slack)
    for action in ("hitl_approve", "hitl_approve_grant", "hitl_reject"):
        assert send(gate, click(slack, message, action, user)).status_code == 200
    answers = slack.wait("respond", 3)
    assert all(a["response_type"] == "ephemeral" and refusal in a["text"] for a in answers)
    assert slack.of("views.open") == []
    assert record(gate, rid)["status"] == "pending"
    assert approve_decisions(gate, rid) == []
    assert upstream.count() == 0


# -- 4. approving -----------------------------------------------------------------------------------

def test_an_eligible_click_approves_the_agent_gets_the_answer_once_and_the_audit_names_the_reviewer(
        gate: Hitl, slack: FakeSlack, upstream: Upstream) -> None:
    thread, box, rid = hold(gate, upstream, "/hold/pay?reviewers=group:finance")
    message = posted(slack)
    r = send(gate, click(slack, message, "hitl_approve", "UALICE"))
    assert r.status_code == 200 and r.content == b""  # acknowledged at once; the work follows
    thread.join(15)
    assert box["result"].status_code == 200
    assert box["result"].headers["x-hitl-approved-by"] == "alice"
    assert upstream.count("/hold/pay") == 1
    audit = approve_decisions(gate, rid)
    assert [(a["event"], a["actor"]) for a in audit] == [("approve", "alice"), ("approved", "alice")]
    # The message now says who decided, and has no buttons.
    wait_until(lambda: any("sent" in texts(u) for u in slack.of("chat.update")))
    final = slack.of("chat.update")[-1]
    assert final["channel"] == CHANNEL and final["ts"] == message["ts"]
    assert "Approved" in texts(final) and "alice" in texts(final)
    assert not any(b["type"] == "actions" for b in final["blocks"])
    # A later click is answered, not applied.
    send(gate, click(slack, message, "hitl_approve", "UALICE"))
    [answer] = slack.wait("respond")
    assert "no longer pending" in answer["text"] and "alice" in answer["text"]
    assert upstream.count("/hold/pay") == 1
    assert len(approve_decisions(gate, rid)) == 2


def test_approve_and_grant_makes_a_standing_grant(gate: Hitl, slack: FakeSlack, upstream: Upstream) -> None:
    thread, box, rid = hold(gate, upstream)
    send(gate, click(slack, posted(slack), "hitl_approve_grant", "UALICE"))
    thread.join(15)
    assert box["result"].status_code == 200
    with api(gate) as client:
        [grant] = client.get("/api/grants").json()["items"]
    assert grant["created_by"] == "alice" and grant["request_id"] == rid


def test_quorum_counts_a_slack_click_once_per_reviewer(gate: Hitl, slack: FakeSlack, upstream: Upstream) -> None:
    thread, box, rid = hold(gate, upstream, "/hold/pay?approvals=2")
    message = posted(slack)
    send(gate, click(slack, message, "hitl_approve", "UALICE"))
    assert "1 more needed" in slack.wait("respond")[0]["text"]
    send(gate, click(slack, message, "hitl_approve", "UALICE"))  # the same reviewer again
    assert "already decided" in slack.wait("respond", 2)[1]["text"]
    assert record(gate, rid)["status"] == "pending" and upstream.count() == 0
    send(gate, click(slack, message, "hitl_approve", "UBOB"))
    thread.join(15)
    assert box["result"].status_code == 200 and upstream.count("/hold/pay") == 1


# -- 5. rejecting through the modal -------------------------------------------------------------------

def test_reject_opens_a_modal_and_its_comment_reaches_the_agent(gate: Hitl, slack: FakeSlack,
                                                                upstream: Upstream) -> None:
    thread, box, rid = hold(gate, upstream)
    message = posted(slack)
    send(gate, click(slack, message, "hitl_reject", "UALICE"))
    [opened] = slack.wait("views.open")
    assert opened["trigger_id"] == "1337.42.abcdef"
    view = opened["view"]
    assert view["type"] == "modal" and view["callback_id"] == "hitl_reject"
    assert record(gate, rid)["status"] == "pending"  # opening the form decides nothing
    # An empty comment is refused in the form itself.
    r = send(gate, submission(view, "UALICE", "   "))
    assert r.json()["response_action"] == "errors" and "comment" in r.json()["errors"]
    assert record(gate, rid)["status"] == "pending"
    r = send(gate, submission(view, "UALICE", "wrong account: use the EUR one"))
    assert r.status_code == 200
    thread.join(15)
    error = box["result"].json()["error"]
    assert box["result"].status_code == 403
    assert error["code"] == "rejected_by_reviewer"
    assert error["reviewer"] == "alice" and error["comment"] == "wrong account: use the EUR one"
    assert upstream.count() == 0
    wait_until(lambda: any("Rejected" in texts(u) for u in slack.of("chat.update")))
    final = [u for u in slack.of("chat.update") if "Rejected" in texts(u)][-1]
    assert "wrong account: use the EUR one" in texts(final)
    assert not any(b["type"] == "actions" for b in final["blocks"])


def test_a_modal_submitted_by_someone_not_eligible_changes_nothing(gate: Hitl, slack: FakeSlack,
                                                                   upstream: Upstream) -> None:
    _thread, _box, rid = hold(gate, upstream, "/hold/pay?reviewers=alice")
    send(gate, click(slack, posted(slack), "hitl_reject", "UALICE"))
    [opened] = slack.wait("views.open")
    send(gate, submission(opened["view"], "UBOB", "no"))
    [refusal] = slack.wait("chat.postEphemeral")
    assert refusal["user"] == "UBOB" and "may not decide" in refusal["text"]
    assert record(gate, rid)["status"] == "pending"


# -- 6. every channel in step -------------------------------------------------------------------------

def test_a_decision_in_the_review_api_updates_the_slack_message(gate: Hitl, slack: FakeSlack,
                                                                upstream: Upstream) -> None:
    thread, _box, rid = hold(gate, upstream)
    message = posted(slack)
    with api(gate) as client:
        assert client.post(f"/api/requests/{rid}/reject", json={"comment": "not today"}).status_code == 200
    thread.join(15)
    wait_until(lambda: any("Rejected" in texts(u) for u in slack.of("chat.update")))
    update = slack.of("chat.update")[-1]
    assert update["ts"] == message["ts"] and "carol" in texts(update) and "not today" in texts(update)
    assert not any(b["type"] == "actions" for b in update["blocks"])
    # A click on the stale message says who decided, and changes nothing.
    send(gate, click(slack, message, "hitl_approve", "UALICE"))
    [answer] = slack.wait("respond")
    assert "Rejected" in answer["text"] and "carol" in answer["text"]
    assert upstream.count() == 0


def test_a_deadline_updates_the_slack_message(gate: Hitl, slack: FakeSlack, upstream: Upstream) -> None:
    agent = gate.agent()
    in_background(lambda: agent.post(upstream.url("/timeout-deny"), content=b"x"))
    posted(slack)
    wait_until(lambda: any("Expired" in texts(u) for u in slack.of("chat.update")), 15)


# -- 7. a Slack outage --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["fail", "hang"])
def test_a_slack_outage_delays_neither_the_hold_nor_the_agents_answer(gate: Hitl, slack: FakeSlack,
                                                                      upstream: Upstream, mode: str) -> None:
    slack.mode = mode
    thread, box, rid = hold(gate, upstream)  # pending and listed while Slack fails
    slack.wait("chat.postMessage")
    with api(gate) as client:
        assert client.post(f"/api/requests/{rid}/approve", json={}).status_code == 200
    thread.join(15)
    assert box["result"].status_code == 200 and upstream.count("/hold/pay") == 1
    if mode == "fail":
        wait_until(lambda: scrape(gate).get("hitl_notify_errors_total", {})
                   .get(frozenset({("channel", "slack")}), 0) >= 1)


# -- 8. restarts ----------------------------------------------------------------------------------

def test_a_restart_posts_nothing_twice_and_still_updates_the_message(tmp_path: Path, slack: FakeSlack,
                                                                     upstream: Upstream) -> None:
    config = write_config(tmp_path, slack_config(slack))
    first = start_hitl(config)
    try:
        _thread, _box, rid = hold(first, upstream)
        message = posted(slack)
    finally:
        first.stop()
    second = start_hitl(config)
    try:
        second.call(second.runtime.slack.catch_up())
        time.sleep(0.5)
        assert len(slack.of("chat.postMessage")) == 1
        with api(second) as client:
            assert client.post(f"/api/requests/{rid}/approve", json={}).status_code == 200
        wait_until(lambda: any(u["ts"] == message["ts"] and "Approved" in texts(u) for u in slack.of("chat.update")))
        assert len(slack.of("chat.postMessage")) == 1
    finally:
        second.stop()


# -- 9. what a request cannot do to the channel ------------------------------------------------

def test_request_text_cannot_mention_the_channel_or_make_links(gate: Hitl, slack: FakeSlack,
                                                               upstream: Upstream) -> None:
    evil = json.dumps({"note": "<!channel> hey <@U0ADMIN> see <https://evil.example|your bank>",
                       "pad": "y" * 20000}).encode()
    hold(gate, upstream, body=evil)
    message = posted(slack)
    sent = json.dumps(message, ensure_ascii=False)
    assert "<!channel>" not in sent and "<@U0ADMIN>" not in sent and "<https://evil" not in sent
    assert "&lt;!channel&gt;" in sent
    assert len(message["blocks"]) <= 50
    for block in message["blocks"]:
        for text in [block.get("text"), *block.get("fields", []), *block.get("elements", [])]:
            if isinstance(text, dict) and isinstance(text.get("text"), str):
                assert len(text["text"]) <= 3000


def test_an_mcp_tool_call_is_shown_as_its_tool_and_redacted_arguments(gate: Hitl, slack: FakeSlack,
                                                                       upstream: Upstream) -> None:
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "send_email", "arguments": {"to": "cfo@example.com", "api_key": "sk_live_1"}}}
    hold(gate, upstream, "/hold/mcp", json.dumps(call).encode())
    shown = texts(posted(slack))
    assert "*MCP tool* `send_email`" in shown and "cfo@example.com" in shown
    assert "sk_live_1" not in shown and "[redacted]" in shown


# -- 10. processes sharing one store ---------------------------------------------------------

def test_processes_sharing_a_store_post_a_hold_once_and_follow_each_others_decisions(
        tmp_path: Path, slack: FakeSlack, upstream: Upstream) -> None:
    """A --role proxy process holds; two --role review processes share the store. One message is
    posted; a decision made in either review process, or by a click, ends in chat.update."""
    from tests.test_roles import start_role

    config = write_config(tmp_path, slack_config(slack))
    procs = []
    try:
        proxy, proxy_url = start_role(config, "proxy")
        procs.append(proxy)
        first, first_url = start_role(config, "review")
        procs.append(first)
        second, second_url = start_role(config, "review")
        procs.append(second)
        for n, path in enumerate(("/hold/a", "/hold/b")):
            with httpx.Client(proxy=proxy_url, trust_env=False, timeout=30) as agent:
                thread, box = in_background(lambda p=path: agent.post(upstream.url(p), content=b"{}"))
                message = posted(slack, n)
                rid = message["blocks"][-1]["elements"][0]["value"].split(":")[0]
                if n == 0:  # decided through the second review process's API
                    with httpx.Client(base_url=second_url, trust_env=False, timeout=10,
                                      headers={"Authorization": f"Bearer {TOKENS['carol']}"}) as client:
                        assert client.post(f"/api/requests/{rid}/approve", json={}).status_code == 200
                else:  # a click reaching the first
                    body = form(click(slack, message, "hitl_approve", "UALICE"))
                    assert httpx.post(first_url + "/slack/interactions", content=body, headers=signed(body),
                                      trust_env=False).status_code == 200
                thread.join(20)
                assert box["result"].status_code == 200
                wait_until(lambda m=message: any(u["ts"] == m["ts"] and "sent" in texts(u)
                                                 for u in slack.of("chat.update")), 15)
        time.sleep(1)  # a second post would have happened by now
        assert len(slack.of("chat.postMessage")) == 2
        assert upstream.count("/hold/a") == 1 and upstream.count("/hold/b") == 1
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def test_a_hold_whose_post_failed_is_posted_once_when_slack_is_back(
        make_hitl: Callable[..., Hitl], slack: FakeSlack, upstream: Upstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import proxy.slack

    monkeypatch.setattr(proxy.slack, "BACKOFF", (0.05, 0.05))  # give up soon: the catch-up retries
    monkeypatch.setattr(proxy.slack, "CATCH_UP_SECONDS", 0.5)
    gate = make_hitl(slack_config(slack))
    slack.mode = "fail"
    _thread, _box, rid = hold(gate, upstream)
    wait_until(lambda: len(slack.of("chat.postMessage")) >= 6)  # two rounds of three attempts
    slack.mode = "ok"
    wait_until(lambda: _posted_ts(gate, rid) not in (None, ""))
    posts = len(slack.of("chat.postMessage"))
    assert _posted_ts(gate, rid) == f"1700000000.{_nth_call(slack, 'chat.postMessage', posts - 1):06d}"
    time.sleep(1.5)  # three more catch-ups: none may post it again
    assert len(slack.of("chat.postMessage")) == posts
    assert slack.of("chat.update") == []  # the message shows what the record is: nothing to update


def _posted_ts(hitl: Hitl, request_id: str) -> str | None:
    rec = hitl.call(hitl.runtime.store.get(request_id))
    return None if rec is None else rec.slack_ts  # type: ignore[no-any-return]


def test_a_click_on_content_edited_since_the_message_changes_nothing(gate: Hitl, slack: FakeSlack,
                                                                     upstream: Upstream) -> None:
    _thread, _box, rid = hold(gate, upstream, "/hold/pay?approvals=2")
    message = posted(slack)
    with api(gate) as client:  # carol approves an edited body: what Slack showed is stale now
        r = client.post(f"/api/requests/{rid}/approve", json={"edit": {"body": '{"amount": 99}'}})
        assert r.status_code == 200
    send(gate, click(slack, message, "hitl_approve", "UALICE"))
    [answer] = slack.wait("respond")
    assert "changed since the message showed it" in answer["text"]
    assert record(gate, rid)["status"] == "pending" and upstream.count() == 0
    assert [a["actor"] for a in approve_decisions(gate, rid)] == ["carol"]
    # The message is brought up to date: the edited body, a fresh digest on its buttons.
    wait_until(lambda: any('\\"amount\\": 99' in texts(u) for u in slack.of("chat.update")))


def test_the_agent_itself_may_not_decide_in_slack(make_hitl: Callable[..., Hitl], slack: FakeSlack,
                                                  upstream: Upstream) -> None:
    config = slack_config(slack)
    config["proxy.agents"] = [{"id": "alice", "token_hash": hashed("agent-secret")}]
    gate = make_hitl(config)
    agent = httpx.Client(proxy=gate.proxy_url.replace("http://", "http://alice:agent-secret@"),
                         trust_env=False, timeout=30)
    in_background(lambda: agent.post(upstream.url("/hold/pay"), content=b"{}"))
    message = posted(slack)
    rid = message["blocks"][-1]["elements"][0]["value"].split(":")[0]
    for action in ("hitl_approve", "hitl_reject"):
        send(gate, click(slack, message, action, "UALICE"))
    answers = slack.wait("respond", 2)
    assert all("agent that sent this request" in a["text"] for a in answers)
    assert slack.of("views.open") == []
    assert record(gate, rid)["status"] == "pending" and upstream.count() == 0
