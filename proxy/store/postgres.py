"""The pending store on PostgreSQL (psycopg 3), for processes that share one store
(``serve --role proxy`` and ``--role review`` on different hosts, ``proxy.workers``).

The store's rules and its transitions live in ``store.sql`` (shared with SQLite); this
module supplies the PostgreSQL plumbing:

* Rule 2 (one writer at a time): every write transaction first takes a transaction-level
  advisory lock keyed on the schema, the counterpart of SQLite's ``BEGIN IMMEDIATE``. So a
  claim is won once, ``create_or_attach`` dedupes by fingerprint, and the audit chain
  stays linear (seq without gaps, in commit order) across any number of processes. The
  lock is released by COMMIT or ROLLBACK, never left behind by a dead process.
* Reads run in autocommit (READ COMMITTED), like SQLite's WAL readers: they never wait.
* ``lock_timeout`` is the ``busy_timeout`` of the URL: how long a write waits for the lock
  before the store counts as unavailable (503 ``store_unavailable``, fail closed).
* A connection the server dropped is replaced on the next call (once, never inside a
  transaction, whose work would be lost); until then calls fail with ``StoreError``.
* Every psycopg error leaves this module as ``StoreError``; no message carries the URL's
  password (``safe_url``).

URL: ``postgresql://user[:password]@host[:port]/db`` plus libpq parameters in the query
(``sslmode``, ``options=-csearch_path%3Dmyschema``, …), and two of ours: ``schema=NAME``
(the tables live in that schema, created on first open) and ``busy_timeout=SECONDS``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from proxy.config_types import STORE_SCHEMA_NAME
from proxy.errors import StoreError
from proxy.store.rows import (
    CLAIM_COLUMNS,
    FORWARDER_COLUMNS,
    GRANT_COLUMNS,
    ONCE_COLUMNS,
    REQUEST_COLUMNS,
    TABLES,
)
from proxy.store.signals import PostgresSignal
from proxy.store.sql import SqlBackend, busy_timeout
from proxy.store.tuning import DECISION_LOG_SCHEMA

T = TypeVar("T")

_PG_TYPES = {str: "TEXT", int: "BIGINT", float: "DOUBLE PRECISION", bytes: "BYTEA"}
# Lower-case only: an unquoted name in search_path is folded to lower case.
_SCHEMA_NAME = STORE_SCHEMA_NAME
# Defaults for libpq parameters the URL does not set: give up on a dead server or a black-
# holed network in seconds, not after the kernel's TCP timeouts (minutes).
_LIBPQ_DEFAULTS = {"connect_timeout": "10", "application_name": "hitl-proxy", "keepalives_idle": "10",
                   "keepalives_interval": "3", "keepalives_count": "3", "tcp_user_timeout": "15000"}
_SCHEMA_VERSION = "1"


def safe_url(url: str) -> str:
    """The URL as it may be logged: the password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def _table(name: str, columns: dict[str, type], pk: str | None = None,
           not_null: tuple[str, ...] = ()) -> str:
    cols = ", ".join(f"{col} {_PG_TYPES[typ]}{' PRIMARY KEY' if col == pk else ''}"
                     f"{' NOT NULL' if col in not_null else ''}" for col, typ in columns.items())
    return f"CREATE TABLE IF NOT EXISTS {name} ({cols})"


# The same tables as SQLite's. decisions and comments get an identity column named rowid
# because the shared queries order ties by SQLite's implicit rowid.
_ENTRY = "rowid BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, request_id TEXT"
SCHEMA = (
    _table("requests", REQUEST_COLUMNS, "id", ("status", "fingerprint", "agent")),
    "CREATE INDEX IF NOT EXISTS requests_fingerprint ON requests (fingerprint)",
    "CREATE INDEX IF NOT EXISTS requests_status_deadline ON requests (status, deadline)",
    "CREATE INDEX IF NOT EXISTS requests_agent_status ON requests (agent, status)",
    (f"CREATE TABLE IF NOT EXISTS decisions ({_ENTRY}, reviewer TEXT, verdict TEXT, comment TEXT,"
     " at DOUBLE PRECISION)"),
    "CREATE INDEX IF NOT EXISTS decisions_request_id ON decisions (request_id)",
    f"CREATE TABLE IF NOT EXISTS comments ({_ENTRY}, author TEXT, comment TEXT, at DOUBLE PRECISION)",
    "CREATE INDEX IF NOT EXISTS comments_request_id ON comments (request_id)",
    _table("grants", GRANT_COLUMNS, "id"),
    _table("claims", CLAIM_COLUMNS, "request_id"),
    _table("forwarders", FORWARDER_COLUMNS, "id"),
    _table("used_once", ONCE_COLUMNS, "key"),
    ("CREATE TABLE IF NOT EXISTS audit (seq BIGINT PRIMARY KEY, at TEXT, event TEXT, request_id TEXT,"
     " actor TEXT, detail TEXT, prev_hash TEXT, hash TEXT)"),
    "CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT)",
    (f"INSERT INTO store_meta (key, value) VALUES ('schema_version', '{_SCHEMA_VERSION}')"
     " ON CONFLICT (key) DO NOTHING"),
    *DECISION_LOG_SCHEMA,
)


