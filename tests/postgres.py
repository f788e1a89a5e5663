"""PostgreSQL for the tests: the server (127.0.0.1:5432, or ``HITL_TEST_POSTGRES``) and a
fresh schema per test. Without a server the tests that need one skip — except in CI
(``CI`` set), where they fail: a missing PostgreSQL must not pass as green."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from proxy.store.postgres import safe_url

POSTGRES = os.environ.get("HITL_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/test")


def admin() -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(POSTGRES, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {safe_url(POSTGRES)} in CI: {exc}")
        pytest.skip(f"PostgreSQL is not reachable at {safe_url(POSTGRES)}: {exc}")


@pytest.fixture(name="pg_url")
def pg_url_fixture() -> Iterator[str]:
    """A store URL on a schema of its own (the store creates it on first open), dropped after."""
    conn = admin()
    name = f"hitl_test_{secrets.token_hex(6)}"
    try:
        yield f"{POSTGRES}?schema={name}"
    finally:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        conn.close()
