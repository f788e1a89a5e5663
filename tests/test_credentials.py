"""Credential checks cannot be turned into work for a stranger (issue 12, item 6).

Minted tokens (``hitl_<id>_<secret>``, stored as ``sha256:``) cost one SHA-256 whatever
the number of tokens; argon2 (passwords, and token hashes in older configs) runs only on
its own thread, for shapes that could match, and stops per address after repeated
failures, while credentials that already verified keep working."""

from __future__ import annotations

import base64
import re
import subprocess
import threading
from typing import Any

import httpx
import yaml

from proxy.credentials import VerifiedCache, hash_secret, is_minted, new_token, token_hash
from tests.conftest import HITL, Upstream


def new_token_lines(name: str, *extra: str) -> tuple[str, dict[str, Any]]:
    out = subprocess.run([HITL, "new-token", name, *extra], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    token = re.search(r"token: (\S+)", out)
    assert token is not None, out
    entry = yaml.safe_load(out.splitlines()[-1].strip().removeprefix("- "))
    return token.group(1), entry


def basic(agent: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{agent}:{token}".encode()).decode()


def client_from(address: str, **kwargs: Any) -> httpx.Client:
    """A client whose connections come from ``address`` (another loopback address)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), trust_env=False,
                        timeout=30, **kwargs)


def test_new_token_prints_the_minted_form_and_its_config_line_works(make_hitl: Any,
                                                                    upstream: Upstream) -> None:
    agent_token, agent_entry = new_token_lines("billing-agent", "--agent")
    review_token, review_entry = new_token_lines("ops-bot")
    assert is_minted(agent_token) and is_minted(review_token)
    assert re.fullmatch(r"hitl_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", review_token)
    assert agent_entry == {"id": "billing-agent", "token_hash": token_hash(agent_token)}
    assert review_entry["token_hash"].startswith("sha256:")
    hitl = make_hitl({"proxy.agents": [agent_entry], "review.tokens": [review_entry],
                      "proxy.require_agent_auth": True,
                      "proxy.routes": {"svc": upstream.url("/base")}})
    with hitl.agent(headers={"Proxy-Authorization": basic("billing-agent", agent_token)}) as agent:
        assert agent.get(upstream.url("/forward")).status_code == 200
    with httpx.Client(base_url=hitl.proxy_url, trust_env=False, timeout=30) as client:
        assert client.get("/svc/x", headers={"X-HITL-Agent": f"billing-agent:{agent_token}"}).status_code == 200
        assert client.get("/svc/x", headers={"X-HITL-Agent": f"billing-agent:{review_token}"}).status_code == 407
    assert [r.path for r in upstream.received] == ["/forward", "/base/x"]
    assert all("proxy-authorization" not in r.headers and "x-hitl-agent" not in r.headers
               for r in upstream.received)
    with hitl.api(review_token) as api:
        me = api.get("/api/me")
        assert me.status_code == 200 and me.json()["name"] == "ops-bot"
    with hitl.api(agent_token) as api:
        assert api.get("/api/me").status_code == 401


def test_junk_bearer_tokens_cost_no_argon2_however_many_minted_tokens(make_hitl: Any) -> None:
    tokens = [new_token() for _ in range(200)]
    hitl = make_hitl({"review.tokens": [{"name": f"bot{i}", "token_hash": token_hash(t)}
                                        for i, t in enumerate(tokens)]})
    before = VerifiedCache.argon2_runs
    junk = [new_token(), "x" * 40, "hitl_abc", "Zm9vOmJhcg=="]
    with hitl.api(junk[0]) as api:
        for token in junk * 5:
            assert api.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
        assert api.get("/api/me", headers={"Authorization": f"Bearer {tokens[137]}"}).json()["name"] == "bot137"
    assert VerifiedCache.argon2_runs == before


def test_junk_against_legacy_argon2_tokens_is_limited_per_address(make_hitl: Any) -> None:
    legacy = ["old-token-one", "old-token-two"]
    hitl = make_hitl({"review.tokens": [{"name": f"old{i}", "token_hash": hash_secret(t)}
                                        for i, t in enumerate(legacy)]})
    with client_from("127.0.0.1", base_url=hitl.review_url) as api:
        # The real tool, before the attack: verified once, then remembered.
        assert api.get("/api/me", headers={"Authorization": f"Bearer {legacy[0]}"}).json()["name"] == "old0"
        before = VerifiedCache.argon2_runs
        minted_junk = [api.get("/api/me", headers={"Authorization": f"Bearer {new_token()}"}).status_code
                       for _ in range(5)]
        assert minted_junk == [401] * 5
        assert VerifiedCache.argon2_runs == before  # the minted shape never reaches argon2
        # 5 failures counted already: 5 more junk tokens may cost argon2, then none does.
        codes = [api.get("/api/me", headers={"Authorization": f"Bearer junk-{i}"}).status_code
                 for i in range(30)]
        assert codes == [401] * 30
        assert VerifiedCache.argon2_runs - before <= 5 * len(legacy)
        # A remembered credential keeps working from the limited address.
        assert api.get("/api/me", headers={"Authorization": f"Bearer {legacy[0]}"}).json()["name"] == "old0"
        # A new one waits for the window there ...
        assert api.get("/api/me", headers={"Authorization": f"Bearer {legacy[1]}"}).status_code == 401
    # ... but not from another address.
    with client_from("127.0.0.2", base_url=hitl.review_url) as other:
        assert other.get("/api/me", headers={"Authorization": f"Bearer {legacy[1]}"}).json()["name"] == "old1"
    assert any(t.name.startswith("hitl-argon2") for t in threading.enumerate())


def test_wrong_agent_credentials_are_limited_per_address(make_hitl: Any, upstream: Upstream) -> None:
    hitl = make_hitl({"proxy.agents": [{"id": "legacy-agent", "token_hash": hash_secret("s3cret")}],
                      "proxy.require_agent_auth": True})
    good = {"Proxy-Authorization": basic("legacy-agent", "s3cret")}
    with client_from("127.0.0.1", proxy=hitl.proxy_url) as agent:
        assert agent.get(upstream.url("/before"), headers=good).status_code == 200
        before = VerifiedCache.argon2_runs
        unknown = [agent.get(upstream.url("/x"), headers={"Proxy-Authorization": basic(f"nobody{i}", "t")})
                   for i in range(4)]
        assert [r.status_code for r in unknown] == [407] * 4
        assert VerifiedCache.argon2_runs == before  # no configured agent: nothing to hash
        wrong = [agent.get(upstream.url("/x"), headers={"Proxy-Authorization": basic("legacy-agent", f"guess{i}")})
                 for i in range(20)]
        assert [r.status_code for r in wrong] == [407] * 20
        assert VerifiedCache.argon2_runs - before == 6  # 10 failures per address, 4 were unknown ids
        assert all(r.json()["error"]["code"] == "proxy_auth_required" for r in wrong)
        assert wrong[-1].headers["retry-after"]
        assert "too many failed" in wrong[-1].json()["error"]["message"]
        # The agent that verified before is unaffected by its neighbour's guessing.
        assert agent.get(upstream.url("/after"), headers=good).status_code == 200
    assert [r.path for r in upstream.received] == ["/before", "/after"]
