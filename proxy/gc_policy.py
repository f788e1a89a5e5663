"""Garbage collection in a process that keeps many objects for a long time: held requests.

CPython's full collection walks every object the collector tracks. An agent waiting on a
hold is about fifty of them (its connection, task, coroutines, futures, request), so with
10,000 agents waiting a full collection takes 300-600 ms, and nothing is served meanwhile.
Traffic beside the holds makes them frequent: the objects of requests in flight at a young
collection are promoted into the oldest generation, and once they add up to a quarter of it
(about a second at a few thousand requests a second) the next full collection runs. That
was a stall of the whole gate every second or two, and an approval reaching the upstream
hundreds of milliseconds late (bench/bench_holds.py).

Rule 1. What has lived through a full collection is old: right after each one, what survived
        is frozen (``gc.freeze``), so the next walks only what is younger. Startup's objects
        (policies, the review app, templates) are frozen once serving starts.
Rule 2. A frozen object that later becomes part of unreachable cycles is not collected while
        frozen. Every ``UNFREEZE_SECONDS`` everything is unfrozen and collected in one full
        walk, so such garbage lives at most that long.
Rule 3. Nothing else changes: reference counting still frees what is not in a cycle at once,
        and the collector keeps its thresholds.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

log = logging.getLogger("hitl.proxy")

UNFREEZE_SECONDS = 600.0


class OldObjects:
    """Rule 1 and Rule 2 for the running event loop's process."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._freeze_queued = False

    def start(self) -> asyncio.Task[None]:
        gc.freeze()  # startup's objects
        gc.callbacks.append(self._on_collection)
        return self.loop.create_task(self._unfreeze_now_and_then())

    def stop(self) -> None:
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        # Called by the collector, in whichever thread allocated: freeze on the loop's thread,
        # after the collection has returned (not from inside it).
        if phase == "stop" and info["generation"] == 2 and not self._freeze_queued:
            self._freeze_queued = True
            try:
                self.loop.call_soon_threadsafe(self._freeze)
            except RuntimeError:  # the loop is closed: the process is ending
                self._freeze_queued = False

    def _freeze(self) -> None:
        self._freeze_queued = False
        gc.freeze()

    def renew(self) -> None:
        """Rule 2: everything unfrozen and walked once; what survives is frozen again."""
        started = time.perf_counter()
        frozen = gc.get_freeze_count()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        took = time.perf_counter() - started
        if took > 0.1:  # a full walk of everything: say what it cost
            log.info("full garbage collection of %d old objects took %.0f ms", frozen, took * 1000)

    async def _unfreeze_now_and_then(self, interval: float = UNFREEZE_SECONDS) -> None:
        while True:
            await asyncio.sleep(interval)
            self.renew()
