"""The PostgreSQL store: the same semantics as SQLite under concurrency
from many connections, the URL options, failing closed when the server goes away, and
`hitl-proxy serve` (one process, then `--role proxy` + `--role review`) over it.

The state table and the other store-level tests of ``test_durability`` run on both
backends (its ``store_opener`` fixture). Every test gets its own schema (``tests.postgres``:
without a server the tests skip, except in CI, where they fail)."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg import sql

from proxy.config import load_settings
from proxy.errors import StoreError
from proxy.model import HoldStatus
from proxy.store import open_backend
from proxy.store.postgres import PostgresBackend
from tests.conftest import HITL, Hitl, Upstream, run_serve, write_config
from tests.postgres import POSTGRES, admin, pg_url_fixture  # noqa: F401 - the pg_url fixture
from tests.test_durability import T0, _drive_to, _record, fails_closed_while_locked
from tests.test_roles import approve_first_pending, roles_share_the_store

Connections = Callable[[int], list[PostgresBackend]]


@pytest.fixture
def connections(pg_url: str) -> Iterator[Connections]:
    """Opens N backends (connections) onto this test's store; all are closed after it."""
    opened: list[PostgresBackend] = []

    def open_(count: int) -> list[PostgresBackend]:
        opened.extend(PostgresBackend(pg_url) for _ in range(count))
        return opened[-count:]

    yield open_
    for backend in opened:
        backend.close()


def _race(backends: list[PostgresBackend], fn: Callable[[PostgresBackend], Any]) -> list[Any]:
    """Run fn once per backend, each on its own thread and connection, released together."""
    barrier = threading.Barrier(len(backends))
    results: list[Any] = []
    lock = threading.Lock()

    def run(store: PostgresBackend) -> None:
        barrier.wait(10)
        out = fn(store)
        with lock:
            results.append(out)

    threads = [threading.Thread(target=run, args=(b,)) for b in backends]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == len(backends), "a racer did not finish"
    return results


# -- 1. semantics under concurrency --------------------------------------------------------

def test_concurrent_claims_from_many_connections_exactly_one_wins(connections: Connections) -> None:
    backends = connections(8)
    rid = _drive_to(backends[0], HoldStatus.APPROVED)
    wins = _race(backends, lambda s: [s.claim(rid, T0 + 2) for _ in range(10)])
    assert sum(w is not None for batch in wins for w in batch) == 1
    events = [a.event for a in backends[0].audit_list(request_id=rid)]
    assert events.count("forwarding") == 1
    assert backends[0].get(rid).status is HoldStatus.FORWARDING  # type: ignore[union-attr]


def test_concurrent_create_or_attach_with_one_fingerprint_makes_one_record(connections: Connections) -> None:
    backends = connections(8)
    out = _race(backends, lambda s: [s.create_or_attach(_record(fingerprint="same"), 600)
                                     for _ in range(5)])
    flat = [pair for batch in out for pair in batch]
    assert sum(created for _, created in flat) == 1
    assert len({rec.id for rec, _ in flat}) == 1
    assert backends[0].count_pending() == 1
    assert backends[0].audit_verify() is None


def test_audit_chain_stays_linear_with_concurrent_writers(connections: Connections) -> None:
    backends = connections(6)

    def write(store: PostgresBackend) -> None:
        for n in range(30):
            store.audit_append(T0 + n, "note", None, f"writer-{id(store)}", {"n": n})
            if n % 10 == 0:  # transitions interleave with the plain appends
                _drive_to(store, HoldStatus.FORWARDED)

    _race(backends, write)
    store = backends[0]
    assert store.audit_verify() is None
    seqs = [a.seq for a in store.audit_list(limit=10_000)]
    assert seqs == list(range(1, len(seqs) + 1))
    # 6 writers × (30 notes + 3 records × 5 audit records each: hold, approve, approved,
    # forwarding, forwarded)
    assert store.audit_head() == 6 * (30 + 3 * 5)


def test_a_broken_link_is_found(pg_url: str) -> None:
    store = PostgresBackend(pg_url)
    try:
        for n in range(3):
            store.audit_append(T0 + n, "note", None, "x", {"n": n})
        store._exec("UPDATE audit SET actor = 'mallory' WHERE seq = 2")
        assert store.audit_verify() == 2
    finally:
        store.close()


