"""The hold-and-approve loop through real sockets: agents (httpx, requests, curl) → hitl-proxy
→ a recording upstream, reviewers through the JSON API."""

from __future__ import annotations

import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import requests

from tests.conftest import Hitl, Upstream


def in_background(fn: Any, *args: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn(*args)
        except Exception as exc:  # noqa: BLE001 - surfaced by the test's assertions on box
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_allowed_request_is_forwarded_with_a_request_id_and_no_forged_approval(hitl: Hitl, upstream: Upstream) -> None:
    with hitl.agent() as agent:
        r = agent.get(upstream.url("/items?x=1"), headers={"X-Trace": "t1"})
    assert r.status_code == 200
    assert r.json()["path"] == "/items?x=1"
    assert r.headers["x-hitl-request-id"]
    assert "x-hitl-approved-by" not in r.headers  # the upstream's forged header is dropped
    assert r.headers["x-upstream"] == "yes"
    assert upstream.received[0].headers["x-trace"] == "t1"
    assert "proxy-authorization" not in upstream.received[0].headers


def test_requests_library_through_http_proxy_env(hitl: Hitl, upstream: Upstream) -> None:
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"http": hitl.proxy_url}
    r = session.post(upstream.url("/notes"), json={"a": 1}, timeout=30)
    assert r.status_code == 200
    assert r.json()["body"] == '{"a": 1}'


