"""Webhook notifications of new holds, to a real recording server on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tests.conftest import Upstream
from tests.loopback import LoopbackServer, answer, read_body
from tests.test_metrics import closed_port, scrape, value, wait_until


class Hooks(LoopbackServer):
    """Records JSON posts. /stall/... answers only once ``release`` is set; /fail/... answers 500."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        super().__init__()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        self.posts.append((request.path, json.loads(read_body(request))))
        if request.path.startswith("/stall"):
            self.release.wait(20)
        answer(request, 500 if request.path.startswith("/fail") else 200, b"ok", "text/plain")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def to(self, prefix: str) -> list[dict[str, Any]]:
        return [body for path, body in self.posts if path.startswith(prefix)]


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    h = Hooks()
    yield h
    h.close()


def test_new_hold_is_posted_as_json_and_slack_without_blocking_the_agent(
        make_hitl: Any, upstream: Upstream, hooks: Hooks) -> None:
    hitl = make_hitl({"hold.client_wait": "1s", "review.public_url": "https://review.example.com/",
                      "notify.webhooks": [{"url": hooks.url("/json/T0/SECRET"), "format": "json"},
                                          {"url": hooks.url("/slack/T0/SECRET"), "format": "slack"},
                                          {"url": hooks.url("/stall/x"), "format": "json"}]})
    with hitl.agent() as agent:
        r = agent.post(upstream.url("/hold/charge?card=4242"), content=b'{"amount": 5000, "pw": "hunter2"}',
                       headers={"Authorization": "Bearer sk_live_abc"})
        assert r.status_code == 503  # answered after client_wait although one webhook stalls
        rid = r.json()["error"]["request_id"]
        wait_until(lambda: len(hooks.to("/json")) == 1 and len(hooks.to("/slack")) == 1)
        assert agent.get(upstream.url("/items")).status_code == 200  # the stalled webhook blocks nothing
    [payload] = hooks.to("/json")
    assert payload == {
        "event": "held", "id": rid, "agent": "anonymous", "method": "POST",
        "host": f"127.0.0.1:{upstream.port}", "path": "/hold/charge", "rule": "test.hold",
        "message": "anonymous wants to POST /hold/charge", "reviewers": [],
        "deadline": payload["deadline"], "review_url": f"https://review.example.com/requests/{rid}",
    }
    assert payload["deadline"].endswith("Z")
    [slack] = hooks.to("/slack")
    assert set(slack) == {"text", "unfurl_links"}
    assert "Approval needed: *anonymous* wants to `POST 127.0.0.1" in slack["text"]
    assert f"<https://review.example.com/requests/{rid}|Review {rid}>" in slack["text"]
    everything = json.dumps(hooks.posts)
    for secret in ("4242", "hunter2", "sk_live_abc", "5000"):  # no query, body or header
        assert secret not in everything
    assert "hitl_notify_failures_total" not in scrape(hitl)
    assert "hitl_notify_errors_total" not in scrape(hitl)


def test_failed_webhooks_are_counted_and_logged_by_host_only(
        make_hitl: Any, upstream: Upstream, hooks: Hooks, caplog: pytest.LogCaptureFixture) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/services/T0/SECRET"
    hitl = make_hitl({"hold.client_wait": "0.2s",
                      "notify.webhooks": [{"url": dead, "format": "slack"},
                                          {"url": hooks.url("/fail/SECRET"), "format": "json"}]})
    with hitl.agent() as agent:
        assert agent.post(upstream.url("/hold/a"), content=b"x").status_code == 503
    wait_until(lambda: "hitl_notify_failures_total" in (m := scrape(hitl))
               and sum(m["hitl_notify_failures_total"].values()) == 2)
    m = scrape(hitl)
    assert value(m, "hitl_notify_failures_total", format="slack") == 1
    assert value(m, "hitl_notify_failures_total", format="json") == 1
    assert value(m, "hitl_notify_errors_total", channel="webhook") == 2
    assert len(hooks.to("/fail")) == 2  # a 5xx is retried once
    warnings = [r.getMessage() for r in caplog.records if r.name == "hitl.notify"]
    assert len(warnings) == 2 and all("SECRET" not in w for w in warnings)
    assert any("HTTP 500" in w for w in warnings)
