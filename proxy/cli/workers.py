"""``proxy.workers``: more processes serving the proxy listener, so it uses more cores.

The pass-through path is CPU-bound Python (h11 on both sides, the policy), and one process
runs on one core: more throughput means more processes. The primary (``serve``) starts
``workers - 1`` copies of itself as ``serve --role proxy --worker-of PID``; every one binds
``proxy.listen`` with SO_REUSEPORT and the kernel spreads new connections across them.

What stays with the primary: ``recover()`` at start (a worker must never take a forward
that another live process is making for an interrupted one), deadlines, audited reloads
and the review listener. What holds across processes already holds for ``--role``: the
store decides every transition (a claim is atomic), a waiting agent re-reads the store,
``ChangeFeed.watch`` (change_feed.py) wakes it as soon as the audit log shows a decision made elsewhere,
and the metrics are summed over every process at scrape (``proxy/metrics.py``).

A worker dies with its primary (PR_SET_PDEATHSIG), also when the primary is killed; a
worker that dies alone is restarted, with a growing pause if it keeps dying.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import sys
from pathlib import Path

from proxy.store.sql import PID_SPACE, pid_gone

log = logging.getLogger("hitl.workers")

READY_TIMEOUT = 60.0  # a worker loads the policy and the CA: seconds on a slow machine
STOP_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1


class WorkerError(Exception):
    """A worker could not start; the message says why (its own error is on stderr)."""


class WorkerPool:
    def __init__(self, count: int, config: Path | None, listen: tuple[str, int]) -> None:
        self.count = count
        self._config = config
        self._listen = listen
        self._procs: list[asyncio.subprocess.Process] = []
        self._supervisors: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        """Start every worker and wait until each listens (WorkerError when one cannot)."""
        try:
            self._procs = [await self._spawn() for _ in range(self.count)]
        except WorkerError:
            await self.stop()
            raise
        self._supervisors = [asyncio.create_task(self._supervise(i)) for i in range(self.count)]

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every worker; one still running after ``timeout`` seconds is killed."""
        self._stopping = True
        for task in self._supervisors:
            task.cancel()
        for proc in self._procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                log.error("worker %d did not stop within %.0f s: killed", proc.pid, timeout)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.returncode is None]

    async def _spawn(self) -> asyncio.subprocess.Process:
        host, port = self._listen
        env = {**os.environ, "HITL_PROXY_LISTEN": f"[{host}]:{port}" if ":" in host else f"{host}:{port}"}
        read_end, write_end = os.pipe()
        cmd = [sys.executable, "-m", "proxy", "serve", "--role", "proxy",
               "--worker-of", str(os.getpid()), "--ready-fd", str(write_end)]
        if self._config is not None:
            cmd += ["-c", str(self._config)]
        try:
            proc = await asyncio.create_subprocess_exec(*cmd, env=env, pass_fds=(write_end,),
                                                        stdin=asyncio.subprocess.DEVNULL)
        finally:
            os.close(write_end)
        try:
            # One byte when it listens; end of file when it died first.
            ready = await asyncio.wait_for(asyncio.to_thread(os.read, read_end, 1), READY_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise WorkerError(f"proxy.workers: a worker did not start within {READY_TIMEOUT:.0f} s") from None
        finally:
            os.close(read_end)
        if not ready:
            status = await proc.wait()
            raise WorkerError(f"proxy.workers: a worker exited at start (status {status}; "
                              "its error is above)")
        return proc

    async def _supervise(self, index: int) -> None:
        pause = 1.0
        while not self._stopping:
            proc = self._procs[index]
            status = await proc.wait()
            if self._stopping:
                return
            log.error("proxy worker %d exited (status %s); starting another in %.0f s", proc.pid, status, pause)
            await asyncio.sleep(pause)
            try:
                self._procs[index] = await self._spawn()
                pause = 1.0
            except WorkerError as exc:
                log.error("%s", exc)
                pause = min(pause * 2, 60.0)


def metrics_folder(data_dir: Path) -> Path:
    """A fresh folder for this primary's shared metrics files, under ``data_dir``.

    Folders of primaries no longer alive are removed: a killed primary leaves its folder
    behind, and nothing else would ever read it. Only folders of this pid space are judged
    (a data dir may be shared by several hosts).
    """
    space = re.sub(r"[^A-Za-z0-9_.-]", "_", PID_SPACE)
    for old in data_dir.glob(f"metrics-*-{space}"):
        pid = old.name.removeprefix("metrics-").removesuffix(f"-{space}")
        if pid.isdigit() and pid_gone(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    folder = data_dir / f"metrics-{os.getpid()}-{space}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, mode=0o700)
    return folder


def become_worker(primary: int) -> None:
    """In a worker: end with the primary, even when it is killed, and never outlive it."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != primary:  # the primary died before the line above took effect
        raise SystemExit(0)


def signal_ready(fd: int | None) -> None:
    if fd is not None:
        os.write(fd, b"1")
        os.close(fd)
