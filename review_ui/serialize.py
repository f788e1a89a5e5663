"""Records as the review API shows them (GET /api/openapi.json): secrets redacted, times RFC 3339."""

from __future__ import annotations

from typing import Any

from proxy import mcp
from proxy.model import Reviewer, utf8_text
from proxy.redact import redact_headers, redact_url
from proxy.store.records import AuditRecord, Grant, HoldRecord, rfc3339

LIST_BODY_BYTES = 4096  # body_text of a listed item (the review API)
DETAIL_BODY_BYTES = 1024 * 1024  # body_text of one request; the rest at /api/requests/{id}/body



def _text(body: bytes, limit: int, size: int) -> tuple[str | None, bool]:
    """The first ``limit`` bytes of a ``size``-byte body as UTF-8 text (None: not text), and
    whether the body is longer than that. A cut through a multi-byte character drops its
    first bytes rather than calling the whole body binary."""
    truncated = size > limit
    chunk = body[:limit]
    for trim in range(4 if truncated else 1):
        text = utf8_text(chunk[:len(chunk) - trim])
        if text is not None:
            return text, truncated
    return None, truncated


def may_decide(viewer: Reviewer, rec: HoldRecord) -> bool:
    """Eligible by the policy's ``reviewers``, and not the agent itself (docs/policies.md)."""
    return viewer.name != rec.agent and viewer.may_decide(rec.reviewers)


def request_json(rec: HoldRecord, secret_headers: tuple[str, ...] = (),
                 viewer: Reviewer | None = None, body_limit: int | None = None) -> dict[str, Any]:
    """A record as the API shows it. Summaries from a listing (``rec.is_summary``) carry at
    most ``LIST_BODY_BYTES`` of body text, a full record at most ``DETAIL_BODY_BYTES``."""
    req = rec.request
    limit = body_limit or (LIST_BODY_BYTES if rec.is_summary else DETAIL_BODY_BYTES)
    size = rec.body_size if rec.body_size is not None else len(req.body)
    body_text, body_truncated = _text(req.body, limit, size)
    out: dict[str, Any] = {
        "id": rec.id,
        "status": rec.status.value,
        "agent": rec.agent,
        "agent_address": rec.agent_address,
        "method": req.method,
        "url": redact_url(req.url),
        "host": req.host,
        "path": req.path,
        "headers": redact_headers(req.headers, secret_headers),
        "body_text": body_text,
        "body_truncated": body_truncated,
        "body_size": size,
        "digest": rec.digest,
        "message": rec.message,
        "rule": rec.rule,
        "reviewers": list(rec.reviewers),
        "approvals_needed": rec.approvals_needed,
        "approvals": len(rec.approved_by),
        "grantable": rec.grantable,
        "on_timeout": rec.on_timeout.value,
        "decisions": [{"reviewer": d.reviewer, "verdict": d.verdict, "comment": d.comment,
                       "at": rfc3339(d.at), "digest": d.digest} for d in rec.decisions],
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
        edit_size = len(fwd.body)
        if rec.edit_body is None:
            edit_size = size
        elif rec.edit_body_size is not None:
            edit_size = rec.edit_body_size
        edit_text, edit_truncated = _text(fwd.body, limit, edit_size)
        out["edit"] = {"headers": redact_headers(fwd.headers, secret_headers), "body_text": edit_text,
                       "body_truncated": edit_truncated, "body_size": edit_size,
                       "mcp": _tool_calls(fwd.body)}
    if viewer is not None:
        out["can_decide"] = may_decide(viewer, rec)
    return out


def _tool_calls(body: bytes) -> dict[str, Any] | None:
    return mcp.summary(body) if len(body) <= MCP_SUMMARY_LIMIT else None


MCP_SUMMARY_LIMIT = 1024 * 1024  # bodies above this are not read for tool calls


def grant_json(grant: Grant, now: float) -> dict[str, Any]:
    return {
        "id": grant.id, "agent": grant.agent, "method": grant.method, "host": grant.host,
        "path": grant.path, "created_by": grant.created_by, "request_id": grant.request_id,
        "scheme": grant.scheme, "port": grant.port, "rule": grant.rule, "approvals": grant.approvals,
        "created_at": rfc3339(grant.created_at), "expires_at": rfc3339(grant.expires_at),
        "revoked_at": rfc3339(grant.revoked_at), "revoked_by": grant.revoked_by,
        "active": grant.active(now),
    }


def audit_json(rec: AuditRecord) -> dict[str, Any]:
    return rec.as_dict()
