"""Typed settings (docs/operations.md): YAML file, then ``HITL_<SECTION>_<KEY>`` environment overrides.

One registry, ``SETTINGS``, lists every key once: its dotted name, its default (written as it
would be in YAML), a one-line help and a parser. The loader, ``example_yaml()`` (which renders
``config.example.yaml``) and the tests all read it, so a key cannot exist in one and not the
others. Parsing happens once, at start; the rest of the code gets frozen dataclasses.

Rules of the loader:

1. Every key is optional; an unknown section or key is refused, naming it.
2. Environment variables apply after the file. ``HITL_DATA_DIR`` is the top-level key;
   ``HITL_<SECTION>_<KEY>`` a section key. Names whose first word is not a section are not
   config (``HITL_URL`` and ``HITL_TOKEN`` belong to the CLI) and are ignored; a known section
   with an unknown key is an error. Values are read as YAML, so ``[a, b]`` is a list.
3. Relative paths in the file, and the defaults, are relative to the config file's folder (with
   no file: the working directory). Relative paths from the environment are relative to the
   working directory, where the shell that set them is.
4. Any problem is one ``ConfigError`` line: ``key: what is wrong (what is expected)``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from proxy.config_types import (  # the value records are re-exported: import them from here
    AgentCredential,
    HostPort,
    Network,
    SlackSettings,
    TokenCredential,
    TrustedHeader,
    UserCredential,
    Webhook,
    env_bool,
    env_yaml,
    load_yaml,
    parse_agents,
    parse_bool,
    parse_choice,
    parse_duration,
    parse_header_name,
    parse_hostport,
    parse_http_url,
    parse_int,
    parse_list,
    parse_network,
    parse_principals,
    parse_rego_ref,
    parse_routes,
    parse_size,
    parse_slack,
    parse_store_url,
    parse_trusted_header,
    parse_webhook,
    resolve_path,
    show,
    sqlite_path,
)
from proxy.errors import ConfigError
from proxy.model import OnTimeout

__all__ = [
    "SETTINGS", "AgentCredential", "HoldSettings", "HostPort", "LogSettings", "Network",
    "NotifySettings", "PolicySettings", "ProxySettings", "ReviewSettings", "Setting", "Settings",
    "SlackSettings",
    "StoreSettings", "TokenCredential", "TrustedHeader", "UserCredential", "Webhook",
    "check_settings", "example_yaml", "load_settings", "sqlite_path",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class ProxySettings:
    listen: HostPort = HostPort("127.0.0.1", 8080)
    workers: int = 1
    shutdown_grace: float = 10.0
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
    slack: SlackSettings | None = None


@dataclass(frozen=True, slots=True)
class PolicySettings:
    engine: str = "embedded"
    paths: tuple[Path, ...] = (Path("policies"),)
    query: str = "data.hitl.decision"
    opa_url: str = "http://127.0.0.1:8181"
    shadow: bool = False
    decision_log: int = 100_000
    decision_log_allowed: float = 1.0
    max_input_body_bytes: int = 256 * 1024


@dataclass(frozen=True, slots=True)
class StoreSettings:
    url: str = "sqlite:///./hitl-data/hitl.db"
    retention: float = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class HoldSettings:
    timeout: float = 15 * 60.0
    on_timeout: str = "deny"
    client_wait: float = 55.0
    retry_after: float = 30.0
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


# -- the registry -------------------------------------------------------------------------

Parser = Callable[[Any, str, Path], Any]  # (raw value, dotted key, folder for relative paths)


def _plain(parse: Callable[[Any, str], Any]) -> Parser:
    return lambda value, key, base: parse(value, key)


def _path(optional: bool = False, must_exist: bool = False) -> Parser:
    def parse(value: Any, key: str, base: Path) -> Path | None:
        if value is None and optional:
            return None
        path = resolve_path(value, key, base)
        if must_exist and not path.is_file():  # a typo here would only show at the first TLS call
            raise ConfigError(key, f"{path} is not a file")
        return path

    return parse


def _choice(*choices: str, cast: Callable[[str], Any] = str) -> Parser:
    return lambda value, key, base: cast(parse_choice(value, key, choices))


def _url(value: Any, key: str, base: Path) -> str:
    return parse_http_url(value, key).rstrip("/")  # callers append paths that start with "/"


def _list(item: Callable[[Any, str], Any]) -> Parser:
    return lambda value, key, base: parse_list(value, key, item)


def _hostport(value: Any, key: str, base: Path) -> HostPort:
    return HostPort(*parse_hostport(value, key))


_duration = _plain(parse_duration)


def _fraction(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(key, f"{show(value)} is not a fraction (expected 0 to 1, e.g. 0.1)")
    return float(value)


@dataclass(frozen=True, slots=True)
class Setting:
    key: str  # dotted: "proxy.listen", or a top-level name: "data_dir"
    default: Any  # as written in YAML; parsed like a user's value, so paths resolve the same way
    help: str  # one line, shown as the comment in config.example.yaml
    parse: Parser
    example: str | None = None  # a sample value, shown commented out when the default is empty
    from_env: Callable[[str, str], Any] = env_yaml  # env text -> raw value

    @property
    def section(self) -> str:
        return self.key.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.key.rpartition(".")[2]


def _flag(key: str, default: bool, help: str) -> Setting:
    return Setting(key, default, help, _plain(parse_bool), from_env=env_bool)


_HASH = '"$argon2id$v=19$m=65536,t=3,p=4$..."'
# What `hitl-proxy new-token` prints (an argon2 hash, as configs had before, works too).
_TOKEN_HASH = '"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"'
_SLACK = '"https://hooks.slack.com/services/..."'

# In the order of config.example.yaml, which follows this order.
SETTINGS: tuple[Setting, ...] = (
    Setting("data_dir", "./hitl-data",
            "Folder for the proxy's state (ca_dir and store.url have their own keys).", _path()),
    Setting("proxy.listen", "127.0.0.1:8080",
            "Where agents connect (host:port; port 0 = any free port).", _hostport),
    Setting("proxy.workers", 1,
            "Processes serving proxy.listen (one core each); 1 = this process only.",
            _plain(lambda v, k: parse_int(v, k, minimum=1, maximum=64))),
    Setting("proxy.shutdown_grace", "10s",
            "On SIGTERM: answer waiting agents approval_pending, let forwards finish this long, exit.",
            _duration),
    _flag("proxy.intercept_tls", True,
          "Intercept CONNECT to hosts that policy may hold, with the local CA."),
    Setting("proxy.ca_dir", "./hitl-data/ca",
            "Folder of the local CA; agents trust its certificate.", _path()),
    Setting("proxy.upstream_ca_bundle", None,
            "Extra CA file (PEM) trusted for upstream TLS (tests, private APIs).",
            _path(optional=True, must_exist=True)),
    Setting("proxy.max_body_bytes", 10485760,
            "Largest request body (bytes, or e.g. 10MiB); a bigger one gets 413.",
            _plain(parse_size)),
    Setting("proxy.upstream_timeout", "30s",
            "Timeout to connect to and read from an upstream.", _duration),
    _flag("proxy.block_private_networks", True,
          "SSRF guard: refuse loopback, RFC1918, link-local (cloud metadata), ULA, ..."),
    Setting("proxy.allow_networks", [], "Exceptions to the SSRF guard, as CIDRs.",
            _list(parse_network), "[10.20.0.0/16]"),
    _flag("proxy.require_agent_auth", False,
          "Refuse agents without Proxy-Authorization: Basic id:token (407)."),
    Setting("proxy.agents", [], "Agents and their token hashes (see `hitl-proxy new-token NAME`).",
            _plain(parse_agents), f"[{{id: billing-agent, token_hash: {_TOKEN_HASH}}}]"),
    Setting("proxy.routes", {}, "Reverse routes: http://PROXY/NAME/... is forwarded to URL/...",
            _plain(parse_routes), '{stripe: "https://api.stripe.com"}'),
    Setting("proxy.secret_headers", [],
            "Headers to redact besides authorization, cookie, x-api-key, ...",
            _list(parse_header_name), "[x-stripe-key]"),
    Setting("review.listen", "127.0.0.1:8081",
            "Where the review UI and API listen.", _hostport),
    Setting("review.public_url", "http://127.0.0.1:8081",
            "The review UI's URL as reviewers reach it (used in links).", _url),
    Setting("review.users", [], "Reviewers who log in (hash: `hitl-proxy hash-password`).",
            _plain(parse_principals(UserCredential, "password_hash")),
            f"[{{name: alice, password_hash: {_HASH}, groups: [finance], slack: U0123ABCD}}]"),
    Setting("review.tokens", [], "API tokens; a token acts as the reviewer of its name.",
            _plain(parse_principals(TokenCredential, "token_hash")),
            f"[{{name: ops-bot, token_hash: {_TOKEN_HASH}, groups: [ops]}}]"),
    Setting("review.trusted_header", None,
            "Take the reviewer from headers set by an authenticating proxy in front.",
            _plain(parse_trusted_header),
            "{user: X-Forwarded-User, groups: X-Forwarded-Groups, from: [127.0.0.1/32]}"),
    Setting("review.slack", None,
            "Approvals in Slack: holds posted to channel with Approve/Reject buttons"
            " (deploy/slack/manifest.yaml).",
            _plain(parse_slack),
            '{bot_token: "xoxb-...", signing_secret: "0123456789abcdef0123456789abcdef",'
            ' channel: C0123ABCD}'),
    Setting("policy.engine", "embedded",
            "embedded (regopy) | opa (a remote OPA server).", _choice("embedded", "opa")),
    Setting("policy.paths", ["./policies"], "Folders or files of Rego policies.",
            lambda v, k, base: parse_list(v, k, lambda p, w: resolve_path(p, w, base))),
    Setting("policy.query", "data.hitl.decision",
            "The rule that answers the decision.", _plain(parse_rego_ref)),
    Setting("policy.opa_url", "http://127.0.0.1:8181",
            "The OPA server, when engine is opa.", _url),
    _flag("policy.shadow", False,
          "Shadow every decision: record what would be held or denied, but allow (rollout)."),
    Setting("policy.decision_log", 100000,
            "Judged requests kept (redacted, newest) for `hitl-proxy policy replay`; 0 = none.",
            _plain(lambda v, k: parse_int(v, k, minimum=0, maximum=10_000_000))),
    Setting("policy.decision_log_allowed", 1.0,
            "Share of allowed requests written to the decision log (holds, denies: all).",
            _plain(_fraction)),
    Setting("policy.max_input_body_bytes", 262144,
            "Largest body the policy input carries parsed (bytes, or e.g. 256KiB); past it"
            " body and body_text are null, body_truncated true.",
            _plain(parse_size)),
    Setting("store.url", "sqlite:///./hitl-data/hitl.db",
            "sqlite:///relative/file.db, sqlite:////absolute/file.db or"
            " postgresql://user@host:5432/db?schema=NAME (created on first open).",
            parse_store_url),
    Setting("store.retention", "30d",
            "Finished requests older than this lose bodies, headers and stored responses"
            " (the audit stays).", _duration),
    Setting("hold.timeout", "15m",
            "Default deadline for a decision (a policy may override).", _duration),
    Setting("hold.on_timeout", "deny",
            "What a passed deadline means: deny | allow.",
            _choice("deny", "allow", cast=OnTimeout)),
    Setting("hold.client_wait", "55s",
            "How long the agent's connection is held open (under Stripe's 80 s client timeout).",
            _duration),
    Setting("hold.retry_after", "30s",
            "Retry-After of approval_pending: OpenAI and Anthropic SDKs wait this, then retry.",
            _duration),
    Setting("hold.replay_window", "10m",
            "How long a forwarded response, or a rejection, is repeated to identical retries.",
            _duration),
    Setting("hold.max_pending_per_agent", 100,
            "Beyond it, new holds get 429 too_many_pending.",
            _plain(lambda v, k: parse_int(v, k, minimum=1))),
    Setting("notify.webhooks", [], "Where new holds are announced; format: slack | json.",
            _list(parse_webhook), f"[{{url: {_SLACK}, format: slack}}]"),
    Setting("log.level", "info",
            "debug | info | warning | error.", _choice("debug", "info", "warning", "error")),
    Setting("log.format", "auto",
            "auto (text on a terminal, else JSON) | json | text.", _choice("auto", "json", "text")),
)  # fmt: skip

BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
_TOP_LEVEL = {s.key for s in SETTINGS if not s.section}
_SECTIONS: dict[str, type] = {  # in config.example.yaml's order
    "proxy": ProxySettings, "review": ReviewSettings, "policy": PolicySettings,
    "store": StoreSettings, "hold": HoldSettings, "notify": NotifySettings, "log": LogSettings,
}  # fmt: skip


# -- the loader ---------------------------------------------------------------------------


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from the YAML file at ``path`` (optional), then ``env`` (default: os.environ).
    Raises the first ``ConfigError``."""
    settings, problems = check_settings(path, env, first_only=True)
    if problems:
        raise problems[0]
    assert settings is not None
    return settings


