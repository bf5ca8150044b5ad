"""GET /v1/validate, GET /v1/me/session and POST /v1/me/session/extend against a real Redis.

The time checks compare wall-clock readings of this process with times
the service took from the Redis server's clock. Both run on this host, so
they share one clock.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from datetime import UTC, datetime
from typing import Any, NamedTuple

import pytest
import redis.asyncio as aioredis

from service.keys import UserKeys, user_keys
from service.records import SessionRecord, decode_session
from service.tokens import parse_session_id
from tests.conftest import Api, ServiceFactory

# service.expiry_grace in TEST_CONFIG: how long a record outlives expires_at.
GRACE_MS = 5_000
# The default service.device_retention, which TEST_CONFIG does not change.
DEVICE_RETENTION_MS = 90 * 86_400 * 1000
EVENT_RETENTION_MS = 30 * 86_400_000
MAX_LIFETIME_MS = 30 * 86_400_000
KEY_PREFIX = "ss:"
WWW_AUTHENTICATE = 'Bearer error="invalid_token"'
PROBLEM_FIELDS = {"type", "title", "status", "detail", "code"}
# Tolerance in seconds for the moment a session expires or reaches its max lifetime.
TOLERANCE_S = 1.0


class Sample(NamedTuple):
    """One self-service call, timed with the wall clock in seconds."""

    started: float
    finished: float
    status: int
    code: str | None


# -- helpers -----------------------------------------------------------------

def session_keys(session_id: str) -> tuple[UserKeys, str]:
    """Return the user's keys and the sid within the user for a session id."""
    ref = parse_session_id(session_id)
    assert ref is not None, session_id
    return user_keys(KEY_PREFIX, ref.tag), ref.sid


async def raw_record(redis: aioredis.Redis, session_id: str) -> bytes | None:
    keys, sid = session_keys(session_id)
    return await redis.hget(keys.sessions, sid)


async def read_record(redis: aioredis.Redis, session_id: str) -> SessionRecord:
    raw = await raw_record(redis, session_id)
    assert raw is not None, f"no record for {session_id}"
    return decode_session(raw)


def epoch_s(text: str) -> int:
    """Parse an RFC 3339 UTC time of the API (whole seconds, Z suffix)."""
    parsed = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return int(parsed.timestamp())


def assert_rejected(response: tuple[int, Any, Any], code: str) -> None:
    """Check that a self-service response is a 401 with its challenge and a problem body."""
    status, body, headers = response
    assert status == 401
    assert headers.get("WWW-Authenticate") == WWW_AUTHENTICATE
    assert headers.get("Content-Type", "").startswith("application/problem+json")
    assert isinstance(body, dict)
    assert PROBLEM_FIELDS <= set(body)
    assert body["status"] == 401
    assert body["code"] == code


async def timed_call(api: Api, method: str, path: str, token: str) -> Sample:
    started = time.time()
    status, body, _ = await api.request(method, path, token=token)
    code = body.get("code") if isinstance(body, dict) else None
    return Sample(started, time.time(), status, code)


async def sleep_until(wall_s: float) -> None:
    await asyncio.sleep(max(0.0, wall_s - time.time()))


async def validate_every(api: Api, token: str, interval_s: float, until_s: float) -> list[Sample]:
    """Validate on a fixed schedule until the first rejection or the wall time until_s."""
    samples: list[Sample] = []
    begin = time.time()
    step = 0
    while time.time() < until_s:
        sample = await timed_call(api, "GET", "/v1/validate", token)
        samples.append(sample)
        if sample.status != 200:
            break
        step += 1
        await sleep_until(begin + step * interval_s)
    return samples


def random_token() -> str:
    """Return a well-formed token (tag, sid, '.', secret) of no session."""
    return f"{secrets.token_urlsafe(12)}{secrets.token_urlsafe(6)}.{secrets.token_urlsafe(32)}"


async def all_keys(redis: aioredis.Redis, match: str = "*") -> list[bytes]:
    return [key async for key in redis.scan_iter(match=match, count=1000)]


# -- successful validation -----------------------------------------------------

