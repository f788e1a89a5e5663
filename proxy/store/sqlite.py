"""The pending store on SQLite (sqlite-utils for the schema, WAL mode).

The store's rules and its transitions live in ``store.sql`` (shared with PostgreSQL); this
module supplies the SQLite plumbing. Write transactions are ``BEGIN IMMEDIATE``: SQLite's
single write lock serializes every writer on the file, across processes (Rule 2).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlite_utils

from proxy.errors import StoreError
from proxy.files import private_dir, private_file
from proxy.store.rows import (
    AUDIT_COLUMNS,
    CLAIM_COLUMNS,
    COMMENT_COLUMNS,
    DECISION_COLUMNS,
    FORWARDER_COLUMNS,
    GRANT_COLUMNS,
    ONCE_COLUMNS,
    REQUEST_COLUMNS,
    TABLES,
)
from proxy.store.signals import SqliteSignal
from proxy.store.sql import SqlBackend
from proxy.store.tuning import DECISION_LOG_SCHEMA


class SqliteBackend(SqlBackend):
    def __init__(self, path: Path, *, secret_headers: frozenset[str] = frozenset(),
                 busy_timeout: float = 10.0) -> None:
        super().__init__(secret_headers)
        self.path = path
        # How long a write waits for another connection's lock before giving up with
        # StoreError (→ 503 store_unavailable). It bounds how long a held request can hang.
        self._busy_ms = max(0, int(busy_timeout * 1000))
        # Two processes (--role proxy and --role review) may open a new file at once; the
        # switch to WAL takes its lock without waiting, so the set-up is retried, bounded.
        give_up = time.monotonic() + max(busy_timeout, 1.0)
        while True:
            try:
                # Held requests carry the agents' credentials: the file is 0600 from the
                # start, and SQLite gives its -wal and -shm files the database's mode.
                private_dir(path.parent)
                private_file(path)
                for suffix in ("-wal", "-shm", "-journal"):  # left by an older version
                    private_file(path.with_name(path.name + suffix), create=False)
                conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                                       timeout=busy_timeout)
                conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
                self.db = sqlite_utils.Database(conn)
                self.db.enable_wal()
                conn.execute("PRAGMA synchronous = NORMAL")
                with self._tx():
                    self._create_schema()
                break
            except (sqlite3.OperationalError, StoreError) as exc:
                if "locked" not in str(exc) or time.monotonic() > give_up:
                    raise StoreError(f"cannot open the SQLite store at {path}: {exc}") from exc
                conn.close()
                time.sleep(0.05)
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"cannot open the SQLite store at {path}: {exc}") from exc

    # -- schema --------------------------------------------------------------------------
    def _create_schema(self) -> None:
        db = self.db
        db.table("requests").create(REQUEST_COLUMNS, pk="id", if_not_exists=True,
                              not_null={"status", "fingerprint", "agent"})
        db.table("requests").create_index(["fingerprint"], if_not_exists=True)
        db.table("requests").create_index(["status", "deadline"], if_not_exists=True)
        db.table("requests").create_index(["agent", "status"], if_not_exists=True)
        db.table("decisions").create(DECISION_COLUMNS, if_not_exists=True)
        db.table("decisions").create_index(["request_id"], if_not_exists=True)
        db.table("comments").create(COMMENT_COLUMNS, if_not_exists=True)
        db.table("comments").create_index(["request_id"], if_not_exists=True)
        db.table("grants").create(GRANT_COLUMNS, pk="id", if_not_exists=True)
        db.table("claims").create(CLAIM_COLUMNS, pk="request_id", if_not_exists=True)
        db.table("forwarders").create(FORWARDER_COLUMNS, pk="id", if_not_exists=True)
        db.table("audit").create(AUDIT_COLUMNS, pk="seq", if_not_exists=True)
        db.table("used_once").create(ONCE_COLUMNS, pk="key", if_not_exists=True)
        for statement in DECISION_LOG_SCHEMA:  # store/tuning.py
            db.conn.execute(statement)
        self._add_missing_columns()
        # store.retention's sweep: finished records not yet purged, oldest first (sql.py).
        db.table("requests").create_index(["purged_at", "updated_at"], if_not_exists=True)

    def _add_missing_columns(self) -> None:
        """A store made by an older version lacks the columns added since: add them (NULL in
        the existing rows). CREATE TABLE IF NOT EXISTS alone never changes an existing table."""
        for name, columns in TABLES.items():
            table = self.db.table(name)
            present = table.columns_dict
            for column, typ in columns.items():
                if column not in present:
                    table.add_column(column, typ)

    # -- plumbing ------------------------------------------------------------------------
    def _tx(self) -> _Transaction:
        return _Transaction(self.db.conn)

    def _exec(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> int:
        return self.db.conn.execute(sql, params).rowcount

    def _q(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[dict[str, Any]]:
        cur = self.db.conn.execute(sql, params)
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def close(self) -> None:
        self.db.conn.close()

    def change_signal(self) -> SqliteSignal:
        """For the change feed: PRAGMA data_version on a connection of its own (signals.py)."""
        try:
            return SqliteSignal(self.path)
        except sqlite3.Error as exc:
            raise StoreError(f"store unavailable: {exc}") from exc

    def ping(self, timeout: float = 1.0) -> None:
        """Readiness: can the store be written? A read would pass while another connection
        holds the write lock (WAL readers never block), so take the write lock and let go."""
        conn = self.db.conn
        conn.execute(f"PRAGMA busy_timeout = {min(self._busy_ms, int(timeout * 1000))}")
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        finally:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error; sqlite errors become StoreError."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"store unavailable: {exc}") from exc

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return
            except sqlite3.Error as commit_exc:
                self.conn.execute("ROLLBACK")
                raise StoreError(f"store unavailable: {commit_exc}") from commit_exc
        self.conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"store unavailable: {exc}") from exc
