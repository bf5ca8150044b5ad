from __future__ import annotations

from tests.conftest import Api


async def test_create_then_validate_returns_gateway_headers(api: Api) -> None:
    created = await api.create("u-smoke", "dev-1")

    status, body, headers = await api.validate(created["token"])

    assert status == 200
    assert body["session_id"] == created["session_id"]
    assert headers["X-User-Id"] == "u-smoke"
    assert headers["X-Device-Id"] == "dev-1"
