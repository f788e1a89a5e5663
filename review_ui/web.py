"""The reviewer web UI: login, the live queue, a request's detail, history, standing grants.

Server-rendered with Jinja2 (autoescaped: request content is attacker-controlled). Decisions
go through the JSON review API from ``static/app.js`` with the session's CSRF token, so the
UI and the API share one set of rules. Pages without a session redirect to the
login page; the session rules live in ``sessions.py``.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from proxy.errors import StoreError
from proxy.gate import Gate
from proxy.model import Reviewer
from proxy.redact import REDACTED
from review_ui import present
from review_ui.errors import Unauthorized
from review_ui.serialize import grant_json, request_json
from review_ui.sessions import COOKIE, LOGIN_COOKIE, AmbiguousIdentity, Session, Sessions
from review_ui.tuning import grant_offer

HERE = Path(__file__).parent
OPEN_STATUSES = ["pending", "approved", "forwarding"]
DECIDED_STATUSES = ["approved", "forwarding", "forwarded", "rejected", "expired", "failed"]
QUEUE_FILTERS = {"pending": ["pending"], "approved": ["approved", "forwarding"],
                 "open": OPEN_STATUSES, "failed": ["failed"]}
QUEUE_LIMIT = 500
ENDED_GRANTS_SHOWN = 100

Page = Callable[[Request, Session, Reviewer], Awaitable[Response]]


def _expires_in(value: str | None) -> str:
    """The server's first paint of a grant's countdown; the page's script keeps it ticking."""
    t = present.parse_time(value)
    if t is None:
        return ""
    left = (t - datetime.now(UTC)).total_seconds()
    return "expired" if left <= 0 else f"expires in {present.duration(left)}"


def _ended_at(grant: dict[str, Any]) -> str:
    """When a grant stopped applying: revoked, or expired, whichever came first."""
    revoked: str | None = grant["revoked_at"]
    expires: str = grant["expires_at"]
    return min(revoked, expires) if revoked else expires  # RFC 3339 UTC sorts as text


