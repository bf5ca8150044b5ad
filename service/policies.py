"""Session policies: named defaults and bounds for lifetime, limits and anomaly actions."""

from __future__ import annotations

from typing import Literal

import msgspec
import orjson

from service.durations import format_duration, parse_duration_s
from service.errors import InvalidRequest
from service.models import MAX_METADATA_BYTES, CreateSessionRequest
from service.store import NewSession

OnLimit = Literal["evict_oldest", "reject"]
AnomalyAction = Literal["none", "reauth", "revoke"]

_ACTION_LETTER = {"none": "n", "reauth": "r", "revoke": "v"}

# Duration keys of a policy, in seconds once parsed.
DURATION_KEYS = ("expires_in", "min_expires_in", "max_expires_in", "max_lifetime")


class Policy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One policy. Durations are whole seconds."""

    name: str
    expires_in: int
    min_expires_in: int = 300
    max_expires_in: int = 30 * 86400
    max_lifetime: int = 30 * 86400
    extend_on_activity: bool = True
    max_sessions: int = 10
    on_limit: OnLimit = "evict_oldest"
    requires_trusted_device: bool = False
    max_creates_per_minute: int = 60
    on_context_change: AnomalyAction = "none"
    on_invalid_secret: AnomalyAction = "none"
    on_revoked_token_used: AnomalyAction = "none"

    @property
    def action_letters(self) -> str:
        """Return the anomaly actions as stored in a session record (see lua/_prelude.lua)."""
        return "".join(_ACTION_LETTER[action] for action in
                       (self.on_context_change, self.on_invalid_secret, self.on_revoked_token_used))

    def check(self) -> None:
        """Raise ValueError naming the key and the rule the policy breaks."""
        if not self.min_expires_in <= self.expires_in <= self.max_expires_in:
            raise ValueError(
                f"expires_in ({self.expires_in}s) must lie within "
                f"min_expires_in ({self.min_expires_in}s) and max_expires_in ({self.max_expires_in}s)"
            )
        if self.expires_in > self.max_lifetime:
            raise ValueError(
                f"expires_in ({self.expires_in}s) must not exceed max_lifetime ({self.max_lifetime}s)"
            )
        if not 1 <= self.max_sessions <= 1000:
            raise ValueError("max_sessions must be between 1 and 1000")
        if self.max_creates_per_minute < 1:
            raise ValueError("max_creates_per_minute must be at least 1")


# Built-in policies as config-file sections; a section of the same name in
# the config file overrides only the keys it sets.
BUILTIN_POLICIES: dict[str, dict[str, object]] = {
    "paranoid": {
        "expires_in": "5m",
        "max_expires_in": "1h",
        "max_lifetime": "12h",
        "max_sessions": 3,
        "max_creates_per_minute": 10,
        "on_context_change": "reauth",
        "on_invalid_secret": "revoke",
        "on_revoked_token_used": "revoke",
    },
    "standard": {
        "expires_in": "24h",
    },
    "trusted": {
        "expires_in": "30d",
        "max_lifetime": "90d",
        "requires_trusted_device": True,
    },
}


def apply_policy(policy: Policy, body: CreateSessionRequest, client_ip: str, client_net: str) -> NewSession:
    """Combine a create request with its policy; raise InvalidRequest for
    any override outside the policy's bounds (never clamped)."""
    window_s = _request_duration("expires_in", body.expires_in, policy.expires_in)
    if not policy.min_expires_in <= window_s <= policy.max_expires_in:
        raise InvalidRequest(
            f"expires_in: {window_s}s is outside policy {policy.name}'s bounds "
            f"[{format_duration(policy.min_expires_in)}, {format_duration(policy.max_expires_in)}]"
        )

    max_lifetime_s = _request_duration("max_lifetime", body.max_lifetime, policy.max_lifetime)
    if max_lifetime_s > policy.max_lifetime:
        raise InvalidRequest(
            f"max_lifetime: {max_lifetime_s}s exceeds policy {policy.name}'s "
            f"{format_duration(policy.max_lifetime)}"
        )

    max_sessions = policy.max_sessions if body.max_sessions is None else body.max_sessions
    if max_sessions > policy.max_sessions:
        raise InvalidRequest(
            f"max_sessions: {max_sessions} exceeds policy {policy.name}'s {policy.max_sessions}"
        )

    extend = policy.extend_on_activity if body.extend_on_activity is None else body.extend_on_activity
    device, client = body.device, body.client
    return NewSession(
        user_id=body.user_id,
        device_id=device.id,
        device_type=device.type or "",
        device_name=device.name or "",
        policy=policy.name,
        window_s=window_s,
        max_lifetime_s=max_lifetime_s,
        extend_on_activity=extend,
        max_sessions=max_sessions,
        on_limit=body.on_limit or policy.on_limit,
        requires_trusted_device=policy.requires_trusted_device,
        client_ip=client_ip,
        client_net=client_net,
        user_agent=(client.user_agent if client else None) or "",
        metadata_json=_metadata_json(body.metadata),
        actions=policy.action_letters,
        max_creates_per_minute=policy.max_creates_per_minute,
    )


def _metadata_json(metadata: dict[str, object] | None) -> str:
    try:
        encoded = orjson.dumps(metadata or {})
    except orjson.JSONEncodeError as exc:
        raise InvalidRequest(f"metadata: cannot be stored as JSON ({exc})") from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise InvalidRequest(
            f"metadata: {len(encoded)} bytes when encoded, the limit is {MAX_METADATA_BYTES}"
        )
    return encoded.decode("utf-8")


def _request_duration(field: str, value: int | str | None, default_s: int) -> int:
    if value is None:
        return default_s
    try:
        return parse_duration_s(value)
    except ValueError as exc:
        raise InvalidRequest(f"{field}: {exc}") from None
