"""The aiohttp application: routes, middleware and the Redis lifecycle."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from service import device_routes, event_routes, protocol, routes
from service.auth import ApiKeys
from service.config import Settings
from service.errors import (
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    StoreUnavailable,
    TokenRejected,
    problem,
)
from service.event_hub import EventHub
from service.live_estimate import LiveEstimator
from service.metrics import HTTP_DURATION, HTTP_REQUESTS, VALIDATIONS, base_registry
from service.openapi import openapi_document
from service.pipeline import PipelinedConnection
from service.readiness import Readiness
from service.redis_client import create_client
from service.state import API_KEYS, EVENT_HUB, REQUEST_SESSION_ID, REQUEST_USER_ID, SETTINGS, STORE
from service.store import Store

logger = logging.getLogger("session_store.http")

VALIDATIONS_VALID = VALIDATIONS.labels("valid")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Every route of the service: (method, path template, handler). The OpenAPI
# document is checked against this table, so the two cannot drift.
ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/v1/sessions", routes.create_session),
    ("GET", "/v1/sessions/{session_id}", routes.get_session),
    ("DELETE", "/v1/sessions/{session_id}", routes.revoke_session),
    ("GET", "/v1/users/{user_id}/sessions", routes.list_user_sessions),
    ("DELETE", "/v1/users/{user_id}/sessions", routes.revoke_user_sessions),
    ("GET", "/v1/validate", routes.validate),
    ("GET", "/v1/me/session", routes.my_session),
    ("DELETE", "/v1/me/session", routes.sign_out),
    ("POST", "/v1/me/session/extend", routes.extend_my_session),
    ("GET", "/v1/me/sessions", routes.my_sessions),
    ("DELETE", "/v1/me/sessions", routes.revoke_my_sessions),
    ("DELETE", "/v1/me/sessions/{session_id}", routes.revoke_my_session),
    ("GET", "/v1/users/{user_id}/devices", device_routes.list_devices),
    ("PUT", "/v1/users/{user_id}/devices/{device_id}", device_routes.set_device_trust),
    ("GET", "/v1/users/{user_id}/events", event_routes.list_user_events),
    ("GET", "/v1/me/events", event_routes.my_events),
]

# At most 64 characters, shorter than a token (68), so no request id can carry one.
_REQUEST_ID = re.compile(r"\A[A-Za-z0-9._:-]{1,64}\Z")


def _request_id(request: web.Request) -> str:
    """Reuse a well-formed X-Request-Id, else draw one.

    An id long enough to hold a token, or containing an API key, is
    replaced, so a confused client cannot get a credential into the logs.
    """
    offered = request.headers.get("X-Request-Id", "")
    if not _REQUEST_ID.match(offered) or request.app[API_KEYS].found_in(offered):
        return secrets.token_hex(8)
    return offered


def _routing_pattern(path: str) -> str:
    """Let user and device ids contain braces: aiohttp's default segment excludes them."""
    for name in ("user_id", "device_id"):
        path = path.replace(f"{{{name}}}", f"{{{name}:[^/]+}}")
    return path


def _route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _problem_response(error: ServiceError) -> web.Response:
    body = problem(error.status, error.code, error.title, error.detail)
    headers = {"Cache-Control": "no-store", **error.headers()}
    return web.Response(body=orjson.dumps(body), status=error.status, headers=headers,
                        content_type="application/problem+json")


