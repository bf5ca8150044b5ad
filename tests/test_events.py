"""Session events against the contract: GET /v1/users/{id}/events, the bounded
per-user and global Redis streams, and the SSE stream GET /v1/me/events."""

from __future__ import annotations

import asyncio
import copy
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NamedTuple
from urllib.parse import quote

import aiohttp
import msgspec
import pytest

from service.keys import global_events_key, user_keys
from service.schemas import EventPage
from service.tokens import user_tag
from tests.conftest import TEST_CONFIG, Api, ServiceFactory

KEY_PREFIX = "ss:"
RFC3339_SECONDS = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\Z")
PROBLEM_TYPE = "application/problem+json"
EVENT_FIELDS = {"id", "type", "at", "user_id", "session_id", "device_id", "detail"}
# Maximum wait for one expected SSE frame, so no read blocks longer.
FRAME_TIMEOUT_S = 3.0
# How long the global stream copy, written after the request returns, may take.
MIRROR_WAIT_S = 2.0


def config_with(service: dict[str, Any] | None = None,
                policies: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return TEST_CONFIG with extra [service] keys and policies."""
    config = copy.deepcopy(TEST_CONFIG)
    config["service"].update(service or {})
    config["policies"].update(policies or {})
    return config


# A policy whose 1 s window ends while the test waits.
BLINK_CONFIG = config_with(policies={
    "blink": {"expires_in": 1, "min_expires_in": 1, "max_expires_in": "1h", "max_lifetime": "1h"},
})
HEARTBEAT_CONFIG = config_with(service={"sse_heartbeat": 1})


# -- helpers -----------------------------------------------------------------

def events_path(user_id: str) -> str:
    return f"/v1/users/{quote(user_id, safe='')}/events"


def stream_id(event_id: str) -> tuple[int, int]:
    millis, seq = event_id.split("-")
    return int(millis), int(seq)


async def all_events(api: Api, user_id: str) -> list[dict[str, Any]]:
    status, body, _ = await api.manage("GET", events_path(user_id), params={"limit": "1000"})
    assert status == 200, body
    assert body["next"] is None
    return body["events"]


async def events_of_type(api: Api, user_id: str, event_type: str) -> list[dict[str, Any]]:
    return [event for event in await all_events(api, user_id) if event["type"] == event_type]


async def revoke(api: Api, session_id: str) -> None:
    status, body, _ = await api.manage("DELETE", f"/v1/sessions/{session_id}")
    assert status == 204, body


# -- GET /v1/users/{user_id}/events ------------------------------------------------

async def test_events_page_decodes(api: Api) -> None:
    await api.create("u-ev", "dev-1")

    status, body, headers = await api.manage("GET", events_path("u-ev"))

    assert status == 200
    assert len(msgspec.convert(body, EventPage).events) == 1
    assert headers["Cache-Control"] == "no-store"


async def test_events_session_created_fields(api: Api) -> None:
    created = await api.create("u-ev", "dev-1")

    [event] = await all_events(api, "u-ev")

    assert set(event) == EVENT_FIELDS
    assert event["type"] == "session_created"
    assert event["user_id"] == "u-ev"
    assert event["session_id"] == created["session_id"]
    assert event["device_id"] == "dev-1"


async def test_events_at_is_rfc3339(api: Api) -> None:
    created = await api.create("u-ev", "dev-1")

    [event] = await all_events(api, "u-ev")

    assert RFC3339_SECONDS.match(event["at"]) is not None
    assert event["at"] == created["created_at"]


async def test_events_carry_no_token(api: Api) -> None:
    created = await api.create("u-ev", "dev-1")
    secret = created["token"].split(".", 1)[1]

    _, body, _ = await api.manage("GET", events_path("u-ev"))

    assert secret not in msgspec.json.encode(body).decode()


async def test_events_oldest_first(api: Api) -> None:
    first = await api.create("u-ev", "dev-1")
    await api.create("u-ev", "dev-2")
    await revoke(api, first["session_id"])

    events = await all_events(api, "u-ev")

    assert [event["type"] for event in events] == [
        "session_created", "new_device", "session_created", "session_revoked"]
    ids = [stream_id(event["id"]) for event in events]
    assert ids == sorted(set(ids))


async def test_events_replaced_on_same_device(api: Api) -> None:
    old = await api.create("u-ev", "dev-1")
    new = await api.create("u-ev", "dev-1")

    replaced = await events_of_type(api, "u-ev", "session_replaced")

    assert [(event["session_id"], event["device_id"]) for event in replaced] == [(old["session_id"], "dev-1")]
    assert new["replaced"] == [old["session_id"]]


async def test_events_replaced_before_new_created(api: Api) -> None:
    await api.create("u-ev", "dev-1")
    new = await api.create("u-ev", "dev-1")

    events = await all_events(api, "u-ev")

    assert [event["type"] for event in events] == ["session_created", "session_replaced", "session_created"]
    assert events[-1]["session_id"] == new["session_id"]


async def test_events_same_device_no_new_device(api: Api) -> None:
    await api.create("u-ev", "dev-1")
    await api.create("u-ev", "dev-1")

    assert await events_of_type(api, "u-ev", "new_device") == []


async def test_events_evicted_at_limit(api: Api) -> None:
    # The "small" test policy keeps 3 sessions and evicts the oldest.
    oldest = await api.create("u-ev", "dev-1", policy="small")
    await api.create("u-ev", "dev-2", policy="small")
    await api.create("u-ev", "dev-3", policy="small")
    newest = await api.create("u-ev", "dev-4", policy="small")

    evicted = await events_of_type(api, "u-ev", "session_evicted")

    evicted_ids = [(event["session_id"], event["device_id"]) for event in evicted]
    assert evicted_ids == [(oldest["session_id"], "dev-1")]
    assert newest["evicted"] == [oldest["session_id"]]


async def test_events_revoked_on_delete(api: Api) -> None:
    created = await api.create("u-ev", "dev-1")
    await revoke(api, created["session_id"])

    revoked = await events_of_type(api, "u-ev", "session_revoked")

    revoked_ids = [(event["session_id"], event["device_id"]) for event in revoked]
    assert revoked_ids == [(created["session_id"], "dev-1")]


async def test_events_revoked_on_delete_all(api: Api) -> None:
    first = await api.create("u-ev", "dev-1")
    second = await api.create("u-ev", "dev-2")
    status, _, _ = await api.manage("DELETE", "/v1/users/u-ev/sessions")
    assert status == 200

    revoked = await events_of_type(api, "u-ev", "session_revoked")

    assert {event["session_id"] for event in revoked} == {first["session_id"], second["session_id"]}


async def test_events_new_device_on_second_device(api: Api) -> None:
    await api.create("u-ev", "dev-1")
    second = await api.create("u-ev", "dev-2")

    new_device = await events_of_type(api, "u-ev", "new_device")

    assert [(event["session_id"], event["device_id"]) for event in new_device] == [
        (second["session_id"], "dev-2")]


async def test_events_first_device_no_new_device(api: Api) -> None:
    await api.create("u-ev", "dev-1")

    assert await events_of_type(api, "u-ev", "new_device") == []


async def test_events_known_device_no_new_device(api: Api) -> None:
    first = await api.create("u-ev", "dev-1")
    await api.create("u-ev", "dev-2")
    await revoke(api, first["session_id"])
    await api.create("u-ev", "dev-1")

    new_device = await events_of_type(api, "u-ev", "new_device")

    assert [event["device_id"] for event in new_device] == ["dev-2"]


async def test_events_users_kept_apart(api: Api) -> None:
    await api.create("u-ev-a", "dev-1")
    await api.create("u-ev-b", "dev-1")

    events = await all_events(api, "u-ev-a")

    assert {event["user_id"] for event in events} == {"u-ev-a"}


async def test_events_unknown_user_empty(api: Api) -> None:
    status, body, _ = await api.manage("GET", events_path("u-never-seen"))

    assert status == 200
    assert body == {"events": [], "next": None}


async def test_events_odd_user_id(api: Api) -> None:
    user_id = "{x}: y %20"
    await api.create(user_id, "dev-1")

    events = await all_events(api, user_id)

    assert [(event["type"], event["user_id"]) for event in events] == [("session_created", user_id)]


async def test_events_without_api_key_401(api: Api) -> None:
    status, body, _ = await api.request("GET", events_path("u-ev"))

    assert status == 401
    assert body["code"] == "unauthorized"


# -- session_expired ------------------------------------------------------------

@pytest.mark.slow
async def test_events_expired_once_after_validations(make_service: ServiceFactory) -> None:
    api = await make_service(BLINK_CONFIG)
    created = await api.create("u-exp", "dev-1", policy="blink")
    await asyncio.sleep(1.5)

    codes = [(await api.validate(created["token"]))[1]["code"] for _ in range(3)]

    assert codes == ["session_expired"] * 3
    expired = await events_of_type(api, "u-exp", "session_expired")
    expired_ids = [(event["session_id"], event["device_id"]) for event in expired]
    assert expired_ids == [(created["session_id"], "dev-1")]


@pytest.mark.slow
async def test_events_expired_once_after_lists(make_service: ServiceFactory) -> None:
    api = await make_service(BLINK_CONFIG)
    created = await api.create("u-exp", "dev-1", policy="blink")
    await asyncio.sleep(1.5)

    for _ in range(2):
        status, body, _ = await api.manage("GET", "/v1/users/u-exp/sessions")
        assert status == 200
        assert body["sessions"] == []
    await api.validate(created["token"])

    expired = await events_of_type(api, "u-exp", "session_expired")
    assert [event["session_id"] for event in expired] == [created["session_id"]]


@pytest.mark.slow
async def test_events_expired_detail_reason(make_service: ServiceFactory) -> None:
    api = await make_service(BLINK_CONFIG)
    created = await api.create("u-exp", "dev-1", policy="blink")
    await asyncio.sleep(1.5)
    await api.validate(created["token"])

    [event] = await events_of_type(api, "u-exp", "session_expired")

    assert event["detail"] == {"reason": "idle"}


# -- paging ------------------------------------------------------------------------

async def make_history(api: Api, user_id: str) -> None:
    """Produce 8 events: created x4, new_device x2, replaced, revoked."""
    first = await api.create(user_id, "dev-1")
    await api.create(user_id, "dev-2")
    await api.create(user_id, "dev-3")
    await api.create(user_id, "dev-2")
    await revoke(api, first["session_id"])


async def test_events_paging_walks_every_event_once(api: Api) -> None:
    await make_history(api, "u-page")
    expected = [event["id"] for event in await all_events(api, "u-page")]

    seen: list[str] = []
    params = {"limit": "2"}
    for _ in range(len(expected) + 2):
        status, body, _ = await api.manage("GET", events_path("u-page"), params=params)
        assert status == 200, body
        assert len(body["events"]) <= 2
        seen += [event["id"] for event in body["events"]]
        if body["next"] is None:
            break
        params = {"limit": "2", "after": body["next"]}

    assert len(expected) == 8
    assert seen == expected
    assert body["next"] is None


async def test_events_paging_next_is_last_id(api: Api) -> None:
    await make_history(api, "u-page")

    _, body, _ = await api.manage("GET", events_path("u-page"), params={"limit": "2"})

    assert body["next"] == body["events"][-1]["id"]


async def test_events_paging_exact_fit_ends(api: Api) -> None:
    created = await api.create("u-page", "dev-1")
    await revoke(api, created["session_id"])

    _, body, _ = await api.manage("GET", events_path("u-page"), params={"limit": "2"})

    assert [event["type"] for event in body["events"]] == ["session_created", "session_revoked"]
    assert body["next"] is None


async def test_events_paging_after_last_is_empty(api: Api) -> None:
    await api.create("u-page", "dev-1")
    [event] = await all_events(api, "u-page")

    _, body, _ = await api.manage("GET", events_path("u-page"), params={"after": event["id"]})

    assert body == {"events": [], "next": None}


@pytest.mark.parametrize("params", [
    pytest.param({"after": "abc"}, id="after-word"),
    pytest.param({"after": "1-2-3"}, id="after-three-parts"),
    pytest.param({"after": "-1-0"}, id="after-negative"),
    pytest.param({"limit": "0"}, id="limit-zero"),
    pytest.param({"limit": "-1"}, id="limit-negative"),
    pytest.param({"limit": "x"}, id="limit-word"),
    pytest.param({"limit": "1.5"}, id="limit-fraction"),
    pytest.param({"limit": "100000"}, id="limit-huge"),
])
async def test_events_bad_query_400(api: Api, params: dict[str, str]) -> None:
    status, body, headers = await api.manage("GET", events_path("u-page"), params=params)

    assert status == 400
    assert body["code"] == "invalid_request"
    assert headers["Content-Type"].startswith(PROBLEM_TYPE)


# -- bounded streams ------------------------------------------------------------------

async def make_events(api: Api, user_id: str, count: int) -> None:
    """Produce at least count events by signing in again and again on one device."""
    await api.create(user_id, "dev-1")
    # Each later sign-in adds session_replaced and session_created.
    for _ in range(count // 2):
        await api.create(user_id, "dev-1")


async def test_events_user_stream_bounded(make_service: ServiceFactory, redis: Any) -> None:
    api = await make_service(config_with(service={"events_max_length": 10}))
    await make_events(api, "u-bound", 50)

    length = await redis.llen(user_keys(KEY_PREFIX, user_tag("u-bound")).events)

    # The user's list is trimmed exactly to the cap.
    assert length == 10


async def test_events_bounded_list_keeps_newest(make_service: ServiceFactory) -> None:
    api = await make_service(config_with(service={"events_max_length": 10}))
    await make_events(api, "u-bound", 50)
    last = await api.create("u-bound", "dev-1")

    events = await all_events(api, "u-bound")

    assert events[-1]["session_id"] == last["session_id"]


async def global_entries(redis: Any, count: int) -> list[dict[bytes, bytes]]:
    """Return the global stream's entries once it contains count of them, or after MIRROR_WAIT_S."""
    key = global_events_key(KEY_PREFIX)
    deadline = time.monotonic() + MIRROR_WAIT_S
    while True:
        entries = await redis.xrange(key)
        if len(entries) >= count or time.monotonic() > deadline:
            return [fields for _, fields in entries]
        await asyncio.sleep(0.05)


async def test_events_global_stream_copies(api: Api, redis: Any) -> None:
    first = await api.create("u-glob", "dev-1")
    await api.create("u-glob", "dev-2")
    await revoke(api, first["session_id"])
    events = await all_events(api, "u-glob")

    copies = await global_entries(redis, len(events))

    copied = sorted((fields[b"user_event_id"].decode(), fields[b"type"].decode(), fields[b"user_id"].decode())
                    for fields in copies)
    assert copied == sorted((event["id"], event["type"], "u-glob") for event in events)


async def test_events_global_stream_all_users(api: Api, redis: Any) -> None:
    await api.create("u-glob-a", "dev-1")
    await api.create("u-glob-b", "dev-1")

    copies = await global_entries(redis, 2)

    assert sorted(fields[b"user_id"] for fields in copies) == [b"u-glob-a", b"u-glob-b"]


async def wait_for_copy(redis: Any, user_event_id: str) -> None:
    """Wait up to MIRROR_WAIT_S until one of the global stream's newest entries copies user_event_id.

    The service writes copies in background tasks, so they may land out of order."""
    deadline = time.monotonic() + MIRROR_WAIT_S
    while time.monotonic() < deadline:
        newest = await redis.xrevrange(global_events_key(KEY_PREFIX), count=5)
        if any(fields[b"user_event_id"].decode() == user_event_id for _, fields in newest):
            return
        await asyncio.sleep(0.05)


async def test_events_global_stream_bounded(make_service: ServiceFactory, redis: Any) -> None:
    api = await make_service(config_with(service={"global_events_max_length": 10}))
    for index in range(25):
        await api.create(f"u-glob-{index}", "dev-1")
        await api.create(f"u-glob-{index}", "dev-1")
    [*_, last] = await all_events(api, "u-glob-24")
    await wait_for_copy(redis, last["id"])

    length = await redis.xlen(global_events_key(KEY_PREFIX))

    # 25 users x 3 events were copied, and MAXLEN ~ may keep up to about twice the cap.
    assert length <= 20


# -- SSE: GET /v1/me/events -----------------------------------------------------------

class Frame(NamedTuple):
    """One SSE frame: its comment lines, and its id, event and data fields."""

    comments: list[str]
    id: str | None
    event: str | None
    data: str | None


def parse_frame(raw: bytes) -> Frame:
    comments: list[str] = []
    fields: dict[str, str] = {}
    for line in raw.decode("utf-8").split("\n"):
        if not line:
            continue
        if line.startswith(":"):
            comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        fields[name] = value[1:] if value.startswith(" ") else value
    return Frame(comments, fields.get("id"), fields.get("event"), fields.get("data"))


class SseStream:
    """Reader of one open SSE response, with a timeout on every read."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next_frame(self, timeout_s: float = FRAME_TIMEOUT_S) -> Frame | None:
        """Return the next frame, or None at end of stream. Raise TimeoutError after timeout_s."""
        async with asyncio.timeout(timeout_s):
            raw = await self.response.content.readuntil(b"\n\n")
        # aiohttp's readuntil returns what is left, without raising, at end of stream.
        if not raw:
            return None
        assert raw.endswith(b"\n\n"), f"the stream ended inside a frame: {raw!r}"
        return parse_frame(raw)

    async def next_event(self, timeout_s: float = FRAME_TIMEOUT_S) -> Frame | None:
        """Return the next frame with an event field, or None at end of stream.

        Comment frames (heartbeats) and the retry frame are skipped."""
        deadline = time.monotonic() + timeout_s
        while True:
            frame = await self.next_frame(max(0.01, deadline - time.monotonic()))
            if frame is None or frame.event is not None:
                return frame

    async def next_heartbeat(self, timeout_s: float) -> Frame:
        deadline = time.monotonic() + timeout_s
        while True:
            frame = await self.next_frame(max(0.01, deadline - time.monotonic()))
            assert frame is not None, "the stream ended before a heartbeat"
            if frame.comments:
                return frame


@asynccontextmanager
async def open_sse(api: Api, token: str, last_event_id: str | None = None) -> AsyncIterator[SseStream]:
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    timeout = aiohttp.ClientTimeout(total=30, sock_connect=2)
    async with api.http.get(api.url("/v1/me/events"), headers=headers, timeout=timeout) as response:
        assert response.status == 200, await response.text()
        yield SseStream(response)


async def test_sse_headers(make_service: ServiceFactory) -> None:
    api = await make_service(HEARTBEAT_CONFIG)
    created = await api.create("u-sse", "dev-1")

    async with open_sse(api, created["token"]) as stream:
        headers = stream.response.headers

    assert headers["Content-Type"].split(";")[0].strip() == "text/event-stream"
    assert headers["Cache-Control"] == "no-store"


async def test_sse_heartbeat_within_1_5s(make_service: ServiceFactory) -> None:
    api = await make_service(HEARTBEAT_CONFIG)
    created = await api.create("u-sse", "dev-1")

    async with open_sse(api, created["token"]) as stream:
        frame = await stream.next_heartbeat(1.5)

    assert frame.event is None


async def test_sse_heartbeats_keep_coming(make_service: ServiceFactory) -> None:
    api = await make_service(HEARTBEAT_CONFIG)
    created = await api.create("u-sse", "dev-1")

    async with open_sse(api, created["token"]) as stream:
        await stream.next_heartbeat(1.5)
        frame = await stream.next_heartbeat(1.5)

    assert frame.event is None


async def test_sse_sends_no_older_events(make_service: ServiceFactory) -> None:
    api = await make_service(HEARTBEAT_CONFIG)
    await api.create("u-sse", "dev-0")
    created = await api.create("u-sse", "dev-1")

    async with open_sse(api, created["token"]) as stream:
        frame = await stream.next_heartbeat(1.5)

    assert frame.event is None


async def test_sse_revoke_via_other_instance(make_service: ServiceFactory) -> None:
    listening = await make_service(HEARTBEAT_CONFIG)
    other = await make_service(HEARTBEAT_CONFIG)
    created = await listening.create("u-sse", "dev-1")
    target = await listening.create("u-sse", "dev-2")

    async with open_sse(listening, created["token"]) as stream:
        await revoke(other, target["session_id"])
        frame = await stream.next_event(1.0)

    assert frame is not None
    assert frame.event == "session_revoked"
    data = msgspec.json.decode(frame.data or "")
    assert data["session_id"] == target["session_id"]
    assert data["device_id"] == "dev-2"
    assert frame.id == data["id"]


async def test_sse_stays_open_after_other_revoked(make_service: ServiceFactory) -> None:
    api = await make_service(HEARTBEAT_CONFIG)
    created = await api.create("u-sse", "dev-1")
    target = await api.create("u-sse", "dev-2")

    async with open_sse(api, created["token"]) as stream:
        await revoke(api, target["session_id"])
        await stream.next_event(1.0)
        frame = await stream.next_heartbeat(1.5)

    assert frame.event is None


async def test_sse_create_via_other_instance(make_service: ServiceFactory) -> None:
    listening = await make_service(HEARTBEAT_CONFIG)
    other = await make_service(HEARTBEAT_CONFIG)
    created = await listening.create("u-sse", "dev-1")

    async with open_sse(listening, created["token"]) as stream:
        await other.create("u-sse", "dev-1-again")
        first = await stream.next_event(1.0)
        second = await stream.next_event(1.0)

    assert [frame.event if frame else None for frame in (first, second)] == ["new_device", "session_created"]


async def test_sse_resume_with_last_event_id(make_service: ServiceFactory) -> None:
    api = await make_service(HEARTBEAT_CONFIG)
    listener = await api.create("u-sse", "dev-1")

    async with open_sse(api, listener["token"]) as stream:
        other = await api.create("u-sse", "dev-2")
        seen = [await stream.next_event(1.0), await stream.next_event(1.0)]
    assert [frame and frame.event for frame in seen] == ["new_device", "session_created"]
    last_seen = seen[-1].id if seen[-1] else None
    assert last_seen is not None

    # Three events while disconnected: revoked, created, revoked.
    await revoke(api, other["session_id"])
    again = await api.create("u-sse", "dev-2")
    await revoke(api, again["session_id"])
    _, history, _ = await api.manage("GET", events_path("u-sse"), params={"after": last_seen})
    missed = [(event["id"], event["type"]) for event in history["events"]]

    async with open_sse(api, listener["token"], last_event_id=last_seen) as stream:
        resumed = [await stream.next_event(1.0) for _ in range(3)]
        # With a 1 s heartbeat, the next frame after the missed events is a heartbeat.
        after = await stream.next_frame(1.5)

    missed_types = [event_type for _, event_type in missed]
    assert missed_types == ["session_revoked", "session_created", "session_revoked"]
    assert [(frame and frame.id, frame and frame.event) for frame in resumed] == missed
    assert after is not None
    assert after.event is None


async def test_sse_resume_frames_match_history(make_service: ServiceFactory) -> None:
    api = await make_service(HEARTBEAT_CONFIG)
    listener = await api.create("u-sse", "dev-1")
    other = await api.create("u-sse", "dev-2")
    [*_, before] = await all_events(api, "u-sse")
    await revoke(api, other["session_id"])
    await api.create("u-sse", "dev-3")
    history = [event for event in await all_events(api, "u-sse")
               if stream_id(event["id"]) > stream_id(before["id"])]

    async with open_sse(api, listener["token"], last_event_id=before["id"]) as stream:
        resumed = [await stream.next_event(1.0) for _ in history]

    assert [msgspec.json.decode(frame.data or "") if frame else None for frame in resumed] == history


async def test_sse_bad_last_event_id_400(make_service: ServiceFactory) -> None:
    api = await make_service(HEARTBEAT_CONFIG)
    created = await api.create("u-sse", "dev-1")

    status, body, _ = await api.request("GET", "/v1/me/events", token=created["token"],
                                        headers={"Last-Event-ID": "not-an-id"})

    assert status == 400
    assert body["code"] == "invalid_request"


async def test_sse_ends_when_own_session_revoked(make_service: ServiceFactory) -> None:
    api = await make_service(HEARTBEAT_CONFIG)
    created = await api.create("u-sse", "dev-1")

    async with open_sse(api, created["token"]) as stream:
        await revoke(api, created["session_id"])
        frame = await stream.next_event(1.0)
        end = await stream.next_frame(1.0)

    assert frame is not None
    assert frame.event == "session_revoked"
    assert msgspec.json.decode(frame.data or "")["session_id"] == created["session_id"]
    assert end is None


async def test_sse_ends_when_own_session_replaced(make_service: ServiceFactory) -> None:
    api = await make_service(HEARTBEAT_CONFIG)
    created = await api.create("u-sse", "dev-1")

    async with open_sse(api, created["token"]) as stream:
        await api.create("u-sse", "dev-1")
        frame = await stream.next_event(1.0)
        end = await stream.next_frame(1.0)

    assert frame is not None
    assert frame.event == "session_replaced"
    assert end is None


async def test_sse_ends_after_sign_out(make_service: ServiceFactory) -> None:
    api = await make_service(HEARTBEAT_CONFIG)
    created = await api.create("u-sse", "dev-1")

    async with open_sse(api, created["token"]) as stream:
        status, _, _ = await api.request("DELETE", "/v1/me/session", token=created["token"])
        assert status == 204
        frame = await stream.next_event(1.0)
        end = await stream.next_frame(1.0)

    assert frame is not None
    assert frame.event == "session_revoked"
    assert end is None


async def test_sse_revoked_token_401(api: Api) -> None:
    created = await api.create("u-sse", "dev-1")
    await revoke(api, created["session_id"])

    status, body, headers = await api.request("GET", "/v1/me/events", token=created["token"])

    assert status == 401
    assert body["code"] == "session_revoked"
    assert headers["Content-Type"].startswith(PROBLEM_TYPE)


@pytest.mark.parametrize("token", [
    pytest.param("not-a-token", id="garbage"),
    pytest.param("AAAAAAAAAAAAAAAABBBBBBBB." + "x" * 43, id="well-formed"),
])
async def test_sse_invalid_token_401(api: Api, token: str) -> None:
    status, body, headers = await api.request("GET", "/v1/me/events", token=token)

    assert status == 401
    assert body["code"] == "invalid_token"
    assert headers["Content-Type"].startswith(PROBLEM_TYPE)


async def test_sse_no_token_401(api: Api) -> None:
    status, body, _ = await api.request("GET", "/v1/me/events")

    assert status == 401
    assert body["code"] == "invalid_token"


async def test_sse_api_key_is_not_a_session(api: Api) -> None:
    status, body, _ = await api.manage("GET", "/v1/me/events")

    assert status == 401
    assert body["code"] == "invalid_token"
