"""Commands that work on the local files, without a running server: audit, ca, policy."""

from __future__ import annotations

import argparse
import json
import sys

from proxy.config import Settings


def audit(settings: Settings, action: str, output: str | None) -> int:
    from proxy.store import open_backend

    backend = open_backend(settings.store.url, frozenset(settings.proxy.secret_headers))
    try:
        if action == "verify":
            broken = backend.audit_verify()
            if broken is None:
                count = backend.audit_head()  # an intact chain numbers its records 1..n
                print(f"audit chain intact: {count} records")
                return 0
            print(f"audit chain broken at seq {broken}", file=sys.stderr)
            return 1
        out = open(output, "w") if output else sys.stdout  # noqa: SIM115 - closed below
        try:
            after = 0
            while True:
                records = backend.audit_list(after=after, limit=1000)
                for rec in records:
                    out.write(json.dumps(rec.as_dict(), sort_keys=True) + "\n")
                if len(records) < 1000:
                    break
                after = records[-1].seq
        finally:
            if output:
                out.close()
        return 0
    finally:
        backend.close()


def ca(settings: Settings, action: str) -> int:
    from proxy.ca import CertificateAuthority

    authority = CertificateAuthority.load_or_create(settings.proxy.ca_dir)
    if action == "path":
        print(authority.cert_path)
    else:
        sys.stdout.write(authority.cert_path.read_text())
    return 0


def policy(args: argparse.Namespace, settings: Settings) -> int:
    from proxy.cli.policy_cmd import run

    return run(args, settings)
