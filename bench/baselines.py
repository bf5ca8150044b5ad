"""Baseline servers for the raw capacity run, on uvloop like the service.

minimal          GET /v1/validate returns a small JSON body and touches no
                 store: the ceiling of aiohttp itself on one core.
aiohttp-session  aiohttp-session's RedisStorage, the usual Python choice.
                 Each request loads the session named by the cookie (GET),
                 records the activity and saves it with a fresh expiry
                 (SET EX). That is a load-and-extend like /v1/validate, in
                 two round trips instead of one script.

Usage: python -m bench.baselines {minimal,aiohttp-session} --port N [--redis-url URL]
       python -m bench.baselines seed-aiohttp-session --redis-url URL --sessions N --tokens FILE
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

import redis
import redis.asyncio as aioredis
import uvloop
from aiohttp import web
from aiohttp_session import get_session, session_middleware
from aiohttp_session.redis_storage import RedisStorage

from bench.seed import USER_AGENTS

COOKIE_NAME = "AIOHTTP_SESSION"
# The same 24 h sliding window as the service's standard policy.
MAX_AGE_S = 86400


async def minimal_validate(request: web.Request) -> web.Response:
    return web.json_response({"valid": True, "user_id": "u-1", "expires_in": 86400})


async def session_validate(request: web.Request) -> web.Response:
    session = await get_session(request)
    if session.new:
        return web.json_response({"valid": False}, status=401)
    # Any change marks the session for saving, which rewrites it with EX MAX_AGE_S.
    session["last_active"] = int(time.time())
    return web.json_response({"valid": True, "user_id": session["user_id"], "expires_in": MAX_AGE_S})


def minimal_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/v1/validate", minimal_validate)
    return app


def aiohttp_session_app(redis_url: str) -> web.Application:
    client = aioredis.Redis.from_url(redis_url, max_connections=64)
    storage = RedisStorage(client, cookie_name=COOKIE_NAME, max_age=MAX_AGE_S, httponly=True)
    app = web.Application(middlewares=[session_middleware(storage)])
    app.router.add_get("/v1/validate", session_validate)

    async def close_client(app: web.Application) -> None:
        await client.aclose()

    app.on_cleanup.append(close_client)
    return app


def seed_aiohttp_session(redis_url: str, sessions: int, tokens_path: Path) -> None:
    """Write sessions in RedisStorage's format (key COOKIE_NAME_<key>, JSON value) and their cookies."""
    client = redis.Redis.from_url(redis_url)
    lines = []
    pipeline = client.pipeline(transaction=False)
    for index in range(sessions):
        key = uuid.uuid4().hex
        data = {"created": int(time.time()), "session": {"user_id": str(uuid.uuid4()), "device": "fp-1"}}
        pipeline.set(f"{COOKIE_NAME}_{key}", json.dumps(data), ex=MAX_AGE_S)
        lines.append(f"{key}\t{USER_AGENTS[index % len(USER_AGENTS)]}")
        if len(pipeline) >= 1000:
            pipeline.execute()
    pipeline.execute()
    client.close()
    tokens_path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["minimal", "aiohttp-session", "seed-aiohttp-session"])
    parser.add_argument("--port", type=int, default=0, help="127.0.0.1 port to listen on")
    parser.add_argument("--redis-url", default="", help="redis://127.0.0.1:PORT/0")
    parser.add_argument("--sessions", type=int, default=10000, help="sessions to seed")
    parser.add_argument("--tokens", default="", help="cookie values file to write when seeding")
    args = parser.parse_args(argv)

    if args.kind == "seed-aiohttp-session":
        seed_aiohttp_session(args.redis_url, args.sessions, Path(args.tokens))
        return 0
    app = minimal_app() if args.kind == "minimal" else aiohttp_session_app(args.redis_url)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None,
                loop=uvloop.new_event_loop())
    return 0


if __name__ == "__main__":
    sys.exit(main())
