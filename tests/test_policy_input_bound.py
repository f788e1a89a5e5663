"""The policy input is bounded (policy.max_input_body_bytes): a body past the bound reaches the
policy as body null, body_text null, its body_size and body_truncated true, so a 5 MiB body
costs the policy what a small one does and stalls no connection; inputs with a large body are
evaluated off the event loop, small ones in place (no thread). The shipped policy holds a
write whose body it could not read, so padding a body hides nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.model import Action, Agent, AgentRequest
from proxy.policy import EmbeddedEngine, build_input
from proxy.policy.embedded import INLINE_BODY_BYTES
from proxy.policy.input import MAX_INPUT_BODY
from tests.conftest import Hitl, Upstream
from tests.test_core_flow import in_background

MiB = 1024 * 1024
POLICIES = Path(__file__).resolve().parent.parent / "policies"
BILLING = Agent("billing-agent", "10.0.0.7")
NOW = 1795000000.0

# Denies /size with what the policy received, and holds nothing: the message is the probe.
SIZE_POLICY = r'''
package hitl

import rego.v1

default decision := {"action": "allow", "rule": "default"}

decision := {"action": "deny", "rule": "size", "message": json.marshal({
	"size": input.request.body_size, "truncated": input.request.body_truncated,
	"body_null": input.request.body == null, "text_null": input.request.body_text == null,
	"amount": amount,
})} if startswith(input.request.path, "/size")

default amount := null

amount := input.request.body.amount if is_object(input.request.body)
'''


def _json_body(size: int) -> bytes:
    """A JSON object of ``size`` bytes (at least 27) with an amount the policy could read."""
    body = json.dumps({"amount": 5000, "pad": "x" * max(0, size - 27)}).encode()
    assert len(body) == max(size, 27)
    return body


def _probe(r: httpx.Response) -> dict[str, Any]:
    """What SIZE_POLICY saw: the JSON its denial message carries (within the gate's wording)."""
    assert r.json()["error"]["code"] == "denied_by_policy", r.text
    message: str = r.json()["error"]["message"]
    seen: dict[str, Any] = json.loads(message[message.index("{"):message.rindex("}") + 1])
    return seen


def _request(body: bytes, method: str = "POST", host: str = "api.stripe.com",
             path: str = "/v1/charges") -> AgentRequest:
    return AgentRequest(method, "https", host, 443, path, (("Content-Type", "application/json"),), body)


def test_a_body_past_the_bound_reaches_the_policy_as_its_size_and_a_flag() -> None:
    big = _json_body(5 * MiB)
    doc = build_input(_request(big), BILLING, NOW)["request"]
    assert doc["body"] is None and doc["body_text"] is None
    assert doc["body_size"] == len(big) and doc["body_truncated"] is True
    assert len(json.dumps(doc)) < 1024  # what the policy is handed: a few hundred bytes
    small = _json_body(MAX_INPUT_BODY - 100)
    doc = build_input(_request(small), BILLING, NOW)["request"]
    assert doc["body"]["amount"] == 5000 and doc["body_truncated"] is False
    at_limit = build_input(_request(b"{}"), BILLING, NOW, max_body=2)["request"]
    past = build_input(_request(b"{} "), BILLING, NOW, max_body=2)["request"]
    assert at_limit["body"] == {} and past["body"] is None and past["body_truncated"] is True


def test_the_bound_is_a_setting_and_applies_through_the_proxy(make_hitl: Any, upstream: Upstream) -> None:
    hitl: Hitl = make_hitl({"policy.max_input_body_bytes": "64KiB"}, policy=SIZE_POLICY)
    with hitl.agent() as agent:
        for size, truncated in ((60 * 1024, False), (5 * MiB, True)):
            body = _json_body(size)
            r = agent.post(upstream.url("/size"), content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 403
            seen = _probe(r)
            assert seen == {"size": len(body), "truncated": truncated, "body_null": truncated,
                            "text_null": truncated, "amount": None if truncated else 5000}
    assert upstream.count("/size") == 0


def test_a_bad_bound_is_refused_at_start_naming_the_key(make_hitl: Any) -> None:
    from proxy.errors import ConfigError

    with pytest.raises(ConfigError, match="policy.max_input_body_bytes"):
        make_hitl({"policy.max_input_body_bytes": "lots"})


def test_get_requests_complete_while_a_5_mib_json_body_is_judged(make_hitl: Any, upstream: Upstream) -> None:
    hitl: Hitl = make_hitl(policy=SIZE_POLICY)
    big = _json_body(5 * MiB)
    with hitl.agent() as agent:
        thread, box = in_background(lambda: agent.post(upstream.url("/size"), content=big,
                                                       headers={"Content-Type": "application/json"}))
        with hitl.agent() as other:
            codes = [other.get(upstream.url(f"/read/{i}")).status_code for i in range(20)]
        thread.join(30)
    assert codes == [200] * 20
    assert box["result"].status_code == 403
    assert _probe(box["result"])["truncated"] is True


def _ticks_during(engine: EmbeddedEngine, doc: dict[str, Any]) -> int:
    """How many times another task ran on the loop while ``engine`` judged ``doc``."""
    async def run() -> int:
        ticks = 0
        stop = False

        async def ticker() -> None:
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)  # the ticker has started
        before = ticks
        await engine.decide(doc)
        during = ticks - before
        stop = True
        await task
        return during

    return asyncio.run(run())


def test_a_large_input_is_judged_off_the_loop_and_a_small_one_in_place() -> None:
    engine = EmbeddedEngine.load([POLICIES])
    try:
        small = build_input(_request(_json_body(1000)), BILLING, NOW)
        assert _ticks_during(engine, small) == 0  # no thread hop: nothing else ran meanwhile
        assert engine._thread is None  # and no thread was made for it
        large = build_input(_request(_json_body(INLINE_BODY_BYTES * 4)), BILLING, NOW)
        assert _ticks_during(engine, large) > 0  # the loop served other tasks meanwhile
        assert engine._thread is not None
    finally:
        engine.close()


@pytest.mark.parametrize("host", ["api.stripe.com", "unlisted.example.net"])
def test_the_shipped_policy_holds_a_write_whose_body_it_could_not_read(host: str) -> None:
    engine = EmbeddedEngine.load([POLICIES])
    try:
        padded = _json_body(MAX_INPUT_BODY + 100)  # the amount is there, hidden by padding
        d = asyncio.run(engine.decide(build_input(_request(padded, host=host), BILLING, NOW)))
        assert d.action is Action.HOLD and d.rule == "body.unread"
        assert f"{len(padded)} bytes, too large for the policy to read" in d.message
        read = asyncio.run(engine.decide(build_input(_request(padded, "GET", host), BILLING, NOW)))
        assert read.action is Action.ALLOW
    finally:
        engine.close()


def test_a_5_mib_json_rpc_body_is_not_parsed_as_mcp_and_is_held(make_hitl: Any, upstream: Upstream) -> None:
    policy = (POLICIES / "main.rego").read_text()
    hitl: Hitl = make_hitl({"policy.paths": [str(POLICIES)]}, policy=policy)
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "delete_database", "arguments": {"pad": "x" * (5 * MiB)}}}
    with hitl.agent() as agent:
        thread, box = in_background(lambda: agent.post(upstream.url("/mcp"), json=call))
        items = hitl.wait_pending()
        assert items[0]["rule"] == "body.unread"
        with hitl.api() as api:
            api.post(f"/api/requests/{items[0]['id']}/reject", json={"comment": "no"})
        thread.join(30)
    assert upstream.count("/mcp") == 0
    assert isinstance(box["result"], httpx.Response)
