"""Per-rule insights for the people who tune policies: which rules waste reviewers' time.

For each rule, over a window: how many requests it held, how they ended (approved by
reviewers, rejected, expired — a deadline's automatic ``on_timeout: allow`` counts as
expired, as in ``hitl_decisions_total``), how long reviewers took (median, p90), and how many
were decided within ``QUICK_SECONDS`` (a sign of rubber-stamping). Suggestions follow from
those numbers once a rule has ``MIN_SAMPLE`` finished holds, so one odd request says nothing.

Pure functions over the store's rows (``store/tuning.py: insight_rows``); the review API,
the web page and the Prometheus gauges (``refresh_gauges``, at most once a minute) all
read ``compute``.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

QUICK_SECONDS = 5.0
MIN_SAMPLE = 10
RUBBER_STAMP_APPROVED = 0.95
TOO_MANY_EXPIRED = 0.2
MOSTLY_REJECTED = 0.8
QUICK_SHARE = 0.5
GAUGE_WINDOW = 7 * 86400.0
GAUGE_EVERY = 60.0  # seconds between recomputations for /metrics


@dataclass
class RuleInsight:
    rule: str
    holds: int = 0
    pending: int = 0
    approved: int = 0
    rejected: int = 0
    expired: int = 0
    approve_rate: float | None = None  # of finished holds
    reject_rate: float | None = None
    expire_rate: float | None = None
    median_seconds: float | None = None  # hold → human decision
    p90_seconds: float | None = None
    quick: int = 0  # human decisions within QUICK_SECONDS
    grantable: bool = False
    suggestions: list[str] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.approved + self.rejected + self.expired

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "finished": self.finished, "quick_seconds": QUICK_SECONDS}


def outcome(row: dict[str, Any]) -> str:
    """pending | approved | rejected | expired, as reviewers (or the deadline) ended it."""
    status = row["status"]
    if status == "pending":
        return "pending"
    if status == "rejected" or int(row["rejects"] or 0) > 0:
        return "rejected"
    if row["approved_digest"] is not None and int(row["approves"] or 0) >= int(row["approvals_needed"] or 1):
        return "approved"  # by reviewers (then maybe forwarded, failed, or lapsed unclaimed)
    if status in ("expired", "approved", "forwarding", "forwarded", "failed"):
        return "expired"  # the deadline decided: expired, or on_timeout allow
    return "pending"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def compute(rows: list[dict[str, Any]]) -> list[RuleInsight]:
    """Per-rule insights over the given holds, the busiest rule first."""
    by_rule: dict[str, RuleInsight] = {}
    waits: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        rule = row["rule"] or "default"
        ins = by_rule.setdefault(rule, RuleInsight(rule))
        ins.holds += 1
        ins.grantable = ins.grantable or bool(row["grantable"])
        end = outcome(row)
        setattr(ins, end, getattr(ins, end) + 1)
        if end in ("approved", "rejected") and row["decided_at"] is not None:
            wait = max(0.0, float(row["decided_at"]) - float(row["created_at"]))
            waits[rule].append(wait)
            ins.quick += wait <= QUICK_SECONDS
    for rule, ins in by_rule.items():
        if ins.finished:
            ins.approve_rate = ins.approved / ins.finished
            ins.reject_rate = ins.rejected / ins.finished
            ins.expire_rate = ins.expired / ins.finished
        if waits[rule]:
            ins.median_seconds = statistics.median(waits[rule])
            ins.p90_seconds = percentile(waits[rule], 0.9)
        ins.suggestions = suggest(ins, len(waits[rule]))
    return sorted(by_rule.values(), key=lambda i: (-i.holds, i.rule))


def suggest(ins: RuleInsight, human: int) -> list[str]:
    out: list[str] = []
    if ins.finished < MIN_SAMPLE:
        return out
    median = f", median {seconds(ins.median_seconds)}" if ins.median_seconds is not None else ""
    if ins.approve_rate is not None and ins.approve_rate >= RUBBER_STAMP_APPROVED:
        advice = ("narrow the rule or allow these requests" if ins.grantable
                  else "raise the threshold or make it grantable")
        out.append(f"{ins.rule}: {ins.holds} holds, {percent(ins.approve_rate)} approved{median}: {advice}")
    if ins.expire_rate is not None and ins.expire_rate >= TOO_MANY_EXPIRED:
        out.append(f"{ins.rule}: {percent(ins.expire_rate)} expired: too few eligible reviewers "
                   "(or a deadline too short for them)")
    if ins.reject_rate is not None and ins.reject_rate >= MOSTLY_REJECTED:
        out.append(f"{ins.rule}: {percent(ins.reject_rate)} rejected: deny these in the policy instead, "
                   "so the agent hears it at once")
    if human >= MIN_SAMPLE and ins.quick / human >= QUICK_SHARE:
        out.append(f"{ins.rule}: {ins.quick} of {human} decisions took {seconds(QUICK_SECONDS)} or less: "
                   "reviewers may be approving without reading (rubber-stamping)")
    return out


def percent(rate: float) -> str:
    text = f"{rate * 100:.1f}".removesuffix(".0")
    return f"{text}%"


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 90:
        return f"{value:.0f} s"
    if value < 5400:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


async def refresh_gauges(metrics: Any, store: Any, now: float) -> None:
    """Set the per-rule gauges (window ``GAUGE_WINDOW``) from the store; the caller limits
    how often (``GAUGE_EVERY``) so that a scrape stays cheap."""
    insights = compute(await store.insight_rows(now - GAUGE_WINDOW))
    for gauge in (metrics.rule_holds, metrics.rule_outcome_ratio, metrics.rule_decision_seconds,
                  metrics.rule_quick_decisions):
        gauge.clear()
    for ins in insights:
        metrics.rule_holds.labels(ins.rule).set(ins.holds)
        metrics.rule_quick_decisions.labels(ins.rule).set(ins.quick)
        for name in ("approved", "rejected", "expired"):
            rate = getattr(ins, {"approved": "approve_rate", "rejected": "reject_rate",
                                 "expired": "expire_rate"}[name])
            if rate is not None:
                metrics.rule_outcome_ratio.labels(ins.rule, name).set(rate)
        if ins.median_seconds is not None and ins.p90_seconds is not None:
            metrics.rule_decision_seconds.labels(ins.rule, "0.5").set(ins.median_seconds)
            metrics.rule_decision_seconds.labels(ins.rule, "0.9").set(ins.p90_seconds)
