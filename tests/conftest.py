"""Fixtures: a real redis-server on loopback and the service running in-process."""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from redis.asyncio.cluster import RedisCluster as RedisClusterClient

from service.app import create_app
from service.config import build_settings
from service.embedded import free_port
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer

API_KEY = "test-api-key-0123456789abcdef"

# Policies with windows of a few seconds, so expiry can be observed in tests.
TEST_CONFIG: dict[str, Any] = {
    # A 2 s deadline: a 0.5 s one trips on a loaded 2-core CI machine
    # running the six cluster nodes; the deadline test sets its own.
    "service": {"api_keys": [API_KEY], "expiry_grace": "5s", "redis_timeout": 2.0},
    "policies": {
        "short": {"expires_in": 3, "min_expires_in": 1, "max_expires_in": "1h",
                  "max_lifetime": "1h"},
        "capped": {"expires_in": 3, "min_expires_in": 1, "max_lifetime": 6},
        "fixed": {"expires_in": 3, "min_expires_in": 1, "extend_on_activity": False,
                  "max_lifetime": "1h"},
        "strict": {"expires_in": "1h", "max_sessions": 5, "on_limit": "reject"},
        "pair": {"expires_in": "1h", "max_sessions": 2, "on_limit": "reject"},
        "small": {"expires_in": "1h", "max_sessions": 3},
    },
}


class Api:
    """HTTP client for one service, with helpers for the management API key."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str) -> None:
        self.http = http
        self.base_url = base_url

    def url(self, path: str) -> str:
        return self.base_url + path

    async def request(self, method: str, path: str, *, token: str | None = None,
                      api_key: str | None = None, **kwargs: Any) -> tuple[int, Any, Any]:
        headers = dict(kwargs.pop("headers", {}))
        credential = token if token is not None else api_key
        if credential is not None:
            headers["Authorization"] = f"Bearer {credential}"
        async with self.http.request(method, self.url(path), headers=headers, **kwargs) as resp:
            raw = await resp.read()
            body = None
            if raw and "json" in resp.headers.get("Content-Type", ""):
                body = await resp.json(content_type=None)
            return resp.status, body, resp.headers

    async def manage(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        return await self.request(method, path, api_key=API_KEY, **kwargs)

    async def create(self, user_id: str = "u-1", device_id: str = "dev-1", **fields: Any) -> dict[str, Any]:
        body = {"user_id": user_id, "device": {"id": device_id}, **fields}
        status, payload, _ = await self.manage("POST", "/v1/sessions", json=body)
        assert status == 201, payload
        return payload

    async def validate(self, token: str, **kwargs: Any) -> tuple[int, Any, Any]:
        return await self.request("GET", "/v1/validate", token=token, **kwargs)


# Every test that touches Redis runs once per backend: a single
# redis-server and a local Redis Cluster of three masters with a replica
# each. SESSION_STORE_TEST_BACKENDS=single runs only the first.
BACKENDS = [name for name in os.environ.get("SESSION_STORE_TEST_BACKENDS", "single,cluster").split(",")
            if name]


@dataclasses.dataclass
class Backend:
    name: str
    url: str
    cluster: bool
    server: RedisServer | None = None
    nodes: RedisCluster | None = None


@pytest.fixture(scope="session")
def single_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cluster_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "cluster":
        nodes = request.getfixturevalue("cluster_redis")
        return Backend("cluster", nodes.url, True, nodes=nodes)
    server = request.getfixturevalue("single_redis")
    return Backend("single", server.url, False, server=server)


@pytest.fixture
def redis_server(backend: Backend) -> RedisServer:
    """The single redis-server, for tests that stop, restart or pause it."""
    if backend.server is None:
        # NOTE: outage, restart and pause tests drive one redis-server
        # process; their cluster counterparts (failover) are not written yet.
        pytest.skip("stops or pauses a single redis-server")
    return backend.server


@pytest.fixture
async def redis(backend: Backend) -> AsyncIterator[Any]:
    """A raw client for inspecting the store; the database is emptied before each test."""
    if backend.server is not None and (backend.server.process is None
                                       or backend.server.process.poll() is not None):
        backend.server.start()
    if backend.cluster:
        client: Any = RedisClusterClient.from_url(backend.url)
    else:
        client = aioredis.Redis.from_url(backend.url)
    await client.flushall()
    yield client
    await client.aclose()


ServiceFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def make_service(redis: Any, backend: Backend) -> AsyncIterator[ServiceFactory]:
    """Start services in this test's event loop; each is stopped after the test."""
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(config: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Api:
        settings = build_settings(copy.deepcopy(config or TEST_CONFIG), environ or {})
        app = create_app(settings, backend.url, cluster=backend.cluster)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        http = aiohttp.ClientSession()
        sessions.append(http)
        return Api(http, f"http://127.0.0.1:{port}")

    yield start
    for http in sessions:
        await http.close()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def api(make_service: ServiceFactory) -> Api:
    return await make_service()
