"""The remote policy engine: a running OPA server asked over its Data API.

``POST {opa_url}/v1/data/hitl/decision`` with ``{"input": ...}`` answers
``{"result": ...}``; the result goes through the same ``parse_decision`` as the embedded
engine's, so both engines accept and refuse exactly the same decision documents. Every
way of not getting a well-formed answer — undefined result, non-200, a timeout (2 s), a
refused connection, a body that is not JSON — is a ``PolicyError``: the gate refuses the
request (fail closed).

Why httpx and not opa-python-client's ``AsyncOpaClient``: that client is built on
aiohttp (not one of our declared dependencies, only its transitive one); it addresses the
server by host and port only, so an ``opa_url`` with a path prefix (OPA behind a reverse
proxy) cannot be expressed; it retries refused connections and 502-504 answers with
backoff, which stretches a fail-closed answer well past the timeout while an agent
waits; and its aiohttp session must be opened and closed inside the running loop. httpx
is already what forwards the agents' requests, takes the URL as configured, and gives
one bounded attempt.

The client ignores ``HTTP_PROXY`` and friends (``trust_env=False``): the proxy's own
environment may point at the proxy itself, and the policy query must not loop through it.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from proxy.errors import PolicyError
from proxy.model import Decision
from proxy.policy.decision import parse_decision
from proxy.policy.engine import INTERCEPT_QUERY, intercept_answer

TIMEOUT = 2.0  # seconds for one policy query: an agent is waiting on it


class OpaEngine:
    def __init__(self, opa_url: str, query: str = "data.hitl.decision",
                 timeout: float = TIMEOUT) -> None:
        self._base = opa_url.rstrip("/")
        self._query = query
        self._decision_path = _data_path(query)
        self._intercept_path = _data_path(INTERCEPT_QUERY)
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    async def decide(self, input: dict[str, Any]) -> Decision:
        found, value = await self._query_data(self._decision_path, input)
        if not found:
            raise PolicyError(f"policy decision is undefined ({self._query} has no value "
                              f"on the OPA server at {self._base})")
        return parse_decision(value)

    async def intercept(self, input: dict[str, Any]) -> bool:
        found, value = await self._query_data(self._intercept_path, input)
        return intercept_answer(found, value)

    def describe(self) -> str:
        return f"opa: {self._base}/v1/data/{self._decision_path} (query {self._query})"

    def close(self) -> None:
        """Refuse further queries; the connections are released by ``aclose``."""
        self._closed = True

    async def aclose(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _query_data(self, path: str, input: dict[str, Any]) -> tuple[bool, Any]:
        """``(True, result)``, or ``(False, None)`` when the document is undefined."""
        if self._closed:
            raise PolicyError("the policy engine is closed")
        if self._client is None:  # created in the loop that uses it
            self._client = httpx.AsyncClient(timeout=self._timeout, trust_env=False,
                                             follow_redirects=False)
        url = f"{self._base}/v1/data/{path}"
        try:
            body = json.dumps({"input": input}, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"the input cannot be passed to the policy: {exc}") from exc
        try:
            response = await self._client.post(
                url, content=body.encode("utf-8"),
                headers={"Content-Type": "application/json"})
        except httpx.TimeoutException as exc:
            raise PolicyError(f"the OPA server at {self._base} did not answer within "
                              f"{self._timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise PolicyError(f"cannot reach the OPA server at {self._base}: "
                              f"{exc.__class__.__name__}: {exc}") from exc
        if response.status_code != 200:
            raise PolicyError(f"the OPA server at {self._base} answered {response.status_code} "
                              f"for {path}: {_excerpt(response.text)}")
        try:
            doc = response.json()
        except ValueError as exc:
            raise PolicyError(f"the OPA server at {self._base} answered with a body that is "
                              f"not JSON: {_excerpt(response.text)}") from exc
        if not isinstance(doc, dict):
            raise PolicyError(f"the OPA server at {self._base} answered {_excerpt(response.text)}, "
                              'not {"result": ...}')
        if "result" not in doc:
            return False, None
        return True, doc["result"]


def _data_path(query: str) -> str:
    """``data.hitl.decision`` → ``hitl/decision``, the Data API's path for that document."""
    return query.removeprefix("data.").replace(".", "/")


def _excerpt(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"