async def test_validate_success_body_and_headers(api: Api) -> None:
    created = await api.create("u-1", "dev-1")

    status, body, headers = await api.validate(created["token"])

    assert status == 200
    assert body["valid"] is True
    assert body["session_id"] == created["session_id"]
    assert body["user_id"] == "u-1"
    assert body["device_id"] == "dev-1"
    # The default policy is standard (24 h): a validation right after the
    # create moves expires_at by less than the write threshold.
    assert body["expires_at"] == created["expires_at"]
    assert body["expires_in"] in (86_399, 86_400)
    assert headers["X-Session-Id"] == created["session_id"]
    assert headers["X-User-Id"] == "u-1"
    assert headers["X-Device-Id"] == "dev-1"
    assert headers["X-Session-Expires-At"] == body["expires_at"]
    assert headers["Cache-Control"] == "no-store"


# -- where the token comes from ------------------------------------------------

@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_validate_bearer_scheme_any_case(api: Api, scheme: str) -> None:
    created = await api.create()

    status, body, _ = await api.request(
        "GET", "/v1/validate", headers={"Authorization": f"{scheme} {created['token']}"})

    assert status == 200
    assert body["session_id"] == created["session_id"]


async def test_validate_session_cookie(api: Api) -> None:
    created = await api.create()

    status, body, _ = await api.request(
        "GET", "/v1/validate", headers={"Cookie": f"session={created['token']}"})

    assert status == 200
    assert body["session_id"] == created["session_id"]


async def test_validate_cookie_garbage_then_valid(api: Api) -> None:
    created = await api.create()
    cookie = f"session=garbage; session={created['token']}"

    status, body, _ = await api.request("GET", "/v1/validate", headers={"Cookie": cookie})

    assert status == 200
    assert body["session_id"] == created["session_id"]


async def test_validate_cookie_revoked_then_valid(api: Api) -> None:
    revoked = await api.create("u-1", "dev-1")
    live = await api.create("u-1", "dev-2")
    status, _, _ = await api.manage("DELETE", f"/v1/sessions/{revoked['session_id']}")
    assert status == 204
    cookie = f"session={revoked['token']}; session={live['token']}"

    status, body, _ = await api.request("GET", "/v1/validate", headers={"Cookie": cookie})

    assert status == 200
    assert body["session_id"] == live["session_id"]


async def test_validate_cookie_first_valid_wins(api: Api) -> None:
    first = await api.create("u-1", "dev-1")
    second = await api.create("u-1", "dev-2")
    cookie = f"session={first['token']}; session={second['token']}"

    status, body, _ = await api.request("GET", "/v1/validate", headers={"Cookie": cookie})

    assert status == 200
    assert body["session_id"] == first["session_id"]


async def test_validate_no_token(api: Api) -> None:
    response = await api.request("GET", "/v1/validate")

    assert_rejected(response, "invalid_token")


async def test_validate_malformed_bearer(api: Api) -> None:
    response = await api.validate("not-a-token")

    assert_rejected(response, "invalid_token")


async def test_validate_malformed_cookie(api: Api) -> None:
    response = await api.request("GET", "/v1/validate", headers={"Cookie": "session=not-a-token"})

    assert_rejected(response, "invalid_token")


# -- rejection codes -----------------------------------------------------------

async def test_validate_unknown_token(api: Api) -> None:
    await api.create()

    response = await api.validate(random_token())

    assert_rejected(response, "invalid_token")


async def test_validate_wrong_secret(api: Api) -> None:
    created = await api.create()
    session_part = created["token"].split(".")[0]

    response = await api.validate(f"{session_part}.{secrets.token_urlsafe(32)}")

    assert_rejected(response, "invalid_token")


async def test_validate_revoked(api: Api) -> None:
    created = await api.create()
    status, _, _ = await api.manage("DELETE", f"/v1/sessions/{created['session_id']}")
    assert status == 204

    response = await api.validate(created["token"])

    assert_rejected(response, "session_revoked")