def check_settings(
    path: str | Path | None = None, env: Mapping[str, str] | None = None, *, first_only: bool = False
) -> tuple[Settings | None, list[ConfigError]]:
    """The settings and every problem found (``hitl-proxy config check``): the settings are
    None when there is any problem."""
    env = os.environ if env is None else env
    problems: list[ConfigError] = []

    def stop() -> bool:
        return first_only and bool(problems)

    source = Path(path).expanduser().resolve() if path is not None else None
    base = source.parent if source else Path.cwd()
    # key -> (raw value, folder for its relative paths, env variable it came from)
    raw: dict[str, tuple[Any, Path, str | None]] = {}
    if source is not None:
        try:
            values = _read_file(source, None if first_only else problems)
        except ConfigError as exc:
            return None, [exc]
        raw.update((key, (value, base, None)) for key, value in values.items())
    for name, key in _env_keys(env, None if first_only else problems):
        raw[key] = (env[name], Path.cwd(), name)
    if stop():
        return None, problems

    parsed: dict[str, Any] = {}
    for setting in SETTINGS:
        value, folder, var = raw.get(setting.key, (setting.default, base, None))
        try:
            if var is not None:
                value = setting.from_env(value, setting.key)
            parsed[setting.key] = setting.parse(value, setting.key, folder)
        except ConfigError as exc:
            problems.append(exc if var is None else ConfigError(exc.key, f"{exc.problem} (from {var})"))
            if stop():
                return None, problems
    if problems:
        return None, problems

    if parsed["proxy.require_agent_auth"] and not parsed["proxy.agents"]:
        return None, [ConfigError(
            "proxy.require_agent_auth", "true, but proxy.agents is empty: every agent would get 407"
        )]
    try:
        _check_slack(parsed)
    except ConfigError as exc:
        return None, [exc]
    sections = {
        name: cls(**{s.name: parsed[s.key] for s in SETTINGS if s.section == name})
        for name, cls in _SECTIONS.items()
    }
    return Settings(data_dir=parsed["data_dir"], source=source, **sections), []


