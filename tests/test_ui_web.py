"""The reviewer web UI in a real browser: Debian's Chromium driven by Playwright, against a
real hitl-proxy whose agents are real curl processes going through the proxy to a real
recording upstream. Screenshots land in test-artifacts/ (gitignored)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from proxy.config import Settings
from proxy.credentials import hash_secret
from review_ui.sessions import Sessions
from tests.conftest import ROOT, Hitl, Upstream

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
TIMEOUT_MS = 15_000

# Hold anything under /hold; the message comes from ?msg= so tests can choose it (even hostile).
UI_POLICY = r'''
package hitl

import rego.v1

default decision := {"action": "allow", "rule": "default"}

decision := {
	"action": "hold",
	"message": object.get(input.request.query, "msg", [sprintf("%s wants to %s %s", [input.agent.id, input.request.method, input.request.path])])[0],
	"rule": "payments.review",
	"grantable": true,
	"reviewers": object.get(input.request.query, "reviewers", []),
} if {
	startswith(input.request.path, "/hold")
}
'''

AGENTS = {"billing-agent": "bill-token", "support-bot": "support-token"}
API_TOKEN = "hitl_test_ops_token"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-proxy-server"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def hashes() -> dict[str, str]:
    # argon2 is slow on purpose: hash the fixed secrets once per module.
    return {"pw": hash_secret("pw"), "api": hash_secret(API_TOKEN),
            **{a: hash_secret(t) for a, t in AGENTS.items()}}


def ui_config(hashes: dict[str, str]) -> dict[str, Any]:
    return {
        "review.users": [{"name": "alice", "password_hash": hashes["pw"], "groups": ["finance"]},
                         {"name": "bob", "password_hash": hashes["pw"], "groups": ["ops"]}],
        "review.tokens": [{"name": "ops-bot", "token_hash": hashes["api"], "groups": ["ops", "finance"]}],
        "proxy.agents": [{"id": a, "token_hash": hashes[a]} for a in AGENTS],
    }


@pytest.fixture
def ui(make_hitl: Callable[..., Hitl], hashes: dict[str, str]) -> Hitl:
    return make_hitl(ui_config(hashes), policy=UI_POLICY)


@pytest.fixture
def page(ui: Hitl, browser: Any) -> Iterator[Any]:
    """A fresh browser context (its own cookies); closed before the proxy stops, so the page's
    event stream never holds the review listener's shutdown up."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    pg.dialogs = []  # type: ignore[attr-defined]
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))  # type: ignore[attr-defined]
    yield pg
    context.close()


def login(page: Any, ui: Hitl, name: str = "alice", password: str = "pw") -> None:
    page.goto(ui.review_url + "/")
    assert "/login" in page.url
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(ui.review_url + "/")


class Curl:
    """An agent: curl through the proxy, in a thread, so the test can act while it waits."""

    def __init__(self, ui: Hitl, url: str, *, agent: str = "billing-agent", body: str | None = None,
                 content_type: str = "application/json", headers: tuple[str, ...] = ()) -> None:
        cmd = ["curl", "-s", "-i", "--max-time", "30", "--proxy-user", f"{agent}:{AGENTS[agent]}"]
        if body is not None:
            cmd += ["-X", "POST", "--data-binary", body, "-H", f"Content-Type: {content_type}"]
        for h in headers:
            cmd += ["-H", h]
        env = {"http_proxy": ui.proxy_url, "PATH": "/usr/bin:/bin"}
        self.result: subprocess.CompletedProcess[str] | None = None
        self.thread = threading.Thread(target=self._run, args=(cmd + [url], env), daemon=True)
        self.thread.start()

    def _run(self, cmd: list[str], env: dict[str, str]) -> None:
        self.result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=40, check=False)

    def done(self, timeout: float = 30) -> str:
        self.thread.join(timeout)
        assert self.result is not None, "curl did not finish"
        return self.result.stdout


def hold_url(upstream: Upstream, path: str = "/hold/charge", **query: str) -> str:
    qs = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
    return upstream.url(path + (f"?{qs}" if qs else ""))