def test_processes_opening_a_new_store_at_once_create_the_schema_once(pg_url: str) -> None:
    opened: list[PostgresBackend] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(PostgresBackend(pg_url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors and len(opened) == 6
        opened[0].create(_record())
        assert all(b.count_pending() == 1 for b in opened)
    finally:
        for b in opened:
            b.close()


def test_a_dropped_connection_is_replaced(pg_url: str) -> None:
    """The server ends the session (restart, failover, an idle kill): the next call
    reconnects instead of failing for ever."""
    store = PostgresBackend(pg_url)
    conn = admin()
    try:
        rid = store.create(_record()).id
        pid = store._run(lambda c: c.info.backend_pid)
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert store.get(rid) is not None  # a read reconnects
        conn.execute("SELECT pg_terminate_backend(%s)", (store._run(lambda c: c.info.backend_pid),))
        assert store.decide(rid, "alice", "approve", "", T0 + 1).status is HoldStatus.APPROVED
    finally:
        conn.close()
        store.close()


def test_the_text_filter_ignores_case_as_on_sqlite(pg_url: str) -> None:
    store = PostgresBackend(pg_url)
    try:
        store.create(_record())  # message "m", host api.example.com
        assert len(store.list_requests(text="API.EXAMPLE")[0]) == 1
        assert len(store.list_requests(text="nothing")[0]) == 0
    finally:
        store.close()


def test_a_nul_in_a_comment_is_kept_as_a_replacement_character(pg_url: str) -> None:
    store = PostgresBackend(pg_url)
    try:
        rid = store.create(_record()).id
        store.add_comment(rid, "alice", "ok\x00then", T0 + 1)
        assert store.get(rid).comments[0].comment == "ok\ufffdthen"  # type: ignore[union-attr]
    finally:
        store.close()


# -- 2. the URL ----------------------------------------------------------------------------

def test_search_path_in_options_selects_an_existing_schema(pg_url: str) -> None:
    schema = pg_url.rpartition("schema=")[2]
    conn = admin()
    try:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        store = open_backend(f"{POSTGRES}?options=-csearch_path%3D{schema}")
        try:
            store.create(_record())
        finally:
            store.close()
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}.requests").format(
            sql.Identifier(schema))).fetchone() == (1,)
    finally:
        conn.close()


def test_schema_combines_with_other_server_options(pg_url: str) -> None:
    store = open_backend(pg_url + "&options=-csynchronous_commit%3Doff&application_name=hitl-test")
    try:
        assert store._scalar("SHOW synchronous_commit") == "off"
        assert store._scalar("SELECT current_schema() AS s") == pg_url.rpartition("schema=")[2]
        assert store._scalar("SELECT current_setting('application_name') AS a") == "hitl-test"
    finally:
        store.close()


@pytest.mark.parametrize(("query", "problem"), [
    ("schema=Bad-Name", "lower-case SQL name"),
    ("schema=ok&options=-csearch_path%3Dok", "not both"),
    ("schema=ok&busy_timeout=soon", "busy_timeout"),
    ("options=-csearch_path%3Dhitl_no_such_schema_x", "names no existing schema"),
    ("sslmode=bogus", "sslmode"),
])
def test_bad_urls_are_refused(query: str, problem: str) -> None:
    admin().close()
    with pytest.raises(StoreError, match=problem):
        open_backend(f"{POSTGRES}?{query}")


