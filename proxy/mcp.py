"""MCP tool calls as the gate sees them: JSON-RPC 2.0 bodies read, judged and answered.

Agents reach MCP servers over the streamable-HTTP transport: each message is a POST of a
JSON-RPC 2.0 object (or a batch, a JSON array of them), answered with JSON or with a
``text/event-stream`` of ``event: message`` frames. This module is sans-IO: pure functions
from bytes and parsed JSON to values, and back to bytes.

Theory of operation
-------------------
Rule 1. Recognizing MCP costs other traffic nothing measurable: a request that is not a
        POST, or whose body does not open with ``{`` or ``[``, is dismissed by one
        comparison and one anchored regex; a JSON body the proxy parsed for the policy
        anyway is recognized by a dict look-up (``"jsonrpc" in body``), never parsed twice.
Rule 2. What claims to be JSON-RPC but cannot be read strictly (duplicate keys, NaN,
        a batch mixing messages with junk, a method that is not a string) is *malformed*:
        the policy sees ``input.mcp.error`` and decides — it is never waved through as
        "not MCP", since a lenient server might still execute it.
Rule 3. A batch is judged call by call; the strictest action wins (``strictest``).
Rule 4. The same call is the same session + method + params without ``_meta``: the
        JSON-RPC ``id`` (new on every call), whitespace, key order and ``_meta`` (progress
        tokens) do not count (``Message.content_key``). Held calls attach and replay by it.
Rule 5. A stored answer given to a later, identical call has its JSON-RPC ids rewritten
        to the later call's ids (``rewrite_ids``), or the client would drop it as an answer
        to nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from proxy.model import Action, AgentRequest, Decision, OnTimeout

JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"
TOOLS_CALL = "tools/call"
PENDING_CODE = -32001  # JSON-RPC error for non-tool requests the gate holds or refuses
_OPENS_JSON = re.compile(rb"[ \t\r\n]*[\[{]")

Id = str | int | float | None


class Malformed(ValueError):
    """A body that claims to be JSON-RPC but cannot be read strictly (Rule 2)."""


@dataclass(frozen=True, slots=True)
class Call:
    """One JSON-RPC message of a POST: a request (``has_id``), a notification, or a
    response the client sends back to a server request (``method`` None)."""

    method: str | None
    params: Any
    id: Id
    has_id: bool

    @property
    def tool(self) -> str | None:
        if self.method == TOOLS_CALL and isinstance(self.params, dict):
            name = self.params.get("name")
            return name if isinstance(name, str) else None
        return None

    @property
    def arguments(self) -> Any:
        if self.method == TOOLS_CALL and isinstance(self.params, dict):
            return self.params.get("arguments")
        return None

    @property
    def is_request(self) -> bool:
        return self.has_id and self.method is not None

    def identity(self) -> Any:
        """What makes two calls the same call (Rule 4): method and params minus ``_meta``."""
        params = self.params
        if isinstance(params, dict) and "_meta" in params:
            params = {k: v for k, v in params.items() if k != "_meta"}
        return [self.method, params] if self.method is not None else ["response", self.id, params]


@dataclass(frozen=True, slots=True)
class Message:
    calls: tuple[Call, ...]
    batch: bool
    session: str | None
    error: str | None = None  # why the body is malformed (Rule 2); calls is then empty

    def policy_inputs(self) -> list[dict[str, Any]]:
        """One ``input.mcp`` per call (a malformed body: one, carrying ``error``). Every
        key is always present (null when absent), so a policy's object of them is defined."""
        if self.error is not None:
            return [{"method": None, "tool": None, "arguments": None, "id": None,
                     "session": self.session, "error": self.error}]
        return [{"method": c.method, "tool": c.tool, "arguments": c.arguments, "id": c.id,
                 "session": self.session, "error": None} for c in self.calls]

    def content_key(self) -> str:
        raw = json.dumps([self.session, [c.identity() for c in self.calls]], sort_keys=True,
                         separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()

    @property
    def requests(self) -> tuple[Call, ...]:
        return tuple(c for c in self.calls if c.is_request)

    @property
    def answerable(self) -> bool:
        """Whether the gate can answer on the JSON-RPC level (some request awaits an answer)."""
        return self.error is None and bool(self.requests)

    @property
    def tools(self) -> tuple[str, ...]:
        return tuple(c.tool for c in self.calls if c.tool is not None)


# -- reading -------------------------------------------------------------------------------
def read(req: AgentRequest, parsed: Any, content_type: str | None) -> Message | None:
    """The JSON-RPC message of ``req``, or None when it is not one (Rule 1). ``parsed`` is
    the body as the policy input already parsed it (None when it did not), under the
    request's ``content_type``."""
    if req.method != "POST":
        return None
    if parsed is not None and _is_json(content_type):
        if isinstance(parsed, dict):
            if "jsonrpc" not in parsed:
                return None
        elif not isinstance(parsed, list) or not any(isinstance(x, dict) and "jsonrpc" in x
                                                     for x in parsed):
            return None
    elif not _OPENS_JSON.match(req.body):
        return None
    # Parsed here only: a JSON-RPC message, or a JSON-looking body the policy input did
    # not parse (another content type, or not strict JSON).
    session = req.header("mcp-session-id")
    try:
        return parse(req.body, session)
    except Malformed as exc:
        return Message((), False, session, str(exc))
    except _NotJsonRpc:
        return None


class _NotJsonRpc(Exception):
    pass


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON_TYPE or media.endswith("+json")


def parse(body: bytes, session: str | None = None) -> Message:
    """Strictly parse a JSON-RPC 2.0 body. Raises ``Malformed`` (Rule 2), or
    ``_NotJsonRpc`` for a body that does not claim to be JSON-RPC at all."""
    try:
        doc = json.loads(body, object_pairs_hook=_unique, parse_constant=_no_constant)
    except _Duplicate as exc:
        raise Malformed(f"duplicate key {exc.args[0]!r} in a JSON-RPC body") from None
    except (ValueError, RecursionError):
        if b"jsonrpc" in body:
            raise Malformed("a body naming jsonrpc that is not strict JSON") from None
        raise _NotJsonRpc() from None
    if isinstance(doc, dict):
        if "jsonrpc" not in doc:
            raise _NotJsonRpc()
        return Message((_call(doc),), False, session)
    if isinstance(doc, list):
        if not any(isinstance(x, dict) and "jsonrpc" in x for x in doc):
            raise _NotJsonRpc()
        if not doc:
            raise Malformed("an empty JSON-RPC batch")
        return Message(tuple(_call(x) for x in doc), True, session)
    raise _NotJsonRpc()


def _call(doc: Any) -> Call:
    if not isinstance(doc, dict):
        raise Malformed("a JSON-RPC batch holding something other than objects")
    if doc.get("jsonrpc") != "2.0":
        raise Malformed('a JSON-RPC message without "jsonrpc": "2.0"')
    has_id = "id" in doc
    msg_id = doc.get("id")
    if has_id and (isinstance(msg_id, bool) or not isinstance(msg_id, str | int | float | type(None))):
        raise Malformed("a JSON-RPC id that is not a string or a number")
    params = doc.get("params")
    if params is not None and not isinstance(params, dict | list):
        raise Malformed("JSON-RPC params that are not an object or an array")
    if "method" in doc:
        method = doc["method"]
        if not isinstance(method, str) or not method:
            raise Malformed("a JSON-RPC method that is not a string")
        if method == TOOLS_CALL and not (isinstance(params, dict) and isinstance(params.get("name"), str)):
            raise Malformed("a tools/call without a tool name")
        return Call(method, params, msg_id, has_id)
    if not has_id or not ("result" in doc or "error" in doc):
        raise Malformed("a JSON-RPC message that is neither a request, a notification nor a response")
    return Call(None, doc.get("result", doc.get("error")), msg_id, has_id)


class _Duplicate(ValueError):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# -- judging -------------------------------------------------------------------------------
_RANK = {Action.ALLOW: 0, Action.HOLD: 1, Action.DENY: 2}


def strictest(decisions: Sequence[Decision]) -> Decision:
    """One decision for a batch (Rule 3): any deny denies; else any hold holds, needing the
    most approvals any held call needs, the shortest timeout, ``deny`` on timeout if any
    call says so, grantable only when every held call is; else the first allow. A decision
    in shadow (which lets its request through) never outranks a real one: it wins only
    when every real decision allows."""
    real = [d for d in decisions if not d.shadow]
    top = _strictest(real) if real else None
    if top is None or top.action is Action.ALLOW:
        shadowed = [d for d in decisions if d.shadow]
        if shadowed and (s := _strictest(shadowed)).action is not Action.ALLOW:
            return s
    return top if top is not None else decisions[0]


def _strictest(decisions: Sequence[Decision]) -> Decision:
    top = max(decisions, key=lambda d: _RANK[d.action])
    if top.action is not Action.HOLD:
        return top
    holds = [d for d in decisions if d.action is Action.HOLD]
    if len(holds) == 1:
        return holds[0]
    lead = max(holds, key=lambda d: (d.approvals, bool(d.reviewers)))
    timeouts = [d.timeout for d in holds if d.timeout is not None]
    on_timeout = (OnTimeout.DENY if any(d.on_timeout is not OnTimeout.ALLOW for d in holds)
                  else OnTimeout.ALLOW)
    return replace(lead, message="; ".join(dict.fromkeys(d.message for d in holds if d.message)),
                   timeout=min(timeouts) if timeouts else None, on_timeout=on_timeout,
                   grantable=all(d.grantable for d in holds) and len({d.rule for d in holds}) == 1)


# -- answering -----------------------------------------------------------------------------
def wants_sse(accept: str | None, server_streams: bool) -> bool:
    """Answer as an event stream when the client accepts one and either does not accept
    JSON or the server itself answers this endpoint with event streams."""
    if not accept:
        return False
    types = {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}
    if SSE_TYPE not in types:
        return False
    return server_streams or not (types & {JSON_TYPE, "application/*", "*/*"})


def tool_error(text: str) -> dict[str, Any]:
    """A ``CallToolResult`` the model reads as a failed call: it did not happen."""
    return {"content": [{"type": "text", "text": text}], "isError": True}


def answer(msg: Message, text: str, code: str, sse: bool) -> tuple[str, bytes]:
    """(content type, body) answering every request of ``msg`` with ``text``: a tool call
    gets an ``isError`` result, any other request a JSON-RPC error; notifications nothing."""
    out = []
    for call in msg.requests:
        if call.method == TOOLS_CALL:
            out.append({"jsonrpc": "2.0", "id": call.id, "result": tool_error(text)})
        else:
            out.append({"jsonrpc": "2.0", "id": call.id,
                        "error": {"code": PENDING_CODE, "message": text, "data": {"hitl": code}}})
    payload: Any = out if msg.batch else out[0]
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    if sse:
        return SSE_TYPE, f"event: message\ndata: {data}\n\n".encode()
    return JSON_TYPE, data.encode()


def refusal_text(msg: Message, code: str, message: str, request_id: str, held: str | None,
                 reviewer: str | None, comment: str | None) -> str:
    """What the model reads when the gate answers instead of the server: what happened,
    that the call did not run, and what to do next."""
    tools = ", ".join(dict.fromkeys(msg.tools)) or "this method"
    what = f"this call to {tools}" if msg.tools else "this request"
    if code == "approval_pending":
        why = f" The reviewer sees: {held}." if held else ""
        return (f"Not done yet: a human reviewer must approve {what} before it runs, and it has "
                f"NOT run.{why} Call {tools} again later with exactly the same arguments to get "
                f"the result (review {request_id}); do not tell anyone it was done.")
    if code == "rejected_by_reviewer":
        by = f" ({reviewer})" if reviewer else ""
        said = f" The reviewer's comment: {comment}" if comment else ""
        return (f"A human reviewer{by} rejected {what}; it did NOT run.{said} "
                "Do not call it again unchanged.")
    if code == "denied_by_policy":
        return f"The proxy's policy does not allow {what}; it did NOT run: {message}"
    if code == "approval_timed_out":
        return f"Nobody approved {what} before its deadline; it did NOT run."
    return f"{what[0].upper()}{what[1:]} did not complete ({code}): {message}"


def parse_quiet(body: bytes) -> Message | None:
    try:
        return parse(body)
    except (Malformed, _NotJsonRpc):
        return None


def id_map(sent: Message | None, now: Message) -> dict[Any, Id]:
    """Old id → new id, pairing the requests of the forwarded message with those of the
    call being answered, in order (they are the same calls: Rule 4). Empty when equal."""
    if sent is None:
        return {}
    pairs: dict[Any, Id] = {}
    for a, b in zip(sent.requests, now.requests, strict=False):
        if a.id != b.id or type(a.id) is not type(b.id):
            pairs[_id_key(a.id)] = b.id
        old, new = _progress_token(a), _progress_token(b)  # progress notifications follow too
        if old is not None and new is not None and old != new:
            pairs[("progress", _id_key(old))] = new
    return pairs


def _progress_token(call: Call) -> Id:
    meta = call.params.get("_meta") if isinstance(call.params, dict) else None
    token = meta.get("progressToken") if isinstance(meta, dict) else None
    return token if isinstance(token, str | int) and not isinstance(token, bool) else None


def _id_key(value: Id) -> Any:
    return (type(value).__name__, value)


def rewrite_ids(body: bytes, content_type: str | None, ids: dict[Any, Id]) -> bytes:
    """A stored answer re-addressed to a new call (Rule 5). JSON bodies and each
    ``data:`` line of an event stream are rewritten; anything unreadable stays as it was."""
    if not ids or not body:
        return body
    if (content_type or "").split(";", 1)[0].strip().lower() == SSE_TYPE:
        lines = body.split(b"\n")
        for i, line in enumerate(lines):
            if line.startswith(b"data:"):
                end = b"\r" if line.endswith(b"\r") else b""
                raw = line[5:len(line) - len(end)]
                lines[i] = b"data: " + _rewrite_json(raw.strip(), ids) + end
        return b"\n".join(lines)
    return _rewrite_json(body, ids)


def _rewrite_json(raw: bytes, ids: dict[Any, Id]) -> bytes:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return raw
    changed = False
    for item in doc if isinstance(doc, list) else [doc]:
        if not isinstance(item, dict):
            continue
        if "id" in item and "method" not in item:
            key = _id_key(item["id"])
            if key in ids:
                item["id"] = ids[key]
                changed = True
        elif item.get("method") == "notifications/progress" and isinstance(item.get("params"), dict):
            token = ("progress", _id_key(item["params"].get("progressToken")))
            if token in ids:
                item["params"]["progressToken"] = ids[token]
                changed = True
    if not changed:
        return raw
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


class EventRewriter:
    """``rewrite_ids`` over an event stream as it passes: complete events (up to a blank
    line) are rewritten and let go at once; a partial one waits for its end."""

    def __init__(self, ids: dict[Any, Id]) -> None:
        self._ids = ids
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk
        cut = max(data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n"))
        if cut < 0:
            self._pending = data
            return b""
        end = cut + (4 if data.startswith(b"\r\n\r\n", cut) else 2)
        self._pending = data[end:]
        return rewrite_ids(data[:end], SSE_TYPE, self._ids)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rewrite_ids(rest, SSE_TYPE, self._ids)


def is_event_stream(headers: Sequence[tuple[str, str]]) -> bool:
    ctype = header(headers, "content-type") or ""
    return ctype.split(";", 1)[0].strip().lower() == SSE_TYPE


# -- what reviewers see --------------------------------------------------------------------
def summary(body: bytes) -> dict[str, Any] | None:
    """The tool calls of a stored body, for the review API, UI, CLI and audit:
    ``{"calls": [{"method", "tool", "arguments"}], "batch", "tools"}``, or None."""
    if not _OPENS_JSON.match(body) or b"jsonrpc" not in body:
        return None
    try:
        msg = parse(body)
    except (Malformed, _NotJsonRpc):
        return None
    return {"batch": msg.batch, "tools": list(msg.tools),
            "calls": [{"method": c.method, "tool": c.tool, "arguments": c.arguments, "id": c.id}
                      for c in msg.calls]}


def with_arguments(body: bytes, arguments: Any) -> bytes:
    """The stored single tools/call body with its arguments replaced (a reviewer's edit);
    TypeError when the arguments are not an object, ValueError when the body is not one
    tool call."""
    if not isinstance(arguments, dict):
        raise TypeError("the edited arguments must be a JSON object")
    try:
        msg = parse(body)
    except (Malformed, _NotJsonRpc) as exc:
        raise ValueError("the held request is not a readable tool call") from exc
    if msg.batch or msg.calls[0].tool is None:
        raise ValueError("only a single tools/call can have its arguments edited; edit the body")
    doc = json.loads(body)
    doc["params"]["arguments"] = arguments
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


# -- how servers answer --------------------------------------------------------------------
class StreamMemory:
    """Which MCP endpoints answered with event streams lately, so the gate's own answers
    take the same form (bounded: least recently seen endpoints are forgotten)."""

    def __init__(self, limit: int = 1024) -> None:
        self._seen: OrderedDict[str, bool] = OrderedDict()
        self._limit = limit

    def note(self, endpoint: str, content_type: str | None) -> None:
        if content_type is None:
            return
        media = content_type.split(";", 1)[0].strip().lower()
        if media not in (SSE_TYPE, JSON_TYPE):
            return
        self._seen[endpoint] = media == SSE_TYPE
        self._seen.move_to_end(endpoint)
        if len(self._seen) > self._limit:
            self._seen.popitem(last=False)

    def streams(self, endpoint: str) -> bool:
        return self._seen.get(endpoint, False)


def endpoint(req: AgentRequest) -> str:
    return f"{req.scheme}://{req.authority}{req.path}"


def header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None
