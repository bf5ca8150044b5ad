"""Process lifecycle: start-up with Redis down, readiness, multi-worker metrics, SIGTERM drain,
start-up logging and bad configuration.

Most tests run `python -m service serve` as a child process on a
127.0.0.1 port and read its JSON log. They drive one redis-server, so they
run on the single backend only.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from service import __version__
from service.app import create_app
from service.cli import SHUTDOWN_TIMEOUT_S
from service.config import API_KEYS_ENV, REDIS_URL_ENV, build_settings
from service.embedded import find_redis_server, free_port
from service.logs import redact_url
from service.readiness import Readiness
from tests.conftest import API_KEY, TEST_CONFIG, Api, Backend, ServiceFactory
from tests.redis_server import RedisServer
from tests.service_process import REPO_ROOT, START_TIMEOUT_S, ServiceProcess, ensure_redis_running

# Seconds a check waits for something the service logs or serves.
WAIT_S = 20.0
PAUSE_MS = 1500
CONFIG_TOML = """
[service]
redis_timeout = 5
log_level = "info"
"""

LogRecord = dict[str, Any]


class ServeProcess(ServiceProcess):
    """A `serve` child with extra command-line arguments, such as --workers."""

    def __init__(self, redis_url: str, log_path: Path, *, extra_args: list[str] | None = None,
                 config_path: Path | None = None, environ: dict[str, str] | None = None) -> None:
        super().__init__(redis_url, log_path, config_path=config_path, api_keys=API_KEY)
        self.extra_args = extra_args or []
        self.environ = environ or {}

    def start(self) -> None:
        args = [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--redis-url", self.redis_url, *self.extra_args]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        environ = {name: value for name, value in os.environ.items()
                   if name not in (API_KEYS_ENV, REDIS_URL_ENV)}
        environ[API_KEYS_ENV] = API_KEY
        environ.update(self.environ)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(args, cwd=REPO_ROOT, env=environ, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log)

    def records(self) -> list[LogRecord]:
        """Return the JSON log lines written so far."""
        records = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    async def wait_for_log(self, predicate: Callable[[list[LogRecord]], bool]) -> list[LogRecord]:
        """Poll the log until predicate holds for its records; fail after WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            records = self.records()
            if predicate(records):
                return records
            await asyncio.sleep(0.1)
        raise AssertionError(f"log condition not met within {WAIT_S}s, see {self.log_path}")


def messages(records: list[LogRecord], start: str) -> list[LogRecord]:
    return [record for record in records if record.get("message", "").startswith(start)]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # A new connection per request: with --workers N, the kernel spreads connections over the workers.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG_TOML, encoding="utf-8")
    return path


@pytest.fixture
async def stopped_after() -> AsyncIterator[list[ServeProcess]]:
    """Kill, after the test, any child the test left running."""
    started: list[ServeProcess] = []
    yield started
    for service in started:
        await asyncio.to_thread(service.kill)


async def wait_for_status(http: aiohttp.ClientSession, url: str, status: int) -> float:
    """Poll url until it returns status; return the seconds it took. Fail after WAIT_S."""
    started = time.monotonic()
    while time.monotonic() - started < WAIT_S:
        try:
            async with http.get(url) as response:
                if response.status == status:
                    return time.monotonic() - started
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not return {status} within {WAIT_S}s")


