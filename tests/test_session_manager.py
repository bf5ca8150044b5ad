"""SessionManager against the real service: extension on activity, expiry, revocation, outages."""

from __future__ import annotations

import asyncio
import copy
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.client import CreatedSession, SessionStoreClient, TokenRejected
from service.session_manager import EndReason, SessionManager
from tests.conftest import API_KEY, TEST_CONFIG, Api, ServiceFactory
from tests.redis_server import RedisServer
from tests.service_process import ensure_redis_running

MANAGER_CONFIG = copy.deepcopy(TEST_CONFIG)
# Heartbeats re-check the session, so a 5 s heartbeat leaves expiry to the
# manager's own status checks in windows of 3 s. A stream whose client left
# ends at the next heartbeat, which the service waits for at shutdown.
MANAGER_CONFIG["service"]["sse_heartbeat"] = 5
MANAGER_CONFIG["policies"].update({
    "month": {"expires_in": "30d", "max_lifetime": "90d"},
    "year": {"expires_in": "365d", "max_expires_in": "365d", "max_lifetime": "730d"},
})
WINDOW_S = 3
THRESHOLD_S = 1.5
TOUCH_INTERVAL_S = 0.25
# A revocation elsewhere must reach on_session_expired within this.
REVOKE_LATENCY_S = 1.0
OUTAGE_S = 10.0
SAMPLE = re.compile(r"^session_store_http_requests_total\{(.*)\} ([0-9.e+]+)$", re.MULTILINE)
LABEL = re.compile(r'(\w+)="([^"]*)"')


class Recorder:
    """Records the callbacks of one manager, with the monotonic time of each."""

    def __init__(self) -> None:
        self.extended: list[tuple[float, datetime]] = []
        self.expired: list[tuple[float, str]] = []
        self.ended = asyncio.Event()

    def on_extended(self, expires_at: datetime) -> None:
        self.extended.append((time.monotonic(), expires_at))

    async def on_expired(self, reason: EndReason) -> None:
        self.expired.append((time.monotonic(), reason))
        self.ended.set()

    def reasons(self) -> list[str]:
        return [reason for _, reason in self.expired]

    async def wait_ended(self, timeout_s: float) -> None:
        await asyncio.wait_for(self.ended.wait(), timeout_s)


@pytest.fixture
async def service(make_service: ServiceFactory) -> Api:
    return await make_service(MANAGER_CONFIG)


@pytest.fixture
async def admin(service: Api) -> AsyncIterator[SessionStoreClient]:
    async with SessionStoreClient(service.base_url, api_key=API_KEY) as client:
        yield client


async def start_managed(service: Api, created: CreatedSession, recorder: Recorder,
                        **options: Any) -> tuple[SessionStoreClient, SessionManager]:
    """Open a device client and a started manager. The caller closes both."""
    client = SessionStoreClient(service.base_url, token=created.token)
    manager = SessionManager(client, on_session_extended=recorder.on_extended,
                             on_session_expired=recorder.on_expired, **options)
    await manager.__aenter__()
    return client, manager


async def stop_managed(client: SessionStoreClient, manager: SessionManager) -> None:
    await manager.close()
    await client.close()


async def touch_for(manager: SessionManager, duration_s: float) -> None:
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        manager.touch()
        await asyncio.sleep(TOUCH_INTERVAL_S)


async def request_count(service: Api, method: str, route: str) -> int:
    """Return how many requests the service counted for a route, from /metrics."""
    async with service.http.get(service.url("/metrics")) as response:
        text = await response.text()
    total = 0.0
    for labels, value in SAMPLE.findall(text):
        found = dict(LABEL.findall(labels))
        if found.get("route") == route and found.get("method") == method:
            total += float(value)
    return int(total)


async def manager_requests(service: Api) -> int:
    """Return how many status checks and extensions the service has served."""
    return (await request_count(service, "GET", "/v1/me/session")
            + await request_count(service, "POST", "/v1/me/session/extend"))


async def is_live(service: Api, created: CreatedSession) -> bool:
    status, _, _ = await service.validate(created.token, params={"extend": "false"})
    return status == 200


# -- activity and expiry ---------------------------------------------------------------

