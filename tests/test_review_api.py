"""The review API's answers to clients that get it wrong or come late: a decision
on a request that is no longer pending is 409 naming its current status, through the API and
the CLI; bad audit pages are 400; every error is the flat JSON shape, never a 500."""

from __future__ import annotations

import base64
import subprocess
from typing import Any

import httpx

from tests.conftest import HITL, Hitl, Upstream
from tests.test_core_flow import in_background


def _hold(hitl: Hitl, upstream: Upstream, path: str = "/hold/charge") -> tuple[Any, dict[str, Any], str]:
    agent = hitl.agent()
    thread, box = in_background(lambda: agent.post(upstream.url(path), content=b'{"amount": 5000}'))
    rid = hitl.wait_pending()[0]["id"]
    return thread, box, rid


def test_deciding_a_request_no_longer_pending_answers_409_with_its_current_status(
        hitl: Hitl, upstream: Upstream) -> None:
    thread, box, rid = _hold(hitl, upstream)
    with hitl.api() as api:
        assert api.post(f"/api/requests/{rid}/reject", json={"comment": "no"}).status_code == 200
        thread.join(15)
        assert box["result"].status_code == 403
        for verdict, body in (("approve", {}), ("reject", {"comment": "again"})):
            r = api.post(f"/api/requests/{rid}/{verdict}", json=body)
            assert r.status_code == 409, r.text
            assert r.json() == {"error": "conflict", "current_status": "rejected",
                                "message": f"request {rid} is rejected; cannot become {verdict}"}
    assert upstream.count("/hold") == 0  # the late approval sent nothing


def test_the_cli_reports_a_conflict_in_one_line_and_exits_non_zero(hitl: Hitl, upstream: Upstream) -> None:
    thread, _box, rid = _hold(hitl, upstream)
    cli = [HITL, "--url", hitl.review_url, "--token", hitl.admin_token, "-c", str(hitl.config_path)]
    first = subprocess.run([cli[0], "approve", rid, *cli[1:]], capture_output=True, text=True,
                           timeout=60, check=False)
    assert first.returncode == 0, first.stderr
    thread.join(15)
    again = subprocess.run([cli[0], "reject", rid, "--comment", "too late", *cli[1:]],
                           capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"hitl-proxy: 409 conflict: request {rid} is forwarded; cannot become reject"]
    assert upstream.count("/hold") == 1


def test_a_reviewer_approving_twice_toward_a_quorum_gets_409_and_the_record_stays_pending(
        hitl: Hitl, upstream: Upstream) -> None:
    thread, _box, rid = _hold(hitl, upstream, "/hold/charge?approvals=2")
    with hitl.api() as api:
        assert api.post(f"/api/requests/{rid}/approve", json={}).json()["status"] == "pending"
        r = api.post(f"/api/requests/{rid}/approve", json={})
        assert r.status_code == 409
        assert r.json()["current_status"] == "pending"
        assert "has already decided it" in r.json()["message"]
        assert api.get(f"/api/requests/{rid}").json()["status"] == "pending"
        api.post(f"/api/requests/{rid}/reject", json={"comment": "done"})  # let the agent go
    thread.join(15)
    assert upstream.count("/hold") == 0


def test_audit_pages_refuse_bad_limits_and_cap_big_ones(hitl: Hitl, upstream: Upstream) -> None:
    with hitl.agent() as agent:
        for i in range(3):
            agent.get(upstream.url(f"/deny/{i}"))  # not audited; holds are
    thread, _box, rid = _hold(hitl, upstream)
    with hitl.api() as api:
        api.post(f"/api/requests/{rid}/reject", json={"comment": "no"})
        thread.join(15)
        total = len(api.get("/api/audit").json()["items"])
        assert total >= 3
        for bad in ("0", "-1", "x", "1.5", ""):
            r = api.get("/api/audit", params={"limit": bad})
            assert r.status_code == 400, (bad, r.text)
            assert r.json()["error"] == "bad_request"
        assert api.get("/api/audit", params={"after": "-5"}).status_code == 400
        page = api.get("/api/audit", params={"limit": "1"}).json()
        assert len(page["items"]) == 1 and page["next_after"] == page["items"][0]["seq"]
        capped = api.get("/api/audit", params={"limit": str(10**9)})
        assert capped.status_code == 200 and len(capped.json()["items"]) == total


def test_review_api_errors_are_flat_json_not_500(hitl: Hitl) -> None:
    with hitl.api() as api:
        assert api.get("/api/requests/nope").json() == {"error": "not_found",
                                                        "message": "no held request nope"}
        r = api.post("/api/requests/nope/approve", content=b"{not json")
        assert r.status_code == 400 and r.json()["error"] == "bad_request"
        assert api.delete("/api/grants/nope").status_code == 404
    r = httpx.get(hitl.review_url + "/api/requests", trust_env=False)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"


def test_an_edited_binary_body_shows_its_size_on_the_detail_page_and_is_forwarded(
        hitl: Hitl, upstream: Upstream) -> None:
    binary = bytes([0, 0xFF, 0xFE, 1, 2, 0x80, 0xC3])  # not UTF-8
    thread, box, rid = _hold(hitl, upstream, "/hold/upload")
    with hitl.api() as api:
        r = api.post(f"/api/requests/{rid}/approve",
                     json={"edit": {"body_base64": base64.b64encode(binary).decode()}})
        assert r.status_code == 200, r.text
        edit = r.json()["edit"]
        assert edit["body_text"] is None and edit["body_size"] == len(binary)
    thread.join(15)
    assert box["result"].status_code == 200
    assert [x.body for x in upstream.received if x.path.startswith("/hold")] == [binary]
    with httpx.Client(base_url=hitl.review_url, trust_env=False, timeout=30) as web:
        assert web.get(f"/login?token={hitl.admin_token}").status_code in (200, 303)
        page = web.get(f"/requests/{rid}")
        assert page.status_code == 200
        assert "No body." not in page.text
        assert f"{len(binary)} bytes of binary data (not shown)" in page.text
