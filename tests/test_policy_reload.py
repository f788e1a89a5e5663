"""Hot reload of the embedded policy: a live server's decisions follow the policy files
within seconds, a broken edit keeps the previous policy (logged, counted, audited, shown in
the review UI), and SIGHUP reloads at once."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import TEST_POLICY, Hitl, Upstream, run_serve, write_config

# The test policy without its /hold and /deny rules: both paths become allowed.
RELAXED = TEST_POLICY.replace('startswith(input.request.path, "/hold")',
                              'startswith(input.request.path, "/never-hold")')
RELAXED = RELAXED.replace('startswith(input.request.path, "/deny")',
                          'startswith(input.request.path, "/never-deny")')
BROKEN = TEST_POLICY + "\ndecision := {\"action\": \"allow\" if {\n"


def status_of(proxy_url: str, url: str) -> int:
    with httpx.Client(proxy=proxy_url, trust_env=False, timeout=10) as agent:
        return agent.post(url, content=b"x").status_code


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def reload_count(hitl: Hitl, result: str) -> float:
    text = httpx.get(hitl.review_url + "/metrics", trust_env=False, timeout=10).text
    m = re.search(rf'^hitl_policy_reloads_total\{{result="{result}"\}} (\S+)$', text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def test_a_policy_edit_changes_the_live_decision_and_a_broken_one_keeps_it(
        make_hitl: Callable[..., Hitl], upstream: Upstream, tmp_path: Path) -> None:
    hitl = make_hitl()
    policy_file = tmp_path / "policies" / "test.rego"
    gate = hitl.runtime.gate
    assert status_of(hitl.proxy_url, upstream.url("/deny/x")) == 403

    policy_file.write_text(RELAXED)
    assert wait_for(lambda: status_of(hitl.proxy_url, upstream.url("/deny/x")) == 200)
    assert status_of(hitl.proxy_url, upstream.url("/hold/x")) == 200  # no longer held
    assert gate.policy_error is None
    assert reload_count(hitl, "ok") == 1

    policy_file.write_text(BROKEN)
    assert wait_for(lambda: gate.policy_error is not None)
    error = gate.policy_error
    assert re.search(r"test\.rego:\d+", error), error  # the file and the line
    assert status_of(hitl.proxy_url, upstream.url("/deny/x")) == 200  # the previous policy stays
    assert reload_count(hitl, "error") == 1
    assert reload_count(hitl, "ok") == 1

    with hitl.api() as api:
        audit = api.get("/api/audit", params={"limit": 100}).json()["items"]
    reloads = [r for r in audit if r["event"] == "policy_reload"]
    assert [r["detail"]["result"] for r in reloads] == ["ok", "error"]
    assert reloads[1]["detail"]["error"] == error
    assert reloads[1]["actor"] == "system"

    # The review UI shows the failed reload on its pages.
    with httpx.Client(base_url=hitl.review_url, trust_env=False, timeout=10,
                      follow_redirects=True) as browser:
        page = browser.get("/login", params={"token": hitl.admin_token})
        assert page.status_code == 200
        assert 'class="policy-banner"' in page.text
        assert "test.rego" in page.text
        assert "<script>" not in page.text.split('class="policy-banner"')[1].split("</div>")[0]

    # Fixing the file clears the error and the banner.
    policy_file.write_text(TEST_POLICY)
    assert wait_for(lambda: gate.policy_error is None)
    assert status_of(hitl.proxy_url, upstream.url("/deny/x")) == 403
    with httpx.Client(base_url=hitl.review_url, trust_env=False, timeout=10,
                      follow_redirects=True) as browser:
        page = browser.get("/login", params={"token": hitl.admin_token})
        assert "policy-banner" not in page.text


def test_a_data_file_change_is_reloaded(make_hitl: Callable[..., Hitl], upstream: Upstream,
                                        tmp_path: Path) -> None:
    policy = TEST_POLICY + '\ndecision := {"action": "deny", "rule": "data"} if ' \
        'startswith(input.request.path, data.blocked)\n'
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "data.json").write_text('{"blocked": "/blocked"}')
    hitl = make_hitl(policy=policy)
    assert status_of(hitl.proxy_url, upstream.url("/blocked")) == 403
    (tmp_path / "policies" / "data.json").write_text('{"blocked": "/elsewhere"}')
    assert wait_for(lambda: status_of(hitl.proxy_url, upstream.url("/blocked")) == 200)
    (tmp_path / "policies" / "data.json").write_text('{"blocked": ')
    assert wait_for(lambda: hitl.runtime.gate.policy_error is not None)
    assert "data.json:1" in hitl.runtime.gate.policy_error
    assert status_of(hitl.proxy_url, upstream.url("/blocked")) == 200


def test_sighup_reloads_the_policy_of_a_running_serve(tmp_path: Path, upstream: Upstream) -> None:
    config = write_config(tmp_path)
    serve = run_serve(config)
    try:
        assert status_of(serve.proxy_url, upstream.url("/deny/x")) == 403
        (tmp_path / "policies" / "test.rego").write_text(RELAXED)
        serve.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: status_of(serve.proxy_url, upstream.url("/deny/x")) == 200)
        assert serve.proc.poll() is None  # SIGHUP reloads; it does not end the process
        # The watcher may have seen the edit first; the SIGHUP reload is audited either way.
        token = next(m.group(1) for line in serve.lines
                     if (m := re.search(r"login\?token=(\S+)", line)))
        with httpx.Client(base_url=serve.review_url, trust_env=False, timeout=10,
                          headers={"Authorization": f"Bearer {token}"}) as api:
            def sighup_audited() -> bool:
                items = api.get("/api/audit", params={"limit": 100}).json()["items"]
                return any(r["event"] == "policy_reload" and r["detail"]["reason"] == "SIGHUP"
                           and r["detail"]["result"] == "ok" for r in items)
            assert wait_for(sighup_audited)
    finally:
        assert serve.stop() == 0
