"""A held request after the policy said hold: the agent's wait, the reviewers' verdicts, and
the exactly-once forward of an approved request (the rules are gate.py's theory of operation).

``HeldRequests`` is the half of ``Gate`` (gate.py) that runs once a record exists: the agent
waits on one future (waiters.py) until ``_changed`` or the change feed wakes it, reads the
record's status, and claims and forwards an approval or answers with its outcome; ``review``
applies a reviewer's verdict; ``begin_shutdown`` answers the waiting agents.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proxy import mcp, waiters
from proxy.config import Settings
from proxy.edits import check_header_edits
from proxy.errors import (
    ApprovalPending,
    ApprovalTimedOut,
    BadRequest,
    GateError,
    InvalidTransition,
    NotFound,
    RejectedByReviewer,
    StoreError,
    StoreUnavailable,
    UpstreamError,
)
from proxy.events import EventBus
from proxy.logs import log_decision
from proxy.metrics import Metrics
from proxy.model import AgentRequest, HoldStatus, Reviewer, UpstreamResponse, Verdict
from proxy.redact import REDACTED, Redactor
from proxy.relay import Relay
from proxy.reply import Reply
from proxy.store import AsyncStore
from proxy.store.records import HoldRecord
from proxy.upstream_client import UpstreamClient

if TYPE_CHECKING:
    from proxy.upstream import OpenResponse

log = logging.getLogger("hitl.gate")

REPLAY_BODY_LIMIT = 1024 * 1024  # responses up to this size are kept for identical retries
ANNOUNCED_LIMIT = 10_000


class Forbidden(GateError):
    status, code = 403, "forbidden"


class HeldRequests:
    # Set by Gate.__init__ (gate.py).
    settings: Settings
    store: AsyncStore
    upstream: UpstreamClient
    metrics: Metrics
    events: EventBus
    clock: Callable[[], float]
    waiters: waiters.Waiters
    owner: str
    stopping: bool
    _redactor: Redactor
    _announced: dict[tuple[str, str], None] | None
    _forwards: dict[str, asyncio.Task[Reply]]
    _relays: set[asyncio.Task[None]]

    async def await_outcome(self, request_id: str, wait_until: float) -> Reply:
        """Wait for a held request's fate, up to ``wait_until``; act on it (Rules 2 and 4).
        While it waits, the agent holds one future and one deadline (waiters.py), no copy of the
        record: it reads the status when woken, and the whole record only for the outcome.
        One frame for the whole wait: 10,000 waiting agents pay for each frame kept."""
        try:
            while True:
                woken = self.waiters.add(request_id)  # before the read: no change can slip between
                try:
                    status = await self.store.status(request_id)
                    remaining = self._patience(status, wait_until)
                    if remaining > 0:
                        self.waiters.expire(woken, remaining)
                        news = await woken
                        if news is not HoldStatus.APPROVED:
                            continue  # read the status again
                        status = news  # claimed at once: the claim itself checks the status
                finally:
                    self.waiters.discard(request_id, woken)
                if status is HoldStatus.APPROVED:
                    # Claim and forward are one task shielded from this agent's connection: a
                    # hang-up right after a won claim must not strand the record in forwarding.
                    task = asyncio.ensure_future(self._claim_and_forward(request_id))
                    task.add_done_callback(_retrieve)
                    reply = await asyncio.shield(task)
                    if reply is not None:
                        return reply
                    continue  # another waiter claimed it, or its deadline passed: re-read
                rec = await self.store.get(request_id)
                if rec is None:
                    raise StoreUnavailable(f"held request {request_id} vanished from the store",
                                           request_id=request_id)
                status = rec.status
                if status is HoldStatus.FORWARDED:
                    return self._replay(rec)
                if status is HoldStatus.REJECTED:
                    raise self._rejection(rec)
                if status is HoldStatus.EXPIRED:
                    raise ApprovalTimedOut(
                        "Nobody approved this request before its review deadline, so it was not sent. "
                        "Send it again only if it is still needed; it will be reviewed anew.",
                        request_id=request_id)
                if status is HoldStatus.FAILED:
                    raise UpstreamError(f"A reviewer approved this request, but forwarding it failed: "
                                        f"{rec.failure_reason}. It is not sent again automatically.",
                                        request_id=request_id)
                if status is HoldStatus.APPROVED:
                    continue  # approved since the status was read: claim it
                raise self.approval_pending(rec)  # still undecided, and the wait is over
        except StoreError as exc:
            raise StoreUnavailable("The gate cannot reach its pending store, so the outcome of this "
                                   "held request is unknown here and nothing was sent. Retry the "
                                   "identical request after Retry-After seconds.",
                                   request_id=request_id) from exc

    def _patience(self, status: HoldStatus | None, wait_until: float) -> float:
        """How long an agent waits on a record in ``status`` before looking again: while it is
        pending (not when the gate is stopping: the hold stays in the store for the retry) or
        being forwarded by someone else, until ``wait_until``; otherwise 0, act now."""
        if status is HoldStatus.PENDING and not self.stopping:
            return wait_until - self.clock()
        if status is HoldStatus.FORWARDING:
            return wait_until - self.clock() + self.settings.proxy.upstream_timeout
        return 0.0

    def approval_pending(self, rec: HoldRecord) -> ApprovalPending:
        """approval_pending, worded for the model: what is going on and what to do next."""
        retry = max(1, math.ceil(self.settings.hold.retry_after))
        what = f" ({rec.message})" if rec.message else ""
        exc = ApprovalPending(
            f"This request awaits approval: a human reviewer is reviewing it{what}, and it has not "
            f"been sent yet. Retry the identical request (same method, URL and body, or the same "
            f"Idempotency-Key) after {retry} seconds to get the result; a changed request would "
            "need a new review.", request_id=rec.id)
        exc.retry_after = retry
        return exc

    async def _claim_and_forward(self, request_id: str) -> Reply | None:
        claimed = await self.store.claim(request_id, self.clock(), self.owner)
        if claimed is None:
            return None
        return await self._forward_held(claimed)

    async def _forward_held(self, rec: HoldRecord) -> Reply:
        fwd = rec.forward_request()
        now = self.clock
        if fwd.content_digest() != rec.approved_digest:
            await self.store.fail(rec.id, "digest mismatch: stored request differs from the approved one", now())
            self._changed(rec.id, "failed")
            raise UpstreamError("the stored request no longer matches what was approved; not sent",
                                request_id=rec.id)
        try:
            opened = await self.upstream.open(fwd, fresh=True)
            if mcp.is_event_stream(opened.headers):  # relayed as it comes, recorded whole
                return self._relay_held(rec, fwd, opened)
            body = await Relay(opened, self.settings.proxy.max_body_bytes, listening=False).pump()
            response = UpstreamResponse(opened.status, tuple(opened.headers), body, opened.reason)
        except GateError as exc:
            await self.store.fail(rec.id, exc.message, now())
            self._changed(rec.id, "failed")
            exc.request_id = rec.id
            raise
        except Exception as exc:  # a bug below us must still settle the record, not strand it
            log.exception("forward of %s failed unexpectedly", rec.id)
            await self.store.fail(rec.id, f"internal error: {type(exc).__name__}", now())
            self._changed(rec.id, "failed")
            raise UpstreamError("the approved request could not be forwarded (internal error); "
                                "it is not sent again", request_id=rec.id) from exc
        done = await self.store.complete(rec.id, response, now(), REPLAY_BODY_LIMIT)
        self._changed(rec.id, "forwarded")
        return Reply(rec.id, response.status, response.reason, list(response.headers),
                     body=response.body, approved_by=done.approved_by, sent=fwd.body)

    def _relay_held(self, rec: HoldRecord, fwd: AgentRequest, opened: OpenResponse) -> Reply:
        relay = Relay(opened, self.settings.proxy.max_body_bytes)
        task = asyncio.ensure_future(self._finish_relay(rec, relay, opened))
        self._relays.add(task)  # referenced until done; runs on if the agent hangs up (Rule 5)
        task.add_done_callback(self._relays.discard)
        task.add_done_callback(_retrieve)
        return Reply(rec.id, opened.status, opened.reason, list(opened.headers), stream=relay,
                     approved_by=rec.approved_by, sent=fwd.body)

    async def _finish_relay(self, rec: HoldRecord, relay: Relay, opened: OpenResponse) -> None:
        try:
            body = await relay.pump()
        except Exception as exc:
            reason = exc.message if isinstance(exc, GateError) else f"internal error: {type(exc).__name__}"
            await self.store.fail(rec.id, reason, self.clock())
            self._changed(rec.id, "failed")
            raise
        response = UpstreamResponse(opened.status, tuple(opened.headers), body, opened.reason)
        await self.store.complete(rec.id, response, self.clock(), REPLAY_BODY_LIMIT)
        self._changed(rec.id, "forwarded")

    def _replay(self, rec: HoldRecord) -> Reply:
        if rec.response is None:
            raise UpstreamError("this request was already forwarded once and its response was too "
                                "large to keep; it is not sent again", request_id=rec.id)
        r = rec.response
        return Reply(rec.id, r.status, r.reason, list(r.headers), body=r.body,
                     approved_by=rec.approved_by, replayed=True, sent=rec.forward_request().body)

    def _rejection(self, rec: HoldRecord, replayed: bool = False) -> RejectedByReviewer:
        rejection = rec.rejection
        reviewer = rejection.reviewer if rejection else None
        comment = (rejection.comment if rejection else "").strip()
        others = [{"author": c.author, "comment": c.comment} for c in rec.comments]
        said = f": {comment.rstrip('.')}." if comment else "."
        text = f"A reviewer rejected this request{said} Do not resend it unchanged."
        if others:
            text += " Reviewer comments: " + "; ".join(f"{c['author']}: {c['comment']}" for c in others)
        exc = RejectedByReviewer(text, request_id=rec.id, reviewer=reviewer, comment=comment,
                                 comments=others or None, replayed=True if replayed else None)
        if replayed:
            exc.headers.append(("X-HITL-Replayed", "true"))
        return exc

    def begin_shutdown(self) -> None:
        """Stop holding agents: each one waiting on a pending hold is answered approval_pending
        at once (docs/agent-contract.md); the holds stay in the store. Forwards in flight go on."""
        self.stopping = True
        self.waiters.wake_all()

    async def finish_forwards(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the forwards of approved holds in flight."""
        running = [*self._forwards.values(), *self._relays]  # relays: answers still streaming
        if running:
            await asyncio.wait(running, timeout=timeout)

    def _changed(self, request_id: str, status: str, **extra: Any) -> None:
        self.waiters.wake(request_id, HoldStatus(status))
        self._announce(request_id, status)
        self.events.publish({"type": "changed", "id": request_id, "status": status, **extra})

    def _announce(self, request_id: str, status: str) -> None:
        if self._announced is not None:  # the change feed runs: let it skip what we made
            self._announced[(request_id, status)] = None
            if len(self._announced) > ANNOUNCED_LIMIT:
                del self._announced[next(iter(self._announced))]

    # -- reviewers -----------------------------------------------------------------------
    async def review(self, request_id: str, reviewer: Reviewer, verdict: Verdict) -> HoldRecord:
        """Apply a reviewer's approve / reject / comment. Raises NotFound (404), Forbidden
        (403), InvalidTransition (409), BadRequest (400), StoreError."""
        rec = await self.store.get(request_id)
        if rec is None:
            raise NotFound(f"no held request {request_id}")
        now = self.clock()
        if verdict.kind == "comment":
            if not verdict.comment.strip():
                raise BadRequest("a comment cannot be empty")
            rec = await self.store.add_comment(request_id, reviewer.name, verdict.comment, now)
            self._changed(request_id, rec.status.value, comment=True)
            return rec
        if reviewer.name == rec.agent:
            raise Forbidden(f"{reviewer.name} is the agent that sent this request; it may not decide it")
        if not reviewer.may_decide(rec.reviewers):
            raise Forbidden(f"{reviewer.name} may not decide this request; it needs "
                            f"{', '.join(rec.reviewers)}")
        if rec.status is not HoldStatus.PENDING:
            raise InvalidTransition(request_id, rec.status.value, verdict.kind)
        if verdict.kind == "reject":
            if not verdict.comment.strip():
                raise BadRequest("a rejection needs a comment: it is the feedback the agent receives")
            rec = await self.store.decide(request_id, reviewer.name, "reject", verdict.comment, now,
                                          seen_digest=verdict.digest)
        else:
            if verdict.grant_minutes is not None:
                if not rec.grantable:
                    raise BadRequest("the policy does not allow standing grants for this request")
                if not 1 <= verdict.grant_minutes <= 7 * 24 * 60:
                    raise BadRequest("grant_minutes must be between 1 and 10080 (a week)")
            check_header_edits(verdict.edit_headers)
            edit_headers = tuple(verdict.edit_headers.items())
            detail: dict[str, Any] = {}
            if verdict.edit_body is not None or edit_headers:
                detail["edit"] = _edit_detail(rec, verdict, self._redactor)
            # One store transaction: the digest check, the count of approvals of this content,
            # the quorum, and the grant (only on the approval that completes it).
            rec = await self.store.decide(
                request_id, reviewer.name, "approve", verdict.comment, now,
                edit_body=verdict.edit_body, edit_headers=edit_headers,
                approval_deadline=now + self.settings.hold.timeout, audit_detail=detail,
                seen_digest=verdict.digest, grant_minutes=verdict.grant_minutes,
                reviewer_groups=reviewer.groups)
            if rec.status is HoldStatus.APPROVED and verdict.grant_minutes:
                grant_id = next((g.id for g in await self.store.list_grants(now) if g.request_id == rec.id), None)
                self.events.publish({"type": "grant_created", "id": grant_id, "request_id": rec.id})
        if rec.status is not HoldStatus.PENDING:
            outcome = "approved" if rec.status is HoldStatus.APPROVED else "rejected"
            self.metrics.decisions.labels(outcome, rec.rule).inc()
            self.metrics.decision_seconds.labels(rec.rule).observe(max(0.0, now - rec.created_at))
            log_decision(rec.id, outcome, rec.rule, rec.agent, reviewer.name, now - rec.created_at)
        self._changed(request_id, rec.status.value, reviewer=reviewer.name)
        return rec


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Collect a shielded task's exception when its agent has gone, so asyncio does not log
    'exception was never retrieved'; the outcome is in the store either way."""
    if not task.cancelled():
        task.exception()


def _edit_detail(rec: HoldRecord, verdict: Verdict, redactor: Redactor) -> dict[str, Any]:
    def text(b: bytes | None) -> str | None:
        return None if b is None else b[:65536].decode("utf-8", "replace")

    return {
        "original_body": text(rec.request.body),
        "edited_body": text(verdict.edit_body),
        "headers": {k: (REDACTED if v is not None and redactor.is_secret(k) else v)
                    for k, v in verdict.edit_headers.items()},
    }