def _check_slack(parsed: dict[str, Any]) -> None:
    """One Slack user acts as one reviewer, across users and tokens; and with review.slack set,
    someone must be able to click (else every click is refused)."""
    principals = [("review.users", i, p) for i, p in enumerate(parsed["review.users"])]
    principals += [("review.tokens", i, p) for i, p in enumerate(parsed["review.tokens"])]
    seen: dict[str, str] = {}
    for key, i, p in principals:
        if p.slack is not None and seen.setdefault(p.slack, p.name) != p.name:
            raise ConfigError(f"{key}[{i}].slack",
                              f"{p.slack} already acts as {seen[p.slack]!r}; one Slack user is one reviewer")
    if parsed["review.slack"] is not None and not seen:
        raise ConfigError("review.slack", "set, but no reviewer in review.users or review.tokens has a "
                                          "slack: member id, so every click would be refused")


def _read_file(source: Path, problems: list[ConfigError] | None = None) -> dict[str, Any]:
    """The file's values, flattened to dotted keys; unknown sections and keys refused (the
    first raised, or each added to ``problems`` when given)."""
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(source), "config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(source), f"cannot read the config file ({exc})") from None
    data = load_yaml(text, str(source))
    if data is None:  # an empty file, or all commented out
        return {}
    if not isinstance(data, dict):
        problem = f"the top level must be a mapping (proxy:, review:, ...), not {show(data)}"
        raise ConfigError(str(source), problem)
    flat: dict[str, Any] = {}
    for top, value in data.items():
        for key, item in _entries(top, value):
            try:
                if isinstance(item, ConfigError):
                    raise item
                flat[_known(key)] = item
            except ConfigError as exc:
                if problems is None:
                    raise
                problems.append(exc)
    return flat


