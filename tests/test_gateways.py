"""Gateways in front of an app: nginx and Caddy run from deploy/, Envoy and Traefik configs checked.

nginx (auth_request) and Caddy (forward_auth) are the Debian binaries, each
started on a free 127.0.0.1 port with the shipped config rendered to the
test's ports. Behind them a recording app shows exactly what reaches the
application. Envoy and Traefik are not installable on our machines: their
configs are parsed and checked for the validate path and header lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.embedded import free_port
from tests.conftest import Api, ServiceFactory
from tests.gateways import (
    DEPLOY_DIR,
    GATEWAYS,
    GatewayProcess,
    Received,
    Recorder,
    find_binary,
    load_yaml_subset,
)
from tests.redis_server import RedisServer
from tests.service_process import ensure_redis_running

IDENTITY_HEADERS = ("X-User-Id", "X-Session-Id", "X-Device-Id")
CREDENTIAL_HEADERS = ("Authorization", "Cookie")
INVALID_TOKEN_CHALLENGE = 'Bearer error="invalid_token"'
# Per request through a gateway, far above the gateways' own 2 s timeouts.
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=15)
# What a client sends to pose as someone else.
FORGED_IDENTITY = {"X-User-Id": "admin", "X-Session-Id": "sess_forged", "X-Device-Id": "forged-device",
                   "X-Session-Expires-At": "2099-01-01T00:00:00Z"}


@dataclasses.dataclass
class Reply:
    status: int
    headers: Any
    raw_headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def problem_code(self) -> str | None:
        """The problem code of a JSON body, None for any other body (nginx's own error pages)."""
        if "json" not in self.headers.get("Content-Type", ""):
            return None
        return json.loads(self.body).get("code")


@dataclasses.dataclass
class Stack:
    """A gateway between a client and a recording app, checking with the session store."""

    gateway: GatewayProcess
    app: Recorder
    http: aiohttp.ClientSession

    async def send(self, path: str = "/app/resource", *, method: str = "GET",
                   headers: dict[str, str] | None = None, data: bytes | None = None) -> Reply:
        async with self.http.request(method, self.gateway.base_url + path, headers=headers or {},
                                     data=data, allow_redirects=False) as response:
            body = await response.read()
            return Reply(response.status, response.headers, tuple(response.raw_headers), body)

    def only_request(self) -> Received:
        assert len(self.app.requests) == 1, self.app.requests
        return self.app.requests[0]


def port_of(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])


def forged_token(session_id: str) -> str:
    """A well-formed token naming a real session, with a secret that is not its own."""
    return f"{session_id.removeprefix('sess_')}.{secrets.token_urlsafe(32)}"


@pytest.fixture(params=sorted(GATEWAYS))
def gateway_name(request: pytest.FixtureRequest) -> str:
    name = request.param
    if find_binary(name) is None:
        pytest.fail(f"{name} is not installed: apt-get install -y nginx-light caddy (as .ci/run does)")
    return name


@pytest.fixture
async def app() -> AsyncIterator[Recorder]:
    recorder = Recorder()
    await recorder.start()
    yield recorder
    await recorder.stop()


@contextlib.asynccontextmanager
async def run_stack(name: str, workdir: Path, session_store_port: int, app: Recorder) -> AsyncIterator[Stack]:
    """Start the named gateway in front of app, checking with the store on session_store_port."""
    gateway = GATEWAYS[name](workdir, session_store_port=session_store_port, app_port=app.port)
    try:
        gateway.start()
        await gateway.wait_ready()
        async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT,
                                         cookie_jar=aiohttp.DummyCookieJar()) as http:
            yield Stack(gateway, app, http)
    finally:
        gateway.stop()


@pytest.fixture
async def service(make_service: ServiceFactory) -> Api:
    return await make_service()


@pytest.fixture
async def stack(gateway_name: str, tmp_path: Path, service: Api, app: Recorder) -> AsyncIterator[Stack]:
    """The gateway in front of the recording app, checking with the real session store."""
    async with run_stack(gateway_name, tmp_path / gateway_name, port_of(service.base_url), app) as running:
        yield running


