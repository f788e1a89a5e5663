"""Value objects shared by the data plane, the policy engines, the gate and the store.

All frozen and validated on construction, so that a ``Decision`` or an ``AgentRequest``
that exists is a well-formed one; code downstream never re-checks raw strings.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


class Action(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    HOLD = "hold"


class OnTimeout(enum.StrEnum):
    DENY = "deny"
    ALLOW = "allow"


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer, parsed once (docs/policies.md)."""

    action: Action
    message: str = ""
    reviewers: tuple[str, ...] = ()
    approvals: int = 1
    timeout: float | None = None  # seconds; None = the configured hold.timeout
    on_timeout: OnTimeout | None = None  # None = the configured hold.on_timeout
    grantable: bool = False
    rule: str = "default"
    shadow: bool = False  # rollout: record what a hold or deny would have done, but allow

    def __post_init__(self) -> None:
        if self.approvals < 1:
            raise ValueError("approvals must be at least 1")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("timeout must be positive")


class HoldStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    FORWARDING = "forwarding"
    FORWARDED = "forwarded"
    REJECTED = "rejected"
    EXPIRED = "expired"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({HoldStatus.FORWARDED, HoldStatus.REJECTED, HoldStatus.EXPIRED, HoldStatus.FAILED})

# The hold lifecycle's state table (docs/architecture.md): the only transitions a store may make.
# ``approved → expired`` covers an approval whose agent never came back before the deadline.
TRANSITIONS: dict[HoldStatus, frozenset[HoldStatus]] = {
    HoldStatus.PENDING: frozenset({HoldStatus.APPROVED, HoldStatus.REJECTED, HoldStatus.EXPIRED}),
    HoldStatus.APPROVED: frozenset({HoldStatus.FORWARDING, HoldStatus.EXPIRED}),
    HoldStatus.FORWARDING: frozenset({HoldStatus.FORWARDED, HoldStatus.FAILED}),
    HoldStatus.FORWARDED: frozenset(),
    HoldStatus.REJECTED: frozenset(),
    HoldStatus.EXPIRED: frozenset(),
    HoldStatus.FAILED: frozenset(),
}


def utf8_text(body: bytes | None) -> str | None:
    """The body as text when it is UTF-8 (the policy's ``body_text``, the API's), else None."""
    if body is None:
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def can_transition(current: HoldStatus, wanted: HoldStatus) -> bool:
    return wanted in TRANSITIONS[current]


DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class AgentRequest:
    """One request as the agent sent it, with the proxy's own hop-by-hop headers removed.

    ``headers`` keeps the agent's order and spelling; names are compared lower-cased.
    """

    method: str
    scheme: str
    host: str
    port: int
    target: str  # normalized path and query as sent: "/v1/charges?expand=customer"
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    # The path as the agent spelled it, before normalization (urlnorm.py); "" = same as path.
    raw_path: str = ""

    def __post_init__(self) -> None:
        if self.scheme not in DEFAULT_PORTS:
            raise ValueError(f"unsupported scheme {self.scheme!r}")
        if not self.host:
            raise ValueError("missing host")
        if not 0 < self.port < 65536:
            raise ValueError(f"bad port {self.port}")
        if not self.target.startswith("/"):
            raise ValueError("target must start with /")

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == DEFAULT_PORTS[self.scheme]:
            return host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}{self.target}"

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query_string(self) -> str:
        return urlsplit(self.target).query

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def body_digest(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    def fingerprint(self, agent_key: str, secret_headers: tuple[str, ...] = (),
                    content_key: str | None = None) -> str:
        """agent + method + absolute URL + body digest + a digest of the secret headers
        (docs/agent-contract.md). An Idempotency-Key replaces the body digest, and so does ``content_key``,
        the identity of an MCP call (``mcp.Message.content_key``). ``agent_key`` is
        ``Agent.key``: for an anonymous agent it names the client address, so retries attach
        and replay within one client and one set of credentials only, never across them."""
        from proxy.redact import is_secret

        key = self.header("idempotency-key")
        if key is not None:
            tail = f"key:{key}"
        else:
            tail = f"mcp:{content_key}" if content_key is not None else f"body:{self.body_digest()}"
        secrets = hashlib.sha256()
        for name, value in sorted((k.lower(), v) for k, v in self.headers if is_secret(k, secret_headers)):
            secrets.update(f"{name}:{value}".encode("utf-8", "surrogateescape") + b"\0")
        raw = f"{agent_key}\n{self.method}\n{self.url}\n{tail}\n{secrets.hexdigest()}"
        return hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()

    def content_digest(self) -> str:
        """Digest of everything that would be forwarded: binds an approval to these bytes."""
        h = hashlib.sha256()
        for part in (self.method, self.url):
            h.update(part.encode("utf-8", "surrogateescape") + b"\0")
        for key, value in self.headers:
            h.update(f"{key.lower()}:{value}".encode("utf-8", "surrogateescape") + b"\0")
        h.update(self.body)
        return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    address: str

    @property
    def key(self) -> str:
        """Who the agent is for attaching and replaying: anonymous agents share one id, so
        each client address is its own anonymous agent there (docs/agent-contract.md)."""
        return f"{self.id}@{self.address}" if self.id == ANONYMOUS else self.id


ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A reviewer's act on a held request."""

    kind: str  # "approve" | "reject" | "comment"
    reviewer: str
    comment: str = ""
    edit_body: bytes | None = None
    edit_headers: dict[str, str | None] = field(default_factory=dict)  # None removes
    grant_minutes: int | None = None
    digest: str | None = None  # the content digest the reviewer saw; must still be current

    def __post_init__(self) -> None:
        if self.kind not in {"approve", "reject", "comment"}:
            raise ValueError(f"unknown verdict {self.kind!r}")


def to_jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    return value


@dataclass(frozen=True, slots=True)
class Reviewer:
    """Who acts in the review API: a configured user or token, or the admin login."""

    name: str
    groups: tuple[str, ...] = ()

    def may_decide(self, eligible: tuple[str, ...]) -> bool:
        """``eligible`` is a policy's ``reviewers``: names and ``group:NAME``; empty = anyone."""
        if not eligible:
            return True
        return self.name in eligible or any(f"group:{g}" in eligible for g in self.groups)
