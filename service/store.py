"""Redis access: one async wrapper per Lua script, with a deadline on each call.

Every wrapper runs one script (one round trip) with the user's keys from
service.keys, decodes the reply once and turns a status code into its
error. Any Redis failure or a call slower than the deadline raises
StoreUnavailable, so the service fails closed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import msgspec
import redis.exceptions

from service import metrics
from service.errors import (
    DeviceNotTrusted,
    InvalidToken,
    RateLimited,
    ReauthRequired,
    SessionExpired,
    SessionLimitReached,
    SessionRevoked,
    StoreUnavailable,
)
from service.events import Event, EventMirror, decode_emitted, event_id_key
from service.keys import UserKeys, user_keys
from service.pipeline import PipelinedConnection
from service.records import DeviceEntry, SessionRecord, decode_device, decode_session
from service.scripts import Scripts, Status
from service.tokens import ParsedToken, SessionRef, new_session, user_tag

if TYPE_CHECKING:
    from service.config import ServiceSettings

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

# Seconds between two log lines about failed Redis calls.
WARNING_INTERVAL_S = 5.0


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
    client_net: str
    user_agent: str
    metadata_json: str
    actions: str
    max_creates_per_minute: int


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


class LiveSession(NamedTuple):
    ref: SessionRef
    record: SessionRecord
    # Last activity, ms since the epoch, recorded at most 1 s late.
    last_active_ms: int


class ClientContext(msgspec.Struct, frozen=True):
    """The caller of a validation, compared with the session's sign-in context."""

    network: str = ""
    user_agent: str = ""


