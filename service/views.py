"""Response bodies: JSON shapes of sessions, validations and devices."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from service.records import SessionRecord
    from service.store import CreatedSession, Validation
    from service.tokens import SessionRef


def rfc3339(ms: int) -> str:
    """Format ms since the epoch as an RFC 3339 UTC time in whole seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))


def seconds_left(until_ms: int, now_ms: int) -> int:
    """Whole seconds from now to until, as the difference of the printed times."""
    return max(0, until_ms // 1000 - now_ms // 1000)


def _or_none(text: str) -> str | None:
    return text or None


def _metadata(record: SessionRecord) -> Any:
    return orjson.loads(record.metadata) if record.metadata else {}


def session_item(ref: SessionRef, record: SessionRecord, last_active_ms: int) -> dict[str, Any]:
    """Build a session item as the lists and GET /v1/sessions/{id} return it."""
    return {
        "session_id": ref.session_id,
        "user_id": record.user_id,
        "device": {
            "id": record.device_id,
            "type": _or_none(record.device_type),
            "name": _or_none(record.device_name),
            "trusted": record.trusted == 1,
        },
        "created_at": rfc3339(record.created_ms),
        "last_active_at": rfc3339(last_active_ms),
        "expires_at": rfc3339(record.expires_ms),
        "max_expires_at": rfc3339(record.max_expires_ms),
        "expires_in": record.window_ms // 1000,
        "extend_on_activity": record.extend_on_activity == 1,
        "policy": record.policy,
        "client": {"ip": _or_none(record.client_ip), "user_agent": _or_none(record.user_agent)},
        "metadata": _metadata(record),
    }


def created_body(created: CreatedSession, request: Any, window_s: int, policy: str,
                 extend: bool) -> dict[str, Any]:
    device = request.device
    client = request.client
    return {
        "session_id": created.ref.session_id,
        "token": created.token,
        "user_id": request.user_id,
        "device": {"id": device.id, "type": device.type, "name": device.name,
                   "trusted": created.trusted},
        "created_at": rfc3339(created.created_ms),
        "last_active_at": rfc3339(created.created_ms),
        "expires_at": rfc3339(created.expires_ms),
        "max_expires_at": rfc3339(created.max_expires_ms),
        "expires_in": window_s,
        "extend_on_activity": extend,
        "policy": policy,
        "client": {"ip": client.ip if client else None,
                   "user_agent": client.user_agent if client else None},
        "metadata": request.metadata or {},
        "replaced": created.replaced,
        "evicted": created.evicted,
    }


def validation_body(result: Validation) -> dict[str, Any]:
    record = result.record
    return {
        "valid": True,
        "session_id": result.ref.session_id,
        "user_id": record.user_id,
        "device_id": record.device_id,
        "expires_at": rfc3339(record.expires_ms),
        "expires_in": seconds_left(record.expires_ms, result.now_ms),
    }


def status_body(result: Validation) -> dict[str, Any]:
    record = result.record
    return {
        "valid": True,
        "session_id": result.ref.session_id,
        "user_id": record.user_id,
        "device_id": record.device_id,
        "expires_at": rfc3339(record.expires_ms),
        "expires_in": seconds_left(record.expires_ms, result.now_ms),
        "max_expires_at": rfc3339(record.max_expires_ms),
        "device_count": result.device_count,
    }


def extend_body(result: Validation) -> dict[str, Any]:
    record = result.record
    return {
        "extended": result.extended,
        "expires_at": rfc3339(record.expires_ms),
        "expires_in": seconds_left(record.expires_ms, result.now_ms),
        "max_expires_at": rfc3339(record.max_expires_ms),
    }