@pytest.mark.slow
async def test_manager_keeps_touched_session_alive(service: Api, admin: SessionStoreClient) -> None:
    created = await admin.create_session("u-mgr", "dev-1", policy="short", expires_in=WINDOW_S)
    recorder = Recorder()
    client, manager = await start_managed(service, created, recorder, extend_threshold=THRESHOLD_S)
    try:
        await touch_for(manager, 10.0)
        live_after_touching = await is_live(service, created)
        expired_while_touched = list(recorder.expired)
        idle_from = time.monotonic()
        await recorder.wait_ended(WINDOW_S + 3)
        requests_at_end = await manager_requests(service)
        await asyncio.sleep(1.5)
        requests_after_end = await manager_requests(service) - requests_at_end
    finally:
        await stop_managed(client, manager)

    gaps_s = [later - earlier for (earlier, _), (later, _) in zip(recorder.extended, recorder.extended[1:],
                                                                  strict=False)]
    assert expired_while_touched == []
    assert live_after_touching
    assert len(recorder.extended) >= 5
    assert min(gaps_s) >= THRESHOLD_S / 2 - 0.05
    assert all(at.tzinfo is not None and at.utcoffset() == timedelta(0) for _, at in recorder.extended)
    assert recorder.reasons() == ["expired"]
    assert requests_after_end == 0
    # The last extension came at most one threshold before idling began.
    assert recorder.expired[0][0] - idle_from <= WINDOW_S + THRESHOLD_S
    assert not await is_live(service, created)


@pytest.mark.slow
async def test_manager_client_calls_are_activity(service: Api, admin: SessionStoreClient) -> None:
    created = await admin.create_session("u-mgr", "dev-1", policy="short", expires_in=WINDOW_S)
    recorder = Recorder()
    client, manager = await start_managed(service, created, recorder, extend_threshold=THRESHOLD_S)
    try:
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline:
            await client.get_my_sessions()
            await asyncio.sleep(TOUCH_INTERVAL_S)
        live = await is_live(service, created)
    finally:
        await stop_managed(client, manager)

    assert live
    assert recorder.expired == []
    assert len(recorder.extended) >= 2


@pytest.mark.slow
async def test_manager_status_calls_are_not_activity(service: Api, admin: SessionStoreClient) -> None:
    created = await admin.create_session("u-mgr", "dev-1", policy="short", expires_in=WINDOW_S)
    recorder = Recorder()
    client, manager = await start_managed(service, created, recorder, extend_threshold=THRESHOLD_S)
    try:
        deadline = time.monotonic() + WINDOW_S + 3
        while not recorder.ended.is_set() and time.monotonic() < deadline:
            try:
                await client.validate(extend=False)
                await client.get_session_status()
            except TokenRejected:
                break
            await asyncio.sleep(TOUCH_INTERVAL_S)
        await recorder.wait_ended(2)
    finally:
        await stop_managed(client, manager)

    assert recorder.extended == []
    assert recorder.reasons() == ["expired"]


@pytest.mark.slow
async def test_manager_without_auto_extend(service: Api, admin: SessionStoreClient) -> None:
    created = await admin.create_session("u-mgr", "dev-1", policy="short", expires_in=WINDOW_S)
    recorder = Recorder()
    client, manager = await start_managed(service, created, recorder, extend_threshold=THRESHOLD_S,
                                          auto_extend=False)
    try:
        touching = asyncio.ensure_future(touch_for(manager, WINDOW_S + 3))
        await recorder.wait_ended(WINDOW_S + 3)
        touching.cancel()
    finally:
        await stop_managed(client, manager)

    assert recorder.extended == []
    assert recorder.reasons() == ["expired"]


@pytest.mark.slow
async def test_manager_max_lifetime(service: Api, admin: SessionStoreClient) -> None:
    created = await admin.create_session("u-mgr", "dev-1", policy="capped")
    recorder = Recorder()
    client, manager = await start_managed(service, created, recorder, extend_threshold=THRESHOLD_S)
    try:
        touching = asyncio.ensure_future(touch_for(manager, 12))
        await recorder.wait_ended(10)
        touching.cancel()
        await asyncio.sleep(1.0)
    finally:
        await stop_managed(client, manager)

    assert recorder.reasons() == ["max_lifetime"]
    assert recorder.extended
    assert recorder.extended[-1][1] == created.max_expires_at
    assert manager.end_reason == "max_lifetime"


# -- revocation ------------------------------------------------------------------------

async def test_manager_revoke_within_1s(service: Api, admin: SessionStoreClient) -> None:
    created = await admin.create_session("u-mgr", "dev-1", expires_in="1h")
    recorder = Recorder()
    client, manager = await start_managed(service, created, recorder)
    try:
        # Let the manager read the status and open its event stream.
        await asyncio.sleep(0.5)
        revoked_at = time.monotonic()
        await admin.revoke_session(created.session_id)
        await recorder.wait_ended(5)
        await asyncio.sleep(0.5)
    finally:
        await stop_managed(client, manager)

    assert recorder.reasons() == ["revoked"]
    assert recorder.expired[0][0] - revoked_at <= REVOKE_LATENCY_S
    assert await manager.wait_ended() == "revoked"


