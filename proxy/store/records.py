"""What the pending store keeps: held requests, their decisions and comments, grants, and
the audit chain. Plain frozen values; the store knows nothing of HTTP."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from proxy.model import AgentRequest, HoldStatus, OnTimeout, UpstreamResponse


def new_id(now: float | None = None) -> str:
    """24 hex characters, sortable by creation time (ms), then random."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:012x}{secrets.token_hex(6)}"


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class DecisionEntry:
    reviewer: str
    verdict: str  # approve | reject
    comment: str
    at: float
    digest: str | None = None  # the content digest this reviewer decided on (None: a record from before digests)


@dataclass(frozen=True, slots=True)
class CommentEntry:
    author: str
    comment: str
    at: float


@dataclass(frozen=True, slots=True)
class HoldRecord:
    id: str
    status: HoldStatus
    fingerprint: str
    agent: str
    agent_address: str
    request: AgentRequest
    message: str
    rule: str
    reviewers: tuple[str, ...]
    approvals_needed: int
    grantable: bool
    on_timeout: OnTimeout
    created_at: float
    deadline: float
    updated_at: float
    decisions: tuple[DecisionEntry, ...] = ()
    comments: tuple[CommentEntry, ...] = ()
    edit_body: bytes | None = None
    edit_headers: tuple[tuple[str, str | None], ...] = ()
    approved_digest: str | None = None
    decided_at: float | None = None
    response: UpstreamResponse | None = None
    response_status: int | None = None
    forwarded_at: float | None = None
    failure_reason: str | None = None
    slack_channel: str | None = None  # the Slack message of this record (review.slack)
    slack_ts: str | None = None  # None: not posted; "": being posted (or the post was lost)
    slack_shown: str | None = None  # the state the message last showed
    purged_at: float | None = None  # store.retention stripped its bodies, headers and response
    # Set on the summaries a listing reads (``SqlBackend.list_requests``): ``request.body`` and
    # ``edit_body`` then hold only a prefix, and these say what the whole was.
    body_size: int | None = None
    edit_body_size: int | None = None
    stored_digest: str | None = None

    @property
    def is_summary(self) -> bool:
        return self.body_size is not None

    @property
    def digest(self) -> str | None:
        """The digest approvals bind to: of what was approved, or else of what would be sent now."""
        if self.approved_digest is not None:
            return self.approved_digest
        if self.is_summary:
            return self.stored_digest
        return self.forward_request().content_digest()

    @property
    def approved_by(self) -> tuple[str, ...]:
        """The distinct reviewers whose approval counts: those who approved the current
        content. An edit restarts the count (docs/policies.md); approvals of other bytes do not."""
        digest = self.digest
        names = (d.reviewer for d in self.decisions
                 if d.verdict == "approve" and (d.digest is None or d.digest == digest))
        return tuple(dict.fromkeys(names))

    @property
    def rejection(self) -> DecisionEntry | None:
        return next((d for d in self.decisions if d.verdict == "reject"), None)

    def forward_request(self) -> AgentRequest:
        """The request as it will be forwarded: the stored one with the reviewer's edits."""
        req = self.request
        if not self.edit_headers and self.edit_body is None:
            return req
        headers = list(req.headers)
        for name, value in self.edit_headers:
            headers = [(n, v) for n, v in headers if n.lower() != name.lower()]
            if value is not None:
                headers.append((name, value))
        body = req.body if self.edit_body is None else self.edit_body
        return replace(req, headers=tuple(headers), body=body)


@dataclass(frozen=True, slots=True)
class Grant:
    """Standing approval for later requests of one scope (docs/policies.md): the same agent, scheme,
    host, port, method and path, whose own decision is a grantable hold of ``rule`` that
    ``created_by`` (with ``groups``) may decide and that needs at most ``approvals``."""

    id: str
    agent: str
    method: str
    host: str
    path: str
    created_by: str
    request_id: str | None
    created_at: float
    expires_at: float
    revoked_at: float | None = None
    revoked_by: str | None = None
    scheme: str | None = None  # None: a grant from before scopes; it covers nothing
    port: int | None = None
    rule: str | None = None
    approvals: int | None = None
    groups: tuple[str, ...] = ()

    def active(self, now: float) -> bool:
        return self.revoked_at is None and self.expires_at > now


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    at: str
    event: str
    request_id: str | None
    actor: str
    detail: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS
    hash: str = ""

    def body(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "at": self.at, "event": self.event, "request_id": self.request_id,
            "actor": self.actor, "detail": self.detail,
        }

    def compute_hash(self) -> str:
        """SHA-256 over the previous hash and this record's canonical JSON."""
        return hashlib.sha256((self.prev_hash + canonical(self.body())).encode()).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        return {**self.body(), "prev_hash": self.prev_hash, "hash": self.hash}