class PostgresBackend(SqlBackend):
    _LIKE = "ILIKE"  # SQLite's LIKE ignores case; PostgreSQL's does not
    _JSON_TEXT = "(detail::json ->> '{key}')"

    def __init__(self, url: str, *, secret_headers: frozenset[str] = frozenset()) -> None:
        super().__init__(secret_headers)
        self.url = safe_url(url)
        parts = urlsplit(url)
        # libpq may quote a piece of the URL in an error (a bad percent-escape): never the password.
        self._passwords = {p for p in (parts.password, unquote(parts.password or "")) if p}
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.schema = params.pop("schema", None)
        if self.schema is not None:
            if not _SCHEMA_NAME.fullmatch(self.schema):
                raise StoreError("store.url: schema must be a lower-case SQL name ([a-z_][a-z0-9_]*)")
            if "search_path" in params.get("options", ""):
                raise StoreError("store.url: use schema=NAME or options=-csearch_path…, not both")
            params["options"] = f"{params.get('options', '')} -csearch_path={self.schema}".strip()
        busy = busy_timeout(params.pop("busy_timeout", None))
        # PostgreSQL reads a lock_timeout of 0 as "wait forever"; SQLite's 0 means "do not wait".
        self._lock_ms = max(1, int(busy * 1000))
        self._conninfo = urlunsplit(parts._replace(query=""))
        self._params = {**_LIBPQ_DEFAULTS, **params}
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._closed = False
        self._in_tx = False
        self._lock_key = 0
        self._channel = ""
        try:
            self._open()
        except StoreError as exc:
            self.close()
            reason = str(exc).removeprefix("store unavailable: ")
            raise StoreError(f"cannot open the PostgreSQL store at {self.url}: {reason}") from exc

    def _open(self) -> None:
        """Find the schema, key the write lock on it, create the tables (idempotent; two
        processes opening a new store at once are serialized by that same lock)."""
        schema = self.schema or self._scalar("SELECT current_schema() AS s")
        if schema is None:
            raise StoreError("search_path names no existing schema (use ?schema=NAME, created on first open)")
        self._lock_key = int.from_bytes(hashlib.sha256(f"hitl-proxy store {schema}".encode()).digest()[:8],
                                        "big", signed=True)
        # Where a write that grew the audit log says so at commit (signals.py), one per schema.
        self._channel = f"hitl_changes_{self._lock_key & 0xFFFFFFFFFFFF:012x}"
        with self._tx():
            if self.schema is not None:
                self._exec(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            for statement in SCHEMA:
                self._exec(statement)
            self._add_missing_columns(schema)
            # store.retention's sweep: finished records not yet purged, oldest first (sql.py).
            self._exec("CREATE INDEX IF NOT EXISTS requests_purged_updated ON requests (purged_at, updated_at)")

    def _add_missing_columns(self, schema: str) -> None:
        """A store made by an older version lacks the columns added since: add them (NULL in
        the existing rows). CREATE TABLE IF NOT EXISTS alone never changes an existing table.
        Only a store that lacks one is altered (ALTER TABLE locks the table, even for nothing)."""
        present = {(r["table_name"], r["column_name"]) for r in self._q(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = ?",
            (schema,))}
        for name, columns in TABLES.items():
            missing = [f"ADD COLUMN IF NOT EXISTS {col} {_PG_TYPES[typ]}"
                       for col, typ in columns.items() if (name, col) not in present]
            if missing:
                self._exec(f"ALTER TABLE {name} {', '.join(missing)}")

    # -- plumbing ------------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        conn = psycopg.connect(make_conninfo(self._conninfo, **self._params), autocommit=True,
                               row_factory=dict_row)
        try:
            # statement_timeout bounds a stuck server; idle_in_transaction_session_timeout frees
            # the write lock of a process frozen mid-transaction (SIGSTOP, a debugger).
            conn.execute(f"SET lock_timeout = {self._lock_ms}")
            conn.execute(f"SET statement_timeout = {self._lock_ms + 30_000}")
            conn.execute("SET idle_in_transaction_session_timeout = 60000")
        except psycopg.Error:
            conn.close()
            raise
        return conn

    def _run(self, fn: Callable[[psycopg.Connection[dict[str, Any]]], T]) -> T:
        for attempt in (1, 2):
            if self._closed:
                raise StoreError("store unavailable: the store is closed")
            fresh = self._conn is None or self._conn.closed
            try:
                if fresh:
                    self._conn = self._connect()
                assert self._conn is not None
                return fn(self._conn)
            except psycopg.Error as exc:
                # An old connection the server dropped (restart, failover, an idle kill) is
                # replaced once, outside a transaction only: inside one, its work is gone.
                # A new connection that fails is not retried: the server is unreachable.
                dropped = not fresh and self._conn is not None and (self._conn.broken or self._conn.closed)
                if attempt == 1 and dropped and not self._in_tx:
                    continue
                raise StoreError(f"store unavailable: {self._hide_password(str(exc))}") from exc
        raise AssertionError("unreachable")

    def _hide_password(self, message: str) -> str:
        for password in self._passwords:
            message = message.replace(password, "***")
        return message

    def _exec(self, query: str | sql.Composable, params: tuple[Any, ...] | list[Any] = ()) -> int:
        return self._run(lambda c: c.execute(_pg(query), _no_nul(params)).rowcount)

    def _q(self, query: str, params: tuple[Any, ...] | list[Any] = ()) -> list[dict[str, Any]]:
        return self._run(lambda c: c.execute(_pg(query), _no_nul(params)).fetchall())

    @contextmanager
    def _tx(self, timeout_ms: int | None = None, commit: bool = True) -> Iterator[None]:
        self._exec("BEGIN")
        self._in_tx = True
        try:
            if timeout_ms is not None:
                self._exec(f"SET LOCAL lock_timeout = {timeout_ms}")
                self._exec(f"SET LOCAL statement_timeout = {timeout_ms}")
            self._exec("SELECT pg_advisory_xact_lock(?)", (self._lock_key,))
            self._audited = False
            yield
            if commit:
                if self._audited:  # delivered to the listeners at COMMIT, not before
                    self._exec(f"NOTIFY {self._channel}")
                self._exec("COMMIT")
            else:
                self._rollback()
        except BaseException:
            self._rollback()
            raise
        finally:
            self._in_tx = False

    def _rollback(self) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            return
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error:
            conn.close()  # unusable: the next call connects afresh

    def change_signal(self) -> PostgresSignal:
        """For the change feed: LISTEN on this store's channel (signals.py)."""
        return PostgresSignal(make_conninfo(self._conninfo, **self._params), self._channel, self._hide_password)

    def close(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.close()

    def ping(self, timeout: float = 1.0) -> None:
        """Readiness: can the store be written now? Take the write lock and write (a row
        updated to itself, rolled back), each bounded by ``timeout``: a read-only server,
        a standby or a writer holding the lock fails it."""
        ms = max(1, int(min(self._lock_ms / 1000, timeout) * 1000))
        with self._tx(timeout_ms=ms, commit=False):
            self._exec("UPDATE store_meta SET value = value WHERE key = 'schema_version'")


def _pg(query: str | sql.Composable) -> Any:
    """The shared SQL uses SQLite's ``?`` placeholders; psycopg wants ``%s``. No statement
    holds a literal ``?`` or ``%`` (LIKE patterns travel as parameters)."""
    return query.replace("?", "%s") if isinstance(query, str) else query


def _no_nul(params: tuple[Any, ...] | list[Any]) -> tuple[Any, ...] | None:
    """PostgreSQL text cannot hold NUL (SQLite's can): a comment or a policy message quoting
    a body with one would otherwise fail the whole transition. It becomes U+FFFD."""
    if not params:
        return None
    return tuple(p.replace("\x00", "\ufffd") if isinstance(p, str) and "\x00" in p else p for p in params)
