"""The SDKs agents are built on, unmodified, against the gate: openai, anthropic and stripe,
configured the way docs/agents.md says (HTTPS_PROXY, the gate's CA), talking to loopback
HTTPS upstreams that answer like those APIs, with TLS interception.

For each SDK: a rejection raises the SDK's own permission error whose message carries the
reviewer's comment; an answer still pending raises the SDK's server error whose message says
the request awaits approval; an approval returns the upstream's object; and the SDK's built-in
retries attach to the same review item, so the upstream sees the request once."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import requests
import stripe
import trustme

from tests.conftest import Hitl
from tests.loopback import LoopbackServer, answer, headers_of, read_body

POLICY = r'''
package hitl

import rego.v1

default decision := {"action": "allow", "rule": "default"}

held_paths := {"/v1/chat/completions", "/v1/messages", "/v1/charges"}

decision := {"action": "hold", "rule": "sdk.hold",
	"message": sprintf("%s %s needs a human", [input.request.method, input.request.path])} if {
	input.request.method == "POST"
	input.request.path in held_paths
}
'''

COMMENT = "wrong customer, use cus_456"

# What each API answers on success (enough of the real shape for its SDK to build its object).
ANSWERS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "id": "chatcmpl-42", "object": "chat.completion", "created": 1795000000, "model": "gpt-test",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "sent after review"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}},
    "/v1/messages": {
        "id": "msg_42", "type": "message", "role": "assistant", "model": "claude-test",
        "content": [{"type": "text", "text": "sent after review"}], "stop_reason": "end_turn",
        "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 3}},
    "/v1/charges": {
        "id": "ch_42", "object": "charge", "amount": 25000, "currency": "usd", "customer": "cus_123",
        "paid": True, "status": "succeeded", "livemode": False},
}


class FakeAPIs(LoopbackServer):
    """OpenAI's, Anthropic's and Stripe's endpoints above on one loopback HTTPS server that
    records every request it receives."""

    def __init__(self, ca: trustme.CA) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(ctx)
        super().__init__(tls=ctx)
        self.base = f"https://127.0.0.1:{self.port}"

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = read_body(request)
        with self.lock:
            self.received.append((request.path, headers_of(request), body))
        path = request.path.split("?", 1)[0]
        found = ANSWERS.get(path)
        answer(request, 200 if found else 404, found or {"error": {"message": "no such path"}},
               headers={"Request-Id": "req_upstream"} if path == "/v1/charges" else None)

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for p, _, _ in self.received if p.startswith(path))


@pytest.fixture(scope="module")
def upstream_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def apis(upstream_ca: trustme.CA) -> Iterator[FakeAPIs]:
    server = FakeAPIs(upstream_ca)
    yield server
    server.close()


@pytest.fixture
def gate(make_hitl: Callable[..., Hitl], apis: FakeAPIs, upstream_ca: trustme.CA, tmp_path: Path,
         request: pytest.FixtureRequest) -> Hitl:
    ca_file = tmp_path / "upstream-ca.pem"
    upstream_ca.cert_pem.write_to_path(str(ca_file))
    overrides = {"proxy.upstream_ca_bundle": str(ca_file), "hold.client_wait": "20s"}
    overrides.update(getattr(request, "param", {}))
    return make_hitl(overrides, policy=POLICY)


# -- the three SDKs, set up as docs/agents.md says --------------------------------------------

@dataclass
class Sdk:
    """One SDK's call of a held endpoint, and where its errors keep the message."""

    name: str
    path: str
    call: Callable[[], Any]  # the SDK call; returns the SDK's object or raises
    statuses: list[int]  # HTTP statuses the SDK's own HTTP client saw, in order

    def result_id(self, obj: Any) -> str:
        return str(obj.id) if self.name != "stripe" else str(obj["id"])


def error_message(exc: Exception) -> str:
    """What an agent framework hands the model: the SDK's message attribute, or str(exc)."""
    if isinstance(exc, stripe.StripeError):
        return str(exc.user_message)
    return str(getattr(exc, "message", exc))


def make_sdk(name: str, gate: Hitl, apis: FakeAPIs, monkeypatch: pytest.MonkeyPatch,
             max_retries: int) -> Sdk:
    ca = str(Path(gate.runtime.settings.proxy.ca_dir) / "ca.pem")
    # The agent's environment: the gate as HTTPS proxy, its CA as the trust store.
    monkeypatch.setenv("HTTPS_PROXY", gate.proxy_url)
    monkeypatch.setenv("SSL_CERT_FILE", ca)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    statuses: list[int] = []
    if name == "openai":
        oa = openai.OpenAI(api_key="sk-test", base_url=apis.base + "/v1", max_retries=max_retries,
                           http_client=openai.DefaultHttpxClient(
                               event_hooks={"response": [lambda r: statuses.append(r.status_code)]}))
        return Sdk(name, "/v1/chat/completions", lambda: oa.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "pay cus_123"}]), statuses)
    if name == "anthropic":
        an = anthropic.Anthropic(api_key="sk-ant-test", base_url=apis.base, max_retries=max_retries,
                                 http_client=anthropic.DefaultHttpxClient(
                                     event_hooks={"response": [lambda r: statuses.append(r.status_code)]}))
        return Sdk(name, "/v1/messages", lambda: an.messages.create(
            model="claude-test", max_tokens=64, messages=[{"role": "user", "content": "pay cus_123"}]),
            statuses)
    monkeypatch.setattr(stripe, "ca_bundle_path", ca)  # Stripe's own trust setting
    session = requests.Session()
    session.hooks["response"].append(lambda r, *a, **k: statuses.append(r.status_code))
    st = stripe.StripeClient("sk_test_123", base_addresses={"api": apis.base},
                             max_network_retries=max_retries,
                             http_client=stripe.RequestsClient(session=session))
    # One Idempotency-Key per intended charge (Stripe's SDK would make a new one per call).
    return Sdk(name, "/v1/charges", lambda: st.v1.charges.create(
        params={"amount": 25000, "currency": "usd", "customer": "cus_123"},
        options={"idempotency_key": "charge-cus_123-order-7"}), statuses)


