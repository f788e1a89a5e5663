"""`serve --role proxy` and `serve --role review` as two processes over one store: a decision
made in the review process reaches the agent waiting in the proxy process."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import HITL, Upstream, write_config


def start_role(config: Path, role: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([HITL, "serve", "-c", str(config), "--role", role], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=config.parent, env=os.environ.copy())
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if m := re.search(rf"{role} listening on (http://\S+)", line):
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, m.group(1)
        if not line:
            break
    proc.kill()
    raise AssertionError(f"--role {role} did not start")


def test_proxy_and_review_roles_share_the_store(tmp_path: Path, upstream: Upstream) -> None:
    config = write_config(tmp_path, {"hold.client_wait": "20s"})
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
        with httpx.Client(base_url=review_url, headers={"Authorization": f"Bearer {token}"},
                          trust_env=False, timeout=10) as api:
            deadline = time.monotonic() + 15
            items: list[dict[str, str]] = []
            while not items and time.monotonic() < deadline:
                items = api.get("/api/requests", params={"status": "pending"}).json()["items"]
                time.sleep(0.1)
            assert items, "the hold made by the proxy process is not visible to the review process"
            assert api.post(f"/api/requests/{items[0]['id']}/approve", json={}).status_code == 200
        thread.join(20)
        assert box["r"].status_code == 200
        assert upstream.count("/hold/split") == 1
    finally:
        for proc in (proxy, review):
            proc.terminate()
            proc.wait(10)
