"""The reviewer-facing Starlette app: JSON review API, web UI, /metrics and health."""
