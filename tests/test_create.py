"""POST /v1/sessions against a real redis-server, and API-key authentication
of the management endpoints."""

from __future__ import annotations

import asyncio
import base64
import copy
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import API_KEY, TEST_CONFIG, Api, ServiceFactory

RFC3339_UTC = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\Z")
SESSION_ID = re.compile(r"\Asess_[A-Za-z0-9_-]+\Z")
# RFC 3986 unreserved characters: a token must travel in headers and cookies unescaped.
URL_SAFE = re.compile(r"\A[A-Za-z0-9._~-]+\Z")
PROBLEM_KEYS = {"type", "title", "status", "detail", "code"}

DAY_S = 86400
# Allowed difference between the local clock and the Redis clock of the same machine,
# generous so that a loaded CI host passes.
CLOCK_TOLERANCE = timedelta(seconds=5)

BAD_USER = "u-bad"


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def seconds_between(start: str, end: str) -> float:
    return (parse_time(end) - parse_time(start)).total_seconds()


def assert_problem(status: int, body: Any, headers: Any, expected_status: int, code: str) -> None:
    """Check an RFC 9457 problem response with the given status and code."""
    assert status == expected_status, body
    assert headers["Content-Type"].split(";")[0] == "application/problem+json"
    assert isinstance(body, dict), body
    assert PROBLEM_KEYS <= set(body), body
    assert body["status"] == expected_status
    assert body["code"] == code
    assert isinstance(body["type"], str)
    assert isinstance(body["title"], str)
    assert body["title"] != ""
    assert isinstance(body["detail"], str)


async def stored_keys(redis: aioredis.Redis) -> list[bytes]:
    return [key async for key in redis.scan_iter(count=1000)]


async def listed_ids(api: Api, user_id: str) -> list[str]:
    status, body, _ = await api.manage("GET", f"/v1/users/{user_id}/sessions")
    assert status == 200, body
    return [item["session_id"] for item in body["sessions"]]


async def post_create(api: Api, body: dict[str, Any]) -> tuple[int, Any, Any]:
    return await api.manage("POST", "/v1/sessions", json=body)


def config_without_api_keys() -> dict[str, Any]:
    config = copy.deepcopy(TEST_CONFIG)
    del config["service"]["api_keys"]
    return config


# -- success path ------------------------------------------------------------

async def test_create_returns_contract_fields(api: Api) -> None:
    request = {
        "user_id": "u-alice",
        "device": {"id": "fp-9c2e", "type": "iPhone_13_Pro", "name": "Sarah's iPhone"},
        "policy": "standard",
        "expires_in": "24h",
        "extend_on_activity": True,
        "max_lifetime": "7d",
        "client": {"ip": "203.0.113.7", "user_agent": "TestAgent/1.0"},
        "metadata": {"plan": "pro"},
    }
    before = datetime.now(UTC)

    status, body, headers = await post_create(api, request)

    assert status == 201, body
    assert headers["Content-Type"].split(";")[0] == "application/json"
    assert headers["Cache-Control"] == "no-store"
    assert SESSION_ID.match(body["session_id"]), body["session_id"]
    assert body["user_id"] == "u-alice"
    assert body["device"] == {"id": "fp-9c2e", "type": "iPhone_13_Pro", "name": "Sarah's iPhone",
                              "trusted": False}
    assert body["expires_in"] == DAY_S
    assert body["extend_on_activity"] is True
    assert body["policy"] == "standard"
    assert body["replaced"] == []
    assert body["evicted"] == []
    for field in ("created_at", "expires_at", "max_expires_at"):
        assert RFC3339_UTC.match(body[field]), (field, body[field])
    assert abs(parse_time(body["created_at"]) - before) <= CLOCK_TOLERANCE
    assert seconds_between(body["created_at"], body["expires_at"]) == DAY_S
    assert seconds_between(body["created_at"], body["max_expires_at"]) == 7 * DAY_S


async def test_create_token_is_url_safe_secret(api: Api) -> None:
    created = await api.create("u-alice.example", "dev-1")
    token = created["token"]

    assert URL_SAFE.match(token), token
    # 256 bits need at least 43 base64url characters.
    assert len(token) >= 43
    assert "alice" not in token
    assert token != created["session_id"]


async def test_create_token_validates(api: Api) -> None:
    created = await api.create("u-alice", "dev-1")

    status, body, _ = await api.validate(created["token"])

    assert status == 200, body
    assert body["session_id"] == created["session_id"]
    assert body["user_id"] == "u-alice"
    assert body["device_id"] == "dev-1"