@pytest.mark.parametrize("ending", ["revoked", "replaced", "signed_out"])
async def test_manager_started_on_ended_session(service: Api, admin: SessionStoreClient,
                                                ending: str) -> None:
    created = await admin.create_session("u-mgr", "dev-1", expires_in="1h")
    if ending == "revoked":
        await admin.revoke_session(created.session_id)
    elif ending == "replaced":
        await admin.create_session("u-mgr", "dev-1", expires_in="1h")
    else:
        async with SessionStoreClient(service.base_url, token=created.token) as device:
            await device.sign_out()
    reasons: list[str] = []

    async with SessionStoreClient(service.base_url, token=created.token) as client:
        started_at = time.monotonic()
        async with SessionManager(client, on_session_expired=reasons.append) as manager:
            reason = await asyncio.wait_for(manager.wait_ended(), 5)
            ended_after_s = time.monotonic() - started_at
            await asyncio.sleep(0.5)

    assert reason == "revoked"
    assert reasons == ["revoked"]
    assert ended_after_s < REVOKE_LATENCY_S


@pytest.mark.slow
async def test_manager_started_on_expired_session(service: Api, admin: SessionStoreClient) -> None:
    created = await admin.create_session("u-mgr", "dev-1", policy="short", expires_in=1)
    await asyncio.sleep(1.5)
    reasons: list[str] = []

    async with SessionStoreClient(service.base_url, token=created.token) as client:
        async with SessionManager(client, on_session_expired=reasons.append) as manager:
            reason = await asyncio.wait_for(manager.wait_ended(), REVOKE_LATENCY_S)

    assert reason == "expired"
    assert reasons == ["expired"]


# -- outages and long sessions ---------------------------------------------------------

@pytest.mark.slow
async def test_manager_survives_redis_outage(service: Api, admin: SessionStoreClient,
                                             redis_server: RedisServer) -> None:
    # With a 30 s window and a 20 s threshold, the first extension falls due inside the outage.
    created = await admin.create_session("u-mgr", "dev-1", policy="short", expires_in=30)
    recorder = Recorder()
    client, manager = await start_managed(service, created, recorder, extend_threshold=20)
    touching = asyncio.ensure_future(touch_for(manager, 60))
    try:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(redis_server.stop)
        try:
            await asyncio.sleep(OUTAGE_S)
        finally:
            # Redis may accept the manager's retry before the restart call returns,
            # so the outage counts as over from the moment the restart begins.
            restarting_at = time.monotonic()
            await asyncio.to_thread(ensure_redis_running, redis_server)
        while not recorder.extended and time.monotonic() - restarting_at < 15:
            await asyncio.sleep(0.1)
        live = await is_live(service, created)
    finally:
        touching.cancel()
        await stop_managed(client, manager)

    assert recorder.expired == []
    assert len(recorder.extended) == 1
    assert recorder.extended[0][0] >= restarting_at
    assert recorder.extended[0][1] > created.expires_at
    assert live


@pytest.mark.parametrize("policy", ["month", "year"])
async def test_manager_long_session_no_loop(service: Api, admin: SessionStoreClient, policy: str) -> None:
    created = await admin.create_session("u-mgr", "dev-1", policy=policy)
    recorder = Recorder()
    extends_before = await request_count(service, "POST", "/v1/me/session/extend")
    checks_before = await request_count(service, "GET", "/v1/me/session")
    client, manager = await start_managed(service, created, recorder, extend_threshold=300)
    try:
        cpu_before_s = time.process_time()
        await touch_for(manager, 3.0)
        cpu_used_s = time.process_time() - cpu_before_s
        next_step_at = manager.next_step_at
    finally:
        await stop_managed(client, manager)
    extends = await request_count(service, "POST", "/v1/me/session/extend") - extends_before
    checks = await request_count(service, "GET", "/v1/me/session") - checks_before

    assert extends == 0
    assert checks == 1
    assert recorder.extended == []
    assert recorder.expired == []
    # The one scheduled step is the extension, extend_threshold before expiry.
    assert next_step_at is not None
    assert abs(next_step_at - (created.expires_at - timedelta(seconds=300))) < timedelta(seconds=2)
    # The manager handles 12 touches and sleeps once, while a busy loop would use all 3 s of CPU.
    assert cpu_used_s < 0.5


@pytest.mark.slow
async def test_manager_after_stall_checks_once(service: Api, admin: SessionStoreClient) -> None:
    created = await admin.create_session("u-mgr", "dev-1", policy="short", expires_in=WINDOW_S)
    recorder = Recorder()
    client, manager = await start_managed(service, created, recorder, extend_threshold=THRESHOLD_S)
    try:
        await touch_for(manager, 2.0)
        requests_before = await manager_requests(service)
        # The whole process stalls past the deadline, as after a suspend,
        # while the wall clock and Redis move on.
        time.sleep(WINDOW_S + 2)
        await recorder.wait_ended(3)
        await asyncio.sleep(1.0)
    finally:
        await stop_managed(client, manager)
    requests = await manager_requests(service) - requests_before

    assert recorder.reasons() == ["expired"]
    assert requests <= 2
    assert datetime.now(UTC) > created.expires_at
