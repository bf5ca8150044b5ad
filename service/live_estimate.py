"""Estimates of live sessions and users, sampled from Redis when /metrics is scraped.

Counting every session would mean reading every user's keys, so a scrape
samples instead, at most once per SAMPLE_INTERVAL_S per process:

- A node with at most EXACT_KEY_LIMIT keys is counted exactly: SCAN finds
  every user index key (``<prefix>{tag}:i``) and ZCARD counts its sessions.
- A larger node gets RANDOM_SAMPLES RANDOMKEY calls. With D keys on the
  node, k index keys among n samples and S sessions in those indexes, the
  node holds about D * k / n users and D * S / n sessions.

On Redis Cluster every master is sampled and the estimates are summed.
A user index lists the sessions not yet seen to expire, so sessions that
expired without anyone noticing still count until their index expires,
at most expiry_grace after the last one. The help text calls both values
estimates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import msgspec
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.errors import StoreUnavailable
from service.keys import user_keys

logger = logging.getLogger("session_store.metrics")

SAMPLE_INTERVAL_S = 30.0
EXACT_KEY_LIMIT = 1000
RANDOM_SAMPLES = 200
# RANDOMKEY calls in flight at once per cluster node, below its connection pool size.
_CLUSTER_CONCURRENCY = 8
_SCAN_COUNT = 1000


class LiveEstimate(msgspec.Struct, frozen=True):
    sessions: float
    users: float
    # Whether every node was small enough to be counted exactly.
    exact: bool
    # time.time() when the sample was taken.
    sampled_at_s: float


class _NodeCount(msgspec.Struct):
    keys: int
    users: float
    sessions: float
    exact: bool


class LiveEstimator(Collector):
    """Sample live sessions and users at most once per interval; expose them as gauges."""

    def __init__(self, store: Any, *, cluster: bool, interval_s: float = SAMPLE_INTERVAL_S,
                 exact_key_limit: int = EXACT_KEY_LIMIT, samples: int = RANDOM_SAMPLES) -> None:
        self.store = store
        self.cluster = cluster
        self.interval_s = interval_s
        self.exact_key_limit = exact_key_limit
        self.samples = samples
        self.estimate: LiveEstimate | None = None
        self._attempted_s = -float("inf")
        self._lock = asyncio.Lock()
        head, _, tail = user_keys(store.key_prefix, "\0").index.partition("\0")
        self._index_head = head.encode("utf-8")
        self._index_tail = tail.encode("utf-8")

    async def refresh(self) -> None:
        """Take a new sample unless one was attempted within the interval; never raise StoreUnavailable."""
        async with self._lock:
            now_s = time.monotonic()
            if now_s - self._attempted_s < self.interval_s:
                return
            self._attempted_s = now_s
            try:
                self.estimate = await self.sample()
            except StoreUnavailable as exc:
                logger.warning("live session estimate failed; keeping the previous one: %s", exc.detail)

    async def sample(self) -> LiveEstimate:
        """Count or sample every node now; raise StoreUnavailable when Redis fails."""
        if self.cluster:
            # A client that has not run a command yet has no node list; initialize() is idempotent.
            await self.store.call(self.store.client.initialize())
            nodes = self.store.client.get_primaries()
            if not nodes:
                raise StoreUnavailable("the Redis Cluster has no reachable primary")
            counts = [await self._count_node(node) for node in nodes]
        else:
            counts = [await self._count_node(None)]
        return LiveEstimate(
            sessions=sum(count.sessions for count in counts),
            users=sum(count.users for count in counts),
            exact=all(count.exact for count in counts),
            sampled_at_s=time.time(),
        )

    def is_index_key(self, key: bytes) -> bool:
        """Return whether key has the shape of a user index key, <prefix>{tag}:i."""
        if not (key.startswith(self._index_head) and key.endswith(self._index_tail)):
            return False
        tag = key[len(self._index_head):len(key) - len(self._index_tail)]
        return bool(tag) and b"}" not in tag

    async def _count_node(self, node: Any) -> _NodeCount:
        keys = int(await self._command(node, "DBSIZE"))
        if keys <= self.exact_key_limit:
            index_keys = await self._scan_index_keys(node)
            sizes = await self._index_sizes(index_keys)
            return _NodeCount(keys=keys, users=float(len(index_keys)), sessions=float(sum(sizes)),
                              exact=True)
        sampled = await self._random_keys(node)
        index_keys = [key for key in sampled if key is not None and self.is_index_key(key)]
        sizes = await self._index_sizes(index_keys)
        scale = keys / max(len(sampled), 1)
        return _NodeCount(keys=keys, users=len(index_keys) * scale, sessions=sum(sizes) * scale,
                          exact=False)

    async def _command(self, node: Any, *args: Any) -> Any:
        client = self.store.client
        if node is None:
            return await self.store.call(client.execute_command(*args))
        return await self.store.call(client.execute_command(*args, target_nodes=node))

    async def _scan_index_keys(self, node: Any) -> list[bytes]:
        pattern = _glob_escape(self._index_head) + b"*" + _glob_escape(self._index_tail)
        found: list[bytes] = []
        cursor: Any = 0
        while True:
            reply = await self._command(node, "SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_COUNT)
            cursor, keys = _scan_reply(reply)
            found.extend(key for key in keys if self.is_index_key(key))
            if int(cursor) == 0:
                return found

    async def _random_keys(self, node: Any) -> list[bytes | None]:
        if node is None:
            async with self.store.client.pipeline(transaction=False) as pipe:
                for _ in range(self.samples):
                    pipe.randomkey()
                return list(await self.store.call(pipe.execute()))
        keys: list[bytes | None] = []
        while len(keys) < self.samples:
            batch = min(_CLUSTER_CONCURRENCY, self.samples - len(keys))
            keys.extend(await asyncio.gather(*(self._command(node, "RANDOMKEY") for _ in range(batch))))
        return keys

    async def _index_sizes(self, index_keys: list[bytes]) -> list[int]:
        if not index_keys:
            return []
        if self.cluster:
            sizes = []
            for start in range(0, len(index_keys), _CLUSTER_CONCURRENCY):
                batch = index_keys[start:start + _CLUSTER_CONCURRENCY]
                sizes.extend(await asyncio.gather(
                    *(self.store.call(self.store.client.zcard(key)) for key in batch)))
            return [int(size) for size in sizes]
        async with self.store.client.pipeline(transaction=False) as pipe:
            for key in index_keys:
                pipe.zcard(key)
            return [int(size) for size in await self.store.call(pipe.execute())]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        estimate = self.estimate
        if estimate is None:
            return
        yield GaugeMetricFamily(
            "session_store_live_sessions",
            f"Estimate of live sessions in Redis, sampled at most every {self.interval_s:g} s: exact "
            f"on nodes with up to {self.exact_key_limit} keys, extrapolated from "
            f"{self.samples} random keys per node above that.",
            value=estimate.sessions,
        )
        yield GaugeMetricFamily(
            "session_store_live_users",
            "Estimate of users with at least one live session, sampled like session_store_live_sessions.",
            value=estimate.users,
        )
        yield GaugeMetricFamily(
            "session_store_live_estimate_timestamp_seconds",
            "Unix time of the sample behind the live session and user estimates.",
            value=estimate.sampled_at_s,
        )


def _scan_reply(reply: Any) -> tuple[Any, list[bytes]]:
    """Return (cursor, keys) from a SCAN reply.

    redis-py's cluster client reports the cursor as {node name: cursor}.
    """
    cursor, keys = reply
    if isinstance(cursor, dict):
        (cursor,) = cursor.values()
    return cursor, list(keys)


def _glob_escape(text: bytes) -> bytes:
    """Escape the glob characters of Redis MATCH patterns, so a key prefix matches literally."""
    for special in (b"\\", b"*", b"?", b"[", b"]"):
        text = text.replace(special, b"\\" + special)
    return text
