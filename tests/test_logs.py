"""Logs: with debug logging, no token, token secret or API key reaches a log line.

One service process serves every endpoint, including failures and a Redis outage,
and writes its stdout and stderr to one file. The tests then read that file.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis

from service.cli import SHUTDOWN_TIMEOUT_S
from service.logs import LOG_BUFFER_BYTES, JsonFormatter, TurnBufferedHandler
from tests.conftest import API_KEY, Api
from tests.redis_server import RedisServer
from tests.service_process import ServiceProcess, ensure_redis_running

USER = "u-logs"
# Seconds to wait past the 1 s window of the "short" policy before the token counts as expired.
EXPIRY_WAIT_S = 1.5

Outcome = tuple[int, str | None]


class ScenarioLog(msgspec.Struct, kw_only=True):
    """What the scenario left: the log lines, the secrets it sent, and its key outcomes."""

    lines: list[str]
    tokens: list[str]
    api_keys: list[str]
    outcomes: dict[str, Outcome]


def config_toml(api_keys: list[str]) -> str:
    keys = ", ".join(json.dumps(key) for key in api_keys)
    return f"""
[service]
log_level = "debug"
api_keys = [{keys}]
redis_timeout = 0.5

[policies.short]
expires_in = 1
min_expires_in = 1
max_lifetime = "1h"

