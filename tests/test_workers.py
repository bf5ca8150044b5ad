"""Many processes: the worker supervisor, and a rolling restart behind nginx."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from service.embedded import free_port
from tests.conftest import API_KEY, Api
from tests.gateways import find_binary
from tests.redis_server import RedisServer
from tests.service_process import ServiceProcess

NGINX_CONF = """
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream session_store {{
        server 127.0.0.1:{first} max_fails=0;
        server 127.0.0.1:{second} max_fails=0;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://session_store;
            # An instance that stopped accepting refuses the connection:
            # nginx then tries the other one. GET /v1/validate is idempotent.
            proxy_next_upstream error timeout http_502;
            proxy_connect_timeout 1s;
        }}
    }}
}}
"""


def worker_pids(supervisor: subprocess.Popen[bytes]) -> set[int]:
    """Return the PIDs of the supervisor's live workers (not zombies, not helpers)."""
    pids = set()
    for child in psutil.Process(supervisor.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.Error:
            continue
    return pids


async def wait_for(condition: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.1)
    return False


async def test_supervisor_restarts_crashed_worker(redis_server: RedisServer, redis: Any,
                                                  tmp_path: Path) -> None:
    service = ServiceProcess(redis_server.url, tmp_path / "service.log", api_keys=API_KEY,
                             extra_args=("--workers", "2"))
    service.start()
    assert service.process is not None
    try:
        await service.wait_healthy()
        await wait_for(lambda: len(worker_pids(service.process)) == 2, 20)
        before = worker_pids(service.process)
        victim = min(before)
        psutil.Process(victim).send_signal(signal.SIGKILL)
        replaced = await wait_for(lambda: len(worker_pids(service.process) - before) == 1
                                  and len(worker_pids(service.process)) == 2, 20)

        async with aiohttp.ClientSession() as http:
            api = Api(http, service.base_url)
            created = await api.create("u-workers", "dev-1")
            statuses = [(await api.validate(created["token"]))[0] for _ in range(20)]

        service.process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(service.process.wait, 30)
    finally:
        service.kill()

    assert replaced
    assert victim not in worker_pids_safe(service)
    assert statuses == [200] * 20
    assert exit_code == 0


def worker_pids_safe(service: ServiceProcess) -> set[int]:
    try:
        return worker_pids(service.process) if service.process else set()
    except psutil.NoSuchProcess:
        return set()


@pytest.mark.slow
async def test_rolling_restart_behind_nginx_loses_nothing(redis_server: RedisServer, redis: Any,
                                                          tmp_path: Path) -> None:
    nginx = find_binary("nginx")
    if nginx is None:
        pytest.skip("nginx is not installed")
    instances = [ServiceProcess(redis_server.url, tmp_path / f"service-{n}.log", api_keys=API_KEY)
                 for n in range(2)]
    port = free_port()
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, first=instances[0].port,
                                      second=instances[1].port, port=port))
    gateway = None
    try:
        for instance in instances:
            instance.start()
        for instance in instances:
            await instance.wait_healthy()
        gateway = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        async with aiohttp.ClientSession() as http:
            api = Api(http, f"http://127.0.0.1:{port}")
            await wait_for(lambda: True, 0)
            created = await wait_created(api)
            failures = await restart_under_load(api, created["token"], instances[0])
            revoked_status, _, _ = await Api(http, instances[1].base_url).manage(
                "DELETE", f"/v1/sessions/{created['session_id']}")
            after = await Api(http, instances[0].base_url).validate(created["token"])
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(timeout=10)
        for instance in instances:
            instance.kill()

    assert failures == []
    assert revoked_status == 204
    # A revoke on one instance is refused at once by the other.
    assert after[0] == 401
    assert after[1]["code"] == "session_revoked"


async def wait_created(api: Api) -> dict[str, Any]:
    for _ in range(50):
        try:
            return await api.create("u-rolling", "dev-1")
        except (AssertionError, aiohttp.ClientError):
            await asyncio.sleep(0.1)
    raise RuntimeError("nginx did not start forwarding")


async def restart_under_load(api: Api, token: str, instance: ServiceProcess) -> list[Any]:
    """Validate through nginx with 8 clients while one instance restarts; return failures."""
    failures: list[Any] = []
    stop = asyncio.Event()

    async def client() -> None:
        for _ in range(2000):
            if stop.is_set():
                return
            status, body, _ = await api.validate(token)
            if status != 200:
                failures.append((status, body))

    clients = [asyncio.create_task(client()) for _ in range(8)]
    await asyncio.sleep(0.5)
    assert instance.process is not None
    instance.process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(instance.process.wait, 30)
    instance.start()
    await instance.wait_healthy()
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*clients)
    return failures
