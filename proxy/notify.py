"""Webhook notifications of new holds (``notify.webhooks``).

The gate publishes a ``held`` event on its in-process bus; ``Notifier.run`` reads the bus
and posts each event to every configured webhook, each post in a task of its own. So:

Rule 1. Notifying never blocks the agent or the gate: a slow or dead webhook delays nothing
        but its own post (bounded by ``TIMEOUT``), and the bus is drained at once.
Rule 2. A failed post (connection error, timeout, a non-2xx answer) is retried once, then
        counted in ``hitl_notify_errors_total{channel="webhook"}`` and logged — by host only, since a Slack
        webhook URL is itself a secret.
Rule 3. At most ``MAX_IN_FLIGHT`` posts run at once; beyond that a notification is dropped
        and counted as a failure, so that a dead webhook under a burst of holds cannot grow
        memory without bound.
Rule 4. The payload carries what a reviewer needs to decide to look — agent, method, host,
        path, message, rule and a link — never headers, bodies or query strings.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from proxy.config import Webhook
from proxy.events import EventBus
from proxy.metrics import Metrics

log = logging.getLogger("hitl.notify")

TIMEOUT = 10.0
RETRY_DELAY = 1.0
MAX_IN_FLIGHT = 64


def json_payload(event: dict[str, Any], review_url: str) -> dict[str, Any]:
    deadline = event.get("deadline")
    return {
        "event": "held",
        "id": event["id"],
        "agent": event.get("agent"),
        "method": event.get("method"),
        "host": event.get("host"),
        "path": event.get("path"),
        "message": event.get("message"),
        "rule": event.get("rule"),
        "reviewers": event.get("reviewers", []),
        "deadline": datetime.fromtimestamp(deadline, UTC).isoformat().replace("+00:00", "Z")
        if isinstance(deadline, int | float) else None,
        "review_url": review_url,
    }


def slack_payload(event: dict[str, Any], review_url: str) -> dict[str, Any]:
    what = f"{event.get('method', '?')} {event.get('host', '?')}{event.get('path', '')}"
    text = (f"Approval needed: *{_slack_escape(str(event.get('agent')))}* wants to "
            f"`{_slack_escape(what)}` — {_slack_escape(event.get('message') or 'this request needs approval')} "
            f"(rule `{_slack_escape(str(event.get('rule')))}`). <{review_url}|Review {event['id']}>")
    return {"text": text, "unfurl_links": False}


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn treats &, < and > as control characters.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


FORMATS = {"json": json_payload, "slack": slack_payload}


class Notifier:
    def __init__(self, webhooks: tuple[Webhook, ...], public_url: str, metrics: Metrics,
                 client: httpx.AsyncClient | None = None) -> None:
        self.webhooks = webhooks
        self.public_url = public_url.rstrip("/")
        self.metrics = metrics
        # trust_env off: the proxy's own HTTP_PROXY (if any) is not the way to a webhook.
        self.client = client or httpx.AsyncClient(timeout=TIMEOUT, trust_env=False, follow_redirects=False)
        self._in_flight: set[asyncio.Task[None]] = set()

    def start(self, events: EventBus) -> asyncio.Task[None]:
        """Subscribe now (so no hold made after this call is missed) and read the bus in a
        task until it is cancelled (Rule 1)."""
        return asyncio.create_task(self._run(events, events.subscribe()), name="hitl-notify")

    async def _run(self, events: EventBus, queue: asyncio.Queue[dict[str, Any]]) -> None:
        try:
            while True:
                event = await queue.get()
                if event.get("type") == "held":
                    self.notify(event)
        finally:
            events.unsubscribe(queue)
            for task in list(self._in_flight):
                task.cancel()
            if self._in_flight:
                await asyncio.gather(*self._in_flight, return_exceptions=True)
            await self.client.aclose()

    def notify(self, event: dict[str, Any]) -> None:
        review_url = f"{self.public_url}/requests/{event['id']}"
        for hook in self.webhooks:
            if len(self._in_flight) >= MAX_IN_FLIGHT:  # Rule 3
                self._count_failure(hook)
                log.error("webhook to %s skipped for %s: %d notifications already in flight",
                          _where(hook.url), event["id"], MAX_IN_FLIGHT)
                continue
            payload = FORMATS[hook.format](event, review_url)
            task = asyncio.create_task(self._post(hook, payload, event["id"]))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    def _count_failure(self, hook: Webhook) -> None:
        # The per-channel count of docs/operations.md (Slack's API calls count as channel="slack"), and the
        # older per-format one that existing alerts may read.
        self.metrics.notify_errors.labels("webhook").inc()
        self.metrics.notify_failures.labels(hook.format).inc()

    async def _post(self, hook: Webhook, payload: dict[str, Any], request_id: str) -> None:
        problem = ""
        for attempt in range(2):  # Rule 2: one retry
            if attempt:
                await asyncio.sleep(RETRY_DELAY)
            try:
                response = await self.client.post(hook.url, json=payload)
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
                continue
            if response.is_success:
                return
            problem = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code != 429:
                break  # a client error will not fix itself
        self._count_failure(hook)
        log.warning("webhook notification to %s for %s failed: %s", _where(hook.url), request_id, problem,
                    extra={"request_id": request_id, "webhook_host": _where(hook.url)})


def _where(url: str) -> str:
    """The webhook's scheme and host only: its path is often the secret (Slack, Discord)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
