from __future__ import annotations

from service.app import ROUTES
from service.openapi import openapi_document
from tests.conftest import Api


def test_openapi_document_describes_every_route() -> None:
    document = openapi_document(ROUTES)

    for method, path, _ in ROUTES:
        assert method.lower() in document["paths"][path], f"{method} {path}"


def test_openapi_document_is_3_1() -> None:
    assert openapi_document(ROUTES)["openapi"] == "3.1.0"


async def test_openapi_served_by_service(api: Api) -> None:
    status, body, _ = await api.request("GET", "/openapi.json")

    assert status == 200
    assert "/v1/validate" in body["paths"]
    assert "CreateSessionRequest" in body["components"]["schemas"]
