"""Change signals: how a process learns, cheaply and soon, that another one changed the store.

The change feed (change_feed.py) reads the audit log only when a signal says something may
have changed, and at the latest every interval it is given (a missed signal costs latency,
never correctness):

- SQLite: ``PRAGMA data_version`` on a connection of the signal's own, which changes when
  any other connection commits to the file (another process, or this one's store thread).
  Reading it takes microseconds and no I/O (no lock is waited on: the connection's busy
  timeout is 0, and a busy answer counts as a change), so it is read on the event loop
  every ``SQLITE_TICK`` seconds while agents wait (one timer for the whole process, about
  0.4 % of a core on uvloop; a change made elsewhere is seen within ~10 ms), every
  ``SQLITE_IDLE_TICK`` seconds when none does.
- PostgreSQL: ``LISTEN`` on a channel named after the store's schema; a write transaction
  that appends to the audit log sends ``NOTIFY`` (postgres.py), which PostgreSQL delivers
  at commit. The feed sleeps until a notification arrives.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("hitl.store")

SQLITE_TICK = 0.01  # while agents wait on a change (a wake ~10 ms after a commit elsewhere)
SQLITE_IDLE_TICK = 0.25  # otherwise: the review UI's live view is the only one following


class ChangeSignal(Protocol):
    async def wait(self, timeout: float, urgent: bool = True) -> None:
        """Return when the store may have changed since the last return, or after ``timeout``.
        ``urgent``: agents are waiting on a change; a signal that polls polls fast only then."""

    async def aclose(self) -> None: ...


class Sleep:
    """No signal: the interval alone (a store whose signal cannot be set up)."""

    async def wait(self, timeout: float, urgent: bool = True) -> None:
        await asyncio.sleep(timeout)

    async def aclose(self) -> None:
        return None


class SqliteSignal:
    def __init__(self, path: Path) -> None:
        # Used on the event loop's thread only; timeout 0: a read never waits on a lock.
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=0)
        self._version = self._read()

    def _read(self) -> int | None:
        try:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            return None  # busy (a WAL recovery elsewhere): counted as a change

    async def wait(self, timeout: float, urgent: bool = True) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        tick = SQLITE_TICK if urgent else SQLITE_IDLE_TICK
        while True:
            await asyncio.sleep(max(0.0, min(tick, end - loop.time())))
            version = self._read()
            if version is None or version != self._version:
                self._version = version
                return
            if loop.time() >= end:
                return

    async def aclose(self) -> None:
        self._conn.close()


class PostgresSignal:
    """LISTEN on ``channel`` over a connection of its own, opened (again) on demand: when it
    fails, the feed falls back to its interval until the next attempt succeeds."""

    def __init__(self, conninfo: str, channel: str, hide: Callable[[str], str]) -> None:
        self._conninfo = conninfo
        self._channel = channel
        self._hide = hide  # no log line carries the URL's password
        self._conn: Any = None  # psycopg.AsyncConnection, once connected

    async def _listen(self) -> Any:
        import psycopg
        from psycopg import sql

        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            await self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        return self._conn

    async def wait(self, timeout: float, urgent: bool = True) -> None:
        import psycopg

        try:
            conn = await self._listen()
            async for _ in conn.notifies(timeout=timeout, stop_after=1):
                pass
        except psycopg.Error as exc:
            log.warning("cannot listen for the store's changes (reading them every %.0f s): %s",
                        timeout, self._hide(str(exc).strip() or type(exc).__name__))
            await self.aclose()
            await asyncio.sleep(timeout)

    async def aclose(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()
