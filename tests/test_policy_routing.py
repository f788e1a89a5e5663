"""Routes (proxy/policy/routing.py): a request evaluated on a bundle that holds only the
packages it reaches must get exactly the answer of the full bundle — the same decision,
the same error — for the shipped policies' samples, hostile spellings of hosts, MCP calls
that may go to any host, and operators' own package layouts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import PolicyError
from proxy.policy import EmbeddedEngine, build_input, connect_input
from tests.test_shipped_policies import BILLING, CASES, NOW, POLICIES, req

Outcome = tuple[str, Any]


def engines(paths: list[Path]) -> tuple[EmbeddedEngine, EmbeddedEngine]:
    """The full-bundle engine, and one that routes from its first evaluation on; neither
    caches decisions, so every evaluation runs rego-cpp."""
    full = EmbeddedEngine.load(paths, route_after=None)
    routed = EmbeddedEngine.load(paths, route_after=0)
    full._cache = routed._cache = None
    return full, routed


def outcome(engine: EmbeddedEngine, doc: dict[str, Any], intercept: bool = False) -> Outcome:
    try:
        if intercept:
            return ("intercept", asyncio.run(engine.intercept(doc)))
        return ("decision", asyncio.run(engine.decide(doc)))
    except PolicyError as exc:
        return ("error", exc.message)


def assert_same(paths: list[Path], docs: Iterable[dict[str, Any]], intercept: bool = False,
                passes: int = 4) -> EmbeddedEngine:
    """Every pass over the documents gives the full bundle's outcomes: the first runs
    before the routes exist, the next ones while hosts learn their packages (each pass
    ends when the routes it asked for are compiled)."""
    docs = list(docs)
    full, routed = engines(paths)
    expected = [outcome(full, doc, intercept) for doc in docs]
    for _ in range(passes):
        assert [outcome(routed, doc, intercept) for doc in docs] == expected
        routed.settle()
    return routed


def sample_docs() -> list[dict[str, Any]]:
    docs = []
    for rows in CASES.values():
        for request, agent, *_ in rows:
            docs.append(build_input(request, agent, NOW))
            path, sep, query = request.target.partition("?")
            slashed = type(request)(request.method, request.scheme, request.host, request.port,
                                    path + "/" + sep + query, request.headers, request.body)
            docs.append(build_input(slashed, agent, NOW))
    return docs


def test_every_shipped_sample_decides_as_the_full_bundle() -> None:
    routed = assert_same([POLICIES], sample_docs())
    assert routed._router is not None and any(routed._router._bundles.values())  # on routes


HOSTS = ["api.stripe.com", "API.STRIPE.COM", "api.stripe.com.", "API.Stripe.Com..", "abc.supabase.co",
         "a.b.supabase.co", "supabase.co", "example.com", "", ".", "slack.com", "files.slack.com",
         "api.sendgrid.com", "db-gateway.example.com", "127.0.0.1", "[::1]", "xn--bcher-kva.example"]


@pytest.mark.parametrize("intercept", [False, True])
def test_connect_to_any_spelling_of_a_host(intercept: bool) -> None:
    docs = [connect_input(host, port, BILLING, NOW) for host in HOSTS for port in (443, 8443)]
    assert_same([POLICIES], docs, intercept=intercept)


def test_raw_documents_with_hosts_the_gate_would_have_canonicalized() -> None:
    """The router keys on the host as it is in the document; a spelling the gate would
    never hand over still gets the full bundle's answer."""
    charge = build_input(req("POST", "https://api.stripe.com/v1/charges", {"amount": 25000, "currency": "usd"}),
                         BILLING, NOW)
    docs = []
    for host in [*HOSTS, 42, None, ["api.stripe.com"], {"h": 1}]:
        for port in (443, 80, 8443, "443"):
            doc = json.loads(json.dumps(charge))
            doc["request"]["host"], doc["request"]["port"] = host, port
            docs.append(doc)
    docs += [{}, {"request": None}, {"request": "api.stripe.com"}, {"agent": {"id": "x"}}]
    assert_same([POLICIES], docs)


def mcp_call(url: str, tool: str, arguments: dict[str, Any] | None = None, error: str | None = None) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments or {}}}
    doc = build_input(req("POST", url, body), BILLING, NOW)
    doc["mcp"] = {"method": "tools/call", "tool": tool, "arguments": arguments or {}, "id": 1,
                  "session": None, "error": error}
    return doc


def test_mcp_calls_to_any_host() -> None:
    """mcp.rego judges a call on every host: a host first seen with plain requests must
    still reach it when an MCP call comes."""
    plain = [build_input(req("GET", f"https://{host}/v1/x"), BILLING, NOW) for host in ("example.com", "api.stripe.com")]
    calls = [mcp_call(f"https://{host}/mcp", tool, {"to": "ceo@example.com", "subject": "Numbers"}, error)
             for host in ("example.com", "api.stripe.com", "mcp.internal", "api.sendgrid.com")
             for tool, error in (("send_email", None), ("list_files", None), ("run_sql", None),
                                 ("x", "not JSON-RPC"))]
    assert_same([POLICIES], plain + calls + plain)


def write(tmp_path: Path, files: dict[str, str]) -> list[Path]:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return [tmp_path]


