"""The compose demo's "agent": a loop of requests through HTTP_PROXY, as an AI agent's tools
would make them. A read passes, a delete is refused, a charge waits for your approval in the
review UI (http://127.0.0.1:8081); the agent retries until it is decided. Stdlib only."""

import json
import os
import ssl
import time
import urllib.error
import urllib.request

UPSTREAM = os.environ.get("DEMO_UPSTREAM", "http://demo-upstream:8000")
CA_FILE = os.environ.get("HITL_CA_FILE")

# For HTTPS the agent trusts the proxy's CA on top of the system's (for tunnelled hosts).
context = ssl.create_default_context()
if CA_FILE and os.path.exists(CA_FILE):
    context.load_verify_locations(CA_FILE)
opener = urllib.request.build_opener(urllib.request.ProxyHandler(),  # reads HTTP(S)_PROXY
                                     urllib.request.HTTPSHandler(context=context))


def call(method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(UPSTREAM + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with opener.open(req, timeout=70) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def main() -> None:
    for n in range(1, 1000):
        print("read  ->", *call("GET", f"/v1/balance?n={n}"), flush=True)
        print("delete->", *call("DELETE", f"/v1/customers/{n}"), flush=True)
        charge = {"amount": 500 * n, "currency": "usd", "customer": f"cus_{n}"}
        for _ in range(60):  # an approval can take a while: retry the same request
            status, reply = call("POST", "/v1/charges", charge)
            print("charge->", status, reply, flush=True)
            error = reply.get("error")
            if not (isinstance(error, dict) and error.get("code") == "approval_pending"):
                break
        time.sleep(30)


if __name__ == "__main__":
    main()
