"""Fan-out of Redis pub/sub announcements to this process's event streams.

One pub/sub connection per process, whatever the number of connected
clients. A message only wakes the streams of its channel; each stream
then reads the user's Redis stream from its last id, so a lost or
duplicated announcement can delay an event but never skip one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

logger = logging.getLogger("session_store.events")

_RECONNECT_DELAY_S = 0.5


class EventHub:
    def __init__(self, redis_url: str) -> None:
        # On Redis Cluster, PUBLISH reaches every node, so any one node will do.
        self._client = aioredis.Redis.from_url(redis_url)
        self._pubsub: Any = None
        self._wakers: dict[str, set[asyncio.Event]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[asyncio.Event]:
        """Yield an asyncio.Event that is set whenever channel gets a message."""
        waker = asyncio.Event()
        async with self._lock:
            if self._pubsub is None:
                self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            if channel not in self._wakers:
                self._wakers[channel] = set()
                await self._pubsub.subscribe(channel)
            self._wakers[channel].add(waker)
            if self._reader is None:
                self._reader = asyncio.ensure_future(self._read())
        try:
            yield waker
        finally:
            await self._forget(channel, waker)

    async def _forget(self, channel: str, waker: asyncio.Event) -> None:
        async with self._lock:
            wakers = self._wakers.get(channel)
            if wakers is None:
                return
            wakers.discard(waker)
            if not wakers:
                del self._wakers[channel]
                with contextlib.suppress(Exception):
                    await self._pubsub.unsubscribe(channel)

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep serving; streams also poll
                logger.warning("event pub/sub connection failed (%s); reconnecting", type(exc).__name__)
                await asyncio.sleep(_RECONNECT_DELAY_S)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            channel = channel.decode("utf-8") if isinstance(channel, bytes) else channel
            for waker in self._wakers.get(channel, ()):
                waker.set()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        await self._client.aclose()
