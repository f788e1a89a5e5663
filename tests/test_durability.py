"""Durability and exactly-once (issue 6): the state table through the real store
(SQLite and PostgreSQL), `hitl-proxy serve` killed with SIGKILL and restarted, concurrent
retries, replay, digest binding, and failing closed when the store cannot be written."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.errors import ApprovalPending, ApprovalTimedOut, InvalidTransition
from proxy.gate import Reply
from proxy.model import TRANSITIONS, AgentRequest, HoldStatus, OnTimeout, UpstreamResponse
from proxy.store.records import HoldRecord, new_id
from proxy.store.sql import PID_SPACE, SqlBackend, new_owner
from proxy.store.sqlite import SqliteBackend
from tests.conftest import TEST_POLICY, Hitl, ServeProcess, Upstream, run_serve, write_config
from tests.postgres import pg_url_fixture  # noqa: F401 - pg_url, behind store_opener's postgres case
from tests.test_core_flow import in_background
from tests.test_lifecycle_property import HOLD_TIMEOUT, REPLAY_WINDOW, GateRig

# -- 1. the state table, through the real store ------------------------------------------

OPS = ("approve", "reject", "claim", "complete", "fail", "expire")
RAISE, NONE, SAME = "raise", "none", "same"

# (state the record is in, operation) → the state it moves to, or RAISE (InvalidTransition),
# NONE (claim lost: returns None, nothing changes) or SAME (the deadline sweep leaves it be).
TABLE: dict[tuple[HoldStatus, str], HoldStatus | str] = {
    (HoldStatus.PENDING, "approve"): HoldStatus.APPROVED,
    (HoldStatus.PENDING, "reject"): HoldStatus.REJECTED,
    (HoldStatus.PENDING, "claim"): NONE,
    (HoldStatus.PENDING, "complete"): RAISE,
    (HoldStatus.PENDING, "fail"): RAISE,
    (HoldStatus.PENDING, "expire"): HoldStatus.EXPIRED,
    (HoldStatus.APPROVED, "approve"): RAISE,
    (HoldStatus.APPROVED, "reject"): RAISE,
    (HoldStatus.APPROVED, "claim"): HoldStatus.FORWARDING,
    (HoldStatus.APPROVED, "complete"): RAISE,
    (HoldStatus.APPROVED, "fail"): RAISE,
    (HoldStatus.APPROVED, "expire"): HoldStatus.EXPIRED,
    (HoldStatus.FORWARDING, "approve"): RAISE,
    (HoldStatus.FORWARDING, "reject"): RAISE,
    (HoldStatus.FORWARDING, "claim"): NONE,
    (HoldStatus.FORWARDING, "complete"): HoldStatus.FORWARDED,
    (HoldStatus.FORWARDING, "fail"): HoldStatus.FAILED,
    (HoldStatus.FORWARDING, "expire"): SAME,
    **{(final, op): (NONE if op == "claim" else SAME if op == "expire" else RAISE)
       for final in (HoldStatus.FORWARDED, HoldStatus.REJECTED, HoldStatus.EXPIRED, HoldStatus.FAILED)
       for op in OPS},
}

T0 = 1_800_000_000.0
RESPONSE = UpstreamResponse(201, (("content-type", "application/json"),), b'{"id": 1}', "Created")


def _record(now: float = T0, deadline: float = T0 + 60, fingerprint: str = "fp") -> HoldRecord:
    req = AgentRequest("POST", "https", "api.example.com", 443, "/v1/pay",
                       (("authorization", "Bearer s3cret"),), b'{"amount": 1}')
    return HoldRecord(id=new_id(now), status=HoldStatus.PENDING, fingerprint=fingerprint, agent="a",
                      agent_address="127.0.0.1", request=req, message="m", rule="r", reviewers=(),
                      approvals_needed=1, grantable=False, on_timeout=OnTimeout.DENY, created_at=now,
                      deadline=deadline, updated_at=now)


def _drive_to(store: SqlBackend, status: HoldStatus) -> str:
    """A fresh record brought to ``status`` through legal transitions only."""
    rid = store.create(_record()).id
    steps = {
        HoldStatus.PENDING: [], HoldStatus.APPROVED: ["approve"], HoldStatus.REJECTED: ["reject"],
        HoldStatus.EXPIRED: ["expire"], HoldStatus.FORWARDING: ["approve", "claim"],
        HoldStatus.FORWARDED: ["approve", "claim", "complete"], HoldStatus.FAILED: ["approve", "claim", "fail"],
    }[status]
    for op in steps:
        _apply(store, rid, op)
    assert store.get(rid).status is status  # type: ignore[union-attr]
    return rid


def _apply(store: SqlBackend, rid: str, op: str) -> Any:
    now = T0 + 1
    if op in ("approve", "reject"):
        return store.decide(rid, f"r-{op}", op, "because", now, approval_deadline=now + 60)
    if op == "claim":
        return store.claim(rid, now)
    if op == "complete":
        return store.complete(rid, RESPONSE, now, 1024)
    if op == "fail":
        return store.fail(rid, "upstream down", now)
    return store.expire_due(T0 + 3600, 60)


StoreOpener = Callable[[], SqlBackend]


@pytest.fixture(params=["sqlite", "postgres"])
def store_opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreOpener]:
    """Opens backends (connections) onto one fresh store of each kind; closes them after."""
    if request.param == "sqlite":
        def make() -> SqlBackend:
            return SqliteBackend(tmp_path / "hitl.db")
    else:
        from proxy.store.postgres import PostgresBackend

        url = request.getfixturevalue("pg_url")  # a schema of its own

        def make() -> SqlBackend:
            return PostgresBackend(url)
    opened: list[SqlBackend] = []

    def opener() -> SqlBackend:
        opened.append(make())
        return opened[-1]

    yield opener
    for store in opened:
        store.close()


@pytest.fixture
def backend(store_opener: StoreOpener) -> SqlBackend:
    return store_opener()


@pytest.mark.parametrize(("start", "op"), sorted(TABLE, key=lambda k: (k[0].value, k[1])),
                         ids=lambda v: v.value if isinstance(v, HoldStatus) else v)
def test_state_table_through_the_real_store(backend: SqlBackend, start: HoldStatus, op: str) -> None:
    rid = _drive_to(backend, start)
    audit_before = len(backend.audit_list(limit=10_000))
    expected = TABLE[(start, op)]
    if expected == RAISE:
        with pytest.raises(InvalidTransition):
            _apply(backend, rid, op)
        # atomic: the refused transition left no decision row and no audit record behind
        assert len(backend.audit_list(limit=10_000)) == audit_before
        assert backend.get(rid) == backend.get(rid) and backend.get(rid).status is start  # type: ignore[union-attr]
    else:
        result = _apply(backend, rid, op)
        after = backend.get(rid).status  # type: ignore[union-attr]
        if expected == NONE:
            assert result is None and after is start
        elif expected == SAME:
            assert after is start
        else:
            assert after is expected
            assert expected in TRANSITIONS[start], "the store made a move the state table forbids"
    assert backend.audit_verify() is None


def test_the_table_covers_every_allowed_transition() -> None:
    moved = {(start, end) for (start, _), end in TABLE.items() if isinstance(end, HoldStatus)}
    allowed = {(start, end) for start, ends in TRANSITIONS.items() for end in ends}
    assert moved == allowed


def test_secrets_are_scrubbed_once_final(backend: SqlBackend) -> None:
    rid = _drive_to(backend, HoldStatus.APPROVED)
    assert backend.get(rid).request.header("authorization") == "Bearer s3cret"  # type: ignore[union-attr]
    backend.claim(rid, T0 + 2)
    backend.complete(rid, RESPONSE, T0 + 3, 1024)
    assert backend.get(rid).request.header("authorization") == "[redacted]"  # type: ignore[union-attr]


def test_two_connections_race_for_one_claim_and_one_wins(store_opener: StoreOpener) -> None:
    """Two processes sharing the store (two backends) and many threads: exactly one claim."""
    a, b = store_opener(), store_opener()
    rid = _drive_to(a, HoldStatus.APPROVED)
    barrier = threading.Barrier(2)
    wins: list[Any] = []

    def claim(store: SqlBackend) -> None:
        barrier.wait()
        for _ in range(20):
            wins.append(store.claim(rid, T0 + 2))

    threads = [threading.Thread(target=claim, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(w is not None for w in wins) == 1


def test_identical_requests_created_together_make_one_record(backend: SqlBackend) -> None:
    first, created = backend.create_or_attach(_record(fingerprint="same"), 600)
    second, created_again = backend.create_or_attach(_record(fingerprint="same"), 600)
    assert created and not created_again and second.id == first.id
    assert backend.count_pending() == 1


def test_approval_after_the_deadline_is_refused_even_before_the_sweep(backend: SqlBackend) -> None:
    rid = backend.create(_record(deadline=T0 + 10)).id
    with pytest.raises(InvalidTransition) as info:
        backend.decide(rid, "alice", "approve", "", T0 + 11)
    assert info.value.current == "expired"
    assert backend.get(rid).status is HoldStatus.PENDING  # type: ignore[union-attr]


def test_recovery_fails_only_the_forwards_of_processes_that_are_gone(backend: SqlBackend) -> None:
    """store/sql.py Rule 6: a live forwarder's forwards are left alone, whoever sweeps."""
    import subprocess

    now = T0 + 1
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid of this host that no longer runs
    owners = {"live": new_owner(), "dead_pid": f"{PID_SPACE}:{dead.pid}:00", "silent": "elsewhere:1:00",
              "fresh_remote": "elsewhere:2:00", "none": None}
    for name in ("live", "dead_pid", "silent", "fresh_remote"):
        backend.heartbeat(owners[name], now - (100 if name == "silent" else 1))  # type: ignore[arg-type]
    ids = {}
    for name, owner in owners.items():
        rid = _drive_to(backend, HoldStatus.APPROVED)
        assert backend.claim(rid, now, owner) is not None
        ids[name] = rid
    failed = {r.id for r in backend.recover(now, owner=new_owner(), lease=30)}
    assert failed == {ids["dead_pid"], ids["silent"], ids["none"]}
    assert backend.get(ids["live"]).status is HoldStatus.FORWARDING  # type: ignore[union-attr]
    assert backend.get(ids["fresh_remote"]).status is HoldStatus.FORWARDING  # type: ignore[union-attr]
    # The owner itself never takes its own forwards for interrupted.
    assert backend.recover(now + 100, owner=owners["live"], lease=30) == [
        backend.get(ids["fresh_remote"])]