def metric_value(text: str, name: str, **labels: str) -> float:
    """Return the sum of the samples of one metric whose labels include labels."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


# -- multi-worker metrics --------------------------------------------------------

async def test_workers_aggregate_metrics(single_redis: RedisServer, tmp_path: Path, config_path: Path,
                                         http: aiohttp.ClientSession,
                                         stopped_after: list[ServeProcess]) -> None:
    ensure_redis_running(single_redis)
    raw = aioredis.Redis.from_url(single_redis.url)
    await raw.flushall()
    await raw.aclose()
    service = ServeProcess(single_redis.url, tmp_path / "service.log", extra_args=["--workers", "2"],
                           config_path=config_path)
    stopped_after.append(service)
    service.start()
    await service.wait_healthy()
    records = await service.wait_for_log(lambda records: len(messages(records, "redis ready")) == 2)
    metrics_dir = Path(messages(records, "workers share metrics")[0]["metrics_dir"])
    dir_existed = metrics_dir.is_dir()

    healthz_before = 0.0
    async with http.get(service.base_url + "/metrics") as response:
        healthz_before = metric_value(await response.text(), "session_store_http_requests_total",
                                      route="/healthz")
    for _ in range(40):
        async with http.get(service.base_url + "/healthz") as response:
            assert response.status == 200
    api = Api(http, service.base_url)
    for number in range(6):
        await api.create(f"u-workers-{number}", "dev-1")
    scrapes = []
    for _ in range(4):
        async with http.get(service.base_url + "/metrics") as response:
            scrapes.append(await response.text())
    exit_code = await asyncio.to_thread(service.terminate, SHUTDOWN_TIMEOUT_S + 10)

    records = service.records()
    pids = {record["pid"] for record in messages(records, "listening on")}
    (stopped,) = messages(records, "stopped 2 workers")
    healthz_counts = [metric_value(text, "session_store_http_requests_total", route="/healthz")
                      - healthz_before for text in scrapes]
    created_counts = [metric_value(text, "session_store_sessions_created_total") for text in scrapes]
    assert len(pids) == 2
    assert dir_existed
    # One worker alone would count about half of the 40 requests.
    assert healthz_counts == [40, 40, 40, 40]
    assert created_counts == [6, 6, 6, 6]
    assert exit_code == 0
    assert stopped["exit_code"] == [0, 0]
    assert not metrics_dir.exists()


async def test_one_worker_uses_inherited_metrics_dir(single_redis: RedisServer, tmp_path: Path,
                                                        http: aiohttp.ClientSession,
                                                        stopped_after: list[ServeProcess]) -> None:
    ensure_redis_running(single_redis)
    inherited = tmp_path / "inherited-metrics"
    inherited.mkdir()
    service = ServeProcess(single_redis.url, tmp_path / "service.log",
                           environ={"PROMETHEUS_MULTIPROC_DIR": str(inherited)})
    stopped_after.append(service)
    service.start()
    await service.wait_healthy()

    scrapes = []
    async with http.get(service.base_url + "/metrics") as response:
        scrapes.append(await response.text())
    for _ in range(3):
        async with http.get(service.base_url + "/healthz") as response:
            assert response.status == 200
    async with http.get(service.base_url + "/metrics") as response:
        scrapes.append(await response.text())
    exit_code = await asyncio.to_thread(service.terminate, SHUTDOWN_TIMEOUT_S)

    before, after = (metric_value(text, "session_store_http_requests_total", route="/healthz")
                     for text in scrapes)
    assert after - before == 3
    assert list(inherited.glob("counter_*.db")) != []
    assert exit_code == 0


# -- start-up with Redis down ----------------------------------------------------

async def test_start_with_redis_down_then_ready(tmp_path: Path, config_path: Path,
                                                http: aiohttp.ClientSession,
                                                stopped_after: list[ServeProcess]) -> None:
    redis_server = RedisServer(tmp_path / "redis")
    service = ServeProcess(redis_server.url, tmp_path / "service.log", config_path=config_path)
    stopped_after.append(service)
    api = Api(http, service.base_url)
    new_session = {"user_id": "u-late", "device": {"id": "dev-1"}}
    try:
        service.start()
        await service.wait_healthy()
        readyz_down = await api.request("GET", "/readyz")
        create_down = await api.manage("POST", "/v1/sessions", json=new_session)
        # Long enough for several retries: 0.1 + 0.2 + 0.4 + 0.8 s.
        await asyncio.sleep(2.0)

        await asyncio.to_thread(redis_server.start)
        ready_after_s = await wait_for_status(http, service.base_url + "/readyz", 200)
        create_up, _, _ = await api.manage("POST", "/v1/sessions", json=new_session)
        exit_code = await asyncio.to_thread(service.terminate, SHUTDOWN_TIMEOUT_S)
    finally:
        await asyncio.to_thread(redis_server.stop)

    records = service.records()
    retries = [record["retry_in_s"] for record in messages(records, "redis not ready")]
    assert readyz_down[0] == 503
    assert readyz_down[2]["Content-Type"].startswith("application/problem+json")
    assert readyz_down[1]["code"] == "store_unavailable"
    assert (create_down[0], create_down[1]["code"]) == (503, "store_unavailable")
    assert len(retries) >= 4
    assert retries[:4] == [0.1, 0.2, 0.4, 0.8]
    assert all(delay <= 5.0 for delay in retries)
    # The next attempt after Redis starts comes at most one capped delay later.
    assert ready_after_s < 5.0 + 2.0
    assert len(messages(records, "redis ready")) == 1
    assert create_up == 201
    assert exit_code == 0


async def test_readiness_backoff_capped() -> None:
    class DownClient:
        async def ping(self) -> bool:
            raise ConnectionRefusedError(111, "Connection refused")

    class DownStore:
        client = DownClient()
        timeout_s = 0.5

    delays: list[float] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            delays.append(record.__dict__["retry_in_s"])

    handler = Collect(level=logging.WARNING)
    logger = logging.getLogger("session_store.redis")
    logger.addHandler(handler)
    readiness = Readiness(DownStore(), first_delay_s=0.01, max_delay_s=0.04)
    try:
        await readiness.start()
        deadline = time.monotonic() + 5
        while len(delays) < 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await readiness.stop()
    finally:
        logger.removeHandler(handler)

    assert delays[:6] == [0.01, 0.02, 0.04, 0.04, 0.04, 0.04]
    assert readiness.ready is False


class RedisLogLines(logging.Handler):
    """The lines session_store.redis logs while attached."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))


