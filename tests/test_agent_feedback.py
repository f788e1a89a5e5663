"""What an agent hears from the gate: every gate-made answer in the nested error shape with a
message written for a model, refusals remembered, retries that never cross clients or
credentials, and destinations checked before anyone is asked to review them."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import pytest

from tests.conftest import Hitl, Upstream
from tests.test_core_flow import in_background


def post(client: httpx.Client, url: str, body: bytes) -> httpx.Response:
    return client.post(url, content=body)


def assert_gate_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The shape of docs/agent-contract.md, as the SDKs parse it; returns the inner ``error`` object."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["type"] == "error"
    err = doc["error"]
    assert err["type"] == err["code"] == code
    assert err["request_id"] == r.headers["x-hitl-request-id"]
    assert isinstance(err["message"], str) and len(err["message"]) > 20
    return dict(err)


def raw_exchange(hitl: Hitl, data: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Send raw bytes to the proxy listener; (status, headers, JSON body) of the answer."""
    host, port = hitl.runtime.proxy_address
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        while len(body) < int(headers.get("content-length", "0")):
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split()[1]), headers, json.loads(body)


# -- 13.1: every gate-made answer is the nested shape ----------------------------------------

@pytest.mark.parametrize("raw,status,code", [
    (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    (b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic bm9ib2R5Onh4\r\n\r\n",
     407, "proxy_auth_required"),
    (b"POST http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", 413, "body_too_large"),
    # a head still incomplete past the 64 KiB limit
    (b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000, 431, "bad_request"),
], ids=["400", "407", "413", "431"])
def test_protocol_refusals_use_the_nested_error_shape(make_hitl: Any, raw: bytes, status: int,
                                                      code: str) -> None:
    hitl = make_hitl({"proxy.max_body_bytes": 1000})
    got, headers, doc = raw_exchange(hitl, raw)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert doc["type"] == "error" and doc["error"]["code"] == doc["error"]["type"] == code
    assert doc["error"]["request_id"] == headers["x-hitl-request-id"]
    if status == 407:
        assert headers["proxy-authenticate"].startswith("Basic")


def test_a_policy_denial_tells_the_model_not_to_resend(hitl: Hitl, upstream: Upstream) -> None:
    with hitl.agent() as agent:
        r = agent.delete(upstream.url("/deny/x"))
    err = assert_gate_error(r, 403, "denied_by_policy")
    assert "deletes are not allowed" in err["message"] and "do not resend it unchanged" in err["message"]
    assert err["rule"] == "test.deny"
    assert upstream.count() == 0


def test_a_pending_answer_says_a_human_reviews_it_and_when_to_retry(make_hitl: Any, upstream: Upstream) -> None:
    hitl = make_hitl({"hold.client_wait": "0.3s", "hold.retry_after": "7s"})
    with hitl.agent() as agent:
        r = agent.post(upstream.url("/hold/pay"), content=b"amount=5")
    err = assert_gate_error(r, 503, "approval_pending")
    assert r.headers["retry-after"] == "7"
    assert "awaits approval" in err["message"] and "human reviewer" in err["message"]
    assert "after 7 seconds" in err["message"] and "identical request" in err["message"]
    assert "anonymous wants to POST /hold/pay" in err["message"]  # the policy's own message
    assert upstream.count() == 0


# -- 13.3: refusals are remembered --------------------------------------------------------------

def reject(hitl: Hitl, request_id: str, comment: str) -> None:
    with hitl.api() as api:
        r = api.post(f"/api/requests/{request_id}/reject", json={"comment": comment})
        assert r.status_code == 200, r.text


def test_a_rejected_request_retried_three_times_makes_one_review_item(hitl: Hitl, upstream: Upstream) -> None:
    with hitl.agent() as agent:
        thread, box = in_background(post, agent, upstream.url("/hold/charge"), b'{"amount": 250}')
        item = hitl.wait_pending()[0]
        reject(hitl, item["id"], "wrong customer, use cus_456")
        thread.join(10)
        first = box["result"]
        retries = [agent.post(upstream.url("/hold/charge"), content=b'{"amount": 250}') for _ in range(3)]
        changed = in_background(post, agent, upstream.url("/hold/charge"), b'{"amount": 99}')
        hitl.wait_pending()  # the changed request is a new review item
    err = assert_gate_error(first, 403, "rejected_by_reviewer")
    assert err["message"] == ("A reviewer rejected this request: wrong customer, use cus_456. "
                              "Do not resend it unchanged.")
    assert err["comment"] == "wrong customer, use cus_456" and err["reviewer"] == "admin"
    assert "x-hitl-replayed" not in first.headers
    for r in retries:
        again = assert_gate_error(r, 403, "rejected_by_reviewer")
        assert r.headers["x-hitl-replayed"] == "true" and again["replayed"] is True
        assert again["request_id"] == item["id"] and again["comment"] == err["comment"]
    with hitl.api() as api:
        items = api.get("/api/requests", params={"limit": 50}).json()["items"]
    charges = [i for i in items if i["url"].endswith("/hold/charge")]
    assert [i["status"] for i in charges].count("rejected") == 1
    assert [i["status"] for i in charges].count("pending") == 1  # only the changed body
    assert upstream.count() == 0
    reject(hitl, hitl.wait_pending()[0]["id"], "no")
    changed[0].join(10)


def test_a_refusal_is_not_repeated_after_the_replay_window(make_hitl: Any, upstream: Upstream) -> None:
    hitl = make_hitl({"hold.replay_window": "0.5s", "hold.client_wait": "0.3s"})
    with hitl.agent() as agent:
        agent.post(upstream.url("/hold/x"), content=b"a")
        reject(hitl, hitl.wait_pending()[0]["id"], "not now")
        time.sleep(0.7)
        r = agent.post(upstream.url("/hold/x"), content=b"a")
    assert_gate_error(r, 503, "approval_pending")  # a new review item, not the old refusal
    assert len(hitl.wait_pending()) == 1


# -- 12.4: attach and replay never cross clients or credentials --------------------------------

def anonymous_client(hitl: Hitl, address: str, **kwargs: Any) -> httpx.Client:
    transport = httpx.HTTPTransport(proxy=hitl.proxy_url, local_address=address)
    return httpx.Client(transport=transport, trust_env=False, timeout=30, **kwargs)


def test_anonymous_clients_never_attach_to_or_replay_each_others_requests(
        make_hitl: Any, upstream: Upstream) -> None:
    hitl = make_hitl({"hold.client_wait": "0.5s"})
    url = upstream.url("/hold/transfer")
    one = anonymous_client(hitl, "127.0.0.1", headers={"Authorization": "Bearer client-one",
                                                       "Idempotency-Key": "k-1"})
    two = anonymous_client(hitl, "127.0.0.2", headers={"Authorization": "Bearer client-two",
                                                       "Idempotency-Key": "k-1"})
    with one, two:
        assert one.post(url, content=b"to=alice").status_code == 503
        assert two.post(url, content=b"to=mallory").status_code == 503
        items = hitl.wait_pending(2)
        assert len(items) == 2  # two review items: client two did not attach to client one's
        mine = next(i for i in items if i["body_text"] == "to=alice")
        with hitl.api() as api:
            assert api.post(f"/api/requests/{mine['id']}/approve", json={}).status_code == 200
        got = one.post(url, content=b"to=alice")
        assert got.status_code == 200 and got.json()["body"] == "to=alice"
        stolen = two.post(url, content=b"to=alice")  # client one's exact bytes, from client two
        replay = one.post(url, content=b"to=alice")
    assert stolen.status_code == 503 and stolen.json()["error"]["code"] == "approval_pending"
    assert replay.status_code == 200 and replay.headers["x-hitl-replayed"] == "true"
    assert [r.headers["authorization"] for r in upstream.received] == ["Bearer client-one"]


def test_the_same_client_with_other_credentials_gets_its_own_review_item(
        make_hitl: Any, upstream: Upstream) -> None:
    hitl = make_hitl({"hold.client_wait": "0.3s"})
    url = upstream.url("/hold/pay")
    with hitl.agent() as agent:
        agent.post(url, content=b"x", headers={"Authorization": "Bearer a"})
        agent.post(url, content=b"x", headers={"Authorization": "Bearer a"})  # attaches
        agent.post(url, content=b"x", headers={"Authorization": "Bearer b"})  # other credentials
    assert len(hitl.wait_pending(2)) == 2


# -- 13.4: no unsendable holds --------------------------------------------------------------

def test_a_blocked_destination_is_refused_before_the_policy_can_hold_it(make_hitl: Any) -> None:
    hitl = make_hitl({"proxy.routes": {"meta": "http://169.254.169.254"}})
    with hitl.agent() as agent:
        plain = agent.post("http://10.20.30.40/hold/charge", content=b"x")
        routed = httpx.post(hitl.proxy_url + "/meta/hold/x", content=b"x", trust_env=False)
        unresolvable = agent.post("http://no-such-host.invalid/hold/charge", content=b"x")
    assert "private" in assert_gate_error(plain, 403, "destination_blocked")["message"]
    assert "link-local" in assert_gate_error(routed, 403, "destination_blocked")["message"]
    assert "cannot resolve" in assert_gate_error(unresolvable, 502, "upstream_error")["message"]
    with hitl.api() as api:
        assert api.get("/api/requests", params={"limit": 50}).json()["items"] == []  # nothing held


def test_an_approved_request_is_checked_again_when_it_is_forwarded(hitl: Hitl, upstream: Upstream) -> None:
    from proxy.netguard import AddressPolicy

    with hitl.agent() as agent:
        thread, box = in_background(post, agent, upstream.url("/hold/late"), b"x")
        item = hitl.wait_pending()[0]
        # The name now points somewhere the guard refuses (as a DNS change would make it).
        hitl.runtime.upstream.address_policy = AddressPolicy(True, (), frozenset())
        with hitl.api() as api:
            assert api.post(f"/api/requests/{item['id']}/approve", json={}).status_code == 200
        thread.join(15)
    assert_gate_error(box["result"], 403, "destination_blocked")
    assert upstream.count() == 0
    with hitl.api() as api:
        assert api.get(f"/api/requests/{item['id']}").json()["status"] == "failed"


DENY_ALL = '''
package hitl

import rego.v1

decision := {"action": "deny", "message": "nothing leaves", "rule": "test.deny_all"}
'''


def test_the_destination_is_checked_before_the_policy_for_plain_connect_and_routes(make_hitl: Any) -> None:
    hitl = make_hitl({"proxy.routes": {"meta": "http://169.254.169.254"}}, policy=DENY_ALL)
    with hitl.agent() as agent:
        plain = agent.get("http://10.20.30.40/")
        public = agent.get("http://93.184.215.14/")  # a public address: now the policy speaks
    routed = httpx.get(hitl.proxy_url + "/meta/latest", trust_env=False)
    status, _, connect = raw_exchange(hitl, b"CONNECT 10.20.30.40:443 HTTP/1.1\r\nHost: 10.20.30.40:443\r\n\r\n")
    assert_gate_error(plain, 403, "destination_blocked")
    assert_gate_error(routed, 403, "destination_blocked")
    assert status == 403 and connect["error"]["code"] == "destination_blocked"
    assert assert_gate_error(public, 403, "denied_by_policy")["rule"] == "test.deny_all"
