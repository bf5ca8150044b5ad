"""Cluster operations under load: live resharding and replica failover."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections import Counter
from typing import Any

import pytest

from tests.conftest import Backend, ServiceFactory
from tests.redis_cluster import RedisCluster, redis_cli_path

# Users and sessions of the bounded load; each round validates every
# session once and signs one user in again on a new device.
USERS = 40
LOAD_SECONDS = 6.0


def cluster_nodes(cluster: RedisCluster) -> list[dict[str, Any]]:
    """Parse CLUSTER NODES into id, address, role and slot count per node."""
    nodes = []
    for line in cluster.cli(cluster.ports[0], "CLUSTER", "NODES").splitlines():
        fields = line.split()
        slots = 0
        for part in fields[8:]:
            if re.fullmatch(r"\d+-\d+", part):
                first, last = map(int, part.split("-"))
                slots += last - first + 1
            elif part.isdigit():
                slots += 1
        role = "master" if "master" in fields[2] else "replica"
        nodes.append({"id": fields[0], "port": int(fields[1].split(":")[1].split("@")[0]),
                      "role": role, "master_id": fields[3], "slots": slots})
    return nodes


@pytest.fixture
def cluster(backend: Backend) -> RedisCluster:
    if backend.nodes is None:
        pytest.skip("needs the local Redis Cluster")
    return backend.nodes


async def run_load(api: Any, tokens: dict[str, str], stop: asyncio.Event) -> Counter[str]:
    """Validate every session and create new ones until stop; count outcomes."""
    outcomes: Counter[str] = Counter()
    round_number = 0
    while not stop.is_set() and round_number < 200:
        round_number += 1
        results = await asyncio.gather(*(api.validate(token) for token in tokens.values()))
        for status, body, _ in results:
            outcomes["validate 200" if status == 200 else f"validate {status} {body}"] += 1
        user_id = f"u-load-{round_number % USERS}"
        status, body, _ = await api.manage("POST", "/v1/sessions", json={
            "user_id": user_id, "device": {"id": f"dev-extra-{round_number}"}})
        outcomes["create 201" if status == 201 else f"create {status} {body}"] += 1
    return outcomes


def failures(outcomes: Counter[str]) -> dict[str, int]:
    return {name: count for name, count in outcomes.items()
            if name not in ("validate 200", "create 201")}


async def seed(api: Any) -> dict[str, str]:
    created = await asyncio.gather(*(api.create(f"u-load-{n}", "dev-1") for n in range(USERS)))
    return {session["session_id"]: session["token"] for session in created}


@pytest.mark.slow
async def test_reshard_under_load_no_failed_requests(make_service: ServiceFactory,
                                                      cluster: RedisCluster) -> None:
    api = await make_service()
    tokens = await seed(api)
    masters = [node for node in cluster_nodes(cluster) if node["role"] == "master"]
    source, target = masters[0], masters[1]
    stop = asyncio.Event()

    load = asyncio.create_task(run_load(api, tokens, stop))
    reshard = await asyncio.to_thread(
        subprocess.run,
        [redis_cli_path(), "--cluster", "reshard", f"127.0.0.1:{cluster.ports[0]}",
         "--cluster-from", source["id"], "--cluster-to", target["id"],
         "--cluster-slots", "1000", "--cluster-yes"],
        capture_output=True, text=True, timeout=120,
    )
    stop.set()
    outcomes = await load

    moved = {node["id"]: node["slots"] for node in cluster_nodes(cluster)}
    assert reshard.returncode == 0, reshard.stderr[-500:]
    assert moved[target["id"]] == target["slots"] + 1000
    assert outcomes["validate 200"] > 0
    assert failures(outcomes) == {}


@pytest.mark.slow
async def test_failover_under_load_never_401(make_service: ServiceFactory,
                                             cluster: RedisCluster) -> None:
    api = await make_service()
    tokens = await seed(api)
    nodes = cluster_nodes(cluster)
    replica = next(node for node in nodes if node["role"] == "replica")
    stop = asyncio.Event()

    load = asyncio.create_task(run_load(api, tokens, stop))
    await asyncio.sleep(0.5)
    # A manual failover waits for the replica to catch up, so no
    # acknowledged write is lost.
    answer = await asyncio.to_thread(cluster.cli, replica["port"], "CLUSTER", "FAILOVER")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        promoted = {node["id"]: node["role"] for node in cluster_nodes(cluster)}
        if promoted[replica["id"]] == "master":
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    stop.set()
    outcomes = await load

    unexpected = {name: count for name, count in failures(outcomes).items()
                  if not name.startswith(("validate 503", "create 503"))}
    assert answer.strip() == "OK"
    assert promoted[replica["id"]] == "master"
    # Only 503 is allowed during the switch: a live session never gets 401.
    assert unexpected == {}
    for token in tokens.values():
        status, _, _ = await api.validate(token)
        assert status == 200