async def test_validate_replaced(api: Api) -> None:
    old = await api.create("u-1", "dev-1")
    new = await api.create("u-1", "dev-1")
    assert new["replaced"] == [old["session_id"]]

    response = await api.validate(old["token"])

    assert_rejected(response, "session_revoked")
    status, _, _ = await api.validate(new["token"])
    assert status == 200


@pytest.mark.slow
async def test_validate_expired(api: Api, redis: aioredis.Redis) -> None:
    created = await api.create(policy="short", expires_in=1)
    record = await read_record(redis, created["session_id"])
    await sleep_until(record.expires_ms / 1000 + 0.3)

    response = await api.validate(created["token"])

    assert_rejected(response, "session_expired")


# -- the extend query parameter ------------------------------------------------

async def test_validate_extend_false_keeps_expiry(api: Api, redis: aioredis.Redis) -> None:
    # A 3 s window writes an activity extension for moves of 30 ms or more,
    # so after 200 ms a counted validation would rewrite the record.
    created = await api.create(policy="short")
    before = await raw_record(redis, created["session_id"])
    await asyncio.sleep(0.2)

    status, body, _ = await api.request("GET", "/v1/validate?extend=false", token=created["token"])

    assert status == 200
    assert body["expires_at"] == created["expires_at"]
    assert await raw_record(redis, created["session_id"]) == before


async def test_validate_extend_invalid_value(api: Api) -> None:
    created = await api.create()

    status, body, _ = await api.request("GET", "/v1/validate?extend=maybe", token=created["token"])

    assert status == 400
    assert PROBLEM_FIELDS <= set(body)
    assert body["code"] == "invalid_request"


# -- sliding expiry ------------------------------------------------------------

@pytest.mark.slow
async def test_validate_sliding_outlives_window(api: Api, redis: aioredis.Redis) -> None:
    created = await api.create(policy="short")
    first_expires_s = (await read_record(redis, created["session_id"])).expires_ms / 1000

    samples = await validate_every(api, created["token"], 0.5, first_expires_s + 2.0)

    assert [s for s in samples if s.status != 200] == []
    assert samples[-1].started > first_expires_s + TOLERANCE_S


@pytest.mark.slow
async def test_validate_fixed_dies_at_window(api: Api, redis: aioredis.Redis) -> None:
    created = await api.create(policy="fixed")
    expires_s = (await read_record(redis, created["session_id"])).expires_ms / 1000

    samples = await validate_every(api, created["token"], 0.5, expires_s + 3.0)

    rejected = [s for s in samples if s.status != 200]
    assert len(rejected) == 1
    assert rejected[0].status == 401
    assert rejected[0].code == "session_expired"
    assert rejected[0].finished >= expires_s - TOLERANCE_S
    assert rejected[0].started <= expires_s + TOLERANCE_S


async def ttl_excess(redis: aioredis.Redis, keys: UserKeys,
                     max_expires_ms: int) -> list[tuple[bytes, int]]:
    """Return (key, PTTL) of every session key of the user that has no TTL or
    expires after max_expires_at + grace. The device registry, event stream
    and creation counter are per-user keys with their own retention."""
    per_user = {keys.devices.encode(), keys.events.encode(), keys.creations.encode(),
                keys.markers.encode()}
    names = [k for k in await all_keys(redis, f"{keys.index[:-1]}*") if k not in per_user]
    # TIME is read before PTTL, so now_ms + PTTL never overstates a key's expiry
    # time. (A cluster client refuses TIME inside a pipeline.)
    seconds, micros = await redis.time()
    ttls = [await redis.pttl(name) for name in names]
    now_ms = seconds * 1000 + micros // 1000
    limit_ms = max_expires_ms - now_ms + GRACE_MS
    pairs = zip(names, ttls, strict=True)
    return [(name, ttl) for name, ttl in pairs if ttl == -1 or ttl > limit_ms]