def api(ui: Hitl) -> httpx.Client:
    return ui.api(API_TOKEN)


def pending(ui: Hitl, count: int = 1, timeout: float = 10) -> list[dict[str, Any]]:
    """The pending requests, once there are ``count`` of them (as the API token sees them)."""
    deadline = time.monotonic() + timeout
    with api(ui) as c:
        while time.monotonic() < deadline:
            items: list[dict[str, Any]] = c.get("/api/requests", params={"status": "pending"}).json()["items"]
            if len(items) >= count:
                return items
            time.sleep(0.05)
    raise AssertionError(f"expected {count} pending requests within {timeout}s")


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


# -- login ---------------------------------------------------------------------------------

def test_wrong_password_shows_an_error_then_the_right_one_logs_in(page: Any, ui: Hitl) -> None:
    login_page = ui.review_url + "/"
    page.goto(login_page)
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill("not-it")
    page.get_by_role("button", name="Log in").click()
    assert page.locator("#login-error").inner_text() == "Wrong user name or password."
    page.get_by_label("Password").fill("pw")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(login_page)
    assert page.locator(".who-name").inner_text() == "alice"
    cookie = next(c for c in page.context.cookies() if c["name"] == "hitl_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and not cookie["secure"]
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r".*/login$"))
    page.goto(login_page)
    assert "/login" in page.url  # the session is gone


def test_login_attempts_are_rate_limited_per_address(ui: Hitl) -> None:
    with httpx.Client(base_url=ui.review_url, trust_env=False, timeout=30) as c:
        token = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)  # type: ignore[union-attr]
        codes = [c.post("/login", data={"name": "alice", "password": f"guess{i}", "csrf": token}).status_code
                 for i in range(6)]
        assert codes == [401] * 5 + [429]
        r = c.post("/login", data={"name": "alice", "password": "pw", "csrf": token})
        assert r.status_code == 429 and "Too many failed logins" in r.text


def test_admin_login_link_becomes_a_session_and_leaves_the_url(make_hitl: Callable[..., Hitl],
                                                             browser: Any) -> None:
    hitl = make_hitl(policy=UI_POLICY)  # no reviewer configured: serve mints the admin link
    context = browser.new_context()
    try:
        pg = context.new_page()
        pg.goto(f"{hitl.review_url}/login?token=wrong")
        assert "not valid" in pg.locator("#login-error").inner_text()
        pg.goto(f"{hitl.review_url}/login?token={hitl.admin_token}")
        pg.wait_for_url(hitl.review_url + "/")  # redirected: the token is out of the address bar
        assert pg.locator(".who-name").inner_text() == "admin"
    finally:
        context.close()


