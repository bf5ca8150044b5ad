"""Prometheus metrics. Routes are labelled by template, never by raw path."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "session_store_http_requests_total",
    "HTTP requests by route template, method and status.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "session_store_http_request_duration_seconds",
    "HTTP request latency in seconds by route template and method.",
    ["route", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
VALIDATIONS = Counter(
    "session_store_validations_total",
    "Token validations by outcome (valid or the problem code).",
    ["outcome"],
    registry=REGISTRY,
)
SESSIONS_CREATED = Counter(
    "session_store_sessions_created_total", "Sessions created.", registry=REGISTRY
)
SESSIONS_ENDED = Counter(
    "session_store_sessions_ended_total",
    "Sessions ended by the service, by reason (replaced, evicted, revoked).",
    ["reason"],
    registry=REGISTRY,
)
STORE_ERRORS = Counter(
    "session_store_redis_errors_total",
    "Redis calls that failed or timed out, answered 503.",
    registry=REGISTRY,
)