class Store:
    """Session operations on one Redis (single node or cluster client)."""

    def __init__(self, client: Any, settings: ServiceSettings,
                 pipelined: PipelinedConnection | None = None) -> None:
        self.client = client
        # Script calls go through the auto-pipelining connection when there
        # is one (single node); redis-py's client serves everything else.
        self.pipelined = pipelined
        self._in_flight = asyncio.Semaphore(settings.redis_max_connections)
        self._last_warning_s = -WARNING_INTERVAL_S
        self._suppressed_warnings = 0
        self.scripts = Scripts(client)
        self.key_prefix = settings.key_prefix
        self.timeout_s = settings.redis_timeout
        self.settings = settings
        self.mirror = EventMirror(self, settings.global_events_max_length)
        # ARGV[1..4] of every script, see lua/_prelude.lua.
        self._shared_args = [
            settings.expiry_grace * 1000,
            settings.events_max_length,
            settings.event_retention * 1000,
            settings.device_retention * 1000,
        ]

    def keys_for(self, tag: str) -> UserKeys:
        return user_keys(self.key_prefix, tag)

    async def call(self, awaitable: Awaitable[T], *, deadline: bool = True,
                   operation: str = "command") -> T:
        """Await one Redis call under the deadline; map every failure to 503.

        operation labels the call's latency in session_store_redis_call_duration_seconds.
        """
        started = time.perf_counter()
        try:
            if not deadline:
                return await awaitable
            async with asyncio.timeout(self.timeout_s):
                return await awaitable
        except (TimeoutError, redis.exceptions.TimeoutError):
            metrics.count_redis_error("timeout")
            self._warn("redis call timed out after %.3fs", self.timeout_s)
            raise StoreUnavailable(f"the session store did not answer within {self.timeout_s}s") from None
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            # RedisClusterException (no reachable node, slot not covered) is not a RedisError.
            connection = isinstance(exc, redis.exceptions.ConnectionError)
            metrics.count_redis_error("connection" if connection else "other")
            self._warn("redis call failed: %s", type(exc).__name__, error=str(exc)[:200])
            raise StoreUnavailable("the session store is unreachable or refused the call") from None
        except OSError as exc:
            metrics.count_redis_error("connection")
            self._warn("redis connection failed: %s", exc.strerror or type(exc).__name__)
            raise StoreUnavailable("the session store is unreachable") from None
        finally:
            metrics.observe_redis_call(operation, time.perf_counter() - started)

    def _warn(self, message: str, *args: object, error: str | None = None) -> None:
        """Log a failed Redis call, at most once per WARNING_INTERVAL_S with a count of the rest.

        During an outage every request fails; one line per request would
        bury everything else in the log.
        """
        now_s = time.monotonic()
        if now_s - self._last_warning_s < WARNING_INTERVAL_S:
            self._suppressed_warnings += 1
            return
        suppressed, self._suppressed_warnings = self._suppressed_warnings, 0
        self._last_warning_s = now_s
        logger.warning(message + " (%d similar failures not logged)", *args, suppressed,
                       extra={"error": error})

    async def _run(self, script: Any, tag: str, args: list[bytes | str | int]) -> tuple[int, list[Any]]:
        """Run one script for the user with tag; return its status and the rest of its reply."""
        keys = self.keys_for(tag).script_keys()
        full_args = [*self._shared_args, *args]
        operation = metrics.script_operation(script.sha)
        if self.pipelined is not None:
            # The pipelined connection enforces the deadline itself.
            reply = await self.call(self._evalsha_pipelined(script, keys, full_args), deadline=False,
                                    operation=operation)
        else:
            reply = await self.call(self._limited(script(keys=keys, args=full_args)), operation=operation)
        if reply[1]:
            metrics.count_events(reply[1])
            self.mirror.publish(decode_emitted(tag, reply[1]))
        return reply[0], reply[2:]

    async def _limited(self, awaitable: Awaitable[T]) -> T:
        """Wait for one of redis_max_connections slots, then await (inside the deadline).

        redis-py's cluster client fails at once with MaxConnectionsError when
        a node's pool is empty; waiting here queues the call instead.
        """
        async with self._in_flight:
            return await awaitable

    async def _evalsha_pipelined(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA on the shared pipelined connection; load the script once on NOSCRIPT."""
        assert self.pipelined is not None
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self.pipelined.execute(*command)
        except redis.exceptions.NoScriptError:
            await self.pipelined.execute("SCRIPT", "LOAD", script.script)
            return await self.pipelined.execute(*command)

    async def ping(self) -> bool:
        await self.call(self.client.ping())
        return True

    async def load_scripts(self) -> None:
        """Load every script into the script cache (readiness needs them)."""
        for script in self.scripts.all():
            await self.call(self.client.script_load(script.script))

    async def create_session(self, request: NewSession) -> CreatedSession:
        """Create a session; raise SessionLimitReached, DeviceNotTrusted or RateLimited."""
        for _ in range(_ID_ATTEMPTS):
            ref, token, secret_hash = new_session(request.user_id)
            status, reply = await self._run(self.scripts.create_session, ref.tag, [
                ref.sid, secret_hash, request.user_id, request.device_id, request.device_type,
                request.device_name, request.window_s * 1000, request.max_lifetime_s * 1000,
                int(request.extend_on_activity), request.policy, request.client_ip, request.client_net,
                request.user_agent, request.metadata_json, request.max_sessions, request.on_limit,
                int(request.requires_trusted_device), request.actions, request.max_creates_per_minute,
            ])
            if status != Status.ID_COLLISION:
                return self._created(ref, token, request, status, reply)
        # 48 random bits per user: three collisions in a row mean a broken RNG.
        raise RuntimeError("could not draw an unused session id")

    def _created(self, ref: SessionRef, token: str, request: NewSession, status: int,
                 reply: list[Any]) -> CreatedSession:
        if status == Status.LIMIT_REACHED:
            raise SessionLimitReached(
                f"user {request.user_id} has {reply[0]} of {request.max_sessions} sessions "
                f"and the policy is reject",
                user_id=request.user_id, live_count=reply[0],
            )
        if status == Status.DEVICE_NOT_TRUSTED:
            raise DeviceNotTrusted(
                f"policy {request.policy} requires a trusted device, "
                f"and device {request.device_id} is not marked trusted"
            )
        if status == Status.RATE_LIMITED:
            raise RateLimited(
                f"user {request.user_id} created more than {request.max_creates_per_minute} "
                f"sessions in a minute",
                retry_after_s=math.ceil(reply[0] / 1000),
            )
        replaced = [SessionRef(ref.tag, _text(reply[4])).session_id] if reply[4] else []
        evicted = [SessionRef(ref.tag, _text(sid)).session_id for sid in reply[5:]]
        return CreatedSession(
            ref=ref, token=token, created_ms=reply[0], expires_ms=reply[1],
            max_expires_ms=reply[2], trusted=reply[3] == 1, replaced=replaced, evicted=evicted,
        )

    async def validate(self, token: ParsedToken, *, mode: int, device_count: bool = False,
                       context: ClientContext | None = None) -> Validation:
        """Check a token, extend per mode and look for anomalies; raise the matching TokenRejected."""
        ref = token.ref
        context = context or ClientContext()
        status, reply = await self._run(self.scripts.validate_session, ref.tag, [
            ref.sid, token.secret_hash, mode, EXTEND_MIN_STEP_RATIO, int(device_count),
            context.network, context.user_agent, self.settings.invalid_secret_window * 1000,
            self.settings.invalid_secret_threshold,
        ])
        if status == Status.OK:
            return Validation(
                ref=ref, record=decode_session(reply[0]), now_ms=reply[1], extended=reply[2] == 1,
                device_count=reply[3] if reply[3] >= 0 else None,
            )
        raise _rejection(status, reply)

    async def read_session(self, ref: SessionRef) -> LiveSession | None:
        """Return a live session, or None."""
        status, reply = await self._run(self.scripts.read_session, ref.tag, [ref.sid])
        if status != Status.OK:
            return None
        return LiveSession(ref, decode_session(reply[0]), reply[2])

    async def list_sessions(self, user_id: str) -> tuple[list[LiveSession], int]:
        """Return the user's live sessions, newest activity first, and the Redis time in ms."""
        tag = user_tag(user_id)
        _, reply = await self._run(self.scripts.list_sessions, tag, [user_id])
        sessions = [
            LiveSession(SessionRef(tag, _text(reply[i])), decode_session(reply[i + 1]), reply[i + 2])
            for i in range(1, len(reply), 3)
        ]
        return sessions, reply[0]

    async def revoke_session(self, ref: SessionRef, *, user_id: str = "", reason: str = "admin") -> bool:
        """Revoke one live session; with user_id, only if it is that user's."""
        status, _ = await self._run(self.scripts.revoke_session, ref.tag, [ref.sid, user_id, reason])
        return status == Status.OK

    async def revoke_user_sessions(self, user_id: str, *, except_sid: str = "",
                                   reason: str = "admin") -> list[str]:
        """Revoke every live session of a user but except_sid; return the revoked ids."""
        tag = user_tag(user_id)
        _, reply = await self._run(self.scripts.revoke_user_sessions, tag, [user_id, except_sid, reason])
        return [SessionRef(tag, _text(sid)).session_id for sid in reply]

    async def list_devices(self, user_id: str) -> list[tuple[str, DeviceEntry, int]]:
        """Return (device id, entry, live session count) for each remembered device."""
        _, reply = await self._run(self.scripts.list_devices, user_tag(user_id), [user_id])
        return [(_text(reply[i]), decode_device(reply[i + 1]), reply[i + 2]) for i in range(0, len(reply), 3)]

    async def set_device_trust(self, user_id: str, device_id: str,
                               trusted: bool) -> tuple[DeviceEntry, int] | None:
        """Mark a device (un)trusted; return its entry and live session count, or None if unknown."""
        status, reply = await self._run(self.scripts.set_device_trust, user_tag(user_id),
                                        [user_id, device_id, int(trusted)])
        if status != Status.OK:
            return None
        return decode_device(reply[0]), reply[1]

    async def read_events(self, user_id: str, *, after: str, count: int) -> list[Event]:
        """Return up to count of the user's events after the event id after, oldest first."""
        tag = user_tag(user_id)
        # The list holds at most events_max_length entries, so it is read whole.
        entries = await self.call(self.client.lrange(self.keys_for(tag).events, 0, -1))
        after_key = event_id_key(after) if after else (-1, -1)
        events = []
        for entry in entries:
            event = Event.from_entry(tag, user_id, entry)
            if event_id_key(event.id) > after_key:
                events.append(event)
                if len(events) == count:
                    break
        return events

    async def last_event_id(self, user_id: str) -> str:
        """Return the id of the user's newest event, or "0-0" when there is none."""
        last = await self.call(self.client.lindex(self.keys_for(user_tag(user_id)).events, -1))
        return last.split(b" ", 1)[0].decode("ascii") if last else "0-0"


def _rejection(status: int, reply: list[Any]) -> Exception:
    if status == Status.EXPIRED:
        if reply[0] == 1:
            return SessionExpired("the session reached its maximum lifetime")
        return SessionExpired("the session expired")
    if status == Status.REVOKED:
        return SessionRevoked("the session was revoked")
    if status == Status.REAUTH_REQUIRED:
        return ReauthRequired("the session must sign in again")
    return InvalidToken("the token does not match a session")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value