def assert_identity(received: Received, created: dict[str, Any]) -> None:
    assert received.header("X-User-Id") == created["user_id"]
    assert received.header("X-Session-Id") == created["session_id"]
    assert received.header("X-Device-Id") == created["device"]["id"]
    assert received.header("X-Session-Expires-At"), received.raw_headers


# -- valid tokens ----------------------------------------------------------------

async def test_bearer_token_reaches_app(stack: Stack, service: Api) -> None:
    created = await service.create("u-gateway", "dev-phone")

    reply = await stack.send("/app/orders?page=2", headers={"Authorization": f"Bearer {created['token']}"})

    assert reply.status == 200, (reply.status, reply.body, stack.gateway.log())
    received = stack.only_request()
    assert (received.method, received.path_qs) == ("GET", "/app/orders?page=2")
    assert_identity(received, created)


async def test_cookie_token_reaches_app(stack: Stack, service: Api) -> None:
    created = await service.create("u-gateway", "dev-browser")

    reply = await stack.send(headers={"Cookie": f"theme=dark; session={created['token']}"})

    assert reply.status == 200, (reply.status, reply.body, stack.gateway.log())
    assert_identity(stack.only_request(), created)


async def test_request_body_reaches_app(stack: Stack, service: Api) -> None:
    created = await service.create("u-gateway", "dev-phone")
    body = b'{"item": "book", "quantity": 2}'

    reply = await stack.send("/app/orders", method="POST", data=body,
                             headers={"Authorization": f"Bearer {created['token']}",
                                      "Content-Type": "application/json"})

    assert reply.status == 200, (reply.status, reply.body)
    received = stack.only_request()
    assert (received.method, received.body) == ("POST", body)
    assert_identity(received, created)


# -- rejected tokens: 401, and the app receives nothing -------------------------

async def test_invalid_tokens_get_401(stack: Stack, service: Api) -> None:
    created = await service.create("u-gateway", "dev-phone")
    attempts = {
        "missing": {},
        "malformed bearer": {"Authorization": "Bearer not-a-token"},
        "wrong secret": {"Authorization": f"Bearer {forged_token(created['session_id'])}"},
        "malformed cookie": {"Cookie": "session=not-a-token"},
        "other scheme": {"Authorization": f"Basic {created['token']}"},
    }
    for name, headers in attempts.items():
        reply = await stack.send(headers=headers)
        assert reply.status == 401, (name, reply.status, reply.body)
        assert reply.headers.getall("WWW-Authenticate") == [INVALID_TOKEN_CHALLENGE], name
        assert reply.problem_code() in (None, "invalid_token"), (name, reply.body)
    assert stack.app.requests == []


async def test_revoked_token_gets_401(stack: Stack, service: Api) -> None:
    created = await service.create("u-gateway", "dev-phone")
    status, _, _ = await service.manage("DELETE", f"/v1/sessions/{created['session_id']}")
    assert status == 204

    token = created["token"]
    for headers in ({"Authorization": f"Bearer {token}"}, {"Cookie": f"session={token}"}):
        reply = await stack.send(headers=headers)
        assert reply.status == 401, (reply.status, reply.body)
        assert reply.headers.getall("WWW-Authenticate") == [INVALID_TOKEN_CHALLENGE]
        assert reply.problem_code() in (None, "session_revoked"), reply.body
    assert stack.app.requests == []


@pytest.mark.slow
async def test_expired_token_gets_401(stack: Stack, service: Api) -> None:
    created = await service.create("u-gateway", "dev-phone", policy="short", expires_in=1)
    await asyncio.sleep(2.0)

    reply = await stack.send(headers={"Authorization": f"Bearer {created['token']}"})

    assert reply.status == 401, (reply.status, reply.body)
    assert reply.headers.getall("WWW-Authenticate") == [INVALID_TOKEN_CHALLENGE]
    assert reply.problem_code() in (None, "session_expired"), reply.body
    assert stack.app.requests == []


# -- headers the client may not choose ------------------------------------------