def test_trusted_header_only_from_the_configured_proxy(make_hitl: Callable[..., Hitl], tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    trusted = make_hitl({"review.trusted_header": {"user": "X-Forwarded-User", "groups": "X-Forwarded-Groups",
                                                   "from": ["127.0.0.1/32"]}},
                        policy=UI_POLICY)
    elsewhere = make_hitl({"review.trusted_header": {"user": "X-Forwarded-User", "from": ["10.9.0.0/16"]}},
                          policy=UI_POLICY, directory=tmp_path / "elsewhere")
    who = {"X-Forwarded-User": "carol", "X-Forwarded-Groups": "finance, ops"}
    with httpx.Client(base_url=trusted.review_url, trust_env=False, timeout=30) as c:
        r = c.get("/", headers=who)
        assert r.status_code == 200 and '<span class="who-name" title="groups: finance, ops">carol</span>' in r.text
        assert "hitl_session" in c.cookies  # carries the CSRF token for the page's calls
        assert c.get("/api/me", headers=who).json() == {"name": "carol", "groups": ["finance", "ops"]}
        # A header alone cannot change state: cross-site posts would carry it too.
        c.cookies.clear()
        assert c.post("/api/requests/x/comment", headers=who, json={"comment": "hi"}).status_code == 403
    with httpx.Client(base_url=elsewhere.review_url, trust_env=False, timeout=30) as c:
        assert c.get("/", headers=who).status_code == 303  # not from a trusted address: log in
        assert c.get("/api/me", headers=who).status_code == 401


# -- the queue and decisions ---------------------------------------------------------------

def test_hold_appears_live_and_approve_lets_the_agents_curl_complete(page: Any, ui: Hitl, upstream: Upstream) -> None:
    login(page, ui)
    assert page.locator("#empty").is_visible()
    page.wait_for_selector('#live[data-state="on"]')  # subscribed to /api/events
    first = Curl(ui, hold_url(upstream, msg="Charge of 50.00 USD to cus_123 (Acme Ltd)"),
                 body=json.dumps({"amount": 5000, "currency": "usd", "customer": "cus_123"}))
    second = Curl(ui, hold_url(upstream, "/hold/refund", msg="Refund 12.00 EUR on order 8841"),
                  agent="support-bot", body="order=8841&amount=12.00&reason=damaged",
                  content_type="application/x-www-form-urlencoded")
    row = page.locator(".row", has_text="Charge of 50.00 USD to cus_123")
    row.wait_for()  # no reload: the event stream brought it
    page.locator(".row", has_text="Refund 12.00 EUR").wait_for()
    page.wait_for_function("document.title.startsWith('(2) Queue')")
    assert "billing-agent" in row.inner_text() and "POST" in row.inner_text()
    assert "/hold/charge" in row.inner_text() and "0/1 approvals" in row.inner_text()
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    page.evaluate("document.querySelectorAll('.row.new').forEach(r => r.classList.remove('new'))")
    shot(page, "ui-queue.png")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "ui-queue-phone.png")
    page.set_viewport_size({"width": 1280, "height": 860})

    row.click()
    page.wait_for_url(re.compile(r".*/requests/[0-9a-f]+$"))
    assert page.locator("h1.message").inner_text() == "Charge of 50.00 USD to cus_123 (Acme Ltd)"
    assert '"amount": 5000' in page.locator(".bodybox pre").first.inner_text()  # pretty-printed
    shot(page, "ui-detail.png")
    page.get_by_role("textbox", name=re.compile("^Comment")).fill("OK, expected invoice")
    page.get_by_role("button", name="Approve", exact=True).click()
    out = first.done()
    assert out.startswith("HTTP/1.1 200") and "x-hitl-approved-by: alice" in out.lower()
    assert upstream.received[0].path.startswith("/hold/charge")
    page.locator(".detail-badges .badge", has_text="sent").wait_for()
    assert "OK, expected invoice" in page.locator(".timeline").inner_text()

    page.goto(ui.review_url + "/history?q=Charge")
    assert "alice" in page.locator("table.history").inner_text()
    assert "200" in page.locator("table.history").inner_text()
    shot(page, "ui-history.png")
    with api(ui) as c:  # let the second agent go, so no curl outlives the test
        rid = c.get("/api/requests", params={"status": "pending"}).json()["items"][0]["id"]
        c.post(f"/api/requests/{rid}/approve", json={})
    second.done()


def test_reject_needs_a_comment_and_the_agent_receives_it(page: Any, ui: Hitl, upstream: Upstream) -> None:
    login(page, ui)
    agent = Curl(ui, hold_url(upstream, msg="Email 4,000 customers about the outage"),
                 body=json.dumps({"to": "all-customers", "subject": "Outage"}))
    page.locator(".row", has_text="Email 4,000 customers").click()
    page.get_by_role("button", name="Reject").click()
    assert "feedback the agent receives" in page.locator("#action-error").inner_text()
    assert agent.thread.is_alive()  # nothing was sent
    page.get_by_role("textbox", name=re.compile("^Comment")).fill("Too broad: send only to affected EU customers.")
    page.get_by_role("button", name="Reject").click()
    out = agent.done()
    assert out.startswith("HTTP/1.1 403")
    body = json.loads(out.split("\n\n", 1)[1])
    assert body["error"]["code"] == "rejected_by_reviewer"
    assert body["error"]["comment"] == "Too broad: send only to affected EU customers." and body["error"]["reviewer"] == "alice"
    page.locator(".detail-badges .badge", has_text="Rejected").wait_for()
    assert upstream.count() == 0