# Operators' own layouts: the router knows nothing of the shipped policies' structure.
LAYOUTS = {
    "a default in a package the host has not reached yet": {
        "main.rego": 'package hitl\n\ndecision := {"action": "deny", "rule": "x"} if not data.corp.checks.ok\n'
                     'else := {"action": "allow", "rule": "y"}\n',
        "checks.rego": 'package corp.checks\n\ndefault ok := false\n\nok if input.request.host == "good.example"\n',
    },
    "a partial set in another package, and a function": {
        "main.rego": 'package hitl\n\ndecision := {"action": "hold", "rule": concat(",", sort(data.corp.tags))}'
                     ' if count(data.corp.tags) > 0\nelse := {"action": data.corp.verdict(input.request.method)}\n',
        "tags.rego": 'package corp\n\ntags contains "write" if input.request.method == "POST"\n\n'
                     'verdict(m) := "allow" if m == "GET"\nelse := "deny"\n',
    },
    "a package read whole, and rules with ref heads": {
        "main.rego": 'package hitl\n\ndecision := {"action": "allow", "message": json.marshal(data.corp)}'
                     ' if input.request.host == "whole.example"\n'
                     'else := {"action": "allow", "rule": data.corp.a.b.c} if input.request.host == "ref.example"\n'
                     'else := {"action": "allow"}\n\nlib.local := 1\n',
        "corp.rego": 'package corp\n\na.b.c := "deep"\n\nx := 1\n',
        "lib.rego": 'package hitl.lib\n\ny := 2\n',
    },
    "packages split over files, one of them nested": {
        "main.rego": 'package hitl\n\nimport data.corp\n\ndecision := corp.by_host[input.request.host]\n'
                     'default decision := {"action": "allow"}\n',
        "a.rego": 'package corp\n\nby_host["a.example"] := {"action": "hold"}\n',
        "b.rego": 'package corp\n\nby_host["b.example"] := {"action": "deny", "message": corp.sub.why}\n',
        "sub.rego": 'package corp.sub\n\nwhy := "no"\n',
    },
    "errors in a package that only some hosts reach": {
        "main.rego": 'package hitl\n\ndecision := data.corp.decide if input.request.host == "bad.example"\n'
                     'else := {"action": "allow"}\n',
        "corp.rego": 'package corp\n\ndecide := {"action": "allow", "n": to_number(input.request.path)}\n',
    },
    # Ref heads that write into a nested package's namespace: that package is never left out.
    "a function defined from the enclosing package too": {
        "main.rego": 'package hitl\n\nlib.f(x) := 1 if x == "GET"\n\ndecision := {"action": "allow", "rule":'
                     ' format_int(data.hitl.lib.f(input.request.method), 10)} if input.request.host == "a.example"\n'
                     'else := {"action": "allow", "rule": "other"}\n',
        "lib.rego": 'package hitl.lib\n\nf(x) := 2 if x != "POST"\n',
    },
    "a conflict between the enclosing package and the nested one": {
        "main.rego": 'package hitl\n\nlib.v := 1\n\ndecision := {"action": "allow", "rule":'
                     ' format_int(data.hitl.lib.v, 10)} if input.request.host == "a.example"\n'
                     'else := {"action": "allow", "rule": "other"}\n',
        "lib.rego": 'package hitl.lib\n\nv := 2 if input.request.method == "GET"\n',
    },
    "a partial set with members on both sides": {
        "main.rego": 'package hitl\n\nlib.tags contains "main"\n\ndecision := {"action": "allow", "rule":'
                     ' concat(",", sort(data.hitl.lib.tags))} if input.request.host == "a.example"\n'
                     'else := {"action": "allow", "rule": "other"}\n',
        "lib.rego": 'package hitl.lib\n\ntags contains "lib" if input.request.method == "GET"\n',
    },
    "everything in one package": {
        "main.rego": 'package hitl\n\ndefault decision := {"action": "allow"}\n\n'
                     'decision := {"action": "deny"} if input.request.method == "DELETE"\n',
    },
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_operators_layouts_decide_as_the_full_bundle(tmp_path: Path, layout: str) -> None:
    paths = write(tmp_path, LAYOUTS[layout])
    docs = [build_input(req(method, f"https://{host}/v1/{path}"), BILLING, NOW)
            for host in ("good.example", "whole.example", "ref.example", "a.example", "b.example", "bad.example",
                         "other.example")
            for method in ("GET", "POST", "DELETE") for path in ("1", "x")]
    assert_same(paths, docs)


def test_routes_arrive_while_a_running_loop_evaluates() -> None:
    """In the gate: concurrent decisions on one loop while routes are prepared and
    compiled on the engine's thread; every answer is the full bundle's."""
    docs = sample_docs()
    full = EmbeddedEngine.load([POLICIES], route_after=None)
    full._cache = None
    expected = [outcome(full, doc) for doc in docs]
    routed = EmbeddedEngine.load([POLICIES], route_after=8)
    routed._cache = None

    async def one(doc: dict[str, Any]) -> Outcome:
        try:
            return ("decision", await routed.decide(doc))
        except PolicyError as exc:
            return ("error", exc.message)

    async def rounds() -> None:
        for _ in range(6):
            assert list(await asyncio.gather(*(one(doc) for doc in docs))) == expected
            await asyncio.sleep(0.05)  # the thread compiles meanwhile; the loop does not wait for it

    asyncio.run(rounds())
    routed.settle()
    assert routed._router is not None and any(routed._router._bundles.values())

    async def last() -> None:  # with every route the samples asked for in place
        assert list(await asyncio.gather(*(one(doc) for doc in docs))) == expected

    asyncio.run(last())
