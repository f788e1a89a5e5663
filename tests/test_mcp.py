"""MCP tool calls through the gate, with the official MCP SDK on both sides.

A real MCP server (``MCPServer`` over streamable HTTP, its default SSE answers and
sessions, served by uvicorn on 127.0.0.1) whose tools record every execution, and the
SDK's streamable-HTTP ``ClientSession`` reaching it through hitl-proxy — as
``HTTP_PROXY`` (the SDK's own httpx2 client reads the environment) and through a reverse
route. The shipped policies judge the calls. Hostile clients speak raw JSON-RPC with httpx.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer

from tests.conftest import ROOT, Hitl
from tests.loopback import LoopbackServer, answer, read_body

SHIPPED = ROOT / "policies"


class McpUpstream:
    """An MCP server on 127.0.0.1 over streamable HTTP; ``runs`` records each execution."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, dict[str, Any]]] = []
        self.release = threading.Event()
        server = MCPServer("recorder")
        runs = self.runs
        release = self.release

        @server.tool()
        def send_email(to: str, subject: str, body: str = "") -> str:
            """Send an email."""
            runs.append(("send_email", {"to": to, "subject": subject}))
            return f"sent to {to}"

        @server.tool()
        def get_weather(city: str) -> str:
            """Read the weather."""
            runs.append(("get_weather", {"city": city}))
            return f"sunny in {city}"

        @server.tool()
        async def execute_report(steps: int, ctx: Context) -> str:
            """A held tool (executes) that reports progress, then waits for the test."""
            runs.append(("execute_report", {"steps": steps}))
            await ctx.report_progress(1, steps, "started")
            for _ in range(200):
                if release.is_set():
                    return "report ready"
                await asyncio.sleep(0.05)
            return "nobody released me"

        @server.tool()
        async def slow_report(steps: int, ctx: Context) -> str:
            """A read-only tool that reports progress, then waits for the test to release it."""
            runs.append(("slow_report", {"steps": steps}))
            await ctx.report_progress(1, steps, "first step done")
            for _ in range(200):
                if release.is_set():
                    break
                await asyncio.sleep(0.05)
            return "report ready"

        app = server.streamable_http_app()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def count(self, tool: str) -> int:
        return sum(1 for name, _ in self.runs if name == tool)

    def close(self) -> None:
        self.release.set()
        self.server.should_exit = True
        self.thread.join(10)


