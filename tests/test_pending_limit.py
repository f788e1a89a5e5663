"""hold.max_pending_per_agent under a burst (issue 12, item 10): the limit is counted in the
insert's transaction, so 200 concurrent holds of one agent never leave more than the limit
pending — on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.conftest import Hitl, Upstream
from tests.postgres import pg_url_fixture  # noqa: F401 - the pg_url fixture

LIMIT = 25
BURST = 200


async def _burst(hitl: Hitl, upstream: Upstream) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=BURST)
    async with httpx.AsyncClient(proxy=hitl.proxy_url, trust_env=False, timeout=60,
                                 limits=limits) as client:
        return await asyncio.gather(*(client.post(upstream.url(f"/hold/{i}"), content=f"n={i}".encode())
                                      for i in range(BURST)))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_burst_of_200_holds_never_leaves_more_than_the_limit_pending(
        make_hitl: Any, upstream: Upstream, request: pytest.FixtureRequest, backend: str) -> None:
    overrides: dict[str, Any] = {"hold.max_pending_per_agent": LIMIT, "hold.client_wait": "1s"}
    if backend == "postgresql":
        overrides["store.url"] = request.getfixturevalue("pg_url")
    hitl = make_hitl(overrides)
    responses = asyncio.run(_burst(hitl, upstream))
    codes = Counter(r.json()["error"]["code"] for r in responses)
    assert codes == {"approval_pending": LIMIT, "too_many_pending": BURST - LIMIT}, codes
    assert all(r.headers.get("retry-after") for r in responses)
    with hitl.api() as api:
        pending = api.get("/api/requests", params={"status": "pending", "limit": 500}).json()["items"]
    assert len(pending) == LIMIT
    assert upstream.received == []
