"""GET /api/openapi.json describes the API as served: every API route with its methods is in
it, every path in it is served, and the request record's schema names exactly the fields a
record carries (the hand-written spec had drifted: no /api/me, no approvals)."""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

from tests.conftest import Hitl, Upstream
from tests.test_core_flow import in_background

OPS = {"/healthz", "/readyz", "/metrics"}
# Served only when configured (review.slack); described all the same.
OPTIONAL = {("/slack/interactions", "post")}


def _served(hitl: Hitl) -> set[tuple[str, str]]:
    app = hitl.runtime._uvicorn.config.app
    return {(r.path, m.lower()) for r in app.routes if isinstance(r, Route)
            and (r.path.startswith(("/api/", "/slack/")) or r.path in OPS)
            for m in (r.methods or ()) if m != "HEAD"}


def test_the_spec_lists_every_served_route_and_nothing_else(hitl: Hitl) -> None:
    with hitl.api() as api:
        spec = api.get("/api/openapi.json").json()
    described = {(path, method) for path, item in spec["paths"].items() for method in item}
    served = _served(hitl)
    assert ("/api/me", "get") in served and ("/api/grants/{id}", "delete") in served
    assert served - described == set(), "served but not described"
    assert described - served - OPTIONAL == set(), "described but not served"


def test_the_request_schema_names_every_field_a_record_carries(hitl: Hitl, upstream: Upstream) -> None:
    agent = hitl.agent()
    thread, _box = in_background(lambda: agent.post(upstream.url("/hold/x?approvals=2"), content=b"{}"))
    rid = hitl.wait_pending()[0]["id"]
    with hitl.api() as api:
        spec = api.get("/api/openapi.json").json()
        schema: dict[str, Any] = spec["components"]["schemas"]["Request"]
        record = api.post(f"/api/requests/{rid}/approve", json={"edit": {"body": "{\"a\": 1}"}}).json()
        listed = api.get("/api/requests").json()["items"][0]
        api.post(f"/api/requests/{rid}/reject", json={"comment": "done"})
    thread.join(15)
    assert "edit" in record and "approvals" in record
    for doc in (record, listed):
        assert set(doc) <= set(schema["properties"]), set(doc) - set(schema["properties"])
        assert set(schema["required"]) <= set(doc)
    assert set(schema["properties"]) <= set(record) | {"can_decide"}, "described but never written"
