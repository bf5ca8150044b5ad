"""Listing and revocation of sessions, management and self-service, against the contract."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import quote

import msgspec
import pytest

from service.schemas import MySessionList, Problem, RevokedCount, SessionItem, SessionList
from tests.conftest import Api, ServiceFactory

# A well-formed session id (sess_ + 16-char user tag + 8-char sid) that no test creates.
MISSING_ID = "sess_AAAAAAAAAAAAAAAABBBBBBBB"
RFC3339_SECONDS = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\Z")
SNAKE_CASE = re.compile(r"\A[a-z][a-z0-9]*(_[a-z0-9]+)*\Z")
# The "short" test policy has a 3 s window, so one validation after this
# pause moves expires_at by far more than the 1 % write threshold (30 ms).
ACTIVITY_STEP_S = 0.2


class CheckedApi(Api):
    """Api client that fails the test on any 5xx response, since no request here may cause one."""

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        status, body, headers = await super().request(method, path, **kwargs)
        assert status < 500, f"{method} {path} returned {status}: {body}"
        return status, body, headers


@pytest.fixture
async def api(make_service: ServiceFactory) -> CheckedApi:
    plain = await make_service()
    return CheckedApi(plain.http, plain.base_url)


def user_path(user_id: str) -> str:
    return f"/v1/users/{quote(user_id, safe='')}/sessions"


def list_ids(body: Any) -> list[str]:
    return [item["session_id"] for item in body["sessions"]]


async def validate_status(api: Api, token: str) -> tuple[int, str | None]:
    """Return the status of a non-extending validation and the problem code, if any."""
    status, body, _ = await api.validate(token, params={"extend": "false"})
    return status, body.get("code") if status != 200 else None


# -- GET /v1/sessions/{session_id} ---------------------------------------------

async def test_get_session_decodes_as_item(api: Api) -> None:
    created = await api.create("u-get", "dev-1")

    status, body, _ = await api.manage("GET", f"/v1/sessions/{created['session_id']}")

    assert status == 200
    assert msgspec.convert(body, SessionItem).session_id == created["session_id"]


async def test_get_session_fields_match_creation(api: Api) -> None:
    created = await api.create(
        "u-get", "dev-1", policy="standard",
        device={"id": "dev-1", "type": "iPhone_13_Pro", "name": "Sarah's iPhone"},
        client={"ip": "203.0.113.7", "user_agent": "Agent/1.0"},
    )

    _, body, _ = await api.manage("GET", f"/v1/sessions/{created['session_id']}")

    expected = {key: created[key] for key in (
        "session_id", "user_id", "device", "created_at", "expires_at", "max_expires_at",
        "expires_in", "extend_on_activity", "policy", "client")}
    assert {key: body[key] for key in expected} == expected


async def test_get_session_device_and_client_values(api: Api) -> None:
    created = await api.create(
        "u-get", "dev-1",
        device={"id": "dev-1", "type": "iPhone_13_Pro", "name": "Sarah's iPhone"},
        client={"ip": "203.0.113.7", "user_agent": "Agent/1.0"},
    )

    _, body, _ = await api.manage("GET", f"/v1/sessions/{created['session_id']}")

    assert body["device"] == {"id": "dev-1", "type": "iPhone_13_Pro", "name": "Sarah's iPhone",
                              "trusted": False}
    assert body["client"] == {"ip": "203.0.113.7", "user_agent": "Agent/1.0"}


async def test_get_session_times_are_rfc3339_seconds(api: Api) -> None:
    created = await api.create("u-get", "dev-1")

    _, body, _ = await api.manage("GET", f"/v1/sessions/{created['session_id']}")

    times = [body[key] for key in ("created_at", "last_active_at", "expires_at", "max_expires_at")]
    assert [bool(RFC3339_SECONDS.match(value)) for value in times] == [True] * 4


async def test_get_session_last_active_initial(api: Api) -> None:
    created = await api.create("u-get", "dev-1")

    _, body, _ = await api.manage("GET", f"/v1/sessions/{created['session_id']}")

    assert body["last_active_at"] == body["created_at"]


async def test_get_session_last_active_moves(api: Api) -> None:
    created = await api.create("u-get", "dev-1", policy="short")
    await asyncio.sleep(1.1)
    await api.validate(created["token"])

    _, body, _ = await api.manage("GET", f"/v1/sessions/{created['session_id']}")

    assert body["last_active_at"] > body["created_at"]


async def test_get_session_expires_in_is_window(api: Api) -> None:
    created = await api.create("u-get", "dev-1", policy="fixed")
    await asyncio.sleep(1.1)

    _, body, _ = await api.manage("GET", f"/v1/sessions/{created['session_id']}")

    assert body["expires_in"] == 3


async def test_get_session_no_store(api: Api) -> None:
    created = await api.create("u-get", "dev-1")

    _, _, headers = await api.manage("GET", f"/v1/sessions/{created['session_id']}")

    assert headers["Cache-Control"] == "no-store"


async def test_get_session_missing_404(api: Api) -> None:
    status, body, _ = await api.manage("GET", f"/v1/sessions/{MISSING_ID}")

    assert status == 404
    assert body["code"] == "not_found"


@pytest.mark.parametrize("session_id", ["nope", "sess_", "sess_short", MISSING_ID + "x",
                                        "sess_AAAAAAAAAAAAAAAA.BBBBBBB"])
async def test_get_session_malformed_404(api: Api, session_id: str) -> None:
    status, body, _ = await api.manage("GET", f"/v1/sessions/{quote(session_id, safe='')}")

    assert status == 404
    assert body["code"] == "not_found"


async def test_get_session_revoked_404(api: Api) -> None:
    created = await api.create("u-get", "dev-1")
    await api.manage("DELETE", f"/v1/sessions/{created['session_id']}")

    status, body, _ = await api.manage("GET", f"/v1/sessions/{created['session_id']}")

    assert status == 404
    assert body["code"] == "not_found"


async def test_get_session_expired_404(api: Api) -> None:
    created = await api.create("u-get", "dev-1", policy="fixed", expires_in=1)
    await asyncio.sleep(1.2)

    status, body, _ = await api.manage("GET", f"/v1/sessions/{created['session_id']}")

    assert status == 404
    assert body["code"] == "not_found"


async def test_get_session_without_api_key_401(api: Api) -> None:
    created = await api.create("u-get", "dev-1")

    status, body, _ = await api.request("GET", f"/v1/sessions/{created['session_id']}")

    assert status == 401
    assert body["code"] == "unauthorized"


async def test_get_session_wrong_api_key_401(api: Api) -> None:
    created = await api.create("u-get", "dev-1")

    status, body, _ = await api.request("GET", f"/v1/sessions/{created['session_id']}",
                                        api_key="not-the-key")

    assert status == 401
    assert body["code"] == "unauthorized"


async def test_get_session_token_as_api_key_401(api: Api) -> None:
    created = await api.create("u-get", "dev-1")

    status, _, _ = await api.request("GET", f"/v1/sessions/{created['session_id']}",
                                     token=created["token"])

    assert status == 401


# -- DELETE /v1/sessions/{session_id} --------------------------------------------

async def test_revoke_session_204(api: Api) -> None:
    created = await api.create("u-del", "dev-1")

    status, body, _ = await api.manage("DELETE", f"/v1/sessions/{created['session_id']}")

    assert status == 204
    assert body is None


async def test_revoke_session_token_revoked(api: Api) -> None:
    created = await api.create("u-del", "dev-1")
    await api.manage("DELETE", f"/v1/sessions/{created['session_id']}")

    status, body, _ = await api.validate(created["token"])

    assert status == 401
    assert body["code"] == "session_revoked"


async def test_revoke_session_then_get_404(api: Api) -> None:
    created = await api.create("u-del", "dev-1")
    await api.manage("DELETE", f"/v1/sessions/{created['session_id']}")

    status, _, _ = await api.manage("GET", f"/v1/sessions/{created['session_id']}")

    assert status == 404


async def test_revoke_session_twice_404(api: Api) -> None:
    created = await api.create("u-del", "dev-1")
    await api.manage("DELETE", f"/v1/sessions/{created['session_id']}")

    status, body, _ = await api.manage("DELETE", f"/v1/sessions/{created['session_id']}")

    assert status == 404
    assert body["code"] == "not_found"


async def test_revoke_session_missing_404(api: Api) -> None:
    status, body, _ = await api.manage("DELETE", f"/v1/sessions/{MISSING_ID}")

    assert status == 404
    assert body["code"] == "not_found"


async def test_revoke_session_malformed_404(api: Api) -> None:
    status, body, _ = await api.manage("DELETE", "/v1/sessions/garbage")

    assert status == 404
    assert body["code"] == "not_found"


async def test_revoke_session_keeps_siblings(api: Api) -> None:
    first = await api.create("u-del", "dev-1")
    second = await api.create("u-del", "dev-2")
    await api.manage("DELETE", f"/v1/sessions/{first['session_id']}")

    assert await validate_status(api, second["token"]) == (200, None)


async def test_revoke_session_without_api_key_401(api: Api) -> None:
    created = await api.create("u-del", "dev-1")

    status, body, _ = await api.request("DELETE", f"/v1/sessions/{created['session_id']}")

    assert status == 401
    assert body["code"] == "unauthorized"


async def test_revoke_session_without_key_kept(api: Api) -> None:
    created = await api.create("u-del", "dev-1")
    await api.request("DELETE", f"/v1/sessions/{created['session_id']}")

    assert await validate_status(api, created["token"]) == (200, None)


# -- GET /v1/users/{user_id}/sessions --------------------------------------------

async def test_list_user_sessions_decodes_as_list(api: Api) -> None:
    await api.create("u-list", "dev-1")
    await api.create("u-list", "dev-2")

    status, body, _ = await api.manage("GET", user_path("u-list"))

    assert status == 200
    assert len(msgspec.convert(body, SessionList).sessions) == 2


async def test_list_user_sessions_most_recent_first(api: Api) -> None:
    a = await api.create("u-order", "dev-a", policy="short")
    await asyncio.sleep(ACTIVITY_STEP_S)
    b = await api.create("u-order", "dev-b", policy="short")
    await asyncio.sleep(ACTIVITY_STEP_S)
    c = await api.create("u-order", "dev-c", policy="short")
    await asyncio.sleep(ACTIVITY_STEP_S)
    await api.validate(a["token"])

    _, body, _ = await api.manage("GET", user_path("u-order"))

    assert list_ids(body) == [a["session_id"], c["session_id"], b["session_id"]]


async def test_list_user_sessions_order_within_one_second(api: Api) -> None:
    # Every step lands well inside the 1 s activity resolution.
    a = await api.create("u-quick", "dev-a")
    await asyncio.sleep(0.01)
    b = await api.create("u-quick", "dev-b")
    await asyncio.sleep(0.01)

    orders = []
    for token in (a["token"], b["token"], a["token"]):
        await api.validate(token)
        _, body, _ = await api.manage("GET", user_path("u-quick"))
        orders.append(list_ids(body))
        await asyncio.sleep(0.01)

    assert orders[0] == [a["session_id"], b["session_id"]]
    assert orders[1] == [b["session_id"], a["session_id"]]
    assert orders[2] == [a["session_id"], b["session_id"]]


async def test_list_user_sessions_newest_first(api: Api) -> None:
    a = await api.create("u-order", "dev-a")
    await asyncio.sleep(ACTIVITY_STEP_S)
    b = await api.create("u-order", "dev-b")

    _, body, _ = await api.manage("GET", user_path("u-order"))

    assert list_ids(body) == [b["session_id"], a["session_id"]]


async def test_list_user_sessions_device_count(api: Api) -> None:
    await api.create("u-count", "dev-1")
    await api.create("u-count", "dev-2")

    _, body, _ = await api.manage("GET", user_path("u-count"))

    assert body["device_count"] == 2


async def test_list_user_sessions_same_device_counted_once(api: Api) -> None:
    await api.create("u-count", "dev-1")
    await api.create("u-count", "dev-1")

    _, body, _ = await api.manage("GET", user_path("u-count"))

    assert body["device_count"] == 1


async def test_list_user_sessions_unknown_user_empty(api: Api) -> None:
    status, body, _ = await api.manage("GET", user_path("u-nobody"))

    assert status == 200
    assert body == {"sessions": [], "device_count": 0}


async def test_list_user_sessions_omits_revoked(api: Api) -> None:
    live = await api.create("u-list", "dev-1")
    revoked = await api.create("u-list", "dev-2")
    await api.manage("DELETE", f"/v1/sessions/{revoked['session_id']}")

    _, body, _ = await api.manage("GET", user_path("u-list"))

    assert list_ids(body) == [live["session_id"]]


async def test_list_user_sessions_omits_expired(api: Api) -> None:
    live = await api.create("u-list", "dev-1")
    await api.create("u-list", "dev-2", policy="fixed", expires_in=1)
    await asyncio.sleep(1.2)

    _, body, _ = await api.manage("GET", user_path("u-list"))

    assert list_ids(body) == [live["session_id"]]


async def test_list_user_sessions_omits_other_users(api: Api) -> None:
    mine = await api.create("u-list", "dev-1")
    await api.create("u-list-2", "dev-1")

    _, body, _ = await api.manage("GET", user_path("u-list"))

    assert list_ids(body) == [mine["session_id"]]


@pytest.mark.parametrize("user_id", [
    "{tag}", "a{b}c", "user:42", "u*", "*", "first last", " padded ", "ユーザー", "émoji 🎉",
    "{x}:* ü", "a/b", "50%off", "a?b#c", "é" * 128,
])
async def test_list_user_sessions_unusual_user_ids(api: Api, user_id: str) -> None:
    created = await api.create(user_id, "dev-1")

    status, body, _ = await api.manage("GET", user_path(user_id))

    assert status == 200
    assert [(item["session_id"], item["user_id"]) for item in body["sessions"]] == [
        (created["session_id"], user_id)]


async def test_list_user_sessions_glob_literal(api: Api) -> None:
    await api.create("u1", "dev-1")
    await api.create("u2", "dev-1")

    _, body, _ = await api.manage("GET", user_path("u*"))

    assert body["sessions"] == []


async def test_list_user_sessions_128_chars_200(api: Api) -> None:
    status, _, _ = await api.manage("GET", user_path("u" * 128))

    assert status == 200


async def test_list_user_sessions_long_user_id_400(api: Api) -> None:
    status, body, _ = await api.manage("GET", user_path("u" * 129))

    assert status == 400
    assert body["code"] == "invalid_request"


async def test_list_user_sessions_control_char_400(api: Api) -> None:
    status, body, _ = await api.manage("GET", user_path("u\n1"))

    assert status == 400
    assert body["code"] == "invalid_request"


async def test_list_user_sessions_no_store(api: Api) -> None:
    await api.create("u-list", "dev-1")

    _, _, headers = await api.manage("GET", user_path("u-list"))

    assert headers["Cache-Control"] == "no-store"


async def test_list_user_sessions_without_api_key_401(api: Api) -> None:
    status, body, _ = await api.request("GET", user_path("u-list"))

    assert status == 401
    assert body["code"] == "unauthorized"


# -- DELETE /v1/users/{user_id}/sessions -----------------------------------------

async def test_revoke_user_sessions_count(api: Api) -> None:
    for device in ("dev-1", "dev-2", "dev-3"):
        await api.create("u-all", device)

    status, body, _ = await api.manage("DELETE", user_path("u-all"))

    assert status == 200
    assert msgspec.convert(body, RevokedCount) == RevokedCount(revoked=3)


async def test_revoke_user_sessions_tokens_revoked(api: Api) -> None:
    tokens = [(await api.create("u-all", device))["token"] for device in ("dev-1", "dev-2")]
    await api.manage("DELETE", user_path("u-all"))

    assert [await validate_status(api, token) for token in tokens] == [
        (401, "session_revoked")] * 2


async def test_revoke_user_sessions_list_empty(api: Api) -> None:
    await api.create("u-all", "dev-1")
    await api.manage("DELETE", user_path("u-all"))

    _, body, _ = await api.manage("GET", user_path("u-all"))

    assert body == {"sessions": [], "device_count": 0}


async def test_revoke_user_sessions_unknown_user_zero(api: Api) -> None:
    status, body, _ = await api.manage("DELETE", user_path("u-nobody"))

    assert status == 200
    assert body == {"revoked": 0}


async def test_revoke_user_sessions_spares_other_users(api: Api) -> None:
    await api.create("u-all", "dev-1")
    other = await api.create("u-all-2", "dev-1")
    await api.manage("DELETE", user_path("u-all"))

    assert await validate_status(api, other["token"]) == (200, None)


async def test_revoke_user_sessions_except_count(api: Api) -> None:
    kept = await api.create("u-except", "dev-1")
    await api.create("u-except", "dev-2")
    await api.create("u-except", "dev-3")

    _, body, _ = await api.manage("DELETE", user_path("u-except"),
                                  params={"except": kept["session_id"]})

    assert body == {"revoked": 2}


async def test_revoke_user_sessions_except_keeps_session(api: Api) -> None:
    kept = await api.create("u-except", "dev-1")
    await api.create("u-except", "dev-2")
    await api.manage("DELETE", user_path("u-except"), params={"except": kept["session_id"]})

    assert await validate_status(api, kept["token"]) == (200, None)


async def test_revoke_user_sessions_except_revokes_rest(api: Api) -> None:
    kept = await api.create("u-except", "dev-1")
    revoked = await api.create("u-except", "dev-2")
    await api.manage("DELETE", user_path("u-except"), params={"except": kept["session_id"]})

    assert await validate_status(api, revoked["token"]) == (401, "session_revoked")


async def test_revoke_user_sessions_except_missing(api: Api) -> None:
    await api.create("u-except", "dev-1")
    await api.create("u-except", "dev-2")

    _, body, _ = await api.manage("DELETE", user_path("u-except"), params={"except": MISSING_ID})

    assert body == {"revoked": 2}


@pytest.mark.parametrize("except_id", ["garbage", "", "sess_", "sess_AAAA"])
async def test_revoke_user_sessions_except_garbage_400(api: Api, except_id: str) -> None:
    status, body, _ = await api.manage("DELETE", user_path("u-except"),
                                       params={"except": except_id})

    assert status == 400
    assert body["code"] == "invalid_request"


async def test_revoke_user_sessions_except_garbage_keeps_all(api: Api) -> None:
    created = await api.create("u-except", "dev-1")
    await api.manage("DELETE", user_path("u-except"), params={"except": "garbage"})

    assert await validate_status(api, created["token"]) == (200, None)


async def test_revoke_user_sessions_long_user_id_400(api: Api) -> None:
    status, body, _ = await api.manage("DELETE", user_path("u" * 129))

    assert status == 400
    assert body["code"] == "invalid_request"


@pytest.mark.parametrize("user_id", ["{x}", "a}b{", "user:42 *", "ü 🎉", "a/b", "50%"])
async def test_revoke_user_sessions_unusual_user_ids(api: Api, user_id: str) -> None:
    await api.create(user_id, "dev-1")

    status, body, _ = await api.manage("DELETE", user_path(user_id))

    assert status == 200
    assert body == {"revoked": 1}


async def test_revoke_user_sessions_no_store(api: Api) -> None:
    await api.create("u-all", "dev-1")

    _, _, headers = await api.manage("DELETE", user_path("u-all"))

    assert headers["Cache-Control"] == "no-store"


async def test_revoke_user_sessions_without_api_key_401(api: Api) -> None:
    created = await api.create("u-all", "dev-1")

    status, _, _ = await api.request("DELETE", user_path("u-all"))

    assert status == 401
    assert await validate_status(api, created["token"]) == (200, None)


# -- GET /v1/me/sessions ---------------------------------------------------------

async def test_me_sessions_decodes_as_list(api: Api) -> None:
    current = await api.create("u-me", "dev-1")
    await api.create("u-me", "dev-2")

    status, body, _ = await api.request("GET", "/v1/me/sessions", token=current["token"])

    assert status == 200
    assert len(msgspec.convert(body, MySessionList).sessions) == 2


async def test_me_sessions_current_flag(api: Api) -> None:
    current = await api.create("u-me", "dev-1")
    other = await api.create("u-me", "dev-2")

    _, body, _ = await api.request("GET", "/v1/me/sessions", token=current["token"])

    flags = {item["session_id"]: item["current"] for item in body["sessions"]}
    assert flags == {current["session_id"]: True, other["session_id"]: False}


async def test_me_sessions_matches_management_list(api: Api) -> None:
    current = await api.create("u-me", "dev-1")
    await api.create("u-me", "dev-2")

    _, mine, _ = await api.request("GET", "/v1/me/sessions", token=current["token"])
    _, managed, _ = await api.manage("GET", user_path("u-me"))

    stripped = [{k: v for k, v in item.items() if k != "current"} for item in mine["sessions"]]
    assert {"sessions": stripped, "device_count": mine["device_count"]} == managed


async def test_me_sessions_most_recent_first(api: Api) -> None:
    a = await api.create("u-me", "dev-a", policy="short")
    await asyncio.sleep(ACTIVITY_STEP_S)
    b = await api.create("u-me", "dev-b", policy="short")
    await asyncio.sleep(ACTIVITY_STEP_S)
    c = await api.create("u-me", "dev-c", policy="short")
    await asyncio.sleep(ACTIVITY_STEP_S)
    await api.validate(a["token"])

    _, body, _ = await api.request("GET", "/v1/me/sessions", token=b["token"])

    assert list_ids(body) == [a["session_id"], c["session_id"], b["session_id"]]


async def test_me_sessions_device_count(api: Api) -> None:
    current = await api.create("u-me", "dev-1")
    await api.create("u-me", "dev-2")

    _, body, _ = await api.request("GET", "/v1/me/sessions", token=current["token"])

    assert body["device_count"] == 2


async def test_me_sessions_omits_other_users(api: Api) -> None:
    current = await api.create("u-me", "dev-1")
    await api.create("u-me-2", "dev-1")

    _, body, _ = await api.request("GET", "/v1/me/sessions", token=current["token"])

    assert list_ids(body) == [current["session_id"]]


async def test_me_sessions_no_store(api: Api) -> None:
    current = await api.create("u-me", "dev-1")

    _, _, headers = await api.request("GET", "/v1/me/sessions", token=current["token"])

    assert headers["Cache-Control"] == "no-store"


async def test_me_sessions_does_not_count_as_activity(api: Api) -> None:
    current = await api.create("u-me", "dev-1", policy="short")
    await asyncio.sleep(1.1)
    await api.request("GET", "/v1/me/sessions", token=current["token"])

    _, body, _ = await api.manage("GET", f"/v1/sessions/{current['session_id']}")

    assert body["expires_at"] == current["expires_at"]


async def test_me_sessions_without_token_401(api: Api) -> None:
    status, body, _ = await api.request("GET", "/v1/me/sessions")

    assert status == 401
    assert body["code"] == "invalid_token"


async def test_me_sessions_revoked_token_401(api: Api) -> None:
    current = await api.create("u-me", "dev-1")
    await api.manage("DELETE", f"/v1/sessions/{current['session_id']}")

    status, body, _ = await api.request("GET", "/v1/me/sessions", token=current["token"])

    assert status == 401
    assert body["code"] == "session_revoked"


async def test_me_sessions_api_key_401(api: Api) -> None:
    status, body, _ = await api.manage("GET", "/v1/me/sessions")

    assert status == 401
    assert body["code"] == "invalid_token"


# -- DELETE /v1/me/sessions/{session_id} -----------------------------------------

async def test_me_revoke_one_204(api: Api) -> None:
    current = await api.create("u-me", "dev-1")
    other = await api.create("u-me", "dev-2")

    status, body, _ = await api.request("DELETE", f"/v1/me/sessions/{other['session_id']}",
                                        token=current["token"])

    assert status == 204
    assert body is None


async def test_me_revoke_one_revokes_target(api: Api) -> None:
    current = await api.create("u-me", "dev-1")
    other = await api.create("u-me", "dev-2")
    await api.request("DELETE", f"/v1/me/sessions/{other['session_id']}", token=current["token"])

    assert await validate_status(api, other["token"]) == (401, "session_revoked")


async def test_me_revoke_one_keeps_current(api: Api) -> None:
    current = await api.create("u-me", "dev-1")
    other = await api.create("u-me", "dev-2")
    await api.request("DELETE", f"/v1/me/sessions/{other['session_id']}", token=current["token"])

    assert await validate_status(api, current["token"]) == (200, None)


async def test_me_revoke_one_twice_404(api: Api) -> None:
    current = await api.create("u-me", "dev-1")
    other = await api.create("u-me", "dev-2")
    await api.request("DELETE", f"/v1/me/sessions/{other['session_id']}", token=current["token"])

    status, body, _ = await api.request("DELETE", f"/v1/me/sessions/{other['session_id']}",
                                        token=current["token"])

    assert status == 404
    assert body["code"] == "not_found"


async def test_me_revoke_one_foreign_404(api: Api) -> None:
    current = await api.create("u-me", "dev-1")
    foreign = await api.create("u-other", "dev-1")

    status, body, _ = await api.request("DELETE", f"/v1/me/sessions/{foreign['session_id']}",
                                        token=current["token"])

    assert status == 404
    assert body["code"] == "not_found"


async def test_me_revoke_one_missing_404(api: Api) -> None:
    current = await api.create("u-me", "dev-1")

    status, body, _ = await api.request("DELETE", f"/v1/me/sessions/{MISSING_ID}",
                                        token=current["token"])

    assert status == 404
    assert body["code"] == "not_found"


async def test_me_revoke_one_malformed_404(api: Api) -> None:
    current = await api.create("u-me", "dev-1")

    status, body, _ = await api.request("DELETE", "/v1/me/sessions/garbage",
                                        token=current["token"])

    assert status == 404
    assert body["code"] == "not_found"


async def test_me_revoke_one_foreign_same_as_missing(api: Api) -> None:
    current = await api.create("u-me", "dev-1")
    foreign = await api.create("u-other", "dev-1")

    foreign_status, foreign_body, _ = await api.request(
        "DELETE", f"/v1/me/sessions/{foreign['session_id']}", token=current["token"])
    missing_status, missing_body, _ = await api.request(
        "DELETE", f"/v1/me/sessions/{MISSING_ID}", token=current["token"])

    assert (foreign_status, foreign_body) == (missing_status, missing_body)


async def test_me_revoke_one_foreign_same_as_own_missing(api: Api) -> None:
    current = await api.create("u-me", "dev-1")
    revoked = await api.create("u-me", "dev-2")
    await api.manage("DELETE", f"/v1/sessions/{revoked['session_id']}")
    foreign = await api.create("u-other", "dev-1")

    _, foreign_body, _ = await api.request(
        "DELETE", f"/v1/me/sessions/{foreign['session_id']}", token=current["token"])
    _, revoked_body, _ = await api.request(
        "DELETE", f"/v1/me/sessions/{revoked['session_id']}", token=current["token"])

    assert foreign_body == revoked_body


async def test_me_revoke_one_foreign_still_valid(api: Api) -> None:
    current = await api.create("u-me", "dev-1")
    foreign = await api.create("u-other", "dev-1")
    await api.request("DELETE", f"/v1/me/sessions/{foreign['session_id']}", token=current["token"])

    assert await validate_status(api, foreign["token"]) == (200, None)


async def test_me_revoke_one_without_token_401(api: Api) -> None:
    other = await api.create("u-me", "dev-2")

    status, body, _ = await api.request("DELETE", f"/v1/me/sessions/{other['session_id']}")

    assert status == 401
    assert body["code"] == "invalid_token"


# -- DELETE /v1/me/sessions?scope= -----------------------------------------------

async def test_me_revoke_others_count(api: Api) -> None:
    current = await api.create("u-scope", "dev-1")
    await api.create("u-scope", "dev-2")
    await api.create("u-scope", "dev-3")

    status, body, _ = await api.request("DELETE", "/v1/me/sessions", token=current["token"],
                                        params={"scope": "others"})

    assert status == 200
    assert body == {"revoked": 2}


async def test_me_revoke_others_keeps_current(api: Api) -> None:
    current = await api.create("u-scope", "dev-1")
    await api.create("u-scope", "dev-2")
    await api.request("DELETE", "/v1/me/sessions", token=current["token"],
                      params={"scope": "others"})

    assert await validate_status(api, current["token"]) == (200, None)


async def test_me_revoke_others_revokes_rest(api: Api) -> None:
    current = await api.create("u-scope", "dev-1")
    others = [await api.create("u-scope", device) for device in ("dev-2", "dev-3")]
    await api.request("DELETE", "/v1/me/sessions", token=current["token"],
                      params={"scope": "others"})

    assert [await validate_status(api, s["token"]) for s in others] == [
        (401, "session_revoked")] * 2


async def test_me_revoke_others_spares_other_users(api: Api) -> None:
    current = await api.create("u-scope", "dev-1")
    foreign = await api.create("u-scope-2", "dev-1")
    await api.request("DELETE", "/v1/me/sessions", token=current["token"],
                      params={"scope": "others"})

    assert await validate_status(api, foreign["token"]) == (200, None)


async def test_me_revoke_all_count(api: Api) -> None:
    current = await api.create("u-scope", "dev-1")
    await api.create("u-scope", "dev-2")
    await api.create("u-scope", "dev-3")

    status, body, _ = await api.request("DELETE", "/v1/me/sessions", token=current["token"],
                                        params={"scope": "all"})

    assert status == 200
    assert body == {"revoked": 3}


async def test_me_revoke_all_revokes_current(api: Api) -> None:
    current = await api.create("u-scope", "dev-1")
    other = await api.create("u-scope", "dev-2")
    await api.request("DELETE", "/v1/me/sessions", token=current["token"], params={"scope": "all"})

    assert [await validate_status(api, s["token"]) for s in (current, other)] == [
        (401, "session_revoked")] * 2


async def test_me_revoke_all_spares_other_users(api: Api) -> None:
    current = await api.create("u-scope", "dev-1")
    foreign = await api.create("u-scope-2", "dev-1")
    await api.request("DELETE", "/v1/me/sessions", token=current["token"], params={"scope": "all"})

    assert await validate_status(api, foreign["token"]) == (200, None)


async def test_me_revoke_scoped_no_store(api: Api) -> None:
    current = await api.create("u-scope", "dev-1")

    _, _, headers = await api.request("DELETE", "/v1/me/sessions", token=current["token"],
                                      params={"scope": "others"})

    assert headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("params", [{}, {"scope": "bogus"}, {"scope": ""}, {"scope": "ALL"}])
async def test_me_revoke_bad_scope_400(api: Api, params: dict[str, str]) -> None:
    current = await api.create("u-scope", "dev-1")

    status, body, _ = await api.request("DELETE", "/v1/me/sessions", token=current["token"],
                                        params=params)

    assert status == 400
    assert body["code"] == "invalid_request"


@pytest.mark.parametrize("params", [{}, {"scope": "bogus"}])
async def test_me_revoke_bad_scope_keeps_all(api: Api, params: dict[str, str]) -> None:
    current = await api.create("u-scope", "dev-1")
    other = await api.create("u-scope", "dev-2")
    await api.request("DELETE", "/v1/me/sessions", token=current["token"], params=params)

    assert [await validate_status(api, s["token"]) for s in (current, other)] == [(200, None)] * 2


async def test_me_revoke_scoped_without_token_401(api: Api) -> None:
    status, body, _ = await api.request("DELETE", "/v1/me/sessions", params={"scope": "all"})

    assert status == 401
    assert body["code"] == "invalid_token"


# -- DELETE /v1/me/session -------------------------------------------------------

async def test_sign_out_204(api: Api) -> None:
    current = await api.create("u-out", "dev-1")

    status, body, _ = await api.request("DELETE", "/v1/me/session", token=current["token"])

    assert status == 204
    assert body is None


async def test_sign_out_token_revoked(api: Api) -> None:
    current = await api.create("u-out", "dev-1")
    await api.request("DELETE", "/v1/me/session", token=current["token"])

    assert await validate_status(api, current["token"]) == (401, "session_revoked")


async def test_sign_out_keeps_other_devices(api: Api) -> None:
    current = await api.create("u-out", "dev-1")
    other = await api.create("u-out", "dev-2")
    await api.request("DELETE", "/v1/me/session", token=current["token"])

    assert await validate_status(api, other["token"]) == (200, None)


async def test_sign_out_twice_401(api: Api) -> None:
    current = await api.create("u-out", "dev-1")
    await api.request("DELETE", "/v1/me/session", token=current["token"])

    status, body, _ = await api.request("DELETE", "/v1/me/session", token=current["token"])

    assert status == 401
    assert body["code"] == "session_revoked"


async def test_sign_out_cookie_token(api: Api) -> None:
    current = await api.create("u-out", "dev-1")

    status, _, _ = await api.request("DELETE", "/v1/me/session",
                                     headers={"Cookie": f"session={current['token']}"})

    assert status == 204


# -- problem bodies, unknown routes ----------------------------------------------

async def _error_cases(api: Api) -> list[tuple[str, int, Any, Any]]:
    """Send one request per error case and return (label, status, body, headers) for each."""
    current = await api.create("u-err", "dev-1")
    foreign = await api.create("u-err-2", "dev-1")
    token = current["token"]
    requests: list[tuple[str, str, str, dict[str, Any]]] = [
        ("get without key", "GET", f"/v1/sessions/{current['session_id']}", {}),
        ("get missing", "GET", f"/v1/sessions/{MISSING_ID}", {"api_key": True}),
        ("get malformed", "GET", "/v1/sessions/garbage", {"api_key": True}),
        ("delete missing", "DELETE", f"/v1/sessions/{MISSING_ID}", {"api_key": True}),
        ("list long user", "GET", user_path("u" * 129), {"api_key": True}),
        ("list without key", "GET", user_path("u-err"), {}),
        ("except garbage", "DELETE", user_path("u-err"),
         {"api_key": True, "params": {"except": "garbage"}}),
        ("me list without token", "GET", "/v1/me/sessions", {}),
        ("me revoke foreign", "DELETE", f"/v1/me/sessions/{foreign['session_id']}",
         {"token": token}),
        ("me revoke bogus scope", "DELETE", "/v1/me/sessions",
         {"token": token, "params": {"scope": "bogus"}}),
        ("unknown path", "GET", "/v1/nope", {}),
        ("unknown root path", "GET", "/nope", {}),
        ("wrong method", "PUT", "/v1/validate", {}),
        ("wrong method on sessions", "PATCH", f"/v1/sessions/{current['session_id']}",
         {"api_key": True}),
    ]
    results = []
    for label, method, path, options in requests:
        options = dict(options)
        if options.pop("api_key", False):
            status, body, headers = await api.manage(method, path, **options)
        else:
            status, body, headers = await api.request(method, path, **options)
        results.append((label, status, body, headers))
    return results


async def test_errors_content_type_problem_json(api: Api) -> None:
    cases = await _error_cases(api)

    wrong = {label: headers.get("Content-Type") for label, _, _, headers in cases
             if headers.get("Content-Type") != "application/problem+json"}
    assert wrong == {}


async def test_errors_body_decodes_as_problem(api: Api) -> None:
    cases = await _error_cases(api)

    failed = {}
    for label, _, body, _ in cases:
        try:
            msgspec.convert(body, Problem)
        except (msgspec.ValidationError, TypeError) as exc:
            failed[label] = str(exc)
    assert failed == {}


async def test_errors_body_status_matches(api: Api) -> None:
    cases = await _error_cases(api)

    mismatched = {label: (status, body.get("status")) for label, status, body, _ in cases
                  if body.get("status") != status}
    assert mismatched == {}


async def test_errors_code_snake_case(api: Api) -> None:
    cases = await _error_cases(api)

    bad = {label: body.get("code") for label, _, body, _ in cases
           if not SNAKE_CASE.match(str(body.get("code")))}
    assert bad == {}


async def test_unknown_path_404(api: Api) -> None:
    status, body, _ = await api.request("GET", "/v1/nope")

    assert status == 404
    assert body["code"] == "not_found"


async def test_unknown_session_subpath_404(api: Api) -> None:
    status, body, _ = await api.manage("GET", f"/v1/sessions/{MISSING_ID}/extra")

    assert status == 404
    assert body["code"] == "not_found"


async def test_wrong_method_405(api: Api) -> None:
    status, body, _ = await api.request("PUT", "/v1/validate")

    assert status == 405
    assert body["status"] == 405


async def test_wrong_method_405_has_code(api: Api) -> None:
    _, body, _ = await api.request("PUT", "/v1/validate")

    assert SNAKE_CASE.match(body["code"]) is not None


async def test_wrong_method_405_allow_header(api: Api) -> None:
    # RFC 9110, section 15.5.6: a 405 response must carry an Allow header.
    _, _, headers = await api.request("PUT", "/v1/validate")

    assert headers.get("Allow") == "GET"
