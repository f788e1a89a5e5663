"""The review UI under attack, in a real Chromium (issue 12, items 3, 7, 14, 15): another
site's logout form, a reviewer named like the agent, an edit that lands while a reviewer
looks at the old bytes, and a body too large to show."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Hitl, Upstream
from tests.test_ui_web import (  # noqa: F401  (fixtures)
    TIMEOUT_MS,
    UI_POLICY,
    Curl,
    api,
    browser,
    hashes,
    hold_url,
    login,
    pending,
    ui_config,
)

# The web UI tests' policy, with ?approvals=N for a quorum.
POLICY = UI_POLICY.replace('"grantable": true,', '"grantable": true,\n\t"approvals": '
                           'to_number(object.get(input.request.query, "approvals", ["1"])[0]),')
assert POLICY != UI_POLICY


@pytest.fixture
def ui(make_hitl: Callable[..., Hitl], hashes: dict[str, str]) -> Hitl:  # noqa: F811
    config = ui_config(hashes)
    # A reviewer account named like an agent: it may look, never decide its own requests.
    config["review.users"] = [*config["review.users"],
                              {"name": "billing-agent", "password_hash": hashes["pw"], "groups": ["finance"]}]
    config["proxy.max_body_bytes"] = 4 * 1024 * 1024
    return make_hitl(config, policy=POLICY)


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:  # noqa: F811
    ctx = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx
    ctx.close()


class EvilSite:
    """Another site (reached as http://localhost:PORT, so cross-site to 127.0.0.1) whose page
    posts a form to the review UI's /logout as soon as it loads."""

    def __init__(self, target: str) -> None:
        page = (f'<!doctype html><form method="post" action="{target}/logout">'
                '<input type="hidden" name="csrf" value="guess"></form>'
                '<script>document.forms[0].submit()</script>').encode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://localhost:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_another_sites_logout_form_does_not_log_the_reviewer_out(ui: Hitl, context: Any) -> None:
    page = context.new_page()
    login(page, ui)
    evil = EvilSite(ui.review_url)
    try:
        with page.expect_response(re.compile(r".*/logout$")) as posted:
            page.goto(evil.url)
        assert posted.value.request.method == "POST"
        page.wait_for_load_state()
    finally:
        evil.close()
    assert any(c["name"] == "hitl_session" for c in context.cookies())
    page.goto(ui.review_url + "/")
    assert page.url == ui.review_url + "/"  # not sent to the login page
    assert page.locator(".who-name").inner_text() == "alice"
    # Our own page's logout button still works.
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r".*/login$"))
    page.goto(ui.review_url + "/")
    assert "/login" in page.url


def test_a_reviewer_named_like_the_agent_sees_why_and_cannot_decide_its_request(
        ui: Hitl, context: Any, upstream: Upstream) -> None:
    curl = Curl(ui, hold_url(upstream, msg="pay myself"), agent="billing-agent", body='{"amount": 1}')
    [item] = pending(ui)
    page = context.new_page()
    login(page, ui, "billing-agent")
    page.goto(f"{ui.review_url}/requests/{item['id']}")
    assert "sent this request as its agent" in page.locator("#cannot-decide").inner_text()
    assert page.get_by_role("button", name="Approve", exact=True).count() == 0
    # The page's own session and CSRF token, used by hand: the server says no as well.
    status = page.evaluate("""async (id) => {
        const csrf = document.querySelector('meta[name="csrf-token"]').content;
        const r = await fetch('/api/requests/' + id + '/approve', {method: 'POST',
            headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf}, body: '{}'});
        return r.status; }""", item["id"])
    assert status == 403
    with api(ui) as c:
        rec = c.get(f"/api/requests/{item['id']}").json()
        assert rec["status"] == "pending" and rec["decisions"] == []
        assert c.post(f"/api/requests/{item['id']}/reject", json={"comment": "not today"}).status_code == 200
    assert curl.done().startswith("HTTP/1.1 403")
    assert upstream.received == []


def test_an_approval_of_bytes_edited_meanwhile_is_refused_in_the_page(
        ui: Hitl, context: Any, upstream: Upstream) -> None:
    curl = Curl(ui, hold_url(upstream, msg="two to approve", approvals="2"), body='{"to": "alice"}')
    [item] = pending(ui)
    page = context.new_page()
    login(page, ui)
    page.goto(f"{ui.review_url}/requests/{item['id']}")
    # Alice is typing a comment (so the page keeps her text and does not reload) when
    # another reviewer approves an edited body.
    page.get_by_role("textbox", name=re.compile("^Comment")).fill("fine by me")
    with api(ui) as c:
        r = c.post(f"/api/requests/{item['id']}/approve", json={"edit": {"body": {"to": "mallory"}}})
        assert r.status_code == 200 and r.json()["approvals"] == 1
    page.locator("#changed").wait_for()  # the page says so; she approves anyway
    page.get_by_role("button", name="Approve", exact=True).click()
    error = page.locator("#action-error")
    error.wait_for()
    assert "changed since you saw it" in error.inner_text()
    with api(ui) as c:
        rec = c.get(f"/api/requests/{item['id']}").json()
        assert rec["status"] == "pending" and [d["reviewer"] for d in rec["decisions"]] == ["ops-bot"]
    assert upstream.received == []
    page.reload()  # now alice sees the edited body, and her approval completes the quorum
    assert "mallory" in page.content()
    page.get_by_role("button", name="Approve", exact=True).click()
    assert curl.done().startswith("HTTP/1.1 200")
    assert [json.loads(r.body) for r in upstream.received] == [{"to": "mallory"}]


def test_a_huge_held_body_is_summarised_and_downloadable_not_editable(
        ui: Hitl, context: Any, upstream: Upstream, tmp_path: Path) -> None:
    body = "x" * (1_500_000 - 3) + "end"
    (tmp_path / "upload.txt").write_text(body)
    curl = Curl(ui, hold_url(upstream, msg="huge upload"), body=f"@{tmp_path / 'upload.txt'}",
                content_type="text/plain")
    [item] = pending(ui)
    assert item["body_truncated"] and len(item["body_text"]) <= 4096
    page = context.new_page()
    login(page, ui)
    page.goto(f"{ui.review_url}/requests/{item['id']}")
    assert "1500000 bytes" in page.locator("#body-truncated").inner_text()
    page.locator("#edit-box summary").click()
    assert page.locator("#body-not-editable").is_visible()
    with page.expect_download() as download:
        page.locator("#raw-body").click()
    with open(download.value.path(), "rb") as f:
        assert f.read() == body.encode()
    with api(ui) as c:
        assert c.post(f"/api/requests/{item['id']}/reject", json={"comment": "too big"}).status_code == 200
    assert "HTTP/1.1 403" in curl.done()  # after curl's 100 Continue
