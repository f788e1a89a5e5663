"""`hitl-proxy serve` runs on uvloop when it is installed (the [fast] extra) and on asyncio's
loop otherwise (or with HITL_EVENT_LOOP=asyncio); the proxy forwards the same on both."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

from proxy.cli.runtime import event_loop_factory, run
from tests.conftest import Upstream, run_serve, write_config


def loop_class(monkeypatch: pytest.MonkeyPatch, choice: str | None) -> str:
    if choice is None:
        monkeypatch.delenv("HITL_EVENT_LOOP", raising=False)
    else:
        monkeypatch.setenv("HITL_EVENT_LOOP", choice)

    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    return str(run(which()))


def test_uvloop_is_the_loop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")
    assert loop_class(monkeypatch, None).startswith("uvloop")


def test_asyncio_loop_on_request_or_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    assert loop_class(monkeypatch, "asyncio").startswith("asyncio")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed: the import fails
    assert event_loop_factory() is asyncio.new_event_loop
    assert loop_class(monkeypatch, None).startswith("asyncio")


@pytest.mark.parametrize("choice", ["", "asyncio"])
def test_serve_forwards_on_either_loop(tmp_path: Path, upstream: Upstream, choice: str) -> None:
    served = run_serve(write_config(tmp_path), env={"HITL_EVENT_LOOP": choice})
    try:
        with httpx.Client(proxy=served.proxy_url, trust_env=False, timeout=10) as agent:
            answers = [agent.get(upstream.url(f"/loop/{i}")) for i in range(3)]
        assert [r.status_code for r in answers] == [200, 200, 200]
        assert [r.path for r in upstream.received] == ["/loop/0", "/loop/1", "/loop/2"]
    finally:
        assert served.stop() == 0
