"""What the gate needs from a policy engine, whichever evaluates the Rego.

Two engines implement it: ``embedded.EmbeddedEngine`` (regopy, in process) and the
remote OPA engine. Both answer with typed values: a ``Decision`` parsed by
``decision.parse_decision``, or a bool for interception. Every failure to get a
well-formed answer is a ``PolicyError``, which the gate turns into a fail-closed 403.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from proxy.errors import PolicyError
from proxy.model import Decision

# The optional rule asked at CONNECT: intercept the TLS or pass a blind tunnel.
INTERCEPT_QUERY = "data.hitl.intercept"


def intercept_answer(defined: bool, value: Any) -> bool:
    """``data.hitl.intercept``'s value as the gate reads it, whichever engine evaluated it:
    undefined means intercept; anything but a boolean is a ``PolicyError``."""
    if not defined:
        return True
    if not isinstance(value, bool):
        raise PolicyError(f"{INTERCEPT_QUERY} must be true or false, not {json.dumps(value)}")
    return value


class PolicyEngine(Protocol):
    async def decide(self, input: dict[str, Any]) -> Decision:
        """The decision for this input document. Raises ``PolicyError``."""
        ...

    async def intercept(self, input: dict[str, Any]) -> bool:
        """``data.hitl.intercept`` for a CONNECT input; undefined means True.

        Raises ``PolicyError`` when the rule fails or is not a bool.
        """
        ...

    def describe(self) -> str:
        """One line for the startup log: which engine, which policies."""
        ...

    def close(self) -> None: ...


class PolicyLoadError(Exception):
    """The policies cannot be loaded; the gate does not start.

    The message is meant for the operator as is, e.g.
    ``policies/main.rego:12:5: Invalid boolean operator``.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
