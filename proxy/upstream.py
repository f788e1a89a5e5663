"""Forwarding to the real upstream through one pooled ``httpx.AsyncClient``.

The SSRF guard lives in the dialer: ``GuardedBackend.connect_tcp`` resolves the name once,
checks every resolved address with ``netguard.AddressPolicy``, and connects to the address
it checked, so a second DNS answer can never slip a private address past the check. TLS to
the upstream is always verified (system CAs plus ``upstream_ca_bundle``); SNI and the
certificate check still use the hostname, because httpcore starts TLS with the origin's name.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpcore
import httpx

from proxy.errors import DestinationBlocked, UpstreamError
from proxy.headers import strip_request_headers, strip_response_headers
from proxy.model import AgentRequest, UpstreamResponse
from proxy.netguard import AddressPolicy

SOCKET_OPTION = Any


class GuardedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        first_reason = None
        for family, _, _, _, sockaddr in infos:
            ip = str(sockaddr[0]).split("%", 1)[0]
            reason = self._policy.check(ip, port)
            if reason is None:
                return await self._inner.connect_tcp(
                    ip, port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options,
                )
            first_reason = first_reason or (reason, ip)
        assert first_reason is not None
        reason, ip = first_reason
        raise DestinationBlocked(f"{host}:{port} resolves to {ip}, a {reason} address; the proxy does not connect there")

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise DestinationBlocked("unix sockets are not a destination")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def upstream_ssl_context(ca_bundle: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    try:
        import certifi  # httpx's own trust store, so hosts verify as they would for httpx

        ctx.load_verify_locations(certifi.where())
    except ImportError:  # pragma: no cover - certifi comes with httpx
        pass
    if ca_bundle is not None:
        ctx.load_verify_locations(str(ca_bundle))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, ssl_context: ssl.SSLContext, policy: AddressPolicy, limits: httpx.Limits) -> None:
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy),
        )


@dataclass(slots=True)
class OpenResponse:
    """A streaming upstream response; ``aclose`` must be called."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    _response: httpx.Response
    started: float

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream failed while sending its response: {exc}") from exc

    async def aclose(self) -> None:
        await self._response.aclose()


class Upstream:
    def __init__(
        self,
        *,
        timeout: float,
        policy: AddressPolicy,
        ca_bundle: Path | None = None,
        observe: Any = None,
    ) -> None:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30)
        transport = GuardedTransport(upstream_ssl_context(ca_bundle), policy, limits)
        self._client = httpx.AsyncClient(
            transport=transport, timeout=httpx.Timeout(timeout), trust_env=False,
            follow_redirects=False,
        )
        self._observe = observe  # callable(seconds, error: bool) for metrics, or None

    async def open(self, req: AgentRequest, extra_headers: Iterable[tuple[str, str]] = ()) -> OpenResponse:
        headers = list(strip_request_headers(req.headers)) + list(extra_headers)
        # httpx.Request, not client.build_request: the client's default headers
        # (User-Agent, Accept-Encoding, ...) must not be added to the agent's request.
        request = httpx.Request(req.method, req.url, headers=headers, content=req.body)
        if not req.body and req.method in {"GET", "HEAD", "OPTIONS", "DELETE"}:
            request.headers.pop("content-length", None)
        started = time.perf_counter()
        try:
            response = await self._client.send(request, stream=True)
        except DestinationBlocked:
            raise
        except httpx.HTTPError as exc:
            self._record(started, error=True)
            raise UpstreamError(_describe(req, exc)) from exc
        except ssl.SSLError as exc:  # pragma: no cover - httpx maps these, belt and braces
            self._record(started, error=True)
            raise UpstreamError(f"TLS with {req.authority} failed: {exc}") from exc
        self._record(started, error=False)
        return OpenResponse(
            status=response.status_code,
            reason=response.reason_phrase,
            headers=strip_response_headers(
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers.raw
            ),
            _response=response,
            started=started,
        )

    async def fetch(self, req: AgentRequest, max_body: int) -> UpstreamResponse:
        """Forward and read the whole response (for held requests, whose response is stored)."""
        opened = await self.open(req)
        try:
            body = bytearray()
            async for chunk in opened.chunks():
                body += chunk
                if len(body) > max_body:
                    raise UpstreamError(f"upstream response is larger than {max_body} bytes")
        finally:
            await opened.aclose()
        return UpstreamResponse(opened.status, tuple(opened.headers), bytes(body), opened.reason)

    def _record(self, started: float, *, error: bool) -> None:
        if self._observe is not None:
            self._observe(time.perf_counter() - started, error)

    async def aclose(self) -> None:
        await self._client.aclose()


def _describe(req: AgentRequest, exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return f"TLS certificate of {req.authority} could not be verified ({text}); not forwarded"
    if isinstance(exc, httpx.TimeoutException):
        return f"upstream {req.authority} timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return f"upstream {req.authority} unreachable: {text}"
    return f"upstream {req.authority} failed: {text}"
