"""``hitl-proxy pending|show|approve|reject|comment|grants``: a small client of the review API."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from proxy.config import Settings, load_settings
from proxy.credentials import admin_token_path
from proxy.errors import CommandError


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


@contextmanager
def _api(args: argparse.Namespace) -> Iterator[httpx.Client]:
    settings = load_settings(args.config, os.environ)
    base = _base_url(args, settings)
    token = _token(args, settings)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30, trust_env=False) as client:
            yield client
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach the review API at {base}: {exc or type(exc).__name__} "
                           "(is `hitl-proxy serve` running? give its address with --url or HITL_URL)",
                           exit_code=1) from exc


def _answer(response: httpx.Response) -> Any:
    """The JSON of a successful answer; a one-line ``CommandError`` for any other."""
    try:
        data = response.json()
    except ValueError:
        data = {"message": response.text.strip()[:200]}
    if response.status_code < 400:
        return data
    if response.status_code == 401:
        raise CommandError(
            f"401 unauthorized at {response.request.url.copy_with(path='/', query=None)}: pass a "
            "reviewer's token with --token or HITL_TOKEN, or -c the config whose data_dir holds "
            "the admin token that `serve` wrote", exit_code=1)
    message = data.get("message", "") if isinstance(data, dict) else ""
    code = data.get("error", "") if isinstance(data, dict) else ""
    raise CommandError(f"{response.status_code} {code}: {message}".replace(" : ", ": "), exit_code=1)


def pending(args: argparse.Namespace) -> int:
    with _api(args) as client:
        items = _answer(client.get("/api/requests", params={"status": args.status, "limit": 200}))["items"]
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        print(f"no {args.status.replace(',', ' or ')} requests")
        return 0
    for rec in sorted(items, key=lambda r: r["deadline"] or ""):
        print(f"{rec['id']}  {rec['agent']:<16} {rec['method']:<6} {rec['url']}")
        print(f"    {rec['message'] or '(no message)'}")
        if rec.get("mcp") and rec["mcp"]["tools"]:
            print(f"    MCP: calls {', '.join(rec['mcp']['tools'])}")
        if rec["status"] == "pending":
            print(f"    {rec['approvals']}/{rec['approvals_needed']} approvals, deadline {rec['deadline']}")
        else:
            print(f"    {rec['status']}")
    return 0


def show(args: argparse.Namespace) -> int:
    with _api(args) as client:
        rec = _answer(client.get(f"/api/requests/{args.id}"))
        grants = _answer(client.get("/api/grants", params={"all": "1"}))["items"]
    made = [g for g in grants if g.get("request_id") == rec["id"]]
    if args.json:
        print(json.dumps({**rec, "grants": made}, indent=2))
        return 0
    for line in _describe(rec, made):
        print(line)
    return 0


def _describe(rec: dict[str, Any], grants: list[dict[str, Any]]) -> Iterator[str]:
    yield f"{rec['id']}  {rec['status']}"
    yield f"  message:   {rec['message'] or '(no message)'}"
    yield f"  agent:     {rec['agent']} from {rec.get('agent_address') or '?'}"
    yield f"  request:   {rec['method']} {rec['url']}"
    reviewers = ", ".join(rec["reviewers"]) or "any reviewer"
    yield f"  rule:      {rec.get('rule') or 'default'}; {rec['approvals']}/{rec['approvals_needed']} " \
          f"approvals; reviewers: {reviewers}"
    yield f"  created:   {rec['created_at']}; deadline {rec['deadline']}"
    if rec.get("decided_at"):
        yield f"  decided:   {rec['decided_at']}"
    if rec.get("forwarded_at") or rec.get("response_status") is not None:
        yield f"  response:  {rec.get('response_status')} (forwarded {rec.get('forwarded_at')})"
    if rec.get("failure_reason"):
        yield f"  failed:    {rec['failure_reason']}"
    yield from _tool_calls(rec.get("mcp"), "  MCP tool call")
    if rec.get("edited") and rec.get("edit"):
        yield from _tool_calls(rec["edit"].get("mcp"), "  edited by a reviewer; MCP tool call")
    yield "  headers:"
    for name, value in _header_items(rec["headers"]):
        yield f"    {name}: {value}"
    size = rec.get("body_size", 0)
    if rec.get("body_text") is not None and size:
        yield f"  body ({size} bytes):"
        yield from (f"    {line}" for line in rec["body_text"].splitlines())
    else:
        yield f"  body: {'none' if not size else f'{size} bytes, not text (GET /api/requests/ID/body)'}"
    if rec.get("edited") and rec.get("edit"):
        yield "  edited by a reviewer; forwarded as:"
        yield from (f"    {line}" for line in (rec["edit"].get("body_text") or "").splitlines())
    for d in rec["decisions"]:
        yield f"  decision:  {d['at']} {d['reviewer']} {d['verdict']}" + (f": {d['comment']}" if d["comment"] else "")
    for c in rec["comments"]:
        yield f"  comment:   {c['at']} {c['author']}: {c['comment']}"
    for g in grants:
        state = "active" if g["active"] else ("revoked" if g["revoked_at"] else "expired")
        yield f"  grant:     {g['id']} by {g['created_by']} until {g['expires_at']} ({state})"


def _tool_calls(summary: Any, title: str) -> Iterator[str]:
    """An MCP message's calls: each tool (or method) and its arguments, pretty."""
    if not isinstance(summary, dict):
        return
    for call in summary["calls"]:
        if call["tool"] is None:
            yield f"{title}: {call['method'] or '(a response)'}"
            continue
        yield f"{title}: {call['tool']}, arguments:"
        pretty = json.dumps(call["arguments"] if call["arguments"] is not None else {}, indent=2,
                            ensure_ascii=False)
        yield from (f"    {line}" for line in pretty.splitlines())


def _header_items(headers: Any) -> list[tuple[str, str]]:
    if isinstance(headers, dict):
        return [(str(k), str(v)) for k, v in headers.items()]
    return [(str(k), str(v)) for k, v in headers]


def decide(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"comment": args.comment or ""}
    if args.command == "approve" and args.grant_minutes:
        payload["grant_minutes"] = args.grant_minutes
    with _api(args) as client:
        rec = _answer(client.post(f"/api/requests/{args.id}/{args.command}", json=payload))
    if args.command == "comment":
        print(f"{rec['id']}: commented ({rec['status']})")
    elif rec["status"] == "pending":  # a quorum: more approvals needed
        print(f"{rec['id']}: pending ({rec['approvals']}/{rec['approvals_needed']} approvals)")
    else:
        print(f"{rec['id']}: {rec['status']}")
    return 0


def grants(args: argparse.Namespace) -> int:
    with _api(args) as client:
        items = _answer(client.get("/api/grants", params={"all": "1"} if args.all else {}))["items"]
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        print("no grants" if args.all else "no active grants")
        return 0
    for g in items:
        state = "active" if g["active"] else ("revoked by " + str(g["revoked_by"]) if g["revoked_at"]
                                              else "expired")
        print(f"{g['id']}  {g['agent']:<16} {g['method']:<6} {g['host']}{g['path']}")
        print(f"    by {g['created_by']} (request {g['request_id']}), until {g['expires_at']}, {state}")
    return 0


def revoke(args: argparse.Namespace) -> int:
    with _api(args) as client:
        grant = _answer(client.delete(f"/api/grants/{args.grant_id}"))
    print(f"{grant['id']}: revoked")
    return 0
