"""Redis access: one async wrapper per Lua script, with a deadline on each call.

Every wrapper builds keys with service.keys, runs one script (one round
trip), decodes the reply once and turns a status code into its error.
Any Redis failure or a call slower than the deadline raises
StoreUnavailable, so the service fails closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import msgspec
import redis.exceptions

from service.errors import (
    DeviceNotTrusted,
    InvalidToken,
    SessionExpired,
    SessionLimitReached,
    SessionRevoked,
    StoreUnavailable,
)
from service.keys import UserKeys, user_keys
from service.records import DeviceEntry, SessionRecord, decode_device, decode_session
from service.scripts import Scripts, Status
from service.tokens import ParsedToken, SessionRef, new_session, user_tag

logger = logging.getLogger("session_store.store")

T = TypeVar("T")

# An activity extension is written only when it moves expires_at by at
# least 1/100 of the window: a session then costs at most about 100 writes
# per window however often it is validated, and its idle timeout is at
# most 1 % shorter than configured (14.4 min of a 24 h window, 3 s of 5 min).
EXTEND_MIN_STEP_RATIO = 100

# Validation modes of validate_session.lua.
MODE_CHECK = 0
MODE_ACTIVITY = 1
MODE_EXTEND = 2

_ID_ATTEMPTS = 3


class NewSession(msgspec.Struct, kw_only=True):
    """What a create request asks for, after policy resolution. Durations in seconds."""

    user_id: str
    device_id: str
    device_type: str
    device_name: str
    policy: str
    window_s: int
    max_lifetime_s: int
    extend_on_activity: bool
    max_sessions: int
    on_limit: str
    requires_trusted_device: bool
    client_ip: str
    user_agent: str
    metadata_json: str


class CreatedSession(msgspec.Struct, kw_only=True):
    ref: SessionRef
    token: str
    created_ms: int
    expires_ms: int
    max_expires_ms: int
    trusted: bool
    replaced: list[str]
    evicted: list[str]

    def __repr__(self) -> str:
        return f"CreatedSession(session_id={self.ref.session_id!r})"


class Validation(msgspec.Struct, kw_only=True):
    ref: SessionRef
    record: SessionRecord
    now_ms: int
    extended: bool
    device_count: int | None


class Store:
    """Session operations on one Redis (single node or cluster client)."""

    def __init__(self, client: Any, *, key_prefix: str, timeout_s: float, grace_s: int,
                 device_retention_s: int) -> None:
        self.client = client
        self.scripts = Scripts(client)
        self.key_prefix = key_prefix
        self.timeout_s = timeout_s
        self.grace_ms = grace_s * 1000
        self.device_retention_ms = device_retention_s * 1000

    def keys_for(self, tag: str) -> UserKeys:
        return user_keys(self.key_prefix, tag)

    async def call(self, awaitable: Awaitable[T]) -> T:
        """Await one Redis call under the deadline; map every failure to 503."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await awaitable
        except TimeoutError:
            logger.warning("redis call timed out after %.3fs", self.timeout_s)
            raise StoreUnavailable(f"the session store did not answer within {self.timeout_s}s") from None
        except redis.exceptions.RedisError as exc:
            logger.warning("redis call failed: %s", type(exc).__name__)
            raise StoreUnavailable("the session store is unreachable or refused the call") from None
        except OSError as exc:
            logger.warning("redis connection failed: %s", exc.strerror or type(exc).__name__)
            raise StoreUnavailable("the session store is unreachable") from None

    async def ping(self) -> bool:
        await self.call(self.client.ping())
        return True

    async def load_scripts(self) -> None:
        """Load every script into the script cache (readiness needs them)."""
        for script in self.scripts.all():
            await self.call(self.client.script_load(script.script))

    async def create_session(self, request: NewSession) -> CreatedSession:
        """Create a session; raise SessionLimitReached or DeviceNotTrusted."""
        for _ in range(_ID_ATTEMPTS):
            ref, token, secret_hash = new_session(request.user_id)
            reply = await self._run_create(ref, secret_hash, request)
            if reply[0] != Status.ID_COLLISION:
                return self._created(ref, token, request, reply)
        # 48 random bits per user: three collisions in a row mean a broken RNG.
        raise RuntimeError("could not draw an unused session id")

    async def _run_create(self, ref: SessionRef, secret_hash: bytes, request: NewSession) -> list[Any]:
        keys = self.keys_for(ref.tag)
        args: list[bytes | str | int] = [
            ref.sid, secret_hash, request.user_id, request.device_id, request.device_type,
            request.device_name, request.window_s * 1000, request.max_lifetime_s * 1000,
            int(request.extend_on_activity), request.policy, request.client_ip, request.user_agent,
            request.metadata_json, request.max_sessions, request.on_limit, self.grace_ms,
            self.device_retention_ms, int(request.requires_trusted_device),
        ]
        return await self.call(self.scripts.create_session(
            keys=[keys.index, keys.devices, keys.session_prefix, keys.marker_prefix], args=args))

    def _created(self, ref: SessionRef, token: str, request: NewSession, reply: list[Any]) -> CreatedSession:
        status = reply[0]
        if status == Status.LIMIT_REACHED:
            raise SessionLimitReached(
                f"user {request.user_id} has {reply[1]} of {request.max_sessions} sessions "
                f"and the policy is reject",
                user_id=request.user_id,
                live_count=reply[1],
            )
        if status == Status.DEVICE_NOT_TRUSTED:
            raise DeviceNotTrusted(
                f"policy {request.policy} requires a trusted device, "
                f"and device {request.device_id} is not marked trusted"
            )
        replaced = [SessionRef(ref.tag, _text(reply[5])).session_id] if reply[5] else []
        evicted = [SessionRef(ref.tag, _text(sid)).session_id for sid in reply[6:]]
        return CreatedSession(
            ref=ref, token=token, created_ms=reply[1], expires_ms=reply[2],
            max_expires_ms=reply[3], trusted=reply[4] == 1, replaced=replaced, evicted=evicted,
        )

    async def validate(self, token: ParsedToken, *, mode: int, device_count: bool = False) -> Validation:
        """Check a token and extend per mode; raise the matching TokenRejected."""
        ref = token.ref
        keys = self.keys_for(ref.tag)
        reply = await self.call(self.scripts.validate_session(
            keys=[keys.session(ref.sid), keys.marker(ref.sid), keys.index, keys.devices,
                  keys.session_prefix],
            args=[token.secret_hash, mode, self.grace_ms, EXTEND_MIN_STEP_RATIO, int(device_count)],
        ))
        status = reply[0]
        if status == Status.OK:
            return Validation(
                ref=ref, record=decode_session(reply[1]), now_ms=reply[2], extended=reply[3] == 1,
                device_count=reply[4] if reply[4] >= 0 else None,
            )
        if status == Status.EXPIRED:
            if reply[1] == 1:
                raise SessionExpired("the session reached its maximum lifetime")
            raise SessionExpired("the session expired")
        if status == Status.REVOKED:
            raise SessionRevoked("the session was revoked")
        raise InvalidToken("the token does not match a session")

    async def read_session(self, ref: SessionRef) -> tuple[SessionRecord, int] | None:
        """Return a live session's record and the Redis time in ms, or None."""
        keys = self.keys_for(ref.tag)
        reply = await self.call(self.scripts.read_session(keys=[keys.session(ref.sid)], args=[]))
        if reply[0] != Status.OK:
            return None
        return decode_session(reply[1]), reply[2]

    async def list_sessions(self, user_id: str) -> tuple[list[tuple[SessionRef, SessionRecord]], int]:
        """Return the user's live sessions, newest activity first, and the Redis time in ms."""
        tag = user_tag(user_id)
        keys = self.keys_for(tag)
        reply = await self.call(self.scripts.list_sessions(
            keys=[keys.index, keys.session_prefix], args=[user_id]))
        sessions = [
            (SessionRef(tag, _text(reply[i])), decode_session(reply[i + 1]))
            for i in range(2, len(reply), 2)
        ]
        return sessions, reply[1]

    async def revoke_session(self, ref: SessionRef, *, user_id: str = "") -> bool:
        """Revoke one live session; with user_id, only if it is that user's."""
        keys = self.keys_for(ref.tag)
        reply = await self.call(self.scripts.revoke_session(
            keys=[keys.index, keys.devices, keys.session_prefix, keys.marker_prefix],
            args=[ref.sid, user_id]))
        return reply[0] == Status.OK

    async def revoke_user_sessions(self, user_id: str, *, except_sid: str = "") -> list[str]:
        """Revoke every live session of a user but except_sid; return the revoked ids."""
        tag = user_tag(user_id)
        keys = self.keys_for(tag)
        reply = await self.call(self.scripts.revoke_user_sessions(
            keys=[keys.index, keys.devices, keys.session_prefix, keys.marker_prefix],
            args=[user_id, except_sid]))
        return [SessionRef(tag, _text(sid)).session_id for sid in reply[2:]]

    async def read_devices(self, user_id: str) -> dict[str, DeviceEntry]:
        keys = self.keys_for(user_tag(user_id))
        raw = await self.call(self.client.hgetall(keys.devices))
        return {_text(device_id): decode_device(entry) for device_id, entry in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value
