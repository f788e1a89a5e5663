"""The store's queries for tuning policies: shadow events, the decision log, per-rule
insights, and similar approvals (the grant offer). A mixin of ``sql.SqlBackend``: the
same SQL on SQLite and PostgreSQL, but for how a field of the audit's JSON detail is read
(``_JSON_TEXT``).

The decision log (``proxy/decision_log.py``) is one table, ``decision_log``, whose ``seq``
the writer numbers itself inside the serialized write transaction (sql.py, Rule 2), so the
DDL is the same for both backends, and the newest ``max_rows`` rows are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from proxy.store.records import AuditRecord, rfc3339
from proxy.store.rows import audit_from_row

# Shared by SQLite and PostgreSQL (types both accept); run with the backends' own schema.
DECISION_LOG_SCHEMA = (
    ("CREATE TABLE IF NOT EXISTS decision_log (seq BIGINT PRIMARY KEY, at DOUBLE PRECISION NOT NULL,"
     " agent TEXT, method TEXT, host TEXT, path TEXT, action TEXT, rule TEXT, shadow INTEGER,"
     " body_cut INTEGER, input TEXT)"),
    "CREATE INDEX IF NOT EXISTS decision_log_at ON decision_log (at)",
    "CREATE INDEX IF NOT EXISTS audit_event_seq ON audit (event, seq)",
)
_LOG_COLUMNS = ("seq", "at", "agent", "method", "host", "path", "action", "rule", "shadow", "body_cut",
                "input")
_INSERT_CHUNK = 100  # rows per INSERT statement
SHADOW_FIELDS = ("rule", "agent", "host", "action")


def id_floor(ts: float) -> str:
    """The smallest request id made at or after ``ts`` (ids start with their creation ms)."""
    return f"{max(0, int(ts * 1000)):012x}"


class TuningQueries:
    # How a text field of the audit's JSON detail is read; PostgreSQL overrides it.
    _JSON_TEXT = "json_extract(detail, '$.{key}')"

    def _tx(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def _exec(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> int:
        raise NotImplementedError

    def _q(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _audit(self, now: float, event: str, request_id: str | None, actor: str,
               detail: dict[str, Any]) -> None:
        raise NotImplementedError

    def _field(self, key: str) -> str:
        assert key in SHADOW_FIELDS  # never user text in SQL
        return self._JSON_TEXT.format(key=key)

    # -- writes (proxy/decision_log.py, one transaction a batch) ----------------------------
    def record_batch(self, shadows: Sequence[Any], rows: Sequence[Any], max_rows: int) -> None:
        with self._tx():
            for ev in shadows:
                self._audit(ev.at, "shadow", ev.request_id, "policy", ev.detail())
            if not rows or max_rows <= 0:
                return
            last = self._q("SELECT COALESCE(MAX(seq), 0) AS seq FROM decision_log")
            seq = int(last[0]["seq"])
            for start in range(0, len(rows), _INSERT_CHUNK):
                chunk = rows[start:start + _INSERT_CHUNK]
                params: list[Any] = []
                for row in chunk:
                    seq += 1
                    params += [seq, row.at, row.agent, row.method, row.host, row.path, row.action,
                               row.rule, int(row.shadow), int(row.body_cut), row.input]
                marks = ",".join(["(" + ",".join("?" * len(_LOG_COLUMNS)) + ")"] * len(chunk))
                self._exec(f"INSERT INTO decision_log ({','.join(_LOG_COLUMNS)}) VALUES {marks}", params)
            self._exec("DELETE FROM decision_log WHERE seq <= ?", (seq - max_rows,))

    # -- the "Would have held" view --------------------------------------------------------
    def shadow_list(self, *, filters: dict[str, str] | None = None, since: float | None = None,
                    before: int | None = None, limit: int = 50) -> list[AuditRecord]:
        where, params = self._shadow_where(filters, since)
        if before is not None:
            where.append("seq < ?")
            params.append(before)
        rows = self._q(f"SELECT * FROM audit WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?",
                       [*params, limit])
        return [audit_from_row(r) for r in rows]

    def shadow_summary(self, since: float | None = None,
                       filters: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Per rule and would-be action: how many, and the latest."""
        where, params = self._shadow_where(filters, since)
        rule, action = self._field("rule"), self._field("action")
        rows = self._q(f"SELECT {rule} AS rule, {action} AS action, COUNT(*) AS n, MAX(at) AS last"
                       f" FROM audit WHERE {' AND '.join(where)} GROUP BY {rule}, {action}"
                       " ORDER BY n DESC", params)
        return [{"rule": r["rule"], "action": r["action"], "count": int(r["n"]), "last": r["last"]}
                for r in rows]

    def shadow_facets(self, since: float | None = None, limit: int = 200) -> dict[str, list[str]]:
        where, params = self._shadow_where(None, since)
        out = {}
        for key in ("rule", "agent", "host"):
            f = self._field(key)
            rows = self._q(f"SELECT DISTINCT {f} AS v FROM audit WHERE {' AND '.join(where)}"
                           f" ORDER BY v LIMIT ?", [*params, limit])
            out[key] = [str(r["v"]) for r in rows if r["v"] is not None]
        return out

    def _shadow_where(self, filters: dict[str, str] | None, since: float | None) -> tuple[list[str], list[Any]]:
        where, params = ["event = 'shadow'"], []
        if since is not None:
            where.append("at >= ?")
            params.append(rfc3339(since))
        for key, value in (filters or {}).items():
            if value:
                where.append(f"{self._field(key)} = ?")
                params.append(value)
        return where, params

    # -- insights and the grant offer ------------------------------------------------------
    def insight_rows(self, since: float) -> list[dict[str, Any]]:
        """Every hold made since ``since``, with its human verdict counts."""
        return self._q(
            "SELECT r.id, r.rule, r.status, r.created_at, r.decided_at, r.approved_digest,"
            " r.approvals_needed, r.grantable,"
            " (SELECT COUNT(*) FROM decisions d WHERE d.request_id = r.id AND d.verdict = 'approve') AS approves,"
            " (SELECT COUNT(*) FROM decisions d WHERE d.request_id = r.id AND d.verdict = 'reject') AS rejects"
            " FROM requests r WHERE r.id >= ? AND r.created_at >= ?", (id_floor(since), since))

    def similar_approved(self, *, agent: str, method: str, host: str, port: int, path: str, rule: str,
                         since: float, exclude: str) -> int:
        """Requests like this one (agent, method, host, port, path, rule) that reviewers
        approved since ``since``."""
        rows = self._q(
            "SELECT r.target FROM requests r WHERE r.agent = ? AND r.method = ? AND r.host = ?"
            " AND r.port = ? AND r.rule = ? AND r.id != ? AND r.decided_at >= ?"
            " AND r.approved_digest IS NOT NULL AND EXISTS (SELECT 1 FROM decisions d"
            " WHERE d.request_id = r.id AND d.verdict = 'approve')",
            (agent, method, host, port, rule, exclude, since))
        return sum(1 for r in rows if str(r["target"]).split("?", 1)[0] == path)
