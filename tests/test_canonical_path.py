"""The canonical path (issue 12, item 5; docs/policies.md): the policy judges the normalized path,
the upstream receives that same path, and spellings that cannot be normalized safely are
refused with 400 before anything is forwarded."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from proxy.urlnorm import BadPath, normalize_path
from tests.conftest import Hitl, Upstream

POLICY = r'''
package hitl

import rego.v1

default decision := {"action": "allow", "rule": "default"}

decision := {"action": "deny", "rule": "t.post",
             "message": sprintf("posting is not allowed (sent as %s)", [input.request.raw_path])} if {
	input.request.path == "/api/chat.postMessage"
}
'''


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("/", "/"),
        ("/api/chat.postMessage", "/api/chat.postMessage"),
        ("/api/./chat.postMessage", "/api/chat.postMessage"),
        ("/api//chat.postMessage", "/api/chat.postMessage"),
        ("//api///chat.postMessage", "/api/chat.postMessage"),
        ("/api/x/../chat.postMessage", "/api/chat.postMessage"),
        ("/api/x/y/../../chat.postMessage", "/api/chat.postMessage"),
        ("/../../api/chat.postMessage", "/api/chat.postMessage"),
        ("/api/chat%2EpostMessage", "/api/chat.postMessage"),
        ("/%61pi/chat.postMessage", "/api/chat.postMessage"),
        ("/api/%7Euser/%2D%5F", "/api/~user/-_"),
        ("/api/chat.postMessage/", "/api/chat.postMessage/"),
        ("/api/x/..", "/api/"),
        ("/api/.", "/api/"),
        ("/a%20b/%c3%a9", "/a%20b/%C3%A9"),  # reserved and non-ASCII escapes stay escaped
        ("/a%3Fb", "/a%3Fb"),
        ("/.%2Efoo", "/.%2Efoo".replace("%2E", ".")),  # "..foo" is a name, not a dot segment
    ],
)
def test_normalize_path(raw: str, normalized: str) -> None:
    assert normalize_path(raw) == normalized


@pytest.mark.parametrize("raw", ["/api%2Fchat.postMessage", "/api%2fx", "/api%5Cx", "/api\\x", "/a%00b",
                                 "/api/%2E%2E/x", "/api/.%2E/x", "/api/%2e/x", "/a%zzb", "/a%4"])
def test_ambiguous_paths_are_refused(raw: str) -> None:
    with pytest.raises(BadPath):
        normalize_path(raw)


SPELLINGS = [
    "/api/chat.postMessage",
    "/api/./chat.postMessage",
    "/api//chat.postMessage",
    "/api/x/../chat.postMessage",
    "/api/chat%2EpostMessage",
    "/api/chat%2epostMessage",
    "/%61pi/chat.postMessage",
    "//api/chat.postMessage",
]


def send(hitl: Hitl, target: str, host: str, extra: str = "") -> bytes:
    with socket.create_connection(hitl.runtime.proxy_address, timeout=10) as sock:
        sock.sendall(f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n"
                     f"Connection: close\r\n{extra}\r\nhi".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


@pytest.mark.parametrize("path", SPELLINGS)
def test_every_spelling_of_a_denied_path_is_denied_and_nothing_is_sent(make_hitl: Any, upstream: Upstream,
                                                                        path: str) -> None:
    hitl = make_hitl(policy=POLICY)
    answer = send(hitl, f"http://127.0.0.1:{upstream.port}{path}", f"127.0.0.1:{upstream.port}")
    assert answer.startswith(b"HTTP/1.1 403"), answer[:300]
    assert b"denied_by_policy" in answer
    assert f"sent as {path}".encode() in answer  # the policy saw the raw spelling as raw_path
    assert upstream.received == []


@pytest.mark.parametrize("path", ["/api%2Fchat.postMessage", "/api%5Cchat.postMessage", "/api\\chat.postMessage",
                                  "/api/%2E%2E/api/chat.postMessage", "/api/chat.postMessage%00"])
def test_ambiguous_encodings_get_400_and_nothing_is_sent(make_hitl: Any, upstream: Upstream, path: str) -> None:
    hitl = make_hitl(policy=POLICY)
    answer = send(hitl, f"http://127.0.0.1:{upstream.port}{path}", f"127.0.0.1:{upstream.port}")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b'"bad_request"' in answer
    assert upstream.received == []


def test_the_upstream_receives_the_normalized_path_with_the_query_as_sent(make_hitl: Any,
                                                                          upstream: Upstream) -> None:
    hitl = make_hitl(policy=POLICY)
    answer = send(hitl, f"http://127.0.0.1:{upstream.port}/v1/./x//y/../%7Ez?q=%2E%2E/a",
                  f"127.0.0.1:{upstream.port}")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert [r.path for r in upstream.received] == ["/v1/x/~z?q=%2E%2E/a"]


@pytest.mark.parametrize(("path", "expected"), [
    ("/svc/../../admin", b"HTTP/1.1 200"), ("/svc/x/../../admin", b"HTTP/1.1 200"),
    ("/svc//admin", b"HTTP/1.1 200"), ("/svc/%2E%2E/admin", b"HTTP/1.1 400")])
def test_a_reverse_route_cannot_climb_out_of_its_base_path(make_hitl: Any, upstream: Upstream,
                                                           path: str, expected: bytes) -> None:
    hitl = make_hitl({"proxy.routes": {"svc": upstream.url("/base")}}, policy=POLICY)
    answer = send(hitl, path, "proxy")  # raw bytes: HTTP clients resolve dot segments themselves
    assert answer.startswith(expected), answer[:300]
    assert [r.path for r in upstream.received] == (["/base/admin"] if expected.endswith(b"200") else [])


def test_a_held_request_is_stored_and_forwarded_with_the_normalized_path(hitl: Hitl,
                                                                         upstream: Upstream) -> None:
    import threading

    box: dict[str, bytes] = {}
    thread = threading.Thread(target=lambda: box.update(a=send(
        hitl, f"http://127.0.0.1:{upstream.port}/x/../hold//charge", f"127.0.0.1:{upstream.port}")))
    thread.start()
    [item] = hitl.wait_pending()
    assert item["message"] == "anonymous wants to POST /hold/charge"
    with hitl.api() as api:
        assert api.post(f"/api/requests/{item['id']}/approve", json={}).status_code == 200
    thread.join(30)
    assert box["a"].startswith(b"HTTP/1.1 200")
    assert [r.path for r in upstream.received] == ["/hold/charge"]


@pytest.mark.parametrize("path", [*SPELLINGS, "/api/chat.postMessage/", "/api/./chat.postMessage/"])
def test_the_shipped_posting_policy_holds_every_spelling(path: str) -> None:
    # The path the server hands the policy (resolve_target), judged by the shipped policies.
    import asyncio
    from pathlib import Path

    from proxy.model import Agent, AgentRequest
    from proxy.policy import EmbeddedEngine, build_input
    from proxy.server import resolve_target

    engine = EmbeddedEngine.load([Path(__file__).resolve().parent.parent / "policies"])
    scheme, host, port, target, raw = resolve_target(f"https://slack.com{path}", {})
    request = AgentRequest("POST", scheme, host, port, target, (("Content-Type", "application/json"),),
                           b'{"channel": "C1", "text": "hi"}', raw_path=raw)
    decision = asyncio.run(engine.decide(build_input(request, Agent("bot", "10.0.0.7"), 1795000000.0)))
    assert (decision.action.value, decision.rule) == ("hold", "posting.post")
