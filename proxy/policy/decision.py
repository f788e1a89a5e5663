"""Parse the policy's decision document (docs/policies.md) into a ``Decision``, strictly.

The document is what a human-written policy produced, so every problem is reported with
the field it concerns; downstream code only ever sees a well-formed ``Decision``.
Unknown keys are ignored (a policy may carry its own annotations); a key set to null
counts as absent.
"""

from __future__ import annotations

from typing import Any

from proxy.config_types import parse_duration
from proxy.errors import ConfigError, PolicyError
from proxy.model import Action, Decision, OnTimeout

_ACTIONS = frozenset(a.value for a in Action)
_ON_TIMEOUT = frozenset(o.value for o in OnTimeout)


def parse_decision(doc: Any) -> Decision:
    if isinstance(doc, bool):
        raise PolicyError(
            f"policy decision is a bare {str(doc).lower()}: it must be an object such as "
            '{"action": "allow"}'
        )
    if not isinstance(doc, dict):
        raise PolicyError(f"policy decision must be an object, not {_kind(doc)}")

    action = doc.get("action")
    if action is None:
        raise PolicyError('policy decision has no "action" (allow, deny or hold)')
    if not isinstance(action, str) or action not in _ACTIONS:
        raise PolicyError(f"policy decision: action must be allow, deny or hold, not {action!r}")

    reviewers = _get(doc, "reviewers", list, ())
    if not all(isinstance(r, str) and r for r in reviewers):
        raise PolicyError("policy decision: reviewers must be a list of non-empty strings")

    approvals = _get(doc, "approvals", int, 1)
    if approvals < 1:
        raise PolicyError(f"policy decision: approvals must be at least 1, not {approvals}")

    timeout = doc.get("timeout")
    on_timeout = _get(doc, "on_timeout", str, None)
    if on_timeout is not None and on_timeout not in _ON_TIMEOUT:
        raise PolicyError(f"policy decision: on_timeout must be deny or allow, not {on_timeout!r}")

    rule = _get(doc, "rule", str, "default")
    if not rule:
        raise PolicyError("policy decision: rule must not be empty")

    return Decision(
        action=Action(action),
        message=_get(doc, "message", str, ""),
        reviewers=tuple(reviewers),
        approvals=approvals,
        timeout=None if timeout is None else parse_timeout(timeout),
        on_timeout=None if on_timeout is None else OnTimeout(on_timeout),
        grantable=_get(doc, "grantable", bool, False),
        rule=rule,
        shadow=_get(doc, "shadow", bool, False),
    )


def parse_timeout(value: Any) -> float:
    """Seconds from the same durations as ``hold.timeout``: "30s", "15m", "2h", 90, …"""
    try:
        return parse_duration(value, "timeout")
    except ConfigError as exc:
        raise PolicyError(f"policy decision: timeout: {exc.problem}") from exc


def _get(doc: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = doc.get(key)
    if value is None:
        return default
    # bool is an int in Python, not in the policy's JSON.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise PolicyError(f"policy decision: {key} must be {_NAMES[kind]}, not {_kind(value)}")
    return value


_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list"}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"the string {value!r}"
    return {dict: "an object", list: "a list", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )
