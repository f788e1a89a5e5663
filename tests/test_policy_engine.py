"""The policy layer: the input document, decision parsing, the embedded engine on the
shipped policies, load and evaluation errors, and the Rego test runner."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import regopy

from proxy.errors import ConfigError, PolicyError
from proxy.model import Action, Agent, AgentRequest, Decision, OnTimeout
from proxy.policy import (
    EmbeddedEngine,
    PolicyLoadError,
    build_input,
    connect_input,
    parse_decision,
    rego_input,
    run_tests,
)
from proxy.redact import SECRET_HEADERS, is_secret, redact_headers

POLICIES = Path(__file__).resolve().parent.parent / "policies"
NOW = 1795000000.25
BILLING = Agent("billing-agent", "10.0.0.7")


def make_request(
    method: str = "GET",
    host: str = "example.com",
    target: str = "/",
    body: bytes | dict[str, Any] = b"",
    headers: tuple[tuple[str, str], ...] = (),
    scheme: str = "https",
    port: int = 443,
) -> AgentRequest:
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        headers = (("Content-Type", "application/json"), *headers)
    return AgentRequest(method, scheme, host, port, target, headers, body)


@pytest.fixture(scope="module")
def engine() -> EmbeddedEngine:
    return EmbeddedEngine.load([POLICIES])


def decide(engine: EmbeddedEngine, doc: dict[str, Any]) -> Decision:
    return asyncio.run(engine.decide(doc))


def write(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


# --- The shipped policies ---------------------------------------------------------
#
# Their table of sample requests is tests/test_shipped_policies.py; here only what
# the engine itself does with them.


def test_shipped_policy_allows_connect(engine: EmbeddedEngine) -> None:
    decision = decide(engine, connect_input("example.com", 443, BILLING, NOW))
    assert (decision.action, decision.rule) == (Action.ALLOW, "default")


def test_describe(engine: EmbeddedEngine) -> None:
    text = engine.describe()
    assert "regopy" in text and "data.hitl.decision" in text and "7 policy files" in text


TRICKY = {
    "quote": 'say "hi"',
    "backslash": "C:\\temp\\x",
    "control": "line\nnext\ttab\u0001",
    "nul": "ok\u0000evil",
    "unicode": "h\u00e9llo \u20ac \U0001f600",
    'key "with" quotes': "v",
    "numbers": [0, -1, 2**62, 1.5, -0.25],
    "flags": [True, False, None],
    "nested": {"empty": {}, "list": [[], [{}]]},
}


def test_fast_input_matches_the_json_term() -> None:
    """The direct C-call input gives the policy what rego-cpp's own JSON parsing gives."""
    assert rego_input._FAST
    doc = build_input(
        make_request(
            "POST",
            "api.stripe.com",
            "/v1/charges?expand=customer&expand=invoice&x=",
            TRICKY,
            (("Authorization", "Bearer sk"), ("X-Trace", "a"), ("X-Trace", "b")),
        ),
        BILLING,
        NOW,
    )
    probe = regopy.Interpreter()
    probe.add_module("p.rego", "package p\nx := input\n")
    bundle = probe.build(None, ["p/x"])
    probe.set_input(rego_input._input_fast(doc))
    fast = str(probe.query_bundle_entrypoint(bundle, "p/x"))
    probe.set_input_term(json.dumps(doc, ensure_ascii=False))
    term = str(probe.query_bundle_entrypoint(bundle, "p/x"))
    assert fast == term
    assert json.loads(fast)["expressions"][0] == doc


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ('say "hi"', r'"say \"hi\""'),
        ("C:\\temp", r'"C:\\temp"'),
        ("ok\u0000evil", r'"ok\u0000evil"'),  # a C string would end at the NUL
        ("line\nnext", r'"line\nnext"'),
        ("h\u00e9llo", '"h\u00e9llo"'),
    ],
)
def test_strings_compare_as_written(tmp_path: Path, value: str, literal: str) -> None:
    """regopy.Input would hand these raw to rego-cpp: the comparison would be false."""
    engine = load(
        tmp_path,
        'package hitl\ndefault decision := {"action": "deny"}\n'
        f'decision := {{"action": "allow", "message": input.v}} if input.v == {literal}\n',
    )
    assert decide(engine, {"v": value}) == Decision(Action.ALLOW, value)


