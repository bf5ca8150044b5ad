"""The device registry against the contract: GET /v1/users/{id}/devices and
PUT /v1/users/{id}/devices/{device_id}, with the built-in "trusted" policy."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import quote

import msgspec
import pytest

from service.schemas import DeviceItem, DeviceList, Problem
from tests.conftest import Api

RFC3339_SECONDS = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\Z")
PROBLEM_TYPE = "application/problem+json"
# Ids that a path segment carries percent-encoded: braces (the Redis hash tag
# delimiters), colons (the key separator), spaces and a literal percent sign.
ODD_IDS = ["{tag}", "a:b:c", "with space", "100%", "{x}: y %20"]


# -- helpers -----------------------------------------------------------------

def devices_path(user_id: str) -> str:
    return f"/v1/users/{quote(user_id, safe='')}/devices"


def device_path(user_id: str, device_id: str) -> str:
    return f"{devices_path(user_id)}/{quote(device_id, safe='')}"


async def list_devices(api: Api, user_id: str) -> dict[str, dict[str, Any]]:
    """Return the user's devices by id, and fail the test unless the list is 200 and well-formed."""
    status, body, _ = await api.manage("GET", devices_path(user_id))
    assert status == 200, body
    msgspec.convert(body, DeviceList)
    return {item["id"]: item for item in body["devices"]}


async def set_trust(api: Api, user_id: str, device_id: str, trusted: bool) -> dict[str, Any]:
    status, body, _ = await api.manage("PUT", device_path(user_id, device_id), json={"trusted": trusted})
    assert status == 200, body
    return body


async def create_status(api: Api, user_id: str, device_id: str, **fields: Any) -> tuple[int, Any, Any]:
    body = {"user_id": user_id, "device": {"id": device_id}, **fields}
    return await api.manage("POST", "/v1/sessions", json=body)


async def user_events(api: Api, user_id: str) -> list[dict[str, Any]]:
    status, body, _ = await api.manage("GET", f"/v1/users/{quote(user_id, safe='')}/events",
                                       params={"limit": "1000"})
    assert status == 200, body
    return body["events"]


async def session_ids(api: Api, user_id: str) -> list[str]:
    status, body, _ = await api.manage("GET", f"/v1/users/{quote(user_id, safe='')}/sessions")
    assert status == 200, body
    return [item["session_id"] for item in body["sessions"]]


# -- GET /v1/users/{user_id}/devices --------------------------------------------

async def test_devices_list_decodes(api: Api) -> None:
    await api.create("u-dev", "dev-a")
    await api.create("u-dev", "dev-b")

    status, body, _ = await api.manage("GET", devices_path("u-dev"))

    assert status == 200
    assert len(msgspec.convert(body, DeviceList).devices) == 2


async def test_devices_list_ids(api: Api) -> None:
    await api.create("u-dev", "dev-a")
    await api.create("u-dev", "dev-b")

    devices = await list_devices(api, "u-dev")

    assert set(devices) == {"dev-a", "dev-b"}


async def test_devices_list_no_store(api: Api) -> None:
    await api.create("u-dev", "dev-a")

    _, _, headers = await api.manage("GET", devices_path("u-dev"))

    assert headers["Cache-Control"] == "no-store"


async def test_devices_item_fields(api: Api) -> None:
    device = {"id": "dev-a", "type": "iPhone_13_Pro", "name": "Sarah's iPhone"}
    await api.create("u-dev", "dev-a", device=device)

    item = (await list_devices(api, "u-dev"))["dev-a"]

    assert {key: item[key] for key in ("id", "type", "name", "trusted", "active_sessions")} == {
        "id": "dev-a", "type": "iPhone_13_Pro", "name": "Sarah's iPhone", "trusted": False,
        "active_sessions": 1,
    }


async def test_devices_item_times_are_rfc3339(api: Api) -> None:
    await api.create("u-dev", "dev-a")

    item = (await list_devices(api, "u-dev"))["dev-a"]

    assert RFC3339_SECONDS.match(item["first_seen_at"]) is not None
    assert RFC3339_SECONDS.match(item["last_seen_at"]) is not None


async def test_devices_item_type_name_null(api: Api) -> None:
    await api.create("u-dev", "dev-a")

    item = (await list_devices(api, "u-dev"))["dev-a"]

    assert item["type"] is None
    assert item["name"] is None