class BatchUpstream(LoopbackServer):
    """A JSON-RPC server that takes batches (the SDK's does not): it runs each tools/call
    and records it, and answers every request with its own id."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.bodies: list[bytes] = []
        super().__init__()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = read_body(request)
        doc = json.loads(body)
        self.bodies.append(body)
        answers = []
        for msg in doc if isinstance(doc, list) else [doc]:
            if msg.get("method") == "tools/call":
                self.runs.append(msg["params"]["name"])
            if "id" in msg:
                answers.append({"jsonrpc": "2.0", "id": msg["id"], "result": {
                    "content": [{"type": "text", "text": f"ran {msg.get('method')}"}]}})
        answer(request, 200, answers if isinstance(doc, list) else answers[0])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


@pytest.fixture
def mcp_server() -> Iterator[McpUpstream]:
    server = McpUpstream()
    yield server
    server.close()


@pytest.fixture
def batch_server() -> Iterator[BatchUpstream]:
    server = BatchUpstream()
    yield server
    server.close()


@pytest.fixture
def shipped(make_hitl: Callable[..., Hitl], tmp_path: Path) -> Callable[..., Hitl]:
    """hitl-proxy with the shipped policies (policies/), copied so a test can run alone."""
    policies = tmp_path / "shipped"
    shutil.copytree(SHIPPED, policies)

    def make(overrides: dict[str, Any] | None = None) -> Hitl:
        return make_hitl({"policy.paths": [str(policies)], "hold.client_wait": "1s",
                          **(overrides or {})})

    return make


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def with_session(url: str, fn: Callable[[ClientSession], Any], keep: bool = False) -> Any:
    """The SDK's streamable-HTTP client with its default httpx2 client (which reads
    HTTP_PROXY from the environment: trust_env is on). ``keep``: the session outlives it."""
    async with streamable_http_client(url, terminate_on_close=not keep) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        return await fn(session)


def text_of(result: Any) -> str:
    return " ".join(c.text for c in result.content if getattr(c, "type", "") == "text")


def pending(hitl: Hitl) -> list[dict[str, Any]]:
    with hitl.api() as api:
        return list(api.get("/api/requests", params={"status": "pending"}).json()["items"])


def all_items(hitl: Hitl) -> list[dict[str, Any]]:
    with hitl.api() as api:
        return list(api.get("/api/requests").json()["items"])


# -- the SDK through HTTP_PROXY ----------------------------------------------------------
def test_sdk_session_through_proxy_lists_and_calls_allowed_tools(
        shipped: Callable[..., Hitl], mcp_server: McpUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    hitl = shipped()
    monkeypatch.setenv("HTTP_PROXY", hitl.proxy_url)
    monkeypatch.delenv("NO_PROXY", raising=False)

    async def flow(s: ClientSession) -> tuple[list[str], Any]:
        tools = await s.list_tools()
        return [t.name for t in tools.tools], await s.call_tool("get_weather", {"city": "Oslo"})

    names, result = run(with_session(mcp_server.url, flow))
    assert {"send_email", "get_weather"} <= set(names)
    assert not result.is_error and text_of(result) == "sunny in Oslo"
    assert mcp_server.count("get_weather") == 1
    assert all_items(hitl) == []  # nothing held: initialize, notifications, list, a read


def test_held_call_answers_the_model_then_runs_once_after_approval(
        shipped: Callable[..., Hitl], mcp_server: McpUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    hitl = shipped()
    monkeypatch.setenv("HTTP_PROXY", hitl.proxy_url)
    args = {"to": "ceo@example.com", "subject": "Quarterly numbers", "body": "see attached"}

    async def call(s: ClientSession) -> Any:
        return await s.call_tool("send_email", args)

    async def two_calls(s: ClientSession) -> tuple[Any, Any]:
        return await s.call_tool("send_email", args), await s.call_tool("send_email", args)

    async def held_then_approved(s: ClientSession) -> tuple[Any, Any, Any]:
        first = await call(s)
        items = pending(hitl)
        assert len(items) == 1
        assert mcp_server.count("send_email") == 0
        with hitl.api() as api:
            assert api.post(f"/api/requests/{items[0]['id']}/approve", json={}).status_code == 200
        retried = await call(s)  # a new JSON-RPC id: same call, so it picks up the approval
        again = await call(s)  # identical call afterwards: the stored answer
        return first, retried, again

    first, retried, again = run(with_session(mcp_server.url, held_then_approved))
    assert first.is_error
    assert "has NOT run" in text_of(first) and "again later with exactly the same arguments" in text_of(first)
    assert "support-agent" not in text_of(first)  # the agent is anonymous here
    assert "anonymous agent wants to call send_email to ceo@example.com: 'Quarterly numbers'" in text_of(first)
    assert not retried.is_error and text_of(retried) == "sent to ceo@example.com"
    assert not again.is_error and text_of(again) == "sent to ceo@example.com"
    assert mcp_server.count("send_email") == 1
    items = all_items(hitl)
    assert len(items) == 1 and items[0]["status"] == "forwarded"
    assert items[0]["rule"] == "mcp.send"


def test_pending_retry_attaches_to_the_same_review_item(
        shipped: Callable[..., Hitl], mcp_server: McpUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    hitl = shipped()
    monkeypatch.setenv("HTTP_PROXY", hitl.proxy_url)

    async def twice(s: ClientSession) -> tuple[Any, Any]:
        args = {"to": "a@example.org", "subject": "Hi"}
        return await s.call_tool("send_email", args), await s.call_tool("send_email", args)

    a, b = run(with_session(mcp_server.url, twice))
    assert a.is_error and b.is_error
    assert len(pending(hitl)) == 1
    assert mcp_server.count("send_email") == 0


def test_rejected_call_is_an_error_result_carrying_the_comment(
        shipped: Callable[..., Hitl], mcp_server: McpUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    hitl = shipped({"hold.client_wait": "20s"})
    monkeypatch.setenv("HTTP_PROXY", hitl.proxy_url)

    def reject_when_held() -> None:
        items = hitl.wait_pending(1, timeout=15)
        with hitl.api() as api:
            api.post(f"/api/requests/{items[0]['id']}/reject",
                     json={"comment": "not to the CEO, send it to finance@example.com"})

    threading.Thread(target=reject_when_held, daemon=True).start()

    async def call_twice(s: ClientSession) -> tuple[Any, Any]:
        args = {"to": "ceo@example.com", "subject": "Numbers"}
        return await s.call_tool("send_email", args), await s.call_tool("send_email", args)

    result, retried = run(with_session(mcp_server.url, call_twice))
    assert result.is_error
    assert "rejected" in text_of(result) and "did NOT run" in text_of(result)
    assert "not to the CEO, send it to finance@example.com" in text_of(result)
    # The refusal is remembered: the retry gets it again, and no new review item.
    assert retried.is_error and "not to the CEO, send it to finance@example.com" in text_of(retried)
    assert len(all_items(hitl)) == 1
    assert mcp_server.count("send_email") == 0


def test_reverse_route_and_an_sse_answer_streamed_through(
        shipped: Callable[..., Hitl], mcp_server: McpUpstream) -> None:
    """An allowed tool that reports progress, then waits: the progress event reaches the
    client through the gate while the tool still runs (the SSE answer is streamed)."""
    hitl = shipped({"proxy.routes": {"tools": f"http://127.0.0.1:{mcp_server.port}"}})
    seen: list[tuple[float, str | None]] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, message))
        mcp_server.release.set()  # only now may the tool finish

    async def call(s: ClientSession) -> Any:
        return await s.call_tool("slow_report", {"steps": 3}, progress_callback=progress)

    result = run(with_session(f"{hitl.proxy_url}/tools/mcp", call))
    assert not result.is_error and text_of(result) == "report ready"
    assert seen == [(1, "first step done")]
    assert mcp_server.count("slow_report") == 1


def test_approved_call_answer_is_streamed_with_its_progress_readdressed(
        shipped: Callable[..., Hitl], mcp_server: McpUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """After approval the retry (new id, new progress token) gets the server's event stream
    as it comes: the progress event arrives, re-addressed, while the tool still runs."""
    hitl = shipped()
    monkeypatch.setenv("HTTP_PROXY", hitl.proxy_url)
    seen: list[str | None] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append(message)
        mcp_server.release.set()

    async def flow(s: ClientSession) -> tuple[Any, Any, Any]:
        first = await s.call_tool("execute_report", {"steps": 2}, progress_callback=progress)
        with hitl.api() as api:
            api.post(f"/api/requests/{pending(hitl)[0]['id']}/approve", json={})
        second = await s.call_tool("execute_report", {"steps": 2}, progress_callback=progress)
        third = await s.call_tool("execute_report", {"steps": 2})  # the stored answer
        return first, second, third

    first, second, third = run(with_session(mcp_server.url, flow))
    assert first.is_error and mcp_server.count("execute_report") == 1
    assert text_of(second) == "report ready" and seen == ["started"]
    assert text_of(third) == "report ready" and mcp_server.count("execute_report") == 1
    items = all_items(hitl)
    assert len(items) == 1 and items[0]["status"] == "forwarded"


def test_client_that_hangs_up_mid_call_and_retries_does_not_run_the_tool_twice(
        shipped: Callable[..., Hitl], mcp_server: McpUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    hitl = shipped()
    monkeypatch.setenv("HTTP_PROXY", hitl.proxy_url)
    session: dict[str, str] = {}

    async def open_session(s: ClientSession) -> None:
        first = await s.call_tool("execute_report", {"steps": 5})
        assert first.is_error
        with hitl.api() as api:
            api.post(f"/api/requests/{pending(hitl)[0]['id']}/approve", json={})

    run(with_session(mcp_server.url, open_session, keep=True))  # the client's connection is lost
    held = all_items(hitl)[0]
    session["id"] = held["headers"]["mcp-session-id"]
    call = rpc("execute_report", {"steps": 5}, 41)
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "Mcp-Session-Id": session["id"], "Mcp-Protocol-Version": held["headers"]["mcp-protocol-version"]}
    with hitl.agent() as agent, pytest.raises(httpx.ReadTimeout), \
            agent.stream("POST", mcp_server.url, json=call, headers=headers,
                         timeout=httpx.Timeout(30, read=1.0)) as r:  # the tool runs; the client gives up
        for _ in r.iter_bytes():
            pass
    assert mcp_server.count("execute_report") == 1
    mcp_server.release.set()
    deadline = time.monotonic() + 15
    while all_items(hitl)[0]["status"] != "forwarded" and time.monotonic() < deadline:
        time.sleep(0.1)
    with hitl.agent() as agent:
        r = agent.post(mcp_server.url, json={**call, "id": 42}, headers=headers)
    assert r.headers["x-hitl-replayed"] == "true"
    events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
    assert events[-1]["id"] == 42 and events[-1]["result"]["content"][0]["text"] == "report ready"
    assert mcp_server.count("execute_report") == 1


def test_held_call_through_a_reverse_route(shipped: Callable[..., Hitl], mcp_server: McpUpstream) -> None:
    hitl = shipped({"proxy.routes": {"tools": f"http://127.0.0.1:{mcp_server.port}"}})

    async def flow(s: ClientSession) -> tuple[Any, Any]:
        args = {"to": "x@example.org", "subject": "Hello"}
        first = await s.call_tool("send_email", args)
        with hitl.api() as api:
            api.post(f"/api/requests/{pending(hitl)[0]['id']}/approve", json={})
        return first, await s.call_tool("send_email", args)

    first, second = run(with_session(f"{hitl.proxy_url}/tools/mcp", flow))
    assert first.is_error and not second.is_error
    assert mcp_server.count("send_email") == 1


# -- raw JSON-RPC: answers, batches and hostile clients --------------------------------
def rpc(tool: str, args: dict[str, Any], msg_id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call",
            "params": {"name": tool, "arguments": args}}


ACCEPT = {"Accept": "application/json, text/event-stream", "Mcp-Session-Id": "sess-1"}


def post(hitl: Hitl, url: str, body: Any, headers: dict[str, str] | None = None,
         raw: bytes | None = None) -> httpx.Response:
    with hitl.agent() as agent:
        content = raw if raw is not None else json.dumps(body).encode()
        return agent.post(url, content=content,
                          headers={"Content-Type": "application/json", **ACCEPT, **(headers or {})})


def test_held_call_answer_is_json_rpc_with_the_request_id(
        shipped: Callable[..., Hitl], batch_server: BatchUpstream) -> None:
    hitl = shipped()
    r = post(hitl, batch_server.url, rpc("create_payment", {"amount": 250, "customer": "cus_1"}, "call-9"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-hitl-error"] == "approval_pending"
    assert r.headers["x-hitl-request-id"] == pending(hitl)[0]["id"]
    doc = r.json()
    assert doc["id"] == "call-9" and doc["jsonrpc"] == "2.0"
    assert doc["result"]["isError"] is True
    assert "a human reviewer must approve" in doc["result"]["content"][0]["text"]
    assert batch_server.runs == []


def test_client_reading_only_event_streams_gets_an_sse_answer(
        shipped: Callable[..., Hitl], batch_server: BatchUpstream) -> None:
    hitl = shipped()
    r = post(hitl, batch_server.url, rpc("send_email", {"to": "a@b.c", "subject": "s"}, 4),
             headers={"Accept": "text/event-stream"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream"
    assert r.text.startswith("event: message\ndata: ") and r.text.endswith("\n\n")
    doc = json.loads(r.text.split("data: ", 1)[1])
    assert doc["id"] == 4 and doc["result"]["isError"] is True


def test_endpoint_that_streams_gets_sse_answers_from_the_gate(
        shipped: Callable[..., Hitl], mcp_server: McpUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK server answers with event streams; the gate answers a held call there alike."""
    hitl = shipped()
    monkeypatch.setenv("HTTP_PROXY", hitl.proxy_url)

    async def session_id(s: ClientSession) -> Any:
        await s.list_tools()

    run(with_session(mcp_server.url, session_id))  # the gate saw SSE answers from this endpoint
    r = post(hitl, mcp_server.url, rpc("send_email", {"to": "a@b.c", "subject": "s"}, 5))
    assert r.headers["content-type"] == "text/event-stream"
    assert json.loads(r.text.split("data: ", 1)[1])["id"] == 5


