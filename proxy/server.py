"""The agent-facing listener: accept connections, read requests, hand them to the gate.

One asyncio task per connection, no per-request threads. A request arrives in absolute form
(``GET http://host/path``, from ``HTTP_PROXY`` clients), as ``CONNECT host:port`` (HTTPS), or
in origin form under a reverse route (``/stripe/v1/charges`` → ``proxy.routes.stripe``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from proxy.agents import AgentAuthenticator
from proxy.config import Settings
from proxy.errors import BadRequest, GateError, MethodNotAllowed
from proxy.gate import Gate, Reply
from proxy.headers import AGENT_HEADER
from proxy.http1 import ClientGone, HTTPConnection, Request
from proxy.logs import Access, note
from proxy.model import DEFAULT_PORTS, Agent, AgentRequest
from proxy.store.records import new_id
from proxy.urlnorm import BadPath, normalize_target

log = logging.getLogger("hitl.proxy")

_HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9\-_.]*[A-Za-z0-9])?$")
_OWN_HEADERS = frozenset({"proxy-authorization", AGENT_HEADER})

ConnectHandler = Callable[[HTTPConnection, Request, Agent, str], Awaitable[None]]


class ListenError(Exception):
    pass


def valid_host(host: str) -> bool:
    if host.startswith("[") or ":" in host:
        try:
            socket.inet_pton(socket.AF_INET6, host.strip("[]"))
            return True
        except OSError:
            return False
    return bool(_HOST_RE.match(host)) and len(host) <= 253


def parse_target(target: str, routes: dict[str, str]) -> tuple[str, str, int, str]:
    """(scheme, host, port, normalized path?query) from a request target, or BadRequest."""
    return resolve_target(target, routes)[:4]


def resolve_target(target: str, routes: dict[str, str]) -> tuple[str, str, int, str, str]:
    """(scheme, host, port, normalized path?query, raw path) from a request target, or
    BadRequest. Under a reverse route the part after the route name is normalized on its
    own, so ``/stripe/../admin`` cannot climb out of the route's base path."""
    if target.startswith("/"):
        first, _, rest = target[1:].partition("/")
        name, qmark, query = first.partition("?")
        base = routes.get(name)
        if base is None:
            raise BadRequest(f"{target.split('?', 1)[0]!r} is neither an absolute URL (use the proxy via "
                             "HTTP_PROXY) nor a configured route (proxy.routes)")
        url = urlsplit(base)
        scheme, host, port, _ = _split_absolute(f"{url.scheme}://{url.netloc}/")
        # "/stripe?x=1": no path after the route name
        normalized, raw = _canonical("/" + qmark + query if qmark else "/" + rest)
        prefix = url.path.rstrip("/")
        return scheme, host, port, prefix + normalized, prefix + raw
    scheme, host, port, path = _split_absolute(target)
    normalized, raw = _canonical(path)
    return scheme, host, port, normalized, raw


def _canonical(target: str) -> tuple[str, str]:
    try:
        return normalize_target(target)
    except BadPath as exc:
        raise BadRequest(f"bad path in request target: {exc}") from exc


def _split_absolute(target: str) -> tuple[str, str, int, str]:
    try:
        url = urlsplit(target)
        port = url.port
    except ValueError as exc:
        raise BadRequest(f"bad request target: {exc}") from exc
    scheme = url.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise BadRequest(f"unsupported scheme {url.scheme!r}: the proxy forwards http and https URLs")
    if url.username is not None or url.password is not None:
        raise BadRequest("credentials in the URL are not accepted; send them in a header")
    host = (url.hostname or "").lower()
    if not host or not valid_host(host):
        raise BadRequest(f"bad host in request target {target[:200]!r}")
    path = url.path or "/"
    if not path.startswith("/"):
        raise BadRequest("bad path in request target")
    if url.query:
        path += "?" + url.query
    return scheme, host, port or DEFAULT_PORTS[scheme], path