def _as_service_error(exc: web.HTTPException) -> ServiceError:
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("no such resource")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = sorted(exc.allowed_methods)
        return MethodNotAllowed(f"method {exc.method} is not allowed here; allowed: {', '.join(allowed)}",
                                allowed=allowed)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("body: larger than the configured limit")
    error = ServiceError(exc.reason)
    error.status, error.code, error.title = exc.status, "http_error", exc.reason
    return error


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into problem details, then log and count the request."""
    started = time.perf_counter()
    request_id = _request_id(request)
    error: ServiceError | None = None
    try:
        response = await handler(request)
    except ServiceError as exc:
        error = exc
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _as_service_error(exc)
    except Exception:
        logger.exception("unhandled error", extra={"request_id": request_id})
        error = ServiceError("the server failed to handle the request")

    if error is not None:
        response = _problem_response(error)
        _count_error(request, error)
    response.headers["X-Request-Id"] = request_id
    _record(request, response.status, time.perf_counter() - started, request_id, error)
    return response


def _count_error(request: web.Request, error: ServiceError) -> None:
    if isinstance(error, TokenRejected | StoreUnavailable) and request.path == "/v1/validate":
        VALIDATIONS.labels(error.code).inc()


_request_counters: dict[tuple[str, str, int], Any] = {}
_request_timers: dict[tuple[str, str, int], Any] = {}


def _record(request: web.Request, status: int, duration_s: float, request_id: str,
            error: ServiceError | None) -> None:
    route = _route_template(request)
    # Label children are cached: labels() takes a lock and builds a key each call.
    counter_key = (route, request.method, status)
    counter = _request_counters.get(counter_key)
    if counter is None:
        counter = _request_counters[counter_key] = HTTP_REQUESTS.labels(route, request.method, str(status))
    counter.inc()
    timer = _request_timers.get(counter_key)
    if timer is None:
        timer = _request_timers[counter_key] = HTTP_DURATION.labels(route, request.method, str(status))
    timer.observe(duration_s)
    if status == 200 and route == "/v1/validate":
        VALIDATIONS_VALID.inc()
    if logger.isEnabledFor(logging.INFO):
        logger.info(
            "%s %s %d", request.method, route, status,
            extra={
                "request_id": request_id, "method": request.method, "route": route,
                "status": status, "duration_ms": round(duration_s * 1000, 3),
                "session_id": request.get(REQUEST_SESSION_ID), "user_id": request.get(REQUEST_USER_ID),
                "code": error.code if error else None,
            },
        )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    readiness = request.app[READINESS]
    if not readiness.ready:
        return _problem_response(StoreUnavailable(
            f"the session store is not ready: Redis has not answered since start-up "
            f"(failed attempts: {readiness.attempts})"))
    store = request.app[STORE]
    try:
        await store.ping()
        loaded = await store.call(store.client.script_exists(*[s.sha for s in store.scripts.all()]))
        if not all(loaded):
            await store.load_scripts()
    except StoreUnavailable as exc:
        return _problem_response(exc)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Expose the counters and histograms (every worker's with --workers N) and the live estimates."""
    estimator = request.app[LIVE_ESTIMATOR]
    await estimator.refresh()
    body = generate_latest(request.app[METRICS_REGISTRY]) + generate_latest(request.app[ESTIMATE_REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps(request.app[OPENAPI]), content_type="application/json")


OPENAPI = web.AppKey("openapi", dict)
READINESS = web.AppKey("readiness", Readiness)
LIVE_ESTIMATOR = web.AppKey("live_estimator", LiveEstimator)
METRICS_REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)
ESTIMATE_REGISTRY = web.AppKey("estimate_registry", CollectorRegistry)


def _first_node_url(redis_url: str) -> str:
    """Return a URL for plain pub/sub; a cluster URL already names one node."""
    return redis_url


def create_app(settings: Settings, redis_url: str, *, cluster: bool = False) -> web.Application:
    """Build the application; the Redis client opens on startup and closes on cleanup."""
    protocol.install()
    app = web.Application(client_max_size=settings.service.max_body_bytes,
                          middlewares=[problem_middleware])
    app[SETTINGS] = settings
    app[API_KEYS] = ApiKeys(settings.service.api_keys)
    app[OPENAPI] = openapi_document(ROUTES)
    app[METRICS_REGISTRY] = base_registry()

    for method, path, handler in ROUTES:
        app.router.add_route(method, _routing_pattern(path), handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)

    async def redis_lifecycle(app: web.Application) -> AsyncIterator[None]:
        client = create_client(redis_url, cluster=cluster, settings=settings.service)
        service = settings.service
        pipelined = None if cluster else PipelinedConnection(redis_url, timeout_s=service.redis_timeout)
        store = app[STORE] = Store(client, service, pipelined)
        hub = app[EVENT_HUB] = EventHub(_first_node_url(redis_url))
        estimator = app[LIVE_ESTIMATOR] = LiveEstimator(store, cluster=cluster)
        app[ESTIMATE_REGISTRY] = CollectorRegistry(auto_describe=True)
        app[ESTIMATE_REGISTRY].register(estimator)
        readiness = app[READINESS] = Readiness(store)
        await readiness.start()
        yield
        await readiness.stop()
        await hub.close()
        await store.mirror.drain()
        if pipelined is not None:
            await pipelined.close()
        await client.aclose()

    app.cleanup_ctx.append(redis_lifecycle)
    return app