def test_edit_then_approve_forwards_the_edited_body(page: Any, ui: Hitl, upstream: Upstream) -> None:
    login(page, ui)
    agent = Curl(ui, hold_url(upstream, msg="Pay supplier invoice INV-77"),
                 body=json.dumps({"amount": 990000, "iban": "DE89370400440532013000"}),
                 headers=("X-Note: from agent",))
    page.locator(".row", has_text="INV-77").click()
    page.locator("summary", has_text="Edit, then approve").click()
    page.get_by_label("Body (JSON)").fill('{"amount": 9900, ')
    page.get_by_role("button", name="Approve edited request").click()
    assert "not valid JSON" in page.locator("#action-error").inner_text()
    assert agent.thread.is_alive()
    page.get_by_label("Body (JSON)").fill('{"amount": 9900, "iban": "DE89370400440532013000"}')
    headers = page.locator("#edit-headers")
    headers.fill(headers.input_value().replace("x-note: from agent", "x-note: edited by alice"))
    page.get_by_role("button", name="Approve edited request").click()
    out = agent.done()
    assert out.startswith("HTTP/1.1 200")
    received = upstream.received[0]
    assert json.loads(received.body) == {"amount": 9900, "iban": "DE89370400440532013000"}
    assert received.headers["x-note"] == "edited by alice"
    page.locator("h3", has_text="As edited by the reviewer").wait_for()
    with api(ui) as c:
        rid = page.url.rsplit("/", 1)[1]
        events = [a["event"] for a in c.get("/api/audit", params={"request_id": rid}).json()["items"]]
    assert events  # the gate audits the original and the edit (the audit keeps both)


def test_ineligible_reviewer_sees_why_and_cannot_decide(page: Any, ui: Hitl, upstream: Upstream) -> None:
    login(page, ui, "bob")
    agent = Curl(ui, hold_url(upstream, msg="Wire 20,000 EUR", reviewers="group:finance"), body="{}")
    page.locator(".row", has_text="Wire 20,000 EUR").click()
    assert "group:finance" in page.locator("#cannot-decide").inner_text()
    assert page.get_by_role("button", name="Approve", exact=True).count() == 0
    page.get_by_role("textbox", name=re.compile("^Comment")).fill("Looks odd, finance please check")
    page.get_by_role("button", name="Comment").click()
    page.locator(".timeline", has_text="Looks odd").wait_for()
    with api(ui) as c:
        rid = page.url.rsplit("/", 1)[1]
        c.post(f"/api/requests/{rid}/reject", json={"comment": "test over"})
    agent.done()


# -- security --------------------------------------------------------------------------------

def test_state_changing_calls_without_the_csrf_token_are_refused(page: Any, ui: Hitl, upstream: Upstream) -> None:
    login(page, ui)
    agent = Curl(ui, hold_url(upstream, msg="CSRF target"), body="{}")
    page.locator(".row", has_text="CSRF target").wait_for()
    with api(ui) as c:
        rid = c.get("/api/requests", params={"status": "pending"}).json()["items"][0]["id"]
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    with httpx.Client(base_url=ui.review_url, trust_env=False, cookies=cookies, timeout=30) as c:
        assert c.get(f"/api/requests/{rid}").status_code == 200  # reads need no token
        for headers in ({}, {"X-CSRF-Token": "forged"}):
            r = c.post(f"/api/requests/{rid}/approve", json={}, headers=headers)
            assert r.status_code == 403 and r.json()["error"] == "csrf_failed"
        assert c.post("/logout", data={}).status_code == 403  # logout needs it too
        assert c.get(f"/api/requests/{rid}").json()["status"] == "pending"
        token = page.locator('meta[name="csrf-token"]').get_attribute("content")
        assert c.post(f"/api/requests/{rid}/reject", json={"comment": "done"},
                      headers={"X-CSRF-Token": token}).status_code == 200
    agent.done()


