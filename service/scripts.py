"""Lua scripts: loading from lua/, registration with Redis, reply status codes."""

from __future__ import annotations

import enum
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from redis.commands.core import AsyncScript

SCRIPT_NAMES = (
    "create_session",
    "validate_session",
    "read_session",
    "list_sessions",
    "revoke_session",
    "revoke_user_sessions",
    "set_device_trust",
    "list_devices",
)


class Status(enum.IntEnum):
    """Position 1 of every script reply; the values are the locals in lua/_prelude.lua."""

    OK = 0
    INVALID_TOKEN = 1
    EXPIRED = 2
    REVOKED = 3
    REAUTH_REQUIRED = 4
    NOT_FOUND = 5
    LIMIT_REACHED = 6
    DEVICE_NOT_TRUSTED = 7
    ID_COLLISION = 8
    RATE_LIMITED = 9


def _lua_folder() -> Traversable:
    """Locate lua/: beside the package in a checkout, inside it in a wheel."""
    checkout = Path(__file__).resolve().parent.parent / "lua"
    if (checkout / "_prelude.lua").is_file():
        return checkout
    return resources.files("service.lua")


def script_source(name: str) -> str:
    """Return a script's full source: the shared prelude, then the script."""
    folder = _lua_folder()
    prelude = folder.joinpath("_prelude.lua").read_text(encoding="utf-8")
    body = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return f"{prelude}\n{body}"


class Scripts:
    """One registered script per operation; redis-py sends EVALSHA and
    reloads the script once on NOSCRIPT (flushed cache, restart, failover)."""

    def __init__(self, client: Any) -> None:
        self.sources = {name: script_source(name) for name in SCRIPT_NAMES}
        handles = {name: client.register_script(source) for name, source in self.sources.items()}
        self.create_session: AsyncScript = handles["create_session"]
        self.validate_session: AsyncScript = handles["validate_session"]
        self.read_session: AsyncScript = handles["read_session"]
        self.list_sessions: AsyncScript = handles["list_sessions"]
        self.revoke_session: AsyncScript = handles["revoke_session"]
        self.revoke_user_sessions: AsyncScript = handles["revoke_user_sessions"]
        self.set_device_trust: AsyncScript = handles["set_device_trust"]
        self.list_devices: AsyncScript = handles["list_devices"]
        self._handles = list(handles.values())

    def all(self) -> list[AsyncScript]:
        return list(self._handles)