@pytest.mark.slow
async def test_validate_capped_dies_at_max_lifetime(api: Api, redis: aioredis.Redis) -> None:
    created = await api.create(policy="capped")
    record = await read_record(redis, created["session_id"])
    max_expires_s = record.max_expires_ms / 1000
    keys, _ = session_keys(created["session_id"])

    samples: list[Sample] = []
    excess: list[tuple[bytes, int]] = []
    begin = time.time()
    for step in range(1, 40):
        sample = await timed_call(api, "GET", "/v1/validate", created["token"])
        samples.append(sample)
        excess += await ttl_excess(redis, keys, record.max_expires_ms)
        if sample.status != 200 or time.time() > max_expires_s + 3.0:
            break
        await sleep_until(begin + step * 0.5)

    assert excess == []
    rejected = [s for s in samples if s.status != 200]
    assert len(rejected) == 1
    assert rejected[0].status == 401
    assert rejected[0].code == "session_expired"
    assert rejected[0].finished >= max_expires_s - TOLERANCE_S
    assert rejected[0].started <= max_expires_s + TOLERANCE_S


# -- write throttling ----------------------------------------------------------

async def test_validate_throttles_extension_writes(api: Api, redis: aioredis.Redis) -> None:
    # With a 1 h window an activity write needs a move of at least 36 s.
    created = await api.create(policy="standard", expires_in="1h")
    keys, sid = session_keys(created["session_id"])
    first_status, _, _ = await api.validate(created["token"])
    after_first = await redis.hget(keys.sessions, sid)
    ttl_after_first = await redis.pttl(keys.sessions)

    second_status, _, _ = await api.validate(created["token"])

    assert first_status == 200
    assert second_status == 200
    assert await redis.hget(keys.sessions, sid) == after_first
    assert await redis.pttl(keys.sessions) <= ttl_after_first


async def test_validate_skips_activity_write_of_newest(
        api: Api, redis: aioredis.Redis) -> None:
    older = await api.create("u-activity", "dev-older")
    newest = await api.create("u-activity", "dev-newest")
    keys, sid = session_keys(newest["session_id"])
    _, older_sid = session_keys(older["session_id"])
    score_at_sign_in = await redis.zscore(keys.index, sid)

    statuses = [(await api.validate(newest["token"]))[0] for _ in range(3)]

    # Within 1 s of its last write the newest session's score stays put.
    assert statuses == [200, 200, 200]
    assert await redis.zscore(keys.index, sid) == score_at_sign_in
    assert await redis.zrevrange(keys.index, 0, -1) == [sid.encode(), older_sid.encode()]


# -- the deadline itself -------------------------------------------------------

@pytest.mark.slow
async def test_validate_hammer_across_deadline(api: Api, redis: aioredis.Redis) -> None:
    created = await api.create(policy="fixed")
    expires_s = (await read_record(redis, created["session_id"])).expires_ms / 1000
    stop_s = expires_s + 1.5
    samples: list[Sample] = []

    async def worker() -> None:
        # 8 workers, at most 20000 requests, ending 1.5 s after expires_at;
        # each pauses 2 ms between requests so the cap is not reached early.
        while time.time() < stop_s and len(samples) < 20000:
            samples.append(await timed_call(api, "GET", "/v1/validate", created["token"]))
            await asyncio.sleep(0.002)

    await sleep_until(expires_s - 1.5)
    await asyncio.gather(*(worker() for _ in range(8)))

    assert [s for s in samples if s.status >= 500] == []
    assert {s.status for s in samples} == {200, 401}
    assert {s.code for s in samples if s.status == 401} == {"session_expired"}
    assert [s for s in samples if s.status == 401 and s.finished < expires_s - TOLERANCE_S] == []
    assert [s for s in samples if s.status == 200 and s.started > expires_s + TOLERANCE_S] == []
    first_rejection_s = min(s.finished for s in samples if s.status == 401)
    assert [s for s in samples if s.status == 200 and s.started > first_rejection_s] == []


# -- TTL units -----------------------------------------------------------------

@pytest.mark.parametrize(("expires_in", "window_s"),
                         [("5m", 300), ("1d", 86_400), ("30d", 2_592_000)])