async def set_hash_value_limit(redis: Any, backend: Backend, limit: int) -> None:
    """Set hash-max-ziplist-value (hash-max-listpack-value's older name) on every node."""
    if backend.cluster:
        await redis.config_set("hash-max-ziplist-value", limit, target_nodes=redis.ALL_NODES)
    else:
        await redis.config_set("hash-max-ziplist-value", limit)


async def hash_encoding_warnings(make_service: ServiceFactory, redis: Any, backend: Backend,
                                 limit: int) -> list[str]:
    """Start a service against Redis set to limit; return its warnings about hash encoding."""
    handler = RedisLogLines()
    logger = logging.getLogger("session_store.redis")
    logger.addHandler(handler)
    await set_hash_value_limit(redis, backend, limit)
    try:
        await make_service()
    finally:
        await set_hash_value_limit(redis, backend, 1024)
        logger.removeHandler(handler)
    return [line for level, line in handler.lines if level == logging.WARNING and "hash-max" in line]


async def test_readiness_warns_on_default_hash_encoding(make_service: ServiceFactory, redis: Any,
                                                       backend: Backend) -> None:
    warnings = await hash_encoding_warnings(make_service, redis, backend, 64)

    assert warnings == ["redis has hash-max-listpack-value 64: per-user hashes become hashtables and "
                        "sessions cost about 19 % more memory; set it to 1024"]


async def test_readiness_quiet_with_recommended_hash_encoding(make_service: ServiceFactory, redis: Any,
                                                              backend: Backend) -> None:
    warnings = await hash_encoding_warnings(make_service, redis, backend, 1024)

    assert warnings == []


async def test_cluster_unreachable_answers_503() -> None:
    settings = build_settings(copy.deepcopy(TEST_CONFIG), {})
    app = create_app(settings, f"redis://127.0.0.1:{free_port()}/0", cluster=True)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, f"http://127.0.0.1:{port}")
            readyz = await api.request("GET", "/readyz")
            create = await api.manage("POST", "/v1/sessions", json={"user_id": "u-1", "device": {"id": "d"}})
            listed = await api.manage("GET", "/v1/users/u-1/sessions")
    finally:
        await runner.cleanup()

    for status, body, _ in (readyz, create, listed):
        assert (status, body["code"]) == (503, "store_unavailable")


# -- SIGTERM -----------------------------------------------------------------------

