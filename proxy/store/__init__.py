"""The durable pending store behind an async facade.

The backends (``sqlite.py``, ``postgres.py``; their shared logic in ``sql.py``) are
synchronous and run on one dedicated thread, so the event loop never blocks on I/O and the
backend never sees two callers at once. Every library error leaves this module as
``StoreError``; the gate maps that to 503 ``store_unavailable`` (fail closed).
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

from proxy.errors import StoreError
from proxy.model import AgentRequest, HoldStatus, UpstreamResponse
from proxy.store.records import AuditRecord, Grant, HoldRecord
from proxy.store.sql import busy_timeout
from proxy.store.sqlite import SqliteBackend

T = TypeVar("T")


class AsyncStore:
    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hitl-store")

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        except sqlite3.Error as exc:
            raise StoreError(f"store unavailable: {exc}") from exc

    async def create(self, rec: HoldRecord) -> HoldRecord:
        return await self._run(self.backend.create, rec)

    async def create_or_attach(self, rec: HoldRecord, replay_window: float,
                               max_pending: int | None = None) -> tuple[HoldRecord, bool]:
        return await self._run(self.backend.create_or_attach, rec, replay_window, max_pending)

    async def get(self, request_id: str) -> HoldRecord | None:
        return await self._run(self.backend.get, request_id)

    async def status(self, request_id: str) -> HoldStatus | None:
        return await self._run(self.backend.status, request_id)

    async def find_by_fingerprint(self, fp: str, now: float, replay_window: float) -> HoldRecord | None:
        return await self._run(self.backend.find_by_fingerprint, fp, now, replay_window)

    async def count_pending(self, agent: str | None = None) -> int:
        return await self._run(self.backend.count_pending, agent)

    async def oldest_pending(self) -> float | None:
        return await self._run(self.backend.oldest_pending)

    async def count_by_status(self) -> dict[str, int]:
        return await self._run(self.backend.count_by_status)

    async def list_requests(self, **filters: Any) -> tuple[list[HoldRecord], str | None]:
        return await self._run(self.backend.list_requests, **filters)

    async def decide(self, request_id: str, reviewer: str, verdict: str, comment: str, now: float,
                     **kwargs: Any) -> HoldRecord:
        return await self._run(self.backend.decide, request_id, reviewer, verdict, comment, now, **kwargs)

    async def add_comment(self, request_id: str, author: str, comment: str, now: float) -> HoldRecord:
        return await self._run(self.backend.add_comment, request_id, author, comment, now)

    async def claim(self, request_id: str, now: float, owner: str | None = None) -> HoldRecord | None:
        return await self._run(self.backend.claim, request_id, now, owner)

    async def complete(self, request_id: str, response: UpstreamResponse, now: float,
                       keep_body_limit: int) -> HoldRecord:
        return await self._run(self.backend.complete, request_id, response, now, keep_body_limit)

    async def fail(self, request_id: str, reason: str, now: float) -> HoldRecord:
        return await self._run(self.backend.fail, request_id, reason, now)

    async def expire_due(self, now: float, approve_window: float) -> list[HoldRecord]:
        return await self._run(self.backend.expire_due, now, approve_window)

    async def purge_finished(self, now: float, retention: float) -> int:
        return await self._run(self.backend.purge_finished, now, retention)

    async def heartbeat(self, owner: str, now: float) -> None:
        await self._run(self.backend.heartbeat, owner, now)

    async def recover(self, now: float, owner: str | None = None) -> list[HoldRecord]:
        return await self._run(self.backend.recover, now, owner)

    async def add_grant(self, agent: str, method: str, host: str, path: str, minutes: int, by: str,
                        request_id: str | None, now: float, **scope: Any) -> Grant:
        return await self._run(self.backend.add_grant, agent, method, host, path, minutes, by,
                               request_id, now, **scope)

    async def find_grants(self, agent: str, req: AgentRequest, now: float) -> list[Grant]:
        return await self._run(self.backend.find_grants, agent, req, now)

    async def use_once(self, key: str, now: float) -> bool:
        return await self._run(self.backend.use_once, key, now)

    async def list_grants(self, now: float, include_inactive: bool = False) -> list[Grant]:
        return await self._run(self.backend.list_grants, now, include_inactive)

    async def revoke_grant(self, grant_id: str, by: str, now: float) -> Grant:
        return await self._run(self.backend.revoke_grant, grant_id, by, now)

    async def slack_claim(self, request_id: str) -> bool:
        return await self._run(self.backend.slack_claim, request_id)

    async def slack_release(self, request_id: str) -> None:
        await self._run(self.backend.slack_release, request_id)

    async def slack_posted(self, request_id: str, channel: str, ts: str, shown: str) -> None:
        await self._run(self.backend.slack_posted, request_id, channel, ts, shown)

    async def slack_shown(self, request_id: str, shown: str) -> None:
        await self._run(self.backend.slack_shown, request_id, shown)

    async def slack_unsynced(self, now: float, limit: int = 200) -> tuple[str, ...]:
        return await self._run(self.backend.slack_unsynced, now, limit)

    async def audit_append(self, now: float, event: str, request_id: str | None, actor: str,
                           detail: dict[str, Any]) -> None:
        await self._run(self.backend.audit_append, now, event, request_id, actor, detail)

    async def audit_list(self, **filters: Any) -> list[AuditRecord]:
        return await self._run(self.backend.audit_list, **filters)

    async def audit_head(self) -> int:
        return await self._run(self.backend.audit_head)

    async def audit_verify(self) -> int | None:
        return await self._run(self.backend.audit_verify)

    # -- tuning (store/tuning.py) ---------------------------------------------------------
    async def record_batch(self, shadows: builtins.list[Any], rows: builtins.list[Any], max_rows: int) -> None:
        await self._run(self.backend.record_batch, shadows, rows, max_rows)

    async def shadow_list(self, **kwargs: Any) -> builtins.list[AuditRecord]:
        return await self._run(self.backend.shadow_list, **kwargs)

    async def shadow_summary(self, since: float | None = None,
                             filters: dict[str, str] | None = None) -> builtins.list[dict[str, Any]]:
        return await self._run(self.backend.shadow_summary, since, filters)

    async def shadow_facets(self, since: float | None = None) -> dict[str, builtins.list[str]]:
        return await self._run(self.backend.shadow_facets, since)

    async def insight_rows(self, since: float) -> builtins.list[dict[str, Any]]:
        return await self._run(self.backend.insight_rows, since)

    async def similar_approved(self, **kwargs: Any) -> int:
        return await self._run(self.backend.similar_approved, **kwargs)

    async def ping(self) -> None:
        await self._run(self.backend.ping)

    async def aclose(self) -> None:
        await self._run(self.backend.close)
        self._executor.shutdown(wait=False)


def open_backend(url: str, secret_headers: frozenset[str] = frozenset()) -> Any:
    if url.startswith("sqlite:///"):
        path, _, query = url.removeprefix("sqlite:///").partition("?")
        options = parse_qs(query)
        busy = busy_timeout(options.pop("busy_timeout", [None])[-1])
        if options:
            raise StoreError(f"store.url: unsupported sqlite options {query!r} (only busy_timeout=SECONDS)")
        return SqliteBackend(Path(path), secret_headers=secret_headers, busy_timeout=busy)
    if url.startswith(("postgresql://", "postgres://")):
        # Imported here: a SQLite deployment never loads the PostgreSQL driver.
        from proxy.store.postgres import PostgresBackend

        return PostgresBackend(url, secret_headers=secret_headers)
    raise StoreError(f"store.url: unsupported store {url.split(':', 1)[0]!r}")


def open_store(url: str, secret_headers: frozenset[str] = frozenset()) -> AsyncStore:
    return AsyncStore(open_backend(url, secret_headers))