def test_hostile_request_content_renders_as_text(page: Any, ui: Hitl, upstream: Upstream) -> None:
    script, img = "<script>alert(1)</script>", "<img src=x onerror=alert(1)>"
    login(page, ui)
    agent = Curl(ui, hold_url(upstream, f"/hold/{quote(img)}", msg=f"Pay {script} {img}"),
                 body=f"note={script}{img}", content_type="text/plain",
                 headers=(f"X-Evil: {img}",))
    row = page.locator(".row", has_text="alert(1)")
    row.wait_for()  # inserted live by the page's script
    assert row.locator(".msg").inner_text() == f"Pay {script} {img}"
    page.reload()  # and rendered by the server
    assert page.locator(".row .msg").inner_text() == f"Pay {script} {img}"
    row = page.locator(".row", has_text="alert(1)")
    row.click()
    page.wait_for_url(re.compile(r".*/requests/"))
    assert page.locator("h1.message").inner_text() == f"Pay {script} {img}"
    assert page.locator(".bodybox pre").first.inner_text() == f"note={script}{img}"
    assert img in page.locator("table.kv").first.inner_text()
    assert page.locator("main img").count() == 0 and page.locator("main script").count() == 0
    page.wait_for_timeout(300)  # give a would-be onerror handler its chance to run
    assert page.dialogs == []  # type: ignore[attr-defined]
    page.get_by_role("textbox", name=re.compile("^Comment")).fill(f"no {script}")
    page.get_by_role("button", name="Reject").click()
    assert "403" in agent.done().split("\r\n", 1)[0]
    # The page reloads itself after a decision: let it, or that reload aborts the next goto.
    page.locator(".detail-badges .badge", has_text="Rejected").wait_for()
    page.goto(ui.review_url + "/history")
    assert script in page.locator("table.history").inner_text()
    assert page.dialogs == []  # type: ignore[attr-defined]


def test_pages_carry_the_security_headers(ui: Hitl) -> None:
    with httpx.Client(base_url=ui.review_url, trust_env=False) as c:
        for path in ("/login", "/static/app.js"):
            r = c.get(path)
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert r.headers["x-frame-options"] == "DENY" and r.headers["referrer-policy"] == "no-referrer"
        assert c.get("/login?next=//evil.example").status_code == 200
        assert 'value="//evil.example"' not in c.get("/login?next=//evil.example").text


# -- standing grants -----------------------------------------------------------------------