async def test_client_identity_headers_replaced(stack: Stack, service: Api) -> None:
    created = await service.create("u-gateway", "dev-phone")

    reply = await stack.send(headers={"Authorization": f"Bearer {created['token']}", **FORGED_IDENTITY,
                                      "X-Forwarded-For": "203.0.113.9"})

    assert reply.status == 200, (reply.status, reply.body)
    received = stack.only_request()
    assert_identity(received, created)
    assert received.header("X-Session-Expires-At") != FORGED_IDENTITY["X-Session-Expires-At"]
    assert received.values("X-Forwarded-For") == ["127.0.0.1"]


async def test_unicode_ids_without_line_breaks(stack: Stack, service: Api) -> None:
    # U+2028 and U+2029 are the Unicode line and paragraph separators. They,
    # "Ω" and the emoji take several UTF-8 bytes, and none is a CR or LF byte.
    user_id = "ü-用户-\u2028-Ω"
    device = {"id": "设备-\u2029-📱", "type": "iPhone_13_Pro", "name": "Sarah’s 📱\u2028iPhone"}
    status, created, _ = await service.manage("POST", "/v1/sessions", json={"user_id": user_id,
                                                                            "device": device})
    assert status == 201, created

    reply = await stack.send(headers={"Authorization": f"Bearer {created['token']}"})

    assert reply.status == 200, (reply.status, reply.body, stack.gateway.log())
    received = stack.only_request()
    assert_identity(received, created)
    assert received.header("X-User-Id") == user_id
    assert received.header("X-Device-Id") == device["id"]
    for name, value in received.raw_headers + reply.raw_headers:
        assert b"\r" not in name + value, (name, value)
        assert b"\n" not in name + value, (name, value)
    # The store rejects a CR or LF in ids and names, so none can reach a header.
    for field, value in (("user_id", "u-1\r\nX-Injected: 1"), ("device.id", "d\nX-Injected: 1"),
                         ("device.name", "phone\r\nX-Injected: 1")):
        body: dict[str, Any] = {"user_id": "u-2", "device": {"id": "dev-2"}}
        if field == "user_id":
            body["user_id"] = value
        else:
            body["device"][field.split(".")[1]] = value
        status, problem, _ = await service.manage("POST", "/v1/sessions", json=body)
        assert (status, problem["code"]) == (400, "invalid_request"), (field, problem)


# -- the session store down --------------------------------------------------------

async def test_redis_down_gives_503(stack: Stack, service: Api, redis_server: RedisServer) -> None:
    created = await service.create("u-gateway", "dev-phone")
    await asyncio.to_thread(redis_server.stop)
    try:
        for headers in ({"Authorization": f"Bearer {created['token']}"},
                        {"Cookie": f"session={created['token']}"}):
            reply = await stack.send(headers=headers)
            assert reply.status == 503, (reply.status, reply.body)
            assert reply.problem_code() == "store_unavailable", reply.body
    finally:
        await asyncio.to_thread(ensure_redis_running, redis_server)
    assert stack.app.requests == []


# -- what a gateway sends to the session store (a recorder replaces it) -------------

@pytest.fixture
async def fake_store() -> AsyncIterator[Recorder]:
    """A recorder in place of the session store, returning 200 with identity headers."""
    recorder = Recorder(headers={"X-User-Id": "u-fake", "X-Session-Id": "sess_fake",
                                 "X-Device-Id": "dev-fake", "X-Session-Expires-At": "2030-01-01T00:00:00Z"})
    await recorder.start()
    yield recorder
    await recorder.stop()


@pytest.fixture
async def fake_stack(gateway_name: str, tmp_path: Path, fake_store: Recorder,
                     app: Recorder) -> AsyncIterator[Stack]:
    async with run_stack(gateway_name, tmp_path / gateway_name, fake_store.port, app) as running:
        yield running


