"""Recovery of forwards whose process is gone (store/sql.py Rule 6) runs in one write
transaction: a record its forwarder completes meanwhile is left alone, the stranded ones are
failed, and nothing aborts the sweep (or, at start, `serve`). SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from typing import Any

from proxy.model import HoldStatus
from proxy.store.records import HoldRecord
from tests.postgres import pg_url_fixture  # noqa: F401 - pg_url, behind store_opener's postgres case
from tests.test_durability import (
    T0,
    StoreOpener,
    _drive_to,
    store_opener,  # noqa: F401 - the fixture
)


def test_a_forward_completed_while_recovery_waits_is_left_alone_and_the_stranded_one_fails(
        store_opener: StoreOpener) -> None:  # noqa: F811 - the fixture
    sweeper, forwarder = store_opener(), store_opener()
    now = T0 + 2
    ids = {}
    for name in ("finishing", "stranded"):
        ids[name] = _drive_to(sweeper, HoldStatus.APPROVED)
        # Owners on another host that never heartbeat: to the sweep, both look gone.
        assert sweeper.claim(ids[name], now, f"elsewhere:{name}:00") is not None
    box: dict[str, Any] = {}
    started = threading.Event()

    def sweep() -> None:
        started.set()
        try:
            box["failed"] = sweeper.recover(now + 100, owner="me:1:00", lease=30)
        except Exception as exc:  # noqa: BLE001 - asserted below
            box["error"] = exc

    # The forwarder of "finishing" is mid-way through recording its response (it holds the
    # write lock) when the sweep starts; it commits while the sweep waits for the lock.
    with forwarder._tx():
        rec = forwarder.get(ids["finishing"])
        assert rec is not None
        forwarder._move(rec, HoldStatus.FORWARDED, now + 1, "forwarded_at=?", (now + 1,))
        forwarder._audit(now + 1, "forwarded", rec.id, "proxy", {"status": 200})
        thread = threading.Thread(target=sweep)
        thread.start()
        started.wait(10)
        time.sleep(0.5)  # let the sweep reach the store (it reads, then waits for the lock)
    thread.join(30)
    assert "error" not in box, box.get("error")
    failed: list[HoldRecord] = box["failed"]
    assert [r.id for r in failed] == [ids["stranded"]]
    assert failed[0].status is HoldStatus.FAILED and failed[0].failure_reason == "interrupted"
    assert sweeper.get(ids["finishing"]).status is HoldStatus.FORWARDED  # type: ignore[union-attr]
    events = [a.event for a in sweeper.audit_list(request_id=ids["finishing"])]
    assert "failed" not in events and events[-1] == "forwarded"
    assert sweeper.audit_verify() is None
    assert sweeper.recover(now + 200, owner="me:1:00", lease=30) == []  # nothing left to do
