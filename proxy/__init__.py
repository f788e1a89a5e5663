"""hitl-proxy: a policy-gated egress proxy that puts a human between an AI agent and its
sensitive actions. See README.md and docs/."""

__version__ = "0.1.0"
