"""Start-up readiness: reach Redis and load the scripts, retrying in the background.

The service starts whether or not Redis responds. Until the first ping
and script load succeed, /readyz returns 503 and this module retries
with a delay that doubles from FIRST_RETRY_DELAY_S up to MAX_RETRY_DELAY_S,
logging each failed attempt once. Requests meanwhile reach Redis on their
own and get 503 store_unavailable while it is down.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.exceptions

from service import metrics
from service.keys import HASH_MAX_LISTPACK_VALUE

logger = logging.getLogger("session_store.redis")

FIRST_RETRY_DELAY_S = 0.1
MAX_RETRY_DELAY_S = 5.0
# How long stop() waits for the retry task after cancelling it.
_STOP_WAIT_S = 1.0


class Readiness:
    """Whether Redis responded and the scripts are loaded, and the task that retries until then."""

    def __init__(self, store: Any, *, first_delay_s: float = FIRST_RETRY_DELAY_S,
                 max_delay_s: float = MAX_RETRY_DELAY_S) -> None:
        self.store = store
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.ready = False
        self.attempts = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Try once now; on failure, keep trying in a background task."""
        if await self._attempt(retry_in_s=self.first_delay_s):
            return
        self._task = asyncio.ensure_future(self._retry())

    async def _retry(self) -> None:
        delay_s = self.first_delay_s
        while True:
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, self.max_delay_s)
            if await self._attempt(retry_in_s=delay_s):
                return

    async def _attempt(self, *, retry_in_s: float) -> bool:
        """Ping Redis and load every script; log the outcome once and return whether it worked."""
        self.attempts += 1
        client = self.store.client
        try:
            async with asyncio.timeout(self.store.timeout_s):
                await client.ping()
                for script in self.store.scripts.all():
                    await client.script_load(script.script)
        except (TimeoutError, redis.exceptions.TimeoutError):
            metrics.count_redis_error("timeout")
            error = f"no answer within {self.store.timeout_s}s"
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
            connection = isinstance(exc, redis.exceptions.ConnectionError | OSError)
            metrics.count_redis_error("connection" if connection else "other")
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
        else:
            self.ready = True
            logger.info("redis ready: ping succeeded and scripts loaded on attempt %d", self.attempts,
                        extra={"attempt": self.attempts})
            await self._check_hash_encoding()
            return True
        logger.warning("redis not ready (attempt %d, %s); retrying in %.1fs", self.attempts, error,
                       retry_in_s, extra={"attempt": self.attempts, "retry_in_s": retry_in_s})
        return False

    async def _check_hash_encoding(self) -> None:
        """Warn once when Redis would store the per-user hashes as hashtables."""
        try:
            async with asyncio.timeout(self.store.timeout_s):
                reply = await self.store.client.config_get("hash-max-*-value")
        except (TimeoutError, redis.exceptions.RedisError, redis.exceptions.RedisClusterException,
                OSError) as exc:
            # Managed Redis services often disable CONFIG, and the check is advice only.
            logger.info("could not read hash-max-listpack-value (%s); make sure it is at least %d",
                        type(exc).__name__, HASH_MAX_LISTPACK_VALUE)
            return

        limit = min(_config_values(reply), default=None)
        if limit is not None and limit < HASH_MAX_LISTPACK_VALUE:
            logger.warning(
                "redis has hash-max-listpack-value %d: per-user hashes become hashtables and "
                "sessions cost about 19 %% more memory; set it to %d", limit, HASH_MAX_LISTPACK_VALUE)

    async def stop(self) -> None:
        """Stop retrying, at shutdown."""
        if self._task is None or self._task.done():
            return
        self._task.cancel()
        # asyncio.wait, not await: on Python 3.11, redis-py's wait_for can
        # swallow a cancellation, and a shutdown must not hang on it.
        await asyncio.wait({self._task}, timeout=_STOP_WAIT_S)


def _config_values(reply: Any) -> list[int]:
    """Return the integer values of a CONFIG GET reply, from one node or from every node of a cluster."""
    values: list[int] = []
    for value in reply.values():
        if isinstance(value, dict):
            values.extend(_config_values(value))
        elif str(value).isdigit():
            values.append(int(value))
    return values