async def test_check_sends_credentials_not_body(fake_stack: Stack, fake_store: Recorder) -> None:
    body = b"x" * 4096
    headers = {"Authorization": "Bearer abc.def", "Cookie": "session=abc.def; theme=dark",
               "User-Agent": "gateway-test/1", "X-Forwarded-For": "203.0.113.9",
               "Content-Type": "application/octet-stream"}

    reply = await fake_stack.send("/app/upload?extend=false&x=1", method="PUT", headers=headers, data=body)

    assert reply.status == 200, (reply.status, reply.body, fake_stack.gateway.log())
    assert len(fake_store.requests) == 1, fake_store.requests
    check = fake_store.requests[0]
    # A GET of /v1/validate without the client's query string or body.
    assert (check.method, check.path_qs, check.body) == ("GET", "/v1/validate", b"")
    for name in ("Authorization", "Cookie", "User-Agent"):
        assert check.header(name) == headers[name], name
    assert check.values("X-Forwarded-For") == ["127.0.0.1"]
    # The app gets the request as sent, with the store's identity.
    received = fake_stack.only_request()
    assert (received.method, received.path_qs, received.body) == ("PUT", "/app/upload?extend=false&x=1", body)
    assert received.header("X-User-Id") == "u-fake"


async def test_missing_identity_headers_stay_absent(gateway_name: str, tmp_path: Path,
                                                    app: Recorder) -> None:
    """A 200 without identity headers still never lets the client's own through."""
    bare_store = Recorder()
    await bare_store.start()
    try:
        async with run_stack(gateway_name, tmp_path / gateway_name, bare_store.port, app) as stack:
            reply = await stack.send(headers={"Authorization": "Bearer abc.def", **FORGED_IDENTITY})
            assert reply.status == 200, (reply.status, reply.body)
            received = stack.only_request()
            for name in FORGED_IDENTITY:
                assert [value for value in received.values(name) if value] == [], (name, received.raw_headers)
    finally:
        await bare_store.stop()


@pytest.mark.parametrize("store_status", [503, 500])
async def test_store_errors_fail_closed(gateway_name: str, tmp_path: Path, app: Recorder,
                                        store_status: int) -> None:
    failing_store = Recorder(status=store_status, headers={"Retry-After": "1"})
    await failing_store.start()
    try:
        async with run_stack(gateway_name, tmp_path / gateway_name, failing_store.port, app) as stack:
            reply = await stack.send(headers={"Authorization": "Bearer abc.def"})
            # nginx returns 503 for any failed check, but Caddy returns the store's response.
            expected = 503 if gateway_name == "nginx" else store_status
            assert reply.status == expected, (reply.status, reply.body)
            assert app.requests == []
    finally:
        await failing_store.stop()


async def test_unreachable_store_fails_closed(gateway_name: str, tmp_path: Path, app: Recorder) -> None:
    closed_port = free_port()
    async with run_stack(gateway_name, tmp_path / gateway_name, closed_port, app) as stack:
        reply = await stack.send(headers={"Authorization": "Bearer abc.def"})
        # Caddy returns 502 when it cannot connect to the forward_auth upstream.
        assert reply.status == (503 if gateway_name == "nginx" else 502), (reply.status, reply.body)
        assert app.requests == []


async def test_slow_store_times_out(gateway_name: str, tmp_path: Path, app: Recorder) -> None:
    slow_store = Recorder(delay_s=6.0)
    await slow_store.start()
    try:
        async with run_stack(gateway_name, tmp_path / gateway_name, slow_store.port, app) as stack:
            started = time.monotonic()
            reply = await stack.send(headers={"Authorization": "Bearer abc.def"})
            elapsed = time.monotonic() - started
            assert reply.status == (503 if gateway_name == "nginx" else 504), (reply.status, reply.body)
            # The configs wait 2 s for the response, plus 1.5 s of slack for a loaded machine.
            assert elapsed < 3.5, elapsed
            assert app.requests == []
    finally:
        await slow_store.stop()


# -- Envoy and Traefik: parsed and checked, not run --------------------------------

