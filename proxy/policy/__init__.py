"""Policy engines: the Rego that decides allow, deny or hold (docs/policies.md).

build_input / connect_input   the input document for a request / a CONNECT
PolicyEngine                  what the gate calls: decide, intercept, describe, close
EmbeddedEngine                regopy, in process (the default)
parse_decision                the decision document → a typed ``Decision``
PolicyLoadError               the policies cannot be loaded: the gate does not start
run_tests                     the ``test_*`` rules, for ``hitl-proxy policy test``
"""

from proxy.policy.decision import parse_decision, parse_timeout
from proxy.policy.embedded import EmbeddedEngine
from proxy.policy.engine import INTERCEPT_QUERY, PolicyEngine, PolicyLoadError
from proxy.policy.input import build_input, connect_input
from proxy.policy.rego_tests import TestResult, run_tests

__all__ = [
    "INTERCEPT_QUERY",
    "EmbeddedEngine",
    "PolicyEngine",
    "PolicyLoadError",
    "TestResult",
    "build_input",
    "connect_input",
    "parse_decision",
    "parse_timeout",
    "run_tests",
]
