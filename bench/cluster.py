"""A local 3-master Redis Cluster for benchmarks, built on tests/redis_cluster.py.

The test cluster writes an AOF with an fsync per write, which would make
a benchmark measure the disk. This one turns persistence off and starts
each node in its own session, so a Ctrl-C reaches only the benchmark
script, which stops the nodes by PID.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bench.harness import DEFAULT_REDIS_SERVER, Children
from service.embedded import REDIS_SERVER_ENV, find_redis_server
from service.keys import HASH_MAX_LISTPACK_VALUE
from tests.redis_cluster import RedisCluster


class BenchCluster(RedisCluster):
    def start_node(self, port: int) -> None:
        folder = self.data_dir / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [find_redis_server(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", "2000", "--appendonly", "no", "--save", "", "--logfile", "redis.log",
             "--hash-max-listpack-value", str(HASH_MAX_LISTPACK_VALUE)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait_for_pong(port)


def start_cluster(children: Children, folder: Path, binary: str = DEFAULT_REDIS_SERVER) -> str:
    """Start 3 masters with one replica each; return the URL of one node. Stopped with children."""
    # find_redis_server() reads the binary from the environment.
    os.environ[REDIS_SERVER_ENV] = binary
    cluster = BenchCluster(folder / "redis-cluster")
    children.add_cleanup(cluster.stop)
    cluster.start()
    return cluster.url
