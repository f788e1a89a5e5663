"""Streams the gate hands to the agent besides a live upstream response.

``Relay``: an approved request whose upstream answers with an event stream (an MCP tool
call, whose server reports progress before its result) is relayed to the waiting agent as
it comes, and recorded whole for the stored answer. The forward reads the upstream to the
end whether or not the agent still listens (an agent that hangs up does not cut the
forward short), so the record is completed exactly as a buffered forward would be.

``Rewritten``: a stream passed through ``mcp.EventRewriter`` (ids re-addressed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from proxy.errors import UpstreamError
from proxy.mcp import EventRewriter
from proxy.upstream import OpenResponse


class Stream(Protocol):
    def chunks(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Relay:
    def __init__(self, opened: OpenResponse, max_body: int, listening: bool = True) -> None:
        self.opened = opened
        self.max_body = max_body
        self._queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()  # None: the end
        self._listening = listening  # False: only read the whole body (pump's answer)

    async def pump(self) -> bytes:
        """Read the upstream to its end, relaying each chunk; the whole body, or
        ``UpstreamError`` when it is larger than ``max_body`` or the upstream fails."""
        body = bytearray()
        try:
            async for chunk in self.opened.chunks():
                body += chunk
                if len(body) > self.max_body:
                    raise UpstreamError(f"upstream response is larger than {self.max_body} bytes")
                if self._listening and chunk:
                    self._queue.put_nowait(chunk)
        except BaseException as exc:
            if self._listening:
                self._queue.put_nowait(exc)
            raise
        finally:
            await self.opened.aclose()
        if self._listening:
            self._queue.put_nowait(None)
        return bytes(body)

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise UpstreamError(f"the upstream failed mid-answer: {item}") from item
            if item is None:
                return
            yield item

    async def aclose(self) -> None:
        self._listening = False  # the pump goes on to the end, for the record
        while not self._queue.empty():
            self._queue.get_nowait()


class Rewritten:
    def __init__(self, inner: Stream, rewriter: EventRewriter) -> None:
        self.inner = inner
        self.rewriter = rewriter

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner.chunks():
            out = self.rewriter.feed(chunk)
            if out:
                yield out
        rest = self.rewriter.flush()
        if rest:
            yield rest

    async def aclose(self) -> None:
        await self.inner.aclose()
