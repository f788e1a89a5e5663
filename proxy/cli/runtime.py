"""``hitl-proxy serve``: build every part from the settings and run the listeners.

The composition root: the only place that knows all the parts. Both listeners share one
event loop, one store and one gate, so a decision in the review app wakes the waiting
agent's connection at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import uvicorn

from proxy.agents import AgentAuthenticator
from proxy.cli.open_files import raise_open_files_limit
from proxy.cli.policy_reload import PolicyReloader
from proxy.cli.workers import WorkerError, WorkerPool, become_worker, metrics_folder, signal_ready
from proxy.config import ReviewSettings, Settings
from proxy.credentials import admin_token_path, new_token
from proxy.errors import StoreError
from proxy.events import EventBus
from proxy.files import private_dir
from proxy.gate import Gate
from proxy.gc_policy import OldObjects
from proxy.metrics import Metrics, share_between_processes
from proxy.netguard import AddressPolicy
from proxy.policy.embedded import EmbeddedEngine
from proxy.policy.engine import PolicyEngine
from proxy.server import ConnectHandler as ConnectHandlerFn
from proxy.server import ListenError, ProxyServer
from proxy.store import open_store
from proxy.upstream import Upstream
from review_ui.app import create_app
from review_ui.auth import ReviewerAuth

if TYPE_CHECKING:
    from proxy.slack import SlackChannel

log = logging.getLogger("hitl")

ROLES = ("all", "proxy", "review")


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside our loop: signals are ours, not uvicorn's."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_socket(listen_host: str, port: int, key: str, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in listen_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # proxy.workers: every worker binds the same address (workers.py)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((listen_host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ListenError(f"{key}: cannot listen on {listen_host}:{port}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


def load_policy(settings: Settings) -> PolicyEngine:
    if settings.policy.engine == "opa":
        from proxy.policy.opa import OpaEngine

        return OpaEngine(settings.policy.opa_url, settings.policy.query)
    return EmbeddedEngine.load(settings.policy.paths, settings.policy.query)


@dataclass
class Runtime:
    settings: Settings
    role: str = "all"
    worker_of: int | None = None  # the primary's pid, in a proxy.workers process
    proxy_address: tuple[str, int] | None = None
    review_address: tuple[str, int] | None = None
    admin_token: str | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _uvicorn: _EmbeddedUvicorn | None = None
    _proxy: ProxyServer | None = None
    _reloader: PolicyReloader | None = None
    _workers: WorkerPool | None = None
    _metrics_dir: str | None = None
    slack: SlackChannel | None = None  # review.slack, in the process serving the review app

    async def start(self) -> None:
        s = self.settings
        primary = self.worker_of is None
        extra_workers = s.proxy.workers - 1 if primary and self.role in ("all", "proxy") else 0
        if extra_workers:
            self._metrics_dir = str(metrics_folder(s.data_dir))
            share_between_processes(self._metrics_dir)  # the workers inherit it
        self.metrics = Metrics()
        self.policy = load_policy(s)
        self.store = open_store(s.store.url, frozenset(s.proxy.secret_headers))
        sockets = self._bind()
        bound = [sock.getsockname()[:2] for sock in sockets.values()]
        # The SSRF guard refuses the proxy's own listeners, by the ports actually bound.
        address_policy = AddressPolicy(s.proxy.block_private_networks, s.proxy.allow_networks,
                                       frozenset((str(h), int(p)) for h, p in bound))
        self.upstream = Upstream(timeout=s.proxy.upstream_timeout, policy=address_policy,
                                 ca_bundle=s.proxy.upstream_ca_bundle, observe=self.metrics.observe_upstream)
        self.gate = Gate(settings=s, policy=self.policy, store=self.store, upstream=self.upstream,
                         metrics=self.metrics, events=EventBus())
        if self.role in ("all", "proxy"):
            # This process may forward: it must be seen alive before its first claim, or a
            # sweep elsewhere would take its forwards for a dead process's (store/sql.py).
            await self.store.heartbeat(self.gate.owner, self.gate.clock())
            self._tasks.append(asyncio.create_task(self.gate.sweepers.run_heartbeat()))
            if primary:  # forwards interrupted by a process that is gone; deadlines sweep later ones
                await self.gate.sweepers.recover()
        if "review" in sockets:
            review_sock = sockets["review"]
            self.review_address = review_sock.getsockname()[:2]
            if self.role == "proxy":  # health and metrics of this proxy process: no review here
                app = create_app(self.gate, ReviewerAuth(s.review.tokens, None), self.readiness, ops_only=True)
            else:
                auth = ReviewerAuth(s.review.tokens, self._admin_token())
                if s.review.slack is not None and primary:  # one poster per deployment (proxy/slack.py)
                    from proxy.slack import SlackChannel  # imported here: with httpx, ~2 MiB of RSS

                    self.slack = SlackChannel(s, self.store, self.metrics, self.gate.clock)
                    self._tasks.append(self.slack.start(self.gate.events))
                app = create_app(self.gate, auth, self.readiness, settings=s, admin_token=self.admin_token,
                                 slack=self.slack)
            config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                    proxy_headers=False, server_header=False, date_header=False,
                                    timeout_graceful_shutdown=max(1, round(s.proxy.shutdown_grace)))
            self._uvicorn = _EmbeddedUvicorn(config)
            self._tasks.append(asyncio.create_task(self._uvicorn.serve(sockets=[review_sock])))
        if "proxy" in sockets:
            self._proxy = ProxyServer(s, self.gate,
                                      AgentAuthenticator(s.proxy.agents, s.proxy.require_agent_auth))
            self._proxy.connect = self._connect_handler()
            self.proxy_address = await self._proxy.start(sock=sockets["proxy"])
            if s.notify.webhooks:  # holds happen where the proxy listener runs
                from proxy.notify import Notifier  # imported here: with httpx, ~2 MiB of RSS

                self._tasks.append(Notifier(s.notify.webhooks, s.review.public_url, self.metrics)
                                   .start(self.gate.events))
        if primary:
            self._tasks.append(asyncio.create_task(self.gate.sweepers.run_deadlines()))
        self._tasks.append(asyncio.create_task(self.gate.recorder.run()))  # shadow events, decision log
        if s.policy.engine == "embedded":  # a remote OPA reloads its own bundles
            self._reloader = PolicyReloader(self.gate, s.policy.paths, s.policy.query, primary=primary)
            self._tasks.append(asyncio.create_task(self._reloader.watch()))
        if self.role != "all" or s.proxy.workers > 1:  # other processes share the store
            self._tasks.append(asyncio.create_task(self.gate.feed.watch()))
        if extra_workers:
            assert self.proxy_address is not None
            self._workers = WorkerPool(extra_workers, s.source, self.proxy_address)
            await self._workers.start()

    def reload_policy(self) -> None:
        """SIGHUP: recompile the policy files now (the watcher would within a second)."""
        if self._reloader is None:
            log.warning("SIGHUP: policy.engine is %s, nothing to reload here", self.settings.policy.engine)
            return
        self._reloader.trigger("SIGHUP")

    def _bind(self) -> dict[str, socket.socket]:
        """Bind every listener of this role before serving any, so that a port in use fails
        the start cleanly, naming its key."""
        s = self.settings
        wanted = {"review": (s.review.listen, "review.listen"), "proxy": (s.proxy.listen, "proxy.listen")}
        sockets: dict[str, socket.socket] = {}
        # A --role proxy primary binds review.listen too, for its health and metrics alone.
        ops = self.role == "proxy" and self.worker_of is None
        try:
            for name, (listen, key) in wanted.items():
                if self.role in ("all", name) or (name == "review" and ops):
                    reuse_port = name == "proxy" and s.proxy.workers > 1
                    sockets[name] = bind_socket(listen.host, listen.port, key, reuse_port)
        except ListenError:
            for sock in sockets.values():
                sock.close()
            raise
        return sockets

    def _connect_handler(self) -> ConnectHandlerFn:
        """CONNECT handling; loads (or creates) the local CA now, so that `hitl-proxy ca export`
        and the running proxy agree, and a bad proxy.ca_dir fails the start."""
        from proxy.connect import ConnectHandler

        assert self._proxy is not None
        return ConnectHandler(self.settings, self.gate, self._proxy).handle

    def _admin_token(self) -> str | None:
        s = self.settings
        if s.review.users or s.review.tokens or s.review.trusted_header:
            return None
        self.admin_token = new_token()
        path = admin_token_path(s.data_dir)
        private_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.admin_token + "\n")
        return self.admin_token

    async def readiness(self) -> dict[str, bool]:
        try:
            await asyncio.wait_for(self.store.ping(), 2)
            store_ok = True
        except (StoreError, TimeoutError):
            store_ok = False
        # The policy needs no check: the start fails without one, and a failed reload keeps
        # the one in force. The review listener answers before the proxy's is up.
        return {"store": store_ok,
                "listeners": (self.proxy_address is not None or self.role == "review")
                and (self.review_address is not None or self.role == "proxy")}

    async def stop(self) -> None:
        """SIGTERM / Ctrl-C (docs/agent-contract.md): stop accepting, answer agents waiting on holds with
        approval_pending (the holds stay in the store), let forwards in flight finish within
        proxy.shutdown_grace, end the review UI's event streams, then close the rest."""
        if self._workers is not None:  # first: they finish their forwards while the store is open
            # (a worker has its own shutdown_grace, plus the time to start stopping)
            await self._workers.stop(self.settings.proxy.shutdown_grace + 10)
        self.gate.events.close()  # an open browser tab's event stream must not hold the exit
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._proxy is not None:
            await self._proxy.close(self.settings.proxy.shutdown_grace)
        else:
            self.gate.begin_shutdown()
            await self.gate.finish_forwards(self.settings.proxy.shutdown_grace)
        for task in self._tasks:
            if task.get_coro().__name__ != "serve":  # type: ignore[union-attr]
                task.cancel()
        if self._reloader is not None:  # a SIGHUP reload in flight; it audits into the store
            await asyncio.gather(*self._reloader.cancel(), return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.upstream.aclose()
        await self.gate.recorder.close()  # what is still buffered
        await self.store.aclose()
        policy = self.gate.policy  # the one in force: a reload may have replaced self.policy
        aclose = getattr(policy, "aclose", None)
        if aclose is not None:
            await aclose()
        else:
            policy.close()
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def ready_lines(self) -> list[str]:
        lines = []
        if self.proxy_address:
            h, p = self.proxy_address
            workers = f" ({self.settings.proxy.workers} processes)" if self.settings.proxy.workers > 1 else ""
            lines.append(f"hitl-proxy: proxy listening on http://{_fmt(h)}:{p}{workers}")
        if self.review_address:
            h, p = self.review_address
            what = "health and metrics" if self.role == "proxy" else "review"
            lines.append(f"hitl-proxy: {what} listening on http://{_fmt(h)}:{p}")
        if self.admin_token and self.review_address:
            base = self.settings.review.public_url
            # The default public_url only fits the default listen address: follow a changed one.
            if base == ReviewSettings().public_url and tuple(self.review_address) != ("127.0.0.1", 8081):
                h, p = self.review_address
                h = "127.0.0.1" if h in ("0.0.0.0", "::") else h
                base = f"http://{_fmt(h)}:{p}"
            lines.append(f"hitl-proxy: no reviewer configured; log in as admin at "
                         f"{base}/login?token={self.admin_token}")
        return lines


def _fmt(host: str) -> str:
    return f"[{host}]" if ":" in host else host



def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop when it is installed (``pip install hitl-proxy[fast]``), else asyncio's.

    Measured on the pass-through path (one core, allow-all, c=32): uvloop's transports,
    timers and callbacks in C take about a fifth off the proxy's CPU per request. Nothing
    in the gate depends on which loop runs it; ``HITL_EVENT_LOOP=asyncio`` picks asyncio's.
    """
    if os.environ.get("HITL_EVENT_LOOP", "").lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run ``serve`` (or any coroutine) on the loop ``event_loop_factory`` chooses."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(main)


async def serve(settings: Settings, role: str = "all", worker_of: int | None = None,
                ready_fd: int | None = None) -> int:
    raise_open_files_limit()  # each waiting agent holds a connection (open_files.py)
    if worker_of is not None:
        become_worker(worker_of)
        role = "proxy"
    runtime = Runtime(settings, role, worker_of)
    try:
        await runtime.start()
    except WorkerError:
        await runtime.stop()
        raise
    if worker_of is None:
        for line in runtime.ready_lines():
            print(line, flush=True)
    # What lives long (startup's objects, then held requests) is kept out of the collector's
    # sight, so that a collection is not a stall of the whole gate (proxy/gc_policy.py).
    old_objects = OldObjects(asyncio.get_running_loop())
    aging = old_objects.start()
    signal_ready(ready_fd)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, runtime.reload_policy)
    await stop.wait()
    print("hitl-proxy: shutting down", file=sys.stderr, flush=True)
    aging.cancel()
    old_objects.stop()
    await runtime.stop()
    return 0