def find_named(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    matches = [item for item in items if item.get("name") == name]
    assert len(matches) == 1, (name, [item.get("name") for item in items])
    return matches[0]


def lowered(names: Iterable[str]) -> set[str]:
    return {name.lower() for name in names}


def exact_patterns(matcher: dict[str, Any]) -> set[str]:
    return {pattern["exact"].lower() for pattern in matcher["patterns"]}


def test_envoy_config_calls_validate() -> None:
    config = load_yaml_subset((DEPLOY_DIR / "envoy" / "envoy.yaml").read_text())
    listeners = config["static_resources"]["listeners"]
    clusters = {cluster["name"]: cluster for cluster in config["static_resources"]["clusters"]}

    manager = find_named(find_named(listeners, "gateway")["filter_chains"][0]["filters"],
                         "envoy.filters.network.http_connection_manager")["typed_config"]
    filters = manager["http_filters"]
    names = [item["name"] for item in filters]
    assert names == ["envoy.filters.http.header_mutation", "envoy.filters.http.ext_authz",
                     "envoy.filters.http.router"]

    # Client-sent identity headers are removed before the check.
    mutations = filters[0]["typed_config"]["mutations"]["request_mutations"]
    removed = {mutation["remove"] for mutation in mutations if "remove" in mutation}
    assert lowered(IDENTITY_HEADERS) <= removed
    # X-Forwarded-For is replaced by the client's address, which the check then carries.
    set_headers = {mutation["append"]["header"]["key"]: mutation["append"] for mutation in mutations
                   if "append" in mutation}
    forwarded_for = set_headers["x-forwarded-for"]
    assert forwarded_for["header"]["value"] == "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
    assert forwarded_for["append_action"] == "OVERWRITE_IF_EXISTS_OR_ADD"

    authz = filters[1]["typed_config"]
    assert authz["failure_mode_allow"] is False
    assert authz["status_on_error"]["code"] == "ServiceUnavailable"
    # Envoy always sends Authorization, and the config lists it too to make the intent visible.
    assert lowered(CREDENTIAL_HEADERS) <= exact_patterns(authz["allowed_headers"])
    assert "x-forwarded-for" in exact_patterns(authz["allowed_headers"])
    assert "with_request_body" not in authz
    service = authz["http_service"]
    assert service["path_prefix"] == "/v1/validate"
    assert service["server_uri"]["uri"].endswith("/v1/validate")
    response = service["authorization_response"]
    assert lowered(IDENTITY_HEADERS) <= exact_patterns(response["allowed_upstream_headers"])
    assert "www-authenticate" in exact_patterns(response["allowed_client_headers"])

    # The check goes through the loopback listener that rewrites every path to /v1/validate.
    check_cluster = clusters[service["server_uri"]["cluster"]]
    check_port = endpoint_port(check_cluster)
    rewrite_listener = [listener for listener in listeners
                        if listener["address"]["socket_address"]["port_value"] == check_port]
    assert len(rewrite_listener) == 1
    rewrite_manager = rewrite_listener[0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = rewrite_manager["route_config"]["virtual_hosts"][0]["routes"]
    assert len(routes) == 1
    assert routes[0]["route"]["regex_rewrite"]["substitution"] == "/v1/validate"
    assert routes[0]["route"]["cluster"] == "session_store"
    assert "session_store" in clusters

    for listener in listeners:
        assert listener["address"]["socket_address"]["address"] == "127.0.0.1"


def endpoint_port(cluster: dict[str, Any]) -> int:
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert len(endpoints) == 1
    return endpoints[0]["endpoint"]["address"]["socket_address"]["port_value"]


def test_traefik_config_calls_validate() -> None:
    config = load_yaml_subset((DEPLOY_DIR / "traefik" / "dynamic.yml").read_text())
    http = config["http"]
    auth = http["middlewares"]["session-store"]["forwardAuth"]
    assert auth["address"].endswith("/v1/validate")
    assert auth["trustForwardHeader"] is False
    assert lowered(CREDENTIAL_HEADERS) <= lowered(auth["authRequestHeaders"])
    assert lowered(IDENTITY_HEADERS) <= lowered(auth["authResponseHeaders"])
    assert "forwardBody" not in auth
    router = http["routers"]["app"]
    assert router["middlewares"] == ["session-store"]
    assert router["service"] in http["services"]

    static = load_yaml_subset((DEPLOY_DIR / "traefik" / "traefik.yml").read_text())
    assert static["entryPoints"]["web"]["address"].startswith("127.0.0.1:")
    assert router["entryPoints"] == ["web"]
    assert static["providers"]["file"]["filename"] == "deploy/traefik/dynamic.yml"