def test_claim_after_the_deadline_expires_instead_of_forwarding(backend: SqlBackend) -> None:
    rid = _drive_to(backend, HoldStatus.APPROVED)  # approved at T0+1, deadline T0+61
    assert backend.claim(rid, T0 + 61) is None
    assert backend.get(rid).status is HoldStatus.EXPIRED  # type: ignore[union-attr]


# -- 2. kill -9 and restart a real `hitl-proxy serve` ------------------------------------

# /slow holds with a 30 s deadline: long enough to survive a kill and restart untouched
RESTART_POLICY = TEST_POLICY + '''
decision := {"action": "hold", "message": "slow deadline", "rule": "test.slow", "timeout": "30s"} if {
	startswith(input.request.path, "/slow")
}
'''


class Served:
    """`hitl-proxy serve` on a config in tmp_path, restartable; killed with SIGKILL."""

    def __init__(self, tmp_path: Path, overrides: dict[str, Any]) -> None:
        self.tmp_path = tmp_path
        self.config = write_config(tmp_path, overrides, RESTART_POLICY)
        self.data = tmp_path / "data"
        self.proc: ServeProcess | None = None

    def reconfigure(self, overrides: dict[str, Any]) -> None:
        """Same store and policy, other settings, for the next start."""
        self.config = write_config(self.tmp_path, overrides, RESTART_POLICY)

    def start(self) -> Served:
        self.proc = run_serve(self.config)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.proc.send_signal(signal.SIGKILL)
        self.proc.proc.wait(10)

    def api(self) -> httpx.Client:
        assert self.proc is not None
        token = (self.data / "admin-token").read_text().strip()
        return httpx.Client(base_url=self.proc.review_url, trust_env=False, timeout=30,
                            headers={"Authorization": f"Bearer {token}"})

    def agent(self) -> httpx.Client:
        assert self.proc is not None
        return httpx.Client(proxy=self.proc.proxy_url, trust_env=False, timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def db_status(self, rid: str) -> str:
        """Read the store file directly, while no proxy runs."""
        with sqlite3.connect(self.data / "hitl.db") as conn:
            return str(conn.execute("SELECT status FROM requests WHERE id=?", (rid,)).fetchone()[0])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Served]]:
    made: list[Served] = []

    def make(overrides: dict[str, Any]) -> Served:
        made.append(Served(tmp_path, overrides))
        return made[-1]

    yield make
    for s in made:
        s.stop()


