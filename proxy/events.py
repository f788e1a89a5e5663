"""In-process change feed: the gate publishes, the review API's /api/events streams it.

Each subscriber has a bounded queue; a subscriber too slow to keep up loses old events
rather than slowing the gate (the UI re-reads the queue on every event anyway).
"""

from __future__ import annotations

import asyncio
from typing import Any

# Put by ``close`` in the queue of every subscriber that asked for it (the review UI's event
# streams): the stream that reads it ends. Background consumers (Slack, webhooks) do not get
# it: they are cancelled at shutdown, and an item arriving together with the cancellation
# could swallow it inside ``asyncio.wait_for`` (Python 3.11).
CLOSED: dict[str, Any] = {"type": "closed"}


class EventBus:
    def __init__(self, queue_size: int = 256) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._ending: set[asyncio.Queue[dict[str, Any]]] = set()  # get CLOSED from close()
        self._size = queue_size
        self.closed = False

    def subscribe(self, ends_on_close: bool = False) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._size)
        if ends_on_close and self.closed:
            queue.put_nowait(CLOSED)
            return queue
        self._subscribers.add(queue)
        if ends_on_close:
            self._ending.add(queue)
        return queue

    def close(self) -> None:
        """End every live stream that asked for it (an open browser tab must not keep a
        stopping process alive)."""
        self.closed = True
        for queue in self._ending:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(CLOSED)
            self._subscribers.discard(queue)
        self._ending.clear()

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(queue)
        self._ending.discard(queue)

    def publish(self, event: dict[str, Any]) -> None:
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)