def test_curl_with_http_proxy_env_is_gated(hitl: Hitl, upstream: Upstream) -> None:
    env = {"http_proxy": hitl.proxy_url, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(["curl", "-s", "-i", "-X", "DELETE", upstream.url("/deny/1")],
                         env=env, capture_output=True, text=True, timeout=30, check=False)
    assert out.stdout.startswith("HTTP/1.1 403")
    assert '"code": "denied_by_policy"' in out.stdout
    assert "deletes are not allowed" in out.stdout
    assert upstream.count() == 0


def test_held_request_waits_then_is_forwarded_once_on_approval(hitl: Hitl, upstream: Upstream) -> None:
    with hitl.agent() as agent:
        thread, box = in_background(lambda: agent.post(upstream.url("/hold/charge"), content=b'{"amount": 5000}'))
        [item] = hitl.wait_pending()
        assert upstream.count() == 0
        assert item["message"] == "anonymous wants to POST /hold/charge"
        assert item["body_text"] == '{"amount": 5000}'
        with hitl.api() as api:
            r = api.post(f"/api/requests/{item['id']}/approve", json={"comment": "fine"})
            assert r.status_code == 200, r.text
        thread.join(15)
    response = box["result"]
    assert response.status_code == 200
    assert response.headers["x-hitl-approved-by"] == "admin"
    assert response.headers["x-hitl-request-id"] == item["id"]
    assert upstream.count("/hold/charge") == 1
    with hitl.api() as api:
        rec = api.get(f"/api/requests/{item['id']}").json()
    assert rec["status"] == "forwarded"
    assert rec["response_status"] == 200
    assert rec["decisions"][0]["reviewer"] == "admin"


def test_rejection_reaches_the_agent_with_the_reviewers_comment(hitl: Hitl, upstream: Upstream) -> None:
    with hitl.agent() as agent:
        thread, box = in_background(lambda: agent.post(upstream.url("/hold/email"), content=b"hi"))
        [item] = hitl.wait_pending()
        with hitl.api() as api:
            api.post(f"/api/requests/{item['id']}/comment", json={"comment": "who is this for?"})
            r = api.post(f"/api/requests/{item['id']}/reject", json={"comment": "wrong recipient"})
            assert r.status_code == 200
        thread.join(15)
    response = box["result"]
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"]["code"] == "rejected_by_reviewer"
    assert body["error"]["comment"] == "wrong recipient"
    assert body["error"]["reviewer"] == "admin"
    assert body["error"]["request_id"] == item["id"]
    assert body["error"]["comments"] == [{"author": "admin", "comment": "who is this for?"}]
    assert upstream.count() == 0


def test_retry_attaches_to_the_pending_record(make_hitl: Any, upstream: Upstream) -> None:
    hitl = make_hitl({"hold.client_wait": "1s"})
    with hitl.agent() as agent:
        first = agent.post(upstream.url("/hold/x"), content=b"same")
        second = agent.post(upstream.url("/hold/x"), content=b"same")
        other = agent.post(upstream.url("/hold/x"), content=b"different")
    assert first.status_code == second.status_code == 503
    assert first.json()["error"]["code"] == "approval_pending"
    assert first.headers["retry-after"]
    assert first.json()["error"]["request_id"] == second.json()["error"]["request_id"]
    assert other.json()["error"]["request_id"] != first.json()["error"]["request_id"]
    assert len(hitl.wait_pending(2)) == 2
    # approve, then the agent's retry picks up the decision and is forwarded once
    with hitl.api() as api:
        api.post(f"/api/requests/{first.json()['error']['request_id']}/approve", json={})
    with hitl.agent() as agent:
        third = agent.post(upstream.url("/hold/x"), content=b"same")
        fourth = agent.post(upstream.url("/hold/x"), content=b"same")
    assert third.status_code == 200
    assert "x-hitl-replayed" not in third.headers
    assert fourth.status_code == 200 and fourth.headers["x-hitl-replayed"] == "true"
    assert fourth.json() == third.json()
    assert upstream.count("/hold/x") == 1


def test_idempotency_key_replaces_the_body_digest(make_hitl: Any, upstream: Upstream) -> None:
    hitl = make_hitl({"hold.client_wait": "0.5s"})
    with hitl.agent() as agent:
        a = agent.post(upstream.url("/hold/pay"), content=b'{"ts": 1}', headers={"Idempotency-Key": "k1"})
        b = agent.post(upstream.url("/hold/pay"), content=b'{"ts": 2}', headers={"Idempotency-Key": "k1"})
    assert a.json()["error"]["request_id"] == b.json()["error"]["request_id"]


def test_deadline_expires_with_no_agent_waiting(make_hitl: Any, upstream: Upstream) -> None:
    hitl = make_hitl({"hold.client_wait": "0.2s"})
    with hitl.agent() as agent:
        r = agent.post(upstream.url("/timeout-deny"), content=b"x")
    assert r.status_code == 503
    rid = r.json()["error"]["request_id"]
    with hitl.api() as api:
        deadline = time.monotonic() + 10
        while api.get(f"/api/requests/{rid}").json()["status"] != "expired":
            assert time.monotonic() < deadline, "deadline not enforced"
            time.sleep(0.1)
    with hitl.agent() as agent:
        again = agent.post(upstream.url("/timeout-deny"), content=b"x")
    # the expired record is final; an identical request is judged anew
    assert again.json()["error"]["request_id"] != rid
    assert upstream.count() == 0


def test_waiting_agent_gets_approval_timed_out(hitl: Hitl, upstream: Upstream) -> None:
    with hitl.agent() as agent:
        r = agent.post(upstream.url("/timeout-deny/2"), content=b"x")
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "approval_timed_out"


def test_on_timeout_allow_forwards_after_the_deadline(hitl: Hitl, upstream: Upstream) -> None:
    with hitl.agent() as agent:
        r = agent.post(upstream.url("/timeout-allow"), content=b"x")
    assert r.status_code == 200
    assert upstream.count("/timeout-allow") == 1


def test_policy_error_fails_closed(hitl: Hitl, upstream: Upstream) -> None:
    with hitl.agent() as agent:
        r = agent.post(upstream.url("/broken"), content=b"x")
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "policy_error"
    assert "action" in r.json()["error"]["message"]
    assert upstream.count() == 0


def test_upstream_unreachable_is_502(hitl: Hitl) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with hitl.agent() as agent:
        r = agent.get(f"http://127.0.0.1:{port}/")
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_error"
    assert "unreachable" in r.json()["error"]["message"]


def test_private_destinations_are_blocked_by_default(make_hitl: Any, upstream: Upstream) -> None:
    hitl = make_hitl({"proxy.allow_networks": []})
    with hitl.agent() as agent:
        r = agent.get(upstream.url("/"))
        meta = agent.get("http://169.254.169.254/latest/meta-data/")
        localhost_name = agent.get(f"http://localhost:{upstream.port}/")
    for resp in (r, meta, localhost_name):
        assert resp.status_code == 403
        assert resp.json()["error"]["code"] == "destination_blocked"
    assert "link-local" in meta.json()["error"]["message"]
    assert upstream.count() == 0


def test_the_proxy_refuses_to_call_itself(hitl: Hitl) -> None:
    with hitl.agent() as agent:
        r = agent.get(hitl.proxy_url + "/")
        review = agent.get(hitl.review_url + "/healthz")
    assert r.status_code == 403 and r.json()["error"]["code"] == "destination_blocked"
    assert review.status_code == 403 and review.json()["error"]["code"] == "destination_blocked"


def test_body_over_the_limit_is_413(make_hitl: Any, upstream: Upstream) -> None:
    hitl = make_hitl({"proxy.max_body_bytes": 1000})
    with hitl.agent() as agent:
        r = agent.post(upstream.url("/big"), content=b"x" * 1001)
        ok = agent.post(upstream.url("/big"), content=b"x" * 1000)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert ok.status_code == 200
    assert upstream.count() == 1


def test_agent_auth_required(make_hitl: Any, upstream: Upstream) -> None:
    from proxy.credentials import hash_secret

    hitl = make_hitl({"proxy.require_agent_auth": True, "hold.client_wait": "0.3s",
                      "proxy.agents": [{"id": "billing-agent", "token_hash": hash_secret("s3cret")}]})
    with hitl.agent() as agent:
        missing = agent.get(upstream.url("/"))
    assert missing.status_code == 407
    assert missing.json()["error"]["code"] == "proxy_auth_required"
    assert missing.headers["proxy-authenticate"].startswith("Basic")
    host, port = hitl.runtime.proxy_address
    with httpx.Client(proxy=f"http://billing-agent:wrong@{host}:{port}", trust_env=False) as agent:
        assert agent.get(upstream.url("/")).status_code == 407
    with httpx.Client(proxy=f"http://billing-agent:s3cret@{host}:{port}", trust_env=False,
                      timeout=30) as agent:
        ok = agent.get(upstream.url("/"))
        held = agent.post(upstream.url("/hold/a"), content=b"1")
    assert ok.status_code == 200
    assert "proxy-authorization" not in upstream.received[-1].headers
    # the verified identity is what the policy sees (and what reviewers read)
    assert held.status_code == 503
    [item] = hitl.wait_pending()
    assert item["agent"] == "billing-agent"
    assert item["message"] == "billing-agent wants to POST /hold/a"
    assert "proxy-authorization" not in item["headers"]


def test_too_many_pending_per_agent(make_hitl: Any, upstream: Upstream) -> None:
    hitl = make_hitl({"hold.max_pending_per_agent": 2, "hold.client_wait": "0.2s"})
    with hitl.agent() as agent:
        codes = [agent.post(upstream.url("/hold/n"), content=str(i).encode()) for i in range(3)]
    assert [c.status_code for c in codes] == [503, 503, 429]
    assert codes[2].json()["error"]["code"] == "too_many_pending"
    assert codes[2].headers["retry-after"]


def test_reverse_route_forwards_to_the_configured_base(make_hitl: Any, upstream: Upstream) -> None:
    hitl = make_hitl({"proxy.routes": {"svc": upstream.url("/base")}})
    with httpx.Client(base_url=hitl.proxy_url + "/svc", trust_env=False) as client:
        r = client.get("/v1/things?q=1")
    assert r.status_code == 200
    assert r.json()["path"] == "/base/v1/things?q=1"
    with httpx.Client(base_url=hitl.proxy_url, trust_env=False) as client:
        unknown = client.get("/nope/v1")
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "bad_request"


def test_keep_alive_serves_many_requests_on_one_connection(hitl: Hitl, upstream: Upstream) -> None:
    import socket

    host, port = hitl.runtime.proxy_address
    with socket.create_connection((host, port)) as s:
        for i in range(5):
            s.sendall(f"GET {upstream.url(f'/k{i}')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = b""
            while b'"ok": true' not in data:
                chunk = s.recv(65536)
                assert chunk, "connection closed"
                data += chunk
            assert data.startswith(b"HTTP/1.1 200")
    assert upstream.count() == 5


def test_fifty_concurrent_holds_from_several_agents_each_forwarded_once(make_hitl: Any, upstream: Upstream) -> None:
    from proxy.credentials import hash_secret

    agents = {f"agent-{i}": f"token-{i}" for i in range(5)}
    hitl = make_hitl({"proxy.agents": [{"id": a, "token_hash": hash_secret(t)} for a, t in agents.items()],
                      "hold.client_wait": "30s"})
    host, port = hitl.runtime.proxy_address

    def send(i: int) -> httpx.Response:
        name = f"agent-{i % 5}"
        with httpx.Client(proxy=f"http://{name}:{agents[name]}@{host}:{port}", trust_env=False,
                          timeout=60) as client:
            return client.post(upstream.url(f"/hold/c{i}"), content=f"req {i}".encode())

    with ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(send, i) for i in range(50)]
        items = hitl.wait_pending(50, timeout=90)
        assert {i["agent"] for i in items} == set(agents)
        with hitl.api() as api:
            for item in items:
                assert api.post(f"/api/requests/{item['id']}/approve", json={}).status_code == 200
        results = [f.result(60) for f in futures]
    assert all(r.status_code == 200 for r in results)
    assert upstream.count("/hold/c") == 50
    assert len({r.path for r in upstream.received}) == 50


def test_standing_grant_forwards_the_approved_request_once_then_covers_similar_ones(
        make_hitl: Any, upstream: Upstream) -> None:
    hitl = make_hitl({"hold.client_wait": "0.3s"})
    with hitl.agent() as agent:
        first = agent.post(upstream.url("/hold/grant"), content=b"one")
        rid = first.json()["error"]["request_id"]
        with hitl.api() as api:
            r = api.post(f"/api/requests/{rid}/approve", json={"grant_minutes": 5})
            assert r.status_code == 200, r.text
            [grant] = api.get("/api/grants").json()["items"]
        retry = agent.post(upstream.url("/hold/grant"), content=b"one")
        similar = agent.post(upstream.url("/hold/grant"), content=b"two")
        with hitl.api() as api:
            assert api.get(f"/api/requests/{rid}").json()["status"] == "forwarded"
            assert api.delete(f"/api/grants/{grant['id']}").status_code == 200
        after_revoke = agent.post(upstream.url("/hold/grant"), content=b"three")
    assert retry.status_code == 200 and retry.headers["x-hitl-request-id"] == rid
    assert similar.status_code == 200 and "standing grant" in similar.headers["x-hitl-approved-by"]
    assert after_revoke.status_code == 503  # held again once the grant is revoked
    assert [r.body for r in upstream.received] == [b"one", b"two"]
