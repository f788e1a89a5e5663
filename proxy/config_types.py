"""The value types of the settings and their parsers: one raw YAML value in, one typed value out.

``proxy.config`` holds the sections and the registry and re-exports the records defined here
(``HostPort``, ``AgentCredential``, …); import them from there.

Each parser takes the value and its dotted key (``proxy.listen``, ``proxy.agents[0].id``) and
either returns the typed value or raises ``ConfigError(key, problem)``, where the problem is
one line saying what was wrong and what is expected. They know nothing of the registry, so
other modules may reuse them, e.g. ``parse_duration`` for a policy's ``timeout``.

URLs and hashes are never echoed back in an error: webhook URLs and hashes are secrets, and
the error line ends up in logs.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import yaml

from proxy.errors import ConfigError

T = TypeVar("T")

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
    slack: str | None = None  # the Slack user id that acts as this reviewer (review.slack)


@dataclass(frozen=True, slots=True)
class TokenCredential:
    name: str
    token_hash: str
    groups: tuple[str, ...] = ()
    slack: str | None = None


@dataclass(frozen=True, slots=True)
class SlackSettings:
    """``review.slack``: approvals in Slack. The two secrets never show in a repr, so a
    printed config (``config check``, a log line, a traceback) elides them."""

    bot_token: str = field(repr=False)
    signing_secret: str = field(repr=False)
    channel: str
    api_url: str = "https://slack.com/api"


@dataclass(frozen=True, slots=True)
class TrustedHeader:
    user: str
    groups: str | None
    from_networks: tuple[Network, ...]


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    format: str  # "slack" | "json"


# -- scalars ------------------------------------------------------------------------------

DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9}
SIZE_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")

_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token

_ENV_TRUE = {"true", "1", "yes"}
_ENV_FALSE = {"false", "0", "no"}


def show(value: Any) -> str:
    """A short rendering of a bad value for an error line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: Any) -> bool:
    # YAML booleans are ints in Python; `timeout: true` must not mean one second.
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_duration(value: Any, key: str) -> float:
    """``30s``, ``15m``, ``2h``, ``1d``, ``500ms``, ``1h30m`` or a bare number of seconds; > 0."""
    hint = "(use e.g. 30s, 15m, 2h)"
    if _is_number(value):
        seconds = float(value)
    elif isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        seconds = float(value.strip())
    elif isinstance(value, str) and _DURATION.fullmatch(value.strip().lower()):
        parts = _DURATION_PART.findall(value.strip().lower())
        seconds = sum(float(n) * DURATION_UNITS[unit] for n, unit in parts)
    else:
        raise ConfigError(key, f"{show(value)} is not a duration {hint}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(key, f"{show(value)} must be a positive duration {hint}")
    return seconds


def parse_size(value: Any, key: str) -> int:
    """A byte count: an integer or ``512KiB``, ``10MiB``, ``1MB`` …; > 0."""
    hint = "(use bytes or e.g. 512KiB, 10MiB, 1MB)"
    number: float | None = None
    if _is_number(value):
        number = float(value)
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip().lower())):
        unit = match.group(2) or "b"
        if unit in SIZE_UNITS:
            number = float(match.group(1)) * SIZE_UNITS[unit]
    if number is None or not math.isfinite(number):
        raise ConfigError(key, f"{show(value)} is not a size {hint}")
    if number < 1:
        raise ConfigError(key, f"{show(value)} must be at least 1 byte {hint}")
    return int(number)


def parse_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"{show(value)} is not a boolean (use true or false)")
    return value


def env_bool(text: str, key: str) -> Any:
    """An env variable's text as a boolean; anything else is left for parse_bool to refuse."""
    lowered = text.strip().lower()
    if lowered in _ENV_TRUE:
        return True
    if lowered in _ENV_FALSE:
        return False
    return text


def env_yaml(text: str, key: str) -> Any:
    """An env variable's text read as a YAML scalar or flow value, so ``[a, b]`` is a list."""
    return load_yaml(text, key)


