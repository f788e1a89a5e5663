"""Shadow mode (a decision's ``"shadow": true``, or ``policy.shadow: true``): a hold or deny
is let through to the upstream, and recorded — audit event ``shadow``, the metric
``hitl_shadow_total{action,rule}``, the "Would have held" view and its API — with no
review item. Policy errors are never shadowed (fail closed). Driven through real sockets:
httpx agents through the proxy to a recording upstream, reviewers over the review API."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from tests.conftest import Hitl, Upstream
from tests.test_metrics import by_labels, scrape

SHADOW_POLICY = r'''
package hitl

import rego.v1

default decision := {"action": "allow", "rule": "default"}

decision := {"action": "hold", "message": sprintf("%s charges %v", [input.agent.id, input.request.body.amount]),
	"rule": "payments.new", "shadow": true} if {
	startswith(input.request.path, "/charge")
}

decision := {"action": "deny", "message": "deletes will be denied", "rule": "deletes.new", "shadow": true} if {
	input.request.method == "DELETE"
}

decision := {"action": "hold", "message": "held for real", "rule": "real.hold"} if {
	startswith(input.request.path, "/hold")
}

decision := {"action": "nonsense", "shadow": true} if startswith(input.request.path, "/broken")

decision := {"action": "hold", "shadow": "yes", "rule": "bad.shadow"} if startswith(input.request.path, "/badshadow")
'''

SECRET = "sk_live_SHADOWSECRET"


def wait_for(fetch: Callable[[], Any], check: Callable[[Any], bool], timeout: float = 10) -> Any:
    """Shadow events are written off the request path, in batches: poll, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if check(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def shadow_events(hitl: Hitl) -> list[dict[str, Any]]:
    with hitl.api() as api:
        return [a for a in api.get("/api/audit", params={"limit": 1000}).json()["items"] if a["event"] == "shadow"]


@contextmanager
def web_session(hitl: Hitl) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hitl.review_url, trust_env=False, timeout=30) as c:
        assert c.get(f"/login?token={hitl.admin_token}").status_code == 303  # sets the session cookie
        yield c


def test_shadow_hold_lets_the_request_through_once_and_is_recorded_not_queued(
        make_hitl: Callable[..., Hitl], upstream: Upstream) -> None:
    hitl = make_hitl(policy=SHADOW_POLICY)
    with hitl.agent() as agent:
        r = agent.post(upstream.url("/charge/1?api_key=" + SECRET), json={"amount": 5000},
                       headers={"Authorization": f"Bearer {SECRET}"})
        assert r.status_code == 200, r.text
        assert r.json()["body"] == '{"amount":5000}' or r.json()["body"] == '{"amount": 5000}'
        rid = r.headers["x-hitl-request-id"]
        d = agent.delete(upstream.url("/d/7"))
        assert d.status_code == 200
    assert upstream.count("/charge/1") == 1 and upstream.count("/d/7") == 1  # each forwarded once
    assert upstream.received[0].headers["authorization"] == f"Bearer {SECRET}"  # passed as sent

    with hitl.api() as api:  # no review item, pending or otherwise
        every = "pending,approved,forwarding,forwarded,rejected,expired,failed"
        assert api.get("/api/requests", params={"status": every}).json()["items"] == []
    events = wait_for(lambda: shadow_events(hitl), lambda e: len(e) == 2)
    hold = next(e for e in events if e["detail"]["action"] == "hold")
    assert hold["request_id"] == rid and hold["actor"] == "policy"
    port = upstream.port
    assert hold["detail"] == {"action": "hold", "rule": "payments.new", "message": "anonymous charges 5000",
                              "agent": "anonymous", "method": "POST", "host": "127.0.0.1", "port": port,
                              "path": "/charge/1"}
    deny = next(e for e in events if e["detail"]["action"] == "deny")
    assert deny["detail"]["rule"] == "deletes.new" and deny["detail"]["message"] == "deletes will be denied"
    assert SECRET not in str(events)

    m = scrape(hitl)
    assert by_labels(m, "hitl_shadow_total") == {(("action", "hold"), ("rule", "payments.new")): 1,
                                                 (("action", "deny"), ("rule", "deletes.new")): 1}
    # What happened is an allow; the would-be hold is only in hitl_shadow_total.
    assert by_labels(m, "hitl_requests_total") == {(("action", "allow"), ("rule", "payments.new")): 1,
                                                   (("action", "allow"), ("rule", "deletes.new")): 1}

    with hitl.api() as api:  # the API behind the view, with its filters
        data = api.get("/api/shadow").json()
        assert [i["rule"] for i in data["items"]] == ["deletes.new", "payments.new"]  # newest first
        assert {(s["rule"], s["action"], s["count"]) for s in data["summary"]} == {
            ("payments.new", "hold", 1), ("deletes.new", "deny", 1)}
        assert data["facets"] == {"rule": ["deletes.new", "payments.new"], "agent": ["anonymous"],
                                  "host": ["127.0.0.1"]}
        only = api.get("/api/shadow", params={"rule": "payments.new"}).json()["items"]
        assert [(i["action"], i["path"], i["request_id"]) for i in only] == [("hold", "/charge/1", rid)]
        assert api.get("/api/shadow", params={"agent": "someone-else"}).json()["items"] == []
        assert len(api.get("/api/shadow", params={"host": "127.0.0.1"}).json()["items"]) == 2
        assert api.get("/api/shadow", params={"window": "forever"}).status_code == 400
    with web_session(hitl) as web:  # the server-rendered page
        page = web.get("/shadow", params={"rule": "payments.new"})
        assert page.status_code == 200
        assert "Would have held" in page.text and "anonymous charges 5000" in page.text
        assert "/charge/1" in page.text and "deletes will be denied" not in page.text
        assert SECRET not in page.text
        assert "deletes will be denied" in web.get("/shadow", params={"agent": "anonymous"}).text
    with httpx.Client(base_url=hitl.review_url, trust_env=False) as anonymous:
        assert anonymous.get("/api/shadow").status_code == 401
        assert anonymous.get("/shadow").status_code == 303