def test_grant_shows_on_the_grants_page_and_revoke_sends_similar_requests_back_to_review(
        page: Any, ui: Hitl, upstream: Upstream) -> None:
    login(page, ui)
    first = Curl(ui, hold_url(upstream, msg="Charge 5.00 USD"), body='{"amount": 500}')
    page.locator(".row", has_text="Charge 5.00 USD").click()
    page.locator("#grant").fill("30")
    page.get_by_role("button", name="Approve", exact=True).click()
    assert first.done().startswith("HTTP/1.1 200")
    page.locator(".detail-badges .badge", has_text="sent").wait_for()
    rid = page.url.rsplit("/", 1)[1]
    # The grant is in force: same agent, method, host and path (another body) pass unreviewed.
    out = Curl(ui, hold_url(upstream, msg="Charge 7.00 USD"), body='{"amount": 700}').done()
    assert out.startswith("HTTP/1.1 200") and "x-hitl-approved-by: alice (standing grant)" in out.lower()

    page.locator(".nav").get_by_role("link", name="Queue").click()
    note = page.locator("#grants-note")
    assert note.inner_text() == "1 standing grant active"
    note.click()
    page.wait_for_url(ui.review_url + "/grants")
    assert page.locator('.nav a[aria-current="page"]').inner_text() == "Grants"
    row = page.locator("#grants-active .grant")
    assert row.count() == 1
    text = row.inner_text()
    assert "billing-agent" in text and "POST" in text and "127.0.0.1/hold/charge" in text
    assert "granted by alice" in text and re.search(r"expires in (29|30)m", text)
    assert row.get_by_role("link").get_attribute("href") == f"/requests/{rid}"
    assert page.locator("#ended-empty").is_visible()

    # A grant made elsewhere (the API) appears without a reload: the gate's grant_created event.
    page.wait_for_selector('#live[data-state="on"]')
    other = Curl(ui, hold_url(upstream, "/hold/refund", msg="Refund 3.00 EUR"), agent="support-bot", body="{}")
    with api(ui) as c:
        other_id = pending(ui)[0]["id"]
        assert c.post(f"/api/requests/{other_id}/approve", json={"grant_minutes": 5}).status_code == 200
    assert other.done().startswith("HTTP/1.1 200")
    page.locator("#grants-active .grant", has_text="support-bot").wait_for()
    assert page.locator("#active-count").inner_text() == "2"
    shot(page, "ui-grants.png")

    # Revoke: the row leaves the active list in place and shows below, greyed, as revoked.
    page.locator("#grants-active .grant", has_text="billing-agent").get_by_role("button", name="Revoke").click()
    page.locator("#grants-active .grant", has_text="billing-agent").wait_for(state="detached")
    ended = page.locator("#grants-ended .grant.ended", has_text="billing-agent")
    ended.wait_for()
    assert "revoked by alice" in ended.inner_text()
    assert page.locator("#active-count").inner_text() == "1"
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    shot(page, "ui-grants-revoked.png")

    # A similar request is held for review again.
    again = Curl(ui, hold_url(upstream, msg="Charge 9.00 USD"), body='{"amount": 900}')
    held = pending(ui)
    assert [i["message"] for i in held] == ["Charge 9.00 USD"] and again.thread.is_alive()
    with api(ui) as c:
        c.post(f"/api/requests/{held[0]['id']}/reject", json={"comment": "test over"})
    assert again.done().startswith("HTTP/1.1 403")
    assert upstream.count("/hold/charge") == 2  # the approved one and the granted one


def test_grants_page_needs_a_login(ui: Hitl) -> None:
    with httpx.Client(base_url=ui.review_url, trust_env=False, timeout=30) as c:
        r = c.get("/grants")
        assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fgrants"
        assert c.get("/grants.json").status_code == 401


# -- durable logout ------------------------------------------------------------------------

def _login_cookie(c: httpx.Client) -> str:
    token = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)  # type: ignore[union-attr]
    assert c.post("/login", data={"name": "alice", "password": "pw", "csrf": token}).status_code == 303
    return c.cookies["hitl_session"]


def test_logout_survives_a_restart(make_hitl: Callable[..., Hitl], ui: Hitl, hashes: dict[str, str]) -> None:
    with httpx.Client(base_url=ui.review_url, trust_env=False, timeout=30) as c:
        cookie = _login_cookie(c)
        page_html = c.get("/").text
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page_html).group(1)  # type: ignore[union-attr]
        # Another process on the same data dir accepts the session (the key is shared) ...
        before = make_hitl(ui_config(hashes), policy=UI_POLICY)
        with httpx.Client(base_url=before.review_url, trust_env=False, timeout=30,
                          cookies={"hitl_session": cookie}) as b:
            assert b.get("/grants").status_code == 200
        assert c.post("/logout", data={"csrf": csrf}).status_code == 303
    revoked = ui.runtime.settings.data_dir / "ui-revoked-sessions"
    assert revoked.stat().st_mode & 0o777 == 0o600
    # ... and one started after the logout refuses it, as does this one.
    after = make_hitl(ui_config(hashes), policy=UI_POLICY)
    for hitl in (ui, after):
        with httpx.Client(base_url=hitl.review_url, trust_env=False, timeout=30,
                          cookies={"hitl_session": cookie}) as c:
            r = c.get("/grants")
            assert r.status_code == 303 and r.headers["location"].startswith("/login")
            assert c.get("/api/me").status_code == 401


