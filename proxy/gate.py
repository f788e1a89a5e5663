"""The gate: judge a request by policy, then allow, deny or hold it.

Theory of operation
-------------------
Rule 1. Every request is judged by the policy before anything leaves the proxy. When the
        policy cannot answer, the request is refused (``policy_error``): fail closed.
Rule 2. A held request is written to the store before the agent is told anything, and the
        store decides every transition (see ``store/sql.py``). This module keeps no
        state of its own but the waiting agents' wake-ups (waiters.py); a restart loses nothing.
Rule 3. A new request whose fingerprint matches a live record attaches to it, so retries
        and duplicates never make a second review item.
Rule 4. Only the holder of a successful ``claim`` forwards, exactly the bytes whose digest
        the approval bound (the stored request plus the audited edit). Everyone else who
        waits on that record receives the stored response (``X-HITL-Replayed``).
Rule 5. The forward of an approved request runs shielded from the agent's connection: an
        agent that hangs up mid-forward does not leave a record stuck in ``forwarding``.
Rule 6. Deadlines are enforced by ``Sweepers.run_deadlines`` (sweepers.py) whether or not an
        agent waits; what other processes change reaches this one through ``ChangeFeed``
        (change_feed.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from proxy import mcp, waiters
from proxy.change_feed import ChangeFeed
from proxy.config import Settings
from proxy.decision_log import DecisionRecorder, ShadowEvent
from proxy.edits import check_header_edits
from proxy.errors import (
    ApprovalPending,
    ApprovalTimedOut,
    BadRequest,
    DeniedByPolicy,
    GateError,
    InvalidTransition,
    NotFound,
    PolicyError,
    RejectedByReviewer,
    StoreError,
    StoreUnavailable,
    UpstreamError,
)
from proxy.events import EventBus
from proxy.logs import log_decision, note
from proxy.metrics import Metrics
from proxy.model import (
    Action,
    Agent,
    AgentRequest,
    Decision,
    HoldStatus,
    OnTimeout,
    Reviewer,
    UpstreamResponse,
    Verdict,
)
from proxy.policy.engine import PolicyEngine
from proxy.policy.input import build_input
from proxy.redact import REDACTED, Redactor, redact_url
from proxy.relay import Relay, Rewritten, Stream
from proxy.store import AsyncStore
from proxy.store.records import Grant, HoldRecord, new_id
from proxy.store.sql import new_owner
from proxy.sweepers import Sweepers
from proxy.upstream_client import UpstreamClient

if TYPE_CHECKING:
    from proxy.upstream import OpenResponse

log = logging.getLogger("hitl.gate")

REPLAY_BODY_LIMIT = 1024 * 1024  # responses up to this size are kept for identical retries
ANNOUNCED_LIMIT = 10_000


class Forbidden(GateError):
    status, code = 403, "forbidden"


@dataclass(slots=True)
class Reply:
    """What the data plane sends back for a request the gate let through."""

    request_id: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes | None = None  # a stored response (held requests, replays)
    stream: Stream | None = None  # a live upstream response (allowed requests, relayed holds)
    approved_by: tuple[str, ...] = ()
    replayed: bool = False
    extra_headers: list[tuple[str, str]] = field(default_factory=list)
    sent: bytes | None = None  # the body forwarded for a held request (to re-address MCP answers)

    def gate_headers(self) -> list[tuple[str, str]]:
        out = [("X-HITL-Request-Id", self.request_id)]
        if self.approved_by:
            out.append(("X-HITL-Approved-By", ", ".join(self.approved_by)))
        if self.replayed:
            out.append(("X-HITL-Replayed", "true"))
        return out + self.extra_headers


class Gate:
    def __init__(self, *, settings: Settings, policy: PolicyEngine, store: AsyncStore,
                 upstream: UpstreamClient, metrics: Metrics | None = None, events: EventBus | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.policy = policy  # swapped atomically by a policy reload
        self.policy_error: str | None = None  # the last failed reload's error; None when healthy
        self.store = store
        self.upstream = upstream
        self.metrics = metrics or Metrics()
        self.events = events or EventBus()
        self.clock = clock
        self._secret_headers = settings.proxy.secret_headers
        self._redactor = Redactor(settings.proxy.secret_headers)
        self.waiters = waiters.Waiters()  # agents waiting on holds, woken by _changed and the feed
        self.owner = new_owner()  # this process as a forwarder (store/sql.py, Rule 6)
        self._announced: dict[tuple[str, str], None] | None = None  # see ChangeFeed.watch
        self.sweepers = Sweepers(self)  # deadlines, interrupted forwards, retention, heartbeat
        self.feed = ChangeFeed(self)  # what other processes sharing the store change
        self._forwards: dict[str, asyncio.Task[Reply]] = {}
        self.stopping = False  # set by begin_shutdown: waiters answer approval_pending now
        self.mcp_streams = mcp.StreamMemory()  # which MCP endpoints answer with event streams
        self._relays: set[asyncio.Task[None]] = set()  # held answers being relayed (relay.py)
        p = settings.policy  # shadow events and the decision log, written off the loop (decision_log.py)
        self.recorder = DecisionRecorder(store, max_rows=p.decision_log, allowed_share=p.decision_log_allowed,
                                         secret_headers=self._secret_headers,
                                         on_drop=self.metrics.decision_log_dropped.inc)

    # -- the data plane's entry ----------------------------------------------------------
    async def judge(self, req: AgentRequest, agent: Agent, request_id: str,
                    doc: dict[str, Any] | None = None, rpc: mcp.Message | None = None) -> Decision:
        if doc is None:
            doc = self.policy_input(req, agent, self.clock())
        policy_doc = doc

        async def ask() -> Decision:
            if rpc is None:
                return await self.policy.decide(policy_doc)
            # each call of a JSON-RPC message judged on its own; the strictest wins
            return mcp.strictest([await self.policy.decide({**policy_doc, "mcp": call})
                                  for call in rpc.policy_inputs()])

        return await self.account(
            ask, agent, request_id, req.method, req.host, req.port, req.path,
            access={"host": req.authority, "path": req.path},
            what=f"{req.method} {req.authority}{req.path}",
            refused=lambda problem: (f"The gate's policy could not decide, so this request was not sent "
                                     f"(fail closed): {problem}. Retrying will not help until an operator "
                                     "fixes the policy."),
            # An MCP message is judged per call (input.mcp); the log keeps every call's, for replay.
            record=doc if rpc is None else {**doc, "mcp_calls": rpc.policy_inputs()})

    async def account(self, ask: Callable[[], Awaitable[Decision]], agent: Agent, request_id: str,
                      method: str, host: str, port: int, path: str, *, access: dict[str, Any],
                      what: str, refused: Callable[[str], str],
                      record: dict[str, Any] | None) -> Decision:
        """The one judge's accounting, for requests and for CONNECTs (connect.py): the policy's
        time, a policy error counted and refused (fail closed), shadow mode, the decision's
        count and the access line, and (``record``) the decision log."""
        started = time.perf_counter()
        now = self.clock()
        try:
            decision = await ask()
        except PolicyError as exc:
            self.metrics.requests.labels("error", "policy_error").inc()
            note(agent=agent.id, **access, action="error", rule="policy_error")
            log.error("policy error for %s: %s", what, exc.message)
            raise PolicyError(refused(exc.message), request_id=request_id) from exc
        finally:
            self.metrics.policy_eval.observe(time.perf_counter() - started)
        shadowed = self.shadowed(decision, agent, method, host, port, path, request_id, now)
        if record is not None:
            self.recorder.judged(record, decision, now, shadowed)
        if shadowed:
            decision = replace(decision, action=Action.ALLOW)
        self.metrics.count_request(decision.action.value, decision.rule)
        note(agent=agent.id, **access, action=decision.action.value, rule=decision.rule)
        return decision

    def policy_input(self, req: AgentRequest, agent: Agent, now: float) -> dict[str, Any]:
        return build_input(req, agent, now, self._secret_headers, self.settings.policy.max_input_body_bytes)

    def shadowed(self, decision: Decision, agent: Agent, method: str, host: str, port: int, path: str,
                 request_id: str, now: float) -> bool:
        """True when this hold or deny is in shadow (the decision's ``shadow``, or
        ``policy.shadow``): it is recorded, and the caller lets the request through. Only a
        judged decision can be shadowed; a policy error never reaches here (fail closed)."""
        if decision.action is Action.ALLOW or not (decision.shadow or self.settings.policy.shadow):
            return False
        self.metrics.shadow.labels(decision.action.value, decision.rule).inc()
        self.recorder.shadow(ShadowEvent(now, request_id, decision.action.value, decision.rule,
                                         decision.message, agent.id, method, host, port, path))
        return True

    async def handle(self, req: AgentRequest, agent: Agent) -> Reply:
        request_id = new_id()
        await self.check_destination(req.host, req.port, request_id)
        doc = self.policy_input(req, agent, self.clock())
        # A body too large for the policy to read is not read as MCP either (the shipped
        # policy holds it): parsing megabytes here would stall the loop all the same.
        rpc = None if doc["request"]["body_truncated"] else mcp.read(
            req, doc["request"]["body"], doc["request"]["headers"].get("content-type"))
        act = self._act(req, agent, request_id, doc, rpc)
        del doc  # _act drops it once judged: a held request's wait must not keep its policy input
        if rpc is None or not rpc.answerable:
            return await act
        try:  # MCP: answered on the JSON-RPC level, so the client and its model understand
            reply = await act
        except GateError as exc:
            return await self._mcp_refusal(req, rpc, exc, request_id)
        return self._mcp_readdress(req, rpc, reply)

    async def _act(self, req: AgentRequest, agent: Agent, request_id: str, doc: dict[str, Any],
                   rpc: mcp.Message | None) -> Reply:
        decision = await self.judge(req, agent, request_id, doc, rpc)
        del doc  # the decision log keeps its own reference until it is written
        if decision.action is Action.ALLOW:
            return await self._forward_live(req, request_id)
        if decision.action is Action.DENY:
            raise DeniedByPolicy(denial(decision.message), request_id=request_id, rule=decision.rule)
        held = await self._hold(req, agent, decision, rpc.content_key() if rpc else None)
        del decision  # nor its decision
        if isinstance(held, Reply):  # a standing grant forwarded it
            return held
        return await self.await_outcome(*held)  # _hold's frame is gone while the agent waits

    async def _mcp_refusal(self, req: AgentRequest, rpc: mcp.Message, exc: GateError,
                           request_id: str) -> Reply:
        rid = exc.request_id or request_id
        held = None
        if isinstance(exc, ApprovalPending):
            try:
                held = await self.store.get(rid)
            except StoreError:
                pass
        text = mcp.refusal_text(rpc, exc.code, exc.message, rid, held.message if held else None,
                                exc.extra.get("reviewer"), exc.extra.get("comment"))
        sse = mcp.wants_sse(req.header("accept"), self.mcp_streams.streams(mcp.endpoint(req)))
        ctype, body = mcp.answer(rpc, text, exc.code, sse)
        extra = [("X-HITL-Error", exc.code), *exc.headers]
        if exc.retry_after is not None:
            extra.append(("Retry-After", str(exc.retry_after)))
        return Reply(rid, 200, "OK", [("Content-Type", ctype), ("Cache-Control", "no-store")],
                     body=body, extra_headers=extra)

    def _mcp_readdress(self, req: AgentRequest, rpc: mcp.Message, reply: Reply) -> Reply:
        ctype = mcp.header(reply.headers, "content-type")
        if reply.stream is not None and reply.sent is None:
            self.mcp_streams.note(mcp.endpoint(req), ctype)
        elif reply.sent is not None:  # a held call's answer: to this call's ids
            ids = mcp.id_map(mcp.parse_quiet(reply.sent), rpc)
            if ids and reply.stream is not None:
                reply.stream = Rewritten(reply.stream, mcp.EventRewriter(ids))
            elif reply.body:
                reply.body = mcp.rewrite_ids(reply.body, ctype, ids)
        return reply

    async def check_destination(self, host: str, port: int, request_id: str) -> None:
        """Resolve and classify the destination before the policy and before any hold: a
        reviewer is never asked to approve a request that cannot be sent (docs/agent-contract.md). The
        forward dials the addresses checked here; an approved hold is checked again."""
        try:
            await self.upstream.destination(host, port)
        except GateError as exc:  # DestinationBlocked (403) or an unresolvable name (502)
            exc.request_id = request_id
            raise

    async def _forward_live(self, req: AgentRequest, request_id: str,
                            approved_by: tuple[str, ...] = ()) -> Reply:
        try:
            opened = await self.upstream.open(req)
        except GateError as exc:
            exc.request_id = request_id
            raise
        return Reply(request_id, opened.status, opened.reason, opened.headers, stream=opened,
                     approved_by=approved_by)

    # -- holding -------------------------------------------------------------------------
    async def _hold(self, req: AgentRequest, agent: Agent, decision: Decision,
                    content_key: str | None = None) -> Reply | tuple[str, float]:
        """Hold the request: a new record, or the live one it repeats (Rule 3). Returns what
        the agent waits on (record id, end of its wait), or the reply of a standing grant."""
        now = self.clock()
        hold = self.settings.hold
        try:
            # A live record for this very request comes first: the approval that created a
            # grant must still forward (or replay) its own request, exactly once.
            fingerprint = req.fingerprint(agent.key, self._secret_headers, content_key)
            rec = await self.store.find_by_fingerprint(fingerprint, now, hold.replay_window)
            if rec is None:
                grant = await self._standing_grant(req, agent, decision, now)
                if grant is not None:
                    request_id = new_id(now)
                    self.metrics.decisions.labels("granted", decision.rule).inc()
                    log_decision(request_id, "granted", decision.rule, agent.id, f"grant:{grant.id}")
                    await self.store.audit_append(now, "granted", request_id, f"grant:{grant.id}", {
                        "method": req.method, "url": redact_url(req.url), "rule": decision.rule,
                        "granted_by": grant.created_by})
                    return await self._forward_live(req, request_id,
                                                    (f"{grant.created_by} (standing grant)",))
            created = False
            if rec is None:
                # Look up and insert again in one store transaction: an identical request that
                # arrived meanwhile made the record this one must attach to (Rule 3); the
                # pending limit is counted in it too (TooManyPending past it).
                rec, created = await self.store.create_or_attach(HoldRecord(
                    id=new_id(now), status=HoldStatus.PENDING, fingerprint=fingerprint,
                    agent=agent.id, agent_address=agent.address, request=req,
                    message=decision.message, rule=decision.rule, reviewers=decision.reviewers,
                    approvals_needed=decision.approvals, grantable=decision.grantable,
                    on_timeout=decision.on_timeout or OnTimeout(hold.on_timeout),
                    created_at=now, deadline=now + (decision.timeout or hold.timeout), updated_at=now,
                ), hold.replay_window, hold.max_pending_per_agent)
            if created:
                log.info("held %s %s %s%s as %s (rule %s)", agent.id, req.method, req.authority, req.path,
                         rec.id, rec.rule)
                self._announce(rec.id, rec.status.value)
                self.events.publish({"type": "held", "id": rec.id, "status": rec.status.value,
                                     "agent": rec.agent, "message": rec.message, "rule": rec.rule,
                                     "method": req.method, "host": req.authority, "path": req.path,
                                     "reviewers": list(rec.reviewers), "deadline": rec.deadline})
        except StoreError as exc:
            log.error("store unavailable while holding %s %s: %s", req.method, req.url, exc)
            raise StoreUnavailable("This request needs human review, but the gate cannot reach its "
                                   "pending store, so it was not queued or sent. Retry it after "
                                   "Retry-After seconds.") from exc
        if not created and rec.status is HoldStatus.REJECTED:
            # Refusals are remembered (docs/agent-contract.md): the same answer, not a new review item.
            log.info("%s %s %s%s repeats rejected %s: refused again", agent.id, req.method,
                     req.authority, req.path, rec.id)
            raise self._rejection(rec, replayed=True)
        return rec.id, now + hold.client_wait

    async def _standing_grant(self, req: AgentRequest, agent: Agent, decision: Decision,
                              now: float) -> Grant | None:
        """A grant that may stand in for a review of this request (docs/policies.md): its scope
        (agent, scheme, host, port, method, path) covers the request, and the request's own
        decision is a grantable hold of the grant's rule, whose reviewers admit the granting
        reviewer and which needs no more approvals than the grant was made with."""
        if not decision.grantable:
            return None
        for grant in await self.store.find_grants(agent.id, req, now):
            if (grant.rule == decision.rule and grant.approvals is not None
                    and decision.approvals <= grant.approvals
                    and Reviewer(grant.created_by, grant.groups).may_decide(decision.reviewers)):
                return grant
        return None

    async def await_outcome(self, request_id: str, wait_until: float) -> Reply:
        """Wait for a held request's fate, up to ``wait_until``; act on it (Rules 2 and 4).
        While it waits, the agent holds one future and one timer (waiters.py), no copy of the
        record: it reads the status when woken, and the whole record only for the outcome.
        One frame for the whole wait: 10,000 waiting agents pay for each frame kept."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                woken = self.waiters.add(request_id)  # before the read: no change can slip between
                try:
                    status = await self.store.status(request_id)
                    remaining = self._patience(status, wait_until)
                    if remaining > 0:
                        timer = loop.call_later(remaining, waiters.resolve, woken)
                        try:
                            news = await woken
                        finally:
                            timer.cancel()
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



def denial(message: str) -> str:
    """denied_by_policy, worded for the model: the policy's reason and what not to do."""
    reason = f": {message.strip().rstrip('.')}." if message.strip() else "."
    return f"The gate's policy refused this request{reason} It was not sent; do not resend it unchanged."


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
