"""API fuzzing: schemathesis sends generated requests to every operation of /openapi.json.

Each operation gets up to EXAMPLES_PER_OPERATION requests, valid and
invalid by the document, with real credentials: the API key for
management operations and, for self-service ones, the token of a session
created for that request. Path ids are sometimes swapped for the ids of
that session, so requests also reach the success paths. Every response
must be no 5xx, match its documented status, media type and schema, and
every problem body must carry a snake_case code.

The service runs in the test's event loop while schemathesis, which is
synchronous, runs in a worker thread. Only the single backend is fuzzed:
the cluster backend serves the same document through the same handlers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import ROUTES
from tests.conftest import API_KEY, TEST_CONFIG, Backend, ServiceFactory

EXAMPLES_PER_OPERATION = 25
# Seconds a request may take; an event stream is read this long at most.
REQUEST_TIMEOUT_S = 5.0
# Seconds after which the session behind an event stream is revoked, which ends the stream.
STREAM_REVOKE_AFTER_S = 0.2

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]
PROBLEM_CODE = re.compile(r"\A[a-z][a-z0-9]*(?:_[a-z0-9]+)*\Z")
PROBLEM_FIELDS = {"type", "title", "status", "detail", "code"}

OPERATIONS = [(method, path) for method, path, _ in ROUTES] + [
    ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/openapi.json"),
]

_user_numbers = itertools.count()


class Fixture:
    """A session made for one generated request: its ids and token."""

    def __init__(self, http: requests.Session, base_url: str) -> None:
        number = next(_user_numbers)
        self.user_id = f"fuzz-{threading.get_ident()}-{number}"
        self.device_id = f"device-{number}"
        response = http.post(f"{base_url}/v1/sessions", timeout=REQUEST_TIMEOUT_S,
                             headers={"Authorization": f"Bearer {API_KEY}"},
                             json={"user_id": self.user_id, "device": {"id": self.device_id}})
        assert response.status_code == 201, response.text
        created = response.json()
        self.session_id: str = created["session_id"]
        self.token: str = created["token"]


def check_problem_body(case: schemathesis.Case, response: schemathesis.Response) -> None:
    """Every 4xx or 5xx body is problem details whose code is a stable snake_case identifier."""
    if response.status_code < 400:
        return
    request = f"{case.method} {case.formatted_path}"
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/problem+json"), (request, response.text)
    body = json.loads(response.content)
    assert PROBLEM_FIELDS <= set(body), (request, body)
    assert body["status"] == response.status_code, (request, body)
    assert PROBLEM_CODE.match(body["code"]), (request, body)


def use_real_ids(case: schemathesis.Case, fixture: Fixture) -> None:
    """Put the fixture session's ids into the path, so the request can succeed."""
    real = {"session_id": fixture.session_id, "user_id": fixture.user_id, "device_id": fixture.device_id}
    for name in list(case.path_parameters or {}):
        if name in real:
            case.path_parameters[name] = real[name]


def checks_for(case: schemathesis.Case) -> list[Any]:
    """Return the checks for a case; undocumented query parameters are ignored, so they need no 4xx."""
    documented = {parameter["name"] for parameter in case.operation.definition.raw.get("parameters", [])
                  if parameter["in"] == "query"}
    meta = case.meta
    undocumented = set(case.query or {}) - documented
    if meta is not None and meta.is_negative_at(ParameterLocation.QUERY) and undocumented:
        return [check for check in CHECKS if check is not negative_data_rejection]
    return CHECKS


def credentials(operation: schemathesis.APIOperation, fixture: Fixture) -> dict[str, str]:
    security = operation.definition.raw.get("security", [])
    schemes = {name for requirement in security for name in requirement}
    if "apiKey" in schemes:
        return {"Authorization": f"Bearer {API_KEY}"}
    if "sessionToken" in schemes:
        return {"Authorization": f"Bearer {fixture.token}"}
    return {}


def fuzz_operation(document: dict[str, Any], base_url: str, method: str, path: str) -> None:
    """Run schemathesis on one operation; raise the first failure found."""
    config = schemathesis.Config.from_dict({"request-timeout": REQUEST_TIMEOUT_S, "max-stream-events": 2})
    schema = schemathesis.openapi.from_dict(document, config=config)
    operation = schema[path][method]
    strategy = st.one_of(operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
                         operation.as_strategy(schemathesis.GenerationMode.NEGATIVE))
    is_stream = path == "/v1/me/events"

    @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                         derandomize=True, phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(case=strategy, real_ids=st.booleans())
    def run(case: schemathesis.Case, real_ids: bool) -> None:
        with requests.Session() as http:
            fixture = Fixture(http, base_url)
            # A negative case must keep its invalid values, so the service has something to reject.
            if real_ids and case.meta is not None and not case.meta.generation.mode.is_negative:
                use_real_ids(case, fixture)
            # Credentials go into the case itself, and the header is marked as edited, so
            # schemathesis no longer counts a missing Authorization as the invalid part.
            case.headers = {**(case.headers or {}), **credentials(operation, fixture)}
            if case.meta is not None:
                case.meta.mark_dirty(ParameterLocation.HEADER)
            timer = None
            if is_stream:
                timer = threading.Timer(STREAM_REVOKE_AFTER_S, http.delete,
                                        args=(f"{base_url}/v1/sessions/{fixture.session_id}",),
                                        kwargs={"headers": {"Authorization": f"Bearer {API_KEY}"},
                                                "timeout": REQUEST_TIMEOUT_S})
                timer.start()
            try:
                response = case.call(base_url=base_url, session=http)
            finally:
                if timer is not None:
                    timer.cancel()
            case.validate_response(response, checks=checks_for(case))
            check_problem_body(case, response)

    run()


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
async def test_fuzz_operation(method: str, path: str, backend: Backend, make_service: ServiceFactory) -> None:
    if backend.cluster:
        pytest.skip("fuzzed on the single backend only")
    api = await make_service(TEST_CONFIG)
    status, document, _ = await api.request("GET", "/openapi.json")
    assert status == 200

    await asyncio.to_thread(fuzz_operation, document, api.base_url, method, path)