async def test_create_session_is_listed(api: Api) -> None:
    created = await api.create("u-alice", "dev-1", client={"ip": "203.0.113.7"})

    status, body, _ = await api.manage("GET", "/v1/users/u-alice/sessions")

    assert status == 200, body
    assert [item["session_id"] for item in body["sessions"]] == [created["session_id"]]
    item = body["sessions"][0]
    assert item["created_at"] == created["created_at"]
    assert item["expires_at"] == created["expires_at"]
    assert item["max_expires_at"] == created["max_expires_at"]
    assert item["client"]["ip"] == "203.0.113.7"


async def test_create_defaults_from_policy(api: Api) -> None:
    status, body, _ = await post_create(api, {"user_id": "u-alice", "device": {"id": "dev-1"}})

    assert status == 201, body
    assert body["policy"] == "standard"
    assert body["expires_in"] == DAY_S
    assert body["extend_on_activity"] is True
    assert body["device"]["id"] == "dev-1"
    assert body["device"]["trusted"] is False
    assert seconds_between(body["created_at"], body["expires_at"]) == DAY_S
    assert seconds_between(body["created_at"], body["max_expires_at"]) == 30 * DAY_S


@pytest.mark.parametrize(
    ("policy", "expires_in", "window_s"),
    [
        pytest.param("short", "90s", 90, id="90s"),
        pytest.param("short", "5m", 300, id="5m"),
        pytest.param("standard", "24h", DAY_S, id="24h"),
        pytest.param("standard", "30d", 30 * DAY_S, id="30d"),
        pytest.param("standard", 600, 600, id="integer-seconds"),
        pytest.param("short", 1, 1, id="policy-minimum"),
        pytest.param("short", "1h", 3600, id="policy-maximum"),
    ],
)
async def test_create_duration_sets_window(api: Api, policy: str, expires_in: Any,
                                           window_s: int) -> None:
    status, body, _ = await post_create(api, {"user_id": "u-alice", "device": {"id": "dev-1"},
                                              "policy": policy, "expires_in": expires_in})

    assert status == 201, body
    assert body["expires_in"] == window_s
    assert seconds_between(body["created_at"], body["expires_at"]) == window_s


@pytest.mark.parametrize(
    ("max_lifetime", "lifetime_s"),
    [
        pytest.param("7d", 7 * DAY_S, id="7d"),
        pytest.param(2 * DAY_S, 2 * DAY_S, id="integer-seconds"),
        pytest.param("24h", DAY_S, id="equal-to-window"),
    ],
)
async def test_create_max_lifetime_sets_max_expires_at(api: Api, max_lifetime: Any,
                                                       lifetime_s: int) -> None:
    status, body, _ = await post_create(api, {"user_id": "u-alice", "device": {"id": "dev-1"},
                                              "expires_in": "24h", "max_lifetime": max_lifetime})

    assert status == 201, body
    assert seconds_between(body["created_at"], body["max_expires_at"]) == lifetime_s


async def test_create_extend_on_activity_override(api: Api) -> None:
    status, body, _ = await post_create(api, {"user_id": "u-alice", "device": {"id": "dev-1"},
                                              "extend_on_activity": False})

    assert status == 201, body
    assert body["extend_on_activity"] is False


async def test_create_extend_on_activity_policy_default(api: Api) -> None:
    status, body, _ = await post_create(api, {"user_id": "u-alice", "device": {"id": "dev-1"},
                                              "policy": "fixed"})

    assert status == 201, body
    assert body["extend_on_activity"] is False
    assert body["policy"] == "fixed"


async def test_create_metadata_allows_unknown_keys(api: Api) -> None:
    metadata = {"anything": {"nested": [1, 2, {"deep": True}]}, "x-custom": None}

    status, body, _ = await post_create(api, {"user_id": "u-alice", "device": {"id": "dev-1"},
                                              "metadata": metadata})

    assert status == 201, body
    assert await listed_ids(api, "u-alice") == [body["session_id"]]


async def test_create_user_id_of_128_chars(api: Api) -> None:
    user_id = "u" * 128

    status, body, _ = await post_create(api, {"user_id": user_id, "device": {"id": "dev-1"}})

    assert status == 201, body
    assert body["user_id"] == user_id


# -- rejected input ----------------------------------------------------------