class ProxyServer:
    def __init__(self, settings: Settings, gate: Gate, agents: AgentAuthenticator,
                 connect: ConnectHandler | None = None) -> None:
        self.settings = settings
        self.gate = gate
        self.agents = agents
        self.connect = connect
        self.routes = dict(settings.proxy.routes)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()  # connections answering a request now
        self._closing = False

    async def start(self, sock: socket.socket | None = None) -> tuple[str, int]:
        listen = self.settings.proxy.listen
        try:
            if sock is not None:
                self._server = await asyncio.start_server(self._serve, sock=sock, limit=2**16, backlog=1024)
            else:
                self._server = await asyncio.start_server(
                    self._serve, listen.host, listen.port, limit=2**16, backlog=1024, reuse_address=True)
        except OSError as exc:
            raise ListenError(f"proxy.listen: cannot listen on {listen}: {exc.strerror or exc}") from exc
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def close(self, grace: float = 0.0) -> None:
        """Stop accepting; answer agents waiting on holds (approval_pending), let requests
        being answered finish within ``grace`` seconds, then close every connection."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        self.gate.begin_shutdown()
        for task in self._connections - self._busy:  # idle keep-alives and blind tunnels
            task.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._busy:
            await asyncio.wait(list(self._busy), timeout=grace)
        await self.gate.finish_forwards(max(0.0, deadline - loop.time()))
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.gate.metrics.connections.labels("proxy").inc()
        http = HTTPConnection(reader, writer)
        try:
            await self.serve_http(http)
        except ClientGone:
            pass
        except asyncio.CancelledError:
            # close() ended this connection (shutdown). Ending the task normally keeps asyncio's
            # stream callback from logging the cancellation as an error.
            pass
        except Exception:
            log.exception("internal error on a proxy connection from %s", http.peer)
        finally:
            self._connections.discard(task)
            if self._closing:  # flush and close; do not wait for a TLS peer's close_notify
                http.writer.close()
            else:
                await http.close()

    async def serve_http(self, http: HTTPConnection, tls_authority: tuple[str, int] | None = None) -> None:
        """Serve requests on one connection until it closes. ``tls_authority`` is set inside an
        intercepted CONNECT: requests are then origin-form and must name that authority."""
        while True:
            access = Access(http.peer)  # the one access line, written after the reply (logs.py)
            try:
                if not await self._handle_next(http, access, tls_authority):
                    return
            except GateError as exc:
                access.status, access.error = exc.status, exc.code
                # An id for a refusal made before the gate gave the request one: made only
                # here, not for every request (the gate names allowed requests itself).
                access.request_id = exc.request_id = exc.request_id or new_id()
                if not http.can_send:
                    return
                await http.send_error(exc, exc.request_id)
            finally:
                access.finish()
            if not http.reusable or self._closing:
                return

    async def _handle_next(self, http: HTTPConnection, access: Access,
                           tls_authority: tuple[str, int] | None) -> bool:
        """Read the next request and answer it; False when the agent closed the connection.
        Reading happens here, not in the caller, so that no frame keeps the parsed head while
        the gate waits on a hold (below)."""
        event = await http.receive_request()
        if event is None:
            return False
        method = event.method.decode("ascii", "replace")
        target = event.target.decode("latin-1")
        access.request(method, target)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
        lowered = dict(headers)  # names come lower-cased (http1.Request); the last one wins

        if method == "CONNECT":
            if tls_authority is not None:
                raise BadRequest("CONNECT inside an intercepted tunnel is not supported")
            agent = await self.agents.identify(http.peer, lowered.get("proxy-authorization"), None)
            if self.connect is None:
                raise MethodNotAllowed("CONNECT (HTTPS through the proxy) is not enabled on this proxy")
            await self.connect(http, event, agent, new_id())
            note(agent=agent.id, status=200)  # the tunnel was established, then closed
            return True

        if tls_authority is not None:
            scheme, host, port, raw_target = self._inner_target(target, lowered, tls_authority)
            path, raw_path = _canonical(raw_target)
        else:
            scheme, host, port, path, raw_path = resolve_target(target, self.routes)
        agent = await self.agents.identify(http.peer, lowered.get("proxy-authorization"),
                                           lowered.get(AGENT_HEADER) if target.startswith("/") else None)
        task = asyncio.current_task()
        assert task is not None
        self._busy.add(task)  # a shutdown lets this request finish (proxy.shutdown_grace)
        try:
            declared = lowered.get("content-length")
            body = await http.read_body(self.settings.proxy.max_body_bytes,
                                        int(declared) if declared and declared.isdigit() else None)
            try:
                req = AgentRequest(method, scheme, host, port, path,
                                   tuple((k, v) for k, v in headers if k.lower() not in _OWN_HEADERS), body,
                                   raw_path=raw_path)
            except ValueError as exc:
                raise BadRequest(str(exc)) from exc
            # A held request can wait for hours: keep only what the gate was given, not the head
            # it was parsed from.
            del event, headers, lowered
            reply = await self.gate.handle(req, agent)
            note(status=reply.status, request_id=reply.request_id)
            await self.write_reply(http, reply, head_only=method == "HEAD")
        finally:
            self._busy.discard(task)
        return True

    def _inner_target(self, target: str, headers: dict[str, str],
                      authority: tuple[str, int]) -> tuple[str, str, int, str]:
        from proxy.errors import MisdirectedRequest

        host, port = authority
        if target.startswith("/"):
            path = target
        else:
            _scheme, t_host, t_port, path = _split_absolute(target)
            if (t_host, t_port) != (host, port):
                raise MisdirectedRequest(f"request for {t_host}:{t_port} inside a tunnel to {host}:{port}")
        host_header = headers.get("host")
        if host_header is None:
            raise BadRequest("missing Host header")
        try:
            _, h_host, h_port, _ = _split_absolute(f"https://{host_header}/")
        except BadRequest as exc:
            raise MisdirectedRequest(f"bad Host header {host_header!r}") from exc
        if (h_host, h_port) != (host, port):
            raise MisdirectedRequest(
                f"Host {host_header!r} does not match the CONNECT authority {host}:{port}")
        return "https", host, port, path

    async def write_reply(self, http: HTTPConnection, reply: Reply, head_only: bool = False) -> None:
        headers = reply.headers + reply.gate_headers()
        if reply.stream is not None:
            try:
                await http.send_head(reply.status, headers, reply.reason)
                async for chunk in reply.stream.chunks():
                    await http.send_data(chunk)
                await http.end()
            except GateError as exc:
                log.warning("upstream failed mid-response for %s: %s", reply.request_id, exc.message)
                raise ClientGone() from exc
            finally:
                await reply.stream.aclose()
            return
        body = reply.body or b""
        headers = [(k, v) for k, v in headers if k.lower() not in ("content-length", "transfer-encoding")]
        headers.append(("Content-Length", str(len(body))))
        await http.send_head(reply.status, headers, reply.reason)
        if not head_only:
            await http.send_data(body)
        await http.end()
