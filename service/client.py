"""Async Python client for the session store HTTP API.

Management calls (the app's backend) authenticate with an API key, and
self-service calls (a signed-in device) with a session token. Results are
msgspec Structs whose times are aware UTC datetimes. Every failed call
raises a `SessionStoreError` subclass chosen by the problem-details `code`,
or `NetworkError` when no response arrived.

Importing this module starts nothing: the aiohttp session is opened on the
first call and closed by ``async with`` or `SessionStoreClient.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import aiohttp
import msgspec

__all__ = [
    "ActivityHook",
    "ClientInfo",
    "CreatedSession",
    "Device",
    "DeviceNotTrusted",
    "Duration",
    "Event",
    "EventPage",
    "ExtendResult",
    "InvalidRequest",
    "InvalidToken",
    "MySession",
    "MySessionList",
    "NetworkError",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ReauthRequired",
    "RegisteredDevice",
    "RetryBackoff",
    "Session",
    "SessionExpired",
    "SessionLimitReached",
    "SessionList",
    "SessionRevoked",
    "SessionStatus",
    "SessionStoreClient",
    "SessionStoreError",
    "StoreUnavailable",
    "TokenRejected",
    "Unauthorized",
    "Validation",
]

logger = logging.getLogger("session_store.client")

T = TypeVar("T")

# Seconds, a timedelta of whole seconds, or "90s", "5m", "24h", "30d".
Duration = int | timedelta | str

# Called with the method name after each successful self-service call that
# counts as activity.
ActivityHook = Callable[[str], None]

_HIDDEN = "<hidden>"
# The service sends a heartbeat on an idle event stream every 15 s by
# default, so a stream silent for this long is treated as dropped.
_STREAM_READ_TIMEOUT_S = 60.0
# Reconnect delay after the server ends an event stream, unless it sent a
# "retry:" field.
_STREAM_RETRY_S = 1.0


# -- results -----------------------------------------------------------------

class Device(msgspec.Struct, kw_only=True):
    """A device as a session shows it: the app's fingerprint, type, name and trust."""

    id: str
    type: str | None = None
    name: str | None = None
    trusted: bool = False


class ClientInfo(msgspec.Struct, kw_only=True):
    """Client context given at sign-in: IP address and User-Agent."""

    ip: str | None = None
    user_agent: str | None = None


class Session(msgspec.Struct, kw_only=True):
    """A live session, as `get_session` and the session lists return it.

    ``expires_in`` is the window in seconds: the idle time after which the
    session expires. ``max_expires_at`` is ``created_at`` plus the maximum
    lifetime, past which no extension reaches.
    """

    session_id: str
    user_id: str
    device: Device
    created_at: datetime
    last_active_at: datetime
    expires_at: datetime
    max_expires_at: datetime
    expires_in: int
    extend_on_activity: bool
    policy: str
    client: ClientInfo = msgspec.field(default_factory=ClientInfo)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class MySession(Session, kw_only=True):
    """A session in the caller's own list, where ``current`` marks the caller's session."""

    current: bool


class CreatedSession(Session, kw_only=True):
    """A new session with its token, which the service returns only this once.

    ``replaced`` lists the same device's earlier session, if any, and
    ``evicted`` the sessions the concurrent session limit removed. The
    token is hidden from ``repr``.
    """

    token: str
    replaced: list[str] = msgspec.field(default_factory=list)
    evicted: list[str] = msgspec.field(default_factory=list)

    def __repr__(self) -> str:
        return _masked_repr(self, {"token"})

    def __rich_repr__(self) -> Any:
        for name in self.__struct_fields__:
            yield name, _HIDDEN if name == "token" else getattr(self, name)


class SessionList(msgspec.Struct, kw_only=True):
    """A user's live sessions, most recently active first."""

    sessions: list[Session]
    device_count: int


class MySessionList(msgspec.Struct, kw_only=True):
    """The caller's user's live sessions, most recently active first."""

    sessions: list[MySession]
    device_count: int


class Validation(msgspec.Struct, kw_only=True):
    """Result of `SessionStoreClient.validate`, where ``expires_in`` is the seconds left."""

    valid: bool
    session_id: str
    user_id: str
    device_id: str
    expires_at: datetime
    expires_in: int


