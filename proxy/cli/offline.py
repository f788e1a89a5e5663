"""Commands that read the local files, without a running server: ``audit`` and ``ca``.

They never create state: pointed at the wrong folder or a mistyped store, a new empty
store would verify as "intact" and a new CA would be one no agent trusts. So each first
checks that what it reads exists, and otherwise stops with one line naming it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import IO, Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from proxy.config import Settings, load_settings, sqlite_path
from proxy.errors import CommandError, StoreError

WHERE = "run it where the state lives (the folder holding hitl-data/), or pass -c FILE"


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, os.environ)


# -- ca --------------------------------------------------------------------------------------

def _ca_cert(settings: Settings) -> Any:
    from proxy.ca import CERT_FILE

    cert = settings.proxy.ca_dir / CERT_FILE
    if not cert.is_file():
        raise CommandError(f"no CA certificate at {cert} (proxy.ca_dir): `hitl-proxy serve` creates it on "
                           f"first start, or `hitl-proxy ca init`; {WHERE}")
    return cert


def ca_path(args: argparse.Namespace) -> int:
    print(_ca_cert(_settings(args)))
    return 0


def ca_export(args: argparse.Namespace) -> int:
    cert = _ca_cert(_settings(args))
    try:
        sys.stdout.write(cert.read_text())
    except OSError as exc:
        raise CommandError(f"cannot read {cert}: {exc.strerror or exc}") from exc
    return 0


def ca_init(args: argparse.Namespace) -> int:
    from proxy.ca import CertificateAuthority

    authority = CertificateAuthority.load_or_create(_settings(args).proxy.ca_dir)
    print(authority.cert_path)
    return 0


# -- audit -----------------------------------------------------------------------------------

def _open_existing(settings: Settings) -> Any:
    """The store's backend, only when the store already exists."""
    from proxy.store import open_backend

    url = settings.store.url
    if url.startswith("sqlite:"):
        path = sqlite_path(url.partition("?")[0])
        if not path.is_file():
            raise CommandError(f"no store at {path} (store.url): {WHERE}")
    elif not _postgres_store_exists(url):
        raise CommandError("no hitl-proxy store in the PostgreSQL database of store.url "
                           "(no audit table in its schema): check store.url")
    return open_backend(url, frozenset(settings.proxy.secret_headers))


def _postgres_store_exists(url: str) -> bool:
    """Whether the schema of a ``postgresql://`` store URL holds the audit table, asked
    without creating anything (opening the backend would create the tables)."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    from proxy.store.postgres import safe_url

    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    schema = params.pop("schema", None)
    params.pop("busy_timeout", None)
    try:
        conninfo = make_conninfo(urlunsplit(parts._replace(query="")), connect_timeout=10, **params)
        with psycopg.connect(conninfo) as conn:
            row = conn.execute("SELECT to_regclass(%s)", (f"{schema}.audit" if schema else "audit",)).fetchone()
    except psycopg.Error as exc:
        raise StoreError(f"cannot open the PostgreSQL store at {safe_url(url)}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc
    return row is not None and row[0] is not None


def audit_verify(args: argparse.Namespace) -> int:
    backend = _open_existing(_settings(args))
    try:
        broken = backend.audit_verify()
        if broken is None:
            count = backend.audit_head()  # an intact chain numbers its records 1..n
            print(f"audit chain intact: {count} records")
            return 0
        print(f"audit chain broken at seq {broken}", file=sys.stderr)
        return 1
    finally:
        backend.close()


def audit_export(args: argparse.Namespace) -> int:
    backend = _open_existing(_settings(args))
    try:
        if args.output:
            try:
                with open(args.output, "w", encoding="utf-8") as out:
                    _export(backend, out)
            except OSError as exc:
                raise CommandError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
        else:
            _export(backend, sys.stdout)
            sys.stdout.flush()  # a closed pipe shows here, inside main's BrokenPipeError handling
        return 0
    finally:
        backend.close()


def _export(backend: Any, out: IO[str]) -> None:
    after = 0
    while True:
        records = backend.audit_list(after=after, limit=1000)
        for rec in records:
            out.write(json.dumps(rec.as_dict(), sort_keys=True) + "\n")
        if len(records) < 1000:
            return
        after = records[-1].seq
