"""``POST /slack/interactions``: Slack's signed callbacks for the buttons and the reject modal.

Rule 1. Nothing is read from a callback before its signature is checked: v0, HMAC-SHA256
        of ``v0:{X-Slack-Request-Timestamp}:{raw body}`` with ``signing_secret``, compared
        in constant time, and a timestamp within ``MAX_SKEW`` of now (a replayed old
        callback is refused). Anything else is 401 and changes nothing. No bearer token,
        session or CSRF token applies here: the signature is the authentication.
Rule 2. The Slack user acts as the reviewer whose ``slack`` id matches, through
        ``Gate.review``: the same eligibility, quorum and self-approval rules as the API
        and the web UI. Anyone else gets an ephemeral refusal and nothing changes.
Rule 3. Slack wants an answer within 3 seconds: the route answers at once and does the work
        (store, gate, Slack calls) in a background task after the answer is sent. Only the
        modal's empty-comment check runs before it, because its answer shows the error.
Rule 4. A click whose message showed other content than the request now has is refused
        (the digest binding), and a click on a request no longer pending says who decided it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.errors import DigestMismatch, GateError, InvalidTransition, StoreError
from proxy.gate import Gate
from proxy.model import HoldStatus, Reviewer, Verdict
from proxy.slack import SlackChannel, SlackError
from proxy.slack_blocks import (
    ACTION_APPROVE,
    ACTION_GRANT,
    ACTION_REJECT,
    COMMENT_ACTION,
    COMMENT_BLOCK,
    GRANT_MINUTES,
    REJECT_CALLBACK,
    decided_by,
    escape,
    parse_value,
    reject_modal,
)
from proxy.store.records import HoldRecord

log = logging.getLogger("hitl.slack")

MAX_SKEW = 300  # seconds between Slack's timestamp and our clock
MAX_BODY = 1024 * 1024


def signature_ok(secret: str, timestamp: str | None, signature: str | None, body: bytes,
                 now: float) -> bool:
    """Slack's v0 request signature (Rule 1)."""
    if not timestamp or not signature or len(timestamp) > 12 or not timestamp.isascii() \
            or not timestamp.isdigit():
        return False
    if abs(now - int(timestamp)) > MAX_SKEW:
        return False
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))


def _unauthorized(message: str) -> JSONResponse:
    return JSONResponse({"error": "unauthorized", "message": message}, status_code=401)