def test_big_integers_pass_as_floats(tmp_path: Path) -> None:
    engine = load(tmp_path, 'package hitl\ndecision := {"action": "allow"} if input.n > 2\n')
    assert decide(engine, {"n": 2**70}).action is Action.ALLOW


# --- Decision documents -----------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"action": "allow"}, Decision(Action.ALLOW)),
        (
            {"action": "deny", "message": "no", "rule": "r.x"},
            Decision(Action.DENY, "no", rule="r.x"),
        ),
        (
            {
                "action": "hold",
                "message": "m",
                "reviewers": ["group:finance", "bob"],
                "approvals": 2,
                "timeout": "30m",
                "on_timeout": "allow",
                "grantable": True,
                "rule": "payments.large",
                "unknown": {"ignored": True},
            },
            Decision(
                Action.HOLD,
                "m",
                ("group:finance", "bob"),
                2,
                1800.0,
                OnTimeout.ALLOW,
                True,
                "payments.large",
            ),
        ),
        ({"action": "hold", "timeout": "30s"}, Decision(Action.HOLD, timeout=30.0)),
        ({"action": "hold", "timeout": "2h"}, Decision(Action.HOLD, timeout=7200.0)),
        ({"action": "hold", "timeout": "1h30m"}, Decision(Action.HOLD, timeout=5400.0)),
        ({"action": "hold", "timeout": 90}, Decision(Action.HOLD, timeout=90.0)),
        ({"action": "hold", "timeout": 0.5}, Decision(Action.HOLD, timeout=0.5)),
        ({"action": "hold", "timeout": "1d"}, Decision(Action.HOLD, timeout=86400.0)),
        ({"action": "hold", "timeout": None, "reviewers": None}, Decision(Action.HOLD)),
        (
            {"action": "hold", "on_timeout": "deny"},
            Decision(Action.HOLD, on_timeout=OnTimeout.DENY),
        ),
    ],
)
def test_parse_decision(doc: Any, expected: Decision) -> None:
    assert parse_decision(doc) == expected


@pytest.mark.parametrize(
    ("doc", "names"),
    [
        (True, "bare true"),
        (False, "bare false"),
        ("allow", "must be an object"),
        ([{"action": "allow"}], "must be an object"),
        ({}, '"action"'),
        ({"message": "x"}, '"action"'),
        ({"action": "ALLOW"}, "action"),
        ({"action": "permit"}, "action"),
        ({"action": 1}, "action"),
        ({"action": "deny", "message": 5}, "message"),
        ({"action": "hold", "reviewers": "bob"}, "reviewers"),
        ({"action": "hold", "reviewers": ["bob", 3]}, "reviewers"),
        ({"action": "hold", "reviewers": [""]}, "reviewers"),
        ({"action": "hold", "approvals": 0}, "approvals"),
        ({"action": "hold", "approvals": -1}, "approvals"),
        ({"action": "hold", "approvals": 1.5}, "approvals"),
        ({"action": "hold", "approvals": "2"}, "approvals"),
        ({"action": "hold", "approvals": True}, "approvals"),
        ({"action": "hold", "timeout": "soon"}, "timeout"),
        ({"action": "hold", "timeout": "30x"}, "timeout"),
        ({"action": "hold", "timeout": "0s"}, "timeout"),
        ({"action": "hold", "timeout": -5}, "timeout"),
        ({"action": "hold", "timeout": 0}, "timeout"),
        ({"action": "hold", "timeout": True}, "timeout"),
        ({"action": "hold", "timeout": ""}, "timeout"),
        ({"action": "hold", "on_timeout": "approve"}, "on_timeout"),
        ({"action": "hold", "grantable": "yes"}, "grantable"),
        ({"action": "hold", "grantable": 1}, "grantable"),
        ({"action": "allow", "rule": 7}, "rule"),
        ({"action": "allow", "rule": ""}, "rule"),
    ],
)
def test_parse_decision_refuses(doc: Any, names: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_decision(doc)
    assert names in caught.value.message
    assert caught.value.code == "policy_error"


# --- Errors from ad-hoc policies --------------------------------------------------


def load(tmp_path: Path, source: str, **files: str) -> EmbeddedEngine:
    return EmbeddedEngine.load([write(tmp_path, {"p.rego": source, **files})])


ANY_INPUT = connect_input("example.com", 443, BILLING, NOW)


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("package hitl\ndecision := true\n", "bare true"),
        ('package hitl\ndecision := {"action": "maybe"}\n', "action"),
        ('package hitl\ndecision := {"action": "allow"} if input.nothing\n', "undefined"),
        (  # two complete rules with different values
            'package hitl\ndecision := {"action": "allow"}\ndecision := {"action": "deny"} if true\n',
            "multiple outputs",
        ),
        (  # a builtin error is an error (strict), not a quiet undefined
            'package hitl\ndecision := {"action": "allow", "n": to_number("abc")}\n',
            "policy evaluation failed",
        ),
        ('package hitl\ndecision := {"action": "allow", "n": 1 / 0}\n', "divide by zero"),
        ("package hitl\ndecision if other\nother if decision\n", "Recursion"),
    ],
)
def test_evaluation_errors(tmp_path: Path, source: str, problem: str) -> None:
    engine = load(tmp_path, source)
    with pytest.raises(PolicyError) as caught:
        decide(engine, ANY_INPUT)
    assert problem in caught.value.message


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("", True),  # no intercept rule: intercept by default
        ("intercept := false\n", False),
        ('intercept if input.request.host == "example.com"\n', True),
        ('intercept if input.request.host == "other"\n', True),  # undefined
    ],
)
def test_intercept_rule(tmp_path: Path, rule: str, expected: bool) -> None:
    engine = load(tmp_path, 'package hitl\ndecision := {"action": "allow"}\n' + rule)
    assert asyncio.run(engine.intercept(ANY_INPUT)) is expected


