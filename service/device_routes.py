"""HTTP handlers of the device registry: list a user's devices, set trust."""

from __future__ import annotations

import msgspec
from aiohttp import web

from service.bodies import json_response, read_json
from service.errors import InvalidRequest, NotFound
from service.models import DeviceId, DeviceTrustRequest
from service.records import DeviceEntry
from service.routes import path_user_id
from service.state import API_KEYS, STORE
from service.views import rfc3339


def device_view(device_id: str, entry: DeviceEntry, active_sessions: int) -> dict[str, object]:
    return {
        "id": device_id,
        "type": entry.device_type or None,
        "name": entry.device_name or None,
        "trusted": entry.trusted == 1,
        "first_seen_at": rfc3339(entry.first_seen_ms),
        "last_seen_at": rfc3339(entry.last_seen_ms),
        "active_sessions": active_sessions,
    }


def _path_device_id(request: web.Request) -> str:
    try:
        return msgspec.convert(request.match_info["device_id"], DeviceId)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"device_id: {exc}") from None


async def list_devices(request: web.Request) -> web.Response:
    request.app[API_KEYS].require(request)
    user_id = path_user_id(request)
    devices = await request.app[STORE].list_devices(user_id)
    devices.sort(key=lambda item: item[1].last_seen_ms, reverse=True)
    return json_response({"devices": [device_view(*item) for item in devices]})


async def set_device_trust(request: web.Request) -> web.Response:
    request.app[API_KEYS].require(request)
    user_id = path_user_id(request)
    device_id = _path_device_id(request)
    body = await read_json(request, DeviceTrustRequest)

    found = await request.app[STORE].set_device_trust(user_id, device_id, body.trusted)
    if found is None:
        raise NotFound(f"user {user_id} never signed in on device {device_id}")
    entry, active_sessions = found
    return json_response(device_view(device_id, entry, active_sessions))
