"""Keep one device's session alive while it is used, and report when it ends.

`SessionManager` extends the session shortly before it would expire, but
only after activity, so an idle device still times out. It learns of a
revocation elsewhere from the event stream within a second, and of expiry
by checking the session's status when its deadline passes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from service.client import (
    Event,
    InvalidToken,
    RetryBackoff,
    SessionExpired,
    SessionStoreClient,
    SessionStoreError,
    TokenRejected,
)

__all__ = ["EndReason", "SessionManager"]

logger = logging.getLogger("session_store.client")

T = TypeVar("T")

EndReason = Literal["expired", "revoked", "max_lifetime"]

# Maximum length of one asyncio sleep. The schedule is kept as absolute UTC
# instants and rechecked against the wall clock after each sleep, so a
# 30-day deadline needs no huge timer, and after the machine wakes from
# suspend (which a monotonic sleep does not count) the manager acts within
# this time.
MAX_SLEEP_S = 60.0
# Shortest interval between two status checks of a session the service
# still reports live at its deadline. The service reports times in whole
# seconds, so a deadline may pass up to about a second before the session
# really expires.
MIN_RECHECK_S = 0.5
# Events after which the session they name no longer exists.
_ENDING_EVENTS = frozenset({"session_revoked", "session_replaced", "session_evicted", "session_expired"})


class _SessionEnded(Exception):
    """Raised inside the manager's tasks once the session has ended, to stop them."""


class _ServerClock:
    """Offset of the Redis server's clock from this machine's wall clock.

    Each response gives ``expires_at`` and ``expires_in`` in whole seconds,
    and their difference is the server's time rounded down to a second. A
    sample taken when the response arrives is therefore at most about one
    second below the true offset, never above it. The largest of the last
    few samples is used, so the estimate converges, and a jump of the local
    clock drops out after a few responses.
    """

    def __init__(self, samples: int = 4) -> None:
        self._offsets_s: collections.deque[float] = collections.deque(maxlen=samples)

    def observe(self, expires_at: datetime, expires_in: int, received_at_s: float) -> None:
        self._offsets_s.append(expires_at.timestamp() - expires_in - received_at_s)

    def to_local_s(self, instant: datetime) -> float:
        """Return the local wall-clock time (epoch seconds) of a server instant."""
        return instant.timestamp() - max(self._offsets_s, default=0.0)

    def server_now(self) -> datetime:
        return datetime.fromtimestamp(time.time() + max(self._offsets_s, default=0.0), UTC)