def _poll(fn: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_kill9_while_pending_loses_nothing_and_deadlines_resume(
        served: Callable[[dict[str, Any]], Served], upstream: Upstream) -> None:
    s = served({"hold.client_wait": "0.2s"}).start()
    with s.agent() as agent:
        held = [agent.post(upstream.url(f"/hold/{n}"), content=n.encode()) for n in ("a", "b")]
        short = agent.post(upstream.url("/timeout-deny/k"), content=b"k")
    assert [r.status_code for r in (*held, short)] == [503, 503, 503]
    assert {r.json()["error"]["code"] for r in (*held, short)} == {"approval_pending"}
    with s.api() as api:
        before = {i["id"]: i for i in api.get("/api/requests", params={"status": "pending"}).json()["items"]}
    short_id = short.json()["error"]["request_id"]
    s.kill9()
    pending_at_kill = s.db_status(short_id) == "pending"

    s.start()
    with s.api() as api:
        after = {i["id"]: i for i in api.get("/api/requests", params={"status": "pending"}).json()["items"]}
        for r in held:
            rid = r.json()["error"]["request_id"]
            assert after[rid]["status"] == "pending"
            assert after[rid]["deadline"] == before[rid]["deadline"]
            assert after[rid]["body_text"] == before[rid]["body_text"]
        # the 1 s deadline of /timeout-deny is enforced by the restarted process
        _poll(lambda: api.get(f"/api/requests/{short_id}").json()["status"] == "expired",
              "the deadline did not resume after the restart")
    assert pending_at_kill or s.db_status(short_id) == "expired"
    with s.agent() as agent:  # a retry attaches to the surviving record, no second review item
        again = agent.post(upstream.url("/hold/a"), content=b"a")
    assert again.json()["error"]["request_id"] == held[0].json()["error"]["request_id"]
    assert upstream.count() == 0


def test_kill9_after_approval_before_the_retry_forwards_once(
        served: Callable[[dict[str, Any]], Served], upstream: Upstream) -> None:
    s = served({"hold.client_wait": "0.2s"}).start()
    with s.agent() as agent:
        first = agent.post(upstream.url("/hold/pay"), content=b'{"amount": 7}')
    rid = first.json()["error"]["request_id"]
    with s.api() as api:
        assert api.post(f"/api/requests/{rid}/approve", json={"comment": "ok"}).status_code == 200
    s.kill9()
    assert s.db_status(rid) == "approved"

    s.start()
    with s.api() as api:
        assert api.get(f"/api/requests/{rid}").json()["status"] == "approved"
    with s.agent() as agent:
        retry = agent.post(upstream.url("/hold/pay"), content=b'{"amount": 7}')
        again = agent.post(upstream.url("/hold/pay"), content=b'{"amount": 7}')
    assert retry.status_code == 200 and "x-hitl-replayed" not in retry.headers
    assert retry.headers["x-hitl-request-id"] == rid
    assert again.status_code == 200 and again.headers["x-hitl-replayed"] == "true"
    assert again.content == retry.content
    assert upstream.count("/hold/pay") == 1


def test_kill9_during_forwarding_is_failed_interrupted_and_never_resent(
        served: Callable[[dict[str, Any]], Served], upstream: Upstream) -> None:
    s = served({"hold.client_wait": "20s"}).start()
    with s.agent() as agent:
        thread, box = in_background(lambda: agent.post(upstream.url("/hold/stall?stall=30"), content=b"once"))
        with s.api() as api:
            _poll(lambda: bool(api.get("/api/requests", params={"status": "pending"}).json()["items"]),
                  "no pending request")
            [item] = api.get("/api/requests", params={"status": "pending"}).json()["items"]
            api.post(f"/api/requests/{item['id']}/approve", json={})
        _poll(lambda: upstream.count("/hold/stall") == 1, "the forward never reached the upstream")
        s.kill9()  # the upstream holds the request: the proxy dies mid-forward
        thread.join(15)
    assert "error" in box  # the agent's connection died with the proxy
    assert s.db_status(item["id"]) == "forwarding"
    upstream.release.set()

    s.reconfigure({"hold.client_wait": "0.2s"})  # the retry below must not wait long
    s.start()
    with s.api() as api:
        rec = api.get(f"/api/requests/{item['id']}").json()
        audit = api.get("/api/audit", params={"request_id": item["id"]}).json()
    assert rec["status"] == "failed" and rec["failure_reason"] == "interrupted"
    events = audit["items"] if isinstance(audit, dict) else audit
    assert any(e["event"] == "failed" and e["detail"].get("reason") == "interrupted" for e in events)
    with s.agent() as agent:  # the agent's retry needs a new review: it is not re-sent by itself
        retry = agent.post(upstream.url("/hold/stall?stall=30"), content=b"once", timeout=30)
    assert retry.status_code == 503 and retry.json()["error"]["code"] == "approval_pending"
    assert retry.json()["error"]["request_id"] != item["id"]
    assert upstream.count("/hold/stall") == 1


# -- 3. concurrent retries, replay ----------------------------------------------------------

def test_twenty_concurrent_retries_of_one_approval_forward_once(make_hitl: Any, upstream: Upstream) -> None:
    hitl: Hitl = make_hitl({"hold.client_wait": "0.3s"})
    url = upstream.url("/hold/many?stall=20")
    with hitl.agent() as agent:
        rid = agent.post(url, content=b"pay").json()["error"]["request_id"]
    with hitl.api() as api:
        assert api.post(f"/api/requests/{rid}/approve", json={}).status_code == 200
    barrier = threading.Barrier(20)

    def retry(_: int) -> httpx.Response:
        with hitl.agent() as agent:
            barrier.wait(10)
            return agent.post(url, content=b"pay")

    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(retry, i) for i in range(20)]
        _poll(lambda: upstream.count("/hold/many") >= 1, "no forward")
        time.sleep(0.3)  # let the other 19 find the record in forwarding (not a timing assertion)
        upstream.release.set()
        results = [f.result(30) for f in futures]
    assert [r.status_code for r in results] == [200] * 20
    assert len({r.content for r in results}) == 1
    assert {r.headers["x-hitl-request-id"] for r in results} == {rid}
    assert sum("x-hitl-replayed" not in r.headers for r in results) == 1
    assert upstream.count("/hold/many") == 1