def test_intercept_must_be_bool(tmp_path: Path) -> None:
    engine = load(tmp_path, 'package hitl\ndecision := {"action": "allow"}\nintercept := "yes"\n')
    with pytest.raises(PolicyError, match="intercept must be true or false"):
        asyncio.run(engine.intercept(ANY_INPUT))


def test_input_that_cannot_be_passed(tmp_path: Path) -> None:
    engine = load(tmp_path, 'package hitl\ndecision := {"action": "allow"} if input.request\n')
    with pytest.raises(PolicyError, match="cannot be passed"):
        decide(engine, {"request": {"body": float("nan")}})
    with pytest.raises(PolicyError, match="cannot be passed"):
        decide(engine, {"request": {"body": object()}})


def test_closed_engine_refuses(tmp_path: Path) -> None:
    engine = load(tmp_path, 'package hitl\ndecision := {"action": "allow"}\n')
    engine.close()
    with pytest.raises(PolicyError, match="closed"):
        decide(engine, ANY_INPUT)


def test_custom_query_and_data(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "gate/policy.rego": (
                "package acme.gate\n"
                'answer := {"action": "deny", "message": data.acme.gate.words.reply, "rule": "acme"}\n'
            ),
            # a data file in a sub-folder sits under that folder's path, as in OPA
            "gate/acme/gate/data.yaml": "words:\n  reply: not today\n",
            "gate/data.json": '{"unused": 1}',
        },
    )
    engine = EmbeddedEngine.load([root / "gate"], query="data.acme.gate.answer")
    assert decide(engine, ANY_INPUT) == Decision(Action.DENY, "not today", rule="acme")
    assert asyncio.run(engine.intercept(ANY_INPUT)) is True  # no package hitl at all


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    source = 'package hitl\n\ndecision := {"action": "allow"} if {\n  input.x == \n}\n'
    with pytest.raises(PolicyLoadError) as caught:
        load(tmp_path, source)
    assert f"{tmp_path / 'p.rego'}:4:11:" in caught.value.message
    assert caught.value.path == str(tmp_path / "p.rego") and caught.value.line == 4