async def test_validate_key_ttls_within_window(api: Api, redis: aioredis.Redis, expires_in: str,
                                               window_s: int) -> None:
    created = await api.create(policy="standard", expires_in=expires_in)
    status, _, _ = await api.validate(created["token"])
    assert status == 200
    keys, sid = session_keys(created["session_id"])

    found = set(await all_keys(redis))
    ttls = {key: await redis.pttl(key) for key in found}

    # Per-user keys with their own documented retention: the device
    # registry, the event stream and the one-minute creation counter. The
    # global event stream is capped in length and has no TTL.
    per_user = {keys.devices.encode(), keys.events.encode(), keys.creations.encode(),
                keys.markers.encode()}
    # The global event stream is written in the background and may not exist yet.
    assert found - {b"ss:events"} == {keys.sessions.encode(), keys.index.encode(), *per_user}
    # The markers hash answers session_expired and session_revoked until max_expires_at.
    assert 0 < ttls[keys.markers.encode()] <= MAX_LIFETIME_MS
    assert 0 < ttls[keys.sessions.encode()] <= (window_s * 1000 + GRACE_MS)
    assert 0 < ttls[keys.index.encode()] <= (window_s * 1000 + GRACE_MS)
    assert 0 < ttls[keys.devices.encode()] <= DEVICE_RETENTION_MS
    assert 0 < ttls[keys.events.encode()] <= EVENT_RETENTION_MS
    assert 0 < ttls[keys.creations.encode()] <= 60_000
    assert epoch_s(created["expires_at"]) - epoch_s(created["created_at"]) == window_s


# -- revoke during concurrent validations --------------------------------------