def test_identical_first_sends_make_one_review_item(make_hitl: Any, upstream: Upstream) -> None:
    hitl: Hitl = make_hitl({"hold.client_wait": "20s"})
    url = upstream.url("/hold/burst")

    def send() -> httpx.Response:
        with hitl.agent() as agent:
            return agent.post(url, content=b"same")

    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(send) for _ in range(10)]
        [item] = hitl.wait_pending(1)
        time.sleep(0.3)  # all ten are in by now; the assertion below is on the count only
        with hitl.api() as api:
            assert len(api.get("/api/requests", params={"status": "pending"}).json()["items"]) == 1
            api.post(f"/api/requests/{item['id']}/approve", json={})
        results = [f.result(30) for f in futures]
    assert [r.status_code for r in results] == [200] * 10
    assert len({r.content for r in results}) == 1
    assert upstream.count("/hold/burst") == 1


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[GateRig]:
    with GateRig.alone(tmp_path) as made:
        yield made


def _rid(out: Reply | Exception) -> str:
    rid = out.request_id
    assert rid is not None
    return rid


def test_replay_within_the_window_then_a_new_hold_after_it(rig: GateRig) -> None:
    req = rig.request("/hold/replay", b"r")
    rid = _rid(rig.send(req))
    rig.review(rid, "approve")
    first = rig.send(req)
    assert isinstance(first, Reply) and not first.replayed
    rig.clock.now += REPLAY_WINDOW - 1
    replay = rig.send(req)
    assert isinstance(replay, Reply) and replay.replayed and replay.body == first.body
    assert ("X-HITL-Replayed", "true") in replay.gate_headers()
    rig.clock.now += 2  # past the window: the same request is a new one, held anew
    later = rig.send(req)
    assert isinstance(later, ApprovalPending) and _rid(later) != rid
    assert rig.upstream.count("/hold/replay") == 1


