"""Hot reload of the embedded policy: watch the files, compile in the background, swap.

A task polls the size and modification time of every policy and data file under
``policy.paths`` about once a second (no inotify dependency: polling a handful of files
is cheap, and works the same on every filesystem, bind mounts and ConfigMaps included).
On a change, or on ``SIGHUP``, the new engine is compiled in a worker thread, so the
event loop keeps serving with the old one meanwhile, then swapped into ``gate.policy``
in one assignment: the gate reads ``self.policy`` once per request, so each request is
judged wholly by the old or wholly by the new policy.

An invalid change keeps the previous policy (the gate never runs without one: fail
closed would deny everything, fail open would allow everything — neither is what an
operator editing a file means). The error, with its file and line, is logged, counted in
``hitl_policy_reloads_total{result="error"}``, set on ``gate.policy_error`` for the review
UI's banner, and audited, as every reload attempt is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from proxy.errors import ConfigError, StoreError
from proxy.policy.embedded import EmbeddedEngine
from proxy.policy.engine import PolicyLoadError
from proxy.policy.rego_files import DATA_FILES

if TYPE_CHECKING:
    from proxy.gate import Gate

log = logging.getLogger("hitl.policy")

Snapshot = dict[str, tuple[int, int]]  # file → (mtime_ns, size)


def snapshot(paths: Sequence[Path]) -> Snapshot:
    """The files the embedded engine would load, with what tells that they changed.

    A missing path is part of the picture too (its disappearance is a change, and the
    reload then reports it as an error instead of silently keeping stale rules).
    """
    seen: Snapshot = {}
    for root in map(Path, paths):
        try:
            if root.is_file():
                files = [root]
            elif root.is_dir():
                files = [
                    p for p in root.rglob("*")
                    if not any(s.startswith(".") for s in p.relative_to(root).parts)
                    # _test.rego files are not part of the served policy.
                    and (p.name in DATA_FILES
                         or (p.suffix == ".rego" and not p.name.endswith("_test.rego")))
                ]
            else:
                seen[str(root)] = (-1, -1)
                continue
            for path in files:
                st = path.stat()
                seen[str(path)] = (st.st_mtime_ns, st.st_size)
        except OSError:  # a file removed while we walked: the next poll sees the new state
            seen[str(root)] = (-2, -2)
    return seen


class PolicyReloader:
    def __init__(self, gate: Gate, paths: Sequence[Path], query: str,
                 interval: float = 1.0, primary: bool = True) -> None:
        self.gate = gate
        # False in a proxy.workers process: it reloads too, but the primary alone audits and
        # counts the change, so that one edit is one audit record and one count.
        self.primary = primary
        self.paths = list(paths)
        self.query = query
        self.interval = interval
        self._seen: Snapshot | None = None
        self._lock = asyncio.Lock()  # one compile at a time; a SIGHUP during a poll waits
        self._pending: set[asyncio.Task[bool]] = set()

    async def watch(self) -> None:
        """Poll forever (until cancelled); reload on every change of the files."""
        self._seen = await asyncio.to_thread(snapshot, self.paths)
        while True:
            await asyncio.sleep(self.interval)
            current = await asyncio.to_thread(snapshot, self.paths)
            if current != self._seen:
                await self.reload("change")

    def trigger(self, reason: str = "SIGHUP") -> None:
        """Schedule a reload from a signal handler (sync; runs in the loop's thread)."""
        task = asyncio.get_running_loop().create_task(self.reload(reason))
        self._pending.add(task)  # keep a reference until it ends
        task.add_done_callback(self._pending.discard)

    def cancel(self) -> list[asyncio.Task[bool]]:
        """Cancel the reloads in flight; the caller awaits what is returned."""
        tasks = list(self._pending)
        for task in tasks:
            task.cancel()
        return tasks

    async def reload(self, reason: str) -> bool:
        """Compile and swap in the policy files as they are now. True when swapped."""
        async with self._lock:
            # Taken before compiling: a write during the compile is seen by the next poll.
            self._seen = await asyncio.to_thread(snapshot, self.paths)
            try:
                engine = await asyncio.to_thread(EmbeddedEngine.load, self.paths, self.query)
            except (PolicyLoadError, ConfigError) as exc:
                message = exc.message if isinstance(exc, PolicyLoadError) else str(exc)
                self.gate.policy_error = message
                self._count("error")
                log.error("policy reload (%s) failed, the previous policy stays in force: %s",
                          reason, message)
                await self._audit({"result": "error", "reason": reason, "error": message})
                return False
            old, self.gate.policy = self.gate.policy, engine
            self.gate.policy_error = None
            old.close()  # evaluations are synchronous: none of the old engine's is in flight
            self._count("ok")
            log.info("policy reloaded (%s): %s", reason, engine.describe())
            await self._audit({"result": "ok", "reason": reason, "error": None})
            return True

    def _count(self, result: str) -> None:
        if self.primary:
            self.gate.metrics.policy_reloads.labels(result=result).inc()

    async def _audit(self, detail: dict[str, str | None]) -> None:
        if not self.primary:
            return
        try:
            await self.gate.store.audit_append(self.gate.clock(), "policy_reload", None,
                                               "system", detail)
        except StoreError as exc:  # the reload itself happened (or not); do not lose that
            log.error("cannot audit the policy reload: %s", exc)
