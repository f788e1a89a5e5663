"""The embedded engine passes a policy only the parts of the input it can read
(``proxy/policy/input_refs.py``): the analysis must never miss a read."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from proxy.policy.embedded import CACHE_ENTRIES, EmbeddedEngine
from proxy.policy.input_refs import input_refs, prune, pure

DOC = {
    "request": {"method": "POST", "host": "a.example", "headers": {"x-k": "v"}, "body": {"n": 1}},
    "agent": {"id": "bot", "address": "127.0.0.1"},
    "time": {"unix": 1, "iso": "1970-01-01T00:00:01Z"},
}


@pytest.mark.parametrize(("source", "refs"), [
    ('x := 1', {}),
    ('x := input.request.method', {"request": {"method": None}}),
    ('x := input.request.headers["x-k"]', {"request": {"headers": None}}),
    ('x := input.request.body.amount\ny := input.agent.id', {"request": {"body": None}, "agent": {"id": None}}),
    ('x := input.request["headers"]', {"request": None}),  # brackets: all of request
    ('x := input.agent', {"agent": None}),
    ('import input.request as r\nx := r.headers', {"request": None}),
    ('x := input["request"]', None),  # everything
    ('x := walk(input)', None),
    ('import input', None),
    ('x := data.input.request.headers', {}),  # not the input: data.input
    ('x := "input" # input.request.headers', {}),  # a string and a comment
    ('x := `input.request.headers`', {}),  # a raw string
    ('x := "a \\" input.agent" ; y := input.time.unix', {"time": {"unix": None}}),
    ('x := "#" ; y := input.request.headers', {"request": {"headers": None}}),  # not a comment
])
def test_every_read_of_the_input_is_found(source: str, refs: Any) -> None:
    assert input_refs([source]) == refs


def test_prune_keeps_what_is_read_and_everything_when_unsure() -> None:
    assert prune(DOC, {"request": {"method": None, "missing": None}, "agent": None}) == {
        "request": {"method": "POST"}, "agent": DOC["agent"]}
    assert prune(DOC, None) is DOC


def test_a_policy_reading_headers_through_a_helper_still_sees_them(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text(
        'package hitl\n\nheaders := input.request.headers\n\n'
        'decision := {"action": "deny", "message": headers["x-k"], "rule": "h"} if headers["x-k"]\n'
        'default decision := {"action": "allow", "rule": "none"}\n')
    engine = EmbeddedEngine.load([tmp_path])
    decision = asyncio.run(engine.decide(DOC))
    assert (decision.action.value, decision.message) == ("deny", "v")


# --- The decision cache: only for pure policies, exact, bounded ------------------------


def _engine(tmp_path: Path, source: str) -> EmbeddedEngine:
    (tmp_path / "p.rego").write_text(source)
    return EmbeddedEngine.load([tmp_path])


@pytest.mark.parametrize(("source", "expected"), [
    ('x := input.request.method', True),
    ('x := time.now_ns()', False),
    ('x := rand.intn("k", 10)', False),
    ('x := http.send({"method": "GET", "url": "http://127.0.0.1/"})', False),
    ('x := "time.now_ns()" # print(x)', True),  # in a string and a comment: not called
])
def test_only_pure_policies_are_cached(source: str, expected: bool) -> None:
    assert pure([source]) is expected


def test_a_repeated_input_gets_the_same_decision_and_a_clock_reading_policy_is_asked_again(
        tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    cached = _engine(tmp_path / "a", 'package hitl\n\ndecision := {"action": "hold", "message": '
                     'input.request.method, "rule": "r"}\n')
    first = asyncio.run(cached.decide(DOC))
    again = asyncio.run(cached.decide(DOC))
    assert first == again and first.message == "POST"
    other = asyncio.run(cached.decide({**DOC, "request": {**DOC["request"], "method": "PUT"}}))
    assert other.message == "PUT"  # a different input is evaluated, not served from the cache

    (tmp_path / "b").mkdir()
    clock = _engine(tmp_path / "b", 'package hitl\n\ndecision := {"action": "allow", '
                    '"rule": format_int(time.now_ns(), 10)}\n')
    rules = {asyncio.run(clock.decide(DOC)).rule for _ in range(3)}
    assert len(rules) == 3


def test_the_cache_is_bounded(tmp_path: Path) -> None:
    engine = _engine(tmp_path, 'package hitl\n\ndecision := {"action": "allow", "rule": input.request.path}\n')
    for i in range(CACHE_ENTRIES + 50):
        asyncio.run(engine.decide({"request": {"path": f"/{i}"}}))
    assert len(engine._cache) == CACHE_ENTRIES  # type: ignore[arg-type]
    # The oldest went first; the newest is still answered, and right.
    assert asyncio.run(engine.decide({"request": {"path": "/0"}})).rule == "/0"
