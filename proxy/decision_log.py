"""What the gate remembers of the requests it judged, written off the pass-through path.

Two records, both for the people who tune the policies:

* **shadow events** (audit event ``shadow``): a hold or deny that a decision marked
  ``"shadow": true`` (or ``policy.shadow: true``) turned into an allow. The detail names the
  would-be action, rule and message, and the agent, method, host, port and path; never a
  header or a body.
* **the decision log** (table ``decision_log``): each judged request's policy input,
  redacted (``input_redact.py``), with the action and rule, newest ``policy.decision_log``
  rows kept. ``hitl-proxy policy replay`` re-judges it against the policies on disk.

Theory of operation
-------------------
Rule 1. Nothing here makes an agent wait: the gate appends a reference to the judged input
        to an in-memory batch (under a microsecond), and one task redacts and serializes
        each batch in a worker thread, then writes it in a single store transaction, every
        ``FLUSH_SECONDS`` or as soon as ``FLUSH_ROWS`` entries wait
        (``bench/bench_decision_log.py`` measures the cost).
Rule 2. The batch is bounded (``MAX_BUFFERED``): when the store is slow or down, the oldest
        unwritten entries are dropped and counted (``hitl_decision_log_dropped_total``);
        the agent's request is never delayed or refused for it.
Rule 3. A shadow decision never lets through what the engine failed to judge: a policy
        error raises before any ``Decision`` exists, so there is nothing to shadow, and the
        request is refused (fail closed).
Rule 4. Entries still buffered at shutdown are written by ``close``; a crash loses at most
        the last ``FLUSH_SECONDS`` of them (these are observations, not decisions).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.errors import StoreError
from proxy.input_redact import redact_input
from proxy.model import Action, Decision

log = logging.getLogger("hitl.decision_log")

FLUSH_SECONDS = 0.5
FLUSH_ROWS = 500
MAX_BUFFERED = 20_000


@dataclass(frozen=True, slots=True)
class ShadowEvent:
    at: float
    request_id: str
    action: str  # the would-be action: hold | deny
    rule: str
    message: str
    agent: str
    method: str
    host: str
    port: int
    path: str

    def detail(self) -> dict[str, Any]:
        return {"action": self.action, "rule": self.rule, "message": self.message, "agent": self.agent,
                "method": self.method, "host": self.host, "port": self.port, "path": self.path}


@dataclass(frozen=True, slots=True)
class LogRow:
    at: float
    agent: str
    method: str
    host: str
    path: str
    action: str  # what the policy answered: allow | deny | hold
    rule: str
    shadow: bool
    body_cut: bool
    input: str  # the redacted input document, JSON


class DecisionRecorder:
    def __init__(self, store: Any, *, max_rows: int = 100_000, allowed_share: float = 1.0,
                 secret_headers: tuple[str, ...] = (), on_drop: Callable[[int], None] | None = None,
                 sample: Callable[[], float] = random.random) -> None:
        self.store = store
        self.max_rows = max_rows
        self.allowed_share = allowed_share
        self.secret_headers = secret_headers
        self.on_drop = on_drop
        self._sample = sample
        self._shadows: list[ShadowEvent] = []
        self._judged: list[tuple[dict[str, Any], str, str, float, bool]] = []  # not yet redacted
        self._rows: list[LogRow] = []  # redacted, not yet written (a failed write keeps them)
        self._wake: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None

    # -- the gate's side (on the event loop; cheap, never awaits) --------------------------
    def shadow(self, event: ShadowEvent) -> None:
        self._shadows.append(event)
        self._bound()

    def judged(self, doc: dict[str, Any], decision: Decision, now: float, shadowed: bool) -> None:
        """Keep a reference to the input (the gate never changes it after judging); the
        redaction and the JSON are made later, in a batch, off the event loop (Rule 1)."""
        if self.max_rows <= 0:
            return
        if decision.action is Action.ALLOW and self.allowed_share < 1.0 and self._sample() >= self.allowed_share:
            return
        self._judged.append((doc, decision.action.value, decision.rule, now, shadowed))
        self._bound()

    def _rows_of(self, judged: list[tuple[dict[str, Any], str, str, float, bool]]) -> list[LogRow]:
        """The rows to write: each input redacted (input_redact.py) and serialized."""
        rows = []
        for doc, action, rule, now, shadowed in judged:
            req = doc.get("request") or {}
            kept, cut = redact_input(doc, self.secret_headers)
            rows.append(LogRow(
                at=now, agent=str((doc.get("agent") or {}).get("id", "")), method=str(req.get("method", "")),
                host=str(req.get("host", "")), path=str(req.get("path", "")), action=action, rule=rule,
                shadow=shadowed, body_cut=cut,
                input=json.dumps(kept, ensure_ascii=False, separators=(",", ":"), default=str)))
        return rows

    def _bound(self) -> None:
        waiting = len(self._rows) + len(self._judged) + len(self._shadows)
        if waiting > MAX_BUFFERED:  # Rule 2: the store cannot keep up; drop the oldest
            over = left = waiting - MAX_BUFFERED
            for pending in (self._rows, self._judged, self._shadows):
                n = min(left, len(pending))
                del pending[:n]
                left -= n
            if self.on_drop is not None:
                self.on_drop(over)
        if waiting >= FLUSH_ROWS and self._wake is not None:
            self._wake.set()

    # -- the writer ------------------------------------------------------------------------
    async def run(self, interval: float = FLUSH_SECONDS) -> None:
        self._wake = asyncio.Event()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one batch at a time, in order
            if not self._shadows and not self._rows and not self._judged:
                return
            shadows, rows, judged = self._shadows, self._rows, self._judged
            self._shadows, self._rows, self._judged = [], [], []
            if judged:  # redaction and JSON in a worker thread: the event loop serves agents
                rows += await asyncio.get_running_loop().run_in_executor(None, self._rows_of, judged)
            try:
                await self.store.record_batch(shadows, rows, self.max_rows)
            except StoreError as exc:
                log.warning("cannot write %d shadow events and %d decision log rows yet: %s",
                            len(shadows), len(rows), exc)
                self._shadows[:0], self._rows[:0] = shadows, rows  # retried with the next batch
                self._bound()

    async def close(self) -> None:
        """Write what is buffered (Rule 4)."""
        await self.flush()
