"""The change feed: what other processes sharing the store (``proxy.workers``, ``--role``)
change, read from the audit log, passed on to this process's waiting agents and live views.

One feed per process, whatever the number of waiting agents: it reads the audit log when
the store signals a commit made elsewhere (store/signals.py: SQLite's data_version, checked
on the loop every 10 ms while agents wait; PostgreSQL's LISTEN/NOTIFY), and at the latest
every interval, and wakes the agents waiting on the records that changed (waiters.py) by id.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from proxy.errors import StoreError
from proxy.model import HoldStatus
from proxy.store.records import AuditRecord

if TYPE_CHECKING:
    from proxy.gate import Gate

log = logging.getLogger("hitl.gate")

# The audit log is read at the latest this often; a store's change signal (store/signals.py)
# makes it read as soon as another process commits.
WATCH_SECONDS = 5.0
PAGE = 1000  # audit records read at a time; a full page is followed by the next at once
GRANT_EVENTS = {"grant": "grant_created", "revoke_grant": "grant_revoked"}  # audit event → UI event
# The audit events that leave a record in a new status, and that status.
AUDITED_STATUS = {"hold": "pending", "approved": "approved", "rejected": "rejected", "expired": "expired",
                  "forwarding": "forwarding", "forwarded": "forwarded", "failed": "failed"}


class ChangeFeed:
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def watch(self, interval: float = WATCH_SECONDS) -> None:
        """Follow the changes other processes sharing the store make (``proxy.workers``,
        ``--role``), read from the audit log: wake this process's agents waiting on those
        records now, and tell the review UI's live stream. Changes made here were announced
        when made, and are skipped."""
        self.gate._announced = {}
        seen: int | None = None
        signal = self.gate.store.change_signal()
        try:
            while True:
                try:
                    if seen is None:
                        seen = await self.gate.store.audit_head()
                    else:
                        seen = await self._follow(seen)
                except StoreError as exc:
                    log.warning("cannot follow the store's changes: %s", exc)
                await signal.wait(interval, urgent=bool(self.gate.waiters))
        finally:
            await signal.aclose()

    async def _follow(self, seen: int) -> int:
        while True:
            page = await self.gate.store.audit_list(after=seen, limit=PAGE)
            for rec in page:
                seen = rec.seq
                self._pass_on(rec)
            if len(page) < PAGE:
                return seen

    def _pass_on(self, rec: AuditRecord) -> None:
        gate = self.gate
        if rec.event in GRANT_EVENTS:  # for the grants page; a repeat only refreshes it
            gate.events.publish({"type": GRANT_EVENTS[rec.event], "id": rec.detail.get("grant_id")})
            return
        status = AUDITED_STATUS.get(rec.event)
        if rec.request_id is None or status is None:
            return
        assert gate._announced is not None
        if (rec.request_id, status) in gate._announced:
            del gate._announced[(rec.request_id, status)]
            return
        gate.waiters.wake(rec.request_id, HoldStatus(status))
        gate.events.publish({"type": "changed", "id": rec.request_id, "status": status})