def test_policy_shadow_true_shadows_every_hold_and_deny(make_hitl: Callable[..., Hitl], upstream: Upstream) -> None:
    hitl = make_hitl({"policy.shadow": True})  # the shared test policy, no shadow in it
    with hitl.agent() as agent:
        assert agent.post(upstream.url("/hold/charge"), content=b'{"n": 1}').status_code == 200
        assert agent.delete(upstream.url("/deny/1")).status_code == 200
        broken = agent.get(upstream.url("/broken"))
    assert broken.status_code == 403 and broken.json()["error"]["code"] == "policy_error"
    assert upstream.count("/hold/charge") == 1 and upstream.count("/deny/1") == 1
    assert upstream.count("/broken") == 0  # fail closed: an error is never shadowed
    events = wait_for(lambda: shadow_events(hitl), lambda e: len(e) == 2)
    assert sorted((e["detail"]["action"], e["detail"]["rule"]) for e in events) == [
        ("deny", "test.deny"), ("hold", "test.hold")]
    with hitl.api() as api:
        assert api.get("/api/requests", params={"status": "pending"}).json()["items"] == []


def test_a_shadow_decision_never_lets_through_what_the_engine_failed_to_judge(
        make_hitl: Callable[..., Hitl], upstream: Upstream) -> None:
    hitl = make_hitl(policy=SHADOW_POLICY)
    with hitl.agent() as agent:
        for path in ("/broken", "/badshadow"):  # an invalid action; a shadow that is not a bool
            r = agent.post(upstream.url(path), content=b"{}")
            assert r.status_code == 403 and r.json()["error"]["code"] == "policy_error", path
    assert upstream.count() == 0
    time.sleep(0.8)  # longer than a flush interval: nothing was recorded as shadow either
    assert shadow_events(hitl) == []
    m = scrape(hitl)
    assert "hitl_shadow_total" not in m or by_labels(m, "hitl_shadow_total") == {}


def test_a_store_that_cannot_take_the_log_never_delays_allowed_requests_and_drops_are_counted(
        make_hitl: Callable[..., Hitl], upstream: Upstream, tmp_path: Any, monkeypatch: Any) -> None:
    import sqlite3

    from proxy import decision_log

    monkeypatch.setattr(decision_log, "MAX_BUFFERED", 5)  # a tiny buffer, to reach its bound
    db = tmp_path / "data" / "hitl.db"
    hitl = make_hitl({"store.url": f"sqlite:///{db}?busy_timeout=0.2"}, policy=SHADOW_POLICY)
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock: every log write fails
    try:
        with hitl.agent() as agent:
            for i in range(12):
                assert agent.get(upstream.url(f"/items/{i}")).status_code == 200
        assert upstream.count("/items/") == 12
        time.sleep(0.8)  # a flush or two fail meanwhile
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        def logged() -> int:
            return int(conn.execute("SELECT COUNT(*) FROM decision_log").fetchone()[0])
        kept = wait_for(logged, lambda n: n > 0)
    finally:
        conn.close()
    dropped = by_labels(scrape(hitl), "hitl_decision_log_dropped_total")[()]
    assert kept <= 5 and dropped >= 7 and kept + dropped == 12


def test_a_shadow_deny_of_a_connect_opens_the_tunnel_and_records_it(make_hitl: Callable[..., Hitl]) -> None:
    from tests.test_tunnel import OneShotServer, connect

    hitl = make_hitl(policy='''package hitl

import rego.v1

decision := {"action": "deny", "message": "tunnels will be denied", "rule": "tunnels.new", "shadow": true}

intercept := false
''')
    server = OneShotServer(lambda conn: conn.recv(100))
    try:
        sock = connect(hitl, server.port, b"hello through the tunnel")  # 200: the tunnel opened
        assert server.wait() == b"hello through the tunnel"
        sock.close()
    finally:
        server.close()
    [event] = wait_for(lambda: shadow_events(hitl), lambda e: len(e) == 1)
    assert event["detail"]["action"] == "deny" and event["detail"]["method"] == "CONNECT"
    assert (event["detail"]["host"], event["detail"]["port"]) == ("localhost", server.port)