class SessionStatus(msgspec.Struct, kw_only=True):
    """Status of the caller's session, where ``expires_in`` is the seconds left.

    ``device_count`` is the number of distinct devices with a live session
    of the user.
    """

    valid: bool
    session_id: str
    expires_at: datetime
    expires_in: int
    max_expires_at: datetime
    device_count: int
    user_id: str | None = None
    device_id: str | None = None


class ExtendResult(msgspec.Struct, kw_only=True):
    """Result of an explicit extension, where ``expires_in`` is the seconds left.

    ``extended`` is false only when the session had already reached
    ``max_expires_at``.
    """

    extended: bool
    expires_at: datetime
    expires_in: int
    max_expires_at: datetime | None = None


class RegisteredDevice(msgspec.Struct, kw_only=True):
    """A device in a user's device registry, with its live session count."""

    id: str
    type: str | None
    name: str | None
    trusted: bool
    first_seen_at: datetime
    last_seen_at: datetime
    active_sessions: int


class Event(msgspec.Struct, kw_only=True):
    """A session event, such as ``session_created`` or ``session_revoked``.

    ``id`` is the event's cursor, for ``after`` and ``Last-Event-ID``.
    """

    id: str
    type: str
    at: datetime
    user_id: str
    session_id: str | None = None
    device_id: str | None = None
    detail: dict[str, Any] = msgspec.field(default_factory=dict)


class EventPage(msgspec.Struct, kw_only=True):
    """A page of a user's events, oldest first, where ``next`` is the cursor of the next page or None."""

    events: list[Event]
    next: str | None = None


class _Problem(msgspec.Struct):
    title: str | None = None
    status: int | None = None
    detail: str | None = None
    code: str | None = None


class _RevokedCount(msgspec.Struct):
    revoked: int


class _DeviceList(msgspec.Struct):
    devices: list[RegisteredDevice]


def _masked_repr(value: msgspec.Struct, secret_fields: set[str]) -> str:
    parts = [f"{name}={_HIDDEN if name in secret_fields else repr(getattr(value, name))}"
             for name in value.__struct_fields__]
    return f"{type(value).__name__}({', '.join(parts)})"


# -- errors ------------------------------------------------------------------

