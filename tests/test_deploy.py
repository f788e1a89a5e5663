"""The packaging (Dockerfile, compose, Kubernetes, Prometheus, Grafana) agrees with the code:
every referenced file exists, every HITL_ variable and config file loads through the config
registry, ports agree everywhere, alert and dashboard queries name real metrics, and the
image's entry command serves when run directly. (No Docker engine runs here.)"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxy.ca import CERT_FILE, KEY_FILE
from proxy.config import Settings, load_settings
from proxy.metrics import Metrics
from tests.conftest import ROOT, run_serve

DEPLOY = ROOT / "deploy"


# -- the Dockerfile ------------------------------------------------------------------------

def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """(instruction, arguments) per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, args = line.partition(" ")
        if instr.upper() == "FROM":
            stages.append([])
        stages[-1].append((instr.upper(), args.strip()))
    return stages


def final_stage() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for instr, args in dockerfile_stages()[-1]:
        out.setdefault(instr, []).append(args)
    return out


def baked_config_path() -> tuple[Path, str]:
    """The config file the image's CMD names, as a repository file and as the image path."""
    cmd = json.loads(final_stage()["CMD"][0])
    assert json.loads(final_stage()["ENTRYPOINT"][0]) == ["hitl-proxy"]
    assert cmd[:2] == ["serve", "-c"]
    copies = dict(reversed(c.split()[-2:]) for c in final_stage()["COPY"] if not c.startswith("--from"))
    return ROOT / copies[cmd[2]], cmd[2]


def baked_settings(env: dict[str, str] | None = None) -> Settings:
    return load_settings(baked_config_path()[0], env or {})


def test_dockerfile_shape() -> None:
    stages = dockerfile_stages()
    final = final_stage()
    assert stages[0][0] == ("FROM", "python:3.11-slim AS builder")
    assert final["FROM"][0].startswith("python:3.11-slim")
    # no build tools in the final stage, and not root
    assert not any("build-essential" in a or "gcc" in a for a in final.get("RUN", []))
    assert final["USER"] == ["10001:10001"]
    assert final["VOLUME"] == ['["/data"]']
    settings = baked_settings()
    exposed = {int(p) for p in final["EXPOSE"][0].split()}
    assert exposed == {settings.proxy.listen.port, settings.review.listen.port} == {8080, 8081}
    assert settings.proxy.listen.host == settings.review.listen.host == "0.0.0.0"
    assert str(settings.data_dir) == "/data" and str(settings.proxy.ca_dir).startswith("/data/")
    assert settings.store.url == "sqlite:////data/hitl.db"


def test_every_copied_file_exists() -> None:
    declared_readme = 'readme = "README.md"' in (ROOT / "pyproject.toml").read_text()
    for stage in dockerfile_stages():
        for instr, args in stage:
            if instr != "COPY" or args.startswith("--from"):
                continue
            for src in args.split()[:-1]:
                if src == "README.md" and not (ROOT / src).exists():
                    assert declared_readme  # pyproject needs it to build; the lead writes it
                    continue
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("proxy", "review_ui", "policies", "pyproject.toml", "deploy"):
        assert needed not in ignored


def test_image_entry_command_serves_and_its_healthcheck_passes(tmp_path: Path) -> None:
    """Lay the image's files out as the final stage's COPY lines do, under tmp_path, and run
    its CMD with the env overrides an operator would use."""
    _config_src, config_in_image = baked_config_path()
    root = tmp_path / "image"
    for args in final_stage()["COPY"]:
        if args.startswith("--from"):
            continue
        src, dest = args.split()
        target = root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / src).is_dir():
            shutil.copytree(ROOT / src, target)
        else:
            shutil.copy(ROOT / src, target)
    data = tmp_path / "data"
    env = {"HITL_DATA_DIR": str(data), "HITL_PROXY_CA_DIR": str(data / "ca"),
           "HITL_STORE_URL": f"sqlite:///{data / 'hitl.db'}",
           "HITL_PROXY_LISTEN": "127.0.0.1:0", "HITL_REVIEW_LISTEN": "127.0.0.1:0"}
    proc = run_serve(root / config_in_image.lstrip("/"), env=env)
    try:
        assert httpx.get(proc.review_url + "/healthz", trust_env=False).json() == {"status": "ok"}
        assert httpx.get(proc.review_url + "/readyz", trust_env=False).status_code == 200
        assert httpx.get(proc.proxy_url + "/nowhere", trust_env=False).status_code == 400  # one access line
        [check] = final_stage()["HEALTHCHECK"]
        argv = json.loads(check.split("CMD", 1)[1])
        port = proc.review_url.rsplit(":", 1)[1]
        argv = [sys.executable if a == "python" else a.replace("127.0.0.1:8081", f"127.0.0.1:{port}")
                for a in argv]
        assert subprocess.run(argv, timeout=30, check=False).returncode == 0
    finally:
        proc.stop()
    lines = [line for line in proc.lines if not line.startswith("hitl-proxy: ")]
    assert lines and all(json.loads(line) for line in lines)  # log.format json in the image
    assert (data / "hitl.db").exists() and (data / "ca" / CERT_FILE).exists()


