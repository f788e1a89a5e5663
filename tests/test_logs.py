"""Structured logs: one JSON access line per request, one line per decision, no secrets."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import httpx
import pytest

from proxy.config import LogSettings
from proxy.logs import Access, JsonFormatter, setup_logging
from tests.conftest import Upstream, run_serve, write_config

SECRETS = ("sk_live_AUTHZ_1234", "KEY_X_API_5678", "BODY_SECRET_9999", "QUERY_SECRET_4242", "PXY_PASS_777")


def test_json_logs_carry_every_request_and_decision_and_no_secret(tmp_path: Path, upstream: Upstream) -> None:
    config = write_config(tmp_path, {"log": {"format": "json", "level": "info"}, "hold.client_wait": "1s"})
    proc = run_serve(config)
    try:
        headers = {"Authorization": f"Bearer {SECRETS[0]}", "X-Api-Key": SECRETS[1]}
        body = json.dumps({"password": SECRETS[2]}).encode()
        with httpx.Client(proxy=proc.proxy_url, trust_env=False, timeout=30) as agent:
            assert agent.post(upstream.url(f"/notes?api_key={SECRETS[3]}"), headers=headers,
                              content=body).status_code == 200
            assert agent.delete(upstream.url("/deny/1"), headers=headers).status_code == 403
            held = agent.post(upstream.url("/hold/pay"), headers=headers, content=body)
            assert held.status_code == 503
        admin = next(line.split("token=")[1] for line in proc.lines if "token=" in line)
        with httpx.Client(base_url=proc.review_url, trust_env=False,
                          headers={"Authorization": f"Bearer {admin}"}) as api:
            rid = held.json()["error"]["request_id"]
            assert api.post(f"/api/requests/{rid}/approve", json={}).status_code == 200
        # a proxy credential of an unknown agent: refused, and the password is not logged
        with httpx.Client(proxy=f"http://bot:{SECRETS[4]}@{proc.proxy_url[7:]}", trust_env=False) as agent:
            assert agent.get(upstream.url("/items")).status_code == 407
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum('"hitl.access"' in x for x in proc.lines) < 4:
            time.sleep(0.05)
    finally:
        proc.stop()
    records = []
    for line in proc.lines:
        if line.startswith("hitl-proxy: "):  # the ready / login / shutdown lines, printed for people
            continue
        records.append(json.loads(line))  # everything else is one JSON object per line
    output = "\n".join(proc.lines)
    for secret in SECRETS:
        assert secret not in output
    access = [r for r in records if r["logger"] == "hitl.access"]
    assert [(r["method"], r["path"], r["status"], r["action"], r["rule"]) for r in access] == [
        ("POST", "/notes", 200, "allow", "default"),
        ("DELETE", "/deny/1", 403, "deny", "test.deny"),
        ("POST", "/hold/pay", 503, "hold", "test.hold"),
        ("GET", "/items", 407, None, None),
    ]
    for r in access[:3]:
        assert r["host"] == f"127.0.0.1:{upstream.port}" and r["agent"] == "anonymous"
    for r in access:
        assert r["request_id"] and r["level"] == "info" and r["latency_ms"] >= 0
    assert access[1]["error"] == "denied_by_policy" and access[3]["error"] == "proxy_auth_required"
    assert access[2]["request_id"] == rid == held.headers["x-hitl-request-id"]
    [decision] = [r for r in records if r["logger"] == "hitl.decision"]
    assert decision["request_id"] == rid and decision["outcome"] == "approved"
    assert decision["actor"] == "admin" and decision["rule"] == "test.hold"


def test_level_warning_drops_access_lines(tmp_path: Path, upstream: Upstream) -> None:
    config = write_config(tmp_path, {"log": {"format": "json", "level": "warning"}})
    proc = run_serve(config)
    try:
        with httpx.Client(proxy=proc.proxy_url, trust_env=False) as agent:
            assert agent.get(upstream.url("/items")).status_code == 200
    finally:
        proc.stop()
    assert not any("hitl.access" in line for line in proc.lines)


def test_text_format_is_one_readable_line(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(LogSettings(level="info", format="text"))
        access = Access("10.0.0.7")
        access.request("GET", "http://api.example.com/v1/x?token=abc")
        access.agent, access.action, access.rule, access.status = "bot", "allow", "default", 200
        access.finish("r1")
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert "hitl.access: bot GET api.example.com/v1/x -> 200 allow/default" in err
    assert "token" not in err and not err.lstrip().startswith("{")


@pytest.mark.parametrize(("method", "target", "host", "path"), [
    ("GET", "http://h.example/a/b?k=v", "h.example", "/a/b"),
    ("GET", "http://h.example", "h.example", "/"),
    ("GET", "http://user:pw@h.example:8080/p?q", "h.example:8080", "/p"),
    ("POST", "/stripe/v1/charges?key=x", None, "/stripe/v1/charges"),
    ("CONNECT", "api.example.com:443", "api.example.com:443", None),
])
def test_access_line_keeps_no_query_or_userinfo(method: str, target: str, host: str | None,
                                                path: str | None) -> None:
    access = Access("127.0.0.1")
    access.request(method, target)
    access.finish("r")
    assert (access.host, access.path) == (host, path)


def test_json_formatter_keeps_extra_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("hitl.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("hello %s", "world", extra={"request_id": "r1", "status": 403})
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert line["msg"] == "hello world" and line["request_id"] == "r1" and line["status"] == 403
    assert line["level"] == "warning" and line["logger"] == "hitl.test-json" and line["ts"].endswith("+00:00")
