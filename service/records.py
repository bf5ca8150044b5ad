"""Stored records, decoded from the MessagePack arrays the Lua scripts write.

The field order here is the F_* / D_* order in lua/_prelude.lua; change
both together.
"""

from __future__ import annotations

import msgspec


class SessionRecord(msgspec.Struct, array_like=True, frozen=True):
    """One session as stored. Times are ms since the Unix epoch."""

    # Raw: the hash is binary, which cmsgpack stores with the str type.
    secret_hash: msgspec.Raw
    user_id: str
    device_id: str
    device_type: str
    device_name: str
    created_ms: int
    expires_ms: int
    max_expires_ms: int
    window_ms: int
    extend_on_activity: int
    policy: str
    last_active_ms: int
    client_ip: str
    user_agent: str
    metadata: str
    trusted: int
    client_net: str
    actions: str
    flags: int


class DeviceEntry(msgspec.Struct, array_like=True, frozen=True):
    """One device in a user's registry. Times are ms since the Unix epoch."""

    session_sid: str
    device_type: str
    device_name: str
    first_seen_ms: int
    last_seen_ms: int
    trusted: int


_session_decoder = msgspec.msgpack.Decoder(SessionRecord)
_device_decoder = msgspec.msgpack.Decoder(DeviceEntry)


def decode_session(raw: bytes) -> SessionRecord:
    return _session_decoder.decode(raw)


def decode_device(raw: bytes) -> DeviceEntry:
    return _device_decoder.decode(raw)