class SlackInteractions:
    def __init__(self, gate: Gate, channel: SlackChannel, clock: Callable[[], float] = time.time) -> None:
        self.gate = gate
        self.channel = channel
        self.secret = channel.slack.signing_secret
        self.public_url = channel.public_url
        self.clock = clock

    def routes(self) -> list[Route]:
        return [Route("/slack/interactions", self.interactions, methods=["POST"])]

    async def interactions(self, request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return JSONResponse({"error": "too_large", "message": "body too large"}, status_code=413)
        if not signature_ok(self.secret, request.headers.get("x-slack-request-timestamp"),
                            request.headers.get("x-slack-signature"), body, self.clock()):
            return _unauthorized("not a Slack request signed with this app's signing secret, "
                                 "or older than 5 minutes")
        try:
            form = parse_qs(body.decode("utf-8"), strict_parsing=False)
            payload = json.loads(form["payload"][0])
        except (UnicodeDecodeError, KeyError, IndexError, ValueError):
            payload = None
        if not isinstance(payload, dict):
            return JSONResponse({"error": "bad_request", "message": "expected a form field payload= "
                                 "holding Slack's interaction JSON"}, status_code=400)
        kind = payload.get("type")
        if kind == "block_actions":
            return Response(status_code=200, background=BackgroundTask(self._on_action, payload))
        if kind == "view_submission" and _get(payload, "view", "callback_id") == REJECT_CALLBACK:
            comment = _get(payload, "view", "state", "values", COMMENT_BLOCK, COMMENT_ACTION, "value")
            if not isinstance(comment, str) or not comment.strip():
                return JSONResponse({"response_action": "errors", "errors": {
                    COMMENT_BLOCK: "Say why: the agent receives this as feedback."}})
            return Response(status_code=200, background=BackgroundTask(self._on_reject, payload, comment))
        return Response(status_code=200)  # other interactions: nothing to do

    # -- after the answer (Rule 3) -------------------------------------------------------
    async def _on_action(self, payload: dict[str, Any]) -> None:
        actions = payload.get("actions")
        action = actions[0] if isinstance(actions, list) and actions and isinstance(actions[0], dict) else {}
        action_id, value = action.get("action_id"), action.get("value")
        if action_id not in (ACTION_APPROVE, ACTION_GRANT, ACTION_REJECT) or not isinstance(value, str):
            return
        request_id, digest = parse_value(value)
        reply = _Reply(self.channel, payload)
        try:
            rec = await self._checked(request_id, digest, payload, reply)
            if rec is None:
                return
            reviewer = self._reviewer(payload)
            assert reviewer is not None
            if action_id == ACTION_REJECT:
                await self._open_reject_form(rec, digest, payload, reply)
                return
            grant = GRANT_MINUTES if action_id == ACTION_GRANT else None
            await self._decide(rec.id, reviewer, Verdict("approve", reviewer.name, "", grant_minutes=grant,
                                                         digest=digest or None), reply)
        except StoreError:
            await reply("The review store is unavailable right now; nothing was decided. Try again.")

    async def _on_reject(self, payload: dict[str, Any], comment: str) -> None:
        try:
            meta = json.loads(_get(payload, "view", "private_metadata") or "{}")
        except ValueError:
            return
        if not isinstance(meta, dict) or not isinstance(meta.get("id"), str):
            return
        reply = _Reply(self.channel, payload, channel_id=meta.get("channel"))
        try:
            rec = await self._checked(meta["id"], str(meta.get("digest") or ""), payload, reply)
            if rec is None:
                return
            reviewer = self._reviewer(payload)
            assert reviewer is not None
            digest = str(meta.get("digest") or "") or None
            await self._decide(rec.id, reviewer, Verdict("reject", reviewer.name, comment.strip(), digest=digest),
                               reply)
        except StoreError:
            await reply("The review store is unavailable right now; nothing was decided. Try again.")

    def _reviewer(self, payload: dict[str, Any]) -> Reviewer | None:
        user = _get(payload, "user", "id")
        return self.channel.reviewers.get(user) if isinstance(user, str) else None

    async def _checked(self, request_id: str, digest: str, payload: dict[str, Any],
                       reply: _Reply) -> HoldRecord | None:
        """The record, when this user may act on it as shown; else a refusal (Rules 2, 4)."""
        reviewer = self._reviewer(payload)
        if reviewer is None:
            await reply("You are not a reviewer on hitl-proxy, so nothing changed. Ask its operator to put "
                        "your Slack member ID (`slack: U…`) on your reviewer entry.")
            return None
        rec = await self.gate.store.get(request_id)
        if rec is None:
            await reply(f"There is no held request {escape(request_id)}.")
            return None
        if rec.status is not HoldStatus.PENDING:
            await reply(decided_by(rec))
            self.channel.schedule(rec.id)  # the message may lag behind: bring it in step
            return None
        if reviewer.name == rec.agent:  # before the reject form opens; the gate refuses it anyway
            await reply(f"You ({escape(reviewer.name)}) are the agent that sent this request, so you may "
                        "not decide it; nothing changed.")
            return None
        if not reviewer.may_decide(rec.reviewers):
            await reply(f"You ({escape(reviewer.name)}) may not decide this request, so nothing changed; "
                        f"it needs {escape(', '.join(rec.reviewers))}.")
            return None
        if digest and digest != rec.forward_request().content_digest():
            await reply("This request changed since the message showed it, so nothing changed. "
                        f"Look again: <{self.public_url}/requests/{rec.id}|open it>.")
            self.channel.schedule(rec.id)
            return None
        return rec

    async def _open_reject_form(self, rec: HoldRecord, digest: str, payload: dict[str, Any],
                                reply: _Reply) -> None:
        channel = _get(payload, "container", "channel_id") or _get(payload, "channel", "id") or ""
        ts = _get(payload, "container", "message_ts") or _get(payload, "message", "ts") or ""
        try:  # one attempt: the trigger_id is good for 3 seconds
            await self.channel.client.call("views.open", {
                "trigger_id": payload.get("trigger_id"), "view": reject_modal(rec, str(channel), str(ts), digest)})
        except SlackError:
            await reply(f"Slack could not open the rejection form. Reject in the web UI: "
                        f"<{self.public_url}/requests/{rec.id}|open it>.")

    async def _decide(self, request_id: str, reviewer: Reviewer, verdict: Verdict, reply: _Reply) -> None:
        try:
            rec = await self.gate.review(request_id, reviewer, verdict)
        except DigestMismatch:
            await reply("This request changed since the message showed it, so nothing changed. "
                        f"Look again: <{self.public_url}/requests/{request_id}|open it>.")
            self.channel.schedule(request_id)
            return
        except InvalidTransition:
            now = await self.gate.store.get(request_id)
            if now is not None and now.status is not HoldStatus.PENDING:
                await reply(decided_by(now))
                self.channel.schedule(request_id)
            elif now is not None and now.deadline <= self.gate.clock():
                await reply("This request reached its deadline before your decision, so nothing changed.")
            else:
                await reply("You have already decided this request; it waits for the other reviewers.")
            return
        except GateError as exc:  # not eligible (403), a bad grant (400), gone (404)
            await reply(f"Nothing changed: {escape(exc.message)}")
            return
        log.info("%s %s %s in Slack", reviewer.name, verdict.kind, request_id)
        if rec.status is HoldStatus.PENDING:
            missing = rec.approvals_needed - len(rec.approved_by)
            await reply(f"Your approval is recorded; {missing} more needed.")


class _Reply:
    """An ephemeral answer to the user who clicked: through the interaction's response_url,
    else chat.postEphemeral in the message's channel."""

    def __init__(self, channel: SlackChannel, payload: dict[str, Any], channel_id: Any = None) -> None:
        self.slack = channel
        self.response_url = payload.get("response_url")
        self.user = _get(payload, "user", "id")
        self.channel = channel_id or _get(payload, "container", "channel_id") or _get(payload, "channel", "id")

    async def __call__(self, text: str) -> None:
        if isinstance(self.response_url, str) and self.response_url:
            await self.slack.client.respond(self.response_url, {
                "response_type": "ephemeral", "replace_original": False, "text": text})
            return
        if isinstance(self.channel, str) and isinstance(self.user, str):
            try:
                await self.slack.client.call("chat.postEphemeral",
                                             {"channel": self.channel, "user": self.user, "text": text})
            except SlackError:
                pass  # counted and logged by the client


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data
