"""Attacks on the review side of a real hitl-proxy (issue 12): grants that
cross rules, a last approver who changes the bytes, bad header edits, self-approval, secret
leaks, huge held bodies, duplicate identity headers, one-time login links, guessable logins
and world-readable state. Agents and reviewers talk to it through real sockets; a recording
upstream shows what actually left."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.credentials import hash_secret
from tests.conftest import HITL, Hitl, Upstream, run_serve, write_config

# /pay: the amount in the JSON body picks the rule. Small payments: one reviewer, grantable.
# Large ones: two of group:finance, never grantable. /hold: reviewers and approvals from the
# query, grantable (as the shared test policy).
POLICY = r'''
package hitl

import rego.v1

default decision := {"action": "allow", "rule": "default"}

amount := input.request.body.amount if {
	is_number(input.request.body.amount)
} else := 0

decision := {"action": "hold", "rule": "pay.small", "grantable": true, "message": "small payment"} if {
	startswith(input.request.path, "/pay")
	amount <= 100
}

decision := {"action": "hold", "rule": "pay.large", "grantable": false, "approvals": 2,
	"reviewers": ["group:finance"], "message": "large payment"} if {
	startswith(input.request.path, "/pay")
	amount > 100
}

decision := {
	"action": "hold", "rule": "test.hold", "grantable": true, "message": "held",
	"reviewers": object.get(input.request.query, "reviewers", []),
	"approvals": to_number(object.get(input.request.query, "approvals", ["1"])[0]),
} if {
	startswith(input.request.path, "/hold")
}
'''

AGENT, AGENT_TOKEN = "billing-agent", "agent-token-1"
# Reviewer bearer tokens: name → (token, groups). "billing-agent" is a reviewer named like the agent.
REVIEWERS = {"alice": ("tok-alice", ["finance"]), "bob": ("tok-bob", ["finance"]),
             "carol": ("tok-carol", []), AGENT: ("tok-self", ["finance"])}


@pytest.fixture(scope="module")
def hashes() -> dict[str, str]:
    # argon2 is slow on purpose: hash the fixed secrets once per module.
    return {"agent": hash_secret(AGENT_TOKEN), "pw": hash_secret("pw"),
            **{name: hash_secret(tok) for name, (tok, _) in REVIEWERS.items()}}


def config(hashes: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "proxy.agents": [{"id": AGENT, "token_hash": hashes["agent"]}],
        "review.tokens": [{"name": n, "token_hash": hashes[n], "groups": g} for n, (_, g) in REVIEWERS.items()],
        "review.users": [{"name": "alice", "password_hash": hashes["pw"], "groups": ["finance"]}],
        "hold.client_wait": "0.3s",
        **extra,
    }


@pytest.fixture
def gate(make_hitl: Callable[..., Hitl], hashes: dict[str, str]) -> Hitl:
    return make_hitl(config(hashes), policy=POLICY)


def agent(h: Hitl) -> httpx.Client:
    host_port = h.proxy_url.removeprefix("http://")
    return httpx.Client(proxy=f"http://{AGENT}:{AGENT_TOKEN}@{host_port}", trust_env=False, timeout=30)


def reviewer(h: Hitl, name: str) -> httpx.Client:
    return h.api(REVIEWERS[name][0])


def held_id(r: httpx.Response) -> str:
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "approval_pending"
    return str(r.json()["error"]["request_id"])


def record(h: Hitl, rid: str) -> dict[str, Any]:
    with reviewer(h, "alice") as api:
        r = api.get(f"/api/requests/{rid}")
        assert r.status_code == 200, r.text
        return dict(r.json())


# -- item 2: a grant covers only its own scope ---------------------------------------------

def test_grant_on_a_small_payment_does_not_let_a_large_one_through(gate: Hitl, upstream: Upstream) -> None:
    with agent(gate) as ag:
        rid = held_id(ag.post(upstream.url("/pay"), json={"amount": 50}))
        with reviewer(gate, "carol") as api:
            r = api.post(f"/api/requests/{rid}/approve", json={"grant_minutes": 60})
            assert r.status_code == 200, r.text
        assert ag.post(upstream.url("/pay"), json={"amount": 50}).status_code == 200  # its own forward
        large = ag.post(upstream.url("/pay"), json={"amount": 5000})
        small = ag.post(upstream.url("/pay"), json={"amount": 60})
    held_id(large)  # held for group:finance x2, not waved through by carol's grant
    assert small.status_code == 200 and "standing grant" in small.headers["x-hitl-approved-by"]
    assert [json.loads(r.body)["amount"] for r in upstream.received] == [50, 60]


def test_grant_scope_is_port_rule_reviewers_and_approvals(gate: Hitl, upstream: Upstream) -> None:
    other = Upstream()  # same host and path, another port
    try:
        with agent(gate) as ag:
            rid = held_id(ag.post(upstream.url("/hold/x"), content=b"first"))
            with reviewer(gate, "carol") as api:
                assert api.post(f"/api/requests/{rid}/approve", json={"grant_minutes": 60}).status_code == 200
            assert ag.post(upstream.url("/hold/x"), content=b"first").status_code == 200
            other_port = ag.post(other.url("/hold/x"), content=b"other port")
            more_approvals = ag.post(upstream.url("/hold/x?approvals=2"), content=b"two approvals")
            finance_only = ag.post(upstream.url("/hold/x?reviewers=group:finance"), content=b"finance")
            other_method = ag.put(upstream.url("/hold/x"), content=b"put")
            covered = ag.post(upstream.url("/hold/x?reviewers=carol"), content=b"covered")
        for r in (other_port, more_approvals, finance_only, other_method):
            held_id(r)
        assert covered.status_code == 200, covered.text
        assert [r.body for r in upstream.received] == [b"first", b"covered"]
        assert other.received == []
    finally:
        other.close()


# -- item 3 and #16 bug 4: the quorum approves one content ---------------------------------

def test_an_edit_by_the_last_approver_restarts_the_count(gate: Hitl, upstream: Upstream) -> None:
    with agent(gate) as ag:
        rid = held_id(ag.post(upstream.url("/hold/q?approvals=2"), content=b"pay 10 to alice"))
        with reviewer(gate, "alice") as a, reviewer(gate, "bob") as b:
            assert a.post(f"/api/requests/{rid}/approve", json={}).status_code == 200
            r = b.post(f"/api/requests/{rid}/approve", json={"edit": {"body": "pay 9999 to mallory"}})
            assert r.status_code == 200, r.text
            after = r.json()
            assert after["status"] == "pending" and after["approvals"] == 1
            assert held_id(ag.post(upstream.url("/hold/q?approvals=2"), content=b"pay 10 to alice")) == rid
            assert upstream.received == []  # seen by one reviewer only: not sent
            r = a.post(f"/api/requests/{rid}/approve", json={"digest": after["digest"]})
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "approved"
        sent = ag.post(upstream.url("/hold/q?approvals=2"), content=b"pay 10 to alice")
    assert sent.status_code == 200
    assert [r.body for r in upstream.received] == [b"pay 9999 to mallory"]
    rec = record(gate, rid)
    digests = [d["digest"] for d in rec["decisions"]]
    assert digests[1] == digests[2] == after["digest"] != digests[0]


def test_approval_naming_a_stale_digest_is_409_and_changes_nothing(gate: Hitl, upstream: Upstream) -> None:
    with agent(gate) as ag:
        rid = held_id(ag.post(upstream.url("/hold/d?approvals=2"), content=b"original"))
        seen = record(gate, rid)["digest"]
        with reviewer(gate, "alice") as a, reviewer(gate, "bob") as b:
            r = a.post(f"/api/requests/{rid}/approve", json={"edit": {"body": "edited"}, "digest": seen})
            assert r.status_code == 200, r.text
            stale = b.post(f"/api/requests/{rid}/approve", json={"digest": seen})
            assert stale.status_code == 409, stale.text
            assert stale.json()["error"] == "conflict"
            assert stale.json()["current_status"] == "pending"
            rec = record(gate, rid)
            assert rec["status"] == "pending" and len(rec["decisions"]) == 1
            ok = b.post(f"/api/requests/{rid}/approve", json={"digest": rec["digest"]})
            assert ok.status_code == 200 and ok.json()["status"] == "approved", ok.text
        assert ag.post(upstream.url("/hold/d?approvals=2"), content=b"original").status_code == 200
    assert [r.body for r in upstream.received] == [b"edited"]


def test_grant_on_an_approval_that_does_not_complete_the_quorum_is_400(gate: Hitl, upstream: Upstream) -> None:
    with agent(gate) as ag:
        rid = held_id(ag.post(upstream.url("/hold/g?approvals=2"), content=b"g"))
        with reviewer(gate, "alice") as a, reviewer(gate, "bob") as b:
            r = a.post(f"/api/requests/{rid}/approve", json={"grant_minutes": 30})
            assert r.status_code == 400, r.text
            assert record(gate, rid)["decisions"] == []
            assert a.get("/api/grants").json()["items"] == []
            assert a.post(f"/api/requests/{rid}/approve", json={}).status_code == 200
            r = b.post(f"/api/requests/{rid}/approve", json={"grant_minutes": 30})
            assert r.status_code == 200 and r.json()["status"] == "approved", r.text
            [grant] = a.get("/api/grants").json()["items"]
        assert grant["created_by"] == "bob" and grant["request_id"] == rid
        assert ag.post(upstream.url("/hold/g?approvals=2"), content=b"g").status_code == 200
    assert [r.body for r in upstream.received] == [b"g"]


# -- item 11: header edits are validated when approving ------------------------------------

BAD_EDITS = [
    {"X-Note": "a\r\nX-Injected: yes"}, {"X-Note": "a\nX-Injected: yes"}, {"X-Note": "a\rb"},
    {"X-Note": "a\x00b"}, {"X-Note": "caf\u00e9"}, {"X-Caf\u00e9": "v"}, {"": "v"}, {" ": "v"},
    {"Bad Name": "v"}, {"X-Note:": "v"}, {"Content-Length": "1"}, {"Transfer-Encoding": "chunked"},
    {"Host": "evil.example"}, {"Connection": "close"}, {"Keep-Alive": "timeout=5"}, {"TE": "trailers"},
    {"Trailer": "X"}, {"Upgrade": "h2c"}, {"Proxy-Connection": "keep-alive"},
    {"Proxy-Authorization": "Basic eDp5"}, {"content-length": None},
]


def test_bad_header_edits_are_400_and_change_nothing(gate: Hitl, upstream: Upstream) -> None:
    with agent(gate) as ag:
        rid = held_id(ag.post(upstream.url("/hold/h"), content=b"body", headers={"X-Note": "as sent"}))
        before = record(gate, rid)
        with reviewer(gate, "alice") as api:
            for headers in BAD_EDITS:
                r = api.post(f"/api/requests/{rid}/approve", json={"edit": {"headers": headers}})
                assert r.status_code == 400, (headers, r.status_code, r.text)
                assert r.json()["error"] == "bad_request"
            after = record(gate, rid)
            assert after["status"] == "pending" and after["decisions"] == [] and not after["edited"]
            assert after["digest"] == before["digest"]
            assert api.post(f"/api/requests/{rid}/approve", json={"edit": {"headers": {"X-Note": "fine"}}}
                            ).status_code == 200
        assert ag.post(upstream.url("/hold/h"), content=b"body", headers={"X-Note": "as sent"}).status_code == 200
    [sent] = upstream.received
    assert sent.headers["x-note"] == "fine" and "x-injected" not in sent.headers


# -- item 14: no self-approval --------------------------------------------------------------

def test_a_reviewer_named_like_the_agent_may_not_decide_its_request(gate: Hitl, upstream: Upstream) -> None:
    with agent(gate) as ag:
        rid = held_id(ag.post(upstream.url("/hold/self"), content=b"mine"))
        with reviewer(gate, AGENT) as me:
            assert me.get(f"/api/requests/{rid}").json()["can_decide"] is False
            approve = me.post(f"/api/requests/{rid}/approve", json={"grant_minutes": 60})
            reject = me.post(f"/api/requests/{rid}/reject", json={"comment": "no"})
            assert me.post(f"/api/requests/{rid}/comment", json={"comment": "fyi"}).status_code == 200
        assert (approve.status_code, reject.status_code) == (403, 403), (approve.text, reject.text)
        assert approve.json()["error"] == "forbidden"
        held_id(ag.post(upstream.url("/hold/self"), content=b"mine"))
    rec = record(gate, rid)
    assert rec["status"] == "pending" and rec["decisions"] == []
    assert upstream.received == []


# -- item 13: secrets redacted in UI, API, audit and CLI -------------------------------------

SECRET_HEADERS = {
    "Authorization": "Bearer hdr-authz-1", "Cookie": "sid=hdr-cookie-2", "X-Api-Key": "hdr-xapikey-3",
    "X-Auth-Token": "hdr-authtoken-4", "Api-Key": "hdr-apikey-5", "X-Goog-Api-Key": "hdr-goog-6",
    "Private-Token": "hdr-private-7", "X-Amz-Security-Token": "hdr-amz-8", "X-Vault-Token": "hdr-vault-9",
    "X-Client-Secret": "hdr-secret-10", "X-Db-Password": "hdr-password-11", "X-Hub-Signature": "hdr-sig-12",
    "X-Credential": "hdr-cred-13", "X-Apikey": "hdr-apikey2-14", "X-Site-Thing": "hdr-configured-15",
}
SECRET_QUERY = {"api_key": "q-apikey-1", "token": "q-token-2", "access_token": "q-access-3",
                "signature": "q-signature-4", "key": "q-key-5", "password": "q-password-6",
                "secret": "q-secret-7", "client_secret": "q-client-8", "X-Amz-Signature": "q-amz-9"}


def test_secret_headers_and_query_values_never_show(make_hitl: Callable[..., Hitl], hashes: dict[str, str],
                                                    upstream: Upstream) -> None:
    h = make_hitl(config(hashes, **{"proxy.secret_headers": ["X-Site-Thing"]}), policy=POLICY)
    query = "&".join(f"{k}={v}" for k, v in SECRET_QUERY.items()) + "&page=visible-page"
    url = upstream.url(f"/hold/s?{query}")
    secrets = [*SECRET_HEADERS.values(), *SECRET_QUERY.values()]
    with agent(h) as ag:
        rid = held_id(ag.post(url, content=b"body", headers=SECRET_HEADERS))
        with reviewer(h, "alice") as api:
            shown = [api.get(f"/api/requests/{rid}").text, api.get("/api/requests").text]
            detail = api.get(f"/api/requests/{rid}").json()
            cli = subprocess.run([HITL, "pending", "--url", h.review_url], capture_output=True, text=True,
                                 timeout=60, check=False, env={**os.environ, "HITL_TOKEN": REVIEWERS["alice"][0]})
            assert cli.returncode == 0, cli.stderr
            shown.append(cli.stdout)
            shown.append(_ui_page(h, f"/requests/{rid}"))
            shown.append(_ui_page(h, "/queue.json"))
            assert api.post(f"/api/requests/{rid}/approve", json={}).status_code == 200
        assert ag.post(url, content=b"body", headers=SECRET_HEADERS).status_code == 200
        with reviewer(h, "alice") as api:
            shown.append(api.get("/api/audit", params={"limit": 1000}).text)
            shown.append(api.get(f"/api/requests/{rid}").text)
    audit_export = subprocess.run([HITL, "audit", "export", "-c", str(h.config_path)], capture_output=True,
                                  text=True, timeout=60, check=False)
    shown.append(audit_export.stdout)
    for text in shown:
        for secret in secrets:
            assert secret not in text, (secret, text[:3000])
    assert "visible-page" in shown[0] and rid in shown[2]
    assert all(v == "[redacted]" for k, v in detail["headers"].items() if k in {n.lower() for n in SECRET_HEADERS})
    assert "api_key=[redacted]" in detail["url"].replace("%5B", "[").replace("%5D", "]")
    [sent] = upstream.received  # what leaves is intact
    assert all(sent.headers[k.lower()] == v for k, v in SECRET_HEADERS.items())
    assert "q-apikey-1" in sent.path


def _ui_page(h: Hitl, path: str) -> str:
    """A page of the web UI as alice sees it, after logging in through the login form."""
    with httpx.Client(base_url=h.review_url, trust_env=False, timeout=30) as c:
        c.get("/login")
        r = c.post("/login", data={"name": "alice", "password": "pw", "csrf": c.cookies["hitl_login"]})
        assert r.status_code == 303, r.text
        page = c.get(path)
        assert page.status_code == 200, page.text
        return page.text


# -- item 7: huge held bodies --------------------------------------------------------------

def test_many_large_holds_keep_the_queue_small_and_the_raw_body_downloadable(
        make_hitl: Callable[..., Hitl], hashes: dict[str, str], upstream: Upstream) -> None:
    h = make_hitl(config(hashes, **{"proxy.max_body_bytes": 4 * 1024 * 1024}), policy=POLICY)
    size, count = 1_200_000, 12
    with agent(h) as ag:
        ids = [held_id(ag.post(upstream.url(f"/hold/big/{i}"), content=b"a" * (size - 1) + str(i % 10).encode(),
                               headers={"Content-Type": "text/plain; charset=utf-8"}))
               for i in range(count)]
    with reviewer(h, "alice") as api:
        listing = api.get("/api/requests", params={"status": "pending", "limit": 500})
        assert listing.status_code == 200
        assert len(listing.content) < count * 8 * 1024, len(listing.content)
        for item in listing.json()["items"]:
            assert item["body_truncated"] is True and item["body_size"] == size
            assert len(item["body_text"].encode()) <= 4096
        detail = api.get(f"/api/requests/{ids[3]}").json()
        assert detail["body_truncated"] is True and len(detail["body_text"].encode()) == 1024 * 1024
        raw = api.get(f"/api/requests/{ids[3]}/body")
        assert raw.status_code == 200 and raw.content == b"a" * (size - 1) + b"3"
        assert raw.headers["content-type"].startswith("text/plain")
        assert raw.headers["content-disposition"].startswith("attachment")
        assert raw.headers["x-content-type-options"] == "nosniff"
        assert api.get("/api/requests/nope/body").status_code == 404
    assert httpx.get(f"{h.review_url}/api/requests/{ids[3]}/body", trust_env=False).status_code == 401
    queue = _ui_page(h, "/queue.json")
    assert len(queue) < count * 8 * 1024, len(queue)
    # The store hands the queue a prefix of each body, not the body.
    items, _ = h.call(h.runtime.store.list_requests(statuses=["pending"], limit=500))
    assert len(items) == count and all(len(rec.request.body) <= 4100 for rec in items)
    assert upstream.received == []


# -- item 16: one identity header, once ----------------------------------------------------

def test_duplicate_trusted_identity_headers_are_refused(make_hitl: Callable[..., Hitl], hashes: dict[str, str],
                                                        upstream: Upstream) -> None:
    h = make_hitl({"review.trusted_header": {"user": "X-Forwarded-User", "groups": "X-Forwarded-Groups",
                                             "from": ["127.0.0.1/32"]}}, policy=POLICY)
    with httpx.Client(base_url=h.review_url, trust_env=False, timeout=30) as c:
        one = c.get("/api/me", headers=[("X-Forwarded-User", "alice")])
        assert one.status_code == 200 and one.json()["name"] == "alice"
        two_users = c.get("/api/me", headers=[("X-Forwarded-User", "mallory"), ("X-Forwarded-User", "alice")])
        two_groups = c.get("/api/me", headers=[("X-Forwarded-User", "alice"), ("X-Forwarded-Groups", "admin"),
                                               ("X-Forwarded-Groups", "finance")])
        page = c.get("/", headers=[("X-Forwarded-User", "mallory"), ("X-Forwarded-User", "alice")])
    for r in (two_users, two_groups, page):
        assert r.status_code in (400, 401), (r.status_code, r.text)
        assert "mallory" not in r.text and "set-cookie" not in r.headers


# -- item 15: login limits and the one-time admin link ----------------------------------------

def _try_login(base: str, address: str, name: str, password: str) -> int:
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(base_url=base, trust_env=False, timeout=60, transport=transport) as c:
        c.get("/login")
        return c.post("/login", data={"name": name, "password": password,
                                      "csrf": c.cookies["hitl_login"]}).status_code


def test_login_guesses_from_many_loopback_addresses_hit_the_network_and_account_limits(
        gate: Hitl) -> None:
    codes = [_try_login(gate.review_url, f"127.0.0.{2 + i % 20}", "alice", f"guess-{i}") for i in range(60)]
    assert codes.count(401) <= 10, codes  # argon2 checks actually made for the guesser
    assert codes[-20:] == [429] * 20, codes
    # Another /24: the network bucket is fresh, but alice's account backs off.
    assert _try_login(gate.review_url, "127.0.1.7", "alice", "pw") == 429


def test_admin_login_link_works_exactly_once_even_when_raced(tmp_path: Path, upstream: Upstream) -> None:
    proc = run_serve(write_config(tmp_path, policy=POLICY))
    try:
        [line] = [x for x in proc.lines if "login?token=" in x]
        link = line.split(" at ", 1)[1].strip()
        codes: list[int] = []
        go = threading.Barrier(8)

        def visit() -> None:
            with httpx.Client(trust_env=False, timeout=30) as c:
                go.wait()
                codes.append(c.get(link).status_code)

        threads = [threading.Thread(target=visit) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(codes) == [303] + [401] * 7, codes
        with httpx.Client(trust_env=False, timeout=30) as c:
            assert c.get(link).status_code == 401
    finally:
        proc.stop()


# -- item 17: private state files ----------------------------------------------------------

def test_store_keys_and_their_folders_are_private(tmp_path: Path, upstream: Upstream) -> None:
    old = os.umask(0o022)
    try:
        proc = run_serve(write_config(tmp_path, policy=POLICY))
    finally:
        os.umask(old)
    try:
        proxy = proc.proxy_url
        with httpx.Client(proxy=proxy, trust_env=False, timeout=30) as ag:
            assert ag.post(upstream.url("/hold/m"), content=b"m").status_code == 503
        with httpx.Client(base_url=proc.review_url, trust_env=False, timeout=30) as c:  # a session key
            [line] = [x for x in proc.lines if "login?token=" in x]
            assert c.get(line.split(" at ", 1)[1].strip()).status_code == 303
        data = tmp_path / "data"
        files = [data / "hitl.db", data / "hitl.db-wal", data / "hitl.db-shm", data / "ca" / "ca-key.pem",
                 data / "ui-session-key", data / "admin-token"]
        for f in files:
            assert f.exists(), f
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, (f, oct(f.stat().st_mode))
        for d in (data, data / "ca"):
            assert stat.S_IMODE(d.stat().st_mode) & 0o077 == 0, (d, oct(d.stat().st_mode))
    finally:
        proc.stop()
