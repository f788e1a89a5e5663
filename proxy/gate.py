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

This module judges and makes the hold; what happens once the record exists (the agent's
wait, the reviewers' verdicts, the forward of Rules 4 and 5) is ``HeldRequests`` (holds.py),
which ``Gate`` inherits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from proxy import mcp, waiters
from proxy.change_feed import ChangeFeed
from proxy.config import Settings
from proxy.decision_log import DecisionRecorder, ShadowEvent
from proxy.errors import (
    ApprovalPending,
    DeniedByPolicy,
    GateError,
    PolicyError,
    StoreError,
    StoreUnavailable,
)
from proxy.events import EventBus
from proxy.holds import HeldRequests
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
)
from proxy.policy.engine import PolicyEngine
from proxy.policy.input import build_input
from proxy.redact import Redactor, redact_url
from proxy.relay import Rewritten
from proxy.reply import Reply
from proxy.store import AsyncStore
from proxy.store.records import Grant, HoldRecord, new_id
from proxy.store.sql import new_owner
from proxy.sweepers import Sweepers
from proxy.upstream_client import UpstreamClient

log = logging.getLogger("hitl.gate")

__all__ = ["Gate", "Reply", "denial"]  # Reply lives in reply.py; callers know it from here


class Gate(HeldRequests):
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



def denial(message: str) -> str:
    """denied_by_policy, worded for the model: the policy's reason and what not to do."""
    reason = f": {message.strip().rstrip('.')}." if message.strip() else "."
    return f"The gate's policy refused this request{reason} It was not sent; do not resend it unchanged."
