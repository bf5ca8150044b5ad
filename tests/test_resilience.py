"""Resilience: Redis outages and restarts, a flushed script cache, slow Redis, service restarts."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as RedisClusterClient

from service.cli import SHUTDOWN_TIMEOUT_S
from tests.conftest import API_KEY, TEST_CONFIG, Api, ServiceFactory
from tests.redis_server import RedisServer
from tests.service_process import ServiceProcess, ensure_redis_running

# The field report describes a 10 s outage. 3 s runs the same code paths and keeps the suite short.
OUTAGE_S = 3.0
# Pause between requests during the outage, so the load stays bounded.
OUTAGE_POLL_S = 0.25
REDIS_TIMEOUT_S = TEST_CONFIG["service"]["redis_timeout"]
# Upper bound for a request that hits the Redis deadline: the deadline plus 1 s of slack
# for scheduling on a busy 2-core machine.
SLOW_REDIS_MAX_S = REDIS_TIMEOUT_S + 1.0
PAUSE_MS = 2000

Outcome = tuple[int, str | None]
Operation = Callable[[], Awaitable[tuple[int, Any, Any]]]


def outcome(reply: tuple[int, Any, Any]) -> Outcome:
    """Return the status and the problem code of an Api reply (None when the body has no code)."""
    status, body, _ = reply
    code = body.get("code") if isinstance(body, dict) else None
    return status, code


def session_ids(reply: tuple[int, Any, Any]) -> list[str]:
    _, body, _ = reply
    return [item["session_id"] for item in body["sessions"]]


def script_operations(api: Api, user_id: str, kept: dict[str, Any],
                      revoked: dict[str, Any]) -> dict[str, Operation]:
    """Return one request per Lua script path: create, validate, extend, list and revoke."""
    token = kept["token"]
    return {
        "create": lambda: api.manage("POST", "/v1/sessions",
                                     json={"user_id": user_id, "device": {"id": "dev-new"}}),
        "validate": lambda: api.validate(token),
        "extend": lambda: api.request("POST", "/v1/me/session/extend", token=token),
        "list": lambda: api.manage("GET", f"/v1/users/{user_id}/sessions"),
        "revoke": lambda: api.manage("DELETE", f"/v1/sessions/{revoked['session_id']}"),
    }


SCRIPT_OPERATIONS_OK = {"create": 201, "validate": 200, "extend": 200, "list": 200, "revoke": 204}


async def test_outage_fails_closed_then_recovers(api: Api, redis: aioredis.Redis,
                                                 redis_server: RedisServer) -> None:
    created = await api.create("u-outage", "dev-1")
    token = created["token"]
    session_id = created["session_id"]
    new_session = {"user_id": "u-outage", "device": {"id": "dev-2"}}

    seen: dict[str, set[Outcome]] = {"validate": set(), "create": set(), "revoke": set(),
                                     "list": set(), "me": set()}
    await asyncio.to_thread(redis_server.stop)
    stopped_at = time.monotonic()
    try:
        while time.monotonic() - stopped_at < OUTAGE_S:
            seen["validate"].add(outcome(await api.validate(token)))
            seen["create"].add(outcome(await api.manage("POST", "/v1/sessions", json=new_session)))
            seen["revoke"].add(outcome(await api.manage("DELETE", f"/v1/sessions/{session_id}")))
            seen["list"].add(outcome(await api.manage("GET", "/v1/users/u-outage/sessions")))
            seen["me"].add(outcome(await api.request("GET", "/v1/me/session", token=token)))
            await asyncio.sleep(OUTAGE_POLL_S)
        readyz_during, _, _ = await api.request("GET", "/readyz")
        healthz_during, _, _ = await api.request("GET", "/healthz")
    finally:
        await asyncio.to_thread(ensure_redis_running, redis_server)

    # The same service instance, first request after Redis is back.
    validate_status, validate_body, _ = await api.validate(token, params={"extend": "false"})
    listed = await api.manage("GET", "/v1/users/u-outage/sessions")

    unavailable = {(503, "store_unavailable")}
    assert seen == {"validate": unavailable, "create": unavailable, "revoke": unavailable,
                    "list": unavailable, "me": unavailable}
    assert readyz_during == 503
    assert healthz_during == 200
    assert validate_status == 200
    assert validate_body["session_id"] == session_id
    assert validate_body["expires_at"] == created["expires_at"]
    assert listed[0] == 200
    assert session_ids(listed) == [session_id]


async def test_redis_restart_keeps_sessions(api: Api, redis: aioredis.Redis,
                                            redis_server: RedisServer) -> None:
    created = await api.create("u-aof", "dev-1")

    try:
        await asyncio.to_thread(redis_server.restart)
    finally:
        await asyncio.to_thread(ensure_redis_running, redis_server)
    status, body, _ = await api.validate(created["token"], params={"extend": "false"})

    assert status == 200
    assert body["session_id"] == created["session_id"]
    assert body["expires_at"] == created["expires_at"]


async def test_redis_restart_scripts_first_attempt(api: Api, redis: aioredis.Redis,
                                                   redis_server: RedisServer) -> None:
    kept = await api.create("u-noscript", "dev-1")
    revoked = await api.create("u-noscript", "dev-2")
    operations = script_operations(api, "u-noscript", kept, revoked)

    # Restart before every operation, so each one meets an empty script cache
    # and a pooled connection that the restart closed.
    statuses = {}
    for name, operation in operations.items():
        try:
            await asyncio.to_thread(redis_server.restart)
        finally:
            await asyncio.to_thread(ensure_redis_running, redis_server)
        statuses[name], _, _ = await operation()

    assert statuses == SCRIPT_OPERATIONS_OK


async def test_script_flush_first_attempt(api: Api, redis: aioredis.Redis) -> None:
    kept = await api.create("u-flush", "dev-1")
    revoked = await api.create("u-flush", "dev-2")
    operations = script_operations(api, "u-flush", kept, revoked)

    statuses = {}
    for name, operation in operations.items():
        await redis.script_flush()
        statuses[name], _, _ = await operation()

    assert statuses == SCRIPT_OPERATIONS_OK


async def test_readyz_after_script_flush(api: Api, redis: aioredis.Redis) -> None:
    await api.create("u-flush-ready", "dev-1")
    await redis.script_flush()

    status, _, _ = await api.request("GET", "/readyz")

    assert status == 200


async def test_readyz_redis_up(api: Api) -> None:
    status, body, _ = await api.request("GET", "/readyz")

    assert status == 200
    assert body == {"status": "ready"}


async def test_slow_redis_answers_503(make_service: ServiceFactory, redis: aioredis.Redis) -> None:
    config = copy.deepcopy(TEST_CONFIG)
    config["service"]["redis_timeout"] = 0.5
    api = await make_service(config)
    paused_session = await api.create("u-slow", "dev-1")
    other_session = await api.create("u-slow", "dev-2")

    # CLIENT PAUSE <ms> ALL (Redis 6.2+) delays every client's commands, the service's
    # included, for PAUSE_MS. The test sends it on its own connection.
    if isinstance(redis, RedisClusterClient):
        await redis.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL",
                                    target_nodes=RedisClusterClient.ALL_NODES)
    else:
        await redis.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
    paused_at = time.monotonic()
    started = time.monotonic()
    during = await api.validate(paused_session["token"])
    elapsed_s = time.monotonic() - started

    await asyncio.sleep(max(0.0, paused_at + PAUSE_MS / 1000 + 0.3 - time.monotonic()))
    # A connection abandoned at the deadline must not hand its late reply to the next call:
    # validating the other session must return the other session.
    after_status, after_body, _ = await api.validate(other_session["token"])
    listed = await api.manage("GET", "/v1/users/u-slow/sessions")

    assert outcome(during) == (503, "store_unavailable")
    assert elapsed_s < SLOW_REDIS_MAX_S
    assert after_status == 200
    assert after_body["session_id"] == other_session["session_id"]
    assert listed[0] == 200
    assert sorted(session_ids(listed)) == sorted([paused_session["session_id"],
                                                  other_session["session_id"]])


async def test_service_restart_keeps_sessions(make_service: ServiceFactory) -> None:
    first = await make_service()
    created = await first.create("u-svc", "dev-1")

    # A second instance on the same Redis stands for the restarted service.
    second = await make_service()
    status, body, _ = await second.validate(created["token"], params={"extend": "false"})

    assert status == 200
    assert body["session_id"] == created["session_id"]
    assert body["expires_at"] == created["expires_at"]


async def test_service_process_restart_keeps_sessions(redis: aioredis.Redis, redis_server: RedisServer,
                                                      tmp_path: Path) -> None:
    service = ServiceProcess(redis_server.url, tmp_path / "service.log", api_keys=API_KEY)
    # No keep-alive: a pooled connection to the stopped process would fail the next request.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        api = Api(http, service.base_url)
        try:
            service.start()
            await service.wait_healthy()
            created = await api.create("u-proc", "dev-1")
            first_exit = await asyncio.to_thread(service.terminate, SHUTDOWN_TIMEOUT_S)

            service.start()
            await service.wait_healthy()
            status, body, _ = await api.validate(created["token"], params={"extend": "false"})
            second_exit = await asyncio.to_thread(service.terminate, SHUTDOWN_TIMEOUT_S)
        finally:
            await asyncio.to_thread(service.kill)

    assert first_exit == 0
    assert status == 200
    assert body["session_id"] == created["session_id"]
    assert body["expires_at"] == created["expires_at"]
    assert second_exit == 0


async def pause_redis(redis: Any, ms: int) -> None:
    """Delay every client's commands for ms, on every node of a cluster."""
    if isinstance(redis, RedisClusterClient):
        await redis.execute_command("CLIENT", "PAUSE", ms, "ALL", target_nodes=RedisClusterClient.ALL_NODES)
    else:
        await redis.execute_command("CLIENT", "PAUSE", ms, "ALL")