# -- compose -------------------------------------------------------------------------------

def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def hitl_env(env: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (env or {}).items() if k.startswith("HITL_")}


def test_compose_is_consistent(tmp_path: Path) -> None:
    c = compose()
    svc = c["services"]
    proxy = svc["hitl-proxy"]
    assert proxy["build"] == {"context": "..", "dockerfile": "Dockerfile"}
    assert (DEPLOY / proxy["build"]["context"] / proxy["build"]["dockerfile"]).exists()
    settings = baked_settings(hitl_env(proxy["environment"]))
    for service in svc.values():  # every bind mount exists
        for vol in service.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (DEPLOY / src).exists(), src
            else:
                assert src in c["volumes"], src
    assert f"127.0.0.1:{settings.review.listen.port}:{settings.review.listen.port}" in proxy["ports"]
    agent = svc["agent"]
    assert agent["environment"]["HTTP_PROXY"] == f"http://hitl-proxy:{settings.proxy.listen.port}"
    assert agent["networks"] == ["agents"] and c["networks"]["agents"]["internal"] is True
    assert "agents" in proxy["networks"] and "egress" in proxy["networks"]
    # the SSRF exception is exactly the demo upstream's address
    upstream_ip = svc["demo-upstream"]["networks"]["egress"]["ipv4_address"]
    assert [str(n) for n in settings.proxy.allow_networks] == [f"{upstream_ip}/32"]
    # Prometheus scrapes the review listener and loads the alerts
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [job] = prom["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"hitl-proxy:{settings.review.listen.port}"]
    mounted = {v.split(":")[1] for v in svc["prometheus"]["volumes"]}
    assert set(prom["rule_files"]) <= mounted


def test_compose_demo_policy_holds_charges_and_denies_deletes() -> None:
    from proxy.model import Agent, AgentRequest
    from proxy.policy.embedded import EmbeddedEngine
    from proxy.policy.input import build_input

    [mount] = [v for v in compose()["services"]["hitl-proxy"]["volumes"] if "policies" in v]
    assert mount.split(":")[1] in compose()["services"]["hitl-proxy"]["environment"]["HITL_POLICY_PATHS"]
    engine = EmbeddedEngine.load((DEPLOY / mount.split(":")[0],), "data.hitl.decision")
    try:
        def decide(method: str, path: str) -> tuple[str, str]:
            req = AgentRequest(method, "http", "demo-upstream", 8000, path, (), b"{}")
            d = asyncio.run(engine.decide(build_input(req, Agent("anonymous", "10.0.0.2"), 0, ())))
            return d.action.value, d.rule

        assert decide("POST", "/v1/charges") == ("hold", "demo.charge")
        assert decide("DELETE", "/v1/customers/1") == ("deny", "demo.delete")
        assert decide("GET", "/v1/balance") == ("allow", "default")
    finally:
        engine.close()


def test_compose_demo_scripts_compile() -> None:
    for name in ("agent.py", "upstream.py"):
        compile((DEPLOY / "compose" / name).read_text(), name, "exec")


# -- Kubernetes ----------------------------------------------------------------------------

def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d and "kind" in d]  # not hitl.yaml
    return docs