class SessionStoreError(Exception):
    """Base of every error the client raises for a failed call.

    Attributes
    ----------
    code : str
        The problem-details ``code``, such as ``session_revoked``.
    status : int or None
        The HTTP status, or None when no response arrived.
    detail : str
        What went wrong, as the service explained it.
    retry_after : float or None
        Seconds from the ``Retry-After`` header, when the response had one.
    """

    code: str = "error"

    def __init__(self, detail: str, *, status: int | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def __str__(self) -> str:
        if self.status is None:
            return f"{self.code}: {self.detail}"
        return f"{self.code} ({self.status}): {self.detail}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, detail={self.detail!r})"


class InvalidRequest(SessionStoreError):
    """400: a field breaks a rule, and ``detail`` names the field and the rule."""

    code = "invalid_request"


class Unauthorized(SessionStoreError):
    """401 on a management call: the API key is missing or wrong."""

    code = "unauthorized"


class TokenRejected(SessionStoreError):
    """401 on a self-service call: the session token does not authenticate."""

    code = "invalid_token"


class InvalidToken(TokenRejected):
    """The token never was a session, or its session is long gone."""

    code = "invalid_token"


class SessionExpired(TokenRejected):
    """The session expired, by idle time or at its maximum lifetime."""

    code = "session_expired"


class SessionRevoked(TokenRejected):
    """The session was revoked, replaced by a new sign-in on its device, or evicted."""

    code = "session_revoked"


class ReauthRequired(TokenRejected):
    """An anomaly action requires the user to sign in again."""

    code = "reauth_required"


class DeviceNotTrusted(SessionStoreError):
    """403: the policy requires a device the app marked trusted."""

    code = "device_not_trusted"


class NotFound(SessionStoreError):
    """404: no live session, or no known device, with that id."""

    code = "not_found"


class SessionLimitReached(SessionStoreError):
    """409: the user is at the concurrent session limit and the policy is reject."""

    code = "session_limit_reached"


class PayloadTooLarge(SessionStoreError):
    """413: the request body is larger than the service accepts."""

    code = "payload_too_large"


class RateLimited(SessionStoreError):
    """429: the user signed in too often within a minute. Retry after ``retry_after`` seconds."""

    code = "rate_limited"


class StoreUnavailable(SessionStoreError):
    """503: Redis is unreachable or timed out, so the call may be retried."""

    code = "store_unavailable"


class NetworkError(SessionStoreError):
    """No response: the connection failed, broke or timed out, so the call may be retried."""

    code = "network_error"


_ERRORS_BY_CODE: dict[str, type[SessionStoreError]] = {
    cls.code: cls for cls in (
        InvalidRequest, Unauthorized, InvalidToken, SessionExpired, SessionRevoked, ReauthRequired,
        DeviceNotTrusted, NotFound, SessionLimitReached, PayloadTooLarge, RateLimited, StoreUnavailable,
    )
}
# Codes for error responses without a problem body, such as a proxy's.
_CODES_BY_STATUS = {400: "invalid_request", 404: "not_found", 413: "payload_too_large",
                    429: "rate_limited", 502: "store_unavailable", 503: "store_unavailable",
                    504: "store_unavailable"}


def _error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> SessionStoreError:
    """Build the exception for an error response from its problem-details body."""
    try:
        problem = msgspec.json.decode(body, type=_Problem)
    except msgspec.DecodeError:
        problem = _Problem()
    code = problem.code or _CODES_BY_STATUS.get(status, f"http_{status}")
    detail = problem.detail or problem.title or f"HTTP {status}"
    error_class = _ERRORS_BY_CODE.get(code, SessionStoreError)
    return error_class(detail, status=status, code=code, retry_after=_retry_after_s(headers))


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


# -- helpers -----------------------------------------------------------------

def _duration(value: Duration | None, name: str) -> int | str | None:
    """Convert a duration argument to what the API takes: seconds or a string like "24h"."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected int seconds, a timedelta or a string like '24h', got bool")
    if isinstance(value, int):
        return value
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        if seconds != int(seconds):
            raise ValueError(f"{name}: expected whole seconds, got {seconds} s")
        return int(seconds)
    raise TypeError(f"{name}: expected int seconds, a timedelta or a string like '24h', "
                    f"got {type(value).__name__}")


def _segment(value: str) -> str:
    """Percent-encode one path segment, slashes and braces included."""
    return quote(value, safe="")


def _decode(body: bytes, result_type: type[T]) -> T:
    try:
        return msgspec.json.decode(body, type=result_type)
    except msgspec.DecodeError as exc:
        raise SessionStoreError(f"unexpected response body: {exc}", code="invalid_response") from None


class RetryBackoff:
    """Capped exponential backoff with jitter, for retrying transient failures.

    Each delay is drawn uniformly from ``[d / 2, d]``, where ``d`` starts at
    ``base_s`` and doubles per attempt up to ``max_s``, so clients that
    failed together do not retry together.
    """

    def __init__(self, base_s: float = 0.5, max_s: float = 10.0) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.attempts = 0

    def next_delay(self) -> float:
        """Return the delay in seconds before the next attempt, and count the attempt."""
        ceiling_s = min(self.max_s, self.base_s * 2 ** min(self.attempts, 30))
        self.attempts += 1
        return random.uniform(ceiling_s / 2, ceiling_s)

    def reset(self) -> None:
        """Start over from ``base_s`` after a success."""
        self.attempts = 0


class _SseFrame:
    """Fields of one Server-Sent Events frame, collected line by line."""

    def __init__(self) -> None:
        self.data: list[str] = []
        self.retry_ms: int | None = None

    def add_line(self, line: str) -> None:
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self.data.append(value)
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)


# -- client ------------------------------------------------------------------

class SessionStoreClient:
    """Async client of one session store service, over one aiohttp ClientSession.

    Parameters
    ----------
    base_url : str
        The service's URL, such as ``"http://127.0.0.1:8080"``.
    api_key : str, optional
        Management API key, for the app's backend. Hidden from ``repr``.
    token : str, optional
        Session token, for a signed-in device's self-service calls. Hidden
        from ``repr``; may be set later through the ``token`` attribute.
    timeout : float, optional
        Seconds allowed for each call, connection included. Default 10.
    user_agent : str, optional
        ``User-Agent`` header of every request. The service compares it to
        the ``user_agent`` given at sign-in to detect a changed context, so a
        device should send the same value its backend recorded.

    Notes
    -----
    Use it as an async context manager, or call `close` when done::

        async with SessionStoreClient(url, api_key=key) as client:
            created = await client.create_session("u-123", "fp-9c2e")

    Self-service calls other than `get_session_status`, ``validate(extend=False)``
    and `events` count as activity: after each success the client calls the
    hooks added with `add_activity_hook`, as `SessionManager` relies on.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, token: str | None = None,
                 timeout: float = 10.0, user_agent: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.user_agent = user_agent
        self._api_key = api_key
        self._token = token
        self._http: aiohttp.ClientSession | None = None
        self._activity_hooks: list[ActivityHook] = []

    @property
    def token(self) -> str | None:
        """The session token of self-service calls."""
        return self._token

    @token.setter
    def token(self, value: str | None) -> None:
        self._token = value

    def __repr__(self) -> str:
        api_key = _HIDDEN if self._api_key is not None else None
        token = _HIDDEN if self._token is not None else None
        return f"SessionStoreClient(base_url={self.base_url!r}, api_key={api_key}, token={token})"

    async def __aenter__(self) -> SessionStoreClient:
        self._session()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the underlying aiohttp session. A later call opens a new one."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    def add_activity_hook(self, hook: ActivityHook) -> None:
        """Call ``hook(method_name)`` after each successful self-service call that counts as activity."""
        self._activity_hooks.append(hook)

    def remove_activity_hook(self, hook: ActivityHook) -> None:
        """Stop calling a hook added with `add_activity_hook`."""
        self._activity_hooks.remove(hook)

    # -- management calls (API key) ------------------------------------------

    async def create_session(
        self, user_id: str, device_id: str, *, device_type: str | None = None,
        device_name: str | None = None, policy: str | None = None, expires_in: Duration | None = None,
        extend_on_activity: bool | None = None, max_lifetime: Duration | None = None,
        max_sessions: int | None = None, on_limit: Literal["evict_oldest", "reject"] | None = None,
        client_ip: str | None = None, user_agent: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> CreatedSession:
        """Create a session for a user's device, replacing that device's earlier session.

        Parameters
        ----------
        user_id : str
            The app's user id, 1 to 128 characters.
        device_id : str
            The device fingerprint, 1 to 128 characters.
        device_type, device_name : str, optional
            Shown in session and device lists (at most 64 and 128 characters).
        policy : str, optional
            Policy name; the service's default policy when omitted.
        expires_in : int, timedelta or str, optional
            Window: the idle time before expiry, as seconds, a timedelta of
            whole seconds, or ``"90s"``, ``"5m"``, ``"24h"``, ``"30d"``.
            Must be within the policy's bounds.
        extend_on_activity : bool, optional
            Whether each validation slides the expiry.
        max_lifetime : int, timedelta or str, optional
            Absolute lifetime from sign-in, at most the policy's.
        max_sessions : int, optional
            Concurrent session limit of the user, at most the policy's.
        on_limit : {"evict_oldest", "reject"}, optional
            What a sign-in past the limit does.
        client_ip, user_agent : str, optional
            The device's address and User-Agent, for anomaly checks.
        metadata : dict, optional
            App data kept with the session, at most 1 KiB as JSON.

        Returns
        -------
        CreatedSession
            The session and its token. The token is returned only here.

        Raises
        ------
        InvalidRequest, Unauthorized, DeviceNotTrusted, SessionLimitReached,
        PayloadTooLarge, RateLimited, StoreUnavailable, NetworkError
        """
        device = {"id": device_id, "type": device_type, "name": device_name}
        body: dict[str, Any] = {
            "user_id": user_id,
            "device": {name: value for name, value in device.items() if value is not None},
            "policy": policy,
            "expires_in": _duration(expires_in, "expires_in"),
            "extend_on_activity": extend_on_activity,
            "max_lifetime": _duration(max_lifetime, "max_lifetime"),
            "max_sessions": max_sessions,
            "on_limit": on_limit,
            "metadata": metadata,
        }
        if client_ip is not None or user_agent is not None:
            body["client"] = {"ip": client_ip, "user_agent": user_agent}
        body = {name: value for name, value in body.items() if value is not None}
        payload = await self._manage("POST", "/v1/sessions", body=body)
        return _decode(payload, CreatedSession)

    async def get_session(self, session_id: str) -> Session:
        """Return one live session.

        Raises
        ------
        NotFound
            No live session has that id.
        """
        payload = await self._manage("GET", f"/v1/sessions/{_segment(session_id)}")
        return _decode(payload, Session)

    async def get_user_sessions(self, user_id: str) -> SessionList:
        """Return a user's live sessions, most recently active first, and their device count."""
        payload = await self._manage("GET", f"/v1/users/{_segment(user_id)}/sessions")
        return _decode(payload, SessionList)

    async def revoke_session(self, session_id: str) -> None:
        """Revoke one session.

        Raises
        ------
        NotFound
            No live session has that id.
        """
        await self._manage("DELETE", f"/v1/sessions/{_segment(session_id)}")

    async def revoke_user_sessions(self, user_id: str, except_session_id: str | None = None) -> int:
        """Revoke all of a user's sessions, such as on a password change, and return how many.

        Parameters
        ----------
        user_id : str
            The user whose sessions end.
        except_session_id : str, optional
            A session to keep, such as the one that changed the password.
        """
        params = {"except": except_session_id} if except_session_id is not None else None
        payload = await self._manage("DELETE", f"/v1/users/{_segment(user_id)}/sessions", params=params)
        return _decode(payload, _RevokedCount).revoked

    async def set_device_trust(self, user_id: str, device_id: str, trusted: bool) -> RegisteredDevice:
        """Mark a device the user signed in on as trusted or not, and return it.

        Untrusting a device ends its sessions that rely on trust.

        Raises
        ------
        NotFound
            The user never signed in on that device.
        """
        path = f"/v1/users/{_segment(user_id)}/devices/{_segment(device_id)}"
        payload = await self._manage("PUT", path, body={"trusted": trusted})
        return _decode(payload, RegisteredDevice)

    async def get_user_devices(self, user_id: str) -> list[RegisteredDevice]:
        """Return the devices the user signed in on, with trust and live session counts."""
        payload = await self._manage("GET", f"/v1/users/{_segment(user_id)}/devices")
        return _decode(payload, _DeviceList).devices

    async def get_user_events(self, user_id: str, *, after: str | None = None,
                              limit: int | None = None) -> EventPage:
        """Return a page of the user's session events, oldest first.

        Parameters
        ----------
        user_id : str
            The user whose events to read.
        after : str, optional
            Cursor: the ``next`` of the previous page, or an event id.
        limit : int, optional
            Events per page, 1 to 1000. The service's default is 100.
        """
        params: dict[str, str] = {}
        if after is not None:
            params["after"] = after
        if limit is not None:
            params["limit"] = str(limit)
        payload = await self._manage("GET", f"/v1/users/{_segment(user_id)}/events", params=params)
        return _decode(payload, EventPage)

    # -- self-service calls (session token) ----------------------------------

    async def validate(self, extend: bool = True) -> Validation:
        """Check the token, as a gateway does, and by default count it as activity.

        Parameters
        ----------
        extend : bool, optional
            When true (the default), a session that extends on activity
            slides its expiry. When false, only checks.

        Raises
        ------
        InvalidToken, SessionExpired, SessionRevoked, ReauthRequired
            The token does not authenticate.
        """
        params = None if extend else {"extend": "false"}
        payload = await self._self_service("GET", "/v1/validate", "validate" if extend else None,
                                           params=params)
        return _decode(payload, Validation)

    async def get_session_status(self) -> SessionStatus:
        """Return the status of the current session, without counting as activity."""
        payload = await self._self_service("GET", "/v1/me/session", None)
        return _decode(payload, SessionStatus)

    async def extend_session(self) -> ExtendResult:
        """Slide the expiry to now plus the window, up to ``max_expires_at``.

        This works even when the policy does not extend on activity.
        """
        payload = await self._self_service("POST", "/v1/me/session/extend", "extend_session")
        return _decode(payload, ExtendResult)

    async def get_my_sessions(self) -> MySessionList:
        """Return the user's live sessions, each with a ``current`` flag."""
        payload = await self._self_service("GET", "/v1/me/sessions", "get_my_sessions")
        return _decode(payload, MySessionList)

    async def revoke_my_session(self, session_id: str) -> None:
        """Revoke one of the user's own sessions.

        Raises
        ------
        NotFound
            No live session of this user has that id.
        """
        await self._self_service("DELETE", f"/v1/me/sessions/{_segment(session_id)}", "revoke_my_session")

    async def revoke_all_other_sessions(self) -> int:
        """Sign out every other device of the user, and return how many sessions ended."""
        payload = await self._self_service("DELETE", "/v1/me/sessions", "revoke_all_other_sessions",
                                           params={"scope": "others"})
        return _decode(payload, _RevokedCount).revoked

    async def sign_out_everywhere(self) -> int:
        """Revoke every session of the user, this one included, and return how many ended."""
        payload = await self._self_service("DELETE", "/v1/me/sessions", "sign_out_everywhere",
                                           params={"scope": "all"})
        return _decode(payload, _RevokedCount).revoked

    async def sign_out(self) -> None:
        """Sign out this device: revoke the current session."""
        await self._self_service("DELETE", "/v1/me/session", "sign_out")

    async def events(self, *, last_event_id: str | None = None) -> AsyncGenerator[Event, None]:
        """Iterate over the user's session events as they happen (GET /v1/me/events).

        When the stream drops or the service ends it, the iterator reconnects
        with ``Last-Event-ID``, so no event is skipped or repeated. Network
        errors and ``store_unavailable`` are retried with `RetryBackoff`.
        The service ends the stream after the event that ends the current
        session; the reconnect then raises the `TokenRejected` subclass.

        Parameters
        ----------
        last_event_id : str, optional
            Resume after this event id. Without it, the stream starts after
            the newest event, and events that happen before the first one
            arrives are lost if the connection drops in that interval.

        Yields
        ------
        Event
        """
        backoff = RetryBackoff()
        while True:
            retry_s = _STREAM_RETRY_S
            try:
                async with contextlib.aclosing(self._read_event_stream(last_event_id)) as stream:
                    async for item in stream:
                        if isinstance(item, float):
                            retry_s = item
                            continue
                        last_event_id = item.id
                        backoff.reset()
                        yield item
            except (NetworkError, StoreUnavailable) as exc:
                retry_s = backoff.next_delay()
                logger.warning("event stream failed (%s), reconnecting in %.1f s", exc.code, retry_s)
            await asyncio.sleep(retry_s)

    # -- transport -----------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            headers = {"User-Agent": self.user_agent} if self.user_agent else None
            self._http = aiohttp.ClientSession(headers=headers,
                                               timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._http

    async def _manage(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                      body: Any = None) -> bytes:
        if self._api_key is None:
            raise RuntimeError(f"{method} {path} needs an API key: pass api_key= to SessionStoreClient")
        return await self._send(method, path, self._api_key, params=params, body=body)

    async def _self_service(self, method: str, path: str, activity: str | None, *,
                            params: Mapping[str, str] | None = None) -> bytes:
        """Send a call with the session token, then call the activity hooks if activity is named."""
        payload = await self._send(method, path, self._require_token(path), params=params)
        if activity is not None:
            self._notify_activity(activity)
        return payload

    def _require_token(self, path: str) -> str:
        if self._token is None:
            raise RuntimeError(f"{path} needs a session token: pass token= to SessionStoreClient")
        return self._token

    async def _send(self, method: str, path: str, credential: str, *,
                    params: Mapping[str, str] | None = None, body: Any = None) -> bytes:
        """Send one request and return the body of a 2xx response. Raise for any other status."""
        headers = {"Authorization": f"Bearer {credential}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = msgspec.json.encode(body)
            headers["Content-Type"] = "application/json"
        try:
            async with self._session().request(method, self.base_url + path, params=params, data=data,
                                               headers=headers) as response:
                payload = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NetworkError(f"{method} {path} failed: {_describe(exc)}") from exc
        if response.status >= 400:
            raise _error_from_response(response.status, response.headers, payload)
        return payload

    def _notify_activity(self, method_name: str) -> None:
        for hook in list(self._activity_hooks):
            try:
                hook(method_name)
            except Exception:
                logger.exception("activity hook failed after %s", method_name)

    async def _read_event_stream(self, last_event_id: str | None) -> AsyncGenerator[Event | float, None]:
        """Yield each event of one connection, and a float (seconds) for each "retry:" field."""
        headers = {"Authorization": f"Bearer {self._require_token('/v1/me/events')}",
                   "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout,
                                        sock_read=_STREAM_READ_TIMEOUT_S)
        try:
            async with self._session().get(self.base_url + "/v1/me/events", headers=headers,
                                           timeout=timeout) as response:
                if response.status >= 400:
                    raise _error_from_response(response.status, response.headers, await response.read())
                frame = _SseFrame()
                async for raw_line in response.content:
                    line = raw_line.decode("utf-8").rstrip("\r\n")
                    if line:
                        frame.add_line(line)
                        continue
                    if frame.retry_ms is not None:
                        yield frame.retry_ms / 1000
                    if frame.data:
                        yield _decode("\n".join(frame.data).encode("utf-8"), Event)
                    frame = _SseFrame()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NetworkError(f"GET /v1/me/events failed: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    """Describe a transport error by its type and message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
