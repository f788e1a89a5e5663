"""The background duties over the store that no agent waits for: deadlines (pending records
expire, or are approved by ``on_timeout: allow``), forwards whose process is gone (failed,
interrupted; store/sql.py Rule 6), the ``store.retention`` sweep, and this process's
forwarder heartbeat. The primary process runs them (cli/runtime.py); every change they
make wakes the gate's waiters and the live views through ``Gate._changed``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from proxy.errors import StoreError
from proxy.logs import log_decision
from proxy.model import HoldStatus
from proxy.store.sql import HEARTBEAT_SECONDS, RETENTION_BATCH

if TYPE_CHECKING:
    from proxy.gate import Gate

log = logging.getLogger("hitl.gate")

RETENTION_SWEEP_SECONDS = 60.0
RETENTION_BATCHES = 20  # per sweep: 10,000 records, in write transactions of RETENTION_BATCH


class Sweepers:
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def recover(self) -> None:
        for rec in await self.gate.store.recover(self.gate.clock(), self.gate.owner):
            log.warning("%s was being forwarded by a process that stopped; marked failed (interrupted), "
                        "not re-sent", rec.id)
            self.gate._changed(rec.id, "failed")

    async def run_heartbeat(self, interval: float = HEARTBEAT_SECONDS) -> None:
        """While this process may forward, tell the store it lives (store/sql.py, Rule 6)."""
        while True:
            try:
                await self.gate.store.heartbeat(self.gate.owner, self.gate.clock())
            except StoreError as exc:
                log.warning("cannot record this forwarder's heartbeat: %s", exc)
            await asyncio.sleep(interval)

    async def expire_due(self) -> None:
        for rec in await self.gate.store.expire_due(self.gate.clock(), self.gate.settings.hold.timeout):
            # Counted once, when the deadline decided a pending record (→ expired, or → approved
            # by on_timeout: allow); not when an approval whose agent never came back lapses.
            if rec.status is HoldStatus.APPROVED or rec.approved_digest is None:
                self.gate.metrics.decisions.labels("expired", rec.rule).inc()
                log_decision(rec.id, "expired", rec.rule, rec.agent, "timeout", self.gate.clock() - rec.created_at)
            else:
                log.info("%s reached its deadline: now %s", rec.id, rec.status.value)
            self.gate._changed(rec.id, rec.status.value)

    async def run_deadlines(self, interval: float = 0.5) -> None:
        """Deadlines, (every ``HEARTBEAT_SECONDS``) forwards whose process is gone, and
        (every minute, or every ``store.retention`` when shorter) the retention sweep."""
        swept = purged = time.monotonic()
        purge_every = min(RETENTION_SWEEP_SECONDS, self.gate.settings.store.retention)
        while True:
            try:
                await self.expire_due()
                if time.monotonic() - swept >= HEARTBEAT_SECONDS:
                    swept = time.monotonic()
                    await self.recover()
                if time.monotonic() - purged >= purge_every:
                    purged = time.monotonic()
                    await self.purge_finished()
            except StoreError as exc:
                log.error("cannot apply deadlines: %s", exc)
            await asyncio.sleep(interval)

    async def purge_finished(self) -> None:
        """store.retention: a bounded number of batches a sweep; the next sweep goes on."""
        for _ in range(RETENTION_BATCHES):
            if await self.gate.store.purge_finished(self.gate.clock(), self.gate.settings.store.retention) < RETENTION_BATCH:
                return
