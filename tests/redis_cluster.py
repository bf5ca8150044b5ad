"""A real local Redis Cluster for tests: three masters, one replica each, on loopback."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from pathlib import Path

from service.embedded import find_redis_server
from service.keys import HASH_MAX_LISTPACK_VALUE

MASTERS = 3


def cluster_port() -> int:
    """Return a free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = random.randint(20000, 45000)
        if all(_is_free(candidate) for candidate in (port, port + 10000)):
            return port


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def redis_cli_path() -> str:
    """Return the redis-cli that ships beside the redis-server in use."""
    return str(Path(find_redis_server()).with_name("redis-cli"))


class RedisCluster:
    """Six redis-server processes joined with ``redis-cli --cluster create``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ports = [cluster_port() for _ in range(MASTERS * 2)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            [redis_cli_path(), "--cluster", "create", *addresses, "--cluster-replicas", "1",
             "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        self.wait_until_ok()

    def start_node(self, port: int) -> None:
        folder = self.data_dir / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [find_redis_server(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", "2000", "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--logfile", "redis.log",
             "--hash-max-ziplist-value", str(HASH_MAX_LISTPACK_VALUE)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._wait_for_pong(port)

    def cli(self, port: int, *args: str) -> str:
        result = subprocess.run([redis_cli_path(), "-h", "127.0.0.1", "-p", str(port), *args],
                                capture_output=True, text=True, timeout=30)
        return result.stdout

    def _wait_for_pong(self, port: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.cli(port, "PING").strip() == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError(f"cluster node on port {port} did not start")

    def wait_until_ok(self, timeout_s: float = 30) -> None:
        """Wait until every node reports cluster_state:ok and all slots are assigned."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            infos = [self.cli(port, "CLUSTER", "INFO") for port in self.processes]
            if all("cluster_state:ok" in info and "cluster_slots_ok:16384" in info for info in infos):
                return
            time.sleep(0.2)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