def test_a_password_never_shows_in_errors(tmp_path: Path) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    url = f"postgresql://root:hunter2@127.0.0.1:{port}/test?connect_timeout=2"
    # libpq quotes the password itself when its percent-escape is bad
    for bad in (url, "postgresql://root:hunter2%zz@127.0.0.1/test"):
        with pytest.raises(StoreError) as info:
            open_backend(bad)
        assert "hunter2" not in str(info.value) and "root:***@" in str(info.value)
    config = write_config(tmp_path, {"store.url": url})
    assert load_settings(config, {}).store.url == url  # the config accepts it as it is
    out = subprocess.run([HITL, "serve", "-c", str(config)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode != 0
    assert "hunter2" not in out.stdout + out.stderr
    assert "root:***@" in out.stdout + out.stderr


# -- 3. the gate over PostgreSQL -----------------------------------------------------------

class Relay:
    """A TCP relay on 127.0.0.1 in front of PostgreSQL: cutting it makes the server
    unreachable for the proxy (open sessions die, new connections are refused) without
    touching the real server that other tests share."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.conns: list[socket.socket] = []
        self.listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port, self.listener = listener.getsockname()[1], listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target, timeout=5)
            server.settimeout(None)
            self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
            self.listener.close()
            self.listener = None
        for s in self.conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.conns.clear()


def test_store_down_fails_closed_and_recovers(pg_url: str, make_hitl: Callable[..., Hitl],
                                              upstream: Upstream) -> None:
    relay = Relay(("127.0.0.1", 5432))
    relay.start()
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}") + "&connect_timeout=2"
    hitl = make_hitl({"store.url": url, "hold.client_wait": "0.2s"})
    try:
        with hitl.agent() as agent:
            assert agent.post(upstream.url("/hold/before"), content=b"x").json()["error"]["code"] == "approval_pending"
        relay.stop()
        with hitl.agent() as agent:
            held = agent.post(upstream.url("/hold/down"), content=b"x")
            allowed = agent.get(upstream.url("/fine"))
        ready = httpx.get(hitl.review_url + "/readyz", trust_env=False, timeout=30)
        assert held.status_code == 503 and held.json()["error"]["code"] == "store_unavailable"
        assert held.headers["retry-after"]
        assert allowed.status_code == 200
        assert ready.status_code == 503 and ready.json()["checks"]["store"] is False
        assert upstream.count("/hold") == 0

        relay.start()  # the same port: the server is back
        assert httpx.get(hitl.review_url + "/readyz", trust_env=False, timeout=30).status_code == 200
        with hitl.agent() as agent:
            again = agent.post(upstream.url("/hold/down"), content=b"x")
        assert again.json()["error"]["code"] == "approval_pending"
        assert upstream.count("/hold") == 0
    finally:
        relay.stop()


def test_a_writer_holding_the_tables_fails_closed(pg_url: str, make_hitl: Callable[..., Hitl],
                                                  upstream: Upstream) -> None:
    """Another session locks the tables (a stuck operator transaction, a migration): held
    requests get 503 after busy_timeout, allowed traffic flows, readiness says so."""
    hitl = make_hitl({"store.url": pg_url + "&busy_timeout=0.3", "hold.client_wait": "0.2s"})
    locker = admin()
    schema = pg_url.rpartition("schema=")[2]
    locker.execute("BEGIN")
    locker.execute(sql.SQL("LOCK TABLE {s}.requests, {s}.audit, {s}.store_meta IN EXCLUSIVE MODE")
                   .format(s=sql.Identifier(schema)))
    fails_closed_while_locked(hitl, upstream, unlock=lambda: (locker.execute("ROLLBACK"), locker.close()))


def test_serve_over_postgres_holds_then_forwards_once(pg_url: str, tmp_path: Path, upstream: Upstream) -> None:
    url = pg_url.replace("root@", "root:hunter2@")  # the server trusts; the password must not leak
    config = write_config(tmp_path, {"store.url": url, "hold.client_wait": "20s",
                                     "log.level": "debug"})
    served = run_serve(config)
    try:
        box: dict[str, httpx.Response] = {}

        def agent() -> None:
            with httpx.Client(proxy=served.proxy_url, trust_env=False, timeout=30) as client:
                box["r"] = client.post(upstream.url("/hold/pg"), content=b'{"amount": 5}')

        thread = threading.Thread(target=agent)
        thread.start()
        token = (tmp_path / "data" / "admin-token").read_text().strip()
        rid = approve_first_pending(served.review_url, token)
        thread.join(30)
        assert box["r"].status_code == 200 and box["r"].headers["x-hitl-request-id"] == rid
        with httpx.Client(proxy=served.proxy_url, trust_env=False, timeout=30) as client:
            again = client.post(upstream.url("/hold/pg"), content=b'{"amount": 5}')
        assert again.status_code == 200 and again.headers["x-hitl-replayed"] == "true"
        assert upstream.count("/hold/pg") == 1
    finally:
        served.stop()
    assert not [line for line in served.lines if "hunter2" in line]
    verify = subprocess.run([HITL, "audit", "verify", "-c", str(config)], capture_output=True,
                            text=True, timeout=60, check=False)
    # hold, approve, approved, forwarding, forwarded
    assert verify.returncode == 0 and "audit chain intact: 5 records" in verify.stdout


def test_proxy_and_review_roles_share_a_postgres_store(pg_url: str, tmp_path: Path,
                                                       upstream: Upstream) -> None:
    roles_share_the_store(tmp_path, upstream, {"store.url": pg_url})
