"""The remote OPA engine against a small server implementing OPA's Data API.

No OPA binary can be installed here, so the server below speaks the Data API contract
(``POST /v1/data/{path}`` with ``{"input": ...}`` → ``{"result": ...}``, no ``result`` when
the document is undefined) and evaluates with the embedded engine on the same policies:
whatever the OPA engine adds or loses on the way shows up as a difference in decisions.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.errors import PolicyError
from proxy.model import Agent, AgentRequest
from proxy.policy import EmbeddedEngine, build_input, connect_input
from proxy.policy.embedded import UNDEFINED
from proxy.policy.opa import OpaEngine
from tests.conftest import ROOT, TEST_POLICY, Hitl, Upstream

SHIPPED = ROOT / "policies"
NOW = 1_760_000_000.0


class FakeOpa:
    """OPA's Data API on 127.0.0.1, answered by an EmbeddedEngine; ``mode`` breaks it."""

    def __init__(self, paths: list[Path]) -> None:
        self.engine = EmbeddedEngine.load(paths)
        self.mode = "ok"  # ok | slow | undefined | error | garbage
        self.requests: list[tuple[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append((self.path, body))
                if fake.mode == "slow":
                    time.sleep(1.0)  # longer than the engine's timeout in these tests
                status, answer = fake.answer(self.path, body)
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the slow mode's client has given up
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if self.mode == "error":
            return 500, {"code": "internal_error", "message": "boom"}
        if self.mode == "garbage":
            return 200, b"<html>not json</html>"
        if self.mode == "undefined" or not path.startswith("/v1/data/"):
            return 200, {}
        # The embedded engine's raw value for the entrypoint, as OPA would give it.
        value = self.engine._evaluate(path.removeprefix("/v1/data/"), body["input"])
        return 200, {} if value is UNDEFINED else {"result": value}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.engine.close()


@pytest.fixture(scope="module")
def opa() -> Iterator[FakeOpa]:
    fake = FakeOpa([SHIPPED])
    yield fake
    fake.close()


def req(method: str, url: str, body: Any = None, headers: tuple[tuple[str, str], ...] = (),
        agent: str = "agent-1") -> dict[str, Any]:
    parsed = httpx.URL(url)
    raw = b"" if body is None else json.dumps(body).encode()
    if body is not None:
        headers = (*headers, ("Content-Type", "application/json"))
    target = parsed.raw_path.decode()
    request = AgentRequest(method, parsed.scheme, parsed.host, parsed.port or
                           {"http": 80, "https": 443}[parsed.scheme], target, headers, raw)
    return build_input(request, Agent(agent, "127.0.0.1"), NOW)


SAMPLES = {
    "stripe charge": req("POST", "https://api.stripe.com/v1/charges",
                         {"amount": 5000, "currency": "usd"}),
    "stripe big charge": req("POST", "https://api.stripe.com/v1/charges",
                             {"amount": 99_000_000, "currency": "eur"}),
    "stripe read": req("GET", "https://api.stripe.com/v1/charges?limit=3"),
    "sendgrid send": req("POST", "https://api.sendgrid.com/v3/mail/send",
                         {"personalizations": [{"to": [{"email": "a@example.org"}]}],
                          "subject": "Hello"}),
    "graph sendMail": req("POST", "https://graph.microsoft.com/v1.0/me/sendMail",
                          {"message": {"subject": "Hi"}}),
    "slack post": req("POST", "https://slack.com/api/chat.postMessage",
                      {"channel": "#general", "text": "hi \"all\" \\o/"}),
    "github comment": req("POST", "https://api.github.com/repos/o/r/issues/1/comments",
                          {"body": "LGTM"}),
    "sql drop": req("POST", "https://db.example.com/query", {"sql": "DROP TABLE users"}),
    "unknown write": req("PUT", "http://internal.example:8080/things/1", {"x": 1}),
    "plain read": req("GET", "https://example.com/?q=%C3%A9"),
    "anonymous delete": req("DELETE", "https://api.stripe.com/v1/customers/cus_1",
                            agent="anonymous"),
}


@pytest.mark.parametrize("name", list(SAMPLES))
def test_opa_and_embedded_engines_decide_the_same(opa: FakeOpa, name: str) -> None:
    remote = asyncio.run(_decide_and_close(OpaEngine(opa.url, "data.hitl.decision"), SAMPLES[name]))
    assert remote == asyncio.run(opa.engine.decide(SAMPLES[name]))


def test_the_table_covers_more_than_allow(opa: FakeOpa) -> None:
    actions = {asyncio.run(opa.engine.decide(doc)).action.value for doc in SAMPLES.values()}
    assert {"allow", "hold"} <= actions


@pytest.mark.parametrize("host", ["api.stripe.com", "example.com"])
def test_opa_and_embedded_engines_intercept_the_same(opa: FakeOpa, host: str) -> None:
    doc = connect_input(host, 443, Agent("agent-1", "127.0.0.1"), NOW)
    remote = asyncio.run(_decide_and_close(OpaEngine(opa.url), doc, intercept=True))
    assert remote == asyncio.run(opa.engine.intercept(doc))


async def _decide_and_close(engine: OpaEngine, doc: dict[str, Any], *,
                            intercept: bool = False) -> Any:
    try:
        return await (engine.intercept(doc) if intercept else engine.decide(doc))
    finally:
        await engine.aclose()


def test_the_request_follows_the_data_api_contract(opa: FakeOpa) -> None:
    opa.requests.clear()
    doc = SAMPLES["plain read"]
    asyncio.run(_decide_and_close(OpaEngine(opa.url + "/", "data.hitl.decision"), doc))
    assert opa.requests == [("/v1/data/hitl/decision", {"input": doc})]


@pytest.mark.parametrize(("mode", "words"), [
    ("undefined", "undefined"),
    ("error", "answered 500"),
    ("garbage", "not JSON"),
    ("slow", "did not answer within 0.3s"),
])
def test_a_failing_server_fails_closed(mode: str, words: str) -> None:
    fake = FakeOpa([SHIPPED])
    fake.mode = mode
    try:
        engine = OpaEngine(fake.url, "data.hitl.decision", timeout=0.3)
        with pytest.raises(PolicyError) as caught:
            asyncio.run(_decide_and_close(engine, SAMPLES["plain read"]))
        assert words in caught.value.message
    finally:
        fake.close()


def test_an_undefined_intercept_means_intercept_and_a_non_bool_fails() -> None:
    fake = FakeOpa([SHIPPED])
    doc = connect_input("example.com", 443, Agent("a", "127.0.0.1"), NOW)
    try:
        fake.mode = "undefined"
        assert asyncio.run(_decide_and_close(OpaEngine(fake.url), doc, intercept=True)) is True
        fake.mode = "ok"
        fake.answer = lambda path, body: (200, {"result": "yes"})  # type: ignore[method-assign]
        with pytest.raises(PolicyError, match="true or false"):
            asyncio.run(_decide_and_close(OpaEngine(fake.url), doc, intercept=True))
    finally:
        fake.close()


def test_a_server_that_is_down_fails_closed() -> None:
    fake = FakeOpa([SHIPPED])
    url = fake.url
    fake.close()  # the port is now closed: connections are refused
    with pytest.raises(PolicyError, match="cannot reach the OPA server"):
        asyncio.run(_decide_and_close(OpaEngine(url), SAMPLES["plain read"]))


def test_a_malformed_decision_is_refused_like_the_embedded_engine_does() -> None:
    fake = FakeOpa([SHIPPED])
    fake.answer = lambda path, body: (200, {"result": {"action": "nonsense"}})  # type: ignore[method-assign]
    try:
        with pytest.raises(PolicyError, match="allow, deny or hold"):
            asyncio.run(_decide_and_close(OpaEngine(fake.url), SAMPLES["plain read"]))
    finally:
        fake.close()


def test_a_proxy_on_opa_holds_and_denies_like_the_embedded_one(
        make_hitl: Callable[..., Hitl], upstream: Upstream, tmp_path: Path) -> None:
    (tmp_path / "opa-policies").mkdir()
    (tmp_path / "opa-policies" / "test.rego").write_text(TEST_POLICY)
    fake = FakeOpa([tmp_path / "opa-policies"])
    try:
        hitl = make_hitl({"policy.engine": "opa", "policy.opa_url": fake.url})
        assert "opa" in hitl.runtime.gate.policy.describe()
        with hitl.agent() as agent:
            assert agent.get(upstream.url("/items")).status_code == 200
            denied = agent.delete(upstream.url("/deny/1"))
            assert denied.status_code == 403
            assert "deletes are not allowed" in denied.text
            broken = agent.get(upstream.url("/broken"))
            assert broken.status_code == 403 and "policy_error" in broken.text

            box: dict[str, Any] = {}
            thread = threading.Thread(
                target=lambda: box.setdefault("r", agent.post(upstream.url("/hold/x"))),
                daemon=True)
            thread.start()
            [pending] = hitl.wait_pending(1)
            assert pending["rule"] == "test.hold"
            with hitl.api() as api:
                api.post(f"/api/requests/{pending['id']}/approve", json={}).raise_for_status()
            thread.join(15)
        assert box["r"].status_code == 200
        assert upstream.count("/hold") == 1

        fake.mode = "error"  # the OPA server breaks: the proxy fails closed
        with hitl.agent() as agent:
            r = agent.get(upstream.url("/items"))
        assert r.status_code == 403 and "policy_error" in r.text
    finally:
        fake.close()
