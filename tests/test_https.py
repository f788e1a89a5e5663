"""HTTPS through the proxy: CONNECT judged by policy, blind tunnels, TLS interception with
the local CA. Real TLS everywhere: upstreams with trustme certificates, agents (curl,
requests, httpx) that trust the hitl-proxy CA via HTTPS_PROXY-style settings."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import trustme
from cryptography import x509

from proxy.ca import CertificateAuthority
from tests.conftest import HITL, Hitl, Upstream, write_config
from tests.test_core_flow import in_background

# Holds POSTs under /hold, denies /deny, allows the rest. CONNECT: port 25 is denied; the
# host "localhost" is a blind tunnel, the rest (127.0.0.1) is intercepted.
HTTPS_POLICY = r'''
package hitl

import rego.v1

default decision := {"action": "allow", "rule": "default"}

decision := {"action": "hold", "message": sprintf("%s %s", [input.request.method, input.request.path]),
	"rule": "test.hold"} if {
	input.request.scheme == "https"
	startswith(input.request.path, "/hold")
}

decision := {"action": "deny", "message": "no deletes here", "rule": "test.deny"} if {
	startswith(input.request.path, "/deny")
}

decision := {"action": "deny", "message": "no SMTP tunnels", "rule": "test.smtp"} if {
	input.request.method == "CONNECT"
	input.request.port == 25
}

decision := {"action": "hold", "message": "tunnel needs review", "rule": "test.hold_tunnel"} if {
	input.request.method == "CONNECT"
	input.request.port == 26
}

default intercept := true

intercept := false if input.request.host == "localhost"
'''


@pytest.fixture(scope="module")
def upstream_ca() -> trustme.CA:
    return trustme.CA()


class HTTPSUpstream(Upstream):
    """The recording upstream of conftest, behind TLS with a trustme certificate."""

    def __init__(self, ca: trustme.CA, ca_file: Path) -> None:
        super().__init__()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
        # Handshake in the handler thread, not in accept(): a bad client cannot stall others.
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True,
                                             do_handshake_on_connect=False)
        self.ca_file = ca_file

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}{path}"


@pytest.fixture
def tls_upstream(upstream_ca: trustme.CA, tmp_path: Path) -> Iterator[HTTPSUpstream]:
    ca_file = tmp_path / "upstream-ca.pem"
    upstream_ca.cert_pem.write_to_path(str(ca_file))
    server = HTTPSUpstream(upstream_ca, ca_file)
    yield server
    server.close()


@pytest.fixture
def proxy(make_hitl: Callable[..., Hitl], tls_upstream: HTTPSUpstream) -> Hitl:
    return make_hitl({"proxy.upstream_ca_bundle": str(tls_upstream.ca_file)}, policy=HTTPS_POLICY)


def ca_path(hitl: Hitl) -> Path:
    return Path(hitl.runtime.settings.proxy.ca_dir) / "ca.pem"


def agent(hitl: Hitl, cafile: Path, **kwargs: Any) -> httpx.Client:
    return httpx.Client(proxy=hitl.proxy_url, trust_env=False, timeout=30,
                        verify=ssl.create_default_context(cafile=str(cafile)), **kwargs)


def raw_connect(hitl: Hitl, authority: str) -> tuple[socket.socket, bytes]:
    host, port = hitl.runtime.proxy_address
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            break
        head += chunk
    return sock, head


# -- interception ----------------------------------------------------------------------------
def test_httpx_get_is_intercepted_and_forwarded_over_verified_tls(proxy: Hitl, tls_upstream: HTTPSUpstream) -> None:
    with agent(proxy, ca_path(proxy)) as client:
        r = client.get(tls_upstream.url("/items?x=1"), headers={"X-Trace": "t1"})
        r2 = client.get(tls_upstream.url("/items?x=2"))  # same tunnel, next request
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "/items?x=1"
    assert r.headers["x-hitl-request-id"]
    assert "x-hitl-approved-by" not in r.headers
    assert r2.json()["path"] == "/items?x=2"
    assert tls_upstream.received[0].headers["x-trace"] == "t1"


def test_agents_configured_only_by_environment_variables(proxy: Hitl, tls_upstream: HTTPSUpstream) -> None:
    # What the README's HTTPS section tells users: HTTPS_PROXY plus SSL_CERT_FILE (httpx) / REQUESTS_CA_BUNDLE.
    script = (f"import httpx, requests; url = {tls_upstream.url('/env')!r}; "
              "print(httpx.get(url).status_code, requests.get(url, timeout=30).status_code)")
    env = {"PATH": "/usr/bin:/bin", "HTTPS_PROXY": proxy.proxy_url, "SSL_CERT_FILE": str(ca_path(proxy)),
           "REQUESTS_CA_BUNDLE": str(ca_path(proxy))}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.stdout.split() == ["200", "200"], out.stderr
    assert tls_upstream.count("/env") == 2


def test_curl_via_https_proxy_env_sees_a_denial_as_json(proxy: Hitl, tls_upstream: HTTPSUpstream) -> None:
    env = {"https_proxy": proxy.proxy_url, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(["curl", "-s", "-i", "--cacert", str(ca_path(proxy)), "-X", "DELETE",
                          tls_upstream.url("/deny/1")], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert "HTTP/1.1 403" in out.stdout, out.stdout + out.stderr
    assert '"code": "denied_by_policy"' in out.stdout
    assert "no deletes here" in out.stdout
    assert tls_upstream.count() == 0


def test_requests_held_post_is_approved_and_forwarded_once(proxy: Hitl, tls_upstream: HTTPSUpstream) -> None:
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"https": proxy.proxy_url}
    session.verify = str(ca_path(proxy))
    thread, box = in_background(lambda: session.post(tls_upstream.url("/hold/charge"), json={"amount": 5}, timeout=30))
    [item] = proxy.wait_pending()
    assert item["url"] == tls_upstream.url("/hold/charge")
    assert tls_upstream.count() == 0
    with proxy.api() as api:
        assert api.post(f"/api/requests/{item['id']}/approve", json={}).status_code == 200
    thread.join(15)
    r = box["result"]
    assert r.status_code == 200
    assert r.headers["x-hitl-approved-by"] == "admin"
    assert r.json()["body"] == '{"amount": 5}'
    assert tls_upstream.count("/hold/charge") == 1


def test_rejection_comment_reaches_the_agent_over_tls(proxy: Hitl, tls_upstream: HTTPSUpstream) -> None:
    with agent(proxy, ca_path(proxy)) as client:
        thread, box = in_background(lambda: client.post(tls_upstream.url("/hold/post"), content=b"spam"))
        [item] = proxy.wait_pending()
        with proxy.api() as api:
            api.post(f"/api/requests/{item['id']}/reject", json={"comment": "tone it down"})
        thread.join(15)
    r = box["result"]
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "rejected_by_reviewer"
    assert r.json()["error"]["comment"] == "tone it down"
    assert tls_upstream.count() == 0


def test_inner_host_must_match_the_connect_authority(proxy: Hitl, tls_upstream: HTTPSUpstream) -> None:
    sock, head = raw_connect(proxy, f"127.0.0.1:{tls_upstream.port}")
    assert head.startswith(b"HTTP/1.1 200")
    ctx = ssl.create_default_context(cafile=str(ca_path(proxy)))
    with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        assert tls.selected_alpn_protocol() in (None, "http/1.1")
        tls.sendall(b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        answer = b""
        while chunk := tls.recv(65536):  # the gate closes after a misdirected request
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 421")
    assert b'"misdirected_request"' in answer
    assert tls_upstream.count() == 0


def test_invalid_upstream_certificate_is_a_502_naming_verification(make_hitl: Callable[..., Hitl],
                                                                    tls_upstream: HTTPSUpstream) -> None:
    hitl = make_hitl(policy=HTTPS_POLICY)  # no upstream_ca_bundle: the trustme CA is unknown
    with agent(hitl, ca_path(hitl)) as client:
        r = client.get(tls_upstream.url("/secret"))
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_error"
    assert "verif" in r.json()["error"]["message"]
    assert tls_upstream.count() == 0


def test_non_tls_bytes_after_intercepted_connect_close_cleanly(proxy: Hitl, tls_upstream: HTTPSUpstream) -> None:
    sock, head = raw_connect(proxy, f"127.0.0.1:{tls_upstream.port}")
    assert head.startswith(b"HTTP/1.1 200")
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(10)
    with sock:  # at most a TLS alert, then EOF; the read timeout bounds a hang
        while sock.recv(65536):
            pass
    with agent(proxy, ca_path(proxy)) as client:  # the proxy is unharmed
        assert client.get(tls_upstream.url("/after")).status_code == 200


def test_silent_client_after_intercepted_connect_is_disconnected(proxy: Hitl, tls_upstream: HTTPSUpstream) -> None:
    proxy.runtime._proxy.connect.__self__.handshake_timeout = 0.3
    sock, head = raw_connect(proxy, f"127.0.0.1:{tls_upstream.port}")
    with sock:
        assert head.startswith(b"HTTP/1.1 200")
        assert read_all(sock) == b""  # no ClientHello: the handshake times out, the proxy hangs up


def test_agent_not_trusting_the_ca_fails_the_handshake(proxy: Hitl, tls_upstream: HTTPSUpstream) -> None:
    with agent(proxy, tls_upstream.ca_file) as client, pytest.raises(httpx.ConnectError):
        client.get(tls_upstream.url("/x"))
    assert tls_upstream.count() == 0


# -- blind tunnels and refusals --------------------------------------------------------------
def test_blind_tunnel_reaches_the_upstream_certificate_unchanged(proxy: Hitl, tls_upstream: HTTPSUpstream) -> None:
    # The agent trusts only the upstream's own CA: the handshake succeeds only if the proxy
    # did not touch the TLS. The hold rule does not apply: the proxy cannot see inside.
    with agent(proxy, tls_upstream.ca_file) as client:
        r = client.post(tls_upstream.url("/hold/blind", host="localhost"), content=b"x")
    assert r.status_code == 200
    assert "x-hitl-request-id" not in r.headers
    assert tls_upstream.count("/hold/blind") == 1
    metrics = httpx.get(proxy.review_url + "/metrics", trust_env=False).text
    assert 'hitl_tunnel_bytes_total{direction="to_agent"}' in metrics


def test_blind_tunnel_when_intercept_tls_is_off(make_hitl: Callable[..., Hitl], tls_upstream: HTTPSUpstream) -> None:
    hitl = make_hitl({"proxy.intercept_tls": False}, policy=HTTPS_POLICY.replace(
        'startswith(input.request.path, "/hold")', 'startswith(input.request.path, "/hold")\n\tfalse'))
    with agent(hitl, tls_upstream.ca_file) as client:
        assert client.get(tls_upstream.url("/plain")).status_code == 200


@pytest.mark.parametrize(("authority", "status", "error"), [
    ("127.0.0.1:25", 403, "denied_by_policy"),
    ("localhost:26", 403, "denied_by_policy"),  # a hold cannot apply to a blind tunnel
    ("10.1.2.3:443", 403, "destination_blocked"),
    ("169.254.169.254:443", 403, "destination_blocked"),
    ("127.0.0.1", 400, "bad_request"),
    ("127.0.0.1:0", 400, "bad_request"),
    ("127.0.0.1:99999", 400, "bad_request"),
    ("::1:443", 400, "bad_request"),
    ("bad_host!:443", 400, "bad_request"),
])
def test_refused_connects_get_json_before_any_tunnel(proxy: Hitl, authority: str, status: int, error: str) -> None:
    sock, head = raw_connect(proxy, authority)
    with sock:
        sock.settimeout(10)
        data = head
        while b'"request_id"' not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(f"HTTP/1.1 {status}".encode()), data
    assert f'"code": "{error}"'.encode() in data


@pytest.mark.parametrize("listener", ["proxy_address", "review_address"])
def test_connect_to_the_proxys_own_listeners_is_refused(proxy: Hitl, listener: str) -> None:
    host, port = getattr(proxy.runtime, listener)
    sock, head = raw_connect(proxy, f"{host}:{port}")
    sock.close()
    assert head.startswith(b"HTTP/1.1 403"), head


class TCPServer:
    """A raw TCP server: reads until the client half-closes, then answers with what it got."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                data = b""
                try:
                    while chunk := conn.recv(65536):
                        data += chunk
                    conn.sendall(b"got " + str(len(data)).encode())
                except OSError:
                    pass


