"""The one place that shapes Redis keys.

Every key of a user carries the user's tag in braces, ``{tag}``, as its
Redis Cluster hash tag. Scripts that change several of a user's keys at
once (limit, replace, revoke all) then touch a single hash slot, which
Redis Cluster requires. The tag comes first after the configured prefix,
so braces inside user ids or device ids can never move it.
"""

from __future__ import annotations

import msgspec

# The hash-max-listpack-value every Redis of the service needs, in bytes.
# A user's records, devices and markers are hashes with values of about 60
# to 300 bytes, and Redis keeps a hash as a compact listpack only while
# every value fits this limit. At Redis's default of 64 they become
# hashtables, and bench/capacity measured about 19 % more memory per session.
HASH_MAX_LISTPACK_VALUE = 1024


class UserKeys(msgspec.Struct, frozen=True):
    """The keys of one user, for a given key prefix."""

    index: str
    devices: str
    sessions: str
    markers: str
    events: str
    creations: str
    failures_prefix: str

    def script_keys(self) -> list[str]:
        """Return KEYS for every script, in the order lua/_prelude.lua reads them."""
        return [self.index, self.devices, self.sessions, self.markers,
                self.events, self.creations, self.failures_prefix]


def user_keys(prefix: str, tag: str) -> UserKeys:
    base = f"{prefix}{{{tag}}}:"
    return UserKeys(
        index=base + "i",
        devices=base + "d",
        sessions=base + "s",
        markers=base + "x",
        events=base + "e",
        creations=base + "c",
        failures_prefix=base + "f:",
    )


def global_events_key(prefix: str) -> str:
    """Return the stream that collects every user's events for export (no hash tag)."""
    return f"{prefix}events"