def test_compile_error_without_location(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match="p.rego: Invalid rule body for set rule"):
        load(
            tmp_path, 'package hitl\ndecision := {"action": "allow"}\ndecision contains 2 if true\n'
        )


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({}, "no policy files under"),
        ({"only_test.rego": "package hitl_test\ntest_x if true\n"}, "no policy files under"),
        ({"readme.md": "# no policy\n"}, "no silent allow-all"),
        (
            {"p.rego": 'package other\ndecision := {"action": "allow"}\n'},
            "no rule declares data.hitl.decision",
        ),
        (
            {"p.rego": 'package hitl\ndecisions := {"action": "allow"}\n'},
            "every request would be denied",
        ),
        (
            {
                "p.rego": 'package hitl\ndefault decision := {"action": "allow"}\n',
                "data.json": '{"a": \n',
            },
            "data.json:2:",
        ),
        (
            {
                "p.rego": 'package hitl\ndefault decision := {"action": "allow"}\n',
                "data.yaml": "a: [1,\n",
            },
            "data.yaml:",
        ),
        (
            {
                "p.rego": 'package hitl\ndefault decision := {"action": "allow"}\n',
                "data.json": "[1]",
            },
            "must be an object",
        ),
        (
            {
                "p.rego": 'package hitl\ndefault decision := {"action": "allow"}\n',
                "data.json": '{"a": 1}',
                "data.yaml": "a: 2\n",
            },
            "data.a is already set",
        ),
        (
            {
                "p.rego": 'package hitl\ndefault decision := {"action": "allow"}\n',
                "data.yaml": "day: 2026-01-01\n",
            },
            "not a JSON document",
        ),
    ],
)
def test_load_errors(tmp_path: Path, files: dict[str, str], problem: str) -> None:
    with pytest.raises(PolicyLoadError) as caught:
        EmbeddedEngine.load([write(tmp_path, files)])
    assert problem in caught.value.message


def test_missing_path_and_bad_query(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match="does not exist"):
        EmbeddedEngine.load([tmp_path / "nope"])
    with pytest.raises(ConfigError, match="policy.query"):
        EmbeddedEngine.load([POLICIES], query="hitl.decision")


def test_test_files_are_not_loaded_by_the_engine(tmp_path: Path) -> None:
    engine = load(
        tmp_path,
        'package hitl\ndecision := {"action": "allow"}\n',
        **{"p_test.rego": "package hitl\nthis is not rego\n"},
    )
    assert decide(engine, ANY_INPUT).action is Action.ALLOW


# --- The input document -----------------------------------------------------------


def test_build_input_shape() -> None:
    request = make_request(
        "POST",
        "api.stripe.com",
        "/v1/charges?expand=customer&expand=invoice&empty=",
        {"amount": 5000, "currency": "usd"},
        (("Authorization", "Bearer sk_live_x"), ("X-Trace", "a"), ("x-trace", "b")),
    )
    doc = build_input(request, BILLING, NOW)
    body = request.body.decode()
    assert doc == {
        "request": {
            "method": "POST",
            "scheme": "https",
            "host": "api.stripe.com",
            "port": 443,
            "path": "/v1/charges",
            "raw_path": "/v1/charges",
            "query": {"expand": ["customer", "invoice"], "empty": [""]},
            "headers": {
                "content-type": "application/json",
                "authorization": "[redacted]",
                "x-trace": "a, b",
            },
            "body": {"amount": 5000, "currency": "usd"},
            "body_text": body,
            "body_size": len(body),
            "body_truncated": False,
        },
        "agent": {"id": "billing-agent", "address": "10.0.0.7"},
        "time": {"unix": 1795000000, "iso": "2026-11-18T11:06:40Z"},
    }


@pytest.mark.parametrize(
    ("content_type", "body", "parsed", "text"),
    [
        (
            "application/json",
            b'{"a": [1, 2.5, null]}',
            {"a": [1, 2.5, None]},
            '{"a": [1, 2.5, null]}',
        ),
        ("application/json; charset=utf-8", b'"x"', "x", '"x"'),
        ("application/vnd.api+json", b"[1]", [1], "[1]"),
        ("Application/JSON", b"{}", {}, "{}"),
        ("application/json", b"{not json", None, "{not json"),
        ("application/json", b'{"n": NaN}', None, '{"n": NaN}'),
        ("application/json", b"", None, ""),
        ("application/json", b"[" * 5000 + b"]" * 5000, None, "[" * 5000 + "]" * 5000),
        (
            "application/x-www-form-urlencoded",
            b"amount=5000&currency=usd&tag=a&tag=b&empty=&msg=hello+world%21",
            {
                "amount": "5000",
                "currency": "usd",
                "tag": ["a", "b"],
                "empty": "",
                "msg": "hello world!",
            },
            "amount=5000&currency=usd&tag=a&tag=b&empty=&msg=hello+world%21",
        ),
        ("application/x-www-form-urlencoded", b"\xff\xfe=1", None, None),
        ("text/plain", "héllo".encode(), None, "héllo"),
        ("application/octet-stream", b"\x00\xff\x10binary", None, None),
        (None, b'{"a": 1}', None, '{"a": 1}'),
    ],
)
def test_build_input_body(
    content_type: str | None, body: bytes, parsed: Any, text: str | None
) -> None:
    headers = (("Content-Type", content_type),) if content_type else ()
    doc = build_input(make_request("POST", target="/", body=body, headers=headers), BILLING, NOW)
    assert doc["request"]["body"] == parsed
    assert doc["request"]["body_text"] == text
    assert doc["request"]["body_size"] == len(body)


