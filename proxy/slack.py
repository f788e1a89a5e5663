"""Approvals in Slack (``review.slack``): post each hold, keep its message in step.

Theory of operation
-------------------
Rule 1. Slack never holds up the gate. Holds are posted, and messages updated, by tasks
        fed from the gate's event bus; a slow, failing or dead Slack delays nothing but
        those tasks. Each call is bounded (``TIMEOUT``) and retried with back-off
        (``BACKOFF``, or Slack's ``Retry-After``); every failed call is counted in
        ``hitl_notify_errors_total{channel="slack"}``.
Rule 2. The store says what was posted: a record's ``slack_ts`` is claimed (set to "")
        in one conditional UPDATE before ``chat.postMessage``, then set to the message's
        ts. So one process of all those sharing the store posts a hold, once, and a
        restart posts nothing again. A post that fails gives its claim back, and the
        catch-up (every ``CATCH_UP_SECONDS``, and at start) tries again while the request
        is pending. A process that dies between claim and post leaves the hold unposted
        (at most once); the web UI still shows it.
Rule 3. One sync per record at a time: a change that arrives while a record's message is
        being posted or updated runs again after it, so the message ends in the record's
        latest state, whoever decided (web UI, API, CLI, Slack, the deadline, another
        process — ``ChangeFeed.watch`` feeds their changes into the same bus).
Rule 4. Only the process that serves the review app (``--role all|review``, the primary
        when ``proxy.workers`` > 1) runs this; workers never post.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from proxy.config import Settings, SlackSettings
from proxy.errors import StoreError
from proxy.events import EventBus
from proxy.metrics import Metrics
from proxy.model import HoldStatus, Reviewer
from proxy.slack_blocks import hold_message
from proxy.store import AsyncStore

log = logging.getLogger("hitl.slack")

TIMEOUT = 10.0
BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)  # then the call gives up; the catch-up tries later
MAX_RETRY_AFTER = 60.0
CATCH_UP_SECONDS = 30.0
MAX_SYNCS = 4  # messages posted or updated at once
RENDERED_LIMIT = 10_000
# Slack's errors that a later attempt may not get (others: a config problem, not retried).
RETRYABLE = {"ratelimited", "internal_error", "fatal_error", "service_unavailable",
             "request_timeout", "team_added_to_org"}


class SlackError(Exception):
    """A failed Web API call: ``error`` is Slack's code or what went wrong on the way."""

    def __init__(self, method: str, error: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(f"Slack {method} failed: {error}")
        self.method = method
        self.error = error
        self.retryable = retryable
        self.retry_after = retry_after


class SlackClient:
    """Slack's Web API with the bot token; errors counted and logged without the token."""

    def __init__(self, settings: SlackSettings, metrics: Metrics,
                 client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        # trust_env off: the proxy's own HTTP_PROXY (if any) is not the way to Slack.
        self.http = client or httpx.AsyncClient(timeout=TIMEOUT, trust_env=False, follow_redirects=False)
        self._api_host = urlsplit(settings.api_url).hostname or ""

    async def call(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One attempt. Raises SlackError (counted)."""
        try:
            return await self._call(method, payload)
        except SlackError as exc:
            self.metrics.notify_errors.labels("slack").inc()
            log.warning("%s", exc)
            raise

    async def _call(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.settings.bot_token}"}
        try:
            response = await self.http.post(f"{self.settings.api_url}/{method}", json=payload, headers=headers)
        except httpx.HTTPError as exc:
            raise SlackError(method, type(exc).__name__, retryable=True) from exc
        if response.status_code == 429:
            raise SlackError(method, "ratelimited", True, _retry_after(response))
        if response.status_code != 200:
            raise SlackError(method, f"HTTP {response.status_code}", response.status_code >= 500)
        try:
            answer = response.json()
        except ValueError as exc:
            raise SlackError(method, "an answer that is not JSON", retryable=True) from exc
        if not isinstance(answer, dict):
            raise SlackError(method, "an answer that is not a JSON object", retryable=True)
        if not answer.get("ok"):
            error = str(answer.get("error", "unknown_error"))
            raise SlackError(method, error, error in RETRYABLE, _retry_after(response))
        return answer

    async def call_retrying(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Retried with back-off while the error may pass (Rule 1); raises the last SlackError."""
        for delay in (*BACKOFF, None):
            try:
                return await self.call(method, payload)
            except SlackError as exc:
                if not exc.retryable or delay is None:
                    raise
                wait = exc.retry_after if exc.retry_after is not None else delay * (0.5 + random.random())
                await asyncio.sleep(min(wait, MAX_RETRY_AFTER))
        raise AssertionError("unreachable")

    async def respond(self, response_url: str, payload: dict[str, Any]) -> None:
        """Answer an interaction through its ``response_url`` (one attempt; counted)."""
        parts = urlsplit(response_url)
        host = parts.hostname or ""
        if not (parts.scheme == "https" and (host == "slack.com" or host.endswith(".slack.com"))
                or host == self._api_host):
            log.warning("ignored a response_url outside Slack (%s)", host)
            return
        try:
            response = await self.http.post(response_url, json=payload)
        except httpx.HTTPError as exc:
            self.metrics.notify_errors.labels("slack").inc()
            log.warning("Slack response_url failed: %s", type(exc).__name__)
            return
        if response.status_code != 200:
            self.metrics.notify_errors.labels("slack").inc()
            log.warning("Slack response_url failed: HTTP %s", response.status_code)

    async def aclose(self) -> None:
        await self.http.aclose()


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


def slack_reviewers(settings: Settings) -> dict[str, Reviewer]:
    """Slack member id → the reviewer it acts as (users' and tokens' ``slack``), with the
    groups of every entry of that name that carries the id."""
    groups: dict[tuple[str, str], list[str]] = {}
    principals = [(p.slack, p.name, p.groups) for p in settings.review.users]
    principals += [(p.slack, p.name, p.groups) for p in settings.review.tokens]
    for slack, name, its_groups in principals:
        if slack is not None:
            found = groups.setdefault((slack, name), [])
            found += [g for g in its_groups if g not in found]
    return {slack: Reviewer(name, tuple(g)) for (slack, name), g in groups.items()}


class SlackChannel:
    """Posts holds to ``review.slack.channel`` and keeps each message in step (Rules 2, 3)."""

    def __init__(self, settings: Settings, store: AsyncStore, metrics: Metrics,
                 clock: Callable[[], float], client: SlackClient | None = None) -> None:
        assert settings.review.slack is not None
        self.slack = settings.review.slack
        self.public_url = settings.review.public_url.rstrip("/")
        self.store = store
        self.clock = clock
        self.client = client or SlackClient(self.slack, metrics)
        self.reviewers = slack_reviewers(settings)
        self._busy: set[str] = set()
        self._again: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._limit = asyncio.Semaphore(MAX_SYNCS)
        self._rendered: OrderedDict[str, str] = OrderedDict()  # id → digest of the blocks last sent

    def start(self, events: EventBus) -> asyncio.Task[None]:
        """Subscribe now (no hold made after this call is missed), then follow the bus."""
        return asyncio.create_task(self._run(events, events.subscribe()), name="hitl-slack")

    async def _run(self, events: EventBus, queue: asyncio.Queue[dict[str, Any]]) -> None:
        try:
            loop = asyncio.get_running_loop()
            caught_up = -CATCH_UP_SECONDS
            while True:
                # By the clock, not by a quiet bus: a busy gate never leaves it idle that long.
                due = caught_up + CATCH_UP_SECONDS - loop.time()
                if due <= 0:
                    await self.catch_up()
                    caught_up = loop.time()
                    continue
                try:
                    async with asyncio.timeout(due):  # not wait_for: 3.11's may swallow a cancel
                        event = await queue.get()
                except TimeoutError:
                    continue
                if event.get("type") == "closed":  # the process stops (EventBus.close)
                    return
                if event.get("type") in ("held", "changed") and isinstance(event.get("id"), str):
                    self.schedule(event["id"])
        finally:
            events.unsubscribe(queue)
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.client.aclose()

    async def catch_up(self) -> None:
        """Post what is unposted and update what is stale (after a restart, a failed post)."""
        try:
            for request_id in await self.store.slack_unsynced(self.clock()):
                self.schedule(request_id)
        except StoreError as exc:
            log.warning("cannot read which Slack messages are behind: %s", exc)

    def schedule(self, request_id: str) -> None:
        """Bring this record's message in step, now or right after the sync under way (Rule 3)."""
        if request_id in self._busy:
            self._again.add(request_id)
            return
        self._busy.add(request_id)
        task = asyncio.create_task(self._sync_until_settled(request_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sync_until_settled(self, request_id: str) -> None:
        try:
            async with self._limit:
                while True:
                    self._again.discard(request_id)
                    try:
                        await self._sync(request_id)
                    except StoreError as exc:
                        log.warning("Slack message of %s not synced (store: %s); the catch-up retries",
                                    request_id, exc)
                    except SlackError:
                        pass  # counted and logged by the client; the catch-up retries
                    if request_id not in self._again:
                        break
        finally:
            self._busy.discard(request_id)
            self._again.discard(request_id)

    async def _sync(self, request_id: str) -> None:
        rec = await self.store.get(request_id)
        if rec is None:
            return
        if rec.slack_ts is None:
            if rec.status is not HoldStatus.PENDING or rec.deadline <= self.clock():
                return  # decided before it was ever posted: nothing to ask anyone
            if not await self.store.slack_claim(request_id):
                return  # another process posts it
            message = hold_message(rec, self.public_url)
            try:
                answer = await self.client.call_retrying("chat.postMessage", {
                    "channel": self.slack.channel, **message, **_PLAIN})
            except SlackError:
                await self.store.slack_release(request_id)
                raise
            channel, ts = str(answer.get("channel") or self.slack.channel), str(answer.get("ts") or "")
            if not ts:
                log.error("Slack chat.postMessage for %s answered without a ts", request_id)
                return
            await self.store.slack_posted(request_id, channel, ts, rec.status.value)
            self._remember(request_id, _digest(message))
            log.info("posted %s to Slack (%s %s)", request_id, channel, ts)
            rec = await self.store.get(request_id)  # decided while it was being posted?
            if rec is None:
                return
        if not rec.slack_ts or not rec.slack_channel:
            return  # being posted by another process (or its post was lost: Rule 2)
        message = hold_message(rec, self.public_url)
        digest = _digest(message)
        if self._rendered.get(request_id) == digest and rec.slack_shown == rec.status.value:
            return
        await self.client.call_retrying("chat.update", {
            "channel": rec.slack_channel, "ts": rec.slack_ts, **message, "parse": "none", "link_names": False})
        self._remember(request_id, digest)
        if rec.slack_shown != rec.status.value:
            await self.store.slack_shown(request_id, rec.status.value)

    def _remember(self, request_id: str, digest: str) -> None:
        self._rendered[request_id] = digest
        self._rendered.move_to_end(request_id)
        if len(self._rendered) > RENDERED_LIMIT:
            self._rendered.popitem(last=False)


# Slack parses no names or links of its own in our texts (slack_blocks, Rule 1).
_PLAIN = {"parse": "none", "link_names": False, "unfurl_links": False, "unfurl_media": False}


def _digest(message: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(message, sort_keys=True).encode()).hexdigest()
