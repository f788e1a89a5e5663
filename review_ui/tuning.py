"""Views for tuning policies: "Would have held" (shadow events), per-rule insights, and the
grant offer on a request that reviewers keep approving.

* ``GET /api/shadow?rule=&agent=&host=&window=7d&before=&limit=`` and the page ``/shadow``:
  the holds and denies that shadow mode let through, newest first, with a per-rule summary.
* ``GET /api/insights?window=7d`` and the page ``/insights``: per rule, holds, outcome
  rates, time to decision, quick decisions and suggestions (``proxy/insights.py``).
* ``grant_offer``: when a reviewer is about to approve the third similar request (same
  agent, method, host, port, path and rule) approved within a day, the detail page offers
  to approve it with a time-boxed standing grant, in one click, through the review API's
  own ``grant_minutes`` (so every rule of grants applies unchanged).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.config_types import parse_duration
from proxy.errors import BadRequest, ConfigError
from proxy.gate import Gate
from proxy.insights import QUICK_SECONDS, compute, seconds
from proxy.model import HoldStatus, Reviewer
from proxy.store.records import AuditRecord, HoldRecord
from review_ui.serialize import may_decide

if TYPE_CHECKING:
    from review_ui.sessions import Session
    from review_ui.web import WebUI

WINDOWS = ("1h", "24h", "7d", "30d")
MAX_WINDOW = 366 * 86400.0
SIMILAR_WINDOW = 86400.0  # "within a day"
SIMILAR_BEFORE_OFFER = 2  # approvals before this one: the offer comes with the third
OFFER_MINUTES = 60
SHADOW_PAGE = 50

ApiHandler = Callable[[Request, Reviewer], Awaitable[Response]]


def parse_window(value: str | None) -> tuple[str, float]:
    text = (value or "7d").strip()
    try:
        span = parse_duration(text, "window")
    except ConfigError as exc:
        raise BadRequest(f"window: {exc.problem}") from exc
    if not 60 <= span <= MAX_WINDOW:
        raise BadRequest("window must be between 1m and 366d")
    return text, span


def shadow_json(rec: AuditRecord) -> dict[str, Any]:
    d = rec.detail
    return {"seq": rec.seq, "at": rec.at, "request_id": rec.request_id,
            **{k: d.get(k) for k in ("action", "rule", "message", "agent", "method", "host", "port", "path")}}


class Tuning:
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    # -- data ------------------------------------------------------------------------------
    async def shadow_data(self, request: Request) -> dict[str, Any]:
        q = request.query_params
        window, span = parse_window(q.get("window"))
        since = self.gate.clock() - span
        filters = {k: q.get(k, "").strip()[:200] for k in ("rule", "agent", "host")}
        try:
            limit = int(q.get("limit", str(SHADOW_PAGE)))
            before = int(q["before"]) if q.get("before") else None
        except ValueError as exc:
            raise BadRequest("limit and before must be numbers") from exc
        if not 1 <= limit <= 500:
            raise BadRequest("limit must be between 1 and 500")
        store = self.gate.store
        items = await store.shadow_list(filters=filters, since=since, before=before, limit=limit + 1)
        return {"window": window, "filters": filters,
                "summary": await store.shadow_summary(since, filters),
                "facets": await store.shadow_facets(since),
                "items": [shadow_json(r) for r in items[:limit]],
                "next_before": items[limit - 1].seq if len(items) > limit else None}

    async def insights_data(self, request: Request) -> dict[str, Any]:
        window, span = parse_window(request.query_params.get("window"))
        rules = compute(await self.gate.store.insight_rows(self.gate.clock() - span))
        return {"window": window, "quick_seconds": QUICK_SECONDS, "rules": [r.as_dict() for r in rules],
                "suggestions": [s for r in rules for s in r.suggestions]}

    # -- the review API --------------------------------------------------------------------
    def api_routes(self, authenticated: Callable[[ApiHandler], Callable[[Request], Awaitable[Response]]],
                   ) -> list[Route]:
        async def shadow(request: Request, reviewer: Reviewer) -> Response:
            return JSONResponse(await self.shadow_data(request))

        async def insights(request: Request, reviewer: Reviewer) -> Response:
            return JSONResponse(await self.insights_data(request))

        return [Route("/api/shadow", authenticated(shadow)), Route("/api/insights", authenticated(insights))]

    # -- pages -----------------------------------------------------------------------------
    def page_routes(self, web: WebUI) -> list[Route]:
        web.env.filters["seconds"] = seconds
        def page(name: str, data_of: Callable[[Request], Awaitable[dict[str, Any]]],
                 bad_title: str) -> Callable[[Request, Session, Reviewer], Awaitable[Response]]:
            async def render(request: Request, session: Session, reviewer: Reviewer) -> Response:
                try:
                    data = await data_of(request)
                except BadRequest as exc:
                    return web.render("error.html", 400, title=bad_title, message=exc.message,
                                      **web._common(session, reviewer))
                return web.render(f"{name}.html", page=name, windows=WINDOWS, **data,
                                  pending=await self.gate.store.count_pending(),
                                  **web._common(session, reviewer))
            return render

        shadow = page("shadow", self.shadow_data, "Bad filter")
        insights = page("insights", self.insights_data, "Bad window")
        return [Route("/shadow", web._page(shadow)), Route("/insights", web._page(insights))]


async def grant_offer(gate: Gate, rec: HoldRecord, reviewer: Reviewer) -> dict[str, Any] | None:
    """The one-click grant to offer on this pending request, or None (see the module doc)."""
    if (rec.status is not HoldStatus.PENDING or not rec.grantable or not may_decide(reviewer, rec)
            or len(rec.approved_by) + 1 < rec.approvals_needed or reviewer.name in rec.approved_by):
        return None
    req = rec.request
    similar = await gate.store.similar_approved(
        agent=rec.agent, method=req.method, host=req.host, port=req.port, path=req.path, rule=rec.rule,
        since=gate.clock() - SIMILAR_WINDOW, exclude=rec.id)
    if similar < SIMILAR_BEFORE_OFFER:
        return None
    return {"similar": similar, "agent": rec.agent, "method": req.method, "host": req.authority,
            "path": req.path, "rule": rec.rule, "minutes": OFFER_MINUTES}
