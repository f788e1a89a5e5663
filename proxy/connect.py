"""``CONNECT host:port``: refuse it, pass a blind tunnel, or intercept the TLS inside.

Theory of operation
-------------------
Rule 1. Nothing is tunnelled before the policy has judged ``CONNECT host:port``
        (``decision`` with method CONNECT): ``deny`` answers 403 JSON, a policy failure
        answers 403 ``policy_error``.
Rule 2. The SSRF guard judges the *resolved* address, and a blind tunnel dials exactly the
        address it judged (no second DNS answer can slip a private address in). The proxy's
        own listeners are always refused: a tunnel to itself would loop.
Rule 3. ``data.hitl.intercept`` (undefined = true) and ``proxy.intercept_tls`` choose between
        interception and a blind tunnel. A blind tunnel cannot be reviewed, so a ``hold``
        answer for the CONNECT itself is refused (fail closed) when the tunnel would be blind;
        with interception on, every inner request is judged on its own.
Rule 4. Interception terminates TLS with a leaf from the local CA (``proxy/ca.py``) and
        serves the inner requests through ``ProxyServer.serve_http`` with the CONNECT
        authority, so they meet the same gate as plain HTTP (scheme https) and the inner
        ``Host`` must name that authority (421 otherwise). Upstream TLS is verified by
        ``upstream.py``; a certificate it cannot verify is a 502, never an unverified forward.
Rule 5. Every tunnel is bounded: a dial timeout, a TLS handshake timeout, an idle timeout,
        and both sockets closed when either side fails. A blind tunnel passes a half-close
        on (EOF one way shuts the other side's write half; the other way keeps flowing) and
        reads no faster than the slower side takes (``proxy/tunnel.py``).
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

from proxy.ca import CertificateAuthority
from proxy.config import Settings
from proxy.errors import BadRequest, DeniedByPolicy, GateError, PolicyError, UpstreamError
from proxy.gate import Gate
from proxy.http1 import ClientGone, HTTPConnection, Request
from proxy.model import Action, Agent, Decision
from proxy.policy.input import canonical_host, connect_input
from proxy.tunnel import CAN_SPLICE, Tunnel, detach, dial

if TYPE_CHECKING:
    from proxy.server import ProxyServer

log = logging.getLogger("hitl.connect")

HANDSHAKE_TIMEOUT = 10.0  # an agent has this long to finish its TLS handshake
DNS_TIMEOUT = 10.0
TUNNEL_IDLE_TIMEOUT = 300.0  # a blind tunnel with no byte either way for this long is closed


def parse_authority(target: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` of a CONNECT request; BadRequest otherwise."""
    from proxy.server import valid_host

    host, sep, port_text = target.rpartition(":")
    if not sep or not host:
        raise BadRequest(f"CONNECT needs host:port, got {target[:200]!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise BadRequest(f"bad IPv6 address in CONNECT {target[:200]!r}")
        host = host[1:-1]
    elif ":" in host:
        raise BadRequest(f"an IPv6 address in CONNECT must be in brackets: {target[:200]!r}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadRequest(f"bad port in CONNECT {target[:200]!r}")
    host = canonical_host(host)
    if not host or not valid_host(host):
        raise BadRequest(f"bad host in CONNECT {target[:200]!r}")
    return host, int(port_text)


class ConnectHandler:
    def __init__(self, settings: Settings, gate: Gate, proxy_server: ProxyServer,
                 authority: CertificateAuthority | None = None) -> None:
        self.settings = settings
        self.gate = gate
        self.proxy_server = proxy_server
        # Made at start, so `hitl-proxy ca export` and the running proxy agree on one CA.
        self.ca = authority or CertificateAuthority.load_or_create(settings.proxy.ca_dir)
        self.idle_timeout = TUNNEL_IDLE_TIMEOUT
        self.handshake_timeout = HANDSHAKE_TIMEOUT
        self.splice = CAN_SPLICE  # blind tunnels copy with os.splice where the OS has it

    async def handle(self, http: HTTPConnection, event: Request, agent: Agent, request_id: str) -> None:
        host, port = parse_authority(event.target.decode("latin-1"))
        # A CONNECT has no body; reading to its end completes the request before the answer.
        await http.read_body(0, None)
        # The destination first (docs/agent-contract.md): a blocked or unresolvable host is refused before
        # the policy is asked, and inner requests reuse this check (upstream.destination).
        addresses = await self._resolve(host, port, request_id)
        decision = await self._judge(host, port, agent, request_id)
        intercept = self.settings.proxy.intercept_tls and await self._intercept(host, port, agent, request_id)
        if not intercept and decision.action is Action.HOLD:
            raise DeniedByPolicy(
                f"the policy holds requests to {host}:{port} for review, but this tunnel would be "
                "blind (intercept is false or proxy.intercept_tls is off), so it is refused",
                request_id=request_id, rule=decision.rule)
        if intercept:
            await self._intercept_tls(http, host, port, request_id)
        else:
            await self._blind_tunnel(http, host, addresses, port, request_id)

    # -- judging -------------------------------------------------------------------------
    async def _judge(self, host: str, port: int, agent: Agent, request_id: str) -> Decision:
        doc = connect_input(host, port, agent, self.gate.clock())
        decision = await self.gate.account(
            lambda: self.gate.policy.decide(doc), agent, request_id, "CONNECT", host, port, "",
            access={}, what=f"CONNECT {host}:{port}", record=None,
            refused=lambda problem: f"the policy could not decide, so the tunnel was not opened: {problem}")
        if decision.action is Action.DENY:
            raise DeniedByPolicy(decision.message or f"tunnels to {host}:{port} are denied by policy",
                                 request_id=request_id, rule=decision.rule)
        return decision

    async def _intercept(self, host: str, port: int, agent: Agent, request_id: str) -> bool:
        try:
            return await self.gate.policy.intercept(connect_input(host, port, agent, self.gate.clock()))
        except PolicyError as exc:
            self.gate.metrics.requests.labels("error", "policy_error").inc()
            raise PolicyError(f"the policy could not say whether to inspect {host}:{port}: {exc.message}",
                              request_id=request_id) from exc

    async def _resolve(self, host: str, port: int, request_id: str) -> list[str]:
        """The resolved addresses the SSRF guard allows (Rule 2); a tunnel dials only these."""
        try:
            addresses = await self.gate.upstream.destination(host, port)
        except GateError as exc:  # DestinationBlocked (403) or a resolver failure (502)
            exc.request_id = request_id
            raise
        return addresses

    # -- blind tunnel --------------------------------------------------------------------
    async def _blind_tunnel(self, http: HTTPConnection, host: str, addresses: list[str], port: int,
                            request_id: str) -> None:
        failure: BaseException | None = None
        for ip in addresses:
            try:
                upstream = await dial(ip, port, self.settings.proxy.upstream_timeout)
                break
            except (OSError, TimeoutError) as exc:
                failure = exc
        else:
            self.gate.metrics.upstream_errors.inc()
            text = "timed out" if isinstance(failure, TimeoutError) else str(failure)
            raise UpstreamError(f"upstream {host}:{port} unreachable: {text}", request_id=request_id)
        try:
            await self._established(http, request_id)
            early = http.trailing_data
            agent, buffered = detach(http.reader, http.writer)
        except BaseException:
            upstream.close()
            raise
        log.info("blind tunnel %s to %s:%s (%s)", request_id, host, port, ip)
        bytes_ = self.gate.metrics.tunnel_bytes
        await Tunnel(agent, upstream, self.idle_timeout, bytes_.labels("to_upstream"),
                     bytes_.labels("to_agent"), use_splice=self.splice).run(early + buffered)

    async def _established(self, http: HTTPConnection, request_id: str) -> None:
        # A 2xx answer to CONNECT is a protocol switch (http1.py): after it, the socket is ours.
        await http.send_head(200, [("X-HITL-Request-Id", request_id)], "Connection Established")
        if not http.switched:  # pragma: no cover - http1's contract
            raise ClientGone("no protocol switch after 200 to CONNECT")

    # -- interception --------------------------------------------------------------------
    async def _intercept_tls(self, http: HTTPConnection, host: str, port: int, request_id: str) -> None:
        context = self.ca.server_context(host)
        await self._established(http, request_id)
        early = http.trailing_data
        if early:
            # The agent sent bytes before it saw our 200; they cannot be handed to the TLS
            # layer that starts now, so the connection is closed rather than misread.
            log.info("intercepted CONNECT %s: %d bytes arrived before the 200; closing", request_id, len(early))
            return
        try:
            await http.writer.start_tls(context, ssl_handshake_timeout=self.handshake_timeout)
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as exc:
            # Not TLS, a client that does not trust our CA, or a stalled handshake: the
            # connection is closed (an HTTP error could not be read by a TLS client anyway).
            log.info("TLS handshake with the agent for %s:%s failed (%s): %s", host, port, request_id,
                     exc or type(exc).__name__)
            return
        inner = HTTPConnection(http.reader, http.writer)
        await self.proxy_server.serve_http(inner, tls_authority=(host, port))
