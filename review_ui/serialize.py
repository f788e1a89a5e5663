"""Records as the review API shows them (GET /api/openapi.json): secrets redacted, times RFC 3339."""

from __future__ import annotations

from typing import Any

from proxy import mcp
from proxy.model import Reviewer
from proxy.redact import redact_headers
from proxy.store.records import AuditRecord, Grant, HoldRecord, rfc3339


def _text(body: bytes | None) -> str | None:
    if body is None:
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def request_json(rec: HoldRecord, secret_headers: tuple[str, ...] = (),
                 viewer: Reviewer | None = None) -> dict[str, Any]:
    req = rec.request
    out: dict[str, Any] = {
        "id": rec.id,
        "status": rec.status.value,
        "agent": rec.agent,
        "agent_address": rec.agent_address,
        "method": req.method,
        "url": req.url,
        "host": req.host,
        "path": req.path,
        "headers": redact_headers(req.headers, secret_headers),
        "body_text": _text(req.body),
        "body_size": len(req.body),
        "message": rec.message,
        "rule": rec.rule,
        "reviewers": list(rec.reviewers),
        "approvals_needed": rec.approvals_needed,
        "approvals": len(rec.approved_by),
        "grantable": rec.grantable,
        "on_timeout": rec.on_timeout.value,
        "decisions": [{"reviewer": d.reviewer, "verdict": d.verdict, "comment": d.comment,
                       "at": rfc3339(d.at)} for d in rec.decisions],
        "comments": [{"author": c.author, "comment": c.comment, "at": rfc3339(c.at)}
                     for c in rec.comments],
        "created_at": rfc3339(rec.created_at),
        "deadline": rfc3339(rec.deadline),
        "decided_at": rfc3339(rec.decided_at),
        "forwarded_at": rfc3339(rec.forwarded_at),
        "response_status": rec.response_status,
        "failure_reason": rec.failure_reason,
        "purged_at": rfc3339(rec.purged_at),  # store.retention removed body, headers, response
        "edited": rec.edit_body is not None or bool(rec.edit_headers),
        "mcp": _tool_calls(req.body),  # the MCP tool calls in the body, or null
    }
    if out["edited"]:
        fwd = rec.forward_request()
        out["edit"] = {"headers": redact_headers(fwd.headers, secret_headers),
                       "body_text": _text(fwd.body), "body_size": len(fwd.body),
                       "mcp": _tool_calls(fwd.body)}
    if viewer is not None:
        out["can_decide"] = viewer.may_decide(rec.reviewers)
    return out


def _tool_calls(body: bytes) -> dict[str, Any] | None:
    return mcp.summary(body) if len(body) <= MCP_SUMMARY_LIMIT else None


MCP_SUMMARY_LIMIT = 1024 * 1024  # bodies above this are not read for tool calls


def grant_json(grant: Grant, now: float) -> dict[str, Any]:
    return {
        "id": grant.id, "agent": grant.agent, "method": grant.method, "host": grant.host,
        "path": grant.path, "created_by": grant.created_by, "request_id": grant.request_id,
        "created_at": rfc3339(grant.created_at), "expires_at": rfc3339(grant.expires_at),
        "revoked_at": rfc3339(grant.revoked_at), "revoked_by": grant.revoked_by,
        "active": grant.active(now),
    }


def audit_json(rec: AuditRecord) -> dict[str, Any]:
    return rec.as_dict()