async def test_devices_first_seen_is_creation_time(api: Api) -> None:
    created = await api.create("u-dev", "dev-a")

    item = (await list_devices(api, "u-dev"))["dev-a"]

    assert item["first_seen_at"] == created["created_at"]


async def test_devices_active_sessions_zero_after_revoke(api: Api) -> None:
    revoked = await api.create("u-dev", "dev-a")
    await api.create("u-dev", "dev-b")
    status, _, _ = await api.manage("DELETE", f"/v1/sessions/{revoked['session_id']}")
    assert status == 204

    devices = await list_devices(api, "u-dev")

    assert {key: item["active_sessions"] for key, item in devices.items()} == {"dev-a": 0, "dev-b": 1}


async def test_devices_active_sessions_zero_after_revoke_all(api: Api) -> None:
    await api.create("u-dev", "dev-a")
    await api.create("u-dev", "dev-b")
    status, _, _ = await api.manage("DELETE", "/v1/users/u-dev/sessions")
    assert status == 200

    devices = await list_devices(api, "u-dev")

    assert {key: item["active_sessions"] for key, item in devices.items()} == {"dev-a": 0, "dev-b": 0}


async def test_devices_sign_in_again_keeps_first_seen(api: Api) -> None:
    await api.create("u-dev", "dev-a")
    before = (await list_devices(api, "u-dev"))["dev-a"]
    # Times have whole seconds, so wait past the next second boundary.
    await asyncio.sleep(1.1)
    await api.create("u-dev", "dev-a")

    after = (await list_devices(api, "u-dev"))["dev-a"]

    assert after["first_seen_at"] == before["first_seen_at"]
    assert after["last_seen_at"] > before["last_seen_at"]
    assert after["active_sessions"] == 1


async def test_devices_unknown_user_empty(api: Api) -> None:
    status, body, _ = await api.manage("GET", devices_path("u-never-seen"))

    assert status == 200
    assert body == {"devices": []}


async def test_devices_list_without_api_key_401(api: Api) -> None:
    await api.create("u-dev", "dev-a")

    status, body, _ = await api.request("GET", devices_path("u-dev"))

    assert status == 401
    assert body["code"] == "unauthorized"


async def test_devices_list_wrong_api_key_401(api: Api) -> None:
    status, body, _ = await api.request("GET", devices_path("u-dev"), api_key="wrong-key-0123456789abcdef")

    assert status == 401
    assert body["code"] == "unauthorized"


async def test_devices_list_with_session_token_401(api: Api) -> None:
    created = await api.create("u-dev", "dev-a")

    status, body, _ = await api.request("GET", devices_path("u-dev"), token=created["token"])

    assert status == 401
    assert body["code"] == "unauthorized"


# -- PUT /v1/users/{user_id}/devices/{device_id} ----------------------------------

async def test_trust_put_returns_device(api: Api) -> None:
    await api.create("u-trust", "dev-a", device={"id": "dev-a", "type": "Pixel_8", "name": "Work phone"})

    status, body, headers = await api.manage("PUT", device_path("u-trust", "dev-a"), json={"trusted": True})

    assert status == 200
    item = msgspec.convert(body, DeviceItem)
    assert item == DeviceItem(id="dev-a", type="Pixel_8", name="Work phone", trusted=True,
                              first_seen_at=item.first_seen_at, last_seen_at=item.last_seen_at,
                              active_sessions=1)
    assert headers["Content-Type"].startswith("application/json")


async def test_trust_put_shows_in_list(api: Api) -> None:
    await api.create("u-trust", "dev-a")
    await api.create("u-trust", "dev-b")
    await set_trust(api, "u-trust", "dev-a", True)

    devices = await list_devices(api, "u-trust")

    assert {key: item["trusted"] for key, item in devices.items()} == {"dev-a": True, "dev-b": False}


async def test_trust_put_false_untrusts(api: Api) -> None:
    await api.create("u-trust", "dev-a")
    await set_trust(api, "u-trust", "dev-a", True)

    body = await set_trust(api, "u-trust", "dev-a", False)

    assert body["trusted"] is False
    assert (await list_devices(api, "u-trust"))["dev-a"]["trusted"] is False


async def test_trust_put_keeps_first_seen(api: Api) -> None:
    await api.create("u-trust", "dev-a")
    before = (await list_devices(api, "u-trust"))["dev-a"]

    body = await set_trust(api, "u-trust", "dev-a", True)

    assert body["first_seen_at"] == before["first_seen_at"]


