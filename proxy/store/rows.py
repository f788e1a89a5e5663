"""The tables' columns and the row → record hydration, the same for every backend."""

from __future__ import annotations

import json
from typing import Any

from proxy.model import AgentRequest, HoldStatus, OnTimeout, UpstreamResponse
from proxy.store.records import AuditRecord, CommentEntry, DecisionEntry, Grant, HoldRecord

# The requests table; each backend maps the Python types to its column types.
REQUEST_COLUMNS: dict[str, type] = {
    "id": str, "status": str, "fingerprint": str, "agent": str, "agent_address": str,
    "method": str, "scheme": str, "host": str, "port": int, "target": str,
    "headers": str, "body": bytes, "message": str, "rule": str, "reviewers": str,
    "approvals_needed": int, "grantable": int, "on_timeout": str,
    "created_at": float, "deadline": float, "updated_at": float,
    "edit_body": bytes, "edit_headers": str, "approved_digest": str, "decided_at": float,
    "response_status": int, "response_headers": str, "response_body": bytes,
    "response_reason": str, "forwarded_at": float, "failure_reason": str,
    "purged_at": float,  # when store.retention stripped its bodies, headers and response
    # The Slack message announcing the record (review.slack): its channel and ts once posted
    # ("" while a process is posting it), and the state the message last showed.
    "slack_channel": str, "slack_ts": str, "slack_shown": str,
    "digest": str,  # the content digest of what would be forwarded now (request + edits)
}
# Who forwards a record in `forwarding` (sql.py, Rule 6), and when each forwarder was last seen.
CLAIM_COLUMNS: dict[str, type] = {"request_id": str, "owner": str}
FORWARDER_COLUMNS: dict[str, type] = {"id": str, "seen": float}
GRANT_COLUMNS: dict[str, type] = {
    "id": str, "agent": str, "method": str, "host": str, "path": str, "created_by": str,
    "request_id": str, "created_at": float, "expires_at": float, "revoked_at": float,
    "revoked_by": str, "scheme": str, "port": int, "rule": str, "approvals": int, "groups": str,
}
DECISION_COLUMNS: dict[str, type] = {
    "request_id": str, "reviewer": str, "verdict": str, "comment": str, "at": float, "digest": str,
}
# Things that may happen once across every process sharing the store (the admin login link).
ONCE_COLUMNS: dict[str, type] = {"key": str, "at": float}
COMMENT_COLUMNS: dict[str, type] = {"request_id": str, "author": str, "comment": str, "at": float}
AUDIT_COLUMNS: dict[str, type] = {
    "seq": int, "at": str, "event": str, "request_id": str, "actor": str, "detail": str,
    "prev_hash": str, "hash": str,
}
# Every table and its columns. Opening a store adds the columns an older store lacks
# (a column added here reaches existing databases without a migration step).
TABLES: dict[str, dict[str, type]] = {
    "requests": REQUEST_COLUMNS, "decisions": DECISION_COLUMNS, "comments": COMMENT_COLUMNS,
    "grants": GRANT_COLUMNS, "claims": CLAIM_COLUMNS, "forwarders": FORWARDER_COLUMNS,
    "audit": AUDIT_COLUMNS, "used_once": ONCE_COLUMNS,
}
# What a listing reads of a body: enough for a 4 KiB preview (and a split UTF-8 character).
SUMMARY_BODY_BYTES = 4096 + 4


def grant_from_row(row: dict[str, Any]) -> Grant:
    return Grant(
        id=row["id"], agent=row["agent"], method=row["method"], host=row["host"], path=row["path"],
        created_by=row["created_by"], request_id=row["request_id"], created_at=row["created_at"],
        expires_at=row["expires_at"], revoked_at=row["revoked_at"], revoked_by=row["revoked_by"],
        scheme=row.get("scheme"), port=row.get("port"), rule=row.get("rule"),
        approvals=row.get("approvals"), groups=tuple(json.loads(row.get("groups") or "[]")))


def hold_from_row(row: dict[str, Any], decisions: tuple[DecisionEntry, ...],
                  comments: tuple[CommentEntry, ...]) -> HoldRecord:
    response = None
    if row["response_status"] is not None and row["response_body"] is not None:
        response = UpstreamResponse(row["response_status"],
                                    tuple(tuple(h) for h in json.loads(row["response_headers"])),
                                    bytes(row["response_body"]), row["response_reason"] or "")
    return HoldRecord(
        id=row["id"], status=HoldStatus(row["status"]), fingerprint=row["fingerprint"],
        agent=row["agent"], agent_address=row["agent_address"] or "",
        request=AgentRequest(row["method"], row["scheme"], row["host"], row["port"], row["target"],
                             tuple(tuple(h) for h in json.loads(row["headers"])),
                             bytes(row["body"] or b"")),
        message=row["message"] or "", rule=row["rule"] or "default",
        reviewers=tuple(json.loads(row["reviewers"] or "[]")),
        approvals_needed=row["approvals_needed"], grantable=bool(row["grantable"]),
        on_timeout=OnTimeout(row["on_timeout"]), created_at=row["created_at"],
        deadline=row["deadline"], updated_at=row["updated_at"],
        decisions=decisions, comments=comments,
        edit_body=None if row["edit_body"] is None else bytes(row["edit_body"]),
        edit_headers=tuple(tuple(h) for h in json.loads(row["edit_headers"])) if row["edit_headers"] else (),
        approved_digest=row["approved_digest"], decided_at=row["decided_at"],
        response=response, response_status=row["response_status"],
        forwarded_at=row["forwarded_at"], failure_reason=row["failure_reason"],
        slack_channel=row.get("slack_channel"), slack_ts=row.get("slack_ts"),
        slack_shown=row.get("slack_shown"), purged_at=row.get("purged_at"),
        body_size=row.get("body_size"), edit_body_size=row.get("edit_body_size"),
        stored_digest=row.get("digest"),
    )


def audit_from_row(row: dict[str, Any]) -> AuditRecord:
    return AuditRecord(int(row["seq"]), row["at"], row["event"], row["request_id"], row["actor"],
                       json.loads(row["detail"]), row["prev_hash"], row["hash"])
