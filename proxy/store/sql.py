"""The pending store's logic, shared by the SQLite and PostgreSQL backends.

Theory of operation
-------------------
Rule 1. The store is the single source of truth for a held request. In-memory waiters in
        the gate are only wake-ups; every answer the agent gets is read from here.
Rule 2. Every lifecycle transition is one conditional UPDATE (``... WHERE status = ?``)
        inside one write transaction, together with its audit record. Write transactions
        run one at a time across every process sharing the store (SQLite: ``BEGIN
        IMMEDIATE``; PostgreSQL: a transaction-level advisory lock taken first). A
        transition the state table (``model.TRANSITIONS``) does not allow raises
        ``InvalidTransition``; a lost race shows up as rowcount 0, never as a double move.
Rule 3. Only the holder of a successful ``claim`` (approved → forwarding) forwards.
Rule 4. Secret headers are kept only while the request may still be forwarded; on reaching
        a final state they are overwritten with "[redacted]".
Rule 5. The audit chain is appended in the same transaction as the change it describes,
        so the chain and the records never disagree; with writers serialized (Rule 2) its
        seq grows by one, with no gaps, in commit order.
Rule 6. A claim records its owner, the forwarding process (``host:pid:nonce``), which
        heartbeats while it lives. ``recover`` fails a record in `forwarding` only when its
        owner is gone: a dead pid on this host, or no heartbeat for ``FORWARDER_LEASE``
        seconds. Several processes (workers, pods) can share a store and restart one by one
        without cutting short each other's forwards.

A backend supplies the plumbing: ``_tx`` (the serialized write transaction), ``_exec``
(a statement, returning its rowcount) and ``_q`` (a query, returning dict rows), with
``?`` placeholders, plus ``ping`` and ``close``. All methods are synchronous and must
run on one thread (``store.AsyncStore`` does that).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

from proxy import mcp
from proxy.config_types import store_busy_timeout
from proxy.errors import (
    BadRequest,
    ConfigError,
    DigestMismatch,
    InvalidTransition,
    NotFound,
    StoreError,
    TooManyPending,
)
from proxy.model import AgentRequest, HoldStatus, OnTimeout, UpstreamResponse, can_transition
from proxy.redact import REDACTED, Redactor, redact_url
from proxy.store.records import (
    GENESIS,
    AuditRecord,
    CommentEntry,
    DecisionEntry,
    Grant,
    HoldRecord,
    new_id,
    rfc3339,
)
from proxy.store.rows import (
    REQUEST_COLUMNS,
    SUMMARY_BODY_BYTES,
    audit_from_row,
    grant_from_row,
    hold_from_row,
)
from proxy.store.tuning import TuningQueries

# A listing reads a prefix of each body and no stored response: a queue of large holds
# costs kilobytes, not their bodies (the review API). substr/length count bytes on a BLOB/BYTEA.
_SUMMARY_COLUMNS = ", ".join(
    f"substr({c}, 1, {SUMMARY_BODY_BYTES}) AS {c}" if c in ("body", "edit_body")
    else f"NULL AS {c}" if c == "response_body" else c
    for c in REQUEST_COLUMNS
) + ", COALESCE(length(body), 0) AS body_size, length(edit_body) AS edit_body_size"

AUDIT_PAGE = 1000
RETENTION_BATCH = 500  # records one retention sweep strips per write transaction
FINAL_SQL = "'forwarded','rejected','expired','failed'"
FORWARDER_LEASE = 30.0  # seconds without a heartbeat after which a forwarder counts as gone
HEARTBEAT_SECONDS = 5.0


def busy_timeout(value: str | None) -> float:
    """``busy_timeout=SECONDS`` of a store URL (default 10); the config loader checks it
    first, with the same function."""
    try:
        return store_busy_timeout(value)
    except ConfigError as exc:
        raise StoreError(str(exc)) from exc


def _pid_space() -> str:
    """Where a pid names one process: the host, its boot, the pid namespace (containers on
    one host share the boot but not the namespace). "?" where Linux cannot tell."""
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8])
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        parts.append("?")
    return "/".join(parts)


PID_SPACE = _pid_space()


def new_owner() -> str:
    """This process's name as a forwarder: where its pid means it, the pid, and a nonce (a
    pid is reused)."""
    return f"{PID_SPACE}:{os.getpid()}:{secrets.token_hex(4)}"


def owner_gone(owner: str) -> bool:
    """True when ``owner`` is a process of this pid space (``_pid_space``) that no longer runs."""
    space, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if space != PID_SPACE or "?" in space or not pid.isdigit():
        return False  # elsewhere: only its lease can tell
    return pid_gone(int(pid))


def pid_gone(pid: int) -> bool:
    """True when no process of this pid space has ``pid``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