def create_body(**changes: Any) -> dict[str, Any]:
    """Return a valid create body for BAD_USER with the given top-level fields replaced."""
    body: dict[str, Any] = {"user_id": BAD_USER, "device": {"id": "dev-1"}}
    body.update(changes)
    return body


def without(field: str) -> dict[str, Any]:
    body = create_body()
    del body[field]
    return body


def as_json(body: dict[str, Any]) -> dict[str, Any]:
    return {"json": body}


def as_raw(data: bytes, content_type: str = "application/json") -> dict[str, Any]:
    return {"data": data, "headers": {"Content-Type": content_type}}


VALID_JSON = b'{"user_id": "u-bad", "device": {"id": "dev-1"}}'

# Each case: request keyword arguments, and the words the problem detail must contain
# (the field, or for body-level errors the rule).
BAD_REQUESTS = [
    # user_id
    pytest.param(as_json(without("user_id")), ["user_id"], id="user_id-missing"),
    pytest.param(as_json(create_body(user_id="")), ["user_id"], id="user_id-empty"),
    pytest.param(as_json(create_body(user_id="u" * 129)), ["user_id"], id="user_id-129-chars"),
    pytest.param(as_json(create_body(user_id=42)), ["user_id"], id="user_id-number"),
    pytest.param(as_json(create_body(user_id=None)), ["user_id"], id="user_id-null"),
    pytest.param(as_json(create_body(user_id="u-bad\x00")), ["user_id"], id="user_id-nul"),
    pytest.param(as_json(create_body(user_id="u-bad\r")), ["user_id"], id="user_id-cr"),
    pytest.param(as_json(create_body(user_id="u-bad\n")), ["user_id"], id="user_id-lf"),
    pytest.param(as_json(create_body(user_id="u-\r\nbad")), ["user_id"], id="user_id-crlf-inside"),
    pytest.param(as_json(create_body(user_id="u-\tbad")), ["user_id"], id="user_id-tab"),
    pytest.param(as_json(create_body(user_id="u-\x1b[31mbad")), ["user_id"], id="user_id-escape"),
    pytest.param(as_json(create_body(user_id="u-bad\x7f")), ["user_id"], id="user_id-del"),
    pytest.param(as_json(create_body(user_id="u-bad\x85")), ["user_id"], id="user_id-c1-nel"),
    # device
    pytest.param(as_json(without("device")), ["device"], id="device-missing"),
    pytest.param(as_json(create_body(device="dev-1")), ["device"], id="device-string"),
    pytest.param(as_json(create_body(device={})), ["device", "id"], id="device-id-missing"),
    pytest.param(as_json(create_body(device={"id": ""})), ["device.id"], id="device-id-empty"),
    pytest.param(as_json(create_body(device={"id": "d" * 129})), ["device.id"],
                 id="device-id-129-chars"),
    pytest.param(as_json(create_body(device={"id": "dev-1", "type": "t" * 65})), ["device.type"],
                 id="device-type-65-chars"),
    pytest.param(as_json(create_body(device={"id": "dev-1", "type": "phone\x00"})), ["device.type"],
                 id="device-type-nul"),
    pytest.param(as_json(create_body(device={"id": "dev-1", "type": "phone\r"})), ["device.type"],
                 id="device-type-cr"),
    pytest.param(as_json(create_body(device={"id": "dev-1", "type": "phone\n"})), ["device.type"],
                 id="device-type-lf"),
    pytest.param(as_json(create_body(device={"id": "dev-1", "name": "n" * 129})), ["device.name"],
                 id="device-name-129-chars"),
    pytest.param(as_json(create_body(device={"id": "dev-1", "name": "Sarah\x00"})), ["device.name"],
                 id="device-name-nul"),
    pytest.param(as_json(create_body(device={"id": "dev-1", "name": "Sarah\r"})), ["device.name"],
                 id="device-name-cr"),
    pytest.param(as_json(create_body(device={"id": "dev-1", "name": "Sarah\nX-Admin: 1"})),
                 ["device.name"], id="device-name-lf"),
    # unknown fields
    pytest.param(as_json(create_body(colour="red")), ["colour"], id="unknown-top-level"),
    pytest.param(as_json(create_body(device={"id": "dev-1", "color": "red"})), ["device", "color"],
                 id="unknown-in-device"),
    pytest.param(as_json(create_body(client={"ip": "203.0.113.7", "region": "eu"})),
                 ["client", "region"], id="unknown-in-client"),
    # durations
    pytest.param(as_json(create_body(expires_in=True)), ["expires_in"], id="expires_in-bool"),
    pytest.param(as_json(create_body(expires_in=3600.5)), ["expires_in"], id="expires_in-float"),
    pytest.param(as_json(create_body(expires_in="10x")), ["expires_in"], id="expires_in-10x"),
    pytest.param(as_json(create_body(expires_in="0s")), ["expires_in"], id="expires_in-0s"),
    pytest.param(as_json(create_body(expires_in=0)), ["expires_in"], id="expires_in-zero"),
    pytest.param(as_json(create_body(expires_in=-5)), ["expires_in"], id="expires_in-negative"),
    pytest.param(as_json(create_body(expires_in="")), ["expires_in"], id="expires_in-empty"),
    pytest.param(as_json(create_body(expires_in="5 m")), ["expires_in"], id="expires_in-space"),
    pytest.param(as_json(create_body(expires_in=299)), ["expires_in"],
                 id="expires_in-below-policy-min"),
    pytest.param(as_json(create_body(expires_in="31d")), ["expires_in"],
                 id="expires_in-above-policy-max"),
    pytest.param(as_json(create_body(policy="short", expires_in="2h")), ["expires_in"],
                 id="expires_in-above-short-max"),
    pytest.param(as_json(create_body(max_lifetime="31d")), ["max_lifetime"],
                 id="max_lifetime-above-policy"),
    pytest.param(as_json(create_body(max_lifetime="forever")), ["max_lifetime"],
                 id="max_lifetime-bad-unit"),
    pytest.param(as_json(create_body(extend_on_activity="yes")), ["extend_on_activity"],
                 id="extend_on_activity-string"),
    # limits
    pytest.param(as_json(create_body(max_sessions="5")), ["max_sessions"], id="max_sessions-string"),
    pytest.param(as_json(create_body(max_sessions=2.5)), ["max_sessions"], id="max_sessions-float"),
    pytest.param(as_json(create_body(max_sessions=True)), ["max_sessions"], id="max_sessions-bool"),
    pytest.param(as_json(create_body(max_sessions=11)), ["max_sessions"],
                 id="max_sessions-above-policy"),
    pytest.param(as_json(create_body(policy="pair", max_sessions=3)), ["max_sessions"],
                 id="max_sessions-above-pair"),
    pytest.param(as_json(create_body(max_sessions=0)), ["max_sessions"], id="max_sessions-zero"),
    pytest.param(as_json(create_body(max_sessions=-1)), ["max_sessions"], id="max_sessions-negative"),
    pytest.param(as_json(create_body(on_limit="bogus")), ["on_limit"], id="on_limit-bogus"),
    pytest.param(as_json(create_body(on_limit="")), ["on_limit"], id="on_limit-empty"),
    # policy
    pytest.param(as_json(create_body(policy="nope")), ["policy"], id="policy-unknown"),
    pytest.param(as_json(create_body(policy=5)), ["policy"], id="policy-number"),
    # client
    pytest.param(as_json(create_body(client={"ip": "not-an-ip"})), ["client.ip"], id="client-ip-text"),
    pytest.param(as_json(create_body(client={"ip": "999.1.1.1"})), ["client.ip"],
                 id="client-ip-octet-range"),
    pytest.param(as_json(create_body(client={"ip": "10.0.0.0/8"})), ["client.ip"],
                 id="client-ip-network"),
    pytest.param(as_json(create_body(client="203.0.113.7")), ["client"], id="client-string"),
    # metadata
    pytest.param(as_json(create_body(metadata={"blob": "x" * 1500})), ["metadata"],
                 id="metadata-over-1kib"),
    pytest.param(as_json(create_body(metadata={f"k{i}": i for i in range(200)})), ["metadata"],
                 id="metadata-over-1kib-many-keys"),
    pytest.param(as_json(create_body(metadata=["a"])), ["metadata"], id="metadata-array"),
    # body
    pytest.param(as_raw(b'{"user_id": "u-bad\xff", "device": {"id": "dev-1"}}'), ["UTF-8"],
                 id="body-invalid-utf8"),
    pytest.param(as_raw(b'{"user_id": "u-bad", "device": {"id": "dev-\xc3"}}'), ["UTF-8"],
                 id="body-truncated-utf8"),
    pytest.param(as_raw(b'{"user_id": "u-bad", "device": {"id": "dev-1"}'), ["JSON"],
                 id="body-unclosed-json"),
    pytest.param(as_raw(VALID_JSON + b" x"), ["JSON"], id="body-trailing-garbage"),
    pytest.param(as_raw(b"{'user_id': 'u-bad'}"), ["JSON"], id="body-single-quotes"),
    pytest.param(as_raw(b""), ["body"], id="body-empty"),
    pytest.param(as_raw(b"[]"), ["object"], id="body-array"),
    pytest.param(as_raw(b'"u-bad"'), ["object"], id="body-string"),
    pytest.param(as_raw(b"null"), ["object"], id="body-null"),
    pytest.param(as_raw(b"42"), ["object"], id="body-number"),
    pytest.param(as_raw(VALID_JSON, "text/plain"), ["Content-Type"], id="content-type-text"),
    pytest.param(as_raw(b"user_id=u-bad", "application/x-www-form-urlencoded"), ["Content-Type"],
                 id="content-type-form"),
]


