"""The service as a child process (`python -m service serve`), for tests that need a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from service.config import API_KEYS_ENV, REDIS_URL_ENV
from service.embedded import free_port
from tests.redis_server import RedisServer

REPO_ROOT = Path(__file__).resolve().parent.parent
# A child whose /healthz does not return 200 by then has failed to start.
START_TIMEOUT_S = 20.0


class ServiceProcess:
    """One `serve` child on a 127.0.0.1 port, with stdout and stderr appended to log_path.

    The port stays the same across start() calls, so a second start() is a restart.
    """

    def __init__(self, redis_url: str, log_path: Path, *, config_path: Path | None = None,
                 api_keys: str | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.redis_url = redis_url
        self.extra_args = extra_args
        self.log_path = log_path
        self.config_path = config_path
        self.api_keys = api_keys
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        # A process still running from an earlier start would be orphaned.
        if self.process is not None and self.process.poll() is None:
            self.kill()
        args = [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--redis-url", self.redis_url]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        args += self.extra_args
        environ = {name: value for name, value in os.environ.items()
                   if name not in (API_KEYS_ENV, REDIS_URL_ENV)}
        if self.api_keys is not None:
            environ[API_KEYS_ENV] = self.api_keys
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(args, cwd=REPO_ROOT, env=environ, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log)

    async def wait_healthy(self) -> None:
        """Poll /healthz until it returns 200.

        Raise RuntimeError if the child exits or START_TIMEOUT_S passes first.
        """
        deadline = time.monotonic() + START_TIMEOUT_S
        timeout = aiohttp.ClientTimeout(total=1)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"service exited with code {self.process.returncode}, see "
                                       f"{self.log_path}")
                try:
                    async with http.get(self.base_url + "/healthz") as response:
                        if response.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"service /healthz did not return 200 within {START_TIMEOUT_S}s, see "
                           f"{self.log_path}")

    def terminate(self, timeout_s: float) -> int | None:
        """Send SIGTERM and return the exit code, or None if the child is still running after timeout_s."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """Kill the child if it is still running (cleanup after a failed test)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def ensure_redis_running(redis_server: RedisServer) -> None:
    """Start the shared redis-server unless it is running, because a second start would orphan a process."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
