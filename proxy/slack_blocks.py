"""Block Kit for held requests in Slack (``review.slack``): pure functions over a record.

Rule 1. Everything a request controls (agent id, URL, body, the policy's message, which
        may quote the request, reviewers' comments) is escaped (``&``, ``<``, ``>``) before
        it goes into any text, so no request can make Slack notify ``<!channel>``, mention
        ``<@U…>`` or show a link of its choosing. The messages are sent with ``parse:
        none`` and without ``link_names``, so a bare ``@channel`` stays plain text too.
Rule 2. Every text stays within Block Kit's limits (150 characters in a header, 3000 in a
        section, 75 on a button) whatever the request holds: long values are cut and
        marked "…". A message has at most 8 blocks (the limit is 50).
Rule 3. The body summary is redacted like the review UI's headers: values of JSON keys,
        form fields and query parameters named like secrets are ``[redacted]``.
Rule 4. A button carries the request id and the digest of the content the message shows;
        an approval is refused when the request changed since (the digest binding).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from proxy import mcp
from proxy.model import HoldStatus
from proxy.redact import REDACTED
from proxy.store.records import HoldRecord

HEADER_LIMIT = 150
SECTION_LIMIT = 3000
BUTTON_LIMIT = 75
BODY_SUMMARY = 700  # characters of a body shown in the message; the detail page has all
ARGUMENTS_SUMMARY = 1200  # characters of an MCP tool call's arguments (all calls together)
MCP_CALLS = 3  # tool calls of a batch shown
MCP_LIMIT = 1024 * 1024  # bodies above this are not read for tool calls
GRANT_MINUTES = 60

ACTION_APPROVE = "hitl_approve"
ACTION_GRANT = "hitl_approve_grant"
ACTION_REJECT = "hitl_reject"
REJECT_CALLBACK = "hitl_reject"
COMMENT_BLOCK = "comment"
COMMENT_ACTION = "comment"
COMMENT_LIMIT = 2000

_SECRET_NAME = re.compile(r"key|token|secret|passw|signature|credential|auth|session|cookie",
                          re.IGNORECASE)

OUTCOME = {
    HoldStatus.APPROVED: ":white_check_mark: *Approved*",
    HoldStatus.FORWARDING: ":white_check_mark: *Approved* · sending",
    HoldStatus.FORWARDED: ":white_check_mark: *Approved* · sent",
    HoldStatus.REJECTED: ":x: *Rejected*",
    HoldStatus.EXPIRED: ":hourglass: *Expired* with no decision",
    HoldStatus.FAILED: ":warning: *Approved* · forwarding failed",
}


def escape(text: str) -> str:
    """Slack's three control characters (Rule 1)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plain(text: str, limit: int) -> dict[str, Any]:
    # Escaped first, then cut: an entity cut in half would show as text, never as markup.
    return {"type": "plain_text", "text": clip(escape(text), limit) or " ", "emoji": False}


def mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": clip(text, SECTION_LIMIT)}


def _code(text: str, limit: int) -> str:
    # Escaped, and a ``` inside cannot close the code span early.
    return "```" + clip(escape(text).replace("```", "`\u200b``"), limit) + "```"


def when(ts: float) -> str:
    """A time every reader sees in their own zone (Slack's date token; fallback in UTC)."""
    from proxy.store.records import rfc3339

    return f"<!date^{int(ts)}^{{date_short_pretty}} {{time}}|{rfc3339(ts)}>"


# -- what the request holds -----------------------------------------------------------------

def _redact_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and _SECRET_NAME.search(k) else _redact_json(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_json(v) for v in value]
    return value


def _redact_pairs(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, REDACTED if _SECRET_NAME.search(k) else v) for k, v in pairs]


def redacted_url(url: str) -> str:
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = urlencode(_redact_pairs(parse_qsl(parts.query, keep_blank_values=True)), safe="[]")
    return urlunsplit(parts._replace(query=query))