async def test_validate_revoke_under_concurrent_load(make_service: ServiceFactory,
                                                     redis: aioredis.Redis) -> None:
    instances = [await make_service(), await make_service()]
    created = await instances[0].create("u-race", "dev-1")
    token, session_id = created["token"], created["session_id"]
    keys, sid = session_keys(session_id)
    samples: list[Sample] = []
    load_running = asyncio.Event()

    async def validate_later(api: Api, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        samples.append(await timed_call(api, "GET", "/v1/validate", token))
        if len(samples) == 10:
            load_running.set()

    # 200 validations on alternating instances: 100 at once, then 100 more
    # starting 4 ms apart, so some start after the revoke has returned.
    delays = [0.0] * 100 + [i * 0.004 for i in range(100)]
    tasks = [asyncio.create_task(validate_later(instances[i % 2], delay))
             for i, delay in enumerate(delays)]
    await asyncio.wait_for(load_running.wait(), timeout=30)
    revoke_sent = time.time()
    status, _, _ = await instances[1].manage("DELETE", f"/v1/sessions/{session_id}")
    revoked_at = time.time()
    # On a loaded machine the delayed ones may all have started already, so
    # 20 more start now, certainly after the revoke returned.
    tasks += [asyncio.create_task(validate_later(instances[i % 2], 0.0)) for i in range(20)]
    await asyncio.gather(*tasks)

    overlapping = [s for s in samples if s.started < revoked_at and s.finished > revoke_sent]
    after = [s for s in samples if s.started > revoked_at]
    assert status == 204
    assert overlapping != [], "no validation was in flight during the revoke"
    assert after != [], "no validation started after the revoke returned"
    assert [s for s in after if s.status != 401] == []
    assert [s for s in samples if s.status not in (200, 401)] == []

    remaining = {key for key in await all_keys(redis) if sid.encode() in key}
    assert remaining == set()
    assert not await redis.hexists(keys.sessions, sid)
    # Only the marker is left, a field of the user's markers hash.
    assert await redis.hexists(keys.markers, sid)
    assert await redis.zscore(keys.index, sid) is None
    devices = await redis.hgetall(keys.devices)
    assert [entry for entry in devices.values() if sid.encode() in entry] == []

    for api in instances:
        assert_rejected(await api.validate(token), "session_revoked")


# -- explicit extension --------------------------------------------------------

async def test_extend_fixed_session_moves_expiry(api: Api, redis: aioredis.Redis) -> None:
    created = await api.create(policy="fixed")
    before_ms = (await read_record(redis, created["session_id"])).expires_ms
    await asyncio.sleep(0.1)

    status, body, headers = await api.request("POST", "/v1/me/session/extend",
                                              token=created["token"])

    assert status == 200
    assert body["extended"] is True
    assert (await read_record(redis, created["session_id"])).expires_ms > before_ms
    assert epoch_s(body["expires_at"]) >= epoch_s(created["expires_at"])
    assert body["expires_in"] in (2, 3)
    assert headers["Cache-Control"] == "no-store"


@pytest.mark.slow
async def test_extend_capped_stops_at_max_lifetime(api: Api, redis: aioredis.Redis) -> None:
    created = await api.create(policy="capped")
    created_s = (await read_record(redis, created["session_id"])).created_ms / 1000

    answers = []
    for second in range(1, 6):
        await sleep_until(created_s + second)
        answers.append(await api.request("POST", "/v1/me/session/extend", token=created["token"]))

    assert [status for status, _, _ in answers] == [200] * 5
    assert answers[0][1]["extended"] is True
    # From 3 s on, now + window is past max_expires_at (6 s), so the extension at 4 s reaches it.
    assert answers[-1][1]["extended"] is False
    assert answers[-1][1]["expires_at"] == created["max_expires_at"]


# -- status of the current session ---------------------------------------------

async def test_status_fields_without_extension(api: Api, redis: aioredis.Redis) -> None:
    created = await api.create("u-1", "dev-1", policy="short")
    await api.create("u-1", "dev-2")
    before = await raw_record(redis, created["session_id"])
    # After 200 ms a counted validation of a 3 s window would rewrite the record.
    await asyncio.sleep(0.2)

    status, body, headers = await api.request("GET", "/v1/me/session", token=created["token"])

    assert status == 200
    assert body["valid"] is True
    assert body["session_id"] == created["session_id"]
    assert body["expires_at"] == created["expires_at"]
    assert body["expires_in"] in (2, 3)
    assert body["max_expires_at"] == created["max_expires_at"]
    assert body["device_count"] == 2
    assert headers["Cache-Control"] == "no-store"
    assert await raw_record(redis, created["session_id"]) == before


# -- what Redis stores ---------------------------------------------------------

async def dump_values(redis: aioredis.Redis, key: bytes) -> list[bytes]:
    """Return every stored byte string of a key: its value by type and its DUMP."""
    kind = (await redis.type(key)).decode()
    values: list[bytes] = []
    if kind == "string":
        values.append(await redis.get(key))
    elif kind == "hash":
        for field, value in (await redis.hgetall(key)).items():
            values += [field, value]
    elif kind == "zset":
        values += await redis.zrange(key, 0, -1)
    elif kind == "set":
        values += list(await redis.smembers(key))
    elif kind == "list":
        values += await redis.lrange(key, 0, -1)
    elif kind == "stream":
        for entry_id, fields in await redis.xrange(key):
            values.append(entry_id)
            for field, value in fields.items():
                values += [field, value]
    dumped = await redis.dump(key)
    if dumped is not None:
        values.append(dumped)
    return values


async def test_redis_stores_no_plaintext_token(api: Api, redis: aioredis.Redis) -> None:
    tokens = [
        (await api.create("u-1", "dev-1"))["token"],
        # The second create replaces the first session, leaving a revocation marker.
        (await api.create("u-1", "dev-1"))["token"],
        (await api.create("u-1", "dev-2", policy="short"))["token"],
        (await api.create("u-2", "dev-1", policy="fixed"))["token"],
    ]
    for token in tokens[1:]:
        await api.validate(token)
        await api.request("POST", "/v1/me/session/extend", token=token)
    needles = []
    for token in tokens:
        secret = token.split(".", 1)[1]
        raw_secret = base64.urlsafe_b64decode(secret + "=")
        needles += [token.encode(), secret.encode(), raw_secret]

    stored: list[bytes] = []
    for key in await all_keys(redis):
        stored.append(key)
        stored += await dump_values(redis, key)

    assert len(stored) > 0
    assert [needle for needle in needles if any(needle in value for value in stored)] == []
