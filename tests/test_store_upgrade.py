"""A store made by an older version opens and works: the columns added since are added at
open (SQLite and PostgreSQL), the existing rows keep their data."""

from __future__ import annotations

from proxy.model import HoldStatus
from proxy.store.rows import TABLES
from proxy.store.sql import SqlBackend
from tests.postgres import pg_url_fixture  # noqa: F401 - pg_url, behind store_opener's postgres case
from tests.test_durability import (
    RESPONSE,
    T0,
    StoreOpener,
    _drive_to,
    _record,
    store_opener,  # noqa: F401 - the fixture
)

# Columns that later versions added to each table (none is a key or NOT NULL).
ADDED_LATER = {"requests": ("failure_reason", "response_reason", "edit_headers"),
               "grants": ("revoked_by",), "decisions": ("comment",)}


def _columns(store: SqlBackend, table: str) -> set[str]:
    if type(store).__name__ == "SqliteBackend":
        return {r["name"] for r in store._q(f"PRAGMA table_info({table})")}
    return {r["column_name"] for r in store._q(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ?"
        " AND table_schema = current_schema()", (table,))}


def test_a_store_made_by_an_older_schema_gains_the_new_columns_and_keeps_its_rows(
        store_opener: StoreOpener) -> None:  # noqa: F811 - the fixture
    old = store_opener()
    kept = _drive_to(old, HoldStatus.PENDING)
    for table, columns in ADDED_LATER.items():
        for column in columns:
            old._exec(f"ALTER TABLE {table} DROP COLUMN {column}")
    assert "failure_reason" not in _columns(old, "requests")
    old.close()

    store = store_opener()
    for table, columns in TABLES.items():
        assert set(columns) <= _columns(store, table), table
    assert store.get(kept).status is HoldStatus.PENDING  # type: ignore[union-attr]
    # The new columns work: a failure reason, a response reason, a reviewer's comment.
    failed = _drive_to(store, HoldStatus.FAILED)
    assert store.get(failed).failure_reason == "upstream down"  # type: ignore[union-attr]
    rid = store.create(_record(fingerprint="fp2")).id
    store.decide(rid, "alice", "approve", "fine", T0 + 1)
    assert store.claim(rid, T0 + 2) is not None
    done = store.complete(rid, RESPONSE, T0 + 3, 1024)
    assert done.response is not None and done.response.reason == "Created"
    assert done.decisions[0].comment == "fine"
    assert store.audit_verify() is None
    store.close()
    assert set(TABLES["requests"]) <= _columns(store_opener(), "requests")  # a second open: no-op
