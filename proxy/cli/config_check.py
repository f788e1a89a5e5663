"""``hitl-proxy config check``: validate a config and its policies without serving.

Prints the effective settings (file, then ``HITL_*`` variables, then defaults) with every
secret elided, and exits 0; or prints one line per problem and exits 2. Nothing is created:
not the data folder, not the CA, not the store.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import ipaddress
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from proxy.config import SETTINGS, Settings, check_settings
from proxy.config_types import HostPort

ELIDED = "<elided>"
_SECRET_WORDS = ("hash", "secret", "password", "token", "key")


def check(args: argparse.Namespace) -> int:
    settings, problems = check_settings(args.config, os.environ)
    lines = [f"{exc.key}: {exc.problem}" for exc in problems]
    description = None
    if settings is not None:
        description, policy_problems = _check_policies(settings)
        lines += policy_problems
    if lines:
        for line in lines:
            print(f"hitl-proxy: config error: {line}", file=sys.stderr)
        return 2
    assert settings is not None
    source = str(settings.source) if settings.source else "none (embedded defaults)"
    print(f"# config file: {source}; HITL_* variables applied; secrets elided")
    print(yaml.safe_dump(effective(settings), sort_keys=False, width=120).rstrip())
    print(f"# policies: {description}")
    print("# config OK")
    return 0


def _check_policies(settings: Settings) -> tuple[str | None, list[str]]:
    from proxy.errors import ConfigError
    from proxy.policy.engine import PolicyLoadError

    if settings.policy.engine == "opa":
        return f"OPA at {settings.policy.opa_url} (not compiled here: the OPA server holds them)", []
    from proxy.policy.embedded import EmbeddedEngine

    try:
        engine = EmbeddedEngine.load(settings.policy.paths, settings.policy.query)
    except PolicyLoadError as exc:
        return None, [f"policy.paths: {line}" for line in exc.message.splitlines()]
    except ConfigError as exc:
        return None, [f"{exc.key}: {exc.problem}"]
    try:
        return engine.describe(), []
    finally:
        engine.close()


def effective(settings: Settings) -> dict[str, Any]:
    """The settings as a config file would hold them, secrets elided."""
    out: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.section:
            value = getattr(getattr(settings, setting.section), setting.name)
            out.setdefault(setting.section, {})[setting.name] = _plain(value, setting.key)
        else:
            out[setting.key] = _plain(getattr(settings, setting.key), setting.key)
    return out


def _plain(value: Any, key: str) -> Any:
    name = key.rpartition(".")[2]
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, bool | int | str):
        if isinstance(value, str) and value and any(w in name for w in _SECRET_WORDS):
            return ELIDED
        if isinstance(value, str) and name == "url" and not value.startswith("sqlite:"):
            return _safe_url(value, key)
        return value
    if isinstance(value, float):
        return _duration(value) if _is_duration(key) else value
    if isinstance(value, Path | HostPort | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if key == "proxy.routes":
        return {str(n): str(u) for n, u in value}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name), f"{key}.{f.name}") for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, tuple | list | frozenset | set):
        return [_plain(v, key) for v in value]
    return str(value)


def _safe_url(url: str, key: str) -> str:
    """A URL without its password and, for webhooks (a Slack webhook's path is its secret),
    without its path."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ELIDED
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:{ELIDED}@{host}"
    if key.startswith("notify.") or "slack" in key:
        return f"{parts.scheme}://{netloc}/{ELIDED}" if parts.path not in ("", "/") else f"{parts.scheme}://{netloc}/"
    return parts._replace(netloc=netloc).geturl()


_DURATIONS = {s.key for s in SETTINGS if isinstance(s.default, str)
              and s.default[-1:] in ("s", "m", "h", "d") and s.default[:-1].replace(".", "").isdigit()}


def _is_duration(key: str) -> bool:
    return key in _DURATIONS


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