async def test_trust_put_unknown_device_404(api: Api) -> None:
    await api.create("u-trust", "dev-a")

    status, body, headers = await api.manage("PUT", device_path("u-trust", "dev-never"),
                                             json={"trusted": True})

    assert status == 404
    assert body["code"] == "not_found"
    assert headers["Content-Type"].startswith(PROBLEM_TYPE)


async def test_trust_put_unknown_user_404(api: Api) -> None:
    status, body, _ = await api.manage("PUT", device_path("u-never-seen", "dev-a"), json={"trusted": True})

    assert status == 404
    assert body["code"] == "not_found"


async def test_trust_put_device_of_other_user_404(api: Api) -> None:
    await api.create("u-owner", "dev-a")
    await api.create("u-other", "dev-b")

    status, body, _ = await api.manage("PUT", device_path("u-other", "dev-a"), json={"trusted": True})

    assert status == 404
    assert body["code"] == "not_found"


async def test_trust_put_unknown_device_not_added(api: Api) -> None:
    await api.create("u-trust", "dev-a")
    await api.manage("PUT", device_path("u-trust", "dev-never"), json={"trusted": True})

    devices = await list_devices(api, "u-trust")

    assert set(devices) == {"dev-a"}


@pytest.mark.parametrize("body", [
    pytest.param(b"{}", id="missing-field"),
    pytest.param(b'{"trusted": "yes"}', id="string"),
    pytest.param(b'{"trusted": 1}', id="integer"),
    pytest.param(b'{"trusted": null}', id="null"),
    pytest.param(b'{"trusted": true, "note": "x"}', id="unknown-field"),
    pytest.param(b"{trusted: true", id="not-json"),
    pytest.param(b"", id="empty"),
    pytest.param(b"[true]", id="array"),
])
async def test_trust_put_bad_body_400(api: Api, body: bytes) -> None:
    await api.create("u-trust", "dev-a")

    status, problem, headers = await api.manage(
        "PUT", device_path("u-trust", "dev-a"), data=body, headers={"Content-Type": "application/json"})

    assert status == 400
    assert problem["code"] == "invalid_request"
    assert headers["Content-Type"].startswith(PROBLEM_TYPE)


async def test_trust_put_bad_body_changes_nothing(api: Api) -> None:
    await api.create("u-trust", "dev-a")
    await api.manage("PUT", device_path("u-trust", "dev-a"), json={"trusted": True, "note": "x"})

    assert (await list_devices(api, "u-trust"))["dev-a"]["trusted"] is False


async def test_trust_put_without_api_key_401(api: Api) -> None:
    await api.create("u-trust", "dev-a")

    status, body, _ = await api.request("PUT", device_path("u-trust", "dev-a"), json={"trusted": True})

    assert status == 401
    assert body["code"] == "unauthorized"
    assert (await list_devices(api, "u-trust"))["dev-a"]["trusted"] is False


# -- the "trusted" policy ------------------------------------------------------

async def test_trust_policy_on_trusted_device_201(api: Api) -> None:
    await api.create("u-pol", "dev-t")
    await set_trust(api, "u-pol", "dev-t", True)

    status, body, _ = await create_status(api, "u-pol", "dev-t", policy="trusted")

    assert status == 201, body
    assert body["policy"] == "trusted"
    assert body["device"]["trusted"] is True


async def test_trust_policy_session_validates(api: Api) -> None:
    await api.create("u-pol", "dev-t")
    await set_trust(api, "u-pol", "dev-t", True)
    created = await api.create("u-pol", "dev-t", policy="trusted")

    status, _, _ = await api.validate(created["token"])

    assert status == 200


async def test_trust_policy_on_untrusted_device_403(api: Api) -> None:
    await api.create("u-pol", "dev-u")

    status, body, headers = await create_status(api, "u-pol", "dev-u", policy="trusted")

    assert status == 403
    problem = msgspec.convert(body, Problem)
    assert problem.status == 403
    assert problem.code == "device_not_trusted"
    assert headers["Content-Type"].startswith(PROBLEM_TYPE)


async def test_trust_policy_on_new_device_403(api: Api) -> None:
    await api.create("u-pol", "dev-u")

    status, body, _ = await create_status(api, "u-pol", "dev-new", policy="trusted")

    assert status == 403
    assert body["code"] == "device_not_trusted"


async def test_trust_policy_for_new_user_403(api: Api) -> None:
    status, body, _ = await create_status(api, "u-pol-new", "dev-new", policy="trusted")

    assert status == 403
    assert body["code"] == "device_not_trusted"


