"""Stopping `hitl-proxy serve` (SIGTERM, Ctrl-C) while agents wait: each waiting agent gets a
JSON 503 approval_pending, the hold stays in the store, a forward in flight finishes within
proxy.shutdown_grace, an open review event stream does not keep the process alive, and the
process exits cleanly."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServeProcess, Upstream, run_serve, write_config
from tests.test_core_flow import in_background


def admin_token(serve: ServeProcess) -> str:
    for line in serve.lines:
        if m := re.search(r"login\?token=(\S+)", line):
            return m.group(1)
    raise AssertionError("no admin login line:\n" + "\n".join(serve.lines))


def pending_items(serve: ServeProcess, token: str, count: int, timeout: float = 15) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = httpx.get(serve.review_url + "/api/requests", params={"status": "pending"}, trust_env=False,
                          headers={"Authorization": f"Bearer {token}"}).json()["items"]
        if len(items) >= count:
            return list(items)
        time.sleep(0.05)
    raise AssertionError(f"expected {count} pending requests")


def agent_post(proxy_url: str, url: str) -> httpx.Response:
    with httpx.Client(proxy=proxy_url, trust_env=False, timeout=60) as client:
        return client.post(url, content=b'{"amount": 250}')


def follow_events(review_url: str, token: str, seen: list[str], opened: threading.Event) -> None:
    with httpx.stream("GET", review_url + "/api/events", trust_env=False, timeout=None,
                      headers={"Authorization": f"Bearer {token}"}) as stream:
        opened.set()
        for line in stream.iter_lines():
            seen.append(line)  # noqa: PERF402 - read live by the test, line by line


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_stopping_answers_waiting_agents_keeps_their_holds_and_finishes_forwards(
        tmp_path: Path, upstream: Upstream, sig: int) -> None:
    config = write_config(tmp_path, {"hold.client_wait": "60s", "proxy.shutdown_grace": "10s",
                                     "log.level": "info"})
    serve = run_serve(config)
    token = admin_token(serve)
    events: list[str] = []
    opened = threading.Event()
    sse = threading.Thread(target=follow_events, args=(serve.review_url, token, events, opened), daemon=True)
    sse.start()
    assert opened.wait(10)
    idle = httpx.Client(proxy=serve.proxy_url, trust_env=False, timeout=30)  # a kept-alive connection
    assert idle.get(upstream.url("/allowed")).status_code == 200
    waiting, waiting_box = in_background(agent_post, serve.proxy_url, upstream.url("/hold/charge"))
    slow, slow_box = in_background(agent_post, serve.proxy_url, upstream.url("/hold/slow?stall=3"))
    items = pending_items(serve, token, 2)
    slow_id = next(i["id"] for i in items if "/hold/slow" in i["url"])
    held_id = next(i["id"] for i in items if "/hold/charge" in i["url"])
    approved = httpx.post(f"{serve.review_url}/api/requests/{slow_id}/approve", json={}, trust_env=False,
                          headers={"Authorization": f"Bearer {token}"})
    assert approved.status_code == 200
    deadline = time.monotonic() + 10
    while upstream.count("/hold/slow") == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.count("/hold/slow") == 1  # the forward is in flight, stalled upstream

    assert serve.stop(sig) == 0
    idle.close()
    waiting.join(10)
    slow.join(10)
    sse.join(10)

    assert not sse.is_alive()  # the event stream was closed by the server
    pending = waiting_box["result"]
    assert pending.status_code == 503 and pending.headers["content-type"] == "application/json"
    assert pending.json()["error"]["code"] == "approval_pending"
    assert pending.json()["error"]["request_id"] == held_id
    assert "awaits approval" in pending.json()["error"]["message"]
    assert int(pending.headers["retry-after"]) > 0
    done = slow_box["result"]
    assert done.status_code == 200 and done.json()["path"] == "/hold/slow?stall=3"
    assert upstream.count("/hold/slow") == 1
    output = "\n".join(serve.lines)
    assert "Traceback" not in output and "CancelledError" not in output

    again = run_serve(config)  # the hold survived the stop
    try:
        token = admin_token(again)
        items = pending_items(again, token, 1)
        assert [i["id"] for i in items] == [held_id]
        record = httpx.get(f"{again.review_url}/api/requests/{slow_id}", trust_env=False,
                           headers={"Authorization": f"Bearer {token}"}).json()
        assert record["status"] == "forwarded"
    finally:
        again.stop()