def test_approved_but_agent_gone_stays_approved_until_its_deadline(rig: GateRig) -> None:
    req = rig.request("/hold/gone", b"g")
    rid = _rid(rig.send(req))
    rig.clock.now += 100
    rec = rig.review(rid, "approve")
    assert rec.deadline == rig.clock.now + HOLD_TIMEOUT  # the approval reset the deadline
    rig.clock.now += HOLD_TIMEOUT - 1
    rig.run(rig.gate.sweepers.expire_due())
    rig.restart()
    assert rig.get(rid).status is HoldStatus.APPROVED  # still there for the agent's retry
    rig.clock.now += 2
    rig.run(rig.gate.sweepers.expire_due())
    assert rig.get(rid).status is HoldStatus.EXPIRED
    assert isinstance(rig.send(req), ApprovalPending)  # a new hold, not a forward
    assert rig.upstream.count("/hold/gone") == 0


def test_retry_racing_the_deadline_sweep_is_not_forwarded(rig: GateRig) -> None:
    req = rig.request("/hold/race", b"r")
    rid = _rid(rig.send(req))
    rig.review(rid, "approve")
    rig.clock.now += HOLD_TIMEOUT + 1  # past the deadline, the sweep has not run
    out = rig.send(req)
    assert isinstance(out, ApprovalTimedOut)
    assert rig.get(rid).status is HoldStatus.EXPIRED
    assert rig.upstream.count("/hold/race") == 0