class SessionManager:
    """Keep the session of the client's token alive while the app is used.

    Parameters
    ----------
    client : SessionStoreClient
        A client that carries the session token.
    auto_extend : bool, optional
        Extend the session after activity. When false, the manager only
        reports the end of the session. Default true.
    extend_threshold : float, optional
        Seconds before expiry at which an active session is extended.
        Extensions are at least half of it apart. Default 300. The service
        reports times in whole seconds, so keep it well above 1.
    on_session_extended : callable, optional
        Called with the new ``expires_at`` (aware UTC datetime) after each
        extension. A plain function or a coroutine function.
    on_session_expired : callable, optional
        Called once with the reason the session ended: ``"expired"`` (idle
        timeout, or the token is no longer known), ``"revoked"`` (revoked,
        replaced, evicted, or an anomaly action requires a new sign-in) or
        ``"max_lifetime"``. A plain function or a coroutine function. The
        manager stops after it.

    Notes
    -----
    Activity is a call of `touch`, or a self-service call through the client
    other than ``get_session_status()``, ``validate(extend=False)`` and
    ``events()``. When fewer than ``extend_threshold`` seconds are left and
    there was activity since the last extension, the manager extends. An
    idle session is left to expire.

    Network errors and ``store_unavailable`` are retried with capped,
    jittered backoff and are never reported as expiry. A revocation
    elsewhere arrives on the event stream within about a second. Expiry
    is confirmed with the service once the deadline passes.

    Examples
    --------
    >>> async with SessionStoreClient(url, token=token) as client:     # doctest: +SKIP
    ...     async with SessionManager(client, on_session_expired=print) as manager:
    ...         manager.touch()
    """

    def __init__(self, client: SessionStoreClient, *, auto_extend: bool = True,
                 extend_threshold: float = 300,
                 on_session_extended: Callable[[datetime], Awaitable[None] | None] | None = None,
                 on_session_expired: Callable[[EndReason], Awaitable[None] | None] | None = None) -> None:
        if extend_threshold <= 0:
            raise ValueError(f"extend_threshold: must be a positive number of seconds, "
                             f"got {extend_threshold}")
        self.client = client
        self.auto_extend = auto_extend
        self.extend_threshold = extend_threshold
        self.on_session_extended = on_session_extended
        self.on_session_expired = on_session_expired

        self._clock = _ServerClock()
        self._session_id: str | None = None
        self._expires_at: datetime | None = None
        self._max_expires_at: datetime | None = None
        self._next_step_at_s: float | None = None
        self._last_extended_at_s = float("-inf")
        self._last_checked_at_s = float("-inf")
        self._active = False
        self._extending = False
        self._reason: EndReason | None = None
        self._ended = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- public API ----------------------------------------------------------

    async def __aenter__(self) -> SessionManager:
        if self.client.token is None:
            raise RuntimeError("SessionManager needs a client with a session token")
        self.client.add_activity_hook(self._on_client_call)
        self._tasks.append(asyncio.create_task(self._run(), name="session-manager"))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop managing the session, without calling ``on_session_expired``."""
        with contextlib.suppress(ValueError):
            self.client.remove_activity_hook(self._on_client_call)
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def touch(self) -> None:
        """Record user activity, so the session is extended before it expires."""
        if not self._active:
            self._active = True
            self._wake.set()

    async def wait_ended(self) -> EndReason:
        """Wait until the session ends and return the reason passed to ``on_session_expired``."""
        await self._ended.wait()
        assert self._reason is not None
        return self._reason

    @property
    def session_id(self) -> str | None:
        """The managed session's id, once the first status check returned."""
        return self._session_id

    @property
    def expires_at(self) -> datetime | None:
        """The session's expiry as last reported by the service (aware UTC)."""
        return self._expires_at

    @property
    def max_expires_at(self) -> datetime | None:
        """The session's end of maximum lifetime (aware UTC)."""
        return self._max_expires_at

    @property
    def next_step_at(self) -> datetime | None:
        """When the manager next extends or checks the session (local clock, aware UTC)."""
        if self._next_step_at_s is None:
            return None
        return datetime.fromtimestamp(self._next_step_at_s, UTC)

    @property
    def end_reason(self) -> EndReason | None:
        """Why the session ended, or None while it is live."""
        return self._reason

    # -- schedule ------------------------------------------------------------

    async def _run(self) -> None:
        with contextlib.suppress(_SessionEnded):
            await self._schedule()

    async def _schedule(self) -> None:
        status = await self._retrying(self.client.get_session_status)
        self._session_id = status.session_id
        self._learn(status.expires_at, status.expires_in, status.max_expires_at)
        self._tasks.append(asyncio.create_task(self._listen(), name="session-manager-events"))

        while True:
            # Cleared before the schedule is computed, so a touch() from here
            # on wakes the sleep below.
            self._wake.clear()
            self._next_step_at_s = self._next_step_s()
            if await self._sleep_until(self._next_step_at_s):
                await self._step()

    def _next_step_s(self) -> float:
        """Return when to act next: an extension if one is wanted, else the expiry check."""
        deadline_s = self._deadline_s()
        check_s = max(deadline_s, self._last_checked_at_s + MIN_RECHECK_S)
        if not self._wants_extension():
            return check_s
        extend_s = max(deadline_s - self.extend_threshold,
                       self._last_extended_at_s + self.extend_threshold / 2)
        return min(extend_s, check_s)

    async def _sleep_until(self, at_s: float) -> bool:
        """Sleep until the wall clock reaches at_s, in steps of at most MAX_SLEEP_S.

        Return False early when touch() wakes the manager.
        """
        while True:
            remaining_s = at_s - time.time()
            if remaining_s <= 0:
                return True
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=min(remaining_s, MAX_SLEEP_S))
                return False
            except TimeoutError:
                continue

    async def _step(self) -> None:
        now_s = time.time()
        if (self._wants_extension() and self._deadline_s() - now_s <= self.extend_threshold
                and now_s - self._last_extended_at_s >= self.extend_threshold / 2):
            await self._extend()
        else:
            await self._check()

    def _wants_extension(self) -> bool:
        return self.auto_extend and self._active and not self._at_max_lifetime()

    def _deadline_s(self) -> float:
        assert self._expires_at is not None
        return self._clock.to_local_s(self._expires_at)

    def _at_max_lifetime(self) -> bool:
        return (self._expires_at is not None and self._max_expires_at is not None
                and self._expires_at >= self._max_expires_at)

    # -- calls ---------------------------------------------------------------

    async def _check(self) -> None:
        self._last_checked_at_s = time.time()
        status = await self._retrying(self.client.get_session_status)
        self._learn(status.expires_at, status.expires_in, status.max_expires_at)

    async def _extend(self) -> None:
        # Activity from here on makes the next extension due.
        self._active = False
        self._extending = True
        try:
            result = await self._retrying(self.client.extend_session)
        finally:
            self._extending = False
        self._last_extended_at_s = time.time()
        self._learn(result.expires_at, result.expires_in, result.max_expires_at)
        if result.extended:
            await self._invoke(self.on_session_extended, result.expires_at)

    def _learn(self, expires_at: datetime, expires_in: int, max_expires_at: datetime | None) -> None:
        self._clock.observe(expires_at, expires_in, time.time())
        self._expires_at = expires_at
        if max_expires_at is not None:
            self._max_expires_at = max_expires_at

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run a self-service call until it returns, and raise _SessionEnded once the token is rejected.

        Other errors are retried with backoff, so an outage is never
        reported as expiry.
        """
        backoff = RetryBackoff()
        while True:
            try:
                return await call()
            except TokenRejected as exc:
                await self._finish(self._reason_for(exc))
                raise _SessionEnded from None
            except SessionStoreError as exc:
                delay_s = backoff.next_delay()
                logger.warning("session %s: %s failed (%s), attempt %d, retrying in %.1f s",
                               self._session_id, getattr(call, "__name__", "call"), exc.code,
                               backoff.attempts, delay_s)
                await asyncio.sleep(delay_s)

    def _on_client_call(self, method_name: str) -> None:
        # The manager's own extension is not user activity.
        if self._extending and method_name == "extend_session":
            return
        self.touch()

    # -- events --------------------------------------------------------------

    async def _listen(self) -> None:
        """Watch the event stream for the end of this session."""
        backoff = RetryBackoff()
        while True:
            try:
                async with contextlib.aclosing(self.client.events()) as events:
                    async for event in events:
                        reason = self._reason_from_event(event)
                        if reason is not None:
                            await self._finish(reason)
                            return
            except TokenRejected as exc:
                await self._finish(self._reason_for(exc))
                return
            except SessionStoreError as exc:
                delay_s = backoff.next_delay()
                logger.warning("session %s: event stream failed (%s), retrying in %.1f s",
                               self._session_id, exc.code, delay_s)
                await asyncio.sleep(delay_s)

    def _reason_from_event(self, event: Event) -> EndReason | None:
        if event.session_id != self._session_id or event.type not in _ENDING_EVENTS:
            return None
        if event.type != "session_expired":
            return "revoked"
        return "max_lifetime" if event.detail.get("reason") == "max_lifetime" else "expired"

    def _reason_for(self, exc: TokenRejected) -> EndReason:
        if isinstance(exc, SessionExpired):
            return "max_lifetime" if self._past_max_lifetime() else "expired"
        if isinstance(exc, InvalidToken):
            return "expired"
        return "revoked"

    def _past_max_lifetime(self) -> bool:
        if self._max_expires_at is None:
            return False
        return self._at_max_lifetime() or self._clock.server_now() >= self._max_expires_at

    # -- end -----------------------------------------------------------------

    async def _finish(self, reason: EndReason) -> None:
        """Record the end once, stop the other task and call on_session_expired."""
        if self._reason is not None:
            return
        self._reason = reason
        self._next_step_at_s = None
        self._ended.set()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        logger.info("session %s ended: %s", self._session_id, reason)
        await self._invoke(self.on_session_expired, reason)

    async def _invoke(self, callback: Callable[[Any], Awaitable[None] | None] | None, argument: Any) -> None:
        if callback is None:
            return
        try:
            result = callback(argument)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("session manager callback %r failed", callback)
