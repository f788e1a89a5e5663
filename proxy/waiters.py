"""Agents waiting on held requests: one future each, woken when their record changes.

A waiting agent costs one future, one timer (its ``hold.client_wait``) and an entry in one
dict: nothing runs while it waits. What wakes it is the one place that learns of a change:
``Gate._changed`` for changes made in this process (a verdict, a deadline, a forward), and
``ChangeFeed`` for changes other processes sharing the store made. A wake-up only says
"read the store again"; the store keeps the truth (store/sql.py, Rule 1).

The waiter registers before it reads the record's status, so a change that lands between
the read and the wait still wakes it (no lost wake-up, hence no polling to make up for one).
"""

from __future__ import annotations

import asyncio


class Waiters:
    __slots__ = ("_by_id",)

    def __init__(self) -> None:
        # Mostly one waiter per record; duplicates of a request attach to the same record.
        self._by_id: dict[str, list[asyncio.Future[None]]] = {}

    def __len__(self) -> int:
        return sum(len(futures) for futures in self._by_id.values())

    def add(self, request_id: str) -> asyncio.Future[None]:
        """A future that ``wake(request_id)`` resolves; ``discard`` it when done waiting."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._by_id.setdefault(request_id, []).append(future)
        return future

    def discard(self, request_id: str, future: asyncio.Future[None]) -> None:
        futures = self._by_id.get(request_id)
        if futures is None:
            return
        if future in futures:
            futures.remove(future)
        if not futures:
            del self._by_id[request_id]

    def wake(self, request_id: str) -> None:
        for future in self._by_id.pop(request_id, ()):
            resolve(future)

    def wake_all(self) -> None:
        for request_id in list(self._by_id):
            self.wake(request_id)


def resolve(future: asyncio.Future[None]) -> None:
    """Wake one waiter (its ``client_wait`` timer ends): ``loop.call_later(t, resolve, future)``
    is the whole cost of a timeout, where ``asyncio.wait_for`` on Python 3.11 makes a task
    and a second future per call."""
    if not future.done():
        future.set_result(None)