@pytest.fixture
def tcp_server() -> Iterator[TCPServer]:
    server = TCPServer()
    yield server
    server.sock.close()


def read_all(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_blind_tunnel_passes_a_half_close_and_the_answer_after_it(proxy: Hitl, tcp_server: TCPServer) -> None:
    sock, head = raw_connect(proxy, f"localhost:{tcp_server.port}")
    with sock:
        assert head.startswith(b"HTTP/1.1 200")
        sock.sendall(b"x" * 300_000)
        sock.shutdown(socket.SHUT_WR)  # the proxy must pass the FIN on and keep reading
        assert read_all(sock) == b"got 300000"


def test_idle_blind_tunnel_is_closed(proxy: Hitl, tcp_server: TCPServer) -> None:
    proxy.runtime._proxy.connect.__self__.idle_timeout = 0.3
    sock, head = raw_connect(proxy, f"localhost:{tcp_server.port}")
    with sock:
        assert head.startswith(b"HTTP/1.1 200")
        assert read_all(sock) == b""  # neither side sent anything: the proxy hung up


def test_unreachable_tunnel_upstream_is_a_502(proxy: Hitl) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    sock, head = raw_connect(proxy, f"localhost:{port}")
    with sock:
        data = head + read_all(sock)
    assert data.startswith(b"HTTP/1.1 502")
    assert b'"upstream_error"' in data


# -- the CA ----------------------------------------------------------------------------------
def test_ca_is_created_once_private_and_stable_across_restarts(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    first = CertificateAuthority.load_or_create(ca_dir)
    assert stat.S_IMODE(os.stat(ca_dir / "ca-key.pem").st_mode) == 0o600
    cert = first.cert
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert "hitl-proxy local CA" in cert.subject.rfc4514_string()
    again = CertificateAuthority.load_or_create(ca_dir)
    assert again.cert == cert and again.cert_path.read_bytes() == first.cert_path.read_bytes()
    leaf = first.leaf_certificate("127.0.0.1")
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_serve_creates_the_ca_that_ca_export_prints_and_keeps_it(make_hitl: Callable[..., Hitl],
                                                                 tmp_path: Path) -> None:
    hitl = make_hitl(policy=HTTPS_POLICY)
    pem = ca_path(hitl).read_text()
    hitl2 = make_hitl(policy=HTTPS_POLICY)
    assert ca_path(hitl2).read_text() == pem
    config = write_config(tmp_path, {}, HTTPS_POLICY)
    out = subprocess.run([HITL, "ca", "export", "-c", str(config)],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == pem


@pytest.mark.parametrize(("path", "status"), [("/x/../deny/it", b"403"), ("/deny%2Fit", b"400"),
                                              ("/a//./items", b"200")])
def test_inner_paths_are_normalized_before_the_policy_and_the_forward(proxy: Hitl, tls_upstream: HTTPSUpstream,
                                                                     path: str, status: bytes) -> None:
    sock, head = raw_connect(proxy, f"127.0.0.1:{tls_upstream.port}")
    assert head.startswith(b"HTTP/1.1 200")
    ctx = ssl.create_default_context(cafile=str(ca_path(proxy)))
    with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{tls_upstream.port}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:300]
    assert [r.path for r in tls_upstream.received] == (["/a/items"] if status == b"200" else [])
