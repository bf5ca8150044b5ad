"""Metrics: names, route templates, request, validation, Redis, lifecycle and anomaly counters,
and the sampled live session estimates.

The service runs in the test process, whose registry every test shares,
so counters are compared before and after each step.
"""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio.cluster import RedisCluster as RedisClusterClient

from service.config import build_settings
from service.live_estimate import LiveEstimator
from service.redis_client import create_client
from service.store import Store
from tests.conftest import TEST_CONFIG, Api, Backend, ServiceFactory
from tests.redis_server import RedisServer
from tests.service_process import ensure_redis_running

Labels = dict[str, str]
PAUSE_MS = 1500

EXPECTED_FAMILIES = {
    ("session_store_http_requests", "counter"),
    ("session_store_http_request_duration_seconds", "histogram"),
    ("session_store_validations", "counter"),
    ("session_store_redis_call_duration_seconds", "histogram"),
    ("session_store_redis_errors", "counter"),
    ("session_store_sessions_created", "counter"),
    ("session_store_sessions_ended", "counter"),
    ("session_store_anomalies", "counter"),
    ("session_store_live_sessions", "gauge"),
    ("session_store_live_users", "gauge"),
    ("session_store_live_estimate_timestamp_seconds", "gauge"),
}


class Scrape:
    """One /metrics response, parsed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))

    def value(self, sample_name: str, **labels: str) -> float:
        """Return the sum of the samples named sample_name whose labels include labels (0 when none)."""
        total = 0.0
        for family in self.families:
            for sample in family.samples:
                if sample.name == sample_name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total

    def help_text(self, family_name: str) -> str:
        return next(family.documentation for family in self.families if family.name == family_name)


async def scrape(api: Api) -> Scrape:
    async with api.http.get(api.url("/metrics")) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return Scrape(await response.text())


def config_with(policies: dict[str, Any] | None = None, **service: Any) -> dict[str, Any]:
    config = copy.deepcopy(TEST_CONFIG)
    config["service"].update(service)
    config["policies"].update(policies or {})
    return config


# -- names and labels ----------------------------------------------------------

async def test_metrics_families_follow_conventions(api: Api) -> None:
    await api.create("u-names", "dev-1")

    families = {(family.name, family.type) for family in (await scrape(api)).families}

    assert EXPECTED_FAMILIES <= families
    for name, kind in families:
        assert name.startswith("session_store_"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name


async def test_metrics_counter_samples_end_in_total(api: Api) -> None:
    await api.create("u-totals", "dev-1")

    counters = [family for family in (await scrape(api)).families if family.type == "counter"]

    assert counters != []
    for family in counters:
        # prometheus-client adds a <name>_created sample (start time) to each counter.
        names = {sample.name for sample in family.samples}
        assert f"{family.name}_total" in names, family.name
        assert names <= {f"{family.name}_total", f"{family.name}_created"}, names


async def test_metrics_label_routes_by_template(api: Api) -> None:
    user_id = "u-raw-path-7f3a"
    await api.manage("GET", f"/v1/users/{user_id}/sessions")
    await api.manage("GET", "/v1/sessions/sess_not-a-real-session-id-xyz")
    await api.request("GET", "/no/such/path-5d1c")

    after = await scrape(api)

    assert after.value("session_store_http_requests_total",
                       route="/v1/users/{user_id}/sessions", status="200") >= 1
    assert after.value("session_store_http_requests_total", route="/v1/sessions/{session_id}",
                       status="404") >= 1
    assert after.value("session_store_http_requests_total", route="unmatched", status="404") >= 1
    for raw in (user_id, "sess_not-a-real-session-id-xyz", "path-5d1c"):
        assert raw not in after.text


async def test_metrics_count_requests_with_latency(api: Api) -> None:
    labels = {"route": "/v1/sessions", "method": "POST", "status": "201"}
    before = await scrape(api)

    for device in ("dev-1", "dev-2"):
        await api.create("u-requests", device)
    after = await scrape(api)

    def delta(name: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("session_store_http_requests_total") == 2
    assert delta("session_store_http_request_duration_seconds_count") == 2
    assert delta("session_store_http_request_duration_seconds_sum") > 0


async def test_metrics_count_validation_outcomes(api: Api) -> None:
    created = await api.create("u-outcomes", "dev-1")
    revoked = await api.create("u-outcomes", "dev-2")
    await api.manage("DELETE", f"/v1/sessions/{revoked['session_id']}")
    before = await scrape(api)

    await api.validate(created["token"])
    await api.validate(created["token"])
    await api.validate("not-a-token")
    await api.validate(revoked["token"])
    after = await scrape(api)

    def delta(outcome: str) -> float:
        name = "session_store_validations_total"
        return after.value(name, outcome=outcome) - before.value(name, outcome=outcome)

    assert delta("valid") == 2
    assert delta("invalid_token") == 1
    assert delta("session_revoked") == 1


# -- Redis calls ---------------------------------------------------------------

async def test_metrics_time_redis_calls_by_script(api: Api) -> None:
    name = "session_store_redis_call_duration_seconds_count"
    before = await scrape(api)

    created = await api.create("u-redis-latency", "dev-1")
    await api.validate(created["token"])
    after = await scrape(api)

    for operation in ("create_session", "validate_session"):
        assert after.value(name, operation=operation) - before.value(name, operation=operation) == 1


async def test_metrics_count_redis_timeouts(make_service: ServiceFactory, redis: Any) -> None:
    api = await make_service(config_with(redis_timeout=0.3))
    created = await api.create("u-redis-timeout", "dev-1")
    before = await scrape(api)

    # CLIENT PAUSE <ms> ALL (Redis 6.2+) delays every client's commands, the service's included.
    if isinstance(redis, RedisClusterClient):
        await redis.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL",
                                    target_nodes=RedisClusterClient.ALL_NODES)
    else:
        await redis.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
    paused_at = time.monotonic()
    status, body, _ = await api.validate(created["token"])
    await asyncio.sleep(max(0.0, paused_at + PAUSE_MS / 1000 + 0.3 - time.monotonic()))
    after = await scrape(api)

    assert (status, body["code"]) == (503, "store_unavailable")
    name = "session_store_redis_errors_total"
    assert after.value(name, kind="timeout") - before.value(name, kind="timeout") >= 1


async def test_metrics_count_redis_connection_errors(api: Api, redis_server: RedisServer) -> None:
    created = await api.create("u-redis-down", "dev-1")
    before = await scrape(api)

    await asyncio.to_thread(redis_server.stop)
    try:
        status, body, _ = await api.validate(created["token"])
        during = await scrape(api)
    finally:
        await asyncio.to_thread(ensure_redis_running, redis_server)

    assert (status, body["code"]) == (503, "store_unavailable")
    name = "session_store_redis_errors_total"
    assert during.value(name, kind="connection") - before.value(name, kind="connection") >= 1


# -- lifecycle and anomaly events ----------------------------------------------

async def test_metrics_count_session_lifecycle(api: Api) -> None:
    before = await scrape(api)

    first = await api.create("u-lifecycle", "dev-1")
    await api.create("u-lifecycle", "dev-1")  # replaces first
    for device in ("dev-2", "dev-3", "dev-4"):
        await api.create("u-lifecycle", device, policy="small")  # the third evicts the oldest
    fourth = await api.create("u-lifecycle-revoke", "dev-1")
    await api.manage("DELETE", f"/v1/sessions/{fourth['session_id']}")
    short = await api.create("u-lifecycle-expire", "dev-1", policy="short", expires_in=1,
                             extend_on_activity=False)
    await asyncio.sleep(1.3)
    expired_status, _, _ = await api.validate(short["token"])
    after = await scrape(api)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert first["session_id"] != ""
    assert expired_status == 401
    assert delta("session_store_sessions_created_total") == 7
    assert delta("session_store_sessions_ended_total", reason="replaced") == 1
    assert delta("session_store_sessions_ended_total", reason="evicted") == 1
    assert delta("session_store_sessions_ended_total", reason="revoked") == 1
    assert delta("session_store_sessions_ended_total", reason="expired") == 1


async def test_metrics_count_anomalies(make_service: ServiceFactory) -> None:
    api = await make_service(config_with({"burst": {"expires_in": "1h", "max_creates_per_minute": 2}}))
    before = await scrape(api)

    watched = await api.create("u-anomaly", "dev-1", client={"ip": "203.0.113.7", "user_agent": "UA-1"})
    await api.create("u-anomaly", "dev-2")  # new_device: not the user's first device
    await api.validate(watched["token"], headers={"User-Agent": "UA-2"})  # context_changed
    wrong_secret = watched["token"].partition(".")[0] + "." + "A" * 43
    await api.validate(wrong_secret)  # invalid_secret
    ended = await api.create("u-anomaly-revoked", "dev-1")
    await api.manage("DELETE", f"/v1/sessions/{ended['session_id']}")
    await api.validate(ended["token"])  # revoked_token_used
    statuses = []
    for _ in range(3):
        status, _, _ = await api.manage("POST", "/v1/sessions", json={
            "user_id": "u-anomaly-burst", "device": {"id": "dev-1"}, "policy": "burst"})
        statuses.append(status)
    after = await scrape(api)

    def delta(kind: str) -> float:
        name = "session_store_anomalies_total"
        return after.value(name, type=kind) - before.value(name, type=kind)

    assert statuses == [201, 201, 429]
    assert delta("new_device") == 1
    assert delta("context_changed") == 1
    assert delta("invalid_secret") == 1
    assert delta("revoked_token_used") == 1
    assert delta("creation_burst") == 1


# -- live session estimates ------------------------------------------------------

async def test_metrics_live_estimates_exact_when_small(api: Api) -> None:
    await api.create("u-live-1", "dev-1")
    await api.create("u-live-1", "dev-2")
    await api.create("u-live-2", "dev-1")

    metrics = await scrape(api)

    assert metrics.value("session_store_live_sessions") == 3
    assert metrics.value("session_store_live_users") == 2
    sampled_at_s = metrics.value("session_store_live_estimate_timestamp_seconds")
    assert sampled_at_s == pytest.approx(time.time(), abs=10)


async def test_metrics_live_estimates_cached(api: Api) -> None:
    await api.create("u-cached", "dev-1")
    first = await scrape(api)

    await api.create("u-cached", "dev-2")
    second = await scrape(api)

    assert first.value("session_store_live_sessions") == 1
    assert second.value("session_store_live_sessions") == 1
    assert (second.value("session_store_live_estimate_timestamp_seconds")
            == first.value("session_store_live_estimate_timestamp_seconds"))


async def test_metrics_live_estimates_say_estimate(api: Api) -> None:
    metrics = await scrape(api)

    assert "Estimate" in metrics.help_text("session_store_live_sessions")
    assert "Estimate" in metrics.help_text("session_store_live_users")


async def test_metrics_survive_redis_down(make_service: ServiceFactory, redis_server: RedisServer) -> None:
    await asyncio.to_thread(redis_server.stop)
    try:
        api = await make_service()
        metrics = await scrape(api)
    finally:
        await asyncio.to_thread(ensure_redis_running, redis_server)

    assert metrics.value("session_store_live_sessions") == 0
    assert "session_store_live_sessions" not in metrics.text


async def fill_users(redis: Any, users: int, sessions_per_user: int, other_keys: int) -> None:
    for number in range(users):
        await redis.zadd(f"ss:{{tag-{number:05d}}}:i",
                         {f"sid-{session}": session for session in range(sessions_per_user)})
    for number in range(other_keys):
        await redis.set(f"other:{number}", "x")


async def estimator_for(backend: Backend, **options: Any) -> tuple[LiveEstimator, Any]:
    settings = build_settings(copy.deepcopy(TEST_CONFIG), {})
    client = create_client(backend.url, cluster=backend.cluster, settings=settings.service)
    store = Store(client, settings.service)
    return LiveEstimator(store, cluster=backend.cluster, **options), client


async def test_live_estimator_counts_exactly(redis: Any, backend: Backend) -> None:
    await fill_users(redis, users=30, sessions_per_user=2, other_keys=20)
    estimator, client = await estimator_for(backend)
    try:
        estimate = await estimator.sample()
    finally:
        await client.aclose()

    assert estimate.exact is True
    assert (estimate.users, estimate.sessions) == (30, 60)


async def test_live_estimator_extrapolates_samples(redis: Any, backend: Backend) -> None:
    # Half the keys are user indexes with 3 sessions each: 200 users, 600 sessions.
    await fill_users(redis, users=200, sessions_per_user=3, other_keys=200)
    estimator, client = await estimator_for(backend, exact_key_limit=0, samples=400)
    try:
        estimate = await estimator.sample()
    finally:
        await client.aclose()

    # Binomial(400, 0.5) samples: 40 % off is more than six standard deviations.
    assert estimate.exact is False
    assert estimate.users == pytest.approx(200, rel=0.4)
    assert estimate.sessions == pytest.approx(600, rel=0.4)


@pytest.mark.parametrize(("key", "expected"), [
    (b"ss:{AbC-_123}:i", True),
    (b"ss:{AbC-_123}:s", False),
    (b"ss:{AbC-_123}:e", False),
    (b"ss:{}:i", False),
    (b"ss:{a}b}:i", False),
    (b"other:{AbC}:i", False),
    (b"ss:events", False),
])
def test_live_estimator_classifies_index_keys(key: bytes, expected: bool) -> None:
    settings = build_settings(copy.deepcopy(TEST_CONFIG), {})
    store = Store(aioredis.Redis(), settings.service)

    assert LiveEstimator(store, cluster=False).is_index_key(key) is expected
