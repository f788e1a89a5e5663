"""Agents waiting on held requests: one future each, woken when their record changes.

A waiting agent costs one future, an entry in one dict and one in a heap of deadlines:
nothing runs while it waits. What wakes it is the one place that learns of a change:
``Gate._changed`` for changes made in this process (a verdict, a deadline, a forward), and
``ChangeFeed`` for changes other processes sharing the store made. A wake-up only says
"read the store again" (or, with a status, which status the record has just taken); the
store keeps the truth (store/sql.py, Rule 1).

The waiter registers before it reads the record's status, so a change that lands between
the read and the wait still wakes it (no lost wake-up, hence no polling to make up for one).

The end of each agent's wait (``hold.client_wait``) is an entry in one heap with one loop
timer for the earliest: a loop timer per waiter costs ~0.7 KiB on uvloop, 7 MiB for 10,000
agents. An entry whose agent was woken earlier stays until its time comes and then does
nothing.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

from proxy.model import HoldStatus

Waiter = asyncio.Future[HoldStatus | None]


class Waiters:
    __slots__ = ("_by_id", "_deadlines", "_loop", "_order", "_timer", "_timer_at")

    def __init__(self) -> None:
        # Mostly one waiter per record; duplicates of a request attach to the same record.
        self._by_id: dict[str, list[Waiter]] = {}
        self._deadlines: list[tuple[float, int, Waiter]] = []  # (loop time, tie-break, waiter)
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def __bool__(self) -> bool:
        return bool(self._by_id)

    def __len__(self) -> int:
        return sum(len(futures) for futures in self._by_id.values())

    def add(self, request_id: str) -> Waiter:
        """A future that ``wake(request_id)`` resolves; ``discard`` it when done waiting."""
        future: Waiter = asyncio.get_running_loop().create_future()
        self._by_id.setdefault(request_id, []).append(future)
        return future

    def discard(self, request_id: str, future: Waiter) -> None:
        futures = self._by_id.get(request_id)
        if futures is None:
            return
        if future in futures:
            futures.remove(future)
        if not futures:
            del self._by_id[request_id]

    def wake(self, request_id: str, status: HoldStatus | None = None) -> None:
        """Wake the agents waiting on ``request_id``; ``status``, when known, is the one the
        record has just taken (an approval is claimed at once, without reading it first)."""
        for future in self._by_id.pop(request_id, ()):
            if not future.done():
                future.set_result(status)

    def wake_all(self) -> None:
        for request_id in list(self._by_id):
            self.wake(request_id)

    def expire(self, future: Waiter, timeout: float) -> None:
        """Resolve ``future`` with None (nothing known: read the status) after ``timeout``
        seconds, unless something wakes it first."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests): the old one's deadlines are moot
            self._loop, self._deadlines, self._timer = loop, [], None
        when = loop.time() + max(0.0, timeout)
        heapq.heappush(self._deadlines, (when, next(self._order), future))
        if self._timer is None or when < self._timer_at:
            self._arm(loop, when)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = loop.call_at(when, self._expired), when

    def _expired(self) -> None:
        assert self._loop is not None
        self._timer = None
        now = self._loop.time()
        while self._deadlines and self._deadlines[0][0] <= now:
            future = heapq.heappop(self._deadlines)[2]
            if not future.done():
                future.set_result(None)
        if self._deadlines:
            self._arm(self._loop, self._deadlines[0][0])
