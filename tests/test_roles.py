"""`serve --role proxy` and `serve --role review` as two processes over one store: a decision
made in the review process reaches the agent waiting in the proxy process."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import HITL, Upstream, write_config


def start_role(config: Path, role: str, *also: str) -> tuple[Any, ...]:
    """Start ``serve --role ROLE``; the URL of ROLE's listener, then those named in ``also``."""
    proc = subprocess.Popen([HITL, "serve", "-c", str(config), "--role", role], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=config.parent, env=os.environ.copy())
    assert proc.stdout is not None
    wanted = (role, *also)
    urls: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        for name in wanted:
            if m := re.search(rf"{name} listening on (http://\S+)", line):
                urls[name] = m.group(1)
        if len(urls) == len(wanted):
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return (proc, *(urls[name] for name in wanted))
        if not line:
            break
    proc.kill()
    raise AssertionError(f"--role {role} did not start")


def test_a_proxy_role_process_serves_its_own_health_and_metrics_and_nothing_else(
        tmp_path: Path, upstream: Upstream) -> None:
    config = write_config(tmp_path)
    proxy, proxy_url, ops_url = start_role(config, "proxy", "health and metrics")
    try:
        with httpx.Client(proxy=proxy_url, trust_env=False, timeout=10) as client:
            assert client.get(upstream.url("/counted")).status_code == 200
        with httpx.Client(base_url=ops_url, trust_env=False, timeout=10) as ops:
            assert ops.get("/healthz").json() == {"status": "ok"}
            assert ops.get("/readyz").status_code == 200
            assert 'hitl_requests_total{action="allow",rule="default"} 1.0' in ops.get("/metrics").text
            # No review here: the API and the UI live in the --role review process.
            assert ops.get("/api/requests").status_code == 404
            assert ops.get("/").status_code == 404
        assert not (tmp_path / "data" / "admin-token").exists()
    finally:
        proxy.terminate()
        proxy.wait(10)


def roles_share_the_store(tmp_path: Path, upstream: Upstream, overrides: dict[str, Any] | None = None) -> None:
    """A hold made in the proxy process, approved in the review process, forwarded once."""
    config = write_config(tmp_path, {"hold.client_wait": "20s", **(overrides or {})})
    review, review_url = start_role(config, "review")
    proxy, proxy_url = start_role(config, "proxy")
    try:
        token = (tmp_path / "data" / "admin-token").read_text().strip()
        box: dict[str, httpx.Response] = {}

        def agent() -> None:
            with httpx.Client(proxy=proxy_url, trust_env=False, timeout=30) as client:
                box["r"] = client.post(upstream.url("/hold/split"), content=b"x")

        thread = threading.Thread(target=agent)
        thread.start()
        approve_first_pending(review_url, token)
        thread.join(30)
        assert box["r"].status_code == 200
        assert upstream.count("/hold/split") == 1
    finally:
        for proc in (proxy, review):
            proc.terminate()
            proc.wait(10)


def approve_first_pending(review_url: str, token: str) -> str:
    with httpx.Client(base_url=review_url, headers={"Authorization": f"Bearer {token}"},
                      trust_env=False, timeout=10) as api:
        deadline = time.monotonic() + 15
        items: list[dict[str, str]] = []
        while not items and time.monotonic() < deadline:
            items = api.get("/api/requests", params={"status": "pending"}).json()["items"]
            time.sleep(0.05)
        assert items, "the hold made by the proxy process is not visible to the review process"
        assert api.post(f"/api/requests/{items[0]['id']}/approve", json={"comment": "ok"}).status_code == 200
        return items[0]["id"]


def test_proxy_and_review_roles_share_the_store(tmp_path: Path, upstream: Upstream) -> None:
    roles_share_the_store(tmp_path, upstream)
