"""The Python client SDK against the real service: typed results, errors, durations, secrets."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import msgspec
import pytest
from aiohttp import web

from service.app import create_app
from service.client import (
    CreatedSession,
    DeviceNotTrusted,
    Event,
    InvalidRequest,
    InvalidToken,
    NetworkError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ReauthRequired,
    SessionExpired,
    SessionLimitReached,
    SessionRevoked,
    SessionStoreClient,
    SessionStoreError,
    StoreUnavailable,
    TokenRejected,
    Unauthorized,
)
from service.config import build_settings
from service.embedded import free_port
from tests.conftest import API_KEY, TEST_CONFIG, Api, Backend, ServiceFactory
from tests.redis_server import RedisServer
from tests.service_process import ensure_redis_running

# Policies on top of the test configuration, for the error classes that need one.
CLIENT_CONFIG = copy.deepcopy(TEST_CONFIG)
# An event stream whose client left ends at the next heartbeat, and the
# service waits for it at shutdown, so keep heartbeats short.
CLIENT_CONFIG["service"]["sse_heartbeat"] = 1
CLIENT_CONFIG["policies"].update({
    "reauth": {"expires_in": "1h", "on_context_change": "reauth"},
    "burst": {"expires_in": "1h", "max_creates_per_minute": 2},
})
# Fields of a session item: those of the contract, and the metadata the service adds.
SESSION_FIELDS = {"session_id", "user_id", "device", "created_at", "last_active_at", "expires_at",
                  "max_expires_at", "expires_in", "extend_on_activity", "policy", "client", "metadata"}
EVENT_TIMEOUT_S = 5.0


@pytest.fixture
async def service(make_service: ServiceFactory) -> Api:
    return await make_service(CLIENT_CONFIG)


@pytest.fixture
async def admin(service: Api) -> AsyncIterator[SessionStoreClient]:
    async with SessionStoreClient(service.base_url, api_key=API_KEY) as client:
        yield client


@contextlib.asynccontextmanager
async def device(service: Api, token: str, **kwargs: Any) -> AsyncIterator[SessionStoreClient]:
    async with SessionStoreClient(service.base_url, token=token, **kwargs) as client:
        yield client


def as_json(value: Any) -> Any:
    """Convert a result to JSON values as the service writes them, with datetimes as RFC 3339 ending in Z."""
    return msgspec.to_builtins(value)


def without(body: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: value for name, value in body.items() if name not in names}


def path_of(user_id: str) -> str:
    return f"/v1/users/{quote(user_id, safe='')}"


async def create_full(admin: SessionStoreClient, user_id: str = "u-sdk",
                      device_id: str = "fp-9c2e") -> CreatedSession:
    """Create a session with every optional field of the contract set."""
    return await admin.create_session(
        user_id, device_id, device_type="iPhone_13_Pro", device_name="Sarah's iPhone",
        policy="standard", expires_in="24h", extend_on_activity=False, max_lifetime="7d",
        max_sessions=5, on_limit="reject", client_ip="203.0.113.7", user_agent="SdkTest/1.0",
        metadata={"plan": "pro", "tags": [1, 2]},
    )


# -- management calls ------------------------------------------------------------

async def test_create_session_fields(service: Api, admin: SessionStoreClient) -> None:
    created = await create_full(admin)

    assert created.user_id == "u-sdk"
    assert as_json(created.device) == {"id": "fp-9c2e", "type": "iPhone_13_Pro", "name": "Sarah's iPhone",
                                       "trusted": False}
    assert created.policy == "standard"
    assert created.expires_in == 86400
    assert created.extend_on_activity is False
    assert created.max_expires_at - created.created_at == timedelta(days=7)
    assert created.expires_at - created.created_at == timedelta(hours=24)
    assert as_json(created.client) == {"ip": "203.0.113.7", "user_agent": "SdkTest/1.0"}
    assert created.metadata == {"plan": "pro", "tags": [1, 2]}
    assert created.replaced == []
    assert created.evicted == []
    assert created.session_id.startswith("sess_")
    assert len(created.token) >= 43


async def test_create_session_matches_get(service: Api, admin: SessionStoreClient) -> None:
    created = await create_full(admin)

    status, raw, _ = await service.manage("GET", f"/v1/sessions/{created.session_id}")

    assert status == 200
    assert without(as_json(created), "token", "replaced", "evicted") == raw


async def test_create_session_replaced_and_evicted(admin: SessionStoreClient) -> None:
    first = await admin.create_session("u-limit", "dev-1", policy="small")
    second = await admin.create_session("u-limit", "dev-2", policy="small")
    await admin.create_session("u-limit", "dev-3", policy="small")

    again = await admin.create_session("u-limit", "dev-2", policy="small")
    fourth = await admin.create_session("u-limit", "dev-4", policy="small")

    assert again.replaced == [second.session_id]
    assert fourth.evicted == [first.session_id]


async def test_created_at_is_aware_utc(admin: SessionStoreClient) -> None:
    created = await create_full(admin)

    for instant in (created.created_at, created.last_active_at, created.expires_at, created.max_expires_at):
        assert instant.tzinfo is not None
        assert instant.utcoffset() == timedelta(0)
    assert abs(created.created_at - datetime.now(UTC)) < timedelta(seconds=5)


async def test_get_session_round_trips(service: Api, admin: SessionStoreClient) -> None:
    created = await create_full(admin)

    session = await admin.get_session(created.session_id)
    status, raw, _ = await service.manage("GET", f"/v1/sessions/{created.session_id}")

    assert status == 200
    assert set(raw) == SESSION_FIELDS
    assert as_json(session) == raw


async def test_get_user_sessions_round_trips(service: Api, admin: SessionStoreClient) -> None:
    await create_full(admin, device_id="dev-1")
    await admin.create_session("u-sdk", "dev-2")

    listed = await admin.get_user_sessions("u-sdk")
    status, raw, _ = await service.manage("GET", "/v1/users/u-sdk/sessions")

    assert status == 200
    assert listed.device_count == 2
    assert as_json(listed) == raw


async def test_odd_user_id_is_encoded(admin: SessionStoreClient) -> None:
    user_id = "{x}: y %20/z"
    created = await admin.create_session(user_id, "a/b")

    listed = await admin.get_user_sessions(user_id)
    devices = await admin.get_user_devices(user_id)

    assert [item.session_id for item in listed.sessions] == [created.session_id]
    assert [item.id for item in devices] == ["a/b"]


async def test_revoke_session(admin: SessionStoreClient) -> None:
    created = await admin.create_session("u-sdk", "dev-1")

    await admin.revoke_session(created.session_id)

    with pytest.raises(NotFound):
        await admin.get_session(created.session_id)
    with pytest.raises(NotFound):
        await admin.revoke_session(created.session_id)


async def test_revoke_user_sessions_count(admin: SessionStoreClient) -> None:
    for device_id in ("dev-1", "dev-2", "dev-3"):
        await admin.create_session("u-sdk", device_id)

    revoked = await admin.revoke_user_sessions("u-sdk")

    assert revoked == 3
    assert (await admin.get_user_sessions("u-sdk")).sessions == []


async def test_revoke_user_sessions_except(admin: SessionStoreClient) -> None:
    kept = await admin.create_session("u-sdk", "dev-1")
    await admin.create_session("u-sdk", "dev-2")

    revoked = await admin.revoke_user_sessions("u-sdk", except_session_id=kept.session_id)

    listed = await admin.get_user_sessions("u-sdk")
    assert revoked == 1
    assert [item.session_id for item in listed.sessions] == [kept.session_id]


async def test_set_device_trust_round_trips(service: Api, admin: SessionStoreClient) -> None:
    await admin.create_session("u-sdk", "dev-1", device_type="Pixel", device_name="Phone")

    trusted = await admin.set_device_trust("u-sdk", "dev-1", True)
    status, raw, _ = await service.manage("GET", "/v1/users/u-sdk/devices")

    assert status == 200
    assert trusted.trusted is True
    assert trusted.active_sessions == 1
    assert as_json(trusted) == raw["devices"][0]


async def test_set_device_trust_unknown_device(admin: SessionStoreClient) -> None:
    await admin.create_session("u-sdk", "dev-1")

    with pytest.raises(NotFound) as caught:
        await admin.set_device_trust("u-sdk", "dev-never", True)

    assert caught.value.status == 404


async def test_get_user_devices_round_trips(service: Api, admin: SessionStoreClient) -> None:
    await create_full(admin, device_id="dev-1")
    await admin.create_session("u-sdk", "dev-2", device_name="Laptop")

    devices = await admin.get_user_devices("u-sdk")
    status, raw, _ = await service.manage("GET", "/v1/users/u-sdk/devices")

    assert status == 200
    assert {item.id for item in devices} == {"dev-1", "dev-2"}
    assert [as_json(item) for item in devices] == raw["devices"]


async def test_get_user_events_round_trips(service: Api, admin: SessionStoreClient) -> None:
    first = await admin.create_session("u-sdk", "dev-1")
    await admin.create_session("u-sdk", "dev-2")
    await admin.revoke_session(first.session_id)

    page = await admin.get_user_events("u-sdk")
    status, raw, _ = await service.manage("GET", "/v1/users/u-sdk/events")

    assert status == 200
    assert [event.type for event in page.events] == [
        "session_created", "new_device", "session_created", "session_revoked"]
    assert as_json(page) == raw


async def test_get_user_events_paging(admin: SessionStoreClient) -> None:
    for device_id in ("dev-1", "dev-2", "dev-3"):
        await admin.create_session("u-sdk", device_id)
    everything = await admin.get_user_events("u-sdk")

    seen: list[str] = []
    after = None
    while True:
        page = await admin.get_user_events("u-sdk", after=after, limit=2)
        seen += [event.id for event in page.events]
        if page.next is None:
            break
        after = page.next

    assert seen == [event.id for event in everything.events]
    assert len(seen) == 5


# -- self-service calls --------------------------------------------------------------

async def test_validate_round_trips(service: Api, admin: SessionStoreClient) -> None:
    created = await admin.create_session("u-sdk", "dev-1", policy="fixed", expires_in="1h")

    async with device(service, created.token) as client:
        validation = await client.validate()
    status, raw, _ = await service.validate(created.token)

    assert status == 200
    assert set(raw) == set(as_json(validation))
    assert without(as_json(validation), "expires_in") == without(raw, "expires_in")
    assert abs(validation.expires_in - raw["expires_in"]) <= 1
    assert validation.valid is True
    assert validation.device_id == "dev-1"


async def test_get_session_status_round_trips(service: Api, admin: SessionStoreClient) -> None:
    created = await admin.create_session("u-sdk", "dev-1", policy="fixed", expires_in="1h")
    await admin.create_session("u-sdk", "dev-2")

    async with device(service, created.token) as client:
        session_status = await client.get_session_status()
    status, raw, _ = await service.request("GET", "/v1/me/session", token=created.token)

    assert status == 200
    assert set(raw) == set(as_json(session_status))
    assert without(as_json(session_status), "expires_in") == without(raw, "expires_in")
    assert session_status.device_count == 2
    assert session_status.max_expires_at == created.max_expires_at


async def test_extend_session_round_trips(service: Api, admin: SessionStoreClient) -> None:
    created = await admin.create_session("u-sdk", "dev-1", policy="fixed", expires_in="30m")

    async with device(service, created.token) as client:
        result = await client.extend_session()
    status, raw, _ = await service.request("POST", "/v1/me/session/extend", token=created.token)

    assert status == 200
    assert set(raw) == set(as_json(result))
    assert result.extended is True
    assert result.max_expires_at == created.max_expires_at
    assert abs(result.expires_at - created.expires_at) <= timedelta(seconds=1)


async def test_extend_session_at_max_lifetime(service: Api, admin: SessionStoreClient) -> None:
    created = await admin.create_session("u-sdk", "dev-1", policy="standard", expires_in="1h",
                                         max_lifetime="1h")

    async with device(service, created.token) as client:
        result = await client.extend_session()

    assert result.extended is False
    assert result.expires_at == created.max_expires_at


async def test_get_my_sessions_round_trips(service: Api, admin: SessionStoreClient) -> None:
    mine = await create_full(admin, device_id="dev-1")
    other = await admin.create_session("u-sdk", "dev-2")

    async with device(service, mine.token) as client:
        listed = await client.get_my_sessions()
    status, raw, _ = await service.request("GET", "/v1/me/sessions", token=mine.token)

    assert status == 200
    assert as_json(listed) == raw
    assert {item.session_id: item.current for item in listed.sessions} == {
        mine.session_id: True, other.session_id: False}


async def test_revoke_my_session(service: Api, admin: SessionStoreClient) -> None:
    mine = await admin.create_session("u-sdk", "dev-1")
    other = await admin.create_session("u-sdk", "dev-2")
    foreign = await admin.create_session("u-other", "dev-1")

    async with device(service, mine.token) as client:
        await client.revoke_my_session(other.session_id)
        with pytest.raises(NotFound):
            await client.revoke_my_session(foreign.session_id)

    with pytest.raises(NotFound):
        await admin.get_session(other.session_id)
    assert (await admin.get_session(foreign.session_id)).user_id == "u-other"


async def test_revoke_all_other_sessions(service: Api, admin: SessionStoreClient) -> None:
    mine = await admin.create_session("u-sdk", "dev-1")
    for device_id in ("dev-2", "dev-3"):
        await admin.create_session("u-sdk", device_id)

    async with device(service, mine.token) as client:
        revoked = await client.revoke_all_other_sessions()
        listed = await client.get_my_sessions()

    assert revoked == 2
    assert [item.session_id for item in listed.sessions] == [mine.session_id]


async def test_sign_out_everywhere(service: Api, admin: SessionStoreClient) -> None:
    mine = await admin.create_session("u-sdk", "dev-1")
    await admin.create_session("u-sdk", "dev-2")

    async with device(service, mine.token) as client:
        revoked = await client.sign_out_everywhere()
        with pytest.raises(SessionRevoked):
            await client.validate()

    assert revoked == 2


async def test_sign_out(service: Api, admin: SessionStoreClient) -> None:
    mine = await admin.create_session("u-sdk", "dev-1")

    async with device(service, mine.token) as client:
        await client.sign_out()
        with pytest.raises(SessionRevoked):
            await client.get_session_status()


async def test_token_set_after_construction(service: Api, admin: SessionStoreClient) -> None:
    created = await admin.create_session("u-sdk", "dev-1")

    async with SessionStoreClient(service.base_url) as client:
        client.token = created.token
        validation = await client.validate(extend=False)

    assert validation.session_id == created.session_id


async def test_calls_without_credential_raise(service: Api) -> None:
    async with SessionStoreClient(service.base_url) as client:
        with pytest.raises(RuntimeError, match="API key"):
            await client.get_user_sessions("u-sdk")
        with pytest.raises(RuntimeError, match="session token"):
            await client.validate()


# -- activity hook ------------------------------------------------------------------

async def test_activity_hook_calls(service: Api, admin: SessionStoreClient) -> None:
    mine = await admin.create_session("u-sdk", "dev-1")
    other = await admin.create_session("u-sdk", "dev-2")
    calls: list[str] = []

    async with device(service, mine.token) as client:
        client.add_activity_hook(calls.append)
        await client.get_session_status()
        await client.validate(extend=False)
        await client.validate()
        await client.extend_session()
        await client.get_my_sessions()
        await client.revoke_my_session(other.session_id)
        await client.revoke_all_other_sessions()
        with pytest.raises(NotFound):
            await client.revoke_my_session(other.session_id)
        client.remove_activity_hook(calls.append)
        await client.validate()

    assert calls == ["validate", "extend_session", "get_my_sessions", "revoke_my_session",
                     "revoke_all_other_sessions"]


# -- event stream ----------------------------------------------------------------------

async def next_event(stream: AsyncIterator[Event]) -> Event:
    return await asyncio.wait_for(anext(stream), EVENT_TIMEOUT_S)


async def test_events_round_trip(service: Api, admin: SessionStoreClient) -> None:
    mine = await admin.create_session("u-sdk", "dev-1")
    [start] = (await admin.get_user_events("u-sdk")).events

    async with device(service, mine.token) as client:
        async with contextlib.aclosing(client.events(last_event_id=start.id)) as stream:
            await admin.create_session("u-sdk", "dev-2")
            received = [await next_event(stream), await next_event(stream)]

    history = (await admin.get_user_events("u-sdk", after=start.id)).events
    assert [event.type for event in received] == ["new_device", "session_created"]
    assert received == history


async def test_events_live_without_cursor(service: Api, admin: SessionStoreClient) -> None:
    mine = await admin.create_session("u-sdk", "dev-1")

    async with device(service, mine.token) as client:
        async with contextlib.aclosing(client.events()) as stream:
            # Whatever happens before the stream is open is not sent, so wait for it to open.
            pending = asyncio.ensure_future(next_event(stream))
            await asyncio.sleep(0.5)
            other = await admin.create_session("u-sdk", "dev-2")
            event = await pending

    assert (event.type, event.session_id) == ("new_device", other.session_id)


async def test_events_end_with_own_revocation(service: Api, admin: SessionStoreClient) -> None:
    mine = await admin.create_session("u-sdk", "dev-1")
    [start] = (await admin.get_user_events("u-sdk")).events

    async with device(service, mine.token) as client:
        async with contextlib.aclosing(client.events(last_event_id=start.id)) as stream:
            # A stream opened after the revocation would get 401 at once, so open it first.
            pending = asyncio.ensure_future(next_event(stream))
            await asyncio.sleep(0.5)
            await admin.revoke_session(mine.session_id)
            event = await pending
            # The service ends the stream, and the reconnect finds the session revoked.
            with pytest.raises(SessionRevoked):
                await next_event(stream)

    assert (event.type, event.session_id) == ("session_revoked", mine.session_id)


async def start_instance(backend: Backend, port: int) -> web.AppRunner:
    """Start the service on a given port, so it can be stopped and restarted on the same one."""
    settings = build_settings(copy.deepcopy(TEST_CONFIG), {})
    runner = web.AppRunner(create_app(settings, backend.url, cluster=backend.cluster), access_log=None,
                           shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def test_events_resume_after_restart(service: Api, admin: SessionStoreClient,
                                           backend: Backend) -> None:
    mine = await admin.create_session("u-sdk", "dev-1")
    [start] = (await admin.get_user_events("u-sdk")).events
    port = free_port()
    runner = await start_instance(backend, port)
    try:
        async with SessionStoreClient(f"http://127.0.0.1:{port}", token=mine.token) as client:
            async with contextlib.aclosing(client.events(last_event_id=start.id)) as stream:
                first = await admin.create_session("u-sdk", "dev-2")
                before = [await next_event(stream), await next_event(stream)]

                await runner.cleanup()
                # Created through the other instance while this one is down.
                second = await admin.create_session("u-sdk", "dev-3")
                runner = await start_instance(backend, port)

                resumed = [await next_event(stream), await next_event(stream)]
    finally:
        await runner.cleanup()

    assert [(event.type, event.session_id) for event in before] == [
        ("new_device", first.session_id), ("session_created", first.session_id)]
    assert [(event.type, event.session_id) for event in resumed] == [
        ("new_device", second.session_id), ("session_created", second.session_id)]


# -- errors ----------------------------------------------------------------------------

async def test_error_invalid_request(admin: SessionStoreClient) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await admin.create_session("u-sdk", "dev-1", expires_in="2x")

    error = caught.value
    assert (error.code, error.status) == ("invalid_request", 400)
    assert "expires_in" in error.detail
    assert isinstance(error, SessionStoreError)


async def test_error_unauthorized(service: Api) -> None:
    async with SessionStoreClient(service.base_url, api_key="wrong-key-0123456789") as client:
        with pytest.raises(Unauthorized) as caught:
            await client.get_user_sessions("u-sdk")

    assert (caught.value.code, caught.value.status) == ("unauthorized", 401)


@pytest.mark.parametrize("token", ["garbage", "sess_AAAAAAAAAAAAAAAAAAAAAAAA.secret"])
async def test_error_invalid_token(service: Api, token: str) -> None:
    async with device(service, token) as client:
        with pytest.raises(InvalidToken) as caught:
            await client.validate()

    assert (caught.value.code, caught.value.status) == ("invalid_token", 401)
    assert isinstance(caught.value, TokenRejected)


@pytest.mark.slow
async def test_error_session_expired(service: Api, admin: SessionStoreClient) -> None:
    created = await admin.create_session("u-sdk", "dev-1", policy="short", expires_in=1)
    await asyncio.sleep(1.5)

    async with device(service, created.token) as client:
        with pytest.raises(SessionExpired) as caught:
            await client.get_session_status()

    assert (caught.value.code, caught.value.status) == ("session_expired", 401)


async def test_error_session_revoked(service: Api, admin: SessionStoreClient) -> None:
    created = await admin.create_session("u-sdk", "dev-1")
    await admin.revoke_session(created.session_id)

    async with device(service, created.token) as client:
        with pytest.raises(SessionRevoked) as caught:
            await client.validate()

    assert (caught.value.code, caught.value.status) == ("session_revoked", 401)


async def test_error_reauth_required(service: Api, admin: SessionStoreClient) -> None:
    created = await admin.create_session("u-sdk", "dev-1", policy="reauth", user_agent="App/1.0")

    async with device(service, created.token, user_agent="Other/2.0") as client:
        with pytest.raises(ReauthRequired) as caught:
            await client.validate()

    assert (caught.value.code, caught.value.status) == ("reauth_required", 401)


async def test_error_device_not_trusted(admin: SessionStoreClient) -> None:
    with pytest.raises(DeviceNotTrusted) as caught:
        await admin.create_session("u-sdk", "dev-1", policy="trusted")

    assert (caught.value.code, caught.value.status) == ("device_not_trusted", 403)


async def test_error_not_found(admin: SessionStoreClient) -> None:
    with pytest.raises(NotFound) as caught:
        await admin.get_session("sess_nope")

    assert (caught.value.code, caught.value.status) == ("not_found", 404)


async def test_error_session_limit_reached(admin: SessionStoreClient) -> None:
    await admin.create_session("u-sdk", "dev-1", policy="pair")
    await admin.create_session("u-sdk", "dev-2", policy="pair")

    with pytest.raises(SessionLimitReached) as caught:
        await admin.create_session("u-sdk", "dev-3", policy="pair")

    assert (caught.value.code, caught.value.status) == ("session_limit_reached", 409)


async def test_error_payload_too_large(admin: SessionStoreClient) -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        await admin.create_session("u-sdk", "dev-1", metadata={"blob": "x" * 20000})

    assert (caught.value.code, caught.value.status) == ("payload_too_large", 413)


async def test_error_rate_limited(admin: SessionStoreClient) -> None:
    await admin.create_session("u-sdk", "dev-1", policy="burst")
    await admin.create_session("u-sdk", "dev-2", policy="burst")

    with pytest.raises(RateLimited) as caught:
        await admin.create_session("u-sdk", "dev-3", policy="burst")

    error = caught.value
    assert (error.code, error.status) == ("rate_limited", 429)
    assert error.retry_after is not None
    assert 0 < error.retry_after <= 60


async def test_error_store_unavailable(service: Api, admin: SessionStoreClient,
                                       redis_server: RedisServer) -> None:
    created = await admin.create_session("u-sdk", "dev-1")
    await asyncio.to_thread(redis_server.stop)
    try:
        with pytest.raises(StoreUnavailable) as management_error:
            await admin.get_user_sessions("u-sdk")
        async with device(service, created.token) as client:
            with pytest.raises(StoreUnavailable) as self_service_error:
                await client.validate()
    finally:
        await asyncio.to_thread(ensure_redis_running, redis_server)

    for error in (management_error.value, self_service_error.value):
        assert (error.code, error.status) == ("store_unavailable", 503)


async def test_error_network(admin: SessionStoreClient) -> None:
    async with SessionStoreClient(f"http://127.0.0.1:{free_port()}", api_key=API_KEY) as client:
        with pytest.raises(NetworkError) as caught:
            await client.get_user_sessions("u-sdk")

    assert (caught.value.code, caught.value.status) == ("network_error", None)
    assert isinstance(caught.value, SessionStoreError)


# -- durations --------------------------------------------------------------------------

@pytest.mark.parametrize(("policy", "expires_in", "seconds"), [
    pytest.param("short", 90, 90, id="int"),
    pytest.param("short", timedelta(minutes=5), 300, id="timedelta"),
    pytest.param("short", "90s", 90, id="seconds"),
    pytest.param("short", "5m", 300, id="minutes"),
    pytest.param("standard", "24h", 86400, id="hours"),
    pytest.param("standard", "30d", 2592000, id="days"),
])
async def test_expires_in_forms(admin: SessionStoreClient, policy: str, expires_in: Any,
                                seconds: int) -> None:
    created = await admin.create_session("u-sdk", "dev-1", policy=policy, expires_in=expires_in)

    assert created.expires_in == seconds
    assert created.expires_at - created.created_at == timedelta(seconds=seconds)


@pytest.mark.parametrize("max_lifetime", [7200, timedelta(hours=2), "2h", "120m"])
async def test_max_lifetime_forms(admin: SessionStoreClient, max_lifetime: Any) -> None:
    created = await admin.create_session("u-sdk", "dev-1", expires_in="1h", max_lifetime=max_lifetime)

    assert created.max_expires_at - created.created_at == timedelta(hours=2)


@pytest.mark.parametrize(("value", "error"), [
    pytest.param(timedelta(seconds=1.5), ValueError, id="fractional-timedelta"),
    pytest.param(True, TypeError, id="bool"),
    pytest.param(1.5, TypeError, id="float"),
])
async def test_expires_in_rejected_locally(admin: SessionStoreClient, value: Any,
                                           error: type[Exception]) -> None:
    with pytest.raises(error, match="expires_in"):
        await admin.create_session("u-sdk", "dev-1", expires_in=value)


async def test_expires_in_out_of_bounds(admin: SessionStoreClient) -> None:
    with pytest.raises(InvalidRequest, match="expires_in"):
        await admin.create_session("u-sdk", "dev-1", policy="standard", expires_in="90s")


# -- secrets ------------------------------------------------------------------------------

async def test_repr_hides_secrets(service: Api, admin: SessionStoreClient) -> None:
    created = await create_full(admin)
    async with SessionStoreClient(service.base_url, api_key=API_KEY, token=created.token) as client:
        shown = [repr(client), str(client), repr(created), str(created), repr([created]),
                 repr(dict(created.__rich_repr__()))]

    for text in shown:
        assert API_KEY not in text
        assert created.token not in text
    assert "<hidden>" in repr(client)
    assert "session_id=" in repr(created)


async def test_errors_and_logs_hide_secrets(service: Api, admin: SessionStoreClient,
                                            caplog: pytest.LogCaptureFixture) -> None:
    created = await admin.create_session("u-sdk", "dev-1")
    await admin.revoke_session(created.session_id)
    caplog.set_level(logging.DEBUG)

    errors: list[SessionStoreError] = []
    async with device(service, created.token) as client:
        for call in (client.validate, client.get_session_status, client.extend_session):
            try:
                await call()
            except SessionStoreError as exc:
                errors.append(exc)
    async with SessionStoreClient(f"http://127.0.0.1:{free_port()}", token=created.token) as client:
        with pytest.raises(NetworkError) as caught:
            await client.validate()
    errors.append(caught.value)

    assert len(errors) == 4
    for error in errors:
        assert created.token not in repr(error)
        assert created.token not in str(error)
    assert created.token not in caplog.text
    assert API_KEY not in caplog.text