[policies.pair]
expires_in = "1h"
max_sessions = 2
on_limit = "reject"
"""


def outcome(reply: tuple[int, Any, Any]) -> Outcome:
    status, body, _ = reply
    code = body.get("code") if isinstance(body, dict) else None
    return status, code


def encoded_forms(secret: str) -> dict[str, str]:
    """Return the secret raw, URL-encoded and base64-encoded (standard and URL-safe, padded or not)."""
    forms = {"raw": secret, "url-encoded": quote(secret, safe=""), "form-encoded": quote_plus(secret)}
    for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
        padded = encode(secret.encode("utf-8")).decode("ascii")
        forms[name] = padded
        forms[f"{name} unpadded"] = padded.rstrip("=")
    return forms


def token_secret(token: str) -> str:
    """Return the secret part of a token: everything after the dot."""
    return token.partition(".")[2]


def leaks(lines: list[str], secrets_sent: list[str]) -> list[tuple[str, int]]:
    """Return (encoding, line number) for every secret found in a line, in any encoded form."""
    found = []
    for secret in secrets_sent:
        for form_name, form in encoded_forms(secret).items():
            for number, line in enumerate(lines, start=1):
                if form in line:
                    found.append((form_name, number))
    return found


def json_records(lines: list[str]) -> list[dict[str, Any]]:
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


async def fetch_events_briefly(api: Api, token: str) -> Outcome:
    """Open the event stream for at most 1 s: a stream stays open, so a timeout is expected."""
    try:
        return outcome(await api.request("GET", "/v1/me/events", token=token,
                                         timeout=aiohttp.ClientTimeout(total=1)))
    except TimeoutError:
        return (200, None)


async def run_scenario(api: Api, redis_server: RedisServer, spare_key: str,
                       wrong_key: str) -> tuple[list[str], dict[str, Outcome]]:
    """Call every endpoint with good and bad credentials, and return the tokens sent and the key outcomes."""
    tokens: list[str] = []
    outcomes: dict[str, Outcome] = {}

    async def create(user_id: str, device_id: str, **fields: Any) -> dict[str, Any]:
        created = await api.create(user_id, device_id, **fields)
        tokens.append(created["token"])
        return created

    # Operations endpoints.
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        await api.request("GET", path)

    # Management authentication failures, including an API key in the query string.
    device = {"user_id": USER, "device": {"id": "phone"}}
    outcomes["no api key"] = outcome(await api.request("POST", "/v1/sessions", json=device))
    outcomes["wrong api key"] = outcome(await api.request("POST", "/v1/sessions", json=device,
                                                          api_key=wrong_key))
    outcomes["api key in query"] = outcome(await api.request(
        "GET", f"/v1/users/{USER}/sessions", params={"api_key": API_KEY}))
    await api.request("GET", f"/v1/users/{USER}/sessions", params={"access_token": spare_key})

    # Creation with either configured key.
    status, phone, _ = await api.request("POST", "/v1/sessions", json=device, api_key=spare_key)
    assert status == 201, phone
    tokens.append(phone["token"])
    laptop = await create(USER, "laptop", client={"ip": "203.0.113.7", "user_agent": "Firefox"})
    tablet = await create(USER, "tablet")
    token = phone["token"]

    # Validation: good token, scheme case, extend flag, bad flag.
    outcomes["valid"] = outcome(await api.validate(token))
    await api.request("GET", "/v1/validate", headers={"Authorization": f"bearer {token}"})
    await api.validate(token, params={"extend": "false"})
    outcomes["bad extend flag"] = outcome(await api.validate(token, params={"extend": "maybe"}))

    # Bad tokens: malformed, right session with a wrong secret, no token at all.
    outcomes["malformed token"] = outcome(await api.validate("not-a-token"))
    wrong_secret = token.partition(".")[0] + "." + secrets.token_urlsafe(32)
    tokens.append(wrong_secret)
    outcomes["wrong secret"] = outcome(await api.validate(wrong_secret))
    await api.request("GET", "/v1/validate")

    # Cookie tokens: a bad cookie before the good one, a quoted cookie, only a bad cookie.
    outcomes["cookies"] = outcome(await api.request(
        "GET", "/v1/validate", headers={"Cookie": f"session={wrong_secret}; session={token}"}))
    await api.request("GET", "/v1/validate", headers={"Cookie": f'session="{token}"'})
    await api.request("GET", "/v1/me/session", headers={"Cookie": f"other=1; session={wrong_secret}"})

    # Tokens in the URL are never read.
    outcomes["token in query"] = outcome(await api.request("GET", "/v1/validate",
                                                           params={"token": token}))
    await api.request("GET", "/v1/me/session", params={"access_token": token})
    await api.request("GET", f"/v1/sessions/{token}", api_key=API_KEY)

    # Self-service endpoints.
    await api.request("GET", "/v1/me/session", token=token)
    await api.request("POST", "/v1/me/session/extend", token=token)
    await api.request("GET", "/v1/me/sessions", token=token)
    await api.request("DELETE", f"/v1/me/sessions/{tablet['session_id']}", token=token)
    await api.request("DELETE", "/v1/me/sessions/sess_unknown", token=token)
    outcomes["bad scope"] = outcome(await api.request("DELETE", "/v1/me/sessions",
                                                      params={"scope": "everything"}, token=token))
    await fetch_events_briefly(api, token)
    await create(USER, "desktop")
    await api.request("DELETE", "/v1/me/sessions", params={"scope": "others"}, token=token)

    # Management endpoints.
    await api.manage("GET", f"/v1/sessions/{phone['session_id']}")
    await api.manage("GET", f"/v1/sessions/{laptop['session_id']}")
    await api.manage("GET", f"/v1/users/{USER}/sessions")
    await api.manage("PUT", f"/v1/users/{USER}/devices/phone", json={"trusted": True})
    await api.manage("PUT", f"/v1/users/{USER}/devices/never-seen", json={"trusted": True})
    await api.manage("GET", f"/v1/users/{USER}/devices")
    await api.manage("GET", f"/v1/users/{USER}/events", params={"limit": "10"})
    await create(USER, "watch")
    await api.manage("DELETE", f"/v1/users/{USER}/sessions", params={"except": phone["session_id"]})

    # Revoked tokens: by the management API, and by signing out.
    revoked = await create("u-logs-revoked", "dev-1")
    await api.manage("DELETE", f"/v1/sessions/{revoked['session_id']}")
    await api.manage("DELETE", f"/v1/sessions/{revoked['session_id']}")
    outcomes["revoked"] = outcome(await api.validate(revoked["token"]))
    signed_out = await create("u-logs-revoked", "dev-2")
    await api.request("DELETE", "/v1/me/session", token=signed_out["token"])
    await api.request("GET", "/v1/me/session", token=signed_out["token"])

    # An expired token.
    expired = await create("u-logs-expired", "dev-1", policy="short", extend_on_activity=False)
    await asyncio.sleep(EXPIRY_WAIT_S)
    outcomes["expired"] = outcome(await api.validate(expired["token"]))
    await api.request("POST", "/v1/me/session/extend", token=expired["token"])

    # The session limit of a reject policy.
    await create("u-logs-limit", "dev-1", policy="pair")
    await create("u-logs-limit", "dev-2", policy="pair")
    outcomes["limit"] = outcome(await api.manage(
        "POST", "/v1/sessions", json={"user_id": "u-logs-limit", "device": {"id": "dev-3"},
                                      "policy": "pair"}))

    # Bad input that carries a token in the rejected field or body.
    outcomes["bad input"] = outcome(await api.manage(
        "POST", "/v1/sessions", json={"user_id": USER, "device": {"id": "d", "token": token}}))
    await api.manage("POST", "/v1/sessions", json={**device, "expires_in": token})
    await api.manage("POST", "/v1/sessions", json={"user_id": token + "\n", "device": {"id": "d"}})
    await api.manage("POST", "/v1/sessions", data=f'{{"user_id": "{token}", ',
                     headers={"Content-Type": "application/json"})
    await api.manage("POST", "/v1/sessions", json={**device, "metadata": {"pad": token * 400}})

    # A Redis outage. Redis runs again afterwards, even if a request fails.
    await asyncio.to_thread(redis_server.stop)
    try:
        outcomes["outage"] = outcome(await api.validate(token))
        await api.request("GET", "/v1/me/session", token=token)
        await api.manage("POST", "/v1/sessions", json=device)
        await api.manage("GET", f"/v1/users/{USER}/sessions")
        await api.manage("DELETE", f"/v1/sessions/{phone['session_id']}")
        await api.request("GET", "/readyz")
    finally:
        await asyncio.to_thread(ensure_redis_running, redis_server)
    outcomes["after outage"] = outcome(await api.validate(token))
    return tokens, outcomes


@pytest.fixture(scope="module")
async def scenario_log(single_redis: RedisServer,
                       tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ScenarioLog]:
    ensure_redis_running(single_redis)
    raw = aioredis.Redis.from_url(single_redis.url)
    await raw.flushall()
    await raw.aclose()

    folder = tmp_path_factory.mktemp("logs")
    spare_key = "spare-" + secrets.token_urlsafe(24)
    wrong_key = "wrong-" + secrets.token_urlsafe(24)
    config_path = folder / "config.toml"
    config_path.write_text(config_toml([API_KEY, spare_key]), encoding="utf-8")
    log_path = folder / "service.log"
    service = ServiceProcess(single_redis.url, log_path, config_path=config_path)

    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        try:
            service.start()
            await service.wait_healthy()
            tokens, outcomes = await run_scenario(Api(http, service.base_url), single_redis,
                                                  spare_key, wrong_key)
            exit_code = await asyncio.to_thread(service.terminate, SHUTDOWN_TIMEOUT_S)
        finally:
            await asyncio.to_thread(service.kill)
    outcomes["exit"] = (exit_code if exit_code is not None else -1, None)

    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    secrets_sent = tokens + [token_secret(token) for token in tokens]
    yield ScenarioLog(lines=lines, tokens=secrets_sent, api_keys=[API_KEY, spare_key, wrong_key],
                      outcomes=outcomes)


def test_logs_scenario_reaches_failures(scenario_log: ScenarioLog) -> None:
    expected = {
        "no api key": (401, "unauthorized"),
        "wrong api key": (401, "unauthorized"),
        "api key in query": (401, "unauthorized"),
        "valid": (200, None),
        "bad extend flag": (400, "invalid_request"),
        "malformed token": (401, "invalid_token"),
        "wrong secret": (401, "invalid_token"),
        "cookies": (200, None),
        "token in query": (401, "invalid_token"),
        "bad scope": (400, "invalid_request"),
        "revoked": (401, "session_revoked"),
        "expired": (401, "session_expired"),
        "limit": (409, "session_limit_reached"),
        "bad input": (400, "invalid_request"),
        "outage": (503, "store_unavailable"),
        "after outage": (200, None),
        "exit": (0, None),
    }

    assert scenario_log.outcomes == expected


def test_logs_record_requests(scenario_log: ScenarioLog) -> None:
    routes = {record.get("route") for record in json_records(scenario_log.lines)
              if record.get("logger") == "session_store.http"}

    assert {"/v1/validate", "/v1/sessions", "/v1/me/session"} <= routes


def test_logs_lines_are_json(scenario_log: ScenarioLog) -> None:
    bad_lines = []
    for line in scenario_log.lines:
        try:
            record = json.loads(line)
        except ValueError:
            bad_lines.append(line)
            continue
        if not isinstance(record, dict):
            bad_lines.append(line)
            continue
        fields = [record.get("level"), record.get("logger"), record.get("message")]
        if not all(isinstance(field, str) and field for field in fields):
            bad_lines.append(line)

    assert bad_lines == []


def test_logs_have_no_token(scenario_log: ScenarioLog) -> None:
    assert leaks(scenario_log.lines, scenario_log.tokens) == []


def test_logs_have_no_api_key(scenario_log: ScenarioLog) -> None:
    assert leaks(scenario_log.lines, scenario_log.api_keys) == []


def test_logs_store_failure_warning(scenario_log: ScenarioLog) -> None:
    warnings = []
    for line in scenario_log.lines:
        records = json_records([line])
        if records and records[0].get("level") == "warning" \
                and records[0].get("logger") == "session_store.store":
            warnings.append(line)
    secrets_sent = scenario_log.tokens + scenario_log.api_keys

    assert warnings != []
    assert leaks(warnings, secrets_sent) == []


# -- the handler: one write per event-loop turn ---------------------------------

def turn_buffered_logger(path: Path) -> tuple[logging.Logger, TurnBufferedHandler]:
    """Return a logger writing JSON lines to path through a block-buffered TurnBufferedHandler."""
    stream = path.open("w", buffering=LOG_BUFFER_BYTES, encoding="utf-8")
    handler = TurnBufferedHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"session_store.test.{path.name}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, handler


def written_messages(path: Path) -> list[str]:
    return [json.loads(line)["message"] for line in path.read_text(encoding="utf-8").splitlines()]


async def test_handler_writes_info_lines_at_end_of_turn(tmp_path: Path) -> None:
    logger, handler = turn_buffered_logger(tmp_path / "turn.log")

    logger.info("first")
    logger.info("second")
    during_turn = written_messages(tmp_path / "turn.log")
    await asyncio.sleep(0)
    after_turn = written_messages(tmp_path / "turn.log")
    handler.stream.close()

    assert during_turn == []
    assert after_turn == ["first", "second"]


async def test_handler_writes_warning_at_once(tmp_path: Path) -> None:
    logger, handler = turn_buffered_logger(tmp_path / "warning.log")

    logger.info("request")
    logger.warning("redis unreachable")
    during_turn = written_messages(tmp_path / "warning.log")
    handler.stream.close()

    assert during_turn == ["request", "redis unreachable"]


def test_handler_writes_at_once_outside_event_loop(tmp_path: Path) -> None:
    logger, handler = turn_buffered_logger(tmp_path / "no-loop.log")

    logger.info("starting")
    written = written_messages(tmp_path / "no-loop.log")
    handler.stream.close()

    assert written == ["starting"]
