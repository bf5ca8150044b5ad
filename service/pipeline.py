"""An auto-pipelining Redis connection for the hot path (single node).

Every command issued during one event-loop tick leaves in a single write
on one connection, and replies are matched to callers in order. Under
load this turns N concurrent validations into one syscall and one Redis
read instead of N, which is where a per-request connection spends most
of its time. Replies are parsed by hiredis.

A caller that gives up (deadline) leaves its slot in the queue; the late
reply is read and dropped, so later replies still reach the right caller.
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
        self.connection.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.lost(exc)


class PipelinedConnection:
    """One Redis connection shared by every coroutine of the process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._options = parse_url(url)
        self._tls = urlsplit(url).scheme == "rediss"
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._reader = hiredis.Reader()
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False

    async def execute(self, *args: Any) -> Any:
        """Send one command; return its reply or raise its error."""
        if self._transport is None:
            await self._connect()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(hiredis.pack_command(args), future)
        return await future

    def _enqueue(self, packed: bytes, future: asyncio.Future[Any]) -> None:
        self._outgoing.append(packed)
        self._waiting.append(future)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

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
            await asyncio.shield(connecting)
        finally:
            if connecting.done():
                self._connecting = None

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        options = self._options
        reader = hiredis.Reader()
        if "path" in options:
            transport, _ = await loop.create_unix_connection(lambda: _Protocol(self), options["path"])
        else:
            context = ssl.create_default_context() if self._tls else None
            transport, _ = await loop.create_connection(
                lambda: _Protocol(self), options.get("host", "127.0.0.1"), options.get("port", 6379),
                ssl=context)
        self._reader = reader
        self._transport = transport  # type: ignore[assignment]
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
            future = self._waiting.popleft()
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(_response_error(str(reply)))
            else:
                future.set_result(reply)

    def lost(self, exc: Exception | None) -> None:
        """Fail every waiting caller; the next command reconnects."""
        self._transport = None
        self._outgoing.clear()
        error = redis.exceptions.ConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        while self._waiting:
            future = self._waiting.popleft()
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
