"""Response shapes, as msgspec types, for the OpenAPI document.

Handlers build plain dicts for speed; tests decode real responses with
these types (unknown fields forbidden), so the document cannot drift from
what the service sends.
"""

from __future__ import annotations

from typing import Any

import msgspec

_STRICT = {"forbid_unknown_fields": True}


class DeviceView(msgspec.Struct, **_STRICT):
    id: str
    type: str | None
    name: str | None
    trusted: bool


class ClientView(msgspec.Struct, **_STRICT):
    ip: str | None
    user_agent: str | None


class SessionItem(msgspec.Struct, **_STRICT):
    session_id: str
    user_id: str
    device: DeviceView
    created_at: str
    last_active_at: str
    expires_at: str
    max_expires_at: str
    expires_in: int
    extend_on_activity: bool
    policy: str
    client: ClientView
    metadata: dict[str, Any]


class MySessionItem(SessionItem, **_STRICT):
    current: bool


class CreatedSessionView(SessionItem, **_STRICT):
    token: str
    replaced: list[str]
    evicted: list[str]


class SessionList(msgspec.Struct, **_STRICT):
    sessions: list[SessionItem]
    device_count: int


class MySessionList(msgspec.Struct, **_STRICT):
    sessions: list[MySessionItem]
    device_count: int


class RevokedCount(msgspec.Struct, **_STRICT):
    revoked: int


class ValidationView(msgspec.Struct, **_STRICT):
    valid: bool
    session_id: str
    user_id: str
    device_id: str
    expires_at: str
    expires_in: int


class SessionStatus(msgspec.Struct, **_STRICT):
    valid: bool
    session_id: str
    user_id: str
    device_id: str
    expires_at: str
    expires_in: int
    max_expires_at: str
    device_count: int


class ExtendResult(msgspec.Struct, **_STRICT):
    extended: bool
    expires_at: str
    expires_in: int
    max_expires_at: str


class Problem(msgspec.Struct, **_STRICT):
    type: str
    title: str
    status: int
    detail: str
    code: str


class DeviceItem(msgspec.Struct, **_STRICT):
    id: str
    type: str | None
    name: str | None
    trusted: bool
    first_seen_at: str
    last_seen_at: str
    active_sessions: int


class DeviceList(msgspec.Struct, **_STRICT):
    devices: list[DeviceItem]


class EventItem(msgspec.Struct, **_STRICT):
    id: str
    type: str
    at: str
    user_id: str
    session_id: str | None
    device_id: str | None
    detail: dict[str, Any]


class EventPage(msgspec.Struct, **_STRICT):
    events: list[EventItem]
    next: str | None
