"""Shadow events, insights and `policy replay` over a PostgreSQL store: the same behaviour as
on SQLite (tests/test_shadow.py, test_insights.py, test_replay.py), through the PostgreSQL
dialect of their queries (the audit detail read with ->>, multi-row inserts, a read-only
replay session). Each test has its own schema (tests/postgres.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import yaml

from tests.conftest import Hitl, Upstream
from tests.postgres import pg_url_fixture  # noqa: F401 - the pg_url fixture
from tests.test_insights import DAY, seed
from tests.test_replay import POLICY_V1, POLICY_V2, SECRET, record_mix, replay
from tests.test_shadow import SHADOW_POLICY, shadow_events, wait_for


def test_shadow_view_and_insights_over_postgres(pg_url: str, make_hitl: Callable[..., Hitl],
                                                upstream: Upstream) -> None:
    hitl = make_hitl({"store.url": pg_url}, policy=SHADOW_POLICY)
    with hitl.agent() as agent:
        assert agent.post(upstream.url("/charge/1"), json={"amount": 7}).status_code == 200
        assert agent.delete(upstream.url("/d/1")).status_code == 200
    assert upstream.count() == 2
    assert len(wait_for(lambda: shadow_events(hitl), lambda e: len(e) == 2)) == 2
    with hitl.api() as api:
        data = api.get("/api/shadow").json()
        assert {(s["rule"], s["action"], s["count"]) for s in data["summary"]} == {
            ("payments.new", "hold", 1), ("deletes.new", "deny", 1)}
        assert data["facets"]["rule"] == ["deletes.new", "payments.new"]
        only = api.get("/api/shadow", params={"rule": "deletes.new", "host": "127.0.0.1"}).json()["items"]
        assert [(i["action"], i["path"]) for i in only] == [("deny", "/d/1")]
        now = time.time()
        for wait in (1, 2, 3):
            seed(hitl, "payments.small", now - DAY + wait, wait=wait)
        seed(hitl, "payments.small", now - DAY, wait=100, verdict="reject")
        [rule] = api.get("/api/insights", params={"window": "7d"}).json()["rules"]
        assert (rule["rule"], rule["holds"], rule["approved"], rule["rejected"], rule["quick"]) == \
            ("payments.small", 4, 3, 1, 3)
        assert rule["median_seconds"] == 2.5 and rule["p90_seconds"] == 100


def test_replay_over_postgres_reads_the_log_read_only(pg_url: str, make_hitl: Callable[..., Hitl],
                                                      upstream: Upstream, tmp_path: Path) -> None:
    hitl = make_hitl({"store.url": pg_url, "hold.client_wait": "1s"}, policy=POLICY_V1)
    record_mix(hitl, upstream)
    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as conn:
        def logged() -> int:
            row = conn.execute(f"SELECT COUNT(*) FROM {schema}.decision_log").fetchone()
            return int(row[0]) if row else 0
        assert wait_for(logged, lambda n: n == 12) == 12
        inputs = [r[0] for r in conn.execute(f"SELECT input FROM {schema}.decision_log").fetchall()]
    assert SECRET not in json.dumps(inputs)

    v2_policies = tmp_path / "policies-v2"
    v2_policies.mkdir()
    (v2_policies / "main.rego").write_text(POLICY_V2)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    config["policy"]["paths"] = [str(v2_policies)]
    v2 = tmp_path / "config-v2.yaml"
    v2.write_text(yaml.safe_dump(config))
    out = replay(v2, "--since", "1h", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["recorded"] == {"allow": 8, "hold": 3, "deny": 1, "error": 0}
    assert report["now"] == {"allow": 6, "hold": 6, "deny": 0, "error": 0}
    assert SECRET not in out.stdout

    config["store"]["url"] = pg_url.rsplit("schema=", 1)[0] + "schema=hitl_no_such_schema"
    missing = tmp_path / "config-missing.yaml"
    missing.write_text(yaml.safe_dump(config))
    out = replay(missing)
    assert out.returncode == 2 and "has no decision log yet" in out.stderr
    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as conn:  # and it created nothing
        assert conn.execute("SELECT to_regnamespace('hitl_no_such_schema')").fetchone() == (None,)