@pytest.mark.parametrize(
    ("headers", "extra", "expected"),
    [
        ((("Authorization", "Bearer x"),), (), {"authorization": "[redacted]"}),
        ((("Proxy-Authorization", "Basic x"),), (), {"proxy-authorization": "[redacted]"}),
        ((("Cookie", "a=1"), ("Cookie", "b=2")), (), {"cookie": "[redacted]"}),
        ((("Set-Cookie", "a=1"),), (), {"set-cookie": "[redacted]"}),
        ((("X-API-Key", "k"),), (), {"x-api-key": "[redacted]"}),
        (
            (("X-Stripe-Token", "t"), ("Accept", "*/*")),
            ("x-stripe-token",),
            {"x-stripe-token": "[redacted]", "accept": "*/*"},
        ),
        ((("X-Stripe-Token", "t"),), ("X-STRIPE-TOKEN",), {"x-stripe-token": "[redacted]"}),
        ((("Accept", "a"), ("ACCEPT", "b")), (), {"accept": "a, b"}),
        ((), (), {}),
    ],
)
def test_redaction(
    headers: tuple[tuple[str, str], ...], extra: tuple[str, ...], expected: dict[str, str]
) -> None:
    assert redact_headers(headers, extra) == expected
    doc = build_input(make_request(headers=headers), BILLING, NOW, secret_headers=extra)
    assert doc["request"]["headers"] == expected


def test_is_secret() -> None:
    assert all(is_secret(name.upper()) for name in SECRET_HEADERS)
    assert is_secret("X-Custom", ["x-custom"])
    assert not is_secret("Accept")


def test_connect_input() -> None:
    assert connect_input("API.Stripe.com", 443, BILLING, NOW) == {
        "request": {"method": "CONNECT", "host": "api.stripe.com", "port": 443},
        "agent": {"id": "billing-agent", "address": "10.0.0.7"},
        "time": {"unix": 1795000000, "iso": "2026-11-18T11:06:40Z"},
    }


# --- Rego tests -------------------------------------------------------------------


def test_shipped_policy_tests_pass() -> None:
    results = run_tests([POLICIES])
    assert len(results) >= 4
    assert [r for r in results if not r.passed] == []
    assert "hitl.payments_test" in {r.package for r in results}


def test_run_tests_reports_failures(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "p.rego": "package hitl\nallowed if input.x == 1\n",
            "p_test.rego": (
                "package hitl_test\n"
                "import data.hitl\n"
                "test_ok if { hitl.allowed with input.x as 1 }\n"
                "test_wrong if { hitl.allowed with input.x as 2 }\n"
                "test_false := false\n"
                "test_error if { 1 / 0 }\n"
                "helper(x) := x\n"
            ),
        },
    )
    results = {r.name: r for r in run_tests([tmp_path])}
    assert set(results) == {"test_ok", "test_wrong", "test_false", "test_error"}
    assert results["test_ok"].passed and results["test_ok"].error is None
    assert not results["test_wrong"].passed and results["test_wrong"].error is None
    assert not results["test_false"].passed
    assert not results["test_error"].passed and "divide by zero" in (
        results["test_error"].error or ""
    )


def test_run_tests_broken_file(tmp_path: Path) -> None:
    write(
        tmp_path,
        {"p.rego": "package hitl\nx := 1\n", "p_test.rego": "package hitl_test\ntest_x if {\n"},
    )
    with pytest.raises(PolicyLoadError, match="p_test.rego:"):
        run_tests([tmp_path])


def test_run_tests_survives_a_regopy_crash(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "p.rego": "package hitl\nu := upper(input.a)\n",
            "p_test.rego": 'package hitl_test\ntest_x if { data.hitl.u == "A" with input as {"a": "a"} }\n',
        },
    )
    with pytest.raises(PolicyLoadError, match="crashed regopy.*with input.request as"):
        run_tests([tmp_path])


def test_run_tests_without_tests(tmp_path: Path) -> None:
    assert run_tests([write(tmp_path, {"p.rego": "package hitl\nx := 1\n"})]) == []
