"""Creating the redis-py asyncio client for a single node or a cluster."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.config import ServiceSettings


def create_client(url: str, *, cluster: bool, settings: ServiceSettings) -> Any:
    """Return a client whose every wait (connect, read, pool) ends by the deadline."""
    timeout_s = settings.redis_timeout
    if cluster:
        return RedisCluster.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            max_connections=settings.redis_max_connections,
            # MOVED and ASK are followed inside one call, and a failed node
            # is retried after a topology refresh; the deadline caps both.
            retry=Retry(NoBackoff(), 3),
            decode_responses=False,
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        # A full pool waits this long for a free connection, then fails: a
        # queue that grows without bound would turn an outage into a pile-up.
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1),
        decode_responses=False,
    )
    return aioredis.Redis(connection_pool=pool)
