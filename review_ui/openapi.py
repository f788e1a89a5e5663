"""A short OpenAPI 3.1 description of the review API (served at /api/openapi.json).

Written by hand, and held to the code by tests/test_openapi.py: every route the app serves
is described here and every path here is served, with its methods, and the request
record's schema names exactly the fields ``serialize.request_json`` writes."""

from __future__ import annotations

from typing import Any

from proxy import __version__

_ERR = {"description": "JSON error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_REC = {"description": "a held request", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Request"}}}}
_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
_STR = {"type": "string"}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_NSTR = {"type": ["string", "null"]}
_ENTRIES = {"type": "array", "items": {"type": "object"}}


def _decision(summary: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"post": {"summary": summary, "parameters": _ID,
                     "requestBody": {"content": {"application/json": {"schema": body}}},
                     "responses": {"200": _REC, "400": _ERR, "401": _ERR, "403": _ERR, "404": _ERR,
                                   "409": _ERR}}}


SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "hitl-proxy review API", "version": __version__},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error", "message"],
                      "properties": {"error": _STR, "message": _STR,
                                     "current_status": {"type": "string", "description": "409 only"}}},
            "Request": {"type": "object", "required": [
                "id", "status", "agent", "method", "url", "headers", "body_text", "message", "reviewers",
                "approvals_needed", "decisions", "comments", "created_at", "deadline", "response_status"],
                "properties": {
                    "id": _STR,
                    "status": {"enum": ["pending", "approved", "forwarding", "forwarded", "rejected",
                                        "expired", "failed"]},
                    "agent": _STR, "agent_address": _STR, "method": _STR, "url": _STR, "host": _STR,
                    "path": _STR,
                    "headers": {"type": "object", "additionalProperties": _STR},
                    "body_text": _NSTR, "body_size": {"type": "integer"}, "message": _STR, "rule": _STR,
                    "reviewers": {"type": "array", "items": _STR},
                    "approvals_needed": {"type": "integer"},
                    "approvals": {"type": "integer", "description": "approvals so far"},
                    "grantable": {"type": "boolean"}, "on_timeout": {"enum": ["deny", "allow"]},
                    "decisions": _ENTRIES, "comments": _ENTRIES,
                    "created_at": _TIME, "deadline": _TIME, "decided_at": _TIME, "forwarded_at": _TIME,
                    "purged_at": _TIME,
                    "response_status": {"type": ["integer", "null"]}, "failure_reason": _NSTR,
                    "edited": {"type": "boolean"},
                    "edit": {"type": "object", "description": "the request as edited (when edited)",
                             "properties": {"headers": {"type": "object"}, "body_text": _NSTR,
                                            "body_size": {"type": "integer"}, "mcp": {}}},
                    "mcp": {"description": "the MCP tool calls in the body, or null"},
                    "can_decide": {"type": "boolean", "description": "may the caller decide it"},
                    "digest": {"type": ["string", "null"],
                               "description": "SHA-256 of what would be forwarded; approvals bind to it"},
                    "body_truncated": {"type": "boolean",
                                       "description": "body_text is a prefix (4 KiB in lists, 1 MiB in one record)"}}},
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/api/requests": {"get": {"summary": "List held requests", "parameters": [
            {"name": n, "in": "query", "schema": {"type": "string"}}
            for n in ("status", "agent", "host", "q", "limit", "cursor")],
            "responses": {"200": {"description": "{items, next_cursor}"}, "401": _ERR}}},
        "/api/requests/{id}": {"get": {"summary": "One held request (secrets redacted)", "parameters": _ID,
                                       "responses": {"200": _REC, "401": _ERR, "404": _ERR}}},
        "/api/requests/{id}/body": {"get": {
            "summary": "The raw body bytes (?edited=true: as it would be forwarded), as a download",
            "parameters": _ID, "responses": {"200": {"description": "the bytes, under the body's media type"},
                                             "401": _ERR, "404": _ERR}}},
        "/api/requests/{id}/approve": _decision(
            "Approve, optionally with an edit and (on the approval completing the quorum) a standing grant; "
            "digest: the record's digest as seen (409 if it changed since)", {
                "type": "object", "properties": {
                    "comment": {"type": "string"}, "digest": {"type": "string"},
                    "edit": {"type": "object", "properties": {"body": {}, "headers": {"type": "object"}}},
                    "grant_minutes": {"type": "integer"}}}),
        "/api/requests/{id}/reject": _decision("Reject; the comment goes back to the agent", {
            "type": "object", "required": ["comment"],
            "properties": {"comment": {"type": "string"}, "digest": {"type": "string"}}}),
        "/api/requests/{id}/comment": _decision("Comment without deciding", {
            "type": "object", "required": ["comment"], "properties": {"comment": {"type": "string"}}}),
        "/api/grants": {"get": {"summary": "Active standing grants", "responses": {"200": {"description": "{items}"}}}},
        "/api/grants/{id}": {"delete": {"summary": "Revoke a grant", "parameters": _ID,
                                        "responses": {"200": {"description": "the revoked grant"}, "404": _ERR}}},
        "/api/audit": {"get": {"summary": "Audit records", "responses": {"200": {"description": "{items, next_after}"}}}},
        "/api/events": {"get": {"summary": "Server-sent events of changes", "responses": {"200": {"description": "text/event-stream"}}}},
        "/api/insights": {"get": {"summary": "Per rule: holds, outcome rates, time to decision, suggestions",
                                  "parameters": [{"name": "window", "in": "query", "schema": {"type": "string"}}],
                                  "responses": {"200": {"description": "{window, quick_seconds, rules, suggestions}"},
                                                "400": _ERR, "401": _ERR}}},
        "/api/shadow": {"get": {"summary": "Holds and denies that shadow mode let through, newest first",
                                "parameters": [{"name": n, "in": "query", "schema": {"type": "string"}}
                                               for n in ("rule", "agent", "host", "window", "before", "limit")],
                                "responses": {"200": {"description": "{window, filters, summary, facets, items, "
                                                      "next_before}"}, "400": _ERR, "401": _ERR}}},
        "/api/me": {"get": {"summary": "Who the caller is", "responses": {
            "200": {"description": "{name, groups}"}, "401": _ERR}}},
        "/api/openapi.json": {"get": {"security": [], "summary": "This description",
                                      "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        "/slack/interactions": {"post": {"security": [], "summary": "Slack's signed button callbacks"
                                         " (only with review.slack)",
                                         "responses": {"200": {"description": "handled"}, "401": _ERR}}},
        "/healthz": {"get": {"security": [], "responses": {"200": {"description": "{status: ok}"}}}},
        "/readyz": {"get": {"security": [], "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
        "/metrics": {"get": {"security": [], "responses": {"200": {"description": "Prometheus text"}}}},
    },
}