def body_summary(rec: HoldRecord) -> str:
    """A few lines of mrkdwn: the MCP tool and its arguments, or the body, redacted (Rule 3)."""
    req = rec.forward_request()
    body = req.body
    if not body:
        return ""
    found = mcp.summary(body) if len(body) <= MCP_LIMIT else None
    calls = [c for c in found["calls"] if c["tool"] is not None] if found else []
    if calls:
        shown = calls[:MCP_CALLS]
        parts = [f"*MCP tool* `{clip(escape(c['tool']), 200)}`\n"
                 + _code(json.dumps(_redact_json(c["arguments"]), indent=1, ensure_ascii=False),
                         ARGUMENTS_SUMMARY // len(shown)) for c in shown]
        if len(calls) > len(shown):
            parts.append(f"… and {len(calls) - len(shown)} more tool calls in this batch")
        return "\n".join(parts)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return f"*Body* {len(body)} bytes (binary)"
    ctype = (req.header("content-type") or "").split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        pairs = _redact_pairs(parse_qsl(text, keep_blank_values=True))
        text = "\n".join(f"{k} = {v}" for k, v in pairs)
    else:
        try:
            text = json.dumps(_redact_json(json.loads(text)), indent=1, ensure_ascii=False)
        except ValueError:
            pass  # not JSON: shown as sent
    return f"*Body* ({len(body)} bytes)\n{_code(text, BODY_SUMMARY)}"


# -- messages -------------------------------------------------------------------------------

def _headline(rec: HoldRecord) -> str:
    return rec.message or "A request needs approval"


def _facts(rec: HoldRecord) -> dict[str, Any]:
    req = rec.request
    approvals = f"{len(rec.approved_by)} of {rec.approvals_needed}"
    who = ", ".join(rec.reviewers) if rec.reviewers else "any reviewer"
    return {"type": "section", "fields": [
        mrkdwn(f"*Agent*\n{clip(escape(rec.agent), 300)}"),
        mrkdwn(f"*Request*\n`{clip(escape(req.method), 20)} {clip(escape(redacted_url(req.url)), 600)}`"),
        mrkdwn(f"*Reviewers*\n{clip(escape(who), 300)} · approvals {approvals}"),
        mrkdwn(f"*Deadline*\n{when(rec.deadline)}"),
    ]}


def _button(text: str, action: str, value: str, style: str | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {"type": "button", "text": plain(text, BUTTON_LIMIT),
                              "action_id": action, "value": value}
    if style:
        button["style"] = style
    return button


def button_value(rec: HoldRecord) -> str:
    """``id:digest`` of the content the message shows (Rule 4)."""
    return f"{rec.id}:{rec.forward_request().content_digest()}"


def parse_value(value: str) -> tuple[str, str]:
    request_id, _, digest = value.partition(":")
    return request_id, digest


def hold_message(rec: HoldRecord, public_url: str) -> dict[str, Any]:
    """``text`` (the notification's fallback) and ``blocks`` of the record in its state."""
    link = f"<{public_url}/requests/{rec.id}|Open in hitl-proxy>"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": plain(_headline(rec), HEADER_LIMIT)},
        _facts(rec),
    ]
    summary = body_summary(rec)
    if summary:
        blocks.append({"type": "section", "text": mrkdwn(summary)})
    if rec.status is HoldStatus.PENDING:
        blocks.append({"type": "context", "elements": [mrkdwn(f"{link} · rule `{clip(escape(rec.rule), 200)}`")]})
        value = button_value(rec)
        buttons = [_button("Approve", ACTION_APPROVE, value, "primary")]
        if rec.grantable and rec.approvals_needed - len(rec.approved_by) == 1:
            buttons.append(_button(f"Approve + grant {GRANT_MINUTES // 60}h", ACTION_GRANT, value))
        buttons.append(_button("Reject", ACTION_REJECT, value, "danger"))
        blocks.append({"type": "actions", "block_id": "hitl_actions", "elements": buttons})
    else:
        blocks.append({"type": "section", "text": mrkdwn(outcome_text(rec))})
        blocks.append({"type": "context", "elements": [mrkdwn(f"{link} · rule `{clip(escape(rec.rule), 200)}`")]})
    status = "needs approval" if rec.status is HoldStatus.PENDING else rec.status.value
    text = f"hitl-proxy: {clip(escape(_headline(rec)), 300)} ({escape(rec.agent)}, {status})"
    return {"text": text, "blocks": blocks}


def outcome_text(rec: HoldRecord) -> str:
    """Who decided, when, and what came of it."""
    head = OUTCOME.get(rec.status, f"*{rec.status.value}*")
    decided = f" · {when(rec.decided_at)}" if rec.decided_at else ""
    rejection = rec.rejection
    if rec.status is HoldStatus.REJECTED and rejection is not None:
        comment = f"\n>{clip(escape(rejection.comment), 1500)}" if rejection.comment else ""
        return f"{head} by {escape(rejection.reviewer)}{decided}{comment}"
    if rec.status is HoldStatus.EXPIRED:
        return f"{head}{decided}"
    by = ", ".join(escape(r) for r in rec.approved_by) or "the deadline (on_timeout: allow)"
    tail = ""
    if rec.status is HoldStatus.FORWARDED and rec.response_status is not None:
        tail = f"; the upstream answered {rec.response_status}"
    elif rec.status is HoldStatus.FAILED and rec.failure_reason:
        tail = f": {clip(escape(rec.failure_reason), 500)}"
    return f"{head} by {by}{decided}{tail}"


def decided_by(rec: HoldRecord) -> str:
    """One line for a click on a request that is no longer pending (plain mrkdwn)."""
    return f"This request is no longer pending. {outcome_text(rec)}"


def reject_modal(rec: HoldRecord, channel: str, ts: str, digest: str) -> dict[str, Any]:
    meta = json.dumps({"id": rec.id, "digest": digest, "channel": channel, "ts": ts})
    return {
        "type": "modal",
        "callback_id": REJECT_CALLBACK,
        "private_metadata": meta,
        "title": {"type": "plain_text", "text": "Reject request"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {"type": "section", "text": mrkdwn(f"*{clip(escape(_headline(rec)), 500)}*\n"
                                               f"{escape(rec.agent)} · `{escape(rec.request.method)} "
                                               f"{clip(escape(redacted_url(rec.request.url)), 600)}`")},
            {"type": "input", "block_id": COMMENT_BLOCK,
             "label": {"type": "plain_text", "text": "Why? The agent receives this as feedback."},
             "element": {"type": "plain_text_input", "action_id": COMMENT_ACTION, "multiline": True,
                         "max_length": COMMENT_LIMIT}},
        ],
    }
