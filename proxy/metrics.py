"""Prometheus metrics (DESIGN §9), on a registry of their own so that tests and several
gates in one process never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from proxy import __version__

# Policy evaluation is tens to hundreds of microseconds.
_EVAL_BUCKETS = (25e-6, 50e-6, 100e-6, 150e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 0.01, 0.05, 0.25)
# A human decision takes seconds to hours.
_DECISION_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
_UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("hitl_requests", "Requests judged by policy, by action and rule",
                                ["action", "rule"], registry=r)
        self.decisions = Counter("hitl_decisions", "Outcomes of held requests, by outcome and rule",
                                 ["outcome", "rule"], registry=r)
        self.pending = Gauge("hitl_pending_requests", "Held requests waiting for a decision", registry=r)
        self.decision_seconds = Histogram("hitl_decision_seconds", "Time from hold to decision",
                                          ["rule"], buckets=_DECISION_BUCKETS, registry=r)
        self.policy_eval = Histogram("hitl_policy_eval_seconds", "Policy evaluation time",
                                     buckets=_EVAL_BUCKETS, registry=r)
        self.upstream_seconds = Histogram("hitl_upstream_seconds", "Upstream time to response headers",
                                          buckets=_UPSTREAM_BUCKETS, registry=r)
        self.upstream_errors = Counter("hitl_upstream_errors", "Upstream connection or protocol failures",
                                       registry=r)
        self.grants_active = Gauge("hitl_grants_active", "Standing approvals currently in force", registry=r)
        self.connections = Counter("hitl_connections", "Agent connections accepted, by listener kind",
                                   ["kind"], registry=r)
        self.tunnel_bytes = Counter("hitl_tunnel_bytes", "Bytes copied through blind tunnels",
                                    ["direction"], registry=r)
        self.notify_failures = Counter("hitl_notify_failures", "Webhook notifications that failed",
                                       registry=r)
        self.policy_reloads = Counter("hitl_policy_reloads", "Policy reloads, by result", ["result"],
                                      registry=r)
        Info("hitl_build", "Build information", registry=r).info({"version": __version__})

    def observe_upstream(self, seconds: float, error: bool) -> None:
        if error:
            self.upstream_errors.inc()
        else:
            self.upstream_seconds.observe(seconds)
