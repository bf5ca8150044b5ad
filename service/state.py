"""Typed keys for what the aiohttp application holds."""

from __future__ import annotations

from aiohttp import web

from service.auth import ApiKeys
from service.config import Settings
from service.event_hub import EventHub
from service.store import Store

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
API_KEYS = web.AppKey("api_keys", ApiKeys)
EVENT_HUB = web.AppKey("event_hub", EventHub)

# Identity of the request's session, for the access log line.
REQUEST_SESSION_ID = web.RequestKey("session_id", str)
REQUEST_USER_ID = web.RequestKey("user_id", str)
