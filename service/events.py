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
import logging
from typing import Any

import msgspec

from service.keys import global_events_key
from service.tokens import SessionRef
from service.views import rfc3339

logger = logging.getLogger("session_store.events")

# Mirror writes in flight at once; past this, copies are dropped and logged.
_MAX_PENDING_MIRRORS = 1000


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
    """Copies events into the global stream in the background."""

    def __init__(self, store: Any, max_length: int) -> None:
        self.store = store
        self.max_length = max_length
        self._pending: set[asyncio.Task[None]] = set()

    def publish(self, events: list[Event]) -> None:
        if len(self._pending) >= _MAX_PENDING_MIRRORS:
            logger.warning("global event stream is behind; dropped %d event copies", len(events))
            return
        task = asyncio.ensure_future(self._write(events))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, events: list[Event]) -> None:
        key = global_events_key(self.store.key_prefix)
        for event in events:
            fields = {
                "user_event_id": event.id, "type": event.type, "user_id": event.user_id,
                "session_id": event.session_id or "", "device_id": event.device_id or "",
                "detail": msgspec.json.encode(event.detail),
            }
            try:
                await self.store.call(self.store.client.xadd(
                    key, fields, maxlen=self.max_length, approximate=False))
            except Exception:  # noqa: BLE001 - a lost copy must never fail the request
                logger.warning("could not copy event %s to the global stream", event.type)
                return

    async def drain(self) -> None:
        """Wait for copies in flight, at shutdown."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


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