async def test_exhausted_connections_answer_503_in_time(make_service: ServiceFactory,
                                                        redis: aioredis.Redis) -> None:
    config = copy.deepcopy(TEST_CONFIG)
    config["service"].update({"redis_timeout": 0.5, "redis_max_connections": 2})
    api = await make_service(config)
    session = await api.create("u-pool", "dev-1")

    await pause_redis(redis, 1500)
    started = time.monotonic()
    results = await asyncio.gather(*(api.validate(session["token"]) for _ in range(60)))
    elapsed_s = time.monotonic() - started
    await asyncio.sleep(1.2)
    after, _, _ = await api.validate(session["token"])

    # Sixty callers on two connections: none waits past the deadline, none is
    # told the session is valid without the store.
    assert {outcome(result) for result in results} == {(503, "store_unavailable")}
    assert elapsed_s < 1.5
    assert after == 200


async def test_debug_sleep_answers_503_in_time(make_service: ServiceFactory, redis: aioredis.Redis,
                                               redis_server: RedisServer) -> None:
    config = copy.deepcopy(TEST_CONFIG)
    config["service"]["redis_timeout"] = 0.5
    api = await make_service(config)
    session = await api.create("u-sleep", "dev-1")

    sleeper = asyncio.create_task(redis.execute_command("DEBUG", "SLEEP", "1.5"))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    during = await api.validate(session["token"])
    elapsed_s = time.monotonic() - started
    await sleeper
    after, _, _ = await api.validate(session["token"])

    assert outcome(during) == (503, "store_unavailable")
    assert elapsed_s < 1.2
    assert after == 200
