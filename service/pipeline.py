"""An auto-pipelining Redis connection for the hot path (single node).

Every command issued during one event-loop tick leaves in a single write
on one connection, and replies are matched to callers in order. Under
load this turns N concurrent validations into one syscall and one Redis
read instead of N, which is where a per-request connection spends most
of its time. Replies are parsed by hiredis.

Deadline: replies come back in order, so when the oldest command has
waited longer than timeout_s, every command behind it has stalled too.
A sweep that runs a few times per deadline then closes the connection
and fails every waiting caller with TimeoutError; the next command opens
a new connection. This costs one timer per sweep instead of one per
command. A caller cancelled for another reason leaves its slot in the
queue, and its late reply is read and dropped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from typing import Any
from urllib.parse import urlsplit

import hiredis
import redis.exceptions
from redis.connection import parse_url

logger = logging.getLogger("session_store.redis")


class _Protocol(asyncio.Protocol):
    def __init__(self, connection: PipelinedConnection) -> None:
        self.connection = connection

    def data_received(self, data: bytes) -> None:
        if self.connection.current is self:
            self.connection.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        # A connection aborted at the deadline reports its loss after a new
        # one may already be open; only the current one's loss counts.
        if self.connection.current is self:
            self.connection.lost(exc)


class PipelinedConnection:
    """One Redis connection shared by every coroutine of the process."""

    def __init__(self, url: str, *, timeout_s: float, max_waiting: int = 10_000) -> None:
        self.url = url
        self.timeout_s = timeout_s
        # Commands waiting for a reply beyond this fail at once: a stalled
        # Redis must not grow a queue without bound.
        self.max_waiting = max_waiting
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._options = parse_url(url)
        self._tls = urlsplit(url).scheme == "rediss"
        self._transport: asyncio.Transport | None = None
        self.current: _Protocol | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._reader = hiredis.Reader()
        # (future, time the command was queued), oldest first.
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False

    async def execute(self, *args: Any) -> Any:
        """Send one command; return its reply or raise its error."""
        if self._transport is None:
            await self._connect()
        if len(self._waiting) >= self.max_waiting:
            raise redis.exceptions.ConnectionError("too many Redis commands waiting for a reply")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._enqueue(hiredis.pack_command(args), future, loop)
        return await future

    def _enqueue(self, packed: bytes, future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop) -> None:
        self._outgoing.append(packed)
        self._waiting.append((future, loop.time()))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        if self._sweep_handle is None:
            self._sweep_handle = loop.call_later(self._sweep_interval_s, self._sweep)

    @property
    def _sweep_interval_s(self) -> float:
        return max(self.timeout_s / 4, 0.01)

    def _sweep(self) -> None:
        """Abort the connection when its oldest command is past the deadline."""
        self._sweep_handle = None
        if not self._waiting:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._waiting[0][1] > self.timeout_s:
            logger.warning("redis did not answer within %.3fs; reconnecting", self.timeout_s)
            transport = self._transport
            self._fail_all(redis.exceptions.TimeoutError(
                f"Redis did not answer within {self.timeout_s}s"))
            if transport is not None:
                transport.abort()
            return
        self._sweep_handle = loop.call_later(self._sweep_interval_s, self._sweep)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._outgoing:
            return
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        if self._transport is None or self._transport.is_closing():
            self.lost(ConnectionError("connection to Redis closed"))
            return
        self._transport.write(data)

    async def _connect(self) -> None:
        """Open the connection once, however many callers wait for it."""
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            await asyncio.wait_for(asyncio.shield(connecting), self.timeout_s)
        finally:
            if connecting.done():
                self._connecting = None

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        options = self._options
        if "path" in options:
            transport, protocol = await loop.create_unix_connection(lambda: _Protocol(self), options["path"])
        else:
            context = ssl.create_default_context() if self._tls else None
            transport, protocol = await loop.create_connection(
                lambda: _Protocol(self), options.get("host", "127.0.0.1"), options.get("port", 6379),
                ssl=context)
        self._reader = hiredis.Reader()
        self._transport = transport  # type: ignore[assignment]
        self.current = protocol
        await self._handshake()

    async def _handshake(self) -> None:
        options = self._options
        password = options.get("password")
        if password is not None:
            username = options.get("username")
            auth = ("AUTH", username, password) if username else ("AUTH", password)
            await self.execute(*auth)
        if options.get("db"):
            await self.execute("SELECT", options["db"])

    def feed(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            reply = self._reader.gets()
            if reply is False:
                return
            if not self._waiting:
                logger.warning("reply from Redis with no caller waiting; dropped")
                continue
            future, _ = self._waiting.popleft()
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(_response_error(str(reply)))
            else:
                future.set_result(reply)

    def lost(self, exc: Exception | None) -> None:
        """Fail every waiting caller; the next command reconnects."""
        self._fail_all(redis.exceptions.ConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def _fail_all(self, error: Exception) -> None:
        self._transport = None
        self.current = None
        self._outgoing.clear()
        self._reader = hiredis.Reader()
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


def _response_error(message: str) -> redis.exceptions.ResponseError:
    if message.startswith("NOSCRIPT"):
        return redis.exceptions.NoScriptError(message)
    return redis.exceptions.ResponseError(message)