async def test_sigterm_drains_in_flight_request(single_redis: RedisServer, tmp_path: Path,
                                                config_path: Path, http: aiohttp.ClientSession,
                                                stopped_after: list[ServeProcess]) -> None:
    ensure_redis_running(single_redis)
    raw = aioredis.Redis.from_url(single_redis.url)
    await raw.flushall()
    service = ServeProcess(single_redis.url, tmp_path / "service.log", config_path=config_path)
    stopped_after.append(service)
    service.start()
    await service.wait_healthy()
    api = Api(http, service.base_url)
    created = await api.create("u-drain", "dev-1")

    try:
        # The validation waits on the paused Redis while SIGTERM arrives.
        await raw.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
        in_flight = asyncio.ensure_future(api.validate(created["token"], params={"extend": "false"}))
        await asyncio.sleep(0.3)
        assert service.process is not None
        service.process.terminate()
        await asyncio.sleep(0.2)
        with pytest.raises(aiohttp.ClientConnectionError):
            await api.request("GET", "/healthz")
        status, body, _ = await in_flight
        exit_code = await asyncio.to_thread(service.process.wait, SHUTDOWN_TIMEOUT_S)
    finally:
        await raw.aclose()

    assert status == 200
    assert body["session_id"] == created["session_id"]
    assert exit_code == 0
    assert messages(service.records(), "stopped") != []


# -- start-up log and configuration --------------------------------------------

@pytest.fixture
def password_redis(tmp_path: Path) -> Any:
    """A redis-server on 127.0.0.1 that requires a password; yields (url with password, password)."""
    password = "pw-" + secrets.token_urlsafe(16)
    port = free_port()
    process = subprocess.Popen(
        [find_redis_server(), "--bind", "127.0.0.1", "--port", str(port), "--requirepass", password,
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "redis-server with a password did not start"
            time.sleep(0.05)
    yield f"redis://:{password}@127.0.0.1:{port}/0", password
    process.terminate()
    process.wait(timeout=10)


async def test_startup_log_redacts_redis_password(password_redis: tuple[str, str], tmp_path: Path,
                                                  http: aiohttp.ClientSession,
                                                  stopped_after: list[ServeProcess]) -> None:
    url, password = password_redis
    service = ServeProcess(url, tmp_path / "service.log")
    stopped_after.append(service)
    service.start()
    await service.wait_healthy()
    ready_after_s = await wait_for_status(http, service.base_url + "/readyz", 200)
    exit_code = await asyncio.to_thread(service.terminate, SHUTDOWN_TIMEOUT_S)

    log_text = service.log_path.read_text(encoding="utf-8")
    (starting,) = messages(service.records(), "session-store")
    assert password not in log_text
    assert starting["version"] == __version__
    assert starting["workers"] == 1
    assert starting["redis_kind"] == "single"
    assert starting["redis"] == url.replace(password, "***")
    assert ready_after_s < WAIT_S
    assert exit_code == 0


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://:s3cret@10.0.0.5:6379/0", "redis://:***@10.0.0.5:6379/0"),
    ("rediss://app:s3cret@cache.internal:6380", "rediss://app:***@cache.internal:6380"),
    ("redis://app:p@ss:word@host:1/2", "redis://app:***@host:1/2"),
    ("unix://:s3cret@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
    ("redis://host/0?password=s3cret&db=2", "redis://host/0?password=***&db=2"),
])
def test_redact_url_hides_password(url: str, expected: str) -> None:
    assert redact_url(url) == expected


BAD_CONFIGS = {
    "policy rule": ('[policies.kiosk]\nexpires_in = "1h"\nmax_sessions = -1\n', "policies.kiosk"),
    "unknown section": ("[servcie]\nlog_level = \"info\"\n", "servcie"),
    "bad toml": ("[service\n", "not valid TOML"),
}


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_never_listens(case: str, workers: str, tmp_path: Path) -> None:
    text, expected = BAD_CONFIGS[case]
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    port = free_port()

    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--config", str(path), "--host", "127.0.0.1",
         "--port", str(port), "--workers", workers, "--redis-url", "redis://127.0.0.1:1/0"],
        capture_output=True, text=True, timeout=START_TIMEOUT_S, cwd=REPO_ROOT,
    )

    assert result.returncode == 2
    assert expected in result.stderr
    assert "listening" not in result.stderr
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


def test_missing_config_file_never_listens(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--config", str(tmp_path / "absent.toml"),
         "--port", str(free_port()), "--redis-url", "redis://127.0.0.1:1/0"],
        capture_output=True, text=True, timeout=START_TIMEOUT_S, cwd=REPO_ROOT,
    )

    assert result.returncode == 2
    assert "absent.toml" in result.stderr