def _safe_next(value: str | None) -> str:
    """Only same-site paths: ``//evil.example`` and ``https://…`` would leave the site."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


class WebUI:
    def __init__(self, gate: Gate, sessions: Sessions) -> None:
        self.gate = gate
        self.sessions = sessions
        self.secret_headers = gate.settings.proxy.secret_headers
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"),
                               autoescape=select_autoescape(default=True, default_for_string=True))
        self.env.filters.update(present.jinja_filters())
        self.env.filters["expires_in"] = _expires_in
        # Read at render time: a failed policy reload shows on every page until fixed.
        # The live views' script labels statuses from the same tables as the pages (present.py).
        self.env.globals["status_labels"] = present.STATUS_LABELS
        self.env.globals["status_tones"] = present.STATUS_TONE
        self.env.globals["redacted"] = REDACTED
        self.env.globals["policy_error"] = lambda: getattr(gate, "policy_error", None)

    def routes(self) -> list[BaseRoute]:
        p = self._page
        return [
            Route("/", p(self.queue)),
            Route("/queue.json", p(self.queue_json)),
            Route("/requests/{id}", p(self.detail)),
            Route("/history", p(self.history)),
            Route("/grants", p(self.grants)),
            Route("/grants.json", p(self.grants_json)),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]

    # -- plumbing ------------------------------------------------------------------------
    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def _set_session(self, response: Response, cookie: str) -> None:
        response.set_cookie(COOKIE, cookie, max_age=12 * 3600, **self.sessions.cookie_kwargs())  # type: ignore[arg-type]

    def _page(self, handler: Page) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await run(request)
            except AmbiguousIdentity as exc:  # a duplicated trusted header: no one is logged in
                if request.url.path.endswith(".json"):
                    return JSONResponse({"error": exc.code, "message": exc.message}, status_code=exc.status)
                return self.render("error.html", exc.status, title="Who are you?", message=exc.message)

        async def run(request: Request) -> Response:
            found = self.sessions.current(request)
            fresh_cookie = None
            if found is None and (named := self.sessions.header_user(request)) is not None:
                # Behind an auth proxy: the header logs the reviewer in; the session exists
                # to carry the CSRF token.
                session, fresh_cookie = self.sessions.issue(named[0], "header", named[0])
                found = (session, Reviewer(named[0], named[1]))
            if found is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                if request.url.path.endswith(".json"):
                    raise Unauthorized("log in")
                return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
            session, reviewer = found
            try:
                response = await handler(request, session, reviewer)
            except StoreError as exc:
                response = self.render("error.html", 503, title="Store unavailable", message=str(exc),
                                       **self._common(session, reviewer))
            if fresh_cookie:
                self._set_session(response, fresh_cookie)
            return response

        endpoint.__name__ = handler.__name__
        return endpoint

    def _common(self, session: Session, reviewer: Reviewer) -> dict[str, Any]:
        return {"reviewer": reviewer, "csrf": self.sessions.csrf_token(session),
                "can_logout": session.method != "header"}

    def _json(self, rec: Any, reviewer: Reviewer) -> dict[str, Any]:
        return request_json(rec, self.secret_headers, reviewer)

    # -- login ---------------------------------------------------------------------------
    def _address(self, request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def _login_page(self, request: Request, status: int = 200, error: str = "",
                    name: str = "") -> Response:
        token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
        response = self.render("login.html", status, error=error, name=name, login_csrf=token,
                               next=_safe_next(request.query_params.get("next")),
                               has_users=bool(self.gate.settings.review.users))
        response.set_cookie(LOGIN_COOKIE, token, max_age=3600, **self.sessions.cookie_kwargs())  # type: ignore[arg-type]
        return response

    async def login_form(self, request: Request) -> Response:
        address = self._address(request)
        token = request.query_params.get("token")
        if token is not None:
            if wait := self.sessions.limiter.blocked(address):
                return self._login_page(request, 429, f"Too many failed logins. Try again in {wait} s.")
            issued = self.sessions.check_admin_token(token)
            if issued is None:
                self.sessions.limiter.failed(address)
                return self._login_page(request, 401, "That login link is not valid (any more). "
                                        "Use the link printed by the latest `hitl-proxy serve`.")
            # One use, across every process sharing the store: a link that leaked through a
            # browser history, a log or a screen share does not log anyone else in.
            if not await self.gate.store.use_once(f"admin-login:{issued[0].binding}", self.gate.clock()):
                return self._login_page(request, 401, "That login link was already used. Restart "
                                        "`hitl-proxy serve` for a new one, or configure review.users.")
            # Redirect at once, so the token leaves the address bar and the history.
            response = RedirectResponse("/", status_code=303)
            self._set_session(response, issued[1])
            return response
        if self.sessions.current(request) is not None:
            return RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
        return self._login_page(request)

    async def login(self, request: Request) -> Response:
        address = self._address(request)
        form = await request.form()
        name = str(form.get("name", ""))[:200]
        password = str(form.get("password", ""))[:1000]
        sent = str(form.get("csrf", ""))
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if not cookie or not hmac.compare_digest(sent.encode(), cookie.encode()):
            return self._login_page(request, 403, "Your login form expired. Please try again.", name)
        if wait := self.sessions.limiter.blocked(address, name):
            return self._login_page(request, 429, f"Too many failed logins. Try again in {wait} s.", name)
        issued = await self.sessions.check_password(name, password) if name and password else None
        if issued is None:
            self.sessions.limiter.failed(address, name)
            return self._login_page(request, 401, "Wrong user name or password.", name)
        self.sessions.limiter.succeeded(name)
        response = RedirectResponse(_safe_next(str(form.get("next", "/"))), status_code=303)
        self._set_session(response, issued[1])
        response.delete_cookie(LOGIN_COOKIE, path="/")
        return response

    async def logout(self, request: Request) -> Response:
        """Only our own page logs a reviewer out: a valid session and its CSRF token. A post
        without them (another site's form: its cookie-less cross-site POST) changes nothing,
        not even the cookie, which its answer could otherwise delete."""
        try:
            found = self.sessions.current(request)
        except AmbiguousIdentity:
            found = None
        if found is None:
            return RedirectResponse("/login", status_code=303)
        form = await request.form()
        if not self.sessions.csrf_ok(found[0], str(form.get("csrf", ""))):
            return self.render("error.html", 403, title="Not logged out",
                               message="The logout form was stale (missing CSRF token). "
                                       "Go back, reload and try again.")
        # Off the event loop: the revocation is written to disk and fsynced (sessions.py).
        await asyncio.to_thread(self.sessions.revoke, found[0])
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # -- pages ---------------------------------------------------------------------------
    async def _queue_items(self, request: Request, reviewer: Reviewer) -> dict[str, Any]:
        q = request.query_params
        status = q.get("status", "pending")
        statuses = QUEUE_FILTERS.get(status, ["pending"])
        agent, host = q.get("agent", "").strip(), q.get("host", "").strip()
        items, _ = await self.gate.store.list_requests(statuses=statuses, agent=agent or None,
                                              host=host or None, limit=QUEUE_LIMIT)
        rows = sorted((self._json(r, reviewer) for r in items), key=lambda r: r["deadline"] or "")
        return {"items": rows, "pending": await self.gate.store.count_pending(),
                "filters": {"status": status if status in QUEUE_FILTERS else "pending",
                            "agent": agent, "host": host}}

    async def queue(self, request: Request, session: Session, reviewer: Reviewer) -> Response:
        data = await self._queue_items(request, reviewer)
        agents, hosts = await self._facets()
        grants_active = len(await self.gate.store.list_grants(self.gate.clock()))
        return self.render("queue.html", page="queue", agents=agents, hosts=hosts,
                           statuses=list(QUEUE_FILTERS), grants_active=grants_active,
                           **data, **self._common(session, reviewer))

    async def queue_json(self, request: Request, session: Session, reviewer: Reviewer) -> Response:
        data = await self._queue_items(request, reviewer)
        return JSONResponse({"items": data["items"], "pending": data["pending"]},
                            headers={"Cache-Control": "no-store"})

    async def _facets(self) -> tuple[list[str], list[str]]:
        """Agents and hosts seen among recent requests, for the filter pickers."""
        items, _ = await self.gate.store.list_requests(limit=QUEUE_LIMIT)
        return (sorted({r.agent for r in items}), sorted({r.request.host for r in items}))

    async def detail(self, request: Request, session: Session, reviewer: Reviewer) -> Response:
        rec = await self.gate.store.get(request.path_params["id"])
        common = self._common(session, reviewer)
        if rec is None:
            return self.render("error.html", 404, title="Not found",
                               message="There is no held request with that id.", **common)
        item = self._json(rec, reviewer)
        body = present.present_body(item["body_text"], item["body_size"], item["headers"])
        edit_body = None
        if item.get("edit"):
            e = item["edit"]
            edit_body = present.present_body(e["body_text"], e["body_size"], e["headers"])
        return self.render(
            "detail.html", page="detail", item=item, body=body, edit_body=edit_body,
            json_body=body.kind == "json" or present.is_json_type(present.content_type(item["headers"])),
            edit_headers=present.editable_headers(item["headers"]),
            tool_calls=present.tool_calls(item.get("mcp")),
            edited_calls=present.tool_calls((item.get("edit") or {}).get("mcp")),
            offer=await grant_offer(self.gate, rec, reviewer),  # tuning.py: the third similar approval
            pending=await self.gate.store.count_pending(), **common)

    async def history(self, request: Request, session: Session, reviewer: Reviewer) -> Response:
        q = request.query_params
        filters = {k: q.get(k, "").strip()[:200] for k in ("agent", "host", "q", "outcome")}
        statuses = DECIDED_STATUSES
        if filters["outcome"] in DECIDED_STATUSES:
            statuses = [filters["outcome"]]
        items, cursor = await self.gate.store.list_requests(
            statuses=statuses, agent=filters["agent"] or None, host=filters["host"] or None,
            text=filters["q"] or None, limit=50, cursor=q.get("cursor") or None)
        older = None
        if cursor:
            older = "/history?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in filters.items() if v)
            older += ("&" if older[-1] != "?" else "") + f"cursor={quote(cursor, safe='')}"
        return self.render("history.html", page="history", items=[self._json(r, reviewer) for r in items],
                           filters=filters, outcomes=DECIDED_STATUSES, older=older,
                           pending=await self.gate.store.count_pending(), **self._common(session, reviewer))

    async def _grants(self) -> dict[str, Any]:
        """Active grants newest first; then the ended ones, the most recently ended first."""
        now = self.gate.clock()
        active = [grant_json(g, now) for g in await self.gate.store.list_grants(now)]
        ended = [grant_json(g, now) for g in await self.gate.store.list_grants(now, True)
                 if not g.active(now)]
        for g in ended:
            g["ended_at"] = _ended_at(g)
        ended.sort(key=lambda g: g["ended_at"], reverse=True)
        return {"active": active, "ended": ended[:ENDED_GRANTS_SHOWN],
                "pending": await self.gate.store.count_pending()}

    async def grants(self, request: Request, session: Session, reviewer: Reviewer) -> Response:
        # Any reviewer may revoke, as DELETE /api/grants/{id} allows: stopping a standing
        # approval only ever sends requests back to review.
        return self.render("grants.html", page="grants", **await self._grants(),
                           **self._common(session, reviewer))

    async def grants_json(self, request: Request, session: Session, reviewer: Reviewer) -> Response:
        return JSONResponse(await self._grants(), headers={"Cache-Control": "no-store"})
