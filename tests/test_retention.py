"""store.retention (docs/operations.md): finished requests older than it lose their bodies, headers,
edits and stored responses, and their claims, in small indexed batches; pending and recent
ones are untouched and the audit chain stays verifiable. SQLite and PostgreSQL, and
`hitl-proxy serve` sweeping on its own."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from proxy.model import HoldStatus
from proxy.store.sql import SqlBackend
from proxy.store.sqlite import SqliteBackend
from tests.conftest import HITL, Hitl, Upstream
from tests.postgres import pg_url_fixture  # noqa: F401 - pg_url, behind store_opener's postgres case
from tests.test_core_flow import in_background
from tests.test_durability import (
    RESPONSE,
    T0,
    StoreOpener,
    _drive_to,
    store_opener,  # noqa: F401 - the fixture
)

DAY = 86400.0


def _finished(store: SqlBackend, status: HoldStatus) -> str:
    rid = _drive_to(store, status)  # every step at T0 + 1
    if status is HoldStatus.FORWARDED:
        assert store.get(rid).response == RESPONSE  # type: ignore[union-attr]
    return rid


def test_finished_requests_past_retention_lose_bodies_headers_and_responses(
        store_opener: StoreOpener) -> None:  # noqa: F811 - the fixture
    store = store_opener()
    old = {s: _finished(store, s) for s in (HoldStatus.FORWARDED, HoldStatus.REJECTED,
                                            HoldStatus.FAILED, HoldStatus.EXPIRED)}
    pending = _drive_to(store, HoldStatus.PENDING)
    store.claim(_drive_to(store, HoldStatus.APPROVED), T0 + 1, "elsewhere:1:00")  # forwarding: live
    with store._tx():  # the claims the forwarders of the finished ones left behind
        for status in (HoldStatus.FORWARDED, HoldStatus.FAILED):
            store._exec("INSERT INTO claims (request_id, owner) VALUES (?, ?)", (old[status], "gone:1:00"))
    assert store._scalar("SELECT count(*) AS n FROM claims") == 3
    # 30 days later, a record finished just now must stay whole.
    now = T0 + 30 * DAY + 7200  # the expiry step runs at T0 + 3600
    recent = store.create(_record_at(now - 60)).id
    store.decide(recent, "bob", "reject", "no", now - 59)

    assert store.purge_finished(now, 30 * DAY, batch=3) == 3  # batched ...
    assert store.purge_finished(now, 30 * DAY, batch=3) == 1  # ... until none is left
    assert store.purge_finished(now, 30 * DAY) == 0
    for status, rid in old.items():
        rec = store.get(rid)
        assert rec is not None and rec.status is status and rec.purged_at == now
        assert rec.request.body == b"" and rec.request.headers == () and rec.response is None
        assert rec.edit_body is None and rec.edit_headers == ()
        assert rec.message == "m" and rec.request.host == "api.example.com"  # the history stays
    for rid in (pending, recent):
        rec = store.get(rid)
        assert rec is not None and rec.purged_at is None and rec.request.body == b'{"amount": 1}'
    assert store._scalar("SELECT count(*) AS n FROM claims") == 1  # the live forward's only
    assert store.audit_verify() is None
    sweeps = [a for a in store.audit_list(limit=1000) if a.event == "retention"]
    assert [a.detail["purged"] for a in sweeps] == [3, 1]


def _record_at(now: float) -> Any:
    from tests.test_durability import _record

    return _record(now=now, deadline=now + 60, fingerprint=f"fp-{now}")


def test_the_sweep_finds_due_records_through_an_index(tmp_path: Path) -> None:
    store = SqliteBackend(tmp_path / "hitl.db")
    try:
        plan = " ".join(str(r) for r in store._q(
            "EXPLAIN QUERY PLAN SELECT id FROM requests WHERE purged_at IS NULL AND updated_at < ?"
            " AND status IN ('forwarded','rejected','expired','failed') ORDER BY updated_at LIMIT ?",
            (T0, 500)))
        assert "purged_at" in plan and "INDEX" in plan.upper() and "SCAN requests" not in plan, plan
    finally:
        store.close()


def test_serve_purges_on_its_own_and_the_audit_chain_still_verifies(make_hitl: Any, upstream: Upstream) -> None:
    hitl: Hitl = make_hitl({"store.retention": "1s"})
    with hitl.agent() as agent:
        thread, box = in_background(lambda: agent.post(upstream.url("/hold/charge"), content=b'{"amount": 5000}',
                                                       headers={"Authorization": "Bearer sk_live_x"}))
        rid = hitl.wait_pending()[0]["id"]
        with hitl.api() as api:
            api.post(f"/api/requests/{rid}/reject", json={"comment": "no"})
            thread.join(15)
            assert box["result"].status_code == 403
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                rec = api.get(f"/api/requests/{rid}").json()
                if rec["purged_at"] is not None:
                    break
                time.sleep(0.2)
            assert rec["purged_at"] is not None, rec
            assert rec["body_text"] == "" and rec["headers"] == {} and rec["status"] == "rejected"
    db = hitl.runtime.settings.data_dir / "hitl.db"
    with sqlite3.connect(db) as conn:  # nothing of the body is left in the file's live rows
        assert conn.execute("SELECT body FROM requests WHERE id=?", (rid,)).fetchone() == (None,)
    verify = subprocess.run([HITL, "audit", "verify", "-c", str(hitl.config_path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert verify.returncode == 0, verify.stderr
    assert "audit chain intact" in verify.stdout