class SqlBackend(TuningQueries):  # tuning.py: shadow events, decision log, insights
    # The case-insensitive LIKE of the dialect (SQLite's LIKE already ignores ASCII case).
    _LIKE = "LIKE"

    def __init__(self, secret_headers: frozenset[str]) -> None:
        self._redactor = Redactor(secret_headers)

    # -- plumbing: _tx, _exec and _q are supplied by the backend (declared in tuning.py) --
    def _scalar(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        rows = self._q(sql, params)
        return next(iter(rows[0].values())) if rows else None

    # -- audit ---------------------------------------------------------------------------
    def _audit(self, now: float, event: str, request_id: str | None, actor: str,
               detail: dict[str, Any]) -> None:
        last = self._q("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        seq, prev = (int(last[0]["seq"]) + 1, last[0]["hash"]) if last else (1, GENESIS)
        rec = AuditRecord(seq, rfc3339(now) or "", event, request_id, actor, detail, prev)
        self._exec(
            "INSERT INTO audit (seq, at, event, request_id, actor, detail, prev_hash, hash)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (seq, rec.at, event, request_id, actor, json.dumps(detail, sort_keys=True), prev,
             rec.compute_hash()),
        )

    def audit_append(self, now: float, event: str, request_id: str | None, actor: str,
                     detail: dict[str, Any]) -> None:
        with self._tx():
            self._audit(now, event, request_id, actor, detail)

    def audit_list(self, *, after: int = 0, limit: int = 100,
                   request_id: str | None = None) -> list[AuditRecord]:
        sql = "SELECT * FROM audit WHERE seq > ?"
        params: list[Any] = [after]
        if request_id:
            sql += " AND request_id = ?"
            params.append(request_id)
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
        return [audit_from_row(r) for r in self._q(sql, params)]

    def audit_head(self) -> int:
        """The seq of the newest audit record (0 when none)."""
        return int(self._scalar("SELECT COALESCE(MAX(seq), 0) AS seq FROM audit"))

    def audit_verify(self) -> int | None:
        """The seq of the first record whose hash or link is broken, or None when intact."""
        prev, expected_seq, after = GENESIS, 1, -(2**63)
        while True:
            rows = self._q("SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", (after, AUDIT_PAGE))
            for row in rows:
                rec = audit_from_row(row)
                if rec.seq != expected_seq or rec.prev_hash != prev or rec.compute_hash() != rec.hash:
                    return rec.seq
                prev, expected_seq, after = rec.hash, rec.seq + 1, rec.seq
            if len(rows) < AUDIT_PAGE:
                return None

    # -- held requests -------------------------------------------------------------------
    def create(self, rec: HoldRecord) -> HoldRecord:
        with self._tx():
            self._insert(rec)
        return rec

    def create_or_attach(self, rec: HoldRecord, replay_window: float,
                         max_pending: int | None = None) -> tuple[HoldRecord, bool]:
        """Rule 3 made atomic: the lookup by fingerprint and the insert share one write
        transaction, so identical requests arriving together make one review item.
        ``max_pending`` (``hold.max_pending_per_agent``) is counted in that same
        transaction: with writers serialized (Rule 2), concurrent holds of one agent can
        never pass it together. Returns (record, created); TooManyPending past the limit."""
        with self._tx():
            found = self.find_by_fingerprint(rec.fingerprint, rec.created_at, replay_window)
            if found is not None:
                return found, False
            if max_pending is not None and self.count_pending(rec.agent) >= max_pending:
                raise TooManyPending(f"This request needs human review, but agent {rec.agent} already "
                                     f"has {max_pending} requests waiting for review, so it was not "
                                     "queued or sent. Wait for those decisions, then retry after "
                                     "Retry-After seconds.")
            self._insert(rec)
        return rec, True

    def _insert(self, rec: HoldRecord) -> None:
        req = rec.request
        self._exec(
            "INSERT INTO requests (id, status, fingerprint, agent, agent_address, method, scheme,"
            " host, port, target, headers, body, message, rule, reviewers, approvals_needed,"
            " grantable, on_timeout, created_at, deadline, updated_at, digest)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (rec.id, rec.status.value, rec.fingerprint, rec.agent, rec.agent_address,
             req.method, req.scheme, req.host, req.port, req.target,
             json.dumps(list(req.headers)), req.body, rec.message, rec.rule,
             json.dumps(list(rec.reviewers)), rec.approvals_needed, int(rec.grantable),
             rec.on_timeout.value, rec.created_at, rec.deadline, rec.created_at,
             req.content_digest()),
        )
        self._audit(rec.created_at, "hold", rec.id, rec.agent, {
            "method": req.method, "url": redact_url(req.url), "rule": rec.rule, "message": rec.message,
            "body_sha256": req.body_digest(), "deadline": rfc3339(rec.deadline),
            "reviewers": list(rec.reviewers), "approvals_needed": rec.approvals_needed,
            **_tool(req.body),
        })

    def get(self, request_id: str) -> HoldRecord | None:
        rows = self._q("SELECT * FROM requests WHERE id = ?", (request_id,))
        return self._hydrate(rows[0]) if rows else None

    def status(self, request_id: str) -> HoldStatus | None:
        """The record's status alone: what a waiting agent reads when it is woken (one column,
        no body, no decisions)."""
        value = self._scalar("SELECT status FROM requests WHERE id = ?", (request_id,))
        return None if value is None else HoldStatus(value)

    def _must_get(self, request_id: str) -> HoldRecord:
        rec = self.get(request_id)
        if rec is None:
            raise NotFound(f"no held request {request_id}")
        return rec

    def find_by_fingerprint(self, fingerprint: str, now: float, replay_window: float) -> HoldRecord | None:
        """The record a new request with this fingerprint attaches to: a live one (pending,
        approved, forwarding), one forwarded within the replay window (its response is
        replayed), or one rejected within it (the refusal is repeated, not re-queued)."""
        rows = self._q(
            "SELECT * FROM requests WHERE fingerprint = ? AND (status IN ('pending','approved','forwarding')"
            " OR (status = 'forwarded' AND forwarded_at >= ?) OR (status = 'rejected' AND decided_at >= ?))"
            " ORDER BY id DESC LIMIT 1",
            (fingerprint, now - replay_window, now - replay_window),
        )
        return self._hydrate(rows[0]) if rows else None

    def count_pending(self, agent: str | None = None) -> int:
        if agent is None:
            return int(self._scalar("SELECT count(*) AS n FROM requests WHERE status='pending'"))
        return int(self._scalar("SELECT count(*) AS n FROM requests WHERE status='pending' AND agent=?",
                                (agent,)))

    def oldest_pending(self) -> float | None:
        """created_at of the oldest pending record (the metrics' hitl_oldest_pending_age_seconds)."""
        return self._scalar("SELECT min(created_at) AS t FROM requests WHERE status='pending'")  # type: ignore[no-any-return]

    def count_by_status(self) -> dict[str, int]:
        return {r["status"]: int(r["n"])
                for r in self._q("SELECT status, count(*) AS n FROM requests GROUP BY status")}

    def list_requests(self, *, statuses: list[str] | None = None, agent: str | None = None,
             host: str | None = None, text: str | None = None, limit: int = 50,
             cursor: str | None = None) -> tuple[list[HoldRecord], str | None]:
        """Summaries, newest first: each body is a prefix (``HoldRecord.is_summary``)."""
        where: list[str] = ["1=1"]
        params: list[Any] = []
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            params.extend(statuses)
        if agent:
            where.append("agent = ?")
            params.append(agent)
        if host:
            where.append("host = ?")
            params.append(host)
        if text:
            like = self._LIKE
            where.append(f"(message {like} ? OR target {like} ? OR host {like} ? OR agent {like} ?)")
            params.extend([f"%{text}%"] * 4)
        if cursor:
            where.append("id < ?")
            params.append(cursor)
        rows = self._q(f"SELECT {_SUMMARY_COLUMNS} FROM requests WHERE {' AND '.join(where)}"
                       " ORDER BY id DESC LIMIT ?", [*params, limit + 1])
        items = [self._hydrate(r) for r in rows[:limit]]
        next_cursor = items[-1].id if len(rows) > limit else None
        return items, next_cursor

    # -- decisions -----------------------------------------------------------------------
    def decide(self, request_id: str, reviewer: str, verdict: str, comment: str, now: float, *,
               edit_body: bytes | None = None, edit_headers: tuple[tuple[str, str | None], ...] = (),
               approval_deadline: float | None = None, audit_detail: dict[str, Any] | None = None,
               seen_digest: str | None = None, grant_minutes: int | None = None,
               reviewer_groups: tuple[str, ...] = ()) -> HoldRecord:
        """Record one reviewer's approve/reject, all in one transaction (docs/policies.md):

        - ``seen_digest``, when given, must still be the content's digest (else 409).
        - An edit rides on the approval that carries it and is applied on top of earlier
          edits; each decision records the digest of the content it decided on, and only
          approvals of the current content count, so an edit restarts the count.
        - Any rejection rejects; the approval that reaches the quorum approves, binding
          ``approved_digest``, and creates the grant ``grant_minutes`` asks for. A grant on
          an approval that does not complete the quorum is a ``BadRequest``: nothing changes.
        """
        with self._tx():
            rec = self._must_get(request_id)
            wanted = HoldStatus.REJECTED if verdict == "reject" else HoldStatus.APPROVED
            if rec.status is not HoldStatus.PENDING:
                raise InvalidTransition(request_id, rec.status.value, wanted.value)
            if rec.deadline <= now:  # the deadline won; the deadline loop just has not run yet
                due = HoldStatus.APPROVED if rec.on_timeout is OnTimeout.ALLOW else HoldStatus.EXPIRED
                raise InvalidTransition(request_id, due.value, wanted.value)
            current = rec.forward_request().content_digest()
            if seen_digest is not None and seen_digest != current:
                raise DigestMismatch(request_id, current)
            if verdict == "approve" and reviewer in rec.approved_by:
                raise InvalidTransition(request_id, rec.status.value, wanted.value,
                                        f"{reviewer} has already decided it (approved this very content)")
            if edit_body is not None or edit_headers:
                merged = dict(rec.edit_headers)
                for name, value in edit_headers:
                    merged = {k: v for k, v in merged.items() if k.lower() != name.lower()}
                    merged[name] = value
                rec = replace(rec, edit_body=rec.edit_body if edit_body is None else edit_body,
                              edit_headers=tuple(merged.items()))
                digest = rec.forward_request().content_digest()
                self._exec("UPDATE requests SET edit_body = ?, edit_headers = ?, digest = ?, updated_at = ?"
                           " WHERE id = ?", (rec.edit_body, json.dumps(list(rec.edit_headers)) if rec.edit_headers else None,
                                             digest, now, request_id))
            else:
                digest = current
            approvers = [*rec.approved_by, reviewer] if verdict == "approve" else []
            completes = len(approvers) >= rec.approvals_needed
            if grant_minutes is not None and not completes:
                raise BadRequest(
                    f"grant_minutes is only allowed on the approval that completes the quorum; this "
                    f"request needs {rec.approvals_needed} approvals of the same content and would have "
                    f"{len(approvers)}")
            self._exec(
                "INSERT INTO decisions (request_id, reviewer, verdict, comment, at, digest) VALUES (?,?,?,?,?,?)",
                (request_id, reviewer, verdict, comment, now, digest),
            )
            tool = _tool(rec.request.body)  # an MCP tool call: its tool, in every decision event
            self._audit(now, verdict, request_id, reviewer,
                        {"comment": comment, "digest": digest, **tool, **(audit_detail or {})})
            if verdict == "reject":
                self._move(rec, HoldStatus.REJECTED, now, "decided_at = ?", (now,))
                self._scrub(request_id)
                self._audit(now, "rejected", request_id, reviewer, tool)
            elif completes:
                deadline = max(rec.deadline, approval_deadline or rec.deadline)
                self._move(rec, HoldStatus.APPROVED, now,
                           "decided_at = ?, approved_digest = ?, deadline = ?", (now, digest, deadline))
                self._audit(now, "approved", request_id, reviewer, {"approved_by": approvers, "digest": digest, **tool})
                if grant_minutes is not None:
                    req = rec.request
                    self._insert_grant(Grant(
                        new_id(now), rec.agent, req.method, req.host, req.path, reviewer, request_id, now,
                        now + grant_minutes * 60, scheme=req.scheme, port=req.port, rule=rec.rule,
                        approvals=rec.approvals_needed, groups=reviewer_groups), grant_minutes)
        return self._must_get(request_id)

    def add_comment(self, request_id: str, author: str, comment: str, now: float) -> HoldRecord:
        with self._tx():
            self._must_get(request_id)
            self._exec(
                "INSERT INTO comments (request_id, author, comment, at) VALUES (?,?,?,?)",
                (request_id, author, comment, now),
            )
            self._audit(now, "comment", request_id, author, {"comment": comment})
        return self._must_get(request_id)

    def claim(self, request_id: str, now: float, owner: str | None = None) -> HoldRecord | None:
        """approved → forwarding; the caller that gets a record back is the one that forwards.
        An approval past its deadline is never forwarded: it expires here, in the same
        transaction, so a retry that races the deadline loop cannot slip it through."""
        with self._tx():
            moved = self._exec(
                "UPDATE requests SET status='forwarding', updated_at=? WHERE id=? AND status='approved'"
                " AND deadline > ?",
                (now, request_id, now),
            )
            if moved != 1:
                rec = self.get(request_id)
                if rec is not None and rec.status is HoldStatus.APPROVED:  # past its deadline
                    self._move(rec, HoldStatus.EXPIRED, now, "decided_at=COALESCE(decided_at, ?)", (now,))
                    self._scrub(rec.id)
                    self._audit(now, "expired", rec.id, "timeout", {"was": rec.status.value})
                return None
            if owner is not None:
                self._exec("INSERT INTO claims (request_id, owner) VALUES (?, ?)", (request_id, owner))
            self._audit(now, "forwarding", request_id, "proxy", {})
        return self._must_get(request_id)

    def complete(self, request_id: str, response: UpstreamResponse, now: float,
                 keep_body_limit: int) -> HoldRecord:
        body = response.body if len(response.body) <= keep_body_limit else None
        with self._tx():
            rec = self._must_get(request_id)
            self._move(rec, HoldStatus.FORWARDED, now,
                       "forwarded_at=?, response_status=?, response_headers=?, response_body=?,"
                       " response_reason=?",
                       (now, response.status, json.dumps(list(response.headers)), body, response.reason))
            self._scrub(request_id)
            self._audit(now, "forwarded", request_id, "proxy", {"status": response.status,
                                                                "response_bytes": len(response.body)})
        return self._must_get(request_id)

    def fail(self, request_id: str, reason: str, now: float) -> HoldRecord:
        with self._tx():
            self._fail(self._must_get(request_id), reason, now)
        return self._must_get(request_id)

    def _fail(self, rec: HoldRecord, reason: str, now: float) -> None:
        self._move(rec, HoldStatus.FAILED, now, "failure_reason=?", (reason,))
        self._scrub(rec.id)
        self._audit(now, "failed", rec.id, "proxy", {"reason": reason})

    def expire_due(self, now: float, approve_window: float) -> list[HoldRecord]:
        """Apply deadlines: pending → expired (or → approved when on_timeout is allow), and
        approved records whose agent never came back → expired."""
        changed: list[str] = []
        # A read first: the deadline loop runs twice a second and must not take the write
        # lock (or wait on someone else's) when nothing is due.
        if not self._q("SELECT 1 AS due FROM requests WHERE deadline <= ? AND status IN ('pending','approved')"
                       " LIMIT 1", (now,)):
            return []
        with self._tx():
            for row in self._q("SELECT id, status, on_timeout FROM requests WHERE deadline <= ?"
                               " AND status IN ('pending','approved')", (now,)):
                rec = self._must_get(row["id"])
                if rec.status is HoldStatus.PENDING and rec.on_timeout is OnTimeout.ALLOW:
                    digest = rec.forward_request().content_digest()
                    self._move(rec, HoldStatus.APPROVED, now,
                               "decided_at=?, approved_digest=?, deadline=?", (now, digest, now + approve_window))
                    self._audit(now, "approved", rec.id, "timeout", {"on_timeout": "allow", "digest": digest})
                else:
                    self._move(rec, HoldStatus.EXPIRED, now, "decided_at=COALESCE(decided_at, ?)", (now,))
                    self._scrub(rec.id)
                    self._audit(now, "expired", rec.id, "timeout", {"was": rec.status.value})
                changed.append(rec.id)
        return [self._must_get(i) for i in changed]

    def heartbeat(self, owner: str, now: float) -> None:
        with self._tx():
            if self._exec("UPDATE forwarders SET seen=? WHERE id=?", (now, owner)) == 0:
                self._exec("INSERT INTO forwarders (id, seen) VALUES (?, ?)", (owner, now))

    def recover(self, now: float, owner: str | None = None,
                lease: float = FORWARDER_LEASE) -> list[HoldRecord]:
        """Records caught mid-forward by a process that is gone (Rule 6) are failed/
        interrupted, never re-sent: we cannot know whether the upstream acted on them (at
        most once). ``owner``'s own forwards are never touched.

        One transaction reads and fails them, so no record can move in between (its forwarder
        completing it meanwhile); a record the read finds in another state is left alone."""
        # A read first: this runs every few seconds and must not take the write lock when no
        # record is being forwarded.
        if not self._q("SELECT 1 AS busy FROM requests WHERE status='forwarding' LIMIT 1"):
            return []
        failed: list[str] = []
        with self._tx():
            rows = self._q("SELECT r.id, c.owner, f.seen FROM requests r"
                           " LEFT JOIN claims c ON c.request_id = r.id"
                           " LEFT JOIN forwarders f ON f.id = c.owner WHERE r.status='forwarding'")
            for r in rows:
                if not (r["owner"] is None  # claimed without an owner: no one can still be at it
                        or (r["owner"] != owner and (r["seen"] is None or r["seen"] < now - lease
                                                     or owner_gone(r["owner"])))):
                    continue
                rec = self.get(r["id"])
                if rec is None or rec.status is not HoldStatus.FORWARDING:
                    continue
                self._fail(rec, "interrupted", now)
                failed.append(rec.id)
            # forwarders not seen for a day are long gone
            self._exec("DELETE FROM forwarders WHERE seen < ?", (now - 86400,))
        return [self._must_get(i) for i in failed]

    def purge_finished(self, now: float, retention: float, batch: int = RETENTION_BATCH) -> int:
        """store.retention: finished records last changed before ``now - retention`` lose their
        bodies, headers, edits and stored response, and their claim; what remains (status,
        URL, message, decisions, comments) keeps the history readable. At most ``batch``
        records per call, found through the (purged_at, updated_at) index, so a call is cheap
        on any store size; the caller repeats while it returns ``batch``. The audit chain is
        not touched (it holds digests, not bodies) and gains one record per call that purged."""
        cutoff = now - retention
        due = ("SELECT id FROM requests WHERE purged_at IS NULL AND updated_at < ?"
               f" AND status IN ({FINAL_SQL}) ORDER BY updated_at LIMIT ?")
        # A read first: nothing due must not take the write lock.
        if not self._q(due, (cutoff, 1)):
            return 0
        with self._tx():
            ids = [r["id"] for r in self._q(due, (cutoff, batch))]
            marks = ",".join("?" * len(ids))
            self._exec("UPDATE requests SET body=NULL, headers='[]', edit_body=NULL, edit_headers=NULL,"
                       " response_headers=NULL, response_body=NULL, purged_at=?"
                       f" WHERE id IN ({marks}) AND purged_at IS NULL", (now, *ids))
            self._exec(f"DELETE FROM claims WHERE request_id IN ({marks})", ids)
            self._audit(now, "retention", None, "retention",
                        {"purged": len(ids), "before": rfc3339(cutoff)})
        return len(ids)

    def _move(self, rec: HoldRecord, wanted: HoldStatus, now: float, extra_sql: str = "",
              extra_params: tuple[Any, ...] = ()) -> None:
        if not can_transition(rec.status, wanted):
            raise InvalidTransition(rec.id, rec.status.value, wanted.value)
        sets = "status=?, updated_at=?" + (f", {extra_sql}" if extra_sql else "")
        moved = self._exec(
            f"UPDATE requests SET {sets} WHERE id=? AND status=?",
            (wanted.value, now, *extra_params, rec.id, rec.status.value),
        )
        if moved != 1:
            now_status = self._scalar("SELECT status FROM requests WHERE id=?", (rec.id,))
            raise InvalidTransition(rec.id, str(now_status), wanted.value, "it changed concurrently")

    def _scrub(self, request_id: str) -> None:
        row = self._q("SELECT headers, edit_headers FROM requests WHERE id=?", (request_id,))[0]
        secret = self._redactor.is_secret
        headers = [(n, REDACTED if secret(n) else v) for n, v in json.loads(row["headers"])]
        edits = json.loads(row["edit_headers"]) if row["edit_headers"] else []
        edits = [(n, REDACTED if (v is not None and secret(n)) else v) for n, v in edits]
        self._exec("UPDATE requests SET headers=?, edit_headers=? WHERE id=?",
                   (json.dumps(headers), json.dumps(edits) if edits else None, request_id))

    def _hydrate(self, row: dict[str, Any]) -> HoldRecord:
        rid = row["id"]
        # rowid breaks ties between entries made in the same instant (PostgreSQL names an
        # identity column so, to match SQLite's implicit one).
        decisions = tuple(
            DecisionEntry(d["reviewer"], d["verdict"], d["comment"] or "", d["at"], d.get("digest"))
            for d in self._q("SELECT * FROM decisions WHERE request_id=? ORDER BY at, rowid", (rid,))
        )
        comments = tuple(
            CommentEntry(c["author"], c["comment"], c["at"])
            for c in self._q("SELECT * FROM comments WHERE request_id=? ORDER BY at, rowid", (rid,))
        )
        return hold_from_row(row, decisions, comments)

    # -- Slack messages (review.slack) ---------------------------------------------------
    def slack_claim(self, request_id: str) -> bool:
        """Take the right to post this record's Slack message: True once, for one caller of
        all the processes sharing the store, so a message is never posted twice."""
        with self._tx():
            return self._exec("UPDATE requests SET slack_ts='' WHERE id=? AND slack_ts IS NULL",
                              (request_id,)) == 1

    def slack_release(self, request_id: str) -> None:
        """Give the claim back after a post that failed, for a later attempt."""
        with self._tx():
            self._exec("UPDATE requests SET slack_ts=NULL WHERE id=? AND slack_ts=''", (request_id,))

    def slack_posted(self, request_id: str, channel: str, ts: str, shown: str) -> None:
        with self._tx():
            self._exec("UPDATE requests SET slack_channel=?, slack_ts=?, slack_shown=? WHERE id=?",
                       (channel, ts, shown, request_id))

    def slack_shown(self, request_id: str, shown: str) -> None:
        with self._tx():
            self._exec("UPDATE requests SET slack_shown=? WHERE id=?", (shown, request_id))

    def slack_unsynced(self, now: float, limit: int = 200) -> tuple[str, ...]:
        """Records whose Slack message is missing (pending, never posted) or shows another
        status than the record has: what a process catches up on after a restart."""
        rows = self._q(
            "SELECT id FROM requests WHERE (slack_ts IS NULL AND status='pending' AND deadline > ?)"
            " OR (slack_ts IS NOT NULL AND slack_ts <> '' AND (slack_shown IS NULL OR slack_shown <> status))"
            " ORDER BY id LIMIT ?", (now, limit))
        return tuple(r["id"] for r in rows)

    # -- grants --------------------------------------------------------------------------
    def add_grant(self, agent: str, method: str, host: str, path: str, minutes: int, by: str,
                  request_id: str | None, now: float, *, scheme: str | None = None,
                  port: int | None = None, rule: str | None = None, approvals: int | None = None,
                  groups: tuple[str, ...] = ()) -> Grant:
        grant = Grant(new_id(now), agent, method, host, path, by, request_id, now, now + minutes * 60,
                      scheme=scheme, port=port, rule=rule, approvals=approvals, groups=groups)
        with self._tx():
            self._insert_grant(grant, minutes)
        return grant

    def _insert_grant(self, grant: Grant, minutes: int) -> None:
        g = grant
        self._exec(
            "INSERT INTO grants (id, agent, method, host, path, created_by, request_id, created_at,"
            " expires_at, revoked_at, revoked_by, scheme, port, rule, approvals, groups)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (g.id, g.agent, g.method, g.host, g.path, g.created_by, g.request_id, g.created_at,
             g.expires_at, None, None, g.scheme, g.port, g.rule, g.approvals, json.dumps(list(g.groups))))
        self._audit(g.created_at, "grant", g.request_id, g.created_by, {
            "grant_id": g.id, "agent": g.agent, "method": g.method, "scheme": g.scheme, "host": g.host,
            "port": g.port, "path": g.path, "rule": g.rule, "approvals": g.approvals, "minutes": minutes})

    def find_grants(self, agent: str, req: AgentRequest, now: float) -> list[Grant]:
        """The active grants whose request scope (agent, scheme, host, port, method, path)
        covers ``req``; whether its decision is one they may stand in for, the gate judges."""
        rows = self._q("SELECT * FROM grants WHERE agent=? AND scheme=? AND host=? AND port=? AND method=?"
                       " AND path=? AND revoked_at IS NULL AND expires_at > ? ORDER BY id",
                       (agent, req.scheme, req.host, req.port, req.method, req.path, now))
        return [grant_from_row(r) for r in rows]

    # -- once ----------------------------------------------------------------------------
    def use_once(self, key: str, now: float) -> bool:
        """True for the first caller with ``key``, in any process sharing the store; False
        for every later one (the insert is the atomic test-and-set)."""
        with self._tx():
            return self._exec("INSERT INTO used_once (key, at) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                              (key, now)) == 1

    def list_grants(self, now: float, include_inactive: bool = False) -> list[Grant]:
        if include_inactive:
            rows = self._q("SELECT * FROM grants ORDER BY id DESC LIMIT 500")
        else:
            rows = self._q("SELECT * FROM grants WHERE revoked_at IS NULL AND expires_at > ?"
                           " ORDER BY id DESC", (now,))
        return [grant_from_row(r) for r in rows]

    def revoke_grant(self, grant_id: str, by: str, now: float) -> Grant:
        with self._tx():
            moved = self._exec(
                "UPDATE grants SET revoked_at=?, revoked_by=? WHERE id=? AND revoked_at IS NULL",
                (now, by, grant_id))
            if moved != 1:
                raise NotFound(f"no active grant {grant_id}")
            self._audit(now, "revoke_grant", None, by, {"grant_id": grant_id})
        return grant_from_row(self._q("SELECT * FROM grants WHERE id=?", (grant_id,))[0])


def _tool(body: bytes) -> dict[str, str]:
    """``{"tool": "send_email"}`` for an MCP tool call (a batch: its tools, comma-separated)."""
    calls = mcp.summary(body) if len(body) <= 1024 * 1024 else None
    return {"tool": ", ".join(calls["tools"])} if calls and calls["tools"] else {}
