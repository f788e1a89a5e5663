"""Per-rule insights (GET /api/insights, the /insights page, the hitl_rule_* gauges) over a
history seeded into the real store of a running hitl-proxy, through the store's own
transitions with chosen clock values, and compared with a count made by hand."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from proxy.model import AgentRequest, HoldStatus, OnTimeout
from proxy.store.records import HoldRecord, new_id
from tests.conftest import Hitl
from tests.test_metrics import by_labels, scrape

DAY = 86400.0


def seed(hitl: Hitl, rule: str, created: float, *, wait: float | None = None, verdict: str = "approve",
         expire: bool = False, grantable: bool = False, path: str = "/v1/charges") -> str:
    """One hold of ``rule`` made at ``created``: decided ``wait`` seconds later, or expired, or
    left pending."""
    store = hitl.runtime.store
    now = time.time()
    req = AgentRequest("POST", "https", "api.example.com", 443, path, (("content-type", "application/json"),),
                       b'{"amount": 1}')
    rid = new_id(created)
    rec = HoldRecord(id=rid, status=HoldStatus.PENDING, fingerprint=rid, agent="billing-agent",
                     agent_address="127.0.0.1", request=req, message=f"{rule} hold", rule=rule, reviewers=(),
                     approvals_needed=1, grantable=grantable, on_timeout=OnTimeout.DENY, created_at=created,
                     deadline=created + 1 if expire else now + 3600, updated_at=created)
    hitl.call(store.create(rec))
    if expire:
        hitl.call(store.expire_due(now, 600))
    elif wait is not None:
        comment = "" if verdict == "approve" else "no"
        hitl.call(store.decide(rid, "alice", verdict, comment, created + wait))
    return rid


def seeded_history(hitl: Hitl) -> None:
    now = time.time()
    # payments.small: 20 holds; 19 approved after 1..19 s, 1 rejected after 30 s.
    for i in range(19):
        seed(hitl, "payments.small", now - 5 * DAY + i * 60, wait=i + 1)
    seed(hitl, "payments.small", now - 4 * DAY, wait=30, verdict="reject")
    # email.external: 11 holds; 1 pending, 3 expired, 5 approved (1..5 min), 2 rejected (10, 15 min).
    seed(hitl, "email.external", now - 1800)
    for i in range(3):
        seed(hitl, "email.external", now - 2 * DAY + i, expire=True)
    for i in range(5):
        seed(hitl, "email.external", now - 3 * DAY + i * 600, wait=60 * (i + 1))
    seed(hitl, "email.external", now - DAY, wait=600, verdict="reject")
    seed(hitl, "email.external", now - DAY + 5, wait=900, verdict="reject")
    # tickets.close: 12 holds, all approved within 2 s; grantable already.
    for i in range(12):
        seed(hitl, "tickets.close", now - 6 * DAY + i * 30, wait=2, grantable=True, path="/tickets/close")
    # Older than a week: counts in a 30-day window only.
    seed(hitl, "payments.small", now - 8 * DAY, wait=3)


def rules_by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["rule"]: r for r in data["rules"]}


def test_insights_over_a_seeded_history_match_a_hand_count(make_hitl: Callable[..., Hitl]) -> None:
    hitl = make_hitl()
    seeded_history(hitl)
    with hitl.api() as api:
        r = api.get("/api/insights", params={"window": "7d"})
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["window"] == "7d" and data["quick_seconds"] == 5
        rules = rules_by_name(data)
        assert [x["rule"] for x in data["rules"]] == ["payments.small", "tickets.close", "email.external"]

        small = rules["payments.small"]
        assert (small["holds"], small["pending"], small["approved"], small["rejected"], small["expired"]) == \
            (20, 0, 19, 1, 0)
        assert small["approve_rate"] == 0.95 and small["reject_rate"] == 0.05 and small["expire_rate"] == 0
        assert small["median_seconds"] == 10.5 and small["p90_seconds"] == 18  # waits 1..19 and 30
        assert small["quick"] == 5  # 1, 2, 3, 4, 5 s

        email = rules["email.external"]
        assert (email["holds"], email["pending"], email["approved"], email["rejected"], email["expired"]) == \
            (11, 1, 5, 2, 3)
        assert email["expire_rate"] == 0.3 and email["approve_rate"] == 0.5
        assert email["median_seconds"] == 240 and email["p90_seconds"] == 900 and email["quick"] == 0

        tickets = rules["tickets.close"]
        assert (tickets["holds"], tickets["approved"], tickets["quick"], tickets["grantable"]) == (12, 12, 12, True)
        assert tickets["median_seconds"] == 2

        assert data["suggestions"] == [
            "payments.small: 20 holds, 95% approved, median 10 s: raise the threshold or make it grantable",
            "tickets.close: 12 holds, 100% approved, median 2 s: narrow the rule or allow these requests",
            ("tickets.close: 12 of 12 decisions took 5 s or less: reviewers may be approving without "
            "reading (rubber-stamping)"),
            "email.external: 30% expired: too few eligible reviewers (or a deadline too short for them)",
        ]
        month = rules_by_name(api.get("/api/insights", params={"window": "30d"}).json())
        assert month["payments.small"]["holds"] == 21 and month["payments.small"]["quick"] == 6
        assert api.get("/api/insights", params={"window": "1h"}).json()["rules"][0]["holds"] == 1  # the pending one
        for bad in ("soon", "0s", "400d"):
            r = api.get("/api/insights", params={"window": bad})
            assert r.status_code == 400 and r.json()["error"] == "bad_request", bad

    with httpx.Client(base_url=hitl.review_url, trust_env=False, timeout=30) as web:
        assert web.get("/insights").status_code == 303  # a login first
        assert web.get("/api/insights").status_code == 401
        assert web.get(f"/login?token={hitl.admin_token}").status_code == 303
        page = web.get("/insights")
        assert page.status_code == 200
        assert "email.external: 30% expired: too few eligible reviewers" in page.text
        assert '<tr data-rule="payments.small">' in page.text and "95.0%" in page.text

    m = scrape(hitl)  # the same numbers as gauges, for Grafana (a 7-day window)
    assert by_labels(m, "hitl_rule_holds") == {(("rule", "payments.small"),): 20,
                                               (("rule", "email.external"),): 11,
                                               (("rule", "tickets.close"),): 12}
    ratio = by_labels(m, "hitl_rule_outcome_ratio")
    assert ratio[(("outcome", "expired"), ("rule", "email.external"))] == 0.3
    assert ratio[(("outcome", "approved"), ("rule", "payments.small"))] == 0.95
    seconds = by_labels(m, "hitl_rule_decision_seconds")
    assert seconds[(("quantile", "0.5"), ("rule", "payments.small"))] == 10.5
    assert seconds[(("quantile", "0.9"), ("rule", "email.external"))] == 900
    assert by_labels(m, "hitl_rule_quick_decisions")[(("rule", "tickets.close"),)] == 12
