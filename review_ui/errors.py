"""The review API's errors, mapped to responses in one place: the app's exception handlers.

Routes raise the project's error types; each becomes the flat JSON of the review API,
``{"error": code, "message": ...}``. A route never catches them itself.

    GateError            its status and code (BadRequest 400, Forbidden 403, CsrfFailed 403, ...)
    Unauthorized         401 unauthorized
    NotFound             404 not_found
    InvalidTransition    409 conflict, with current_status
    StoreError           503 store_unavailable
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.errors import DigestMismatch, GateError, InvalidTransition, NotFound, StoreError


class Unauthorized(GateError):
    status, code = 401, "unauthorized"


def error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status)


async def _gate_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GateError)
    return error(exc.status, exc.code, exc.message)


async def _not_found(request: Request, exc: Exception) -> Response:
    return error(404, "not_found", str(exc))


async def _conflict(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidTransition)
    extra = {"digest": exc.digest} if isinstance(exc, DigestMismatch) else {}  # what it is now
    return error(409, "conflict", str(exc), current_status=exc.current, **extra)


async def _store_error(request: Request, exc: Exception) -> Response:
    return error(503, "store_unavailable", str(exc))


async def _no_route(request: Request, exc: Exception) -> Response:
    return error(404, "not_found", f"no route {request.url.path}")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return error(405, "method_not_allowed", f"{request.method} is not allowed here")


# Starlette picks the handler of the most specific class (by the exception's MRO): NotFound
# and InvalidTransition are StoreErrors with answers of their own.
EXCEPTION_HANDLERS: Mapping[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    404: _no_route,
    405: _method_not_allowed,
    GateError: _gate_error,
    NotFound: _not_found,
    InvalidTransition: _conflict,
    StoreError: _store_error,
}
