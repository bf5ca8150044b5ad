"""HTTP handlers of session events: paged history and the live SSE stream."""

from __future__ import annotations

import asyncio
import logging
import re

import orjson
from aiohttp import web

from service.bodies import json_response
from service.errors import InvalidRequest, ServiceError, TokenRejected
from service.events import Event
from service.routes import current_session, path_user_id
from service.state import API_KEYS, EVENT_HUB, SETTINGS, STORE
from service.store import MODE_CHECK
from service.tokens import user_tag

logger = logging.getLogger("session_store.events")

_STREAM_ID = re.compile(r"\A[0-9]{1,20}-[0-9]{1,20}\Z")
_DEFAULT_LIMIT = 100
_MAX_LIMIT = 1000
_SSE_BATCH = 100
# Event types after which the session they name no longer exists.
_ENDING_TYPES = frozenset({"session_revoked", "session_replaced", "session_evicted", "session_expired"})


def _cursor(value: str | None, name: str) -> str:
    if value is None or value == "":
        return ""
    if not _STREAM_ID.match(value):
        raise InvalidRequest(f"{name}: expected an event id such as 1733300000000-0")
    return value


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return _DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_LIMIT:
        raise InvalidRequest(f"limit: expected an integer from 1 to {_MAX_LIMIT}")
    return int(raw)


async def list_user_events(request: web.Request) -> web.Response:
    request.app[API_KEYS].require(request)
    user_id = path_user_id(request)
    after = _cursor(request.query.get("after"), "after")
    limit = _limit(request)

    # One more than asked tells whether another page exists.
    events = await request.app[STORE].read_events(user_id, after=after, count=limit + 1)
    page = events[:limit]
    next_cursor = page[-1].id if len(events) > limit else None
    return json_response({"events": [event.to_json() for event in page], "next": next_cursor})


async def my_events(request: web.Request) -> web.StreamResponse:
    """Stream the user's events as Server-Sent Events until this session ends."""
    current = await current_session(request, mode=MODE_CHECK)
    store = request.app[STORE]
    user_id = current.record.user_id
    last_id = _cursor(request.headers.get("Last-Event-ID"), "Last-Event-ID")
    if not last_id:
        last_id = await store.last_event_id(user_id)
        # A revoke between the first check and reading the newest id would
        # otherwise wait for the next heartbeat to be noticed.
        await current_session(request, mode=MODE_CHECK)

    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no",
    })
    channel = store.keys_for(user_tag(user_id)).events
    async with request.app[EVENT_HUB].listen(channel) as waker:
        await response.prepare(request)
        try:
            await response.write(b"retry: 1000\n\n")
            await _pump(request, response, waker, current.ref.session_id, user_id, last_id)
        except ConnectionError:
            # The client went away; aiohttp raises this on the next write.
            logger.debug("event stream client disconnected", extra={"session_id": current.ref.session_id})
    return response


async def _pump(request: web.Request, response: web.StreamResponse, waker: asyncio.Event,
                session_id: str, user_id: str, last_id: str) -> None:
    store = request.app[STORE]
    heartbeat_s = request.app[SETTINGS].service.sse_heartbeat
    while True:
        try:
            events = await store.read_events(user_id, after=last_id, count=_SSE_BATCH)
        except ServiceError:
            events = []
        for event in events:
            await response.write(_frame(event))
            last_id = event.id
            if event.type in _ENDING_TYPES and event.session_id == session_id:
                return
        if len(events) == _SSE_BATCH:
            continue

        waker.clear()
        try:
            await asyncio.wait_for(waker.wait(), timeout=heartbeat_s)
        except TimeoutError:
            await response.write(b": heartbeat\n\n")
            if not await _still_valid(request):
                return


async def _still_valid(request: web.Request) -> bool:
    try:
        await current_session(request, mode=MODE_CHECK)
    except TokenRejected:
        return False
    except ServiceError:
        return True
    return True


def _frame(event: Event) -> bytes:
    data = orjson.dumps(event.to_json())
    return b"id: " + event.id.encode() + b"\nevent: " + event.type.encode() + b"\ndata: " + data + b"\n\n"
