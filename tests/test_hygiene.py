"""Index and key hygiene: expired sessions leave nothing behind, on both backends."""

from __future__ import annotations

import asyncio
import copy
import random
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.keys import user_keys
from service.tokens import user_tag
from tests.conftest import API_KEY, TEST_CONFIG, Api, Backend, ServiceFactory
from tests.service_process import ServiceProcess

# Windows of 2 s, an absolute life of 4 s and 1 s of grace: everything a
# session writes is gone about 5 s after sign-in without traffic.
SHORT_CONFIG: dict[str, Any] = copy.deepcopy(TEST_CONFIG)
SHORT_CONFIG["service"].update({"expiry_grace": "1s", "event_retention": "5s",
                                "device_retention": "5s"})
SHORT_CONFIG["policies"].update({
    "brief": {"expires_in": 2, "min_expires_in": 1, "max_lifetime": 4, "max_sessions": 60},
    "single": {"expires_in": 2, "min_expires_in": 1, "max_lifetime": 4, "max_sessions": 1,
               "on_limit": "reject"},
})
# Permanent by design: the global event stream, capped in length.
PERMANENT = {b"ss:events"}


def is_rate_window(key: bytes) -> bool:
    """Per-user sign-in counters live for their one-minute rate window, by design."""
    return key.endswith(b"}:c")


async def leftover_keys(redis: Any) -> list[bytes]:
    """Keys still present besides the global stream and the rate windows (checked for TTL)."""
    left = []
    for key in await all_keys(redis):
        if key in PERMANENT:
            continue
        if is_rate_window(key):
            assert 0 < await redis.pttl(key) <= 60_000
            continue
        left.append(key)
    return left


async def all_keys(redis: Any) -> list[bytes]:
    return [key async for key in redis.scan_iter(match="ss:*", count=1000)]


async def keys_without_ttl(redis: Any) -> list[bytes]:
    return [key for key in await all_keys(redis) if await redis.pttl(key) == -1 and key not in PERMANENT]


@pytest.mark.slow
async def test_index_shrinks_after_expiry_and_restart(make_service: ServiceFactory, redis: Any) -> None:
    api = await make_service(SHORT_CONFIG)
    users = [f"u-hyg-{n}" for n in range(10)]
    created = await asyncio.gather(*(api.create(user, f"dev-{d}", policy="brief")
                                     for user in users for d in range(5)))
    revoked = [s["session_id"] for s in created[:10]]
    statuses = [(await api.manage("DELETE", f"/v1/sessions/{sid}"))[0] for sid in revoked]

    # The service restarts while the rest expire with no traffic.
    restarted = await make_service(SHORT_CONFIG)
    await asyncio.sleep(5.5)

    listed = [(await restarted.manage("GET", f"/v1/users/{user}/sessions"))[1] for user in users]
    newcomer = await restarted.create(users[0], "dev-new", policy="single")
    index = user_keys("ss:", user_tag(users[0])).index

    assert statuses == [204] * 10
    assert [body["sessions"] for body in listed] == [[]] * len(users)
    assert newcomer["policy"] == "single"
    assert await redis.zcard(index) == 1
    assert await redis.pttl(index) > 0


@pytest.mark.slow
async def test_expired_load_leaves_no_keys(make_service: ServiceFactory, redis: Any) -> None:
    api = await make_service(SHORT_CONFIG)
    users = [f"u-gone-{n}" for n in range(12)]
    sessions = await asyncio.gather(*(api.create(user, f"dev-{d}", policy="brief")
                                      for user in users for d in range(3)))
    await asyncio.gather(*(api.validate(s["token"]) for s in sessions))

    await asyncio.sleep(4.0 + 1.0 + 1.5)

    assert await keys_without_ttl(redis) == []
    assert await leftover_keys(redis) == []


async def mixed_load(api: Api, rounds: int, warmed_up: asyncio.Event | None = None) -> None:
    """Creates, validations, extensions, revocations and evictions, bounded by rounds.

    Sets warmed_up after a tenth of the rounds, so a caller can act mid-load
    however fast the machine is.
    """
    rng = random.Random(7)
    tokens: list[str] = []
    for round_number in range(rounds):
        if warmed_up is not None and round_number == rounds // 10:
            warmed_up.set()
        user = f"u-mix-{round_number % 6}"
        status, body, _ = await api.manage("POST", "/v1/sessions", json={
            "user_id": user, "device": {"id": f"dev-{rng.randrange(8)}"}, "policy": "brief",
            "max_sessions": 3})
        if status == 201:
            tokens.append(body["token"])
        if tokens:
            token = rng.choice(tokens)
            await api.validate(token)
            await api.request("POST", "/v1/me/session/extend", token=token)
            if rng.random() < 0.2:
                await api.request("DELETE", "/v1/me/session", token=token)


@pytest.mark.slow
async def test_mixed_load_with_killed_process_leaves_no_keys(
        backend: Backend, redis: Any, tmp_path: Path) -> None:
    config_path = tmp_path / "config.toml"
    config_path.write_text(
        '[service]\nexpiry_grace = "1s"\nevent_retention = "5s"\ndevice_retention = "5s"\n'
        '[policies.brief]\nexpires_in = 2\nmin_expires_in = 1\nmax_lifetime = 4\nmax_sessions = 60\n'
    )
    extra = ("--redis-cluster",) if backend.cluster else ()
    service = ServiceProcess(backend.url, tmp_path / "service.log", config_path=config_path,
                             api_keys=API_KEY, extra_args=extra)
    service.start()
    try:
        await service.wait_healthy()
        async with aiohttp.ClientSession() as http:
            api = Api(http, service.base_url)
            warmed_up = asyncio.Event()
            load = asyncio.create_task(mixed_load(api, rounds=3000, warmed_up=warmed_up))
            await asyncio.wait_for(warmed_up.wait(), timeout=60)
            assert service.process is not None
            service.process.send_signal(signal.SIGKILL)
            with pytest.raises(aiohttp.ClientError):
                await load
            service.start()
            await service.wait_healthy()
            await mixed_load(api, rounds=60)
    finally:
        service.kill()

    no_ttl = await keys_without_ttl(redis)
    await asyncio.sleep(4.0 + 1.0 + 1.5)
    leftover = await leftover_keys(redis)

    assert no_ttl == []
    assert leftover == []