def test_batch_with_one_held_call_is_held_whole(shipped: Callable[..., Hitl], batch_server: BatchUpstream) -> None:
    hitl = shipped()
    batch = [rpc("get_weather", {"city": "Oslo"}, 1), {"jsonrpc": "2.0", "method": "notifications/x"},
             rpc("send_email", {"to": "ceo@example.com", "subject": "Q3"}, 2), rpc("list_files", {}, 3)]
    r = post(hitl, batch_server.url, batch)
    assert r.status_code == 200 and batch_server.runs == []
    answers = r.json()
    assert [a["id"] for a in answers] == [1, 2, 3]  # requests answered, the notification not
    assert all(a["result"]["isError"] for a in answers)
    items = pending(hitl)
    assert len(items) == 1 and items[0]["rule"] == "mcp.send"
    assert items[0]["mcp"]["tools"] == ["get_weather", "send_email", "list_files"]
    with hitl.api() as api:
        api.post(f"/api/requests/{items[0]['id']}/approve", json={})
    # The same batch, new ids and other spacing: it runs once, answered with these ids.
    again = [{**m, "id": m["id"] + 10} if "id" in m else m for m in batch]
    r = post(hitl, batch_server.url, None, raw=json.dumps(again, indent=3).encode())
    assert [a["id"] for a in r.json()] == [11, 12, 13]
    assert batch_server.runs == ["get_weather", "send_email", "list_files"]
    r = post(hitl, batch_server.url, [{**m, "id": m["id"] + 20} if "id" in m else m for m in batch])
    assert [a["id"] for a in r.json()] == [21, 22, 23] and r.headers["x-hitl-replayed"] == "true"
    assert len(batch_server.runs) == 3


