"""The JSON review API (GET /api/openapi.json) and the unauthenticated operational endpoints."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from proxy import mcp
from proxy.errors import BadRequest, NotFound
from proxy.events import CLOSED
from proxy.gate import Gate
from proxy.model import Reviewer, Verdict
from review_ui.auth import ReviewerAuth
from review_ui.errors import Unauthorized
from review_ui.serialize import audit_json, grant_json, request_json

Handler = Callable[[Request], Awaitable[Response]]
AUDIT_PAGE_LIMIT = 1000
STATUSES = {"pending", "approved", "forwarding", "forwarded", "rejected", "expired", "failed"}


class ReviewAPI:
    def __init__(self, gate: Gate, auth: ReviewerAuth, ready: Callable[[], Awaitable[dict[str, bool]]]) -> None:
        self.gate = gate
        self.auth = auth
        self.ready = ready
        self.secret_headers = gate.settings.proxy.secret_headers

    def ops_routes(self) -> list[Route]:
        """Health and metrics: no login, as for any probe or scrape target (docs/operations.md)."""
        return [
            Route("/healthz", self.healthz),
            Route("/readyz", self.readyz),
            Route("/metrics", self.metrics),
        ]

    def routes(self) -> list[Route]:
        a = self._authenticated
        return [
            *self.ops_routes(),
            Route("/api/openapi.json", self.openapi),
            Route("/api/requests", a(self.list_requests)),
            Route("/api/requests/{id}", a(self.get_request)),
            Route("/api/requests/{id}/body", a(self.get_body)),
            Route("/api/requests/{id}/approve", a(self.approve), methods=["POST"]),
            Route("/api/requests/{id}/reject", a(self.reject), methods=["POST"]),
            Route("/api/requests/{id}/comment", a(self.comment), methods=["POST"]),
            Route("/api/grants", a(self.list_grants)),
            Route("/api/grants/{id}", a(self.revoke_grant), methods=["DELETE"]),
            Route("/api/audit", a(self.audit)),
            Route("/api/events", a(self.events)),
            Route("/api/me", a(self.me)),
        ]

    # -- plumbing ------------------------------------------------------------------------
    def _authenticated(self, handler: Callable[[Request, Reviewer], Awaitable[Response]]) -> Handler:
        """The reviewer, or 401. Errors become responses in the app's handlers (errors.py)."""
        async def endpoint(request: Request) -> Response:
            reviewer = await self.auth.reviewer(request)
            if reviewer is None:
                raise Unauthorized("log in, or send Authorization: Bearer <token>")
            return await handler(request, reviewer)

        endpoint.__name__ = handler.__name__
        return endpoint

    async def _json_body(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise BadRequest("the request body must be a JSON object")
        return data

    # -- operational ---------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        checks = await self.ready()
        ok = all(checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks},
                            status_code=200 if ok else 503)

    async def metrics(self, request: Request) -> Response:
        await self.gate.metrics.refresh(self.gate.store, self.gate.clock())  # store-backed gauges
        # Off the loop: with proxy.workers it reads every process's metrics files.
        return Response(await asyncio.to_thread(self.gate.metrics.exposition), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, request: Request) -> Response:
        from review_ui.openapi import SPEC

        return JSONResponse(SPEC)

    # -- requests ------------------------------------------------------------------------
    async def list_requests(self, request: Request, reviewer: Reviewer) -> Response:
        q = request.query_params
        statuses = [s for s in q.get("status", "").split(",") if s]
        if any(s not in STATUSES for s in statuses):
            raise BadRequest(f"status must be one of {', '.join(sorted(STATUSES))}")
        try:
            limit = int(q.get("limit", "50"))
        except ValueError as exc:
            raise BadRequest("limit must be a number") from exc
        if not 1 <= limit <= 500:
            raise BadRequest("limit must be between 1 and 500")
        items, cursor = await self.gate.store.list_requests(
            statuses=statuses or None, agent=q.get("agent") or None, host=q.get("host") or None,
            text=q.get("q") or None, limit=limit, cursor=q.get("cursor") or None)
        return JSONResponse({"items": [request_json(r, self.secret_headers, reviewer) for r in items],
                             "next_cursor": cursor})

    async def get_request(self, request: Request, reviewer: Reviewer) -> Response:
        rec = await self.gate.store.get(request.path_params["id"])
        if rec is None:
            raise NotFound(f"no held request {request.path_params['id']}")
        return JSONResponse(request_json(rec, self.secret_headers, reviewer))

    async def get_body(self, request: Request, reviewer: Reviewer) -> Response:
        """The raw body bytes, which the JSON records cap (the review API). Agent-controlled
        content on the review origin: a download, never rendered (attachment, nosniff, a
        sandboxing CSP), under the body's own media type when it is a well-formed one."""
        rec = await self.gate.store.get(request.path_params["id"])
        if rec is None:
            raise NotFound(f"no held request {request.path_params['id']}")
        edited = request.query_params.get("edited") in ("1", "true")
        req = rec.forward_request() if edited else rec.request
        return Response(req.body, media_type=_media_type(req.header("content-type")), headers={
            "Content-Disposition": f'attachment; filename="{rec.id}{"-edited" if edited else ""}.body"',
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "no-store"})

    async def approve(self, request: Request, reviewer: Reviewer) -> Response:
        data = await self._json_body(request)
        comment = _str(data, "comment")
        edit = data.get("edit") or {}
        if not isinstance(edit, dict):
            raise BadRequest("edit must be an object with body and/or headers")
        edit_body = _edit_body(edit)
        if "arguments" in edit:  # an MCP tool call: the reviewer edited its arguments
            edit_body = await self._edited_arguments(request.path_params["id"], edit, edit_body)
        edit_headers = edit.get("headers") or {}
        if not isinstance(edit_headers, dict) or not all(
                isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in edit_headers.items()):
            raise BadRequest("edit.headers must map header names to strings (or null to remove)")
        grant = data.get("grant_minutes")
        if grant is not None and (not isinstance(grant, int) or isinstance(grant, bool)):
            raise BadRequest("grant_minutes must be a whole number of minutes")
        rec = await self.gate.review(request.path_params["id"], reviewer, Verdict(
            "approve", reviewer.name, comment, edit_body, dict(edit_headers), grant, _digest(data)))
        return JSONResponse(request_json(rec, self.secret_headers, reviewer))

    async def _edited_arguments(self, request_id: str, edit: dict[str, Any], body: bytes | None) -> bytes:
        if body is not None:
            raise BadRequest("edit either the body or the arguments, not both")
        rec = await self.gate.store.get(request_id)
        if rec is None:
            raise NotFound(f"no held request {request_id}")
        try:
            return mcp.with_arguments(rec.request.body, edit["arguments"])
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"edit.arguments: {exc}") from exc

    async def reject(self, request: Request, reviewer: Reviewer) -> Response:
        data = await self._json_body(request)
        rec = await self.gate.review(request.path_params["id"], reviewer,
                                     Verdict("reject", reviewer.name, _str(data, "comment"), digest=_digest(data)))
        return JSONResponse(request_json(rec, self.secret_headers, reviewer))

    async def comment(self, request: Request, reviewer: Reviewer) -> Response:
        data = await self._json_body(request)
        rec = await self.gate.review(request.path_params["id"], reviewer,
                                     Verdict("comment", reviewer.name, _str(data, "comment")))
        return JSONResponse(request_json(rec, self.secret_headers, reviewer))

    async def me(self, request: Request, reviewer: Reviewer) -> Response:
        return JSONResponse({"name": reviewer.name, "groups": list(reviewer.groups)})

    # -- grants and audit ----------------------------------------------------------------
    async def list_grants(self, request: Request, reviewer: Reviewer) -> Response:
        now = self.gate.clock()
        everything = request.query_params.get("all") in ("1", "true")
        grants = await self.gate.store.list_grants(now, everything)
        return JSONResponse({"items": [grant_json(g, now) for g in grants]})

    async def revoke_grant(self, request: Request, reviewer: Reviewer) -> Response:
        now = self.gate.clock()
        grant = await self.gate.store.revoke_grant(request.path_params["id"], reviewer.name, now)
        self.gate.events.publish({"type": "grant_revoked", "id": grant.id})
        return JSONResponse(grant_json(grant, now))

    async def audit(self, request: Request, reviewer: Reviewer) -> Response:
        q = request.query_params
        try:
            after = int(q.get("after", "0"))
            limit = int(q.get("limit", "100"))
        except ValueError as exc:
            raise BadRequest("after and limit must be whole numbers") from exc
        if after < 0 or limit < 1:
            raise BadRequest("after must be 0 or more and limit 1 or more")
        limit = min(limit, AUDIT_PAGE_LIMIT)  # a bigger page is cut to the cap; next_after goes on
        records = await self.gate.store.audit_list(after=after, limit=limit,
                                                   request_id=q.get("request_id") or None)
        return JSONResponse({"items": [audit_json(r) for r in records],
                             "next_after": records[-1].seq if len(records) == limit else None})

    async def events(self, request: Request, reviewer: Reviewer) -> Response:
        queue = self.gate.events.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), 15)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if event is CLOSED:  # the process is stopping
                        return
                    yield f"event: {event.get('type', 'changed')}\ndata: {json.dumps(event)}\n\n"
            finally:
                self.gate.events.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    return value


def _digest(data: dict[str, Any]) -> str | None:
    """The optional ``digest`` of a decision: the content the reviewer saw (docs/policies.md)."""
    value = data.get("digest")
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise BadRequest("digest must be the 64 hex characters of the record's digest")
    return value


MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;\s*[A-Za-z0-9!#$&^_.+-]+=[A-Za-z0-9!#$&^_.+-]+)*")


def _media_type(value: str | None) -> str:
    value = (value or "").strip()
    return value if MEDIA_TYPE.fullmatch(value) else "application/octet-stream"


def _edit_body(edit: dict[str, Any]) -> bytes | None:
    if "body_base64" in edit:
        try:
            return base64.b64decode(edit["body_base64"], validate=True)
        except (binascii.Error, TypeError) as exc:
            raise BadRequest("edit.body_base64 is not valid base64") from exc
    body = edit.get("body")
    if body is None:
        return None
    if isinstance(body, str):
        return body.encode("utf-8")
    # A JSON value: forwarded as its compact JSON text.
    return json.dumps(body, separators=(",", ":")).encode("utf-8")
