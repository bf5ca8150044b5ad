"""The OpenAPI 3.1 document, generated from the route table and msgspec types."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from service import __version__, schemas
from service.models import CreateSessionRequest, DeviceTrustRequest

MANAGEMENT: list[dict[str, list[str]]] = [{"apiKey": []}]
SELF_SERVICE: list[dict[str, list[str]]] = [{"sessionToken": []}, {"sessionCookie": []}]

_SESSION_ID = {"name": "session_id", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": "^sess_[A-Za-z0-9_-]{24}$"}}
_USER_ID = {"name": "user_id", "in": "path", "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": 128}}
_DEVICE_ID = {"name": "device_id", "in": "path", "required": True,
              "schema": {"type": "string", "minLength": 1, "maxLength": 128}}
# An event id, "<ms>-<n>", as service.event_routes accepts it; empty is the same as absent.
_CURSOR = {"type": "string", "pattern": "^([0-9]{1,20}-[0-9]{1,20})?$"}
_LAST_EVENT_ID = {"name": "Last-Event-ID", "in": "header", "required": False, "schema": _CURSOR,
                  "description": "Resume after this event id; by default the stream starts after the "
                                 "newest event"}

# (method, path) -> summary, security, parameters, request body type,
# {status: response body type or None}. Every route must have an entry.
_OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/sessions"): {
        "summary": "Create a session for one device of a user",
        "security": MANAGEMENT, "body": CreateSessionRequest,
        "responses": {201: schemas.CreatedSessionView, 400: None, 401: None, 403: None,
                      409: None, 413: None, 429: None},
    },
    ("GET", "/v1/sessions/{session_id}"): {
        "summary": "Get one live session", "security": MANAGEMENT, "parameters": [_SESSION_ID],
        "responses": {200: schemas.SessionItem, 401: None, 404: None},
    },
    ("DELETE", "/v1/sessions/{session_id}"): {
        "summary": "Revoke one session", "security": MANAGEMENT, "parameters": [_SESSION_ID],
        "responses": {204: None, 401: None, 404: None},
    },
    ("GET", "/v1/users/{user_id}/sessions"): {
        "summary": "List a user's live sessions, most recently active first",
        "security": MANAGEMENT, "parameters": [_USER_ID],
        "responses": {200: schemas.SessionList, 400: None, 401: None},
    },
    ("DELETE", "/v1/users/{user_id}/sessions"): {
        "summary": "Revoke all of a user's sessions, optionally keeping one",
        "security": MANAGEMENT,
        "parameters": [_USER_ID, {"name": "except", "in": "query", "required": False,
                                  "schema": {"type": "string"}}],
        "responses": {200: schemas.RevokedCount, 400: None, 401: None},
    },
    ("GET", "/v1/validate"): {
        "summary": "Validate a token and extend its session (gateway hot path)",
        "security": SELF_SERVICE,
        "parameters": [{"name": "extend", "in": "query", "required": False,
                        "schema": {"type": "string", "enum": ["true", "false", "1", "0"]}}],
        "responses": {200: schemas.ValidationView, 400: None, 401: None},
    },
    ("GET", "/v1/me/session"): {
        "summary": "Status of the current session, without extending it",
        "security": SELF_SERVICE, "responses": {200: schemas.SessionStatus, 401: None},
    },
    ("DELETE", "/v1/me/session"): {
        "summary": "Sign out this device", "security": SELF_SERVICE,
        "responses": {204: None, 401: None},
    },
    ("POST", "/v1/me/session/extend"): {
        "summary": "Extend the current session up to its maximum lifetime",
        "security": SELF_SERVICE, "responses": {200: schemas.ExtendResult, 401: None},
    },
    ("GET", "/v1/me/sessions"): {
        "summary": "List the current user's live sessions", "security": SELF_SERVICE,
        "responses": {200: schemas.MySessionList, 401: None},
    },
    ("DELETE", "/v1/me/sessions"): {
        "summary": "Revoke the user's other sessions (scope=others) or all (scope=all)",
        "security": SELF_SERVICE,
        "parameters": [{"name": "scope", "in": "query", "required": True,
                        "schema": {"type": "string", "enum": ["others", "all"]}}],
        "responses": {200: schemas.RevokedCount, 400: None, 401: None},
    },
    ("DELETE", "/v1/me/sessions/{session_id}"): {
        "summary": "Revoke one of the user's own sessions", "security": SELF_SERVICE,
        "parameters": [_SESSION_ID], "responses": {204: None, 401: None, 404: None},
    },
    ("GET", "/v1/users/{user_id}/devices"): {
        "summary": "List the devices a user signed in on", "security": MANAGEMENT,
        "parameters": [_USER_ID], "responses": {200: schemas.DeviceList, 400: None, 401: None},
    },
    ("PUT", "/v1/users/{user_id}/devices/{device_id}"): {
        "summary": "Mark a device trusted or not; untrusting ends sessions that rely on trust",
        "security": MANAGEMENT, "parameters": [_USER_ID, _DEVICE_ID], "body": DeviceTrustRequest,
        "responses": {200: schemas.DeviceItem, 400: None, 401: None, 404: None, 413: None},
    },
    ("GET", "/v1/users/{user_id}/events"): {
        "summary": "A user's session events, oldest first, in pages",
        "security": MANAGEMENT,
        "parameters": [_USER_ID,
                       {"name": "after", "in": "query", "required": False, "schema": _CURSOR},
                       {"name": "limit", "in": "query", "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
        "responses": {200: schemas.EventPage, 400: None, 401: None},
    },
    ("GET", "/v1/me/events"): {
        "summary": "Server-Sent Events stream of the user's session events",
        "security": SELF_SERVICE, "stream": True, "parameters": [_LAST_EVENT_ID],
        "responses": {200: schemas.EventItem, 400: None, 401: None},
    },
}

_STATUS_TEXT = {200: "OK", 201: "Created", 204: "No Content", 400: "Invalid request",
                401: "Unauthorized", 403: "Forbidden", 404: "Not found", 409: "Conflict",
                413: "Payload too large", 429: "Too many requests",
                503: "Session store unavailable"}


def openapi_document(routes: Sequence[tuple[str, str, Any]]) -> dict[str, Any]:
    """Describe every route; raise KeyError for a route without a description."""
    models = {spec["body"] for spec in _OPERATIONS.values() if "body" in spec}
    models |= {model for spec in _OPERATIONS.values() for model in spec["responses"].values()
               if model is not None}
    models.add(schemas.Problem)
    ordered = sorted(models, key=lambda model: model.__name__)
    refs, components = msgspec.json.schema_components(ordered, ref_template="#/components/schemas/{name}")
    ref_of = dict(zip(ordered, refs, strict=True))

    paths: dict[str, dict[str, Any]] = {}
    for method, path, _ in routes:
        spec = _OPERATIONS[(method, path)]
        paths.setdefault(path, {})[method.lower()] = _operation(spec, ref_of)
    paths.update(_operations_paths())

    return {
        "openapi": "3.1.0",
        "info": {"title": "Session store", "version": __version__},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": _SECURITY_SCHEMES},
    }


def _operation(spec: dict[str, Any], ref_of: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, model in spec["responses"].items():
        responses[str(status)] = _response(status, model, ref_of, spec.get("stream", False))
    responses["503"] = _response(503, None, ref_of)

    operation: dict[str, Any] = {"summary": spec["summary"], "security": spec["security"],
                                 "parameters": spec.get("parameters", []), "responses": responses}
    if "body" in spec:
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": ref_of[spec["body"]]}}}
    return operation


def _response(status: int, model: Any, ref_of: dict[Any, dict[str, Any]],
              stream: bool = False) -> dict[str, Any]:
    if stream and status == 200:
        stream_body = {"text/event-stream": {"schema": _sse_event_schema(ref_of[model])}}
        return {"description": "Event stream, one event per session event", "content": stream_body}
    if status == 204:
        return {"description": _STATUS_TEXT[status]}
    if model is None:
        return {"description": _STATUS_TEXT[status],
                "content": {"application/problem+json": {"schema": ref_of[schemas.Problem]}}}
    return {"description": _STATUS_TEXT[status],
            "content": {"application/json": {"schema": ref_of[model]}}}


def _sse_event_schema(data_schema: dict[str, Any]) -> dict[str, Any]:
    """Describe one Server-Sent Event whose data field is a JSON document of data_schema.

    OpenAPI 3.1 leaves the schema of a text/event-stream body open; this
    follows OpenAPI 3.2's itemSchema reading, one schema per event, which
    schemathesis also applies.
    """
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "event": {"type": "string"},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data_schema},
            "retry": {"type": "integer"},
        },
        "required": ["id", "event", "data"],
    }


def _operations_paths() -> dict[str, Any]:
    status = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}

    def content(media_type: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"content": {media_type: {"schema": schema}}}

    def get(summary: str, responses: dict[str, Any]) -> dict[str, Any]:
        return {"get": {"summary": summary, "security": [], "responses": responses}}

    json_status = content("application/json", status)
    return {
        "/healthz": get("Process is alive", {"200": {"description": "Alive", **json_status}}),
        "/readyz": get("Redis reachable and scripts loaded", {
            "200": {"description": "Ready", **json_status},
            "503": {"description": "Not ready",
                    **content("application/problem+json", {"$ref": "#/components/schemas/Problem"})},
        }),
        "/metrics": get("Prometheus metrics", {
            "200": {"description": "Prometheus text format", **content("text/plain", {"type": "string"})},
        }),
        "/openapi.json": get("This document", {
            "200": {"description": "OpenAPI 3.1", **content("application/json", {"type": "object"})},
        }),
    }


_SECURITY_SCHEMES = {
    "apiKey": {"type": "http", "scheme": "bearer", "description": "API key from configuration"},
    "sessionToken": {"type": "http", "scheme": "bearer", "description": "Session token"},
    "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "session",
                      "description": "Session token in the configured cookie"},
}