def test_hostile_client_varying_id_and_spacing_cannot_dodge_attach_or_replay(
        shipped: Callable[..., Hitl], batch_server: BatchUpstream) -> None:
    hitl = shipped()
    args = {"to": "ceo@example.com", "subject": "Wire the money"}
    post(hitl, batch_server.url, rpc("send_email", args, 1))
    # id changed, keys reordered, whitespace added, a progress token in _meta
    variant = (b'{ "params" : {"arguments": {"subject": "Wire the money", "to": "ceo@example.com"},'
               b' "name": "send_email", "_meta": {"progressToken": 99}},\n "method": "tools/call",'
               b' "id": "other", "jsonrpc": "2.0" }')
    r = post(hitl, batch_server.url, None, raw=variant)
    assert r.json()["id"] == "other" and r.json()["result"]["isError"]
    assert len(pending(hitl)) == 1
    with hitl.api() as api:
        api.post(f"/api/requests/{pending(hitl)[0]['id']}/approve", json={})
    assert post(hitl, batch_server.url, rpc("send_email", args, 77)).json()["id"] == 77
    assert post(hitl, batch_server.url, None, raw=variant).json()["id"] == "other"
    assert batch_server.runs == ["send_email"]
    # Another session is another call: a new review item, nothing sent.
    post(hitl, batch_server.url, rpc("send_email", args, 1), headers={"Mcp-Session-Id": "sess-2"})
    assert len(pending(hitl)) == 1 and batch_server.runs == ["send_email"]