async def test_trust_policy_403_creates_no_session(api: Api) -> None:
    kept = await api.create("u-pol", "dev-u")
    await create_status(api, "u-pol", "dev-u", policy="trusted")
    await create_status(api, "u-pol", "dev-new", policy="trusted")

    assert await session_ids(api, "u-pol") == [kept["session_id"]]


async def test_trust_policy_403_keeps_device_session(api: Api) -> None:
    kept = await api.create("u-pol", "dev-u")
    await create_status(api, "u-pol", "dev-u", policy="trusted")

    status, _, _ = await api.validate(kept["token"], params={"extend": "false"})

    assert status == 200


async def test_trust_policy_403_adds_no_device(api: Api) -> None:
    await api.create("u-pol", "dev-u")
    await create_status(api, "u-pol", "dev-new", policy="trusted")

    assert set(await list_devices(api, "u-pol")) == {"dev-u"}


async def test_trust_policy_403_emits_no_session_event(api: Api) -> None:
    await api.create("u-pol", "dev-u")
    before = await user_events(api, "u-pol")
    await create_status(api, "u-pol", "dev-u", policy="trusted")
    await create_status(api, "u-pol", "dev-new", policy="trusted")

    assert await user_events(api, "u-pol") == before


async def test_trust_policy_after_untrust_403(api: Api) -> None:
    await api.create("u-pol", "dev-t")
    await set_trust(api, "u-pol", "dev-t", True)
    await set_trust(api, "u-pol", "dev-t", False)

    status, body, _ = await create_status(api, "u-pol", "dev-t", policy="trusted")

    assert status == 403
    assert body["code"] == "device_not_trusted"


# -- untrusting a device ---------------------------------------------------------

async def trusted_session(api: Api, user_id: str, device_id: str) -> dict[str, Any]:
    """Sign in on the device, trust it and start a "trusted" policy session there."""
    await api.create(user_id, device_id)
    await set_trust(api, user_id, device_id, True)
    return await api.create(user_id, device_id, policy="trusted")


async def test_untrust_revokes_trusted_session(api: Api) -> None:
    created = await trusted_session(api, "u-untrust", "dev-t")
    await set_trust(api, "u-untrust", "dev-t", False)

    status, body, _ = await api.validate(created["token"], params={"extend": "false"})

    assert status == 401
    assert body["code"] == "session_revoked"


async def test_untrust_trusted_session_leaves_list(api: Api) -> None:
    created = await trusted_session(api, "u-untrust", "dev-t")
    other = await api.create("u-untrust", "dev-other")
    await set_trust(api, "u-untrust", "dev-t", False)

    ids = await session_ids(api, "u-untrust")

    assert created["session_id"] not in ids
    assert other["session_id"] in ids


async def test_untrust_response_counts_no_session(api: Api) -> None:
    await trusted_session(api, "u-untrust", "dev-t")

    body = await set_trust(api, "u-untrust", "dev-t", False)

    assert body["trusted"] is False
    assert body["active_sessions"] == 0


async def test_untrust_emits_session_revoked(api: Api) -> None:
    created = await trusted_session(api, "u-untrust", "dev-t")
    await set_trust(api, "u-untrust", "dev-t", False)

    events = await user_events(api, "u-untrust")

    revoked = [(event["session_id"], event["device_id"], event["detail"].get("reason"))
               for event in events if event["type"] == "session_revoked"]
    assert revoked == [(created["session_id"], "dev-t", "device_untrusted")]


async def test_untrust_keeps_standard_session(api: Api) -> None:
    created = await api.create("u-untrust", "dev-s", policy="standard")
    await set_trust(api, "u-untrust", "dev-s", True)

    body = await set_trust(api, "u-untrust", "dev-s", False)

    assert body["active_sessions"] == 1
    status, _, _ = await api.validate(created["token"], params={"extend": "false"})
    assert status == 200


async def test_untrust_standard_session_emits_no_revoke(api: Api) -> None:
    await api.create("u-untrust", "dev-s", policy="standard")
    await set_trust(api, "u-untrust", "dev-s", True)
    await set_trust(api, "u-untrust", "dev-s", False)

    types = [event["type"] for event in await user_events(api, "u-untrust")]

    assert "session_revoked" not in types


