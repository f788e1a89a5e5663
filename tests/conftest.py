"""Real parts for the tests: an upstream HTTP server that records what it receives, and
hitl-proxy itself — in a thread of this process (``hitl``) or as a ``hitl-proxy serve``
subprocess (``serve_process``) — both on 127.0.0.1 ephemeral ports."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml

from tests.loopback import LoopbackServer, answer, headers_of, read_body

ROOT = Path(__file__).resolve().parent.parent
HITL = str(Path(sys.executable).parent / "hitl-proxy")

# The policy most tests use: hold POSTs under /hold, deny under /deny, allow the rest.
TEST_POLICY = r'''
package hitl

import rego.v1

default decision := {"action": "allow", "rule": "default"}

decision := {
	"action": "hold",
	"message": sprintf("%s wants to %s %s", [input.agent.id, input.request.method, input.request.path]),
	"rule": "test.hold",
	"grantable": true,
	"reviewers": object.get(input.request.query, "reviewers", []),
	"approvals": to_number(object.get(input.request.query, "approvals", ["1"])[0]),
} if {
	startswith(input.request.path, "/hold")
}

decision := {"action": "hold", "message": "short deadline", "rule": "test.short", "timeout": "1s"} if {
	startswith(input.request.path, "/timeout-deny")
}

decision := {"action": "hold", "message": "short, allow on timeout", "rule": "test.short_allow",
	"timeout": "1s", "on_timeout": "allow"} if {
	startswith(input.request.path, "/timeout-allow")
}

decision := {"action": "deny", "message": "deletes are not allowed", "rule": "test.deny"} if {
	startswith(input.request.path, "/deny")
}

decision := {"action": "nonsense"} if startswith(input.request.path, "/broken")
'''


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Upstream(LoopbackServer):
    """A real HTTP server on 127.0.0.1 that records every request it gets. Query flags:
    ``stall=S`` holds the answer until the test releases it (or S seconds), ``status=N``,
    ``size=N`` answers N bytes of ``x``."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        super().__init__()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = read_body(request)
        with self.lock:
            self.received.append(Received(request.command, request.path, headers_of(request), body))
            n = len(self.received)
        query = parse_qs(urlsplit(request.path).query)
        if "stall" in query:
            self.release.wait(float(query["stall"][0]))
        payload = json.dumps({"ok": True, "n": n, "method": request.command, "path": request.path,
                              "body": body.decode("utf-8", "replace")}).encode()
        if "size" in query:
            payload = b"x" * int(query["size"][0])
        answer(request, int(query.get("status", ["200"])[0]), payload,
               headers={"X-HITL-Approved-By": "forged-by-upstream", "X-Upstream": "yes"})

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, path_prefix: str = "") -> int:
        with self.lock:
            return sum(1 for r in self.received if r.path.startswith(path_prefix))


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


def write_config(tmp_path: Path, overrides: dict[str, Any] | None = None,
                 policy: str = TEST_POLICY) -> Path:
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "test.rego").write_text(policy)
    config: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "proxy": {"listen": "127.0.0.1:0", "allow_networks": ["127.0.0.0/8"],
                  "ca_dir": str(tmp_path / "data" / "ca"), "upstream_timeout": "10s"},
        "review": {"listen": "127.0.0.1:0"},
        "policy": {"paths": [str(policies)]},
        "store": {"url": f"sqlite:///{tmp_path / 'data' / 'hitl.db'}"},
        "hold": {"client_wait": "10s"},
        "log": {"format": "text", "level": "warning"},
    }
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        if name:
            config.setdefault(section, {})[name] = value
        else:
            config[section] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Hitl:
    """A running hitl-proxy (in-process, its own event loop thread)."""

    runtime: Any
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    config_path: Path
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def proxy_url(self) -> str:
        host, port = self.runtime.proxy_address
        return f"http://{host}:{port}"

    @property
    def review_url(self) -> str:
        host, port = self.runtime.review_address
        return f"http://{host}:{port}"

    @property
    def admin_token(self) -> str:
        return self.runtime.admin_token

    def api(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.review_url, trust_env=False, timeout=30,
                            headers={"Authorization": f"Bearer {token or self.admin_token}"})

    def agent(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(proxy=self.proxy_url, trust_env=False, timeout=30, **kwargs)

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def wait_pending(self, count: int = 1, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.api() as api:
            while time.monotonic() < deadline:
                items = api.get("/api/requests", params={"status": "pending"}).json()["items"]
                if len(items) >= count:
                    return items
                time.sleep(0.05)
        raise AssertionError(f"expected {count} pending requests within {timeout}s")

    def stop(self) -> None:
        self.call(self.runtime.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def start_hitl(config_path: Path) -> Hitl:
    from proxy.cli.runtime import Runtime, event_loop_factory
    from proxy.config import load_settings

    settings = load_settings(config_path, {})
    # The loop `serve` runs on (uvloop when installed): what the tests prove is what runs.
    loop = event_loop_factory()()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runtime = Runtime(settings)
    asyncio.run_coroutine_threadsafe(runtime.start(), loop).result(30)
    return Hitl(runtime, loop, thread, config_path)


@pytest.fixture
def make_hitl(tmp_path: Path) -> Iterator[Callable[..., Hitl]]:
    started: list[Hitl] = []

    def make(overrides: dict[str, Any] | None = None, policy: str = TEST_POLICY,
             directory: Path | None = None) -> Hitl:
        hitl = start_hitl(write_config(directory or tmp_path, overrides, policy))
        started.append(hitl)
        return hitl

    yield make
    for hitl in started:
        hitl.stop()


@pytest.fixture
def hitl(make_hitl: Callable[..., Hitl]) -> Hitl:
    return make_hitl()


@dataclass
class ServeProcess:
    proc: subprocess.Popen[str]
    proxy_url: str
    review_url: str
    lines: list[str]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def run_serve(config_path: Path, *extra: str, env: dict[str, str] | None = None,
              timeout: float = 30, wrapper: tuple[str, ...] = ()) -> ServeProcess:
    """Start `hitl-proxy serve` (under ``wrapper``, e.g. prlimit) and wait for its ready lines
    and /healthz."""
    proc = subprocess.Popen([*wrapper, HITL, "serve", "-c", str(config_path), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
                            cwd=config_path.parent)
    lines: list[str] = []
    proxy_url = review_url = ""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline and not (proxy_url and review_url):
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if m := re.search(r"proxy listening on (http://\S+)", line):
            proxy_url = m.group(1)
        if m := re.search(r"review listening on (http://\S+)", line):
            review_url = m.group(1)
    if not (proxy_url and review_url):
        proc.kill()
        raise AssertionError("serve did not become ready:\n" + "\n".join(lines))
    threading.Thread(target=lambda: [lines.append(x.rstrip()) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    while time.monotonic() < deadline:
        try:
            if httpx.get(review_url + "/healthz", trust_env=False).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    return ServeProcess(proc, proxy_url, review_url, lines)