@pytest.mark.parametrize("body", [
    # the tool name spelled with a JSON escape
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send\\u005femail","arguments":{"to":"x@y.z"}}}',
    # "jsonrpc" not first
    b'{"method":"tools/call","jsonrpc":"2.0","id":1,"params":{"name":"sendEmail","arguments":{}}}',
    # the dangerous call last in a batch of safe ones
    json.dumps([rpc("get_weather", {"city": c}, i) for i, c in enumerate(["Oslo", "Rome", "Lima"])]
               + [rpc("run_sql", {"sql": "DROP TABLE users"}, 9)]).encode(),
])
def test_hostile_spellings_are_still_held(shipped: Callable[..., Hitl], batch_server: BatchUpstream,
                                          body: bytes) -> None:
    hitl = shipped()
    r = post(hitl, batch_server.url, None, raw=body)
    assert r.status_code == 200 and r.headers["x-hitl-error"] == "approval_pending"
    assert batch_server.runs == [] and len(pending(hitl)) == 1


def test_json_rpc_in_another_content_type_is_still_judged(
        shipped: Callable[..., Hitl], batch_server: BatchUpstream) -> None:
    hitl = shipped()
    r = post(hitl, batch_server.url, rpc("delete_repository", {"name": "prod"}),
             headers={"Content-Type": "text/plain"})
    assert r.headers["x-hitl-error"] == "approval_pending" and batch_server.runs == []