# -- 4. the forwarded bytes are the reviewed bytes -----------------------------------------

def test_changes_made_by_another_process_reach_this_ones_live_stream(rig: GateRig) -> None:
    """ChangeFeed.watch: what another process sharing the store does (a hold, an approval, a
    grant) reaches this process's UI stream."""
    gate = rig.gate
    queue = gate.events.subscribe()
    watching = rig.loop.create_task(gate.feed.watch(interval=0.01))
    try:
        rig.run(asyncio.sleep(0.1))  # it has read the audit head
        other = SqliteBackend(Path(rig.settings.store.url.removeprefix("sqlite:///")))  # "another process"
        try:
            rid = other.create(_record()).id
            other.decide(rid, "bob", "approve", "", T0 + 1, approval_deadline=T0 + 60)
            grant = other.add_grant("agent-1", "POST", "api.example.com", "/x", 5, "bob", rid, T0 + 1)
        finally:
            other.close()
        rig.run(asyncio.sleep(0.2))
        seen = []
        while not queue.empty():
            seen.append(queue.get_nowait())
    finally:
        watching.cancel()
        rig.run(asyncio.gather(watching, return_exceptions=True))
    assert {"type": "changed", "id": rid, "status": "pending"} in seen
    assert {"type": "changed", "id": rid, "status": "approved"} in seen
    assert {"type": "grant_created", "id": grant.id} in seen


