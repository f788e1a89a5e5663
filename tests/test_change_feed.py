"""The change feed across processes: a commit made elsewhere is signalled by the store
(SQLite's data_version, PostgreSQL's LISTEN/NOTIFY) and wakes the agent waiting here, long
before the feed's own interval (60 s in these tests) would have."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.gate import Reply
from proxy.store.sqlite import SqliteBackend
from tests.postgres import pg_url_fixture  # noqa: F401 - pg_url, behind store_opener's postgres case
from tests.test_durability import StoreOpener, _record, store_opener  # noqa: F401 - the fixture
from tests.test_lifecycle_property import GateRig

NEVER = 60.0  # the feed's interval here: only a signal can end a wait within the test


def test_a_commit_by_another_connection_ends_the_signals_wait(store_opener: StoreOpener) -> None:  # noqa: F811
    watcher, other = store_opener(), store_opener()

    async def scenario() -> None:
        signal = watcher.change_signal()
        try:
            await signal.wait(0.05)  # PostgreSQL: connected and listening from here on
            waiting = asyncio.create_task(signal.wait(NEVER))
            await asyncio.sleep(0.05)
            assert not waiting.done()  # nothing was committed meanwhile
            await asyncio.to_thread(other.create, _record())
            await asyncio.wait_for(waiting, 10)
        finally:
            await signal.aclose()

    asyncio.run(scenario())


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[GateRig]:
    with GateRig.alone(tmp_path) as made:
        yield made


def test_an_agent_waiting_here_is_forwarded_when_another_process_approves(rig: GateRig) -> None:
    gate, now = rig.gate, rig.clock.now
    req = rig.request("/hold/elsewhere", b"approved elsewhere")
    rid = rig.send(req).request_id  # held; the rig's agents do not wait (client_wait 0)
    assert rid is not None

    async def scenario() -> Reply:
        watching = asyncio.create_task(gate.feed.watch(interval=NEVER))
        try:
            await asyncio.sleep(0.1)  # the feed has read the audit log's head
            waiting = asyncio.create_task(gate.await_outcome(rid, now + NEVER))
            await asyncio.sleep(0.05)
            other = SqliteBackend(Path(rig.settings.store.url.removeprefix("sqlite:///")))  # "another process"
            try:
                await asyncio.to_thread(other.decide, rid, "bob", "approve", "", now, approval_deadline=now + 60)
            finally:
                other.close()
            return await asyncio.wait_for(waiting, 10)
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)

    reply = rig.run(scenario())
    assert isinstance(reply, Reply) and reply.status == 200 and not reply.replayed
    assert [r.body for r in rig.upstream.received if r.path == "/hold/elsewhere"] == [b"approved elsewhere"]
