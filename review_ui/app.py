"""Assemble the review app: API routes, web UI (when present), security headers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from proxy.config import Settings
from proxy.gate import Gate
from review_ui.api import ReviewAPI
from review_ui.auth import ReviewerAuth
from review_ui.errors import EXCEPTION_HANDLERS
from review_ui.security import SecurityHeaders
from review_ui.sessions import Sessions
from review_ui.tuning import Tuning
from review_ui.web import WebUI

if TYPE_CHECKING:
    from proxy.slack import SlackChannel


def create_app(gate: Gate, auth: ReviewerAuth, ready: Callable[[], Awaitable[dict[str, bool]]],
               *, settings: Settings | None = None, admin_token: str | None = None,
               ops_only: bool = False, slack: SlackChannel | None = None) -> Starlette:
    """The review app; ``ops_only``: health and metrics alone (a ``--role proxy`` process)."""
    api = ReviewAPI(gate, auth, ready)
    routes: list[BaseRoute] = list(api.ops_routes() if ops_only else api.routes())
    tuning = Tuning(gate)  # shadow events, insights (review_ui/tuning.py)
    if not ops_only:
        routes += tuning.api_routes(api._authenticated)
    if settings is not None and not ops_only:  # the web UI: its sessions also authenticate API calls (+ CSRF)
        sessions = Sessions(settings, admin_token)
        auth.session_reviewer = sessions.api_reviewer
        web = WebUI(gate, sessions)
        routes += [*web.routes(), *tuning.page_routes(web)]
    if slack is not None and not ops_only:  # Slack's signed callbacks: no bearer, no session, no CSRF
        # Imported with Slack only: with httpx it is ~2 MiB of RSS that other deployments skip.
        from review_ui.slack import SlackInteractions

        routes += SlackInteractions(gate, slack).routes()
    return Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers=dict(EXCEPTION_HANDLERS),
    )
