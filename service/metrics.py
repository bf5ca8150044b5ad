"""Prometheus metrics. Routes are labelled by template, never by raw path.

With ``serve --workers N`` (N > 1) the supervisor points
PROMETHEUS_MULTIPROC_DIR at a private folder before it starts the workers.
prometheus-client then keeps every counter and histogram value in a
memory-mapped file per process, and a scrape, whichever worker serves it,
sums the files of all workers with MultiProcessCollector. The variable
must be set before prometheus_client is first imported, which is why the
supervisor sets it and the workers inherit it. A single process whose
environment already sets the variable also runs in multi-process mode and
reads that folder, as prometheus-client documents.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from service.launch import MULTIPROC_DIR_ENV
from service.scripts import SCRIPT_NAMES, script_source

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "session_store_http_requests_total",
    "HTTP requests by route template, method and status.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "session_store_http_request_duration_seconds",
    "HTTP request latency in seconds by route template, method and status.",
    ["route", "method", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
VALIDATIONS = Counter(
    "session_store_validations_total",
    "Token validations by outcome (valid or the problem code).",
    ["outcome"],
    registry=REGISTRY,
)
REDIS_DURATION = Histogram(
    "session_store_redis_call_duration_seconds",
    "Redis call latency in seconds by operation (the Lua script name, or command), "
    "failed calls included.",
    ["operation"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
REDIS_ERRORS = Counter(
    "session_store_redis_errors_total",
    "Redis calls that failed, by kind: timeout (past the deadline), connection "
    "(unreachable or lost) or other (an error reply or cluster failure).",
    ["kind"],
    registry=REGISTRY,
)
SESSIONS_CREATED = Counter(
    "session_store_sessions_created_total", "Sessions created.", registry=REGISTRY
)
SESSIONS_ENDED = Counter(
    "session_store_sessions_ended_total",
    "Sessions ended, by reason: replaced, evicted, revoked, or expired (counted when the "
    "service first notices the expiry).",
    ["reason"],
    registry=REGISTRY,
)
ANOMALIES = Counter(
    "session_store_anomalies_total",
    "Anomaly events by type (context_changed, invalid_secret, revoked_token_used, new_device, "
    "creation_burst).",
    ["type"],
    registry=REGISTRY,
)

_ENDED_REASONS = ("replaced", "evicted", "revoked", "expired")
ANOMALY_TYPES = ("context_changed", "invalid_secret", "revoked_token_used", "new_device", "creation_burst")


def _event_counters() -> dict[bytes | str, Any]:
    """Map each event type, as bytes and as text, to the counter child it increments."""
    by_type: dict[str, Any] = {"session_created": SESSIONS_CREATED}
    by_type.update({f"session_{reason}": SESSIONS_ENDED.labels(reason) for reason in _ENDED_REASONS})
    by_type.update({kind: ANOMALIES.labels(kind) for kind in ANOMALY_TYPES})
    counters: dict[bytes | str, Any] = {}
    for kind, child in by_type.items():
        counters[kind] = counters[kind.encode("ascii")] = child
    return counters


_EVENT_COUNTERS = _event_counters()


def count_events(emitted: Iterable[Any]) -> None:
    """Count the events of one script reply: entries {id, type, user_id, sid, device_id, detail}."""
    for entry in emitted:
        counter = _EVENT_COUNTERS.get(entry[1])
        if counter is not None:
            counter.inc()


def _script_operations() -> dict[str, str]:
    """Map each script's SHA-1, as redis-py computes it, to the script name."""
    return {hashlib.sha1(script_source(name).encode("utf-8")).hexdigest(): name
            for name in SCRIPT_NAMES}


_OPERATION_BY_SHA = _script_operations()
_redis_timers: dict[str, Any] = {}
REDIS_ERROR_KINDS = ("timeout", "connection", "other")
_redis_errors = {kind: REDIS_ERRORS.labels(kind) for kind in REDIS_ERROR_KINDS}


def script_operation(sha: str) -> str:
    """Return the operation label of a script: its name, or "script" for an unknown one."""
    return _OPERATION_BY_SHA.get(sha, "script")


def observe_redis_call(operation: str, duration_s: float) -> None:
    timer = _redis_timers.get(operation)
    if timer is None:
        timer = _redis_timers[operation] = REDIS_DURATION.labels(operation)
    timer.observe(duration_s)


def count_redis_error(kind: str) -> None:
    _redis_errors[kind].inc()


def multiprocess_dir() -> str | None:
    """Return the shared metrics folder of a multi-worker run, or None for one process."""
    return os.environ.get(MULTIPROC_DIR_ENV) or None


def base_registry() -> CollectorRegistry:
    """Return the registry a scrape reads: this process's metrics, or every worker's summed."""
    if multiprocess_dir() is None:
        return REGISTRY
    registry = CollectorRegistry(auto_describe=True)
    MultiProcessCollector(registry)
    return registry
