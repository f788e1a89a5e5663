"""The gate's error tree.

Every error the agent can see is a ``GateError``: it carries the HTTP status and the
machine-readable ``error`` code of docs/agent-contract.md, so the boundary (``http1.HTTPConnection.send_error``)
turns any of them into the same JSON shape. Errors of the libraries underneath (h11,
httpx, sqlite3, regopy) are translated into these at one place each, with
``raise ... from exc``.

    GateError
    ├── BadRequest              400 bad_request (431 for oversize headers)
    ├── BodyTooLarge            413 body_too_large
    ├── ProxyAuthRequired       407 proxy_auth_required
    ├── DestinationBlocked      403 destination_blocked
    ├── DeniedByPolicy          403 denied_by_policy
    ├── PolicyError             403 policy_error
    ├── RejectedByReviewer      403 rejected_by_reviewer
    ├── ApprovalTimedOut        403 approval_timed_out
    ├── ApprovalPending         503 approval_pending (Retry-After)
    ├── TooManyPending          429 too_many_pending (Retry-After)
    ├── StoreUnavailable        503 store_unavailable (Retry-After)
    ├── UpstreamError           502 upstream_error
    ├── MisdirectedRequest      421 misdirected_request
    └── MethodNotAllowed        405 method_not_allowed

Configuration problems are ``ConfigError`` (one line naming the key); store problems
are ``StoreError`` and its subclasses, which the gate maps to ``StoreUnavailable``.
"""

from __future__ import annotations

from typing import Any


class GateError(Exception):
    status: int = 500
    code: str = "internal_error"
    retry_after: int | None = None

    def __init__(self, message: str, *, status: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.request_id: str | None = extra.pop("request_id", None)
        self.extra = {k: v for k, v in extra.items() if v is not None}
        self.headers: list[tuple[str, str]] = []  # extra response headers (X-HITL-Replayed)

    def body(self, request_id: str) -> dict[str, Any]:
        """The nested shape that OpenAI's, Anthropic's and Stripe's SDKs parse into their
        exception's message: ``{"type": "error", "error": {"type", "code", "message", ...}}``."""
        rid = self.request_id or request_id
        return {"type": "error",
                "error": {"type": self.code, "code": self.code, "message": self.message,
                          "request_id": rid, **self.extra}}


class BadRequest(GateError):
    status, code = 400, "bad_request"


class BodyTooLarge(GateError):
    status, code = 413, "body_too_large"


class ProxyAuthRequired(GateError):
    status, code = 407, "proxy_auth_required"


class DestinationBlocked(GateError):
    status, code = 403, "destination_blocked"


class DeniedByPolicy(GateError):
    status, code = 403, "denied_by_policy"


class PolicyError(GateError):
    status, code = 403, "policy_error"


class RejectedByReviewer(GateError):
    status, code = 403, "rejected_by_reviewer"


class ApprovalTimedOut(GateError):
    status, code = 403, "approval_timed_out"


class ApprovalPending(GateError):
    # 503 + Retry-After is what the SDKs retry on their own (OpenAI and Anthropic wait the
    # Retry-After, Stripe its own back-off); the gate sets Retry-After from hold.retry_after.
    status, code, retry_after = 503, "approval_pending", 30


class TooManyPending(GateError):
    status, code, retry_after = 429, "too_many_pending", 30


class StoreUnavailable(GateError):
    status, code, retry_after = 503, "store_unavailable", 10


class UpstreamError(GateError):
    status, code = 502, "upstream_error"


class MisdirectedRequest(GateError):
    status, code = 421, "misdirected_request"


class MethodNotAllowed(GateError):
    status, code = 405, "method_not_allowed"


class ConfigError(Exception):
    """A bad configuration value. The message names the key: ``proxy.listen: ...``."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class StoreError(Exception):
    """The pending store could not do what was asked (unreachable, read-only, corrupt)."""


class NotFound(StoreError):
    pass


class InvalidTransition(StoreError):
    """A lifecycle transition that the state table does not allow (e.g. approve a rejected
    record). ``current`` is the record's status (the review API's ``current_status``);
    ``why`` replaces the default explanation."""

    def __init__(self, request_id: str, current: str, wanted: str, why: str | None = None) -> None:
        super().__init__(f"request {request_id} is {current}; {why or f'cannot become {wanted}'}")
        self.request_id = request_id
        self.current = current
        self.wanted = wanted


class CommandError(Exception):
    """A command line command cannot go on: a missing file or folder, a bad argument. The
    message is one line for the operator; ``hitl-proxy`` prints it and exits ``exit_code``."""

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class DigestMismatch(InvalidTransition):
    """An approval named the digest of content that has changed since (an edit): 409."""

    def __init__(self, request_id: str, digest: str) -> None:
        super().__init__(request_id, "pending", "approved",
                         f"it changed since you saw it (its digest is now {digest}); reload it and "
                         "review what would be sent now")
        self.digest = digest