def test_revoked_sessions_file_is_merged_and_pruned(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    one, two = Sessions(settings, None), Sessions(settings, None)  # two processes, one data dir
    a, cookie_a = one.issue("alice", "password", "x")
    b, cookie_b = two.issue("bob", "password", "y")
    path = tmp_path / "ui-revoked-sessions"
    path.write_text(json.dumps({"long-gone": time.time() - 1}))
    one.revoke(a)
    two.revoke(b)  # merges what the other process wrote; drops the expired id
    assert set(json.loads(path.read_text())) == {a.sid, b.sid}
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    fresh = Sessions(settings, None)
    assert fresh.parse(cookie_a) is None and fresh.parse(cookie_b) is None
    assert fresh.parse(fresh.issue("alice", "password", "x")[1]) is not None


# -- the grant offer on the third similar approval (review_ui/tuning.py) --------------------

def test_grant_offer_appears_on_the_third_similar_approval_and_one_click_grants_it(
        page: Any, ui: Hitl, upstream: Upstream) -> None:
    login(page, ui)

    def held(agent: str, amount: int) -> tuple[Curl, str]:
        curl = Curl(ui, hold_url(upstream, msg=f"Charge {amount} by {agent}"), agent=agent,
                    body=json.dumps({"amount": amount}))
        # Another hold may be pending already: wait for this one, not for any one.
        message = f"Charge {amount} by {agent}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = [i for i in pending(ui) if i["message"] == message]
            if found:
                return curl, found[0]["id"]
            time.sleep(0.05)
        raise AssertionError(f"no pending request {message!r} within 10 s")

    # Two similar requests approved: the first through the API, the second in the page.
    first, rid = held("billing-agent", 100)
    with api(ui) as c:
        assert c.post(f"/api/requests/{rid}/approve", json={}).status_code == 200
    assert first.done().startswith("HTTP/1.1 200")
    second, rid = held("billing-agent", 200)
    page.goto(f"{ui.review_url}/requests/{rid}")
    assert page.locator("#grant-offer").count() == 0  # one approval so far: no offer
    page.get_by_role("button", name="Approve", exact=True).click()
    assert second.done().startswith("HTTP/1.1 200")
    page.locator(".detail-badges .badge", has_text="sent").wait_for()

    # Another agent on the same path is not similar: no offer for it.
    other, other_id = held("support-bot", 300)
    page.goto(f"{ui.review_url}/requests/{other_id}")
    assert page.locator("#grant-offer").count() == 0

    third, rid = held("billing-agent", 400)
    page.goto(f"{ui.review_url}/requests/{rid}")
    offer = page.locator("#grant-offer")
    assert "Approved 2 times in the last day" in offer.inner_text()
    scope = {k: offer.locator(f'[data-scope="{k}"]').inner_text()
             for k in ("agent", "method", "host", "path", "rule", "duration")}
    assert scope["agent"] == "billing-agent" and scope["method"] == "POST"
    assert scope["host"] == f"127.0.0.1:{upstream.port}" and scope["path"] == "/hold/charge"
    assert scope["rule"] == "payments.review" and scope["duration"].startswith("60 minutes")
    shot(page, "ui-grant-offer.png")
    offer.get_by_role("button", name="Approve and allow similar for 60 minutes").click()
    assert third.done().startswith("HTTP/1.1 200")
    page.locator(".detail-badges .badge", has_text="sent").wait_for()
    with api(ui) as c:
        [grant] = c.get("/api/grants").json()["items"]
    assert (grant["agent"], grant["method"], grant["path"], grant["created_by"], grant["request_id"]) == \
        ("billing-agent", "POST", "/hold/charge", "alice", rid)
    # The grant covers the fourth similar request: through without review.
    out = Curl(ui, hold_url(upstream, msg="Charge 500"), body='{"amount": 500}').done()
    assert out.startswith("HTTP/1.1 200") and "x-hitl-approved-by: alice (standing grant)" in out.lower()
    assert upstream.count("/hold/charge") == 4
    with api(ui) as c:  # let the other agent go
        c.post(f"/api/requests/{other_id}/reject", json={"comment": "test over"})
    other.done()