@pytest.mark.parametrize(("request_kwargs", "named"), BAD_REQUESTS)
async def test_create_bad_input_rejected(api: Api, redis: aioredis.Redis,
                                         request_kwargs: dict[str, Any], named: list[str]) -> None:
    status, body, headers = await api.manage("POST", "/v1/sessions", **copy.deepcopy(request_kwargs))

    assert_problem(status, body, headers, 400, "invalid_request")
    for word in named:
        assert word in body["detail"], body["detail"]
    assert await stored_keys(redis) == []
    assert await listed_ids(api, BAD_USER) == []


async def oversized_chunks(size: int) -> AsyncIterator[bytes]:
    yield b'{"user_id": "u-bad", "device": {"id": "dev-1"}, "metadata": {"blob": "'
    for _ in range(size // 4096):
        yield b"x" * 4096
    yield b'"}}'


@pytest.mark.parametrize("chunked", [pytest.param(False, id="content-length"),
                                     pytest.param(True, id="chunked")])
async def test_create_oversized_body_rejected(api: Api, redis: aioredis.Redis, chunked: bool) -> None:
    # The default body limit is 16 KiB, so 64 KiB is over it with either framing.
    size = 64 * 1024
    if chunked:
        data: Any = oversized_chunks(size)
    else:
        data = create_body(metadata={"blob": "x" * size})
    kwargs: dict[str, Any] = {"data": data} if chunked else {"json": data}

    status, body, headers = await api.manage("POST", "/v1/sessions",
                                             headers={"Content-Type": "application/json"}, **kwargs)

    assert_problem(status, body, headers, 413, "payload_too_large")
    assert await stored_keys(redis) == []
    assert await listed_ids(api, BAD_USER) == []


# -- same-device replacement -------------------------------------------------

async def test_create_same_device_replaces(api: Api) -> None:
    first = await api.create("u-alice", "dev-1")

    second = await api.create("u-alice", "dev-1")

    assert second["replaced"] == [first["session_id"]]
    assert second["evicted"] == []
    assert second["session_id"] != first["session_id"]
    assert await listed_ids(api, "u-alice") == [second["session_id"]]


async def test_create_replaced_token_revoked(api: Api) -> None:
    first = await api.create("u-alice", "dev-1")
    await api.create("u-alice", "dev-1")

    status, body, headers = await api.validate(first["token"])

    assert_problem(status, body, headers, 401, "session_revoked")


async def test_create_other_device_not_replaced(api: Api) -> None:
    first = await api.create("u-alice", "dev-1")

    second = await api.create("u-alice", "dev-2")

    assert second["replaced"] == []
    status, _, _ = await api.validate(first["token"])
    assert status == 200


async def test_create_same_device_other_user_not_replaced(api: Api) -> None:
    alice = await api.create("u-alice", "dev-shared")

    bob = await api.create("u-bob", "dev-shared")

    assert bob["replaced"] == []
    assert await listed_ids(api, "u-alice") == [alice["session_id"]]


# -- concurrent session limit --------------------------------------------------

# Policy "short" has a 3 s default window and accepts 1 s .. 1 h. A 20 s window
# makes activity throttling write any extension of at least 200 ms (1/100 of the
# window), so a validation 0.5 s after creation is recorded as activity.
LRU_FIELDS = {"policy": "short", "expires_in": 20, "max_sessions": 2, "on_limit": "evict_oldest"}


async def test_create_evicts_oldest_without_activity(api: Api) -> None:
    oldest = await api.create("u-alice", "dev-1", **LRU_FIELDS)
    newer = await api.create("u-alice", "dev-2", **LRU_FIELDS)

    third = await api.create("u-alice", "dev-3", **LRU_FIELDS)

    assert third["evicted"] == [oldest["session_id"]]
    assert third["replaced"] == []
    assert set(await listed_ids(api, "u-alice")) == {newer["session_id"], third["session_id"]}


async def test_create_evicts_least_recently_active(api: Api) -> None:
    older = await api.create("u-alice", "dev-1", **LRU_FIELDS)
    idle = await api.create("u-alice", "dev-2", **LRU_FIELDS)
    await asyncio.sleep(0.5)
    status, _, _ = await api.validate(older["token"])
    assert status == 200

    third = await api.create("u-alice", "dev-3", **LRU_FIELDS)

    assert third["evicted"] == [idle["session_id"]]
    assert set(await listed_ids(api, "u-alice")) == {older["session_id"], third["session_id"]}


async def test_create_evicted_token_revoked(api: Api) -> None:
    oldest = await api.create("u-alice", "dev-1", **LRU_FIELDS)
    await api.create("u-alice", "dev-2", **LRU_FIELDS)
    await api.create("u-alice", "dev-3", **LRU_FIELDS)

    status, body, headers = await api.validate(oldest["token"])

    assert_problem(status, body, headers, 401, "session_revoked")


async def test_create_evicts_down_to_lower_limit(api: Api) -> None:
    sessions = [await api.create("u-alice", f"dev-{i}", policy="small") for i in range(3)]

    created = await api.create("u-alice", "dev-new", policy="small", max_sessions=1)

    assert set(created["evicted"]) == {s["session_id"] for s in sessions}
    assert await listed_ids(api, "u-alice") == [created["session_id"]]


async def test_create_reject_when_full(api: Api) -> None:
    first = await api.create("u-alice", "dev-1", policy="pair")
    second = await api.create("u-alice", "dev-2", policy="pair")

    status, body, headers = await post_create(api, {"user_id": "u-alice", "device": {"id": "dev-3"},
                                                    "policy": "pair"})

    assert_problem(status, body, headers, 409, "session_limit_reached")
    assert body["title"] == "Session limit reached"
    assert body["detail"] == "user u-alice has 2 of 2 sessions and the policy is reject"
    assert set(await listed_ids(api, "u-alice")) == {first["session_id"], second["session_id"]}


async def test_create_reject_keeps_existing_tokens(api: Api) -> None:
    first = await api.create("u-alice", "dev-1", policy="pair")
    await api.create("u-alice", "dev-2", policy="pair")
    status, _, _ = await post_create(api, {"user_id": "u-alice", "device": {"id": "dev-3"},
                                           "policy": "pair"})
    assert status == 409

    status, body, _ = await api.validate(first["token"])

    assert status == 200, body


async def test_create_reject_request_override(api: Api) -> None:
    await api.create("u-alice", "dev-1", max_sessions=1, on_limit="reject")

    status, body, headers = await post_create(api, {"user_id": "u-alice", "device": {"id": "dev-2"},
                                                    "max_sessions": 1, "on_limit": "reject"})

    assert_problem(status, body, headers, 409, "session_limit_reached")


async def test_create_reject_full_same_device_replaces(api: Api) -> None:
    first = await api.create("u-alice", "dev-1", policy="pair")
    second = await api.create("u-alice", "dev-2", policy="pair")

    again = await api.create("u-alice", "dev-1", policy="pair")

    assert again["replaced"] == [first["session_id"]]
    assert set(await listed_ids(api, "u-alice")) == {second["session_id"], again["session_id"]}


# -- concurrency ---------------------------------------------------------------

BURST = 20


async def create_burst(apis: list[Api], user_id: str, policy: str) -> list[tuple[int, Any]]:
    """Send BURST creates for distinct devices at once, spread over the given services."""
    async def create_for_device(index: int) -> tuple[int, Any]:
        api = apis[index % len(apis)]
        status, body, _ = await post_create(api, {"user_id": user_id, "device": {"id": f"dev-{index}"},
                                                  "policy": policy})
        return status, body

    return list(await asyncio.gather(*(create_for_device(i) for i in range(BURST))))


async def test_create_concurrent_reject_limit(api: Api) -> None:
    results = await create_burst([api], "u-burst", "strict")

    created = {body["session_id"] for status, body in results if status == 201}
    statuses = [status for status, _ in results]
    assert statuses.count(201) == 5
    assert statuses.count(409) == 15
    assert set(await listed_ids(api, "u-burst")) == created
    assert len(await listed_ids(api, "u-burst")) == 5


async def test_create_concurrent_reject_two_instances(make_service: ServiceFactory) -> None:
    first = await make_service()
    second = await make_service()

    results = await create_burst([first, second], "u-burst", "pair")

    created = {body["session_id"] for status, body in results if status == 201}
    statuses = [status for status, _ in results]
    assert statuses.count(201) == 2
    assert statuses.count(409) == 18
    assert set(await listed_ids(first, "u-burst")) == created
    assert len(await listed_ids(second, "u-burst")) == 2


async def test_create_concurrent_rejects_are_problems(api: Api) -> None:
    results = await create_burst([api], "u-burst", "pair")

    codes = [body["code"] for status, body in results if status == 409]
    assert codes == ["session_limit_reached"] * 18


async def list_size(api: Api, user_id: str) -> int:
    status, body, _ = await api.manage("GET", f"/v1/users/{user_id}/sessions")
    assert status == 200, body
    return len(body["sessions"])


async def poll_list_sizes(api: Api, user_id: str, started: asyncio.Event, done: asyncio.Event,
                          max_polls: int) -> list[int]:
    """List the user's sessions one request after another until done is set or
    max_polls is reached; set started after the first list."""
    sizes = []
    for _ in range(max_polls):
        sizes.append(await list_size(api, user_id))
        started.set()
        if done.is_set():
            break
    return sizes


async def test_create_concurrent_evict_never_over_limit(make_service: ServiceFactory) -> None:
    apis = [await make_service(), await make_service()]
    done = asyncio.Event()
    pollers = []
    for index in range(4):
        started = asyncio.Event()
        pollers.append(asyncio.create_task(
            poll_list_sizes(apis[index % 2], "u-burst", started, done, 500)))
        await started.wait()

    try:
        results = await create_burst(apis, "u-burst", "small")
    finally:
        done.set()
    sizes = [size for poller in pollers for size in await poller]

    statuses = [status for status, _ in results]
    assert statuses.count(201) == BURST
    assert max(sizes) <= 3
    assert await list_size(apis[0], "u-burst") == 3


async def test_create_concurrent_evictions_reported_once(make_service: ServiceFactory) -> None:
    first = await make_service()
    second = await make_service()

    results = await create_burst([first, second], "u-burst", "small")

    created = {body["session_id"] for _, body in results}
    evicted = [sid for _, body in results for sid in body["evicted"]]
    remaining = set(await listed_ids(first, "u-burst"))
    assert len(evicted) == BURST - 3
    assert set(evicted) == created - remaining


# -- management authentication ---------------------------------------------------

MANAGEMENT_ENDPOINTS = [
    pytest.param("POST", "/v1/sessions", id="create"),
    pytest.param("GET", "/v1/sessions/sess_AAAAAAAAAAAAAAAAAAAAAAAA", id="get-session"),
    pytest.param("DELETE", "/v1/sessions/sess_AAAAAAAAAAAAAAAAAAAAAAAA", id="revoke-session"),
    pytest.param("GET", "/v1/users/u-alice/sessions", id="list-sessions"),
    pytest.param("DELETE", "/v1/users/u-alice/sessions", id="revoke-user-sessions"),
    pytest.param("PUT", "/v1/users/u-alice/devices/dev-1", id="trust-device"),
    pytest.param("GET", "/v1/users/u-alice/devices", id="list-devices"),
    pytest.param("GET", "/v1/users/u-alice/events", id="list-events"),
]


def body_for(method: str, path: str) -> dict[str, Any]:
    if method == "POST":
        return {"json": create_body(user_id="u-alice")}
    if method == "PUT":
        return {"json": {"trusted": True}}
    return {}


@pytest.mark.parametrize(("method", "path"), MANAGEMENT_ENDPOINTS)
async def test_auth_missing_key_rejected(api: Api, method: str, path: str) -> None:
    status, body, headers = await api.request(method, path, **body_for(method, path))

    assert_problem(status, body, headers, 401, "unauthorized")


@pytest.mark.parametrize(("method", "path"), MANAGEMENT_ENDPOINTS)
async def test_auth_wrong_key_rejected(api: Api, method: str, path: str) -> None:
    status, body, headers = await api.request(method, path, api_key=API_KEY + "x",
                                              **body_for(method, path))

    assert_problem(status, body, headers, 401, "unauthorized")


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(f"Basic {base64.b64encode(f'{API_KEY}:'.encode()).decode()}", id="basic-scheme"),
        pytest.param(API_KEY, id="no-scheme"),
        pytest.param(f"Token {API_KEY}", id="token-scheme"),
        pytest.param(f"Bearer {API_KEY[:-1]}", id="key-prefix"),
        pytest.param(f"Bearer {API_KEY.upper()}", id="key-other-case"),
        pytest.param("Bearer ", id="empty-credential"),
    ],
)
async def test_auth_malformed_header_rejected(api: Api, redis: aioredis.Redis,
                                              authorization: str) -> None:
    status, body, headers = await api.request("POST", "/v1/sessions",
                                              headers={"Authorization": authorization},
                                              json=create_body())

    assert_problem(status, body, headers, 401, "unauthorized")
    assert await stored_keys(redis) == []


