"""Waiting agents' wake-ups (proxy/waiters.py): a change wakes every waiter of its record with
the new status; the end of each wait comes from one heap of deadlines, earliest first, also
when a later waiter's wait is the shorter one."""

from __future__ import annotations

import asyncio

from proxy.model import HoldStatus
from proxy.waiters import Waiters


def test_a_change_wakes_every_waiter_of_its_record_and_no_other() -> None:
    async def scenario() -> None:
        waiters = Waiters()
        a1, a2, b = waiters.add("a"), waiters.add("a"), waiters.add("b")
        waiters.wake("a", HoldStatus.APPROVED)
        assert a1.result() is HoldStatus.APPROVED and a2.result() is HoldStatus.APPROVED
        assert not b.done() and bool(waiters) and len(waiters) == 1
        waiters.discard("b", b)
        assert not waiters

    asyncio.run(scenario())


def test_waits_end_in_deadline_order_from_one_heap() -> None:
    async def scenario() -> list[str]:
        waiters = Waiters()
        ended: list[str] = []
        futures = {name: waiters.add(name) for name in ("long", "short", "middle", "woken")}
        for name, timeout in (("long", 0.3), ("short", 0.05), ("middle", 0.15), ("woken", 0.1)):
            waiters.expire(futures[name], timeout)
            futures[name].add_done_callback(lambda f, name=name: ended.append(name))
        waiters.wake("woken", HoldStatus.REJECTED)  # before its deadline: the deadline does nothing
        await asyncio.wait_for(asyncio.gather(*futures.values()), 10)
        assert futures["woken"].result() is HoldStatus.REJECTED
        assert all(futures[n].result() is None for n in ("long", "short", "middle"))
        return ended

    assert asyncio.run(scenario()) == ["woken", "short", "middle", "long"]


def test_a_new_event_loop_starts_with_no_deadlines() -> None:
    waiters = Waiters()

    async def wait_once(timeout: float) -> None:
        future = waiters.add("r")
        waiters.expire(future, timeout)
        await asyncio.wait_for(future, 10)
        waiters.discard("r", future)

    asyncio.run(wait_once(0.01))
    asyncio.run(wait_once(0.01))  # the first loop's timer is gone with it; this one arms its own
