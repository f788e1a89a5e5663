"""``hitl-proxy pending|approve|reject|comment``: a small client of the review API."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import httpx

from proxy.config import Settings
from proxy.credentials import admin_token_path


def _base_url(args: argparse.Namespace, settings: Settings) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    listen = settings.review.listen
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "") else listen.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{listen.port}"


def _token(args: argparse.Namespace, settings: Settings) -> str | None:
    if args.token:
        return str(args.token)
    # The local admin token that `serve` writes when no reviewer is configured.
    path = admin_token_path(settings.data_dir)
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def run_client(args: argparse.Namespace, settings: Settings) -> int:
    base = _base_url(args, settings)
    token = _token(args, settings)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30, trust_env=False) as client:
            if args.command == "pending":
                return _pending(client, args)
            payload: dict[str, Any] = {"comment": args.comment or ""}
            if args.command == "approve" and args.grant_minutes:
                payload["grant_minutes"] = args.grant_minutes
            response = client.post(f"/api/requests/{args.id}/{args.command}", json=payload)
            return _report(response, lambda rec: f"{rec['id']}: {rec['status']}"
                           f" ({rec['approvals']}/{rec['approvals_needed']} approvals)")
    except httpx.HTTPError as exc:
        print(f"hitl-proxy: cannot reach the review API at {base}: {exc}", file=sys.stderr)
        return 1


def _pending(client: httpx.Client, args: argparse.Namespace) -> int:
    response = client.get("/api/requests", params={"status": args.status, "limit": 200})
    if response.status_code != 200:
        return _report(response, str)
    items = response.json()["items"]
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        print(f"no {args.status} requests")
        return 0
    for rec in sorted(items, key=lambda r: r["deadline"] or ""):
        print(f"{rec['id']}  {rec['agent']:<16} {rec['method']:<6} {rec['url']}")
        print(f"    {rec['message'] or '(no message)'}")
        print(f"    {rec['approvals']}/{rec['approvals_needed']} approvals, deadline {rec['deadline']}")
    return 0


def _report(response: httpx.Response, ok: Any) -> int:
    try:
        data = response.json()
    except ValueError:
        data = {"message": response.text}
    if response.status_code >= 400:
        print(f"hitl-proxy: {response.status_code} {data.get('error', '')}: {data.get('message', '')}",
              file=sys.stderr)
        return 1
    print(ok(data))
    return 0