def _entries(top: Any, value: Any) -> list[tuple[str, Any]]:
    """(dotted key, value) of one top-level entry of the file; a ConfigError as the value
    of an entry that cannot be read."""
    if top in _TOP_LEVEL:
        return [(top, value)]
    if top in _SECTIONS:
        if value is None:  # a section whose keys are all commented out
            return []
        if not isinstance(value, dict):
            return [(str(top), ConfigError(str(top), f"expected a mapping of settings, not {show(value)}"))]
        return [(f"{top}.{name}", item) for name, item in value.items()]
    if top in BY_KEY:  # "proxy.listen: ..." written flat
        section, _, name = str(top).partition(".")
        return [(str(top), ConfigError(str(top), f"nest it: write {name}: under {section}:"))]
    tops = ", ".join([*_TOP_LEVEL, *_SECTIONS])
    return [(str(top), ConfigError(str(top), f"unknown section (expected one of {tops})"))]


def _known(key: str, var: str | None = None) -> str:
    if key not in BY_KEY:
        # compare names within the section: the shared "proxy." prefix would make all look close
        section, _, name = key.rpartition(".")
        names = [s.name for s in SETTINGS if s.section == section]
        near = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {section}.{near[0]}?)" if near else ""
        origin = f" (from {var})" if var else ""
        raise ConfigError(key, f"unknown key{origin}{hint}")
    return key