def test_retry_with_a_new_body_forwards_the_approved_body(make_hitl: Any, upstream: Upstream) -> None:
    hitl: Hitl = make_hitl({"hold.client_wait": "0.2s"})
    key = {"Idempotency-Key": "order-77"}
    with hitl.agent() as agent:
        rid = agent.post(upstream.url("/hold/order"), content=b'{"amount": 10}', headers=key).json()["error"]["request_id"]
        with hitl.api() as api:
            api.post(f"/api/requests/{rid}/approve", json={})
        r = agent.post(upstream.url("/hold/order"), content=b'{"amount": 99999}', headers=key)
    assert r.status_code == 200 and r.headers["x-hitl-request-id"] == rid
    assert [x.body for x in upstream.received] == [b'{"amount": 10}']


def test_a_stored_request_changed_after_approval_is_not_sent(make_hitl: Any, upstream: Upstream,
                                                              tmp_path: Path) -> None:
    hitl: Hitl = make_hitl({"hold.client_wait": "0.2s"})
    with hitl.agent() as agent:
        rid = agent.post(upstream.url("/hold/tamper"), content=b"reviewed").json()["error"]["request_id"]
        with hitl.api() as api:
            api.post(f"/api/requests/{rid}/approve", json={})
        # someone with access to the database file swaps the body after the approval
        with sqlite3.connect(tmp_path / "data" / "hitl.db") as conn:
            conn.execute("UPDATE requests SET body=? WHERE id=?", (b"swapped", rid))
        r = agent.post(upstream.url("/hold/tamper"), content=b"reviewed")
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    with hitl.api() as api:
        rec = api.get(f"/api/requests/{rid}").json()
    assert rec["status"] == "failed" and "digest mismatch" in rec["failure_reason"]
    assert upstream.count() == 0


# -- 5. fail closed when the store cannot be written ----------------------------------------

def test_store_write_locked_fails_closed_while_allowed_traffic_flows(make_hitl: Any, upstream: Upstream,
                                                                     tmp_path: Path) -> None:
    """A second connection holds SQLite's write lock (what a backup tool or a stuck
    operator transaction does). As root, chmod would not stop writes; the lock does."""
    db = tmp_path / "data" / "hitl.db"
    hitl: Hitl = make_hitl({"store.url": f"sqlite:///{db}?busy_timeout=0.3", "hold.client_wait": "0.2s"})
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    fails_closed_while_locked(hitl, upstream, unlock=lambda: (locker.execute("ROLLBACK"), locker.close()))


def fails_closed_while_locked(hitl: Hitl, upstream: Upstream, unlock: Callable[[], object]) -> None:
    """With the store's write lock held elsewhere: a held request gets 503 and is never sent,
    allowed traffic flows, readiness says so; once ``unlock`` runs, all is as usual."""
    try:
        with hitl.agent() as agent:
            held = agent.post(upstream.url("/hold/locked"), content=b"x")
            allowed = agent.get(upstream.url("/fine"))
        ready = httpx.get(hitl.review_url + "/readyz", trust_env=False, timeout=30)
    finally:
        unlock()
    assert held.status_code == 503 and held.json()["error"]["code"] == "store_unavailable"
    assert held.headers["retry-after"]
    assert allowed.status_code == 200
    assert ready.status_code == 503 and ready.json()["checks"]["store"] is False
    assert upstream.count("/hold") == 0
    assert httpx.get(hitl.review_url + "/readyz", trust_env=False, timeout=30).status_code == 200
    with hitl.agent() as agent:
        again = agent.post(upstream.url("/hold/locked"), content=b"x")
    assert again.json()["error"]["code"] == "approval_pending"


def test_bad_sqlite_store_options_are_refused(tmp_path: Path) -> None:
    from proxy.errors import StoreError
    from proxy.store import open_backend

    with pytest.raises(StoreError, match="busy_timeout"):
        open_backend(f"sqlite:///{tmp_path}/x.db?busy_timeout=soon")
    with pytest.raises(StoreError, match="unsupported sqlite options"):
        open_backend(f"sqlite:///{tmp_path}/x.db?journal=off")
