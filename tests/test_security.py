"""Attacks through the HTTP API against the real service and a real Redis.

Each test plays an attacker: another user's token, guessed session ids,
replayed tokens, credentials in the wrong place, oversized or malformed
headers, control characters in stored fields, and a Redis dump. Requests
that an HTTP client library would refuse to send, or would rewrite, go
over a raw socket to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from yarl import URL

from service.records import decode_session
from service.tokens import parse_session_id
from tests.conftest import API_KEY, Api

KEY_PREFIX = "ss:"
# Seconds to wait for the service to respond and close a raw connection.
RAW_READ_TIMEOUT_S = 10.0
# Size of each oversized header: far above aiohttp's 8190-byte field limit.
OVERSIZED_BYTES = 64 * 1024
QUERY_CREDENTIAL_NAMES = ["api_key", "token", "access_token"]
# C0 and C1 control characters, including the ones that split HTTP
# headers and log lines (CR, LF, NUL) and NEL (U+0085), which Python's
# str.splitlines() treats as a line break.
CONTROL_CHARS = {"cr": "\r", "lf": "\n", "nul": "\x00", "tab": "\t", "esc": "\x1b", "nel": "\x85",
                 "del": "\x7f"}
CREATE_FIELDS = ["user_id", "device.id", "device.type", "device.name", "client.user_agent"]
# Printable characters a create accepts that some software treats as line
# breaks or reorders on display.
UNICODE_VALUES = {"line_separator": "\u2028", "paragraph_separator": "\u2029",
                  "rtl_override": "\u202e", "bom": "\ufeff", "accented": "é", "emoji": "\U0001f600"}


class RawResponse(NamedTuple):
    """An HTTP response as bytes: status code, header lines (no CRLF) and body."""

    status: int
    header_lines: list[bytes]
    body: bytes

    def header_values(self, name: str) -> list[bytes]:
        prefix = name.lower().encode("ascii") + b":"
        return [line[len(prefix):].strip() for line in self.header_lines
                if line.lower().startswith(prefix)]


# -- helpers -----------------------------------------------------------------

def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def random_tag() -> str:
    """Return a well-formed user tag (16 URL-safe characters) of no user."""
    return _b64(secrets.token_bytes(12))


def random_sid() -> str:
    """Return a well-formed sid (8 URL-safe characters)."""
    return _b64(secrets.token_bytes(6))


def tag_of(session_id: str) -> str:
    ref = parse_session_id(session_id)
    assert ref is not None, session_id
    return ref.tag


def secret_of(token: str) -> str:
    return token.partition(".")[2]


def forged_token(session_id: str) -> str:
    """Return a token naming session_id with a fresh random secret."""
    ref = parse_session_id(session_id)
    assert ref is not None, session_id
    return f"{ref.tag}{ref.sid}.{secrets.token_urlsafe(32)}"


def random_token() -> str:
    return f"{random_tag()}{random_sid()}.{secrets.token_urlsafe(32)}"


def http_request(api: Api, method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    """Build an HTTP/1.1 request head with "Connection: close", so the server closes after responding."""
    host = urlsplit(api.base_url).netloc
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *[f"{k}: {v}" for k, v in headers],
             "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


async def raw_exchange(api: Api, request: bytes) -> RawResponse:
    """Send request bytes as they are to the service and read the response until the server closes."""
    port = urlsplit(api.base_url).port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        try:
            await writer.drain()
        except ConnectionError:
            # The server may respond and close before it reads all of an oversized request.
            pass
        data = await asyncio.wait_for(reader.read(), timeout=RAW_READ_TIMEOUT_S)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    return RawResponse(status, lines[1:], body)


async def manage_encoded(api: Api, method: str, path: str) -> tuple[int, Any]:
    """Call a management endpoint with the path sent exactly as given (percent escapes kept)."""
    url = URL(api.url(path), encoded=True)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with api.http.request(method, url, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def user_events(api: Api, user_id: str) -> list[dict[str, Any]]:
    status, body, _ = await api.manage("GET", f"/v1/users/{user_id}/events")
    assert status == 200, body
    return body["events"]


def set_field(body: dict[str, Any], dotted: str, value: str) -> None:
    """Set a create-body field named like "device.name", making the parent object if needed."""
    parent, _, name = dotted.rpartition(".")
    target = body.setdefault(parent, {}) if parent else body
    target[name] = value


def has_control_byte(line: bytes) -> bool:
    return any(byte in line for byte in (b"\r", b"\n", b"\x00"))


# -- another user's session ---------------------------------------------------

async def test_me_revoke_foreign_404(api: Api) -> None:
    victim = await api.create("u-victim", "dev-v")
    attacker = await api.create("u-attacker", "dev-a")

    status, body, _ = await api.request("DELETE", f"/v1/me/sessions/{victim['session_id']}",
                                        token=attacker["token"])

    assert status == 404
    assert body["code"] == "not_found"


async def test_me_revoke_foreign_like_missing(api: Api) -> None:
    victim = await api.create("u-victim", "dev-v")
    attacker = await api.create("u-attacker", "dev-a")
    own_tag = tag_of(attacker["session_id"])
    missing_ids = [f"sess_{own_tag}{random_sid()}", f"sess_{random_tag()}{random_sid()}"]

    _, foreign, _ = await api.request("DELETE", f"/v1/me/sessions/{victim['session_id']}",
                                      token=attacker["token"])
    missing = [(await api.request("DELETE", f"/v1/me/sessions/{session_id}", token=attacker["token"]))[1]
               for session_id in missing_ids]

    assert missing == [foreign, foreign]


async def test_me_revoke_foreign_victim_valid(api: Api) -> None:
    victim = await api.create("u-victim", "dev-v")
    attacker = await api.create("u-attacker", "dev-a")
    # The victim's sid under the attacker's own tag: a same-user id that does not exist.
    victim_sid = parse_session_id(victim["session_id"]).sid
    grafted = f"sess_{tag_of(attacker['session_id'])}{victim_sid}"

    for session_id in (victim["session_id"], grafted):
        await api.request("DELETE", f"/v1/me/sessions/{session_id}", token=attacker["token"])
    status, body, _ = await api.validate(victim["token"])

    assert status == 200
    assert body["session_id"] == victim["session_id"]


async def test_me_sessions_excludes_foreign(api: Api) -> None:
    victim = await api.create("u-victim", "dev-v")
    attacker = await api.create("u-attacker", "dev-a")

    status, body, _ = await api.request("GET", "/v1/me/sessions", token=attacker["token"])

    assert status == 200
    assert [item["session_id"] for item in body["sessions"]] == [attacker["session_id"]]
    assert victim["session_id"] not in str(body)


# -- session id enumeration ---------------------------------------------------

def probe_ids(live_session_id: str) -> list[str]:
    """Return session ids an attacker might try: random, right tag with a guessed sid, malformed."""
    ref = parse_session_id(live_session_id)
    assert ref is not None
    random_ids = [f"sess_{random_tag()}{random_sid()}" for _ in range(5)]
    same_tag = [f"sess_{ref.tag}{random_sid()}" for _ in range(5)]
    malformed = [
        "sess_", "sess_short", "session", "x", f"SESS_{ref.tag}{ref.sid}", f"{ref.tag}{ref.sid}",
        f"sess_{ref.tag}{ref.sid}x", f"sess_{ref.tag}{ref.sid[:-1]}", f"sess_{ref.tag}{ref.sid[:-1]}!",
        f"sess_{ref.tag}{ref.sid}%00", "sess_%0D%0AX-Injected:%201", "sess_%2e%2e", "sess_a%2Fb",
        "sess_" + "A" * 2000, f"sess_{ref.tag}%E2%80%A8{ref.sid}", f"{ref.tag}{ref.sid}.{'A' * 43}",
    ]
    return random_ids + same_tag + malformed


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_session_probe_all_404(api: Api, method: str) -> None:
    live = await api.create("u-victim", "dev-v")
    candidates = probe_ids(live["session_id"])

    results = [await manage_encoded(api, method, f"/v1/sessions/{candidate}") for candidate in candidates]

    assert [status for status, _ in results] == [404] * len(candidates)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_session_probe_same_body(api: Api, method: str) -> None:
    live = await api.create("u-victim", "dev-v")
    candidates = probe_ids(live["session_id"])

    bodies = [(await manage_encoded(api, method, f"/v1/sessions/{candidate}"))[1] for candidate in candidates]

    assert bodies == [bodies[0]] * len(candidates)


async def test_session_probe_delete_keeps_live(api: Api) -> None:
    live = await api.create("u-victim", "dev-v")

    for candidate in probe_ids(live["session_id"]):
        await manage_encoded(api, "DELETE", f"/v1/sessions/{candidate}")
    status, _, _ = await api.validate(live["token"])

    assert status == 200


@pytest.mark.parametrize("session_id", ["sess_{abc}", "sess_%7Babc%7D", "{}"])
async def test_session_probe_brace_id_404(api: Api, session_id: str) -> None:
    # The router does not match braces in this path segment, so these 404s
    # come from routing. Their detail differs from the handler's 404, but the code is the same.
    status, body = await manage_encoded(api, "GET", f"/v1/sessions/{session_id}")

    assert status == 404
    assert body["code"] == "not_found"


async def test_forged_token_like_random(api: Api) -> None:
    live = await api.create("u-victim", "dev-v")

    forged = await api.validate(forged_token(live["session_id"]))
    unknown = await api.validate(random_token())

    assert forged[0] == 401
    assert forged[1] == unknown[1]


async def test_revoked_forged_token_invalid(api: Api) -> None:
    revoked = await api.create("u-victim", "dev-v")
    status, _, _ = await api.manage("DELETE", f"/v1/sessions/{revoked['session_id']}")
    assert status == 204

    status, body, _ = await api.validate(forged_token(revoked["session_id"]))

    assert status == 401
    # session_revoked here would tell a guesser that the id once existed.
    assert body["code"] == "invalid_token"


# -- replay after revoke -----------------------------------------------------

async def test_replay_after_revoke_rejected(api: Api) -> None:
    created = await api.create("u-replay", "dev-1")
    status, _, _ = await api.manage("DELETE", f"/v1/sessions/{created['session_id']}")
    assert status == 204

    status, body, _ = await api.validate(created["token"])

    assert status == 401
    assert body["code"] == "session_revoked"


async def test_replay_after_revoke_event(api: Api) -> None:
    created = await api.create("u-replay", "dev-1")
    status, _, _ = await api.manage("DELETE", f"/v1/sessions/{created['session_id']}")
    assert status == 204

    await api.validate(created["token"])
    events = await user_events(api, "u-replay")

    replays = [event for event in events if event["type"] == "revoked_token_used"]
    assert [event["session_id"] for event in replays] == [created["session_id"]]


async def test_replay_after_sign_out_rejected(api: Api) -> None:
    created = await api.create("u-replay", "dev-1")
    status, _, _ = await api.request("DELETE", "/v1/me/session", token=created["token"])
    assert status == 204

    status, body, _ = await api.validate(created["token"])

    assert status == 401
    assert body["code"] == "session_revoked"


async def test_forged_replay_no_event(api: Api) -> None:
    created = await api.create("u-replay", "dev-1")
    status, _, _ = await api.manage("DELETE", f"/v1/sessions/{created['session_id']}")
    assert status == 204

    await api.validate(forged_token(created["session_id"]))
    events = await user_events(api, "u-replay")

    assert "revoked_token_used" not in [event["type"] for event in events]


# -- credential confusion ----------------------------------------------------

async def test_token_as_api_key_unauthorized(api: Api) -> None:
    created = await api.create("u-1", "dev-1")

    status, body, _ = await api.request("GET", "/v1/users/u-1/sessions", token=created["token"])

    assert status == 401
    assert body["code"] == "unauthorized"


async def test_token_as_api_key_create_unauthorized(api: Api) -> None:
    created = await api.create("u-1", "dev-1")
    new = {"user_id": "u-2", "device": {"id": "dev-2"}}

    status, body, _ = await api.request("POST", "/v1/sessions", token=created["token"], json=new)

    assert status == 401
    assert body["code"] == "unauthorized"


async def test_api_key_as_token_invalid(api: Api) -> None:
    status, body, _ = await api.validate(API_KEY)

    assert status == 401
    assert body["code"] == "invalid_token"


async def test_api_key_as_cookie_invalid(api: Api) -> None:
    status, body, _ = await api.request("GET", "/v1/me/sessions", headers={"Cookie": f"session={API_KEY}"})

    assert status == 401
    assert body["code"] == "invalid_token"


# -- credentials in the URL --------------------------------------------------

@pytest.mark.parametrize("name", QUERY_CREDENTIAL_NAMES)
async def test_query_api_key_ignored(api: Api, name: str) -> None:
    await api.create("u-1", "dev-1")

    status, body, _ = await api.request("GET", "/v1/users/u-1/sessions", params={name: API_KEY})

    assert status == 401
    assert body["code"] == "unauthorized"


@pytest.mark.parametrize("name", QUERY_CREDENTIAL_NAMES)
@pytest.mark.parametrize("path", ["/v1/validate", "/v1/me/session", "/v1/me/sessions"])
async def test_query_token_ignored(api: Api, name: str, path: str) -> None:
    created = await api.create("u-1", "dev-1")

    status, body, _ = await api.request("GET", path, params={name: created["token"]})

    assert status == 401
    assert body["code"] == "invalid_token"


async def test_path_token_not_found(api: Api) -> None:
    created = await api.create("u-1", "dev-1")

    status, _, _ = await api.request("GET", f"/v1/validate/{created['token']}")

    assert status == 404


# -- oversized and malformed headers ------------------------------------------

def oversized_requests(api: Api, token: str) -> dict[str, bytes]:
    """Return requests whose headers or URL exceed what a browser sends, by case name."""
    padding = "x" * OVERSIZED_BYTES
    many_cookies = "; ".join(f"c{i}=v{i}" for i in range(200))
    # 200 well-formed session tokens of no session, 50 per header to stay under the field limit.
    session_cookies = [("Cookie", "; ".join(f"session={random_token()}" for _ in range(50)))
                       for _ in range(4)]
    return {
        "authorization_64k": http_request(api, "GET", "/v1/validate",
                                          [("Authorization", f"Bearer {padding}")]),
        "cookie_64k": http_request(api, "GET", "/v1/validate", [("Cookie", f"session={padding}")]),
        "cookies_200_one_header": http_request(api, "GET", "/v1/validate", [("Cookie", many_cookies)]),
        "cookie_headers_200": http_request(api, "GET", "/v1/validate",
                                           [("Cookie", f"c{i}=v{i}") for i in range(200)]),
        "session_cookies_200": http_request(api, "GET", "/v1/validate", session_cookies),
        "api_key_64k": http_request(api, "GET", "/v1/users/u-1/sessions",
                                    [("Authorization", f"Bearer {API_KEY}{padding}")]),
        "url_64k": http_request(api, "GET", f"/v1/validate?{padding}", []),
        "headers_200": http_request(api, "GET", "/v1/validate", [(f"X-Pad-{i}", "v") for i in range(200)]),
    }


OVERSIZED_CASES = ["authorization_64k", "cookie_64k", "cookies_200_one_header", "cookie_headers_200",
                   "session_cookies_200", "api_key_64k", "url_64k", "headers_200"]


@pytest.mark.parametrize("case", OVERSIZED_CASES)
async def test_oversized_request_4xx(api: Api, case: str) -> None:
    created = await api.create("u-1", "dev-1")

    response = await raw_exchange(api, oversized_requests(api, created["token"])[case])

    assert 400 <= response.status < 500


@pytest.mark.parametrize("case", OVERSIZED_CASES)
async def test_oversized_request_service_survives(api: Api, case: str) -> None:
    created = await api.create("u-1", "dev-1")

    await raw_exchange(api, oversized_requests(api, created["token"])[case])
    status, _, _ = await api.validate(created["token"])

    assert status == 200


def token_in_bad_header(api: Api, token: str) -> dict[str, bytes]:
    """Return requests whose credential header starts with a real token but is oversized or malformed."""
    padding = "x" * OVERSIZED_BYTES
    return {
        "authorization_64k": http_request(api, "GET", "/v1/validate",
                                          [("Authorization", f"Bearer {token}{padding}")]),
        # A cookie bomb: other cookies set on a parent domain push the header past the limit.
        "cookie_64k": http_request(api, "GET", "/v1/validate",
                                   [("Cookie", f"session={token}; bomb={padding}")]),
        "authorization_nul": http_request(api, "GET", "/v1/validate",
                                          [("Authorization", f"Bearer {token}\x00")]),
    }


BAD_HEADER_CASES = ["authorization_64k", "cookie_64k", "authorization_nul"]


@pytest.mark.parametrize("case", BAD_HEADER_CASES)
async def test_bad_header_token_not_echoed(api: Api, case: str) -> None:
    created = await api.create("u-1", "dev-1")

    response = await raw_exchange(api, token_in_bad_header(api, created["token"])[case])

    assert 400 <= response.status < 500
    assert secret_of(created["token"]).encode("ascii") not in response.body


@pytest.mark.parametrize("case", BAD_HEADER_CASES)
async def test_bad_header_token_not_logged(api: Api, case: str, caplog: pytest.LogCaptureFixture) -> None:
    created = await api.create("u-1", "dev-1")
    caplog.set_level(logging.DEBUG)
    formatter = logging.Formatter()

    await raw_exchange(api, token_in_bad_header(api, created["token"])[case])
    leaking = [record.name for record in caplog.records
               if secret_of(created["token"]) in formatter.format(record)]

    assert leaking == []


# -- control characters and unicode in stored fields --------------------------

@pytest.mark.parametrize("char", CONTROL_CHARS.values(), ids=CONTROL_CHARS.keys())
@pytest.mark.parametrize("field", CREATE_FIELDS)
async def test_create_control_char_rejected(api: Api, field: str, char: str) -> None:
    body: dict[str, Any] = {"user_id": "u-1", "device": {"id": "dev-1"}}
    set_field(body, field, f"a{char}b")

    status, problem, _ = await api.manage("POST", "/v1/sessions", json=body)

    assert status == 400
    assert problem["code"] == "invalid_request"


@pytest.mark.parametrize("char", CONTROL_CHARS.values(), ids=CONTROL_CHARS.keys())
async def test_create_control_char_stores_nothing(api: Api, redis: aioredis.Redis, char: str) -> None:
    body = {"user_id": f"u{char}1", "device": {"id": "dev-1", "name": f"x{char}y"}}

    await api.manage("POST", "/v1/sessions", json=body)

    assert [key async for key in redis.scan_iter(match=f"{KEY_PREFIX}*")] == []


@pytest.mark.parametrize("escaped", ["u%0D%0A1", "u%001", "u%0A1", "u%C2%851"])
async def test_path_user_id_control_char_400(api: Api, escaped: str) -> None:
    status, body = await manage_encoded(api, "GET", f"/v1/users/{escaped}/sessions")

    assert status == 400
    assert body["code"] == "invalid_request"


@pytest.mark.parametrize("value", UNICODE_VALUES.values(), ids=UNICODE_VALUES.keys())
async def test_validate_unicode_headers_clean(api: Api, value: str) -> None:
    created = await api.create(f"u-{value}-1", f"dev-{value}-1",
                               device={"id": f"dev-{value}-1", "type": f"t{value}", "name": f"n{value}"})

    response = await raw_exchange(api, http_request(api, "GET", "/v1/validate",
                                                    [("Authorization", f"Bearer {created['token']}")]))

    assert response.status == 200
    assert [line for line in response.header_lines if has_control_byte(line)] == []
    assert len(response.header_values("X-User-Id")) == 1
    assert len(response.header_values("X-Device-Id")) == 1


@pytest.mark.parametrize("value", UNICODE_VALUES.values(), ids=UNICODE_VALUES.keys())
async def test_validate_unicode_user_id_exact(api: Api, value: str) -> None:
    user_id = f"u-{value}-1"
    created = await api.create(user_id, "dev-1")

    response = await raw_exchange(api, http_request(api, "GET", "/v1/validate",
                                                    [("Authorization", f"Bearer {created['token']}")]))

    assert response.header_values("X-User-Id") == [user_id.encode("utf-8")]


async def test_metadata_control_chars_round_trip(api: Api) -> None:
    # metadata is the app's own JSON: the contract puts no character rule
    # on it, and it only ever leaves the service JSON-escaped in a body.
    metadata = {"note\r\n": "line1\r\nline2\x00\u2028end", "nested": {"k": "\x1b[31m"}}
    created = await api.create("u-1", "dev-1", metadata=metadata)

    status, body, _ = await api.manage("GET", f"/v1/sessions/{created['session_id']}")

    assert status == 200
    assert body["metadata"] == metadata


async def test_metadata_not_in_validate_head(api: Api) -> None:
    created = await api.create("u-1", "dev-1", metadata={"marker": "meta-\r\nX-Injected: 1"})

    response = await raw_exchange(api, http_request(api, "GET", "/v1/validate",
                                                    [("Authorization", f"Bearer {created['token']}")]))

    assert response.status == 200
    assert response.header_values("X-Injected") == []


# -- X-Request-Id ------------------------------------------------------------

@pytest.mark.parametrize("raw_value", [b"abc\rX-Injected: 1", b"abc\nX-Injected: 1",
                                       b"abc\r\n X-Injected: 1", b"abc\x00X-Injected: 1"],
                         ids=["cr", "lf", "obs_fold", "nul"])
async def test_request_id_control_not_echoed(api: Api, raw_value: bytes) -> None:
    host = urlsplit(api.base_url).netloc.encode("ascii")
    request = (b"GET /healthz HTTP/1.1\r\nHost: " + host + b"\r\nX-Request-Id: " + raw_value
               + b"\r\nConnection: close\r\n\r\n")

    response = await raw_exchange(api, request)

    assert response.header_values("X-Injected") == []
    assert [value for value in response.header_values("X-Request-Id") if value.startswith(b"abc")] == []


@pytest.mark.parametrize("value", ["a\u2028b", "a b", "a%0d%0ab", "x" * 129])
async def test_request_id_malformed_replaced(api: Api, value: str) -> None:
    _, _, headers = await api.request("GET", "/healthz", headers={"X-Request-Id": value})

    assert headers["X-Request-Id"] != value


async def test_request_id_plain_echoed(api: Api) -> None:
    _, _, headers = await api.request("GET", "/healthz", headers={"X-Request-Id": "req-42:retry.1"})

    assert headers["X-Request-Id"] == "req-42:retry.1"


async def test_request_id_token_replaced(api: Api) -> None:
    created = await api.create("u-1", "dev-1")

    _, _, headers = await api.validate(created["token"], headers={"X-Request-Id": created["token"]})

    assert secret_of(created["token"]) not in headers["X-Request-Id"]


async def test_request_id_api_key_replaced(api: Api) -> None:
    _, _, headers = await api.manage("GET", "/v1/users/u-1/sessions", headers={"X-Request-Id": API_KEY})

    assert API_KEY not in headers["X-Request-Id"]


@pytest.mark.parametrize("shape", ["{token}:1", "req-{token}"])
async def test_request_id_embedded_token_replaced(api: Api, shape: str) -> None:
    created = await api.create("u-1", "dev-1")
    value = shape.format(token=created["token"])

    _, _, headers = await api.validate(created["token"], headers={"X-Request-Id": value})

    assert secret_of(created["token"]) not in headers["X-Request-Id"]


@pytest.mark.parametrize("shape", ["{key}:1", "req-{key}"])
async def test_request_id_embedded_api_key_replaced(api: Api, shape: str) -> None:
    value = shape.format(key=API_KEY)

    _, _, headers = await api.manage("GET", "/v1/users/u-1/sessions", headers={"X-Request-Id": value})

    assert API_KEY not in headers["X-Request-Id"]


# -- what a Redis dump contains ------------------------------------------------

async def dump_everything(redis: aioredis.Redis) -> dict[bytes, bytes]:
    """Read every key with the command for its type and with DUMP, and map each key to the bytes read."""
    dumped: dict[bytes, bytes] = {}
    async for key in redis.scan_iter(count=1000):
        kind = (await redis.type(key)).decode("ascii")
        parts: list[bytes] = [key]
        if kind == "string":
            parts.append(await redis.get(key) or b"")
        elif kind == "hash":
            for field, value in (await redis.hgetall(key)).items():
                parts += [field, value]
        elif kind == "zset":
            parts += [member for member, _ in await redis.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            for entry_id, fields in await redis.xrange(key):
                parts.append(entry_id)
                for field, value in fields.items():
                    parts += [field, value]
        elif kind == "list":
            parts += await redis.lrange(key, 0, -1)
        elif kind == "set":
            parts += list(await redis.smembers(key))
        parts.append(await redis.dump(key) or b"")
        dumped[key] = b"\x1f".join(parts)
    return dumped


async def exercise_every_write(api: Api) -> list[dict[str, Any]]:
    """Drive creates, validations, extension, anomalies, replacement and revokes, and return the creations."""
    client = {"ip": "203.0.113.7", "user_agent": "agent/1"}
    first = await api.create("u-dump", "dev-1", client=client, metadata={"plan": "pro"},
                             device={"id": "dev-1", "type": "phone", "name": "Sarah's phone"})
    second = await api.create("u-dump", "dev-2", client=client)
    replaced = await api.create("u-dump", "dev-3")
    replacement = await api.create("u-dump", "dev-3")

    await api.validate(first["token"])
    await api.request("GET", "/v1/validate", headers={"Cookie": f"session={first['token']}"})
    await api.request("POST", "/v1/me/session/extend", token=first["token"])
    await api.request("GET", "/v1/me/session", token=first["token"], headers={"User-Agent": "other/2"})
    await api.validate(forged_token(first["session_id"]))
    await api.request("DELETE", "/v1/me/session", token=second["token"])
    await api.validate(second["token"])
    await api.validate(replaced["token"])
    await api.manage("PUT", "/v1/users/u-dump/devices/dev-1", json={"trusted": True})
    return [first, second, replaced, replacement]


def secret_forms(token: str) -> dict[str, bytes]:
    """Return every form in which a token or its secret could have been stored."""
    secret = secret_of(token)
    raw_secret = base64.urlsafe_b64decode(secret + "=")
    digest = hashlib.sha256(secret.encode("ascii")).digest()
    return {
        "token": token.encode("ascii"),
        "token_base64": base64.b64encode(token.encode("ascii")),
        "secret": secret.encode("ascii"),
        "secret_bytes": raw_secret,
        "secret_base64": base64.b64encode(raw_secret),
        "full_sha256": digest,
        "full_sha256_hex": digest.hex().encode("ascii"),
    }


def expected_keys(created: list[dict[str, Any]]) -> set[bytes]:
    """Return keys the exercise must have left: a record, the markers hash and the global stream."""
    live = parse_session_id(created[0]["session_id"])
    signed_out = parse_session_id(created[1]["session_id"])
    assert live is not None
    assert signed_out is not None
    return {f"{KEY_PREFIX}{{{live.tag}}}:s".encode(),
            f"{KEY_PREFIX}{{{signed_out.tag}}}:x".encode(),
            f"{KEY_PREFIX}events".encode()}


async def test_redis_dump_no_token(api: Api, redis: aioredis.Redis) -> None:
    created = await exercise_every_write(api)
    await asyncio.sleep(0.2)  # let the copies to the global event stream land

    dumped = await dump_everything(redis)
    found = [(form, key) for session in created for form, needle in secret_forms(session["token"]).items()
             for key, blob in dumped.items() if needle in blob]

    # A user's keys and the global stream hash to different slots, so the scan covered more than one.
    assert expected_keys(created) <= set(dumped)
    assert found == []


async def test_redis_dump_no_api_key(api: Api, redis: aioredis.Redis) -> None:
    await exercise_every_write(api)
    await asyncio.sleep(0.2)

    dumped = await dump_everything(redis)

    assert [key for key, blob in dumped.items() if API_KEY.encode("ascii") in blob] == []


# -- secret comparison ----------------------------------------------------------
# validate_session.lua compares the stored secret hash with the request's
# using Lua's ==, which is not constant-time. That is safe because both
# sides are SHA-256 hashes (first 16 bytes) of 256-bit secrets. Timing can
# at most reveal a prefix of the stored hash. An attacker cannot choose a
# secret whose hash starts with a given prefix without a preimage search,
# so the leak does not help to forge a token. These tests measure no speed.
# They check that both outcomes complete and that Redis stores and
# compares the hash, not the secret.

async def test_validate_wrong_secret_completes(api: Api) -> None:
    created = await api.create("u-1", "dev-1")

    status, body, _ = await api.validate(forged_token(created["session_id"]))

    assert status == 401
    assert body["code"] == "invalid_token"


async def test_validate_right_secret_completes(api: Api) -> None:
    created = await api.create("u-1", "dev-1")

    status, _, _ = await api.validate(created["token"])

    assert status == 200


async def test_stored_secret_is_hash_prefix(api: Api, redis: aioredis.Redis) -> None:
    created = await api.create("u-1", "dev-1")
    ref = parse_session_id(created["session_id"])
    secret = secret_of(created["token"])

    raw = await redis.hget(f"{KEY_PREFIX}{{{ref.tag}}}:s", ref.sid)
    stored = bytes(decode_session(raw).secret_hash)

    # msgspec.Raw keeps the MessagePack header: 0xb0 is a 16-byte string.
    assert stored == b"\xb0" + hashlib.sha256(secret.encode("ascii")).digest()[:16]
