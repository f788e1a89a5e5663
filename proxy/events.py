"""In-process change feed: the gate publishes, the review API's /api/events streams it.

Each subscriber has a bounded queue; a subscriber too slow to keep up loses old events
rather than slowing the gate (the UI re-reads the queue on every event anyway).
"""

from __future__ import annotations

import asyncio
from typing import Any

# Put in every subscriber's queue by ``close``: the stream that reads it ends (shutdown).
CLOSED: dict[str, Any] = {"type": "closed"}


class EventBus:
    def __init__(self, queue_size: int = 256) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._size = queue_size
        self.closed = False

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._size)
        if self.closed:
            queue.put_nowait(CLOSED)
        else:
            self._subscribers.add(queue)
        return queue

    def close(self) -> None:
        """End every live stream (an open browser tab must not keep a stopping process alive)."""
        self.closed = True
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(CLOSED)
        self._subscribers.clear()

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(queue)

    def publish(self, event: dict[str, Any]) -> None:
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)