async def test_auth_missing_key_writes_nothing(api: Api, redis: aioredis.Redis) -> None:
    status, _, _ = await api.request("POST", "/v1/sessions", json=create_body())

    assert status == 401
    assert await stored_keys(redis) == []


async def test_auth_checked_before_body(api: Api) -> None:
    status, body, headers = await api.request("POST", "/v1/sessions", data=b"not json",
                                              headers={"Content-Type": "application/json"})

    assert_problem(status, body, headers, 401, "unauthorized")


async def test_auth_session_token_rejected(api: Api, redis: aioredis.Redis) -> None:
    created = await api.create("u-alice", "dev-1")

    status, body, headers = await api.request("POST", "/v1/sessions", api_key=created["token"],
                                              json=create_body(user_id="u-mallory"))

    assert_problem(status, body, headers, 401, "unauthorized")
    assert await listed_ids(api, "u-mallory") == []


async def test_auth_session_token_cannot_list(api: Api) -> None:
    created = await api.create("u-alice", "dev-1")

    status, body, headers = await api.request("GET", "/v1/users/u-alice/sessions",
                                              api_key=created["token"])

    assert_problem(status, body, headers, 401, "unauthorized")


@pytest.mark.parametrize("parameter", ["api_key", "access_token", "key", "token"])
async def test_auth_key_in_query_ignored(api: Api, redis: aioredis.Redis, parameter: str) -> None:
    status, body, headers = await api.request("POST", f"/v1/sessions?{parameter}={API_KEY}",
                                              json=create_body())

    assert_problem(status, body, headers, 401, "unauthorized")
    assert await stored_keys(redis) == []


