"""The pending store on SQLite (sqlite-utils for the schema, WAL mode).

Theory of operation
-------------------
Rule 1. The store is the single source of truth for a held request. In-memory waiters in
        the gate are only wake-ups; every answer the agent gets is read from here.
Rule 2. Every lifecycle transition is one conditional UPDATE (``... WHERE status = ?``)
        inside one ``BEGIN IMMEDIATE`` transaction, together with its audit record. A
        transition the state table (``model.TRANSITIONS``) does not allow raises
        ``InvalidTransition``; a lost race shows up as rowcount 0, never as a double move.
Rule 3. Only the holder of a successful ``claim`` (approved → forwarding) forwards.
Rule 4. Secret headers are kept only while the request may still be forwarded; on reaching
        a final state they are overwritten with "[redacted]".
Rule 5. The audit chain is appended in the same transaction as the change it describes,
        so the chain and the records never disagree.

All methods are synchronous and must run on one thread (``store.AsyncStore`` does that).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlite_utils

from proxy.errors import InvalidTransition, NotFound, StoreError
from proxy.model import AgentRequest, HoldStatus, OnTimeout, UpstreamResponse, can_transition
from proxy.redact import SECRET_HEADERS
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

REDACTED = "[redacted]"

_REQUEST_COLUMNS = {
    "id": str, "status": str, "fingerprint": str, "agent": str, "agent_address": str,
    "method": str, "scheme": str, "host": str, "port": int, "target": str,
    "headers": str, "body": bytes, "message": str, "rule": str, "reviewers": str,
    "approvals_needed": int, "grantable": int, "on_timeout": str,
    "created_at": float, "deadline": float, "updated_at": float,
    "edit_body": bytes, "edit_headers": str, "approved_digest": str, "decided_at": float,
    "response_status": int, "response_headers": str, "response_body": bytes,
    "response_reason": str, "forwarded_at": float, "failure_reason": str,
}


class SqliteBackend:
    def __init__(self, path: Path, *, secret_headers: frozenset[str] = frozenset(),
                 busy_timeout: float = 10.0) -> None:
        self.path = path
        self._secrets = SECRET_HEADERS | secret_headers
        # How long a write waits for another connection's lock before giving up with
        # StoreError (→ 503 store_unavailable). It bounds how long a held request can hang.
        self._busy_ms = max(0, int(busy_timeout * 1000))
        # Two processes (--role proxy and --role review) may open a new file at once; the
        # switch to WAL takes its lock without waiting, so the set-up is retried, bounded.
        give_up = time.monotonic() + max(busy_timeout, 1.0)
        while True:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                                       timeout=busy_timeout)
                conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
                self.db = sqlite_utils.Database(conn)
                self.db.enable_wal()
                conn.execute("PRAGMA synchronous = NORMAL")
                with self._tx():
                    self._create_schema()
                break
            except (sqlite3.OperationalError, StoreError) as exc:
                if "locked" not in str(exc) or time.monotonic() > give_up:
                    raise StoreError(f"cannot open the SQLite store at {path}: {exc}") from exc
                conn.close()
                time.sleep(0.05)
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"cannot open the SQLite store at {path}: {exc}") from exc

    # -- schema --------------------------------------------------------------------------
    def _create_schema(self) -> None:
        db = self.db
        db["requests"].create(_REQUEST_COLUMNS, pk="id", if_not_exists=True,
                              not_null={"status", "fingerprint", "agent"})
        db["requests"].create_index(["fingerprint"], if_not_exists=True)
        db["requests"].create_index(["status", "deadline"], if_not_exists=True)
        db["requests"].create_index(["agent", "status"], if_not_exists=True)
        db["decisions"].create(
            {"request_id": str, "reviewer": str, "verdict": str, "comment": str, "at": float},
            if_not_exists=True,
        )
        db["decisions"].create_index(["request_id"], if_not_exists=True)
        db["comments"].create(
            {"request_id": str, "author": str, "comment": str, "at": float}, if_not_exists=True
        )
        db["comments"].create_index(["request_id"], if_not_exists=True)
        db["grants"].create(
            {"id": str, "agent": str, "method": str, "host": str, "path": str, "created_by": str,
             "request_id": str, "created_at": float, "expires_at": float, "revoked_at": float,
             "revoked_by": str},
            pk="id", if_not_exists=True,
        )
        db["audit"].create(
            {"seq": int, "at": str, "event": str, "request_id": str, "actor": str, "detail": str,
             "prev_hash": str, "hash": str},
            pk="seq", if_not_exists=True,
        )

    # -- plumbing ------------------------------------------------------------------------
    def _tx(self) -> _Transaction:
        return _Transaction(self.db.conn)

    def _q(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[dict[str, Any]]:
        cur = self.db.conn.execute(sql, params)
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def close(self) -> None:
        self.db.conn.close()

    def ping(self, timeout: float = 1.0) -> None:
        """Readiness: can the store be written? A read would pass while another connection
        holds the write lock (WAL readers never block), so take the write lock and let go."""
        conn = self.db.conn
        conn.execute(f"PRAGMA busy_timeout = {min(self._busy_ms, int(timeout * 1000))}")
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        finally:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")

    # -- audit ---------------------------------------------------------------------------
    def _audit(self, now: float, event: str, request_id: str | None, actor: str,
               detail: dict[str, Any]) -> None:
        last = self.db.conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
        rec = AuditRecord(seq, rfc3339(now) or "", event, request_id, actor, detail, prev)
        self.db.conn.execute(
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
        sql, params = "SELECT * FROM audit WHERE seq > ?", [after]
        if request_id:
            sql += " AND request_id = ?"
            params.append(request_id)
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
        return [_audit_from_row(r) for r in self._q(sql, params)]

    def audit_head(self) -> int:
        """The seq of the newest audit record (0 when none)."""
        return int(self._q("SELECT COALESCE(MAX(seq), 0) AS seq FROM audit", [])[0]["seq"])

    def audit_verify(self) -> int | None:
        """The seq of the first record whose hash or link is broken, or None when intact."""
        prev = GENESIS
        expected_seq = 1
        cur = self.db.conn.execute("SELECT * FROM audit ORDER BY seq")
        cols = [c[0] for c in cur.description]
        for row in cur:
            rec = _audit_from_row(dict(zip(cols, row, strict=True)))
            if rec.seq != expected_seq or rec.prev_hash != prev or rec.compute_hash() != rec.hash:
                return rec.seq
            prev, expected_seq = rec.hash, rec.seq + 1
        return None

    # -- held requests -------------------------------------------------------------------
    def create(self, rec: HoldRecord) -> HoldRecord:
        with self._tx():
            self._insert(rec)
        return rec

    def create_or_attach(self, rec: HoldRecord, replay_window: float) -> tuple[HoldRecord, bool]:
        """Rule 3 made atomic: the lookup by fingerprint and the insert share one write
        transaction, so identical requests arriving together make one review item.
        Returns (record, created)."""
        with self._tx():
            found = self.find_by_fingerprint(rec.fingerprint, rec.created_at, replay_window)
            if found is not None:
                return found, False
            self._insert(rec)
        return rec, True

    def _insert(self, rec: HoldRecord) -> None:
        req = rec.request
        self.db.conn.execute(
            "INSERT INTO requests (id, status, fingerprint, agent, agent_address, method, scheme,"
            " host, port, target, headers, body, message, rule, reviewers, approvals_needed,"
            " grantable, on_timeout, created_at, deadline, updated_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (rec.id, rec.status.value, rec.fingerprint, rec.agent, rec.agent_address,
             req.method, req.scheme, req.host, req.port, req.target,
             json.dumps(list(req.headers)), req.body, rec.message, rec.rule,
             json.dumps(list(rec.reviewers)), rec.approvals_needed, int(rec.grantable),
             rec.on_timeout.value, rec.created_at, rec.deadline, rec.created_at),
        )
        self._audit(rec.created_at, "hold", rec.id, rec.agent, {
            "method": req.method, "url": req.url, "rule": rec.rule, "message": rec.message,
            "body_sha256": req.body_digest(), "deadline": rfc3339(rec.deadline),
            "reviewers": list(rec.reviewers), "approvals_needed": rec.approvals_needed,
        })

    def get(self, request_id: str) -> HoldRecord | None:
        rows = self._q("SELECT * FROM requests WHERE id = ?", (request_id,))
        return self._hydrate(rows[0]) if rows else None

    def _must_get(self, request_id: str) -> HoldRecord:
        rec = self.get(request_id)
        if rec is None:
            raise NotFound(f"no held request {request_id}")
        return rec

    def find_by_fingerprint(self, fingerprint: str, now: float, replay_window: float) -> HoldRecord | None:
        """The record a new request with this fingerprint attaches to: a live one (pending,
        approved, forwarding), or one forwarded within the replay window."""
        rows = self._q(
            "SELECT * FROM requests WHERE fingerprint = ? AND (status IN ('pending','approved','forwarding')"
            " OR (status = 'forwarded' AND forwarded_at >= ?)) ORDER BY id DESC LIMIT 1",
            (fingerprint, now - replay_window),
        )
        return self._hydrate(rows[0]) if rows else None

    def count_pending(self, agent: str | None = None) -> int:
        if agent is None:
            return self.db.conn.execute("SELECT count(*) FROM requests WHERE status='pending'").fetchone()[0]
        return self.db.conn.execute(
            "SELECT count(*) FROM requests WHERE status='pending' AND agent=?", (agent,)
        ).fetchone()[0]

    def oldest_pending(self) -> float | None:
        """created_at of the oldest pending record (the metrics' hitl_oldest_pending_age_seconds)."""
        return self.db.conn.execute("SELECT min(created_at) FROM requests WHERE status='pending'").fetchone()[0]

    def count_by_status(self) -> dict[str, int]:
        return {r["status"]: r["n"] for r in self._q("SELECT status, count(*) AS n FROM requests GROUP BY status")}

    def list(self, *, statuses: list[str] | None = None, agent: str | None = None,
             host: str | None = None, text: str | None = None, limit: int = 50,
             cursor: str | None = None) -> tuple[list[HoldRecord], str | None]:
        where, params = ["1=1"], []  # type: ignore[var-annotated]
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
            where.append("(message LIKE ? OR target LIKE ? OR host LIKE ? OR agent LIKE ?)")
            params.extend([f"%{text}%"] * 4)
        if cursor:
            where.append("id < ?")
            params.append(cursor)
        rows = self._q(f"SELECT * FROM requests WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
                       [*params, limit + 1])
        items = [self._hydrate(r) for r in rows[:limit]]
        next_cursor = items[-1].id if len(rows) > limit else None
        return items, next_cursor

    # -- decisions -----------------------------------------------------------------------
    def decide(self, request_id: str, reviewer: str, verdict: str, comment: str, now: float, *,
               edit_body: bytes | None = None, edit_headers: tuple[tuple[str, str | None], ...] = (),
               approval_deadline: float | None = None, audit_detail: dict[str, Any] | None = None,
               ) -> HoldRecord:
        """Record one reviewer's approve/reject. Any rejection rejects; the approval that
        reaches the quorum approves. Edits ride on the approval that carries them."""
        with self._tx():
            rec = self._must_get(request_id)
            wanted = HoldStatus.REJECTED if verdict == "reject" else HoldStatus.APPROVED
            if rec.status is not HoldStatus.PENDING:
                raise InvalidTransition(request_id, rec.status.value, wanted.value)
            if rec.deadline <= now:  # the deadline won; the deadline loop just has not run yet
                due = HoldStatus.APPROVED if rec.on_timeout is OnTimeout.ALLOW else HoldStatus.EXPIRED
                raise InvalidTransition(request_id, due.value, wanted.value)
            if any(d.reviewer == reviewer for d in rec.decisions):
                raise InvalidTransition(request_id, f"already decided by {reviewer}", wanted.value)
            self.db.conn.execute(
                "INSERT INTO decisions (request_id, reviewer, verdict, comment, at) VALUES (?,?,?,?,?)",
                (request_id, reviewer, verdict, comment, now),
            )
            if edit_body is not None or edit_headers:
                self.db.conn.execute(
                    "UPDATE requests SET edit_body = ?, edit_headers = ?, updated_at = ? WHERE id = ?",
                    (edit_body, json.dumps(list(edit_headers)) if edit_headers else None, now, request_id),
                )
            self._audit(now, verdict, request_id, reviewer, {"comment": comment, **(audit_detail or {})})
            approvals = len(rec.approved_by) + (verdict == "approve")
            if verdict == "reject":
                self._move(rec, HoldStatus.REJECTED, now, "decided_at = ?", (now,))
                self._scrub(request_id)
                self._audit(now, "rejected", request_id, reviewer, {})
            elif approvals >= rec.approvals_needed:
                after = self._must_get(request_id)
                digest = after.forward_request().content_digest()
                deadline = max(rec.deadline, approval_deadline or rec.deadline)
                self._move(rec, HoldStatus.APPROVED, now,
                           "decided_at = ?, approved_digest = ?, deadline = ?", (now, digest, deadline))
                self._audit(now, "approved", request_id, reviewer,
                            {"approved_by": [*rec.approved_by, reviewer], "digest": digest})
        return self._must_get(request_id)

    def add_comment(self, request_id: str, author: str, comment: str, now: float) -> HoldRecord:
        with self._tx():
            self._must_get(request_id)
            self.db.conn.execute(
                "INSERT INTO comments (request_id, author, comment, at) VALUES (?,?,?,?)",
                (request_id, author, comment, now),
            )
            self._audit(now, "comment", request_id, author, {"comment": comment})
        return self._must_get(request_id)

    def claim(self, request_id: str, now: float) -> HoldRecord | None:
        """approved → forwarding; the caller that gets a record back is the one that forwards.
        An approval past its deadline is never forwarded: it expires here, in the same
        transaction, so a retry that races the deadline loop cannot slip it through."""
        with self._tx():
            cur = self.db.conn.execute(
                "UPDATE requests SET status='forwarding', updated_at=? WHERE id=? AND status='approved'"
                " AND deadline > ?",
                (now, request_id, now),
            )
            if cur.rowcount != 1:
                rec = self.get(request_id)
                if rec is not None and rec.status is HoldStatus.APPROVED:  # past its deadline
                    self._move(rec, HoldStatus.EXPIRED, now, "decided_at=COALESCE(decided_at, ?)", (now,))
                    self._scrub(rec.id)
                    self._audit(now, "expired", rec.id, "timeout", {"was": rec.status.value})
                return None
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
            rec = self._must_get(request_id)
            self._move(rec, HoldStatus.FAILED, now, "failure_reason=?", (reason,))
            self._scrub(request_id)
            self._audit(now, "failed", request_id, "proxy", {"reason": reason})
        return self._must_get(request_id)

    def expire_due(self, now: float, approve_window: float) -> list[HoldRecord]:
        """Apply deadlines: pending → expired (or → approved when on_timeout is allow), and
        approved records whose agent never came back → expired."""
        changed: list[str] = []
        # A read first: the deadline loop runs twice a second and must not take the write
        # lock (or wait on someone else's) when nothing is due.
        if not self._q("SELECT 1 FROM requests WHERE deadline <= ? AND status IN ('pending','approved')"
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

    def recover(self, now: float) -> list[HoldRecord]:
        """After a crash: a record caught mid-forward is failed/interrupted, never re-sent
        (we cannot know whether the upstream acted on it: at most once)."""
        ids = [r["id"] for r in self._q("SELECT id FROM requests WHERE status='forwarding'")]
        return [self.fail(i, "interrupted", now) for i in ids]

    def next_deadline(self) -> float | None:
        row = self.db.conn.execute(
            "SELECT min(deadline) FROM requests WHERE status IN ('pending','approved')").fetchone()
        return row[0] if row else None

    def _move(self, rec: HoldRecord, wanted: HoldStatus, now: float, extra_sql: str = "",
              extra_params: tuple[Any, ...] = ()) -> None:
        if not can_transition(rec.status, wanted):
            raise InvalidTransition(rec.id, rec.status.value, wanted.value)
        sets = "status=?, updated_at=?" + (f", {extra_sql}" if extra_sql else "")
        cur = self.db.conn.execute(
            f"UPDATE requests SET {sets} WHERE id=? AND status=?",
            (wanted.value, now, *extra_params, rec.id, rec.status.value),
        )
        if cur.rowcount != 1:
            raise InvalidTransition(rec.id, "changed concurrently", wanted.value)

    def _scrub(self, request_id: str) -> None:
        row = self.db.conn.execute("SELECT headers, edit_headers FROM requests WHERE id=?", (request_id,)).fetchone()
        headers = [(n, REDACTED if n.lower() in self._secrets else v) for n, v in json.loads(row[0])]
        edits = json.loads(row[1]) if row[1] else []
        edits = [(n, REDACTED if (v is not None and n.lower() in self._secrets) else v) for n, v in edits]
        self.db.conn.execute("UPDATE requests SET headers=?, edit_headers=? WHERE id=?",
                             (json.dumps(headers), json.dumps(edits) if edits else None, request_id))

    def _hydrate(self, row: dict[str, Any]) -> HoldRecord:
        rid = row["id"]
        decisions = tuple(
            DecisionEntry(d["reviewer"], d["verdict"], d["comment"] or "", d["at"])
            for d in self._q("SELECT * FROM decisions WHERE request_id=? ORDER BY at, rowid", (rid,))
        )
        comments = tuple(
            CommentEntry(c["author"], c["comment"], c["at"])
            for c in self._q("SELECT * FROM comments WHERE request_id=? ORDER BY at, rowid", (rid,))
        )
        response = None
        if row["response_status"] is not None and row["response_body"] is not None:
            response = UpstreamResponse(row["response_status"],
                                        tuple(tuple(h) for h in json.loads(row["response_headers"])),  # type: ignore[misc]
                                        row["response_body"], row["response_reason"] or "")
        return HoldRecord(
            id=rid, status=HoldStatus(row["status"]), fingerprint=row["fingerprint"],
            agent=row["agent"], agent_address=row["agent_address"] or "",
            request=AgentRequest(row["method"], row["scheme"], row["host"], row["port"], row["target"],
                                 tuple(tuple(h) for h in json.loads(row["headers"])),  # type: ignore[misc]
                                 row["body"] or b""),
            message=row["message"] or "", rule=row["rule"] or "default",
            reviewers=tuple(json.loads(row["reviewers"] or "[]")),
            approvals_needed=row["approvals_needed"], grantable=bool(row["grantable"]),
            on_timeout=OnTimeout(row["on_timeout"]), created_at=row["created_at"],
            deadline=row["deadline"], updated_at=row["updated_at"],
            decisions=decisions, comments=comments, edit_body=row["edit_body"],
            edit_headers=tuple(tuple(h) for h in json.loads(row["edit_headers"])) if row["edit_headers"] else (),  # type: ignore[misc]
            approved_digest=row["approved_digest"], decided_at=row["decided_at"],
            response=response, response_status=row["response_status"],
            forwarded_at=row["forwarded_at"], failure_reason=row["failure_reason"],
        )

    # -- grants --------------------------------------------------------------------------
    def add_grant(self, agent: str, method: str, host: str, path: str, minutes: int, by: str,
                  request_id: str | None, now: float) -> Grant:
        grant = Grant(new_id(now), agent, method, host, path, by, request_id, now, now + minutes * 60)
        with self._tx():
            self.db["grants"].insert({
                "id": grant.id, "agent": agent, "method": method, "host": host, "path": path,
                "created_by": by, "request_id": request_id, "created_at": now,
                "expires_at": grant.expires_at, "revoked_at": None, "revoked_by": None})
            self._audit(now, "grant", request_id, by, {"grant_id": grant.id, "agent": agent,
                        "method": method, "host": host, "path": path, "minutes": minutes})
        return grant

    def find_grant(self, agent: str, method: str, host: str, path: str, now: float) -> Grant | None:
        rows = self._q("SELECT * FROM grants WHERE agent=? AND method=? AND host=? AND path=?"
                       " AND revoked_at IS NULL AND expires_at > ? LIMIT 1",
                       (agent, method, host, path, now))
        return Grant(**rows[0]) if rows else None

    def list_grants(self, now: float, include_inactive: bool = False) -> list[Grant]:
        if include_inactive:
            rows = self._q("SELECT * FROM grants ORDER BY id DESC LIMIT 500")
        else:
            rows = self._q("SELECT * FROM grants WHERE revoked_at IS NULL AND expires_at > ?"
                           " ORDER BY id DESC", (now,))
        return [Grant(**r) for r in rows]

    def revoke_grant(self, grant_id: str, by: str, now: float) -> Grant:
        with self._tx():
            cur = self.db.conn.execute(
                "UPDATE grants SET revoked_at=?, revoked_by=? WHERE id=? AND revoked_at IS NULL",
                (now, by, grant_id))
            if cur.rowcount != 1:
                raise NotFound(f"no active grant {grant_id}")
            self._audit(now, "revoke_grant", None, by, {"grant_id": grant_id})
        return Grant(**self._q("SELECT * FROM grants WHERE id=?", (grant_id,))[0])


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error; sqlite errors become StoreError."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"store unavailable: {exc}") from exc

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return
            except sqlite3.Error as commit_exc:
                self.conn.execute("ROLLBACK")
                raise StoreError(f"store unavailable: {commit_exc}") from commit_exc
        self.conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"store unavailable: {exc}") from exc


def _audit_from_row(row: dict[str, Any]) -> AuditRecord:
    return AuditRecord(row["seq"], row["at"], row["event"], row["request_id"], row["actor"],
                       json.loads(row["detail"]), row["prev_hash"], row["hash"])
