"""What the benchmarks share: processes started in their own session and stopped as a group,
free ports, core pinning, wrk, the reference proxies and upstream, and a header naming the
machine so a table can be compared with another run's."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
HITL = str(Path(PY).parent / "hitl-proxy")

ALLOW_ALL = 'package hitl\n\ndecision := {"action": "allow", "rule": "bench"}\n'
BODY_1K = b"x" * 1023 + b"\n"  # the pass-through body: 1 KiB


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


# -- pinning ------------------------------------------------------------------------------
# With two or more cores and taskset: the load generator on core 0, the server under test (and
# the upstream beside it) on core 1, so every proxy gets exactly one core and the load
# generator never competes with it. Without them, everything shares what there is.

LOAD_CORE, SERVER_CORE = 0, 1


def pinning() -> bool:
    return (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


PIN = pinning()


def on_core(core: int, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *cmd] if PIN else cmd


def start(cmd: list[str], core: int | None = None, **kw: object) -> subprocess.Popen[bytes]:
    if core is not None:
        cmd = on_core(core, cmd)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, **kw)  # type: ignore[call-overload]


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used: its own share, whatever else runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- wrk ----------------------------------------------------------------------------------


def wrk(proxy_port: int | None, upstream_port: int, conns: int, duration: float, tmp: Path,
        path: str = "/bench", cpu: Callable[[], float] | None = None) -> dict[str, float]:
    """req/s, p50/p99 ms and non-2xx count of a wrk run: straight to the upstream, or through
    a proxy in absolute form (``GET http://host:port/bench``), as HTTP_PROXY clients send.
    ``cpu``: the CPU seconds the server has used so far; the result then has ``cpu_us``, its
    own CPU per request, a measure that survives a busy machine."""
    threads = min(2, conns) if not PIN else 1  # one core for the load: one thread
    if proxy_port is None:
        target, args = f"http://127.0.0.1:{upstream_port}{path}", []
    else:
        script = tmp / f"absolute-{upstream_port}.lua"
        script.write_text(f'wrk.path = "http://127.0.0.1:{upstream_port}{path}"\n'
                          f'wrk.headers["Host"] = "127.0.0.1:{upstream_port}"\n')
        target, args = f"http://127.0.0.1:{proxy_port}/", ["-s", str(script)]
    cmd = on_core(LOAD_CORE, ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration:g}s", "--latency", *args, target])
    used = cpu() if cpu is not None else 0.0
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=duration + 30).stdout
    if cpu is not None:
        used = cpu() - used
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    lat = {p: _ms(re.search(rf"\s{p}%\s+([\d.]+\w+)", out).group(1)) for p in ("50", "99")}  # type: ignore[union-attr]
    # A "read" socket error is the server closing a connection after a response, which
    # tinyproxy does after every one (wrk reconnects): not a failure. The others are.
    failed = int(errors.group(1)) if errors else 0
    if sock_errors:
        connect, _read, write, timeout = map(int, sock_errors.groups())
        failed += connect + write + timeout
    result = {"rps": float(found.group(1)), "p50": lat["50"], "p99": lat["99"], "errors": float(failed)}
    if cpu is not None:
        done = re.search(r"(\d+) requests in", out)
        result["cpu_us"] = used / max(1, int(done.group(1)) if done else 0) * 1e6
    return result


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


# -- the upstream and the reference proxies ----------------------------------------------


def _tool(name: str) -> str | None:
    """A server binary on PATH, or in /usr/sbin where Debian puts it (not on every user's PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin")


def start_nginx(tmp: Path, port: int) -> subprocess.Popen[bytes] | None:
    """nginx, one process, answering ``/bench`` with 1 KiB from a file, keep-alive without a
    request cap (its default closes a connection after 1,000 requests)."""
    nginx = _tool("nginx")
    if not nginx:
        return None
    root = tmp / "nginx"
    (root / "www").mkdir(parents=True, exist_ok=True)
    (root / "www" / "bench").write_bytes(BODY_1K)
    conf = root / "nginx.conf"
    conf.write_text(
        f"daemon off;\nmaster_process off;\nworker_processes 1;\npid {root}/nginx.pid;\n"
        f"error_log {root}/error.log crit;\nevents {{ worker_connections 4096; }}\n"
        f"http {{\n  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n"
        f"  client_body_temp_path {root}/body;\n  proxy_temp_path {root}/proxy;\n"
        f"  fastcgi_temp_path {root}/fastcgi;\n  uwsgi_temp_path {root}/uwsgi;\n  scgi_temp_path {root}/scgi;\n"
        f"  default_type application/octet-stream;\n"
        f"  server {{\n    listen 127.0.0.1:{port};\n    root {root}/www;\n  }}\n}}\n")
    return start([nginx, "-p", str(root), "-c", str(conf), "-e", f"{root}/error.log"], core=SERVER_CORE)


def start_python_upstream(port: int) -> subprocess.Popen[bytes]:
    return start([PY, str(ROOT / "bench" / "upstream_server.py"), str(port)], core=SERVER_CORE)


def start_tinyproxy(tmp: Path, port: int) -> subprocess.Popen[bytes] | None:
    if not shutil.which("tinyproxy"):
        return None
    conf = tmp / "tinyproxy.conf"
    # StartServers/MaxSpare: a process per connection, forked before the load arrives.
    conf.write_text(f"Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 200\nLogLevel Critical\n"
                    f"Allow 127.0.0.1\nDisableViaHeader Yes\n")
    return start(["tinyproxy", "-d", "-c", str(conf)], core=SERVER_CORE)


def start_squid(tmp: Path, port: int) -> subprocess.Popen[bytes] | None:
    squid = _tool("squid")
    if not squid:
        return None
    conf = tmp / "squid.conf"
    conf.write_text(
        f"http_port 127.0.0.1:{port}\nhttp_access allow all\ncache deny all\nshutdown_lifetime 0 seconds\n"
        f"pid_filename {tmp}/squid.pid\ncache_log {tmp}/squid-cache.log\naccess_log none\n"
        f"coredump_dir {tmp}\nworkers 1\n")
    return start([squid, "-N", "-f", str(conf)], core=SERVER_CORE)


def hitl_config(tmp: Path, name: str, port: int, policy: str = ALLOW_ALL, workers: int = 1,
                settings: dict[str, dict[str, Any]] | None = None) -> Path:
    """A config for ``hitl-proxy serve`` under ``tmp/name``: one policy file, SQLite in
    ``tmp/name/data``, quiet logs. ``settings`` adds or replaces keys, section by section."""
    base = tmp / name
    (base / "policies").mkdir(parents=True, exist_ok=True)
    (base / "policies" / "bench.rego").write_text(policy)
    doc: dict[str, Any] = {
        "data_dir": str(base / "data"),
        "proxy": {"listen": f"127.0.0.1:{port}", "workers": workers, "allow_networks": ["127.0.0.0/8"],
                  "ca_dir": str(base / "data" / "ca")},
        "review": {"listen": f"127.0.0.1:{free_port()}"},
        "policy": {"paths": [str(base / "policies")]},
        "store": {"url": f"sqlite:///{base}/data/hitl.db"},
        "log": {"level": "warning", "format": "json"},
    }
    for section, values in (settings or {}).items():
        doc.setdefault(section, {}).update(values)
    config = base / "hitl.yaml"
    config.write_text(yaml.safe_dump(doc))
    return config


def start_hitl(config: Path, source: Path | None = None) -> subprocess.Popen[bytes]:
    """``hitl-proxy serve`` on the server core. ``source``: run the code of another checkout
    (a git worktree of an earlier commit) with this environment's dependencies."""
    if source is None:
        return start([HITL, "serve", "-c", str(config)], core=SERVER_CORE)
    # ``python -c`` puts its working directory first on sys.path: run in the other checkout,
    # so that its ``proxy`` is imported and not this one's (PYTHONPATH alone would lose).
    cmd = [PY, "-c", "import sys; from proxy.cli import main; sys.exit(main())", "serve", "-c", str(config)]
    return start(cmd, core=SERVER_CORE, cwd=str(source), env={**os.environ, "PYTHONPATH": str(source)})


# -- the header -----------------------------------------------------------------------------


def _version(cmd: list[str], pattern: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "absent"
    found = re.search(pattern, done.stdout + done.stderr)
    return found.group(1) if found else "?"


def machine_header() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    pinned = (f"pinned with taskset: load generator on core {LOAD_CORE}, server and upstream on core "
              f"{SERVER_CORE}" if PIN else "not pinned (needs taskset and 2 cores): all processes share the cores")
    versions = ", ".join(f"{name} {_version(cmd, pat)}" for name, cmd, pat in (
        ("nginx", ["nginx", "-v"], r"nginx/(\S+)"),
        ("tinyproxy", ["tinyproxy", "-v"], r"tinyproxy (\S+)"),
        ("squid", ["squid", "-v"], r"Version (\S+)"),
        ("wrk", ["wrk", "-v"], r"wrk (\S+)"),
    ))
    return (f"# {now} · {cpu} · {os.cpu_count()} cores · {platform.system()} {platform.release()} · "
            f"Python {platform.python_version()}\n# {pinned}\n# {versions}")
