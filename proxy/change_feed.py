"""The change feed: what other processes sharing the store (``proxy.workers``, ``--role``)
change, read from the audit log, passed on to this process's waiting agents and live views.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from proxy.errors import StoreError

if TYPE_CHECKING:
    from proxy.gate import Gate

log = logging.getLogger("hitl.gate")

WATCH_SECONDS = 0.25  # the audit log is read this often (only with processes sharing a store)
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
        records now rather than at their next poll, and tell the review UI's live stream.
        Changes made here were announced when made, and are skipped."""
        self.gate._announced = {}
        seen: int | None = None
        while True:
            try:
                if seen is None:
                    seen = await self.gate.store.audit_head()
                else:
                    for rec in await self.gate.store.audit_list(after=seen, limit=1000):
                        seen = rec.seq
                        if rec.event in GRANT_EVENTS:  # for the grants page; a repeat only refreshes it
                            self.gate.events.publish({"type": GRANT_EVENTS[rec.event],
                                                      "id": rec.detail.get("grant_id")})
                            continue
                        status = AUDITED_STATUS.get(rec.event)
                        if rec.request_id is None or status is None:
                            continue
                        if (rec.request_id, status) in self.gate._announced:
                            del self.gate._announced[(rec.request_id, status)]
                            continue
                        self.gate.waiters.wake(rec.request_id)
                        self.gate.events.publish({"type": "changed", "id": rec.request_id, "status": status})
            except StoreError as exc:
                log.warning("cannot follow the store's changes: %s", exc)
            await asyncio.sleep(interval)
