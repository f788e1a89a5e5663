"""A short OpenAPI 3.1 description of the review API (served at /api/openapi.json)."""

from __future__ import annotations

from typing import Any

from proxy import __version__

_ERR = {"description": "JSON error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_REC = {"description": "a held request", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Request"}}}}
_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]


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
                      "properties": {"error": {"type": "string"}, "message": {"type": "string"}}},
            "Request": {"type": "object", "required": [
                "id", "status", "agent", "method", "url", "headers", "body_text", "message", "reviewers",
                "approvals_needed", "decisions", "comments", "created_at", "deadline", "response_status"],
                "properties": {
                    "id": {"type": "string"},
                    "status": {"enum": ["pending", "approved", "forwarding", "forwarded", "rejected",
                                        "expired", "failed"]},
                    "agent": {"type": "string"}, "method": {"type": "string"}, "url": {"type": "string"},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    "body_text": {"type": ["string", "null"]}, "message": {"type": "string"},
                    "reviewers": {"type": "array", "items": {"type": "string"}},
                    "approvals_needed": {"type": "integer"},
                    "decisions": {"type": "array", "items": {"type": "object"}},
                    "comments": {"type": "array", "items": {"type": "object"}},
                    "created_at": {"type": "string"}, "deadline": {"type": "string"},
                    "response_status": {"type": ["integer", "null"]}}},
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
        "/api/requests/{id}/approve": _decision("Approve, optionally with an edit and a standing grant", {
            "type": "object", "properties": {
                "comment": {"type": "string"},
                "edit": {"type": "object", "properties": {"body": {}, "headers": {"type": "object"}}},
                "grant_minutes": {"type": "integer"}}}),
        "/api/requests/{id}/reject": _decision("Reject; the comment goes back to the agent", {
            "type": "object", "required": ["comment"], "properties": {"comment": {"type": "string"}}}),
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
        "/healthz": {"get": {"security": [], "responses": {"200": {"description": "{status: ok}"}}}},
        "/readyz": {"get": {"security": [], "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
        "/metrics": {"get": {"security": [], "responses": {"200": {"description": "Prometheus text"}}}},
    },
}