@pytest.mark.parametrize("parameter", ["api_key", "access_token"])
async def test_auth_key_in_query_ignored_on_list(api: Api, parameter: str) -> None:
    status, body, headers = await api.request("GET", f"/v1/users/u-alice/sessions?{parameter}={API_KEY}")

    assert_problem(status, body, headers, 401, "unauthorized")


ENV_KEYS = ("env-key-one-0123456789", "env-key-two-0123456789")


@pytest.mark.parametrize("key", ENV_KEYS)
async def test_auth_env_keys_accepted(make_service: ServiceFactory, key: str) -> None:
    api = await make_service(config_without_api_keys(),
                             environ={"SESSION_STORE_API_KEYS": f"{ENV_KEYS[0]}, {ENV_KEYS[1]}"})

    status, body, _ = await api.request("POST", "/v1/sessions", api_key=key,
                                        json=create_body(user_id="u-alice"))

    assert status == 201, body


async def test_auth_env_keys_only(make_service: ServiceFactory) -> None:
    api = await make_service(config_without_api_keys(),
                             environ={"SESSION_STORE_API_KEYS": ",".join(ENV_KEYS)})

    status, body, headers = await api.request("POST", "/v1/sessions", api_key=API_KEY,
                                              json=create_body(user_id="u-alice"))

    assert_problem(status, body, headers, 401, "unauthorized")


async def test_auth_no_keys_configured_rejects(make_service: ServiceFactory,
                                               redis: aioredis.Redis) -> None:
    api = await make_service(config_without_api_keys(), environ={})

    status, body, headers = await api.request("POST", "/v1/sessions", api_key=API_KEY,
                                              json=create_body(user_id="u-alice"))

    assert_problem(status, body, headers, 401, "unauthorized")
    assert await stored_keys(redis) == []


async def test_create_max_lifetime_below_window_caps_expiry(api: Api) -> None:
    created = await api.create("u-cap", "dev-1", expires_in="1h", max_lifetime="30m")

    # A lower max_lifetime is within the policy's bounds; expires_at stops at it.
    assert created["expires_in"] == 3600
    assert created["expires_at"] == created["max_expires_at"]
