"""Bounded fuzz over request heads sent to a real `hitl-proxy serve` over a socket (issue 12).

Every head gets either a clean 4xx JSON answer made by the gate, or exactly one
well-formed forward that the recording upstream received and answered — never a crash,
a hang, a second forward or a traceback in the server's output.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ServeProcess, Upstream, run_serve, write_config

POLICY = r'''
package hitl

import rego.v1

default decision := {"action": "allow", "rule": "default"}

decision := {"action": "deny", "message": "no", "rule": "t.deny"} if startswith(input.request.path, "/deny")
'''

READ_TIMEOUT = 20.0  # longer than any answer takes; reaching it is a hang


class Rig:
    def __init__(self, serve: ServeProcess, upstream: Upstream, address: tuple[str, int]) -> None:
        self.serve, self.upstream, self.address = serve, upstream, address

    def __repr__(self) -> str:  # hypothesis prints it with each failing example
        return f"Rig(proxy={self.address})"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    upstream = Upstream()
    tmp = tmp_path_factory.mktemp("fuzz")
    config = write_config(tmp, {"log": {"format": "text", "level": "warning"}}, policy=POLICY)
    serve = run_serve(config)
    host, _, port = serve.proxy_url.removeprefix("http://").rpartition(":")
    yield Rig(serve, upstream, (host, int(port)))
    serve.stop()
    upstream.close()


TOKEN = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                min_size=1, max_size=12)
# Header and path bytes: anything but CR and LF (those would end the line or the head early
# and turn one example into two requests), with the hostile ones over-represented.
VALUE = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")) | st.sampled_from(
    [b"caf\xe9", b"\x00", b"a\x00b", b"\x7f", b" padded ", b"\t", b"chunked", b"chunked, identity",
     b"-1", b"1e3", b"0x10", b"18446744073709551617", b"", b"\xff\xfe"])
NAME = TOKEN.map(str.encode) | st.sampled_from(
    [b"Content-Length", b"Transfer-Encoding", b"Host", b"Connection", b"Expect", b"Proxy-Authorization",
     b"X-HITL-Agent", b"Upgrade", b"Te", b"Trailer", b"Bad Name", b"N\xe9", b"", b":authority"])
PATH = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30).map(str.encode) | \
    st.sampled_from([b"%2F", b"%5C", b"%00", b"%2E%2E/", b"../../", b"//", b"%", b"%zz", b"\\", b"deny", b"?a=%00",
                     b"\xe9", b" ", b"#frag"])
# Mostly well-formed, so that the hostile part (a header, a path) reaches the gate and the
# forward instead of stopping at the request line: repeated entries weigh the draw.
METHOD = st.sampled_from([b"GET"] * 6 + [b"POST"] * 6 + [b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH",
                          b"CONNECT", b"TRACE", b"get", b"G T", b""]) | TOKEN.map(str.encode)
VERSION = st.sampled_from([b"HTTP/1.1"] * 12 + [b"HTTP/1.0", b"HTTP/2", b"HTTP/1.1 ", b"HTTX/1.1", b"HTTP/9.9", b""])


@st.composite
def heads(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(the request's bytes with a target placeholder {UP}, its body)"""
    kind = draw(st.sampled_from(["absolute"] * 6 + ["origin", "asterisk", "authority", "raw"]))
    path = draw(PATH)
    target = {"absolute": b"http://{UP}/f/" + path, "origin": b"/" + path, "asterisk": b"*",
              "authority": b"{UP}", "raw": path}[kind]
    lines = [draw(METHOD) + b" " + target + b" " + draw(VERSION)]
    if draw(st.integers(0, 3)):
        lines.append(b"Host: {UP}")
    lines += [name + b": " + value for name, value in draw(st.lists(st.tuples(NAME, VALUE), max_size=6))]
    body = draw(st.binary(max_size=64))
    if body and draw(st.booleans()):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n", body


def exchange(address: tuple[str, int], data: bytes) -> bytes:
    with socket.create_connection(address, timeout=READ_TIMEOUT) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # the proxy sees the end of what the client sends
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before reading everything: the answer is still there
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            raise AssertionError(f"no end of answer within {READ_TIMEOUT}s for {data[:200]!r}") from None
        return answer


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=heads())
def test_every_head_gets_a_clean_4xx_or_one_well_formed_forward(rig: Rig, request: tuple[bytes, bytes]) -> None:
    head, body = request
    up = f"127.0.0.1:{rig.upstream.port}".encode()
    data = head.replace(b"{UP}", up) + body
    before = rig.upstream.count()
    answer = exchange(rig.address, data)
    forwarded = rig.upstream.count() - before
    assert rig.serve.proc.poll() is None, "serve exited"
    assert answer, f"closed without an answer: {data[:300]!r}"
    status_line, _, rest = answer.partition(b"\r\n")
    version, status, _ = status_line.split(b" ", 2)
    assert version == b"HTTP/1.1", answer[:200]
    code = int(status)
    headers_blob, _, payload = rest.partition(b"\r\n\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(b":") for line in headers_blob.split(b"\r\n"))}
    if b"x-upstream" in headers:  # relayed from the upstream: exactly one forward reached it
        assert forwarded == 1, (data[:300], answer[:300])
        assert code == 200
        return
    # made by the gate: a 4xx with the JSON error shape, and nothing forwarded
    assert forwarded == 0, (data[:300], answer[:300])
    assert 400 <= code < 500, (data[:300], answer[:300])
    assert headers.get(b"content-type") == b"application/json"
    assert headers.get(b"x-hitl-request-id")
    if not data.startswith(b"HEAD "):
        error = json.loads(payload)["error"]
        assert error["code"] and error["message"]


def test_the_fuzzed_server_logged_no_traceback(rig: Rig) -> None:
    # Runs after the fuzz in this module (pytest keeps file order).
    output = "\n".join(rig.serve.lines)
    assert "Traceback" not in output, output[-3000:]
    assert "internal error" not in output, output[-3000:]