SDKS = ["openai", "anthropic", "stripe"]


def call_in_background(sdk: Sdk) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = sdk.call()
        except (openai.APIError, anthropic.APIError, stripe.StripeError) as exc:  # what the test inspects
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def decide(gate: Hitl, verdict: str, comment: str = "") -> str:
    item = gate.wait_pending()[0]
    with gate.api() as api:
        r = api.post(f"/api/requests/{item['id']}/{verdict}", json={"comment": comment} if comment else {})
        assert r.status_code == 200, r.text
    return str(item["id"])


# -- the tests ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SDKS)
def test_a_rejection_raises_the_sdks_permission_error_carrying_the_comment(
        name: str, gate: Hitl, apis: FakeAPIs, monkeypatch: pytest.MonkeyPatch) -> None:
    sdk = make_sdk(name, gate, apis, monkeypatch, max_retries=2)
    thread, box = call_in_background(sdk)
    decide(gate, "reject", COMMENT)
    thread.join(30)
    exc = box.get("error")
    expected = {"openai": openai.PermissionDeniedError, "anthropic": anthropic.PermissionDeniedError,
                "stripe": stripe.PermissionError}[name]
    assert isinstance(exc, expected), repr(box)
    assert COMMENT in error_message(exc) and COMMENT in str(exc)
    assert "Do not resend it unchanged" in error_message(exc)
    assert sdk.statuses == [403]  # not retried
    # The SDK's own retry of the same call later gets the same refusal, not a new review item.
    again = call_in_background(sdk)
    again[0].join(30)
    assert isinstance(again[1].get("error"), expected) and COMMENT in error_message(again[1]["error"])
    with gate.api() as api:
        assert len(api.get("/api/requests", params={"limit": 20}).json()["items"]) == 1
    assert apis.count(sdk.path) == 0


@pytest.mark.parametrize("gate", [{"hold.client_wait": "0.3s", "hold.retry_after": "1s"}], indirect=True)
@pytest.mark.parametrize("name", SDKS)
def test_a_pending_answer_raises_an_error_saying_it_awaits_approval(
        name: str, gate: Hitl, apis: FakeAPIs, monkeypatch: pytest.MonkeyPatch) -> None:
    sdk = make_sdk(name, gate, apis, monkeypatch, max_retries=0)
    with pytest.raises(Exception) as caught:
        sdk.call()
    exc = caught.value
    expected = {"openai": openai.InternalServerError, "anthropic": anthropic.InternalServerError,
                "stripe": stripe.APIError}[name]
    assert isinstance(exc, expected), repr(exc)
    assert "awaits approval" in error_message(exc) and "awaits approval" in str(exc)
    assert "human reviewer" in error_message(exc)
    assert sdk.statuses == [503]
    assert apis.count(sdk.path) == 0


@pytest.mark.parametrize("name", SDKS)
def test_an_approval_returns_the_upstreams_object(
        name: str, gate: Hitl, apis: FakeAPIs, monkeypatch: pytest.MonkeyPatch) -> None:
    sdk = make_sdk(name, gate, apis, monkeypatch, max_retries=2)
    thread, box = call_in_background(sdk)
    decide(gate, "approve")
    thread.join(30)
    assert "error" not in box, repr(box.get("error"))
    obj = box["result"]
    assert sdk.result_id(obj) == {"openai": "chatcmpl-42", "anthropic": "msg_42", "stripe": "ch_42"}[name]
    if name == "openai":
        assert obj.choices[0].message.content == "sent after review"
    elif name == "anthropic":
        assert obj.content[0].text == "sent after review"
    else:
        assert obj["amount"] == 25000 and obj["status"] == "succeeded"
    assert apis.count(sdk.path) == 1
    headers = next(h for p, h, _ in apis.received if p.startswith(sdk.path))
    assert "proxy-authorization" not in headers


@pytest.mark.parametrize("gate", [{"hold.client_wait": "0.3s", "hold.retry_after": "1s"}], indirect=True)
@pytest.mark.parametrize("name", SDKS)
def test_the_sdks_own_retries_attach_to_one_review_item_and_the_upstream_sees_it_once(
        name: str, gate: Hitl, apis: FakeAPIs, monkeypatch: pytest.MonkeyPatch) -> None:
    sdk = make_sdk(name, gate, apis, monkeypatch, max_retries=5)
    thread, box = call_in_background(sdk)
    deadline = time.monotonic() + 20
    while sdk.statuses.count(503) < 2 and time.monotonic() < deadline:  # the SDK retried once
        time.sleep(0.02)
    assert sdk.statuses.count(503) >= 2
    decide(gate, "approve")
    thread.join(30)
    assert "error" not in box, repr(box.get("error"))
    assert sdk.statuses[-1] == 200 and set(sdk.statuses[:-1]) == {503}
    with gate.api() as api:
        assert len(api.get("/api/requests", params={"limit": 20}).json()["items"]) == 1
    assert apis.count(sdk.path) == 1