def _env_keys(env: Mapping[str, str], problems: list[ConfigError] | None = None) -> list[tuple[str, str]]:
    """(variable, dotted key) for each HITL_ variable that addresses the config."""
    found = []
    for var in sorted(env):
        if not var.startswith("HITL_"):
            continue
        name = var[len("HITL_") :].lower()
        section, _, rest = name.partition("_")
        if name in _TOP_LEVEL:  # HITL_DATA_DIR
            found.append((var, name))
        elif section in _SECTIONS:
            try:
                found.append((var, _known(f"{section}.{rest}", var)))
            except ConfigError as exc:
                if problems is None:
                    raise
                problems.append(exc)
        # anything else (HITL_URL, HITL_TOKEN) is the CLI's, not config
    return found


# -- config.example.yaml ------------------------------------------------------------------

_EXAMPLE_HEADER = """\
# hitl-proxy configuration (docs/operations.md). Generated from proxy/config.py: edit SETTINGS there.
# Every key is optional; the values below are the defaults. Relative paths are relative to
# this file's folder. Any key can be set from the environment: HITL_DATA_DIR, or
# HITL_<SECTION>_<KEY>, e.g. HITL_HOLD_TIMEOUT=5m, HITL_PROXY_ALLOW_NETWORKS='[10.0.0.0/8]'.
"""


def _flow(value: Any) -> str:
    text: str = yaml.safe_dump(value, default_flow_style=True, width=1000, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def example_yaml() -> str:
    """config.example.yaml: every setting with its help as a comment and its default."""
    lines = [_EXAMPLE_HEADER.rstrip("\n")]
    section: str | None = None
    for setting in SETTINGS:
        if setting.section != section:
            section = setting.section
            lines += ["", f"{section}:"] if section else [""]
        indent = "  " if section else ""
        lines.append(f"{indent}# {setting.help}")
        if setting.example:
            lines.append(f"{indent}#   e.g. {setting.name}: {setting.example}")
        lines.append(f"{indent}{setting.name}: {_flow(setting.default)}")
    return "\n".join(lines) + "\n"
