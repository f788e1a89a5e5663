"""Prometheus metrics (docs/operations.md), on a registry of their own so that tests and several
gates in one process never share counters.

Counters are named without ``_total``: prometheus-client appends it, so the exposition
carries ``hitl_requests_total``, ``hitl_decisions_total`` and so on. The gauges that
describe the store (pending requests, the oldest one's age, active grants) are read from
the store at each scrape (``refresh``), so they are right after a restart and when several
processes share one store; the gate's own ``inc``/``dec`` only keep them roughly current
between scrapes.

With ``proxy.workers`` above 1, every process of the gate counts into files under one
folder (prometheus-client's multiprocess mode, switched on by ``share_between_processes``
before any Metrics is made) and a scrape sums them: the counters are the whole gate's.
The store-backed gauges are set only by the scraping process ("mostrecent").
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector

from proxy import __version__

# Policy evaluation is tens to hundreds of microseconds; a remote OPA adds milliseconds.
EVAL_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.25, 1.0)
# A human decision takes seconds to hours (the default deadline is 15 minutes).
DECISION_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400)
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

ACTIONS = ("allow", "deny", "hold", "error")
OUTCOMES = ("approved", "rejected", "expired", "granted")
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own variable


def share_between_processes(folder: str) -> None:
    """Count into files under ``folder`` from now on, in this process and its children."""
    os.environ[MULTIPROCESS_DIR] = folder
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._shared = os.environ.get(MULTIPROCESS_DIR) if values.ValueClass is not values.MutexValue else None
        r = self.registry
        self.requests = Counter("hitl_requests", "Requests judged by policy, by action and rule",
                                ["action", "rule"], registry=r)
        self._request_children: dict[tuple[str, str], Any] = {}
        self.decisions = Counter("hitl_decisions", "Outcomes of held requests, by outcome and rule",
                                 ["outcome", "rule"], registry=r)
        self.pending = Gauge("hitl_pending_requests", "Held requests waiting for a decision", registry=r, multiprocess_mode="mostrecent")
        self.oldest_pending = Gauge("hitl_oldest_pending_age_seconds",
                                    "Age of the oldest held request still waiting (0 when none)", registry=r, multiprocess_mode="mostrecent")
        self.decision_seconds = Histogram("hitl_decision_seconds", "Time from hold to a reviewer's decision",
                                          ["rule"], buckets=DECISION_BUCKETS, registry=r)
        self.policy_eval = Histogram("hitl_policy_eval_seconds", "Policy evaluation time",
                                     buckets=EVAL_BUCKETS, registry=r)
        self.upstream_seconds = Histogram("hitl_upstream_seconds", "Upstream time to response headers",
                                          buckets=UPSTREAM_BUCKETS, registry=r)
        self.upstream_errors = Counter("hitl_upstream_errors", "Upstream connection or protocol failures",
                                       registry=r)
        self.grants_active = Gauge("hitl_grants_active", "Standing approvals currently in force", registry=r, multiprocess_mode="mostrecent")
        self.connections = Counter("hitl_connections", "Agent connections accepted, by listener kind",
                                   ["kind"], registry=r)
        self.tunnel_bytes = Counter("hitl_tunnel_bytes", "Bytes copied through blind tunnels",
                                    ["direction"], registry=r)
        self.notify_failures = Counter("hitl_notify_failures", "Webhook notifications that failed",
                                       ["format"], registry=r)
        self.notify_errors = Counter("hitl_notify_errors", "Failed calls to a notification channel's API"
                                     " (Slack's Web API), each retried in the background",
                                     ["channel"], registry=r)
        self.policy_reloads = Counter("hitl_policy_reloads", "Policy reloads, by result", ["result"],
                                      registry=r)
        self.shadow = Counter("hitl_shadow", "Holds and denies let through in shadow mode, by would-be "
                              "action and rule", ["action", "rule"], registry=r)
        self.decision_log_dropped = Counter("hitl_decision_log_dropped", "Shadow events and decision log "
                                            "rows dropped because the store could not keep up", registry=r)
        # Per-rule insights over the last 7 days (proxy/insights.py), recomputed at most once a minute.
        self.rule_holds = Gauge("hitl_rule_holds", "Holds per rule over the last 7 days", ["rule"],
                                registry=r, multiprocess_mode="mostrecent")
        self.rule_outcome_ratio = Gauge("hitl_rule_outcome_ratio", "Share of a rule's finished holds "
                                        "approved, rejected or expired (7 days)", ["rule", "outcome"],
                                        registry=r, multiprocess_mode="mostrecent")
        self.rule_decision_seconds = Gauge("hitl_rule_decision_seconds", "Median and p90 time from hold to "
                                           "a reviewer's decision, per rule (7 days)", ["rule", "quantile"],
                                           registry=r, multiprocess_mode="mostrecent")
        self.rule_quick_decisions = Gauge("hitl_rule_quick_decisions", "Decisions made within 5 s of the "
                                          "hold, per rule (7 days): a rubber-stamping sign", ["rule"],
                                          registry=r, multiprocess_mode="mostrecent")
        self._insights_at = float("-inf")
        self.store_up = Gauge("hitl_store_up", "1 when the last scrape could read the pending store",
                              registry=r, multiprocess_mode="mostrecent")
        self._build = Info("hitl_build", "Build information", registry=r)
        self._build.info({"version": __version__})

    def count_request(self, action: str, rule: str) -> None:
        """``requests{action, rule}`` + 1, with the labelled child kept: ``labels()`` takes a
        lock and builds a key on every call, and this runs on every request."""
        child = self._request_children.get((action, rule))
        if child is None:
            child = self._request_children[(action, rule)] = self.requests.labels(action, rule)
        child.inc()

    def exposition(self) -> bytes:
        """The Prometheus text of this gate: of every process, when they share their counts."""
        if self._shared is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._shared)  # type: ignore[no-untyped-call]
        registry.register(self._build)
        return generate_latest(registry)

    def observe_upstream(self, seconds: float, error: bool) -> None:
        if error:
            self.upstream_errors.inc()
        else:
            self.upstream_seconds.observe(seconds)

    async def refresh(self, store: Any, now: float) -> None:
        """Set the store-backed gauges from the store itself (called at each scrape).

        A store that cannot be read leaves the last values and sets ``hitl_store_up`` to 0;
        the scrape still answers, and ``/readyz`` reports the store."""
        from proxy.errors import StoreError
        from proxy.insights import GAUGE_EVERY, refresh_gauges

        try:
            pending = await store.count_pending()
            oldest = await store.oldest_pending()
            grants = await store.list_grants(now)
        except StoreError:
            self.store_up.set(0)
            return
        self.store_up.set(1)
        if now - self._insights_at >= GAUGE_EVERY:
            self._insights_at = now
            try:
                await refresh_gauges(self, store, now)
            except StoreError:
                pass  # the next scrape after GAUGE_EVERY tries again; hitl_store_up says the rest
        self.pending.set(pending)
        self.oldest_pending.set(max(0.0, now - oldest) if oldest is not None else 0)
        self.grants_active.set(len(grants))
