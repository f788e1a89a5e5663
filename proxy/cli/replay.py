"""``hitl-proxy policy replay [--since 24h] [-c FILE] [--json]``: re-judge the decision log
against the policies on disk (``proxy/replay.py``).

Read-only, like ``audit``: the store is opened read-only (SQLite ``mode=ro``, a PostgreSQL
session with ``default_transaction_read_only``); a missing store or a store without a
decision log stops with one line, and nothing is ever created.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import time
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from proxy.config import Settings, load_settings, sqlite_path
from proxy.config_types import parse_duration
from proxy.errors import CommandError, ConfigError, StoreError

WHERE = "run it where the state lives (the folder holding hitl-data/), or pass -c FILE"
NO_LOG = ("has no decision log yet: `hitl-proxy serve` records one (policy.decision_log rows) "
          "from this version on")
QUERY = ("SELECT seq, at, agent, method, host, path, action, rule, shadow, body_cut, input"
         " FROM decision_log WHERE at >= {mark} ORDER BY seq")


def read_sqlite(url: str, since: float) -> list[dict[str, Any]]:
    path = sqlite_path(url.partition("?")[0])
    if not path.is_file():
        raise CommandError(f"no store at {path} (store.url): {WHERE}")
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the SQLite store at {path} read-only: {exc}") from exc
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'decision_log'").fetchone() is None:
            raise CommandError(f"the store at {path} {NO_LOG}")
        cur = conn.execute(QUERY.format(mark="?"), (since,))
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the decision log at {path}: {exc}") from exc
    finally:
        conn.close()


def read_postgres(url: str, since: float) -> list[dict[str, Any]]:
    import psycopg
    from psycopg.conninfo import make_conninfo
    from psycopg.rows import dict_row

    from proxy.store.postgres import safe_url

    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    schema = params.pop("schema", None)
    params.pop("busy_timeout", None)
    options = f"{params.pop('options', '')} -cdefault_transaction_read_only=on"
    if schema:
        options += f" -csearch_path={schema}"
    try:
        conninfo = make_conninfo(urlunsplit(parts._replace(query="")), connect_timeout=10,
                                 options=options.strip(), **params)
        with psycopg.connect(conninfo, row_factory=dict_row) as conn:
            found = conn.execute("SELECT to_regclass('decision_log') AS t").fetchone()
            if found is None or found["t"] is None:
                raise CommandError(f"the PostgreSQL store at {safe_url(url)} {NO_LOG}")
            return conn.execute(QUERY.format(mark="%s"), (since,)).fetchall()
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreError(f"cannot read the decision log at {safe_url(url)}: {first}") from exc


def replay_command(args: argparse.Namespace) -> int:
    from proxy.cli.runtime import load_policy
    from proxy.replay import format_report, replay

    settings: Settings = load_settings(args.config, os.environ)
    try:
        span = parse_duration(args.since, "--since")
    except ConfigError as exc:
        raise CommandError(f"--since: {exc.problem}") from exc
    since = time.time() - span
    url = settings.store.url
    rows = read_sqlite(url, since) if url.startswith("sqlite:") else read_postgres(url, since)
    engine = load_policy(settings)
    try:
        report = asyncio.run(replay(rows, engine, settings.policy.shadow))
    finally:
        engine.close()
    if args.json:
        print(json.dumps({"since": args.since, **report.as_dict()}, indent=2))
        return 0
    note = ""
    share = settings.policy.decision_log_allowed
    if share < 1:
        note = (f"policy.decision_log_allowed is {share:g}: about {share:.0%} of allowed requests were "
                "recorded, so allow counts are a sample.")
    paths = ", ".join(str(p) for p in settings.policy.paths)
    print(format_report(report, args.since, f"the policies in {paths}", note), end="")
    return 0
