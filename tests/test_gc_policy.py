"""Old objects are kept out of the collector's walks, and cyclic garbage among them is still
collected at the next unfreeze (proxy/gc_policy.py)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from proxy.gc_policy import OldObjects


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()
    gc.unfreeze()  # the test process's collector as it was


def test_survivors_of_a_full_collection_are_frozen_and_cycles_among_them_collected_after_unfreeze(
        loop: asyncio.AbstractEventLoop) -> None:
    old = OldObjects(loop)
    task = old.start()
    try:
        assert gc.get_freeze_count() > 0  # startup's objects
        # A cycle, alive, that lives through a full collection: frozen right after it.
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        frozen_before = gc.get_freeze_count()
        gc.collect()
        loop.run_until_complete(asyncio.sleep(0))  # the freeze runs on the loop, after the collection
        assert gc.get_freeze_count() > frozen_before
        # Unreachable now, but frozen: no collection frees it ...
        del a, b
        gc.collect()
        assert gone() is not None
        # ... until everything is unfrozen and collected (Rule 2).
        old.renew()
        assert gone() is None
        assert gc.get_freeze_count() > 0  # the survivors, frozen again
    finally:
        task.cancel()
        old.stop()
        loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
    assert old._on_collection not in gc.callbacks
