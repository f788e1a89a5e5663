"""Prometheus metrics and health endpoints, scraped over real sockets after a
scripted mix of allow / deny / error / hold / approve / grant / reject / expire traffic."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Hitl, Upstream, start_hitl, write_config

Samples = dict[str, dict[frozenset[tuple[str, str]], float]]


def scrape(hitl: Hitl) -> Samples:
    """Every sample of GET /metrics (no login), by sample name, then label set."""
    r = httpx.get(hitl.review_url + "/metrics", trust_env=False, timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


def by_labels(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(labels)): value for labels, value in samples.get(name, {}).items()}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name][frozenset(labels.items())]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


def scripted_traffic(hitl: Hitl, upstream: Upstream) -> dict[str, str]:
    """The mix; client_wait is 1s, so a held request answers 503 approval_pending and the
    reviewers act afterwards. Returns the request ids by name."""
    ids: dict[str, str] = {}
    with hitl.agent() as agent, hitl.api() as api:
        assert agent.get(upstream.url("/items")).status_code == 200  # allow
        r = agent.get(f"http://127.0.0.1:{closed_port()}/x")  # allow, then the upstream fails
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
        assert agent.delete(upstream.url("/deny/1")).json()["error"]["code"] == "denied_by_policy"
        assert agent.get(upstream.url("/broken")).json()["error"]["code"] == "policy_error"
        for name in ("approve", "reject", "pending"):
            r = agent.post(upstream.url(f"/hold/{name}"), content=b'{"n": 1}')
            assert r.status_code == 503 and r.json()["error"]["code"] == "approval_pending", r.text
            ids[name] = r.json()["error"]["request_id"]
        r = api.post(f"/api/requests/{ids['approve']}/approve", json={"grant_minutes": 5})
        assert r.status_code == 200, r.text
        r = api.post(f"/api/requests/{ids['reject']}/reject", json={"comment": "no"})
        assert r.status_code == 200, r.text
        # a standing grant now covers POST /hold/approve: forwarded without a review item
        r = agent.post(upstream.url("/hold/approve"), content=b'{"n": 2}')
        assert r.status_code == 200 and "standing grant" in r.headers["x-hitl-approved-by"]
        r = agent.post(upstream.url("/timeout-deny"), content=b"x")  # 1s deadline, on_timeout deny
        assert r.json()["error"]["code"] in ("approval_pending", "approval_timed_out")
        ids["expire"] = r.json()["error"]["request_id"]
        wait_until(lambda: api.get(f"/api/requests/{ids['expire']}").json()["status"] == "expired")
    return ids


def test_counters_and_label_sets_after_scripted_traffic(make_hitl: Any, upstream: Upstream) -> None:
    hitl = make_hitl({"hold.client_wait": "1s"})
    scripted_traffic(hitl, upstream)
    m = scrape(hitl)

    assert by_labels(m, "hitl_requests_total") == {
        (("action", "allow"), ("rule", "default")): 2,
        (("action", "deny"), ("rule", "test.deny")): 1,
        (("action", "error"), ("rule", "policy_error")): 1,
        (("action", "hold"), ("rule", "test.hold")): 4,
        (("action", "hold"), ("rule", "test.short")): 1,
    }
    assert by_labels(m, "hitl_decisions_total") == {
        (("outcome", "approved"), ("rule", "test.hold")): 1,
        (("outcome", "rejected"), ("rule", "test.hold")): 1,
        (("outcome", "granted"), ("rule", "test.hold")): 1,
        (("outcome", "expired"), ("rule", "test.short")): 1,
    }
    # human decisions only (approve + reject); the deadline and the grant are not reviewers
    assert by_labels(m, "hitl_decision_seconds_count") == {(("rule", "test.hold"),): 2}
    assert value(m, "hitl_policy_eval_seconds_count") == 9
    assert value(m, "hitl_upstream_errors_total") == 1
    assert value(m, "hitl_upstream_seconds_count") == 2  # /items and the granted forward
    assert value(m, "hitl_pending_requests") == 1
    assert value(m, "hitl_oldest_pending_age_seconds") >= 0
    assert value(m, "hitl_grants_active") == 1
    assert value(m, "hitl_store_up") == 1
    assert value(m, "hitl_connections_total", kind="proxy") >= 1
    assert "hitl_notify_failures_total" not in m  # no webhook configured, no failure
    [(labels, one)] = m["hitl_build_info"].items()
    assert one == 1 and dict(labels)["version"]
    # buckets that fit: microseconds for the policy, seconds to a day for humans
    eval_buckets = {dict(k)["le"] for k in m["hitl_policy_eval_seconds_bucket"]}
    decision_buckets = {dict(k)["le"] for k in m["hitl_decision_seconds_bucket"]}
    assert "2.5e-05" in eval_buckets and "86400.0" in decision_buckets


def test_pending_gauge_is_read_from_the_store_across_a_restart(make_hitl: Any, upstream: Upstream,
                                                              tmp_path: Path) -> None:
    first = start_hitl(write_config(tmp_path, {"hold.client_wait": "0.3s"}))
    try:
        with first.agent() as agent:
            for n in range(3):
                assert agent.post(upstream.url(f"/hold/{n}"), content=b"x").status_code == 503
        with first.api() as api:
            rid = api.get("/api/requests", params={"status": "pending"}).json()["items"][0]["id"]
            assert api.post(f"/api/requests/{rid}/reject", json={"comment": "no"}).status_code == 200
        assert value(scrape(first), "hitl_pending_requests") == 2
    finally:
        first.stop()
    second = make_hitl({"hold.client_wait": "0.3s"}, directory=tmp_path)
    m = scrape(second)
    assert value(m, "hitl_pending_requests") == 2  # from the store, not from this process's counts
    assert value(m, "hitl_oldest_pending_age_seconds") > 0
    assert "hitl_requests_total" not in m  # counters are per process, as Prometheus expects


def test_readyz_turns_503_when_the_store_is_unreachable(hitl: Hitl, upstream: Upstream) -> None:
    base = hitl.review_url
    r = httpx.get(base + "/readyz", trust_env=False)
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "checks": {"store": True, "listeners": True}}
    store = hitl.runtime.store
    hitl.call(store._run(store.backend.close))  # the database goes away under the running proxy
    r = httpx.get(base + "/readyz", trust_env=False)
    assert r.status_code == 503
    assert r.json()["status"] == "unavailable" and r.json()["checks"]["store"] is False
    assert httpx.get(base + "/healthz", trust_env=False).json() == {"status": "ok"}  # the process is up
    assert value(scrape(hitl), "hitl_store_up") == 0  # the scrape still answers
    with hitl.agent() as agent:  # and the data plane fails closed
        r = agent.post(upstream.url("/hold/x"), content=b"x")
    assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
    assert upstream.count() == 0


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/readyz"])
def test_operational_endpoints_need_no_login(hitl: Hitl, path: str) -> None:
    assert httpx.get(hitl.review_url + path, trust_env=False).status_code == 200
