"""Typed settings (DESIGN §4). SHAPE ONLY — the loader is being written."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AgentCredential:
    id: str
    token_hash: str


@dataclass(frozen=True, slots=True)
class UserCredential:
    name: str
    password_hash: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TokenCredential:
    name: str
    token_hash: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TrustedHeader:
    user: str
    groups: str | None
    from_networks: tuple[Network, ...]


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    format: str  # "slack" | "json"


@dataclass(frozen=True, slots=True)
class ProxySettings:
    listen: HostPort = HostPort("127.0.0.1", 8080)
    intercept_tls: bool = True
    ca_dir: Path = Path("hitl-data/ca")
    upstream_ca_bundle: Path | None = None
    max_body_bytes: int = 10 * 1024 * 1024
    upstream_timeout: float = 30.0
    block_private_networks: bool = True
    allow_networks: tuple[Network, ...] = ()
    require_agent_auth: bool = False
    agents: tuple[AgentCredential, ...] = ()
    routes: tuple[tuple[str, str], ...] = ()
    secret_headers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReviewSettings:
    listen: HostPort = HostPort("127.0.0.1", 8081)
    public_url: str = "http://127.0.0.1:8081"
    users: tuple[UserCredential, ...] = ()
    tokens: tuple[TokenCredential, ...] = ()
    trusted_header: TrustedHeader | None = None


@dataclass(frozen=True, slots=True)
class PolicySettings:
    engine: str = "embedded"
    paths: tuple[Path, ...] = (Path("policies"),)
    query: str = "data.hitl.decision"
    opa_url: str = "http://127.0.0.1:8181"


@dataclass(frozen=True, slots=True)
class StoreSettings:
    url: str = "sqlite:///./hitl-data/hitl.db"


@dataclass(frozen=True, slots=True)
class HoldSettings:
    timeout: float = 15 * 60.0
    on_timeout: str = "deny"
    client_wait: float = 55.0
    replay_window: float = 10 * 60.0
    max_pending_per_agent: int = 100


@dataclass(frozen=True, slots=True)
class NotifySettings:
    webhooks: tuple[Webhook, ...] = ()


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"
    format: str = "auto"  # auto | json | text


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path("hitl-data")
    proxy: ProxySettings = field(default_factory=ProxySettings)
    review: ReviewSettings = field(default_factory=ReviewSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    hold: HoldSettings = field(default_factory=HoldSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    log: LogSettings = field(default_factory=LogSettings)
    source: Path | None = None  # the config file, when there was one