def test_k8s_sidecar_is_consistent() -> None:
    docs = k8s_docs()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs if "metadata" in d}
    kust = next(d for d in docs if d["kind"] == "Kustomization")
    for res in kust["resources"]:
        assert (DEPLOY / "k8s" / res).exists()
    [cm] = kust["configMapGenerator"]
    [secret] = kust["secretGenerator"]
    assert {Path(f).name for f in secret["files"]} == {CERT_FILE, KEY_FILE}
    config_file = DEPLOY / "k8s" / cm["files"][0]
    settings = load_settings(config_file, {})

    deploy = next(d for d in docs if d["kind"] == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    sidecar = next(c for c in pod["initContainers"] if c["name"] == "hitl-proxy")
    agent = next(c for c in pod["containers"] if c["name"] == "agent")
    assert sidecar["restartPolicy"] == "Always"
    mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    for c in pod["initContainers"] + pod["containers"]:
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, m
    # config from the ConfigMap, at the path the args name; the HITL_ env loads
    assert volumes["config"]["configMap"]["name"] == cm["name"]
    assert sidecar["args"] == ["serve", "-c", f"{mounts['config']}/{Path(cm['files'][0]).name}"]
    load_settings(config_file, {e["name"]: e["value"] for e in sidecar.get("env", [])})
    # the CA from the Secret, where proxy.ca_dir looks; the agent gets the certificate only
    assert volumes["ca"]["secret"]["secretName"] == secret["name"]
    assert str(settings.proxy.ca_dir) == mounts["ca"]
    assert volumes["ca-cert"]["secret"]["items"] == [{"key": CERT_FILE, "path": CERT_FILE}]
    assert str(settings.data_dir) == mounts["data"] and settings.store.url == f"sqlite:///{mounts['data']}/hitl.db"
    # ports: the container's, the agent's HTTP_PROXY, the probes, the Service
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports == {"proxy": settings.proxy.listen.port, "review": settings.review.listen.port}
    env = {e["name"]: e["value"] for e in agent["env"]}
    assert env["HTTP_PROXY"] == env["HTTPS_PROXY"] == f"http://127.0.0.1:{settings.proxy.listen.port}"
    assert settings.proxy.listen.host == "127.0.0.1"  # the agent's pod only
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert sidecar[probe]["httpGet"]["port"] in ports
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in ports
    annotations = deploy["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == settings.review.listen.port
    # the proxy's uid is the image's, the egress lock's and the pod's fsGroup
    uid = int(final_stage()["USER"][0].split(":")[0])
    lock = next(c for c in pod["initContainers"] if c["name"] == "egress-lock")
    assert sidecar["securityContext"]["runAsUser"] == uid == pod["securityContext"]["fsGroup"]
    assert {e["name"]: e["value"] for e in lock["env"]}["PROXY_UID"] == str(uid)
    assert agent["securityContext"]["runAsUser"] != uid
    assert f'PROXY_UID="${{PROXY_UID:-{uid}}}"' in (DEPLOY / "k8s" / "egress-lock.sh").read_text()
    assert pod["initContainers"][0]["name"] == "egress-lock"  # before anything else runs
    # the NetworkPolicy selects this pod and lets in only the review port
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": settings.review.listen.port, "protocol": "TCP"}]
    assert ("PersistentVolumeClaim", volumes["data"]["persistentVolumeClaim"]["claimName"]) in kinds


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell")
def test_egress_lock_script_parses() -> None:
    assert subprocess.run(["sh", "-n", str(DEPLOY / "k8s" / "egress-lock.sh")], timeout=10, check=False).returncode == 0


# -- Prometheus rules and the Grafana dashboard --------------------------------------------

def metric_names() -> set[str]:
    names = {"up"}
    for family in Metrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "info": ["_info"]}
        for suffix in suffixes.get(family.type, [""]):
            names.add(family.name + suffix)
    return names


def referenced(expr: str) -> set[str]:
    return set(re.findall(r"\b(hitl_[a-z_]+|up)(?=\s*[{\[)\s]|$)", expr))


def test_alert_rules_name_real_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    known = metric_names()
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    for name in ("HitlPendingTooLong", "HitlSlowDecisions", "HitlPolicyErrors", "HitlUpstreamErrors",
                 "HitlRubberStamping"):
        assert name in alerts
    for rule in alerts.values():
        names = referenced(rule["expr"])
        assert names and names <= known, (rule["alert"], names - known)
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    assert "0.99" in alerts["HitlRubberStamping"]["expr"] and "[1d]" in alerts["HitlRubberStamping"]["expr"]


def test_grafana_dashboard_queries_name_real_metrics() -> None:
    dash = json.loads((DEPLOY / "grafana" / "hitl-proxy.json").read_text())
    known = metric_names()
    seen: set[str] = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            names = referenced(target["expr"])
            assert names and names <= known, (panel["title"], names - known)
            seen |= names
    # every metric of docs/operations.md is on the dashboard
    for name in ("hitl_requests_total", "hitl_decisions_total", "hitl_pending_requests",
                 "hitl_decision_seconds_bucket", "hitl_policy_eval_seconds_bucket",
                 "hitl_upstream_seconds_bucket", "hitl_upstream_errors_total", "hitl_grants_active",
                 "hitl_shadow_total", "hitl_rule_holds", "hitl_rule_outcome_ratio", "hitl_rule_decision_seconds",
                 "hitl_rule_quick_decisions"):
        assert name in seen


def test_docs_name_the_deploy_files() -> None:
    text = (ROOT / "README.md").read_text()
    for name in ("Dockerfile", "deploy/compose.yaml", "deploy/k8s", "egress-lock", "/healthz", "/readyz"):
        assert name in text
