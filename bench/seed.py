"""Seed sessions through the service's API (POST /v1/sessions), many at a time.

Each user gets sessions_per_user sessions on distinct devices. User ids
are 36-character UUIDs, device names about 20 characters and user agents
about 100, close to what a mobile and web app sends. Client addresses are
in 127.0.0.0/24, the network benchmark clients connect from, so a
validation does not count as a context change. The tokens go to a
tab-separated file: token, user agent, user id, session id.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.harness import BENCH_API_KEY

USER_AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Mobile",
)
DEVICES = (
    ("iPhone_15_Pro", "Sarah's iPhone 15 Pro"),
    ("MacBook_Air", "Work MacBook Air M3"),
    ("Pixel_8", "Tom's Pixel 8 phone"),
    ("Windows_PC", "Office desktop PC 12"),
    ("iPad_Air", "Family iPad Air 5th"),
)
# A create that fails this many times in a row stops the seeding.
_MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class SeedPlan:
    base_url: str
    users: int
    sessions_per_user: int
    concurrency: int
    policy: str | None = None


def session_body(user_id: str, device_index: int, rng: random.Random,
                 policy: str | None = None) -> dict[str, Any]:
    device_type, device_name = DEVICES[device_index % len(DEVICES)]
    body: dict[str, Any] = {
        "user_id": user_id,
        "device": {"id": f"fp-{rng.getrandbits(64):016x}", "type": device_type, "name": device_name},
        "client": {"ip": f"127.0.0.{rng.randint(1, 254)}", "user_agent": rng.choice(USER_AGENTS)},
    }
    if policy is not None:
        body["policy"] = policy
    return body


async def _create(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    for attempt in range(1, _MAX_ATTEMPTS + 1):
        try:
            async with http.post(url, data=orjson.dumps(body)) as response:
                payload = await response.read()
                if response.status == 201:
                    return orjson.loads(payload)
                error = f"status {response.status}: {payload[:200]!r}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = repr(exc)
        if attempt == _MAX_ATTEMPTS:
            raise RuntimeError(f"POST /v1/sessions failed {attempt} times, last: {error}")
        await asyncio.sleep(0.1 * attempt)
    raise AssertionError("unreachable")


async def _seed_users(plan: SeedPlan, user_ids: list[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {BENCH_API_KEY}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=plan.concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    lines: list[str] = []
    queue = [(user_id, device) for user_id in user_ids for device in range(plan.sessions_per_user)]
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as http:
        url = plan.base_url + "/v1/sessions"

        async def worker(offset: int) -> None:
            for index in range(offset, len(queue), plan.concurrency):
                user_id, device = queue[index]
                body = session_body(user_id, device, rng, plan.policy)
                created = await _create(http, url, body)
                lines.append(f"{created['token']}\t{body['client']['user_agent']}\t{user_id}\t"
                             f"{created['session_id']}")

        await asyncio.gather(*(worker(offset) for offset in range(plan.concurrency)))
    return lines


def _seed_chunk(args: tuple[SeedPlan, list[str], int]) -> list[str]:
    plan, user_ids, seed = args
    return asyncio.run(_seed_users(plan, user_ids, seed))


def seed_sessions(plan: SeedPlan, tokens_path: Path, *, processes: int = 1, seed: int = 1) -> dict[str, Any]:
    """Create plan.users x plan.sessions_per_user sessions; write their tokens; return rate facts."""
    rng = random.Random(seed)
    user_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(plan.users)]
    started = time.perf_counter()
    if processes == 1:
        lines = _seed_chunk((plan, user_ids, seed))
    else:
        chunks = [(plan, user_ids[i::processes], seed + i) for i in range(processes)]
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            lines = [line for part in pool.map(_seed_chunk, chunks) for line in part]
    elapsed_s = time.perf_counter() - started
    tokens_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"sessions": len(lines), "users": plan.users, "seconds": round(elapsed_s, 1),
            "sessions_per_s": round(len(lines) / elapsed_s, 1), "concurrency": plan.concurrency,
            "loader_processes": processes}


def read_tokens(path: Path) -> list[tuple[str, str]]:
    """Return (token, user agent) pairs from a tokens file."""
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line:
            token, user_agent = line.split("\t")[:2]
            pairs.append((token, user_agent))
    return pairs
