"""``make demo`` end to end, non-interactively: the gate, the loopback fakes and the scripted
agent run as the newcomer runs them; this test is the reviewer, deciding through the API, and
checks what the agent got and what the fakes received."""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
import time

import httpx

from tests.conftest import ROOT


def test_make_demo_shows_the_whole_loop_and_the_agent_completes() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "demo.run", "--duration", "150", "--no-keep-running",
                             "--proxy-listen", "127.0.0.1:0", "--review-listen", "127.0.0.1:0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    assert proc.stdout is not None
    out = proc.stdout

    def read() -> None:
        for line in out:
            lines.put(line.rstrip())

    threading.Thread(target=read, daemon=True).start()

    def until(pattern: str, timeout: float = 90) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, "\n".join(seen)
                continue
            seen.append(line)
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(seen))

    try:
        login = until(r"Open the review UI .*?(http://\S+/login\?token=(\S+))")
        review = login.group(1).split("/login")[0]
        token = login.group(2)
        for _ in range(4):
            until(r"HELD for a reviewer")
        with httpx.Client(base_url=review, trust_env=False, timeout=30,
                          headers={"Authorization": f"Bearer {token}"}) as api:
            held = {item["rule"]: item for item in api.get("/api/requests", params={"status": "pending"}).json()["items"]}
            assert len(held) == 4, held
            charge = next(i for r, i in held.items() if r.startswith("payments"))
            email = next(i for r, i in held.items() if r.startswith("email"))
            post = next(i for r, i in held.items() if r.startswith("posting"))
            sms = next(i for r, i in held.items() if r.startswith("mcp"))
            assert "send_sms" in sms["message"]
            assert "2500.00 USD" in charge["message"] and "ann@customer.example.org" in email["message"]
            assert api.post(f"/api/requests/{charge['id']}/approve", json={"comment": "expected"}).status_code == 200
            until(r"agent ← charge 2,500\.00 USD: APPROVED → 200 from the fake Stripe \(approved by admin\)")
            assert api.post(f"/api/requests/{email['id']}/reject",
                            json={"comment": "send it from the billing system"}).status_code == 200
            until(r"agent ← email a customer: REJECTED → 403: .*send it from the billing system")
            assert api.post(f"/api/requests/{post['id']}/approve", json={}).status_code == 200
            assert api.post(f"/api/requests/{sms['id']}/approve", json={}).status_code == 200
            until(r"agent ← MCP tool send_sms: APPROVED → 200 from the fake MCP server")
        until(r"summary: 5 allowed · 1 denied · 4 held \(3 approved, 1 rejected, 0 awaiting review\) — the agent is done")
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    rest = seen + list(lines.queue)
    text = "\n".join(rest)
    assert "agent ← DROP TABLE customers: DENIED → 403" in text
    assert "agent ← charge 25.00 USD: ALLOWED" in text
    assert "agent ← MCP tool search_tickets: ALLOWED" in text
    assert "first approved request answered" in text
    # what reached the fakes: the DROP and the rejected email never did
    assert "the fake SendGrid received: nothing" in text
    assert re.search(r"the fake SQL gateway received: POST /query$", text, re.MULTILINE)
    assert re.search(r"the fake MCP server received: POST /mcp, POST /mcp$", text, re.MULTILINE)
    stripe = re.search(r"the fake Stripe received: (.*)", text)
    assert stripe and stripe.group(1).count("POST /v1/charges") == 2
    assert "Traceback" not in text