async def test_untrust_keeps_trusted_session_of_other_device(api: Api) -> None:
    kept = await trusted_session(api, "u-untrust", "dev-t1")
    await trusted_session(api, "u-untrust", "dev-t2")
    await set_trust(api, "u-untrust", "dev-t2", False)

    status, _, _ = await api.validate(kept["token"], params={"extend": "false"})

    assert status == 200


async def test_trust_again_keeps_trusted_session(api: Api) -> None:
    created = await trusted_session(api, "u-untrust", "dev-t")
    await set_trust(api, "u-untrust", "dev-t", True)

    status, _, _ = await api.validate(created["token"], params={"extend": "false"})

    assert status == 200


# -- device.trusted in session items -----------------------------------------------

async def session_trust(api: Api, session_id: str, user_id: str, token: str) -> dict[str, bool]:
    """Return device.trusted of the session as shown by GET /v1/sessions/{id}, the user's list
    and /v1/me/sessions."""
    _, one, _ = await api.manage("GET", f"/v1/sessions/{session_id}")
    _, listed, _ = await api.manage("GET", f"/v1/users/{quote(user_id, safe='')}/sessions")
    _, mine, _ = await api.request("GET", "/v1/me/sessions", token=token)
    listed_item = next(item for item in listed["sessions"] if item["session_id"] == session_id)
    my_item = next(item for item in mine["sessions"] if item["session_id"] == session_id)
    return {"get": one["device"]["trusted"], "list": listed_item["device"]["trusted"],
            "me": my_item["device"]["trusted"]}


async def test_session_item_trust_false_before(api: Api) -> None:
    created = await api.create("u-item", "dev-a")

    assert created["device"]["trusted"] is False
    assert await session_trust(api, created["session_id"], "u-item", created["token"]) == {
        "get": False, "list": False, "me": False}


async def test_session_item_trust_follows_put(api: Api) -> None:
    created = await api.create("u-item", "dev-a")
    await set_trust(api, "u-item", "dev-a", True)

    assert await session_trust(api, created["session_id"], "u-item", created["token"]) == {
        "get": True, "list": True, "me": True}


async def test_session_item_trust_follows_untrust(api: Api) -> None:
    created = await api.create("u-item", "dev-a")
    await set_trust(api, "u-item", "dev-a", True)
    await set_trust(api, "u-item", "dev-a", False)

    assert await session_trust(api, created["session_id"], "u-item", created["token"]) == {
        "get": False, "list": False, "me": False}


async def test_session_item_trust_on_new_sign_in(api: Api) -> None:
    await api.create("u-item", "dev-a")
    await set_trust(api, "u-item", "dev-a", True)

    created = await api.create("u-item", "dev-a")

    assert created["device"]["trusted"] is True


# -- ids that need percent-encoding ---------------------------------------------------

@pytest.mark.parametrize("odd_id", ODD_IDS)
async def test_path_ids_list_devices(api: Api, odd_id: str) -> None:
    await api.create(odd_id, odd_id)

    devices = await list_devices(api, odd_id)

    assert list(devices) == [odd_id]


@pytest.mark.parametrize("odd_id", ODD_IDS)
async def test_path_ids_put_trust(api: Api, odd_id: str) -> None:
    await api.create(odd_id, odd_id)

    status, body, _ = await api.manage("PUT", device_path(odd_id, odd_id), json={"trusted": True})

    assert status == 200
    assert body["id"] == odd_id
    assert body["trusted"] is True


@pytest.mark.parametrize("odd_id", ODD_IDS)
async def test_path_ids_trusted_policy(api: Api, odd_id: str) -> None:
    await api.create(odd_id, odd_id)
    await set_trust(api, odd_id, odd_id, True)

    status, body, _ = await create_status(api, odd_id, odd_id, policy="trusted")

    assert status == 201, body


async def test_path_ids_users_kept_apart(api: Api) -> None:
    # Ids that differ only in characters a naive key layout could confuse.
    await api.create("{a}", "dev-1")
    await api.create("a", "dev-2")
    await api.create("{a}:b", "dev-3")

    assert set(await list_devices(api, "{a}")) == {"dev-1"}
    assert set(await list_devices(api, "a")) == {"dev-2"}
    assert set(await list_devices(api, "{a}:b")) == {"dev-3"}


async def test_path_ids_device_lookalike_404(api: Api) -> None:
    await api.create("u-odd", "{dev}")

    status, body, _ = await api.manage("PUT", device_path("u-odd", "dev"), json={"trusted": True})

    assert status == 404
    assert body["code"] == "not_found"