def parse_int(value: Any, key: str, minimum: int, maximum: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(key, f"{show(value)} is not a whole number (expected {minimum} or more)")
    if value < minimum:
        raise ConfigError(key, f"{value} is too small (expected {minimum} or more)")
    if maximum is not None and value > maximum:
        raise ConfigError(key, f"{value} is too large (expected {maximum} or less)")
    return value


def parse_choice(value: Any, key: str, choices: Collection[str]) -> str:
    text = value.strip().lower() if isinstance(value, str) else ""
    if text not in choices:
        raise ConfigError(key, f"{show(value)} is not one of {' | '.join(choices)}")
    return text


def parse_str(value: Any, key: str) -> str:
    """A non-empty string. YAML turns unquoted ``007`` or ``yes`` into other types: say to quote."""
    if not isinstance(value, str):
        raise ConfigError(key, f"{show(value)} is not a string (quote it)")
    if not value.strip():
        raise ConfigError(key, "must not be empty")
    return value.strip()


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def parse_hostport(value: Any, key: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; port 0..65535 (0 = pick a free port, as tests do)."""
    expected = "(expected host:port, e.g. 127.0.0.1:8080 or [::1]:8080)"
    if not isinstance(value, str):
        raise ConfigError(key, f"{show(value)} is not an address {expected}")
    text = value.strip()
    bracketed = text.startswith("[")
    host, sep, port = text[1:].partition("]:") if bracketed else text.rpartition(":")
    if not sep:
        raise ConfigError(key, f"{show(value)} has no port {expected}")
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ConfigError(key, f"port {port!r} is not a number from 0 to 65535")
    if not bracketed and ":" in host:
        raise ConfigError(key, f"{show(value)}: put an IPv6 address in brackets, e.g. [::1]:80")
    if not (_is_ipv6(host) if bracketed else _HOSTNAME.fullmatch(host)):
        raise ConfigError(key, f"{show(value)} is not an address {expected}")
    return host, int(port)


def parse_network(value: Any, key: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if isinstance(value, str):
        try:
            return ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            pass
    raise ConfigError(key, f"{show(value)} is not a network (use CIDR, e.g. 10.0.0.0/8)")


def parse_http_url(value: Any, key: str) -> str:
    """An absolute http(s) URL with a host. Returned as given (callers strip slashes if needed)."""
    expected = "(expected e.g. https://api.example.com)"
    if not isinstance(value, str):
        raise ConfigError(key, f"expected an http(s) URL {expected}")
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(key, f"not a valid URL {expected}") from None
    if not parts.scheme:
        raise ConfigError(key, f"URL has no scheme {expected}")
    if parts.scheme not in ("http", "https"):
        raise ConfigError(key, f"scheme {parts.scheme!r} is not http or https {expected}")
    if not parts.hostname:
        raise ConfigError(key, f"URL has no host {expected}")
    return value.strip()


def parse_token_hash(value: Any, key: str) -> str:
    """A token's hash: ``sha256:<64 hex>`` (minted by `hitl-proxy new-token`) or argon2."""
    if isinstance(value, str) and value.startswith("sha256:"):
        if len(value) != 71 or any(c not in "0123456789abcdef" for c in value[7:]):
            raise ConfigError(key, "not a sha256 token hash (sha256: and 64 lower-case hex digits; "
                                   "make one with `hitl-proxy new-token NAME`)")
        return value
    return parse_argon2_hash(value, key)


def parse_argon2_hash(value: Any, key: str) -> str:
    # Only the shape is checked here; argon2 itself verifies when a secret is presented.
    if not isinstance(value, str) or not value.startswith("$argon2"):
        raise ConfigError(key, "not an argon2 hash (make one with `hitl-proxy hash-password`)")
    return value


def parse_header_name(value: Any, key: str) -> str:
    """A header field name, lower-cased (headers are compared lower-cased everywhere)."""
    if not isinstance(value, str) or not _HEADER_NAME.fullmatch(value.strip()):
        raise ConfigError(key, f"{show(value)} is not a header name (e.g. X-Forwarded-User)")
    return value.strip().lower()


def parse_list(value: Any, key: str, item: Callable[[Any, str], T]) -> tuple[T, ...]:
    """A YAML list, each item parsed with key ``key[i]``. ``null`` (an emptied key) is empty."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list, e.g. [a, b], got {show(value)}")
    return tuple(item(element, f"{key}[{i}]") for i, element in enumerate(value))


def parse_fields(
    value: Any, key: str, allowed: Collection[str], required: Collection[str]
) -> dict[str, Any]:
    """A small mapping such as ``{id, token_hash}``: unknown fields refused, required present."""
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a mapping with {', '.join(allowed)}, got {show(value)}")
    for name in value:
        if name not in allowed:
            raise ConfigError(f"{key}.{name}", f"unknown key (expected {', '.join(allowed)})")
    for name in required:
        if value.get(name) is None:
            raise ConfigError(f"{key}.{name}", "is required")
    return value


def resolve_path(value: Any, key: str, base: Path) -> Path:
    """A path; relative ones are taken from ``base`` (the config file's folder or the cwd)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"{show(value)} is not a path")
    path = Path(value.strip()).expanduser()
    # normpath, not resolve(): folders need not exist yet, and symlinks are the operator's choice.
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


# -- records ------------------------------------------------------------------------------

SQLITE_PREFIX = "sqlite:///"
_ROUTE_NAME = re.compile(r"[A-Za-z0-9._-]+")
_REGO_REF = re.compile(r"data(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def _unique(items: tuple[Any, ...], key: str, attr: str, what: str) -> None:
    seen: set[str] = set()
    for i, item in enumerate(items):
        name = getattr(item, attr)
        if name in seen:
            raise ConfigError(f"{key}[{i}].{attr}", f"duplicate {what} {name!r}")
        seen.add(name)


def parse_agents(value: Any, key: str) -> tuple[AgentCredential, ...]:
    def agent(raw: Any, where: str) -> AgentCredential:
        fields = parse_fields(raw, where, ("id", "token_hash"), ("id", "token_hash"))
        agent_id = parse_str(fields["id"], f"{where}.id")
        if ":" in agent_id:  # agents log in with Basic id:token, split at the first colon
            raise ConfigError(f"{where}.id", f"{agent_id!r} must not contain ':'")
        token_hash = parse_token_hash(fields["token_hash"], f"{where}.token_hash")
        return AgentCredential(agent_id, token_hash)

    agents = parse_list(value, key, agent)
    _unique(agents, key, "id", "agent id")
    return agents


def parse_principals(
    cls: type[UserCredential | TokenCredential], secret: str
) -> Callable[[Any, str], Any]:
    """Reviewers: users (``password_hash``) or tokens (``token_hash``), each with groups."""

    def principal(raw: Any, where: str) -> Any:
        fields = parse_fields(raw, where, ("name", secret, "groups", "slack"), ("name", secret))
        groups = parse_list(fields.get("groups"), f"{where}.groups", parse_str)
        name = parse_str(fields["name"], f"{where}.name")
        slack = None if fields.get("slack") is None else parse_slack_user(fields["slack"], f"{where}.slack")
        parse_hash = parse_token_hash if secret == "token_hash" else parse_argon2_hash
        return cls(name, parse_hash(fields[secret], f"{where}.{secret}"), groups, slack)

    def parse(value: Any, key: str) -> tuple[Any, ...]:
        items = parse_list(value, key, principal)
        _unique(items, key, "name", "name")  # a user and a token may share a name: same reviewer
        return items  # one Slack id per reviewer is checked across users and tokens (config.py)

    return parse


def parse_trusted_header(value: Any, key: str) -> TrustedHeader | None:
    if value is None:
        return None
    fields = parse_fields(value, key, ("user", "groups", "from"), ("user", "from"))
    networks = parse_list(fields["from"], f"{key}.from", parse_network)
    if not networks:  # a header trusted from anywhere lets anyone claim to be a reviewer
        raise ConfigError(f"{key}.from", "must list the networks of the proxies setting the header")
    groups = fields.get("groups")
    return TrustedHeader(
        user=parse_header_name(fields["user"], f"{key}.user"),
        groups=None if groups is None else parse_header_name(groups, f"{key}.groups"),
        from_networks=networks,
    )


_SLACK_USER = re.compile(r"[UW][A-Z0-9]{2,20}")
_SLACK_CHANNEL = re.compile(r"[CDG][A-Z0-9]{2,20}|#[a-z0-9][a-z0-9_-]{0,79}")


def parse_slack_user(value: Any, key: str) -> str:
    """A Slack member id (``U0123ABCD``), as Slack's profile menu "Copy member ID" gives it."""
    if not isinstance(value, str) or not _SLACK_USER.fullmatch(value.strip()):
        raise ConfigError(key, f"{show(value)} is not a Slack member id (e.g. U0123ABCD)")
    return value.strip()


def parse_slack(value: Any, key: str) -> SlackSettings | None:
    """``{bot_token, signing_secret, channel, api_url}``; the secrets are never echoed."""
    if value is None:
        return None
    fields = parse_fields(value, key, ("bot_token", "signing_secret", "channel", "api_url"),
                          ("bot_token", "signing_secret", "channel"))
    token = fields["bot_token"]
    if not isinstance(token, str) or not token.strip().startswith("xoxb-"):
        raise ConfigError(f"{key}.bot_token", "not a bot token (it starts with xoxb-: the app's "
                                              "OAuth & Permissions page, Bot User OAuth Token)")
    secret = fields["signing_secret"]
    if not isinstance(secret, str) or len(secret.strip()) < 16 or any(c.isspace() for c in secret.strip()):
        raise ConfigError(f"{key}.signing_secret", "not a signing secret (the app's Basic Information "
                                                   "page, App Credentials, Signing Secret)")
    channel = fields["channel"]
    if not isinstance(channel, str) or not _SLACK_CHANNEL.fullmatch(channel.strip()):
        raise ConfigError(f"{key}.channel", f"{show(channel)} is not a channel id (e.g. C0123ABCD) "
                                            "or #name")
    api_url = parse_http_url(fields.get("api_url", "https://slack.com/api"), f"{key}.api_url")
    return SlackSettings(token.strip(), secret.strip(), channel.strip(), api_url.rstrip("/"))


def parse_routes(value: Any, key: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ConfigError(
            key, 'expected a mapping of name: URL, e.g. {stripe: "https://api.stripe.com"}'
        )
    routes = []
    for name, url in value.items():
        where = f"{key}.{name}"
        if not isinstance(name, str) or not _ROUTE_NAME.fullmatch(name) or name in (".", ".."):
            problem = "a route name is one path segment: letters, digits, '.', '_', '-'"
            raise ConfigError(where, problem)
        url = parse_http_url(url, where)
        if "?" in url or "#" in url:
            raise ConfigError(where, "a route's base URL cannot carry a query or a fragment")
        routes.append((name, url.rstrip("/")))  # so forwarding is base + the rest of the path
    return tuple(routes)


def parse_webhook(raw: Any, where: str) -> Webhook:
    fields = parse_fields(raw, where, ("url", "format"), ("url",))
    fmt = parse_choice(fields.get("format", "json"), f"{where}.format", ("slack", "json"))
    return Webhook(parse_http_url(fields["url"], f"{where}.url"), fmt)


STORE_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def parse_store_url(value: Any, key: str, base: Path) -> str:
    """A store URL, its options checked here, at load, rather than when the store opens."""
    expected = "(use sqlite:///path/to/file.db or postgresql://user@host/db)"
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a URL {expected}")
    if value.startswith(SQLITE_PREFIX):
        path, _, query = value[len(SQLITE_PREFIX) :].partition("?")
        if not path:
            raise ConfigError(key, f"the sqlite URL names no file {expected}")
        options = dict(parse_qsl(query, keep_blank_values=True))
        store_busy_timeout(options.pop("busy_timeout", None), key)
        if options:
            raise ConfigError(key, f"unsupported sqlite option(s) {', '.join(sorted(options))} "
                                   "(only busy_timeout=SECONDS)")
        # sqlite:////abs/x.db holds "/abs/x.db"; sqlite:///x.db a relative path: resolve it once.
        resolved = SQLITE_PREFIX + str(resolve_path(path, key, base))
        return f"{resolved}?{query}" if query else resolved
    if value.startswith(("postgresql://", "postgres://")):
        try:
            options = dict(parse_qsl(urlsplit(value).query, keep_blank_values=True))
        except ValueError as exc:
            raise ConfigError(key, f"not a URL: {exc}") from None
        store_busy_timeout(options.get("busy_timeout"), key)
        schema = options.get("schema")
        if schema is not None:
            if not STORE_SCHEMA_NAME.fullmatch(schema):
                raise ConfigError(key, "schema must be a lower-case SQL name ([a-z_][a-z0-9_]*)")
            if "search_path" in options.get("options", ""):
                raise ConfigError(key, "use schema=NAME or options=-csearch_path…, not both")
        return value
    if value.startswith("sqlite:"):
        raise ConfigError(key, f"a sqlite URL starts with sqlite:/// (three slashes) {expected}")
    scheme = value.partition(":")[0]  # not the whole URL: it may hold a password
    raise ConfigError(key, f"scheme {scheme!r} is not a supported store {expected}")


def store_busy_timeout(value: str | None, key: str = "store.url") -> float:
    """``busy_timeout=SECONDS`` of a store URL: how long a write waits for another
    connection's lock before the store counts as unavailable (default 10)."""
    try:
        seconds = float(value if value is not None else "10")
    except ValueError:
        raise ConfigError(key, "busy_timeout must be a number of seconds") from None
    if not 0 <= seconds <= 3600:
        raise ConfigError(key, "busy_timeout must be 0 to 3600 seconds")
    return seconds


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///`` URL: ``sqlite:////abs/x.db`` → ``/abs/x.db``."""
    if not url.startswith(SQLITE_PREFIX):
        raise ValueError(f"not a sqlite URL: {url.partition(':')[0]}:…")
    return Path(url[len(SQLITE_PREFIX) :])


def parse_rego_ref(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _REGO_REF.fullmatch(value.strip()):
        raise ConfigError(key, f"{show(value)} is not a Rego reference (e.g. data.hitl.decision)")
    return value.strip()


# -- YAML ---------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: PyYAML silently keeps the last,
    which would drop half of a config that has two ``proxy:`` sections."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        name = loader.construct_object(key_node, deep=True)
        if isinstance(name, str | int | float | bool) or name is None:
            if name in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {name!r}", key_node.start_mark
                )
            seen.add(name)
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str, key: str) -> Any:
    """Parse a YAML document; a syntax error becomes a one-line ConfigError with line and column."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(key, f"not valid YAML: {where}{exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(key, f"not valid YAML: {str(exc).splitlines()[0]}") from None