@pytest.mark.parametrize("body", [
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","name":"send_email"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_email","arguments":{"n":NaN}}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_email"',
    b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"}, 42]',
])
def test_malformed_json_rpc_is_judged_and_never_forwarded_around_policy(
        shipped: Callable[..., Hitl], batch_server: BatchUpstream, body: bytes) -> None:
    hitl = shipped()
    r = post(hitl, batch_server.url, None, raw=body)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "denied_by_policy"
    assert "cannot read" in r.json()["error"]["message"]
    assert batch_server.runs == []


def test_plain_json_posts_are_not_mcp(shipped: Callable[..., Hitl], upstream: Any) -> None:
    hitl = shipped()
    for body in (b'{"name": "send_email"}', b'[1, 2, 3]', b'{not json at all'):
        with hitl.agent() as agent:
            r = agent.post(upstream.url("/api"), content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 200 and "x-hitl-error" not in r.headers
    assert upstream.count("/api") == 3


# -- what reviewers see, and their edits ------------------------------------------------
def test_reviewers_see_the_tool_and_its_arguments_everywhere(
        shipped: Callable[..., Hitl], batch_server: BatchUpstream) -> None:
    import subprocess

    from tests.conftest import HITL

    hitl = shipped()
    args = {"to": "ceo@example.com", "subject": "Quarterly numbers", "body": "Revenue <b>up</b>"}
    post(hitl, batch_server.url, rpc("send_email", args, 3))
    item = pending(hitl)[0]
    assert item["mcp"] == {"batch": False, "tools": ["send_email"],
                           "calls": [{"method": "tools/call", "tool": "send_email", "arguments": args, "id": 3}]}
    with hitl.api() as api:
        assert api.get(f"/api/requests/{item['id']}").json()["mcp"]["calls"][0]["arguments"] == args
    with httpx.Client(base_url=hitl.review_url, trust_env=False, timeout=30, follow_redirects=True) as ui:
        ui.get(f"/login?token={hitl.admin_token}")
        queue = ui.get("/").text
        assert "calls send_email" in queue
        page = ui.get(f"/requests/{item['id']}").text
    assert "MCP tool call" in page and "<code>send_email</code>" in page
    assert '&#34;subject&#34;: &#34;Quarterly numbers&#34;' in page or '&quot;subject&quot;: &quot;Quarterly numbers&quot;' in page
    assert "Revenue &lt;b&gt;up&lt;/b&gt;" in page  # escaped, never markup
    assert 'id="edit-arguments"' in page
    shown = subprocess.run([HITL, "show", item["id"], "--url", hitl.review_url, "--token", hitl.admin_token],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert "MCP tool call: send_email, arguments:" in shown
    assert '      "subject": "Quarterly numbers",' in shown
    listed = subprocess.run([HITL, "pending", "--url", hitl.review_url, "--token", hitl.admin_token],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    assert "MCP: calls send_email" in listed


def test_reviewer_edits_the_arguments_and_the_edited_call_is_what_runs(
        shipped: Callable[..., Hitl], batch_server: BatchUpstream) -> None:
    hitl = shipped()
    original = {"to": "ceo@example.com", "subject": "Numbers"}
    post(hitl, batch_server.url, rpc("send_email", original, 1))
    rid = pending(hitl)[0]["id"]
    with hitl.api() as api:
        bad = api.post(f"/api/requests/{rid}/approve", json={"edit": {"arguments": ["not", "an", "object"]}})
        assert bad.status_code == 400 and pending(hitl)[0]["id"] == rid
        r = api.post(f"/api/requests/{rid}/approve",
                     json={"edit": {"arguments": {"to": "finance@example.com", "subject": "Numbers"}}})
        assert r.status_code == 200, r.text
        assert r.json()["edit"]["mcp"]["calls"][0]["arguments"]["to"] == "finance@example.com"
    answer = post(hitl, batch_server.url, rpc("send_email", original, 2)).json()
    assert answer["id"] == 2 and "isError" not in answer["result"]
    assert batch_server.runs == ["send_email"]
    sent = [json.loads(r) for r in batch_server.bodies]
    assert sent[0]["params"]["arguments"]["to"] == "finance@example.com"


def test_audit_and_metrics_carry_the_tool(shipped: Callable[..., Hitl], batch_server: BatchUpstream) -> None:
    hitl = shipped()
    post(hitl, batch_server.url, rpc("delete_user", {"id": "u1"}, 1))
    post(hitl, batch_server.url, rpc("run_sql", {"sql": "DROP TABLE t"}, 2))
    ids = {i["mcp"]["tools"][0]: i["id"] for i in pending(hitl)}
    with hitl.api() as api:
        api.post(f"/api/requests/{ids['delete_user']}/approve", json={})
        api.post(f"/api/requests/{ids['run_sql']}/reject", json={"comment": "no DDL"})
        audit = api.get("/api/audit", params={"limit": 1000}).json()["items"]
        metrics = api.get("/metrics").text
    by_event = {(a["event"], a["request_id"]): a["detail"] for a in audit}
    assert by_event[("hold", ids["delete_user"])]["tool"] == "delete_user"
    assert by_event[("approve", ids["delete_user"])]["tool"] == "delete_user"
    assert by_event[("approved", ids["delete_user"])]["tool"] == "delete_user"
    assert by_event[("reject", ids["run_sql"])]["tool"] == "run_sql"
    assert by_event[("rejected", ids["run_sql"])]["tool"] == "run_sql"
    assert 'hitl_requests_total{action="hold",rule="mcp.delete"} 1.0' in metrics
    assert 'hitl_decisions_total{outcome="rejected",rule="mcp.execute"} 1.0' in metrics


def test_reviewer_edits_the_arguments_in_the_browser(
        shipped: Callable[..., Hitl], batch_server: BatchUpstream) -> None:
    import os

    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium):
        if os.environ.get("CI"):
            pytest.fail(f"{chromium} is missing: install Debian's chromium package")
        pytest.skip(f"{chromium} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    hitl = shipped()
    original = {"to": "ceo@example.com", "subject": "Numbers"}
    post(hitl, batch_server.url, rpc("send_email", original, 1))
    rid = pending(hitl)[0]["id"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-proxy-server"])
        try:
            page = browser.new_page()
            page.set_default_timeout(15000)
            page.goto(f"{hitl.review_url}/login?token={hitl.admin_token}")
            assert page.locator(".row .tool").inner_text() == "calls send_email"
            page.locator(".row").click()
            assert "ceo@example.com" in page.locator("#tool-calls").inner_text()
            page.locator("summary", has_text="Edit, then approve").click()
            page.locator("#edit-arguments").fill('{"to": "finance@example.com", ')
            page.get_by_role("button", name="Approve edited request").click()
            assert "not valid JSON" in page.locator("#action-error").inner_text()
            page.locator("#edit-arguments").fill('{"to": "finance@example.com", "subject": "Numbers"}')
            page.get_by_role("button", name="Approve edited request").click()
            page.wait_for_function("document.querySelector('article.detail').dataset.status !== 'pending'"
                                   " || !!document.getElementById('changed') && !document.getElementById('changed').hidden")
        finally:
            browser.close()
    deadline = time.monotonic() + 10
    while all_items(hitl)[0]["status"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all_items(hitl)[0]["status"] == "approved"
    answer = post(hitl, batch_server.url, rpc("send_email", original, 2)).json()
    assert answer["id"] == 2 and "isError" not in answer["result"]
    assert json.loads(batch_server.bodies[0])["params"]["arguments"] == {
        "to": "finance@example.com", "subject": "Numbers"}
    assert rid == all_items(hitl)[0]["id"]


def test_policy_eval_judges_a_json_rpc_body_as_the_gate_does() -> None:
    import subprocess

    from tests.conftest import HITL

    body = json.dumps(rpc("send_email", {"to": "ceo@example.com", "subject": "Quarterly numbers"}))
    out = subprocess.run([HITL, "policy", "eval", "--url", "http://mcp.internal.test/mcp", "--body", body,
                          "--agent", "support-agent"], capture_output=True, text=True, timeout=60,
                         check=True, cwd=ROOT).stdout
    decision = json.loads(out)
    assert decision["action"] == "hold" and decision["rule"] == "mcp.send"
    assert decision["message"] == "support-agent wants to call send_email to ceo@example.com: 'Quarterly numbers'"
