"""The hold lifecycle under random interleavings (hypothesis).

A real ``Gate`` on a real SQLite file, the real embedded policy engine and the real httpx
``Upstream`` talking to the recording upstream server on 127.0.0.1 — only the clock is
fake, so deadlines and the replay window are crossed deterministically. Hypothesis drives
hold / retry / concurrent retries / approve / reject / comment / time passing / deadline
sweep / crash mid-forward / restart, and after every step checks the two promises of
the hold lifecycle:

* at most one forward per record (the upstream saw exactly one request per record that
  reached ``forwarded``, and none for any other record);
* no lost record (every record ever created is still in the store, and only ever moved
  along ``model.TRANSITIONS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from proxy.config import Settings, load_settings
from proxy.errors import GateError, InvalidTransition
from proxy.gate import Gate, Reply
from proxy.model import TRANSITIONS, Agent, AgentRequest, HoldStatus, Reviewer, Verdict
from proxy.netguard import AddressPolicy
from proxy.policy.embedded import EmbeddedEngine
from proxy.store import AsyncStore
from proxy.store.sqlite import SqliteBackend
from proxy.upstream import Upstream as HttpUpstream
from tests.conftest import Upstream, write_config

HOLD_TIMEOUT = 600.0
REPLAY_WINDOW = 120.0


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Shared:
    """What costs time to build and holds no lifecycle state — the event loop, the compiled
    policy, the httpx client, the recording upstream — built once for all examples."""

    def __init__(self, directory: Path) -> None:
        self.upstream = Upstream()
        settings = load_settings(write_config(directory), {})
        self.policy = EmbeddedEngine.load(settings.policy.paths, settings.policy.query)
        self.loop = asyncio.new_event_loop()
        self.http = HttpUpstream(timeout=10, policy=AddressPolicy(True, settings.proxy.allow_networks))

    def close(self) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.close()
        self.policy.close()
        self.upstream.close()


class GateRig:
    """A Gate with everything real but the clock, on its own SQLite file. ``restart`` drops
    the gate and the store connection and builds them again from the file, as a new process
    would: in-memory wake-ups are lost, the store is not."""

    def __init__(self, directory: Path, shared: Shared, overrides: dict[str, Any] | None = None) -> None:
        self.dir = directory
        self.shared = shared
        self.upstream = shared.upstream
        self.loop = shared.loop
        config = write_config(directory, {"hold.timeout": f"{HOLD_TIMEOUT}s",
                                          "hold.replay_window": f"{REPLAY_WINDOW}s", **(overrides or {})})
        settings = load_settings(config, {})
        # client_wait 0: an agent never sleeps on a pending record (the clock is fake), it
        # gets approval_pending at once and comes back as a retry.
        self.settings: Settings = replace(settings, hold=replace(settings.hold, client_wait=0.0))
        self.clock = FakeClock()
        self.gate = self._build()

    def _build(self) -> Gate:
        s = self.settings
        backend = SqliteBackend(Path(s.store.url.removeprefix("sqlite:///")), busy_timeout=5)
        gate = Gate(settings=s, policy=self.shared.policy, store=AsyncStore(backend),
                    upstream=self.shared.http, clock=self.clock)
        self.run(gate.sweepers.recover())
        return gate

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def restart(self) -> None:
        self.run(self.gate.store.aclose())
        self.gate = self._build()

    def request(self, path: str, body: bytes = b"x", headers: tuple[tuple[str, str], ...] = ()) -> AgentRequest:
        return AgentRequest("POST", "http", "127.0.0.1", self.upstream.port, path,
                            (("content-type", "text/plain"), *headers), body)

    def send(self, req: AgentRequest) -> Reply | GateError:
        """One agent request through the gate; a gate-made refusal is returned, not raised."""
        return self.send_many(req, 1)[0]

    def send_many(self, req: AgentRequest, n: int) -> list[Reply | GateError]:
        """``n`` identical requests at once (an agent's concurrent retries)."""
        async def one() -> Reply | GateError:
            try:
                return await self.gate.handle(req, Agent("agent-1", "127.0.0.1"))
            except GateError as exc:
                return exc

        async def many() -> list[Reply | GateError]:
            return list(await asyncio.gather(*(one() for _ in range(n))))

        return self.run(many())  # type: ignore[no-any-return]

    def review(self, request_id: str, kind: str, reviewer: str = "alice", comment: str = "ok") -> Any:
        return self.run(self.gate.review(request_id, Reviewer(reviewer), Verdict(kind, reviewer, comment)))

    def get(self, request_id: str) -> Any:
        return self.run(self.gate.store.get(request_id))

    def all_records(self) -> list[Any]:
        items, _ = self.run(self.gate.store.list_requests(limit=10_000))
        return items  # type: ignore[no-any-return]

    def close(self) -> None:
        self.run(self.gate.store.aclose())

    @classmethod
    @contextlib.contextmanager
    def alone(cls, tmp_path: Path) -> Iterator[GateRig]:
        """A rig with shared parts of its own, for a test that is not a Hypothesis example."""
        for name in ("shared", "rig"):
            (tmp_path / name).mkdir()
        shared = Shared(tmp_path / "shared")
        made = cls(tmp_path / "rig", shared)
        try:
            yield made
        finally:
            made.close()
            shared.close()


def _reachable(start: HoldStatus) -> set[HoldStatus]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


class Lifecycle(RuleBasedStateMachine):
    shared: Shared  # set by the test below
    examples = 0

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="hitl-prop-"))
        self.rig = GateRig(self.tmp, self.shared)
        # the upstream is shared: each example has its own paths, so counts stay its own
        Lifecycle.examples += 1
        self.paths = [f"/hold/{Lifecycle.examples}/{name}" for name in "abc"]
        self.seen: dict[str, HoldStatus] = {}  # every record id ever created → last status seen
        self.deadlines: dict[str, float] = {}  # pending records → their deadline

    def teardown(self) -> None:
        self.rig.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _note(self, outcomes: list[Reply | GateError]) -> None:
        for out in outcomes:
            rid = out.request_id
            if rid is not None and rid not in self.seen and self.rig.get(rid) is not None:
                rec = self.rig.get(rid)
                self.seen[rid] = rec.status
                self.deadlines.setdefault(rid, rec.deadline)

    def _some_record(self, data: st.DataObject, status: HoldStatus | None = None) -> str | None:
        ids = [i for i, s in self.seen.items() if status is None or s is status]  # creation order: replays draw the same record
        return data.draw(st.sampled_from(ids)) if ids else None

    # -- agents -------------------------------------------------------------------------
    @rule(which=st.integers(0, 2), n=st.integers(1, 4))
    def send(self, which: int, n: int) -> None:
        path = self.paths[which]
        req = self.rig.request(path, body=path.encode())
        outcomes = [self.rig.send(req)] if n == 1 else self.rig.send_many(req, n)
        self._note(outcomes)
        ok = [o for o in outcomes if isinstance(o, Reply)]
        # every 2xx that one send produced is the same upstream answer
        assert len({(o.status, o.body) for o in ok}) <= 1, "concurrent retries saw different responses"

    # -- reviewers ----------------------------------------------------------------------
    @rule(data=st.data(), kind=st.sampled_from(["approve", "reject", "comment"]))
    def review(self, data: st.DataObject, kind: str) -> None:
        rid = self._some_record(data)
        if rid is None:
            return
        before = self.rig.get(rid)
        try:
            after = self.rig.review(rid, kind)
        except InvalidTransition:
            assert before.status is not HoldStatus.PENDING or before.deadline <= self.rig.clock()
            return
        if kind == "approve":
            assert after.status is HoldStatus.APPROVED
            # Rule: approval resets the deadline, so an agent that comes back later finds it
            assert after.deadline == max(before.deadline, after.decided_at + HOLD_TIMEOUT)
        elif kind == "reject":
            assert after.status is HoldStatus.REJECTED

    # -- time and background duties ----------------------------------------------------
    @rule(seconds=st.sampled_from([1.0, 60.0, REPLAY_WINDOW + 1, HOLD_TIMEOUT + 1]))
    def time_passes(self, seconds: float) -> None:
        self.rig.clock.now += seconds

    @rule()
    def deadline_sweep(self) -> None:
        self.rig.run(self.rig.gate.sweepers.expire_due())
        for rec in self.rig.all_records():
            if rec.status in (HoldStatus.PENDING, HoldStatus.APPROVED):
                assert rec.deadline > self.rig.clock(), "a due record survived the sweep"

    @precondition(lambda self: any(s is HoldStatus.APPROVED for s in self.seen.values()))
    @rule(data=st.data())
    def crash_mid_forward(self, data: st.DataObject) -> None:
        """The process dies right after winning the claim, before the upstream is reached."""
        rid = self._some_record(data, HoldStatus.APPROVED)
        assert rid is not None
        self.rig.run(self.rig.gate.store.claim(rid, self.rig.clock()))
        self.rig.restart()
        rec = self.rig.get(rid)
        assert rec.status in (HoldStatus.FAILED, HoldStatus.EXPIRED)
        if rec.status is HoldStatus.FAILED:
            assert rec.failure_reason == "interrupted"

    @rule()
    def restart(self) -> None:
        before = {r.id: (r.status, r.deadline) for r in self.rig.all_records()}
        self.rig.restart()
        after = {r.id: (r.status, r.deadline) for r in self.rig.all_records()}
        assert after == before, "a restart changed records that were not mid-forward"

    # -- the promises -------------------------------------------------------------------
    @invariant()
    def at_most_one_forward_and_nothing_lost(self) -> None:
        records = {r.id: r for r in self.rig.all_records()}
        assert set(self.seen) <= set(records), "a held record was lost"
        for rid, last in self.seen.items():
            now_status = records[rid].status
            assert now_status in _reachable(last), f"{rid} moved {last} → {now_status}"
            self.seen[rid] = now_status
            if now_status is HoldStatus.PENDING:
                assert records[rid].deadline == self.deadlines[rid], "a pending deadline moved"
        for path in self.paths:
            forwarded = sum(1 for r in records.values()
                            if r.request.target == path and r.status is HoldStatus.FORWARDED)
            assert self.rig.upstream.count(path) == forwarded, (
                f"{path}: upstream saw {self.rig.upstream.count(path)}, store has {forwarded} forwarded")
        # Rule 3: one live record per fingerprint
        live = [r.fingerprint for r in records.values()
                if r.status in (HoldStatus.PENDING, HoldStatus.APPROVED, HoldStatus.FORWARDING)]
        assert len(live) == len(set(live)), "two live review items for one request"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    parts = Shared(tmp_path_factory.mktemp("shared"))
    yield parts
    parts.close()


def test_lifecycle_random_interleavings(shared: Shared) -> None:
    Lifecycle.shared = shared
    run_state_machine_as_test(Lifecycle, settings=settings(
        max_examples=60, stateful_step_count=25, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow]))
