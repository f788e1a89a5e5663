"""Re-judge recorded traffic against other policies: what would they hold, deny, allow?

The rows come from the decision log (``decision_log.py``): each judged request's policy
input, redacted, with what the policy of the day answered. ``replay`` asks the given engine
again for every row and tallies both answers: totals per action, per rule, and each change
of decision ("was allow/default, now hold/payments.small") with a few examples. Nothing is
sent anywhere and nothing is written.

The examples name only agent, method, host and path: the same fields the access log shows,
never a header, a query or a body.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from proxy import mcp
from proxy.errors import PolicyError
from proxy.model import Decision
from proxy.policy.engine import PolicyEngine

ACTIONS = ("allow", "hold", "deny", "error")
EXAMPLES = 3


@dataclass
class Change:
    was: str  # "allow/default"
    now: str  # "hold/payments.small"
    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class Report:
    rows: int = 0
    first: float | None = None
    last: float | None = None
    body_cut: int = 0  # rows whose body was kept only as its summary
    was: Counter[str] = field(default_factory=Counter)
    now: Counter[str] = field(default_factory=Counter)
    was_shadow: int = 0
    now_shadow: int = 0
    now_by_rule: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    changes: dict[tuple[str, str], Change] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)  # policy error messages (first line)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.rows, "first": self.first, "last": self.last, "body_cut": self.body_cut,
            "recorded": {a: self.was[a] for a in ACTIONS}, "now": {a: self.now[a] for a in ACTIONS},
            "recorded_shadow": self.was_shadow, "now_shadow": self.now_shadow,
            "rules": {rule: dict(c) for rule, c in sorted(self.now_by_rule.items())},
            "changes": [{"was": c.was, "now": c.now, "count": c.count, "examples": c.examples}
                        for c in self.sorted_changes()],
            "errors": dict(self.errors),
        }

    def sorted_changes(self) -> list[Change]:
        return sorted(self.changes.values(), key=lambda c: (-c.count, c.was, c.now))


async def replay(rows: list[dict[str, Any]], engine: PolicyEngine, global_shadow: bool = False) -> Report:
    report = Report()
    for row in rows:
        report.rows += 1
        at = float(row["at"])
        report.first = at if report.first is None else min(report.first, at)
        report.last = at if report.last is None else max(report.last, at)
        report.body_cut += bool(row["body_cut"])
        was = f"{row['action']}/{row['rule']}"
        report.was[row["action"]] += 1
        report.was_shadow += bool(row["shadow"])
        try:
            decision = await _decide(engine, json.loads(row["input"]))
            action, rule = decision.action.value, decision.rule
            report.now_shadow += action != "allow" and (decision.shadow or global_shadow)
        except PolicyError as exc:
            action, rule = "error", "policy_error"
            report.errors[str(exc).splitlines()[0][:200]] += 1
        now = f"{action}/{rule}"
        report.now[action] += 1
        report.now_by_rule[rule][action] += 1
        if now != was:
            change = report.changes.setdefault((was, now), Change(was, now))
            change.count += 1
            if len(change.examples) < EXAMPLES:
                change.examples.append(f"{row['agent']} {row['method']} {row['host']}{row['path']}")
    return report


async def _decide(engine: PolicyEngine, doc: dict[str, Any]) -> Decision:
    """As the gate judges: an MCP message call by call (``input.mcp``), the strictest wins."""
    calls = doc.pop("mcp_calls", None)
    if not calls:
        return await engine.decide(doc)
    return mcp.strictest([await engine.decide({**doc, "mcp": call}) for call in calls])


def format_report(report: Report, since: str, policies: str, sample_note: str = "") -> str:
    from proxy.store.records import rfc3339

    if not report.rows:
        return f"no requests recorded in the last {since}: nothing to replay\n"
    lines = [(f"Replayed {report.rows} requests recorded in the last {since} "
              f"({rfc3339(report.first)} to {rfc3339(report.last)}) against {policies}."), ""]
    if sample_note:
        lines += [sample_note, ""]
    lines.append(f"  {'':8}{'recorded':>10}{'now':>10}")
    for action in ACTIONS:
        lines.append(f"  {action:8}{report.was[action]:>10}{report.now[action]:>10}")
    if report.was_shadow or report.now_shadow:
        lines.append(f"  (in shadow: {report.was_shadow} recorded, {report.now_shadow} now: let through, "
                     "only recorded)")
    lines += ["", "Now, per rule:"]
    for rule, counts in sorted(report.now_by_rule.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])):
        parts = ", ".join(f"{counts[a]} {a}" for a in ACTIONS if counts[a])
        lines.append(f"  {rule}: {parts}")
    changes = report.sorted_changes()
    lines += ["", f"Changed decisions: {sum(c.count for c in changes)}" + ("" if changes else " (none)")]
    for c in changes:
        lines.append(f"  {c.count:>6}  was {c.was} -> now {c.now}")
        lines += [f"          e.g. {e}" for e in c.examples]
    if report.errors:
        lines += ["", "Policy errors now:"]
        lines += [f"  {n:>6}  {msg}" for msg, n in report.errors.most_common(5)]
    if report.body_cut:
        lines += ["", (f"{report.body_cut} requests had bodies over 4 KiB: they were judged on the "
                       "recorded summary (the first 4 KiB, secrets redacted).")]
    return "\n".join(lines) + "\n"
