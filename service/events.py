"""Session events: decoding them from scripts and streams, and mirroring
them into the global stream that operators export to a SIEM.

Scripts append each event to the user's list (``<p>{tag}:e``) in the same
atomic step as the change it records. The global stream (``<p>events``)
lives in another hash slot, which a script may not touch on Redis Cluster,
so the service copies each event there after the script returns. A copy
can be lost if the process dies between the two steps; the user's list
still has the event.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Any

import msgspec

from service.keys import global_events_key
from service.tokens import SessionRef
from service.views import rfc3339

logger = logging.getLogger("session_store.events")

# Copies waiting for the global stream; past this, new ones are dropped.
_MAX_QUEUED_COPIES = 10_000
# Copies sent per pipelined round trip.
_BATCH = 500
_WARNING_INTERVAL_S = 10.0


class Event(msgspec.Struct, kw_only=True):
    """One session event. id is "<ms>-<n>": the Redis time in ms, then an order within the ms."""

    id: str
    type: str
    user_id: str
    session_id: str | None
    device_id: str | None
    detail: dict[str, Any]

    @property
    def at_ms(self) -> int:
        return int(self.id.split("-", 1)[0])

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "type": self.type, "at": rfc3339(self.at_ms), "user_id": self.user_id,
            "session_id": self.session_id, "device_id": self.device_id, "detail": self.detail,
        }

    @classmethod
    def from_entry(cls, tag: str, user_id: str, entry: bytes) -> Event:
        """Decode "<id> <MessagePack {type, sid, device_id, detail_json}>" from the user's list."""
        entry_id, _, packed = entry.partition(b" ")
        kind, sid, device_id, detail = _entry_decoder.decode(packed)
        return cls(
            id=_text(entry_id), type=kind, user_id=user_id, session_id=_session_id(tag, sid),
            device_id=device_id or None, detail=_detail(detail),
        )


_entry_decoder = msgspec.msgpack.Decoder(tuple[str, str, str, str])


def event_id_key(event_id: str) -> tuple[int, int]:
    """Return an event id as (ms, n), which orders ids as Redis wrote them."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def decode_emitted(tag: str, emitted: list[list[Any]]) -> list[Event]:
    """Decode the events list of a script reply: {id, type, user_id, sid, device_id, detail}."""
    return [
        Event(id=_text(entry_id), type=_text(kind), user_id=_text(user_id),
              session_id=_session_id(tag, sid), device_id=_text(device_id) or None,
              detail=_detail(detail))
        for entry_id, kind, user_id, sid, device_id, detail in emitted
    ]


class EventMirror:
    """Copies events into the global stream from one background task.

    Events wait in a bounded queue and leave in batches, one pipelined
    round trip per batch, so a burst of sign-ins costs the global stream a
    few writes instead of one call each. When the queue is full, copies
    are dropped and counted, and a warning is logged at most every 10 s.
    """

    def __init__(self, store: Any, max_length: int) -> None:
        self.store = store
        self.max_length = max_length
        self._queue: collections.deque[Event] = collections.deque()
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._dropped = 0
        self._failed = 0
        self._last_warning_s = 0.0
        self._closing = False

    def publish(self, events: list[Event]) -> None:
        room = _MAX_QUEUED_COPIES - len(self._queue)
        self._queue.extend(events[:room])
        self._dropped += max(0, len(events) - room)
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._run())
        self._wakeup.set()

    async def _run(self) -> None:
        while not self._closing:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), _BATCH))]
                await self._write(batch)
            self._warn_if_lossy()

    async def _write(self, batch: list[Event]) -> None:
        key = global_events_key(self.store.key_prefix)
        try:
            async with self.store.client.pipeline(transaction=False) as pipe:
                for event in batch:
                    pipe.xadd(key, _fields(event), maxlen=self.max_length, approximate=False)
                await self.store.call(pipe.execute())
        except Exception:  # noqa: BLE001 - a lost copy must never stop the writer
            self._failed += len(batch)

    def _warn_if_lossy(self) -> None:
        now_s = time.monotonic()
        if not (self._dropped or self._failed) or now_s - self._last_warning_s < _WARNING_INTERVAL_S:
            return
        logger.warning("global event stream: %d copies dropped (queue full), %d failed to write",
                       self._dropped, self._failed)
        self._dropped = self._failed = 0
        self._last_warning_s = now_s

    async def drain(self) -> None:
        """Write what is queued and stop the writer, at shutdown (at most 5 s)."""
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._writer, timeout=5.0)


def _fields(event: Event) -> dict[str, str | bytes]:
    return {
        "user_event_id": event.id, "type": event.type, "user_id": event.user_id,
        "session_id": event.session_id or "", "device_id": event.device_id or "",
        "detail": msgspec.json.encode(event.detail),
    }


def _session_id(tag: str, sid: bytes | str) -> str | None:
    text = _text(sid)
    return SessionRef(tag, text).session_id if text else None


def _detail(raw: bytes | str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value
