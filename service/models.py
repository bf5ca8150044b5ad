"""Request bodies, decoded and validated by msgspec; unknown fields are rejected."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

# No C0 or C1 control characters (CR, LF and NUL included), so a value can
# never split a log line or a response header. \A and \Z: "$" would accept
# a trailing newline.
_PRINTABLE = r"\A[^\x00-\x1f\x7f-\x9f]*\Z"

UserId = Annotated[str, Meta(min_length=1, max_length=128, pattern=_PRINTABLE)]
DeviceId = Annotated[str, Meta(min_length=1, max_length=128, pattern=_PRINTABLE)]
DeviceType = Annotated[str, Meta(max_length=64, pattern=_PRINTABLE)]
DeviceName = Annotated[str, Meta(max_length=128, pattern=_PRINTABLE)]
PolicyName = Annotated[str, Meta(min_length=1, max_length=64, pattern=_PRINTABLE)]
UserAgent = Annotated[str, Meta(max_length=512, pattern=_PRINTABLE)]
IpText = Annotated[str, Meta(max_length=64)]
# Seconds, or "90s", "5m", "24h", "30d"; checked by service.durations.
Duration = int | Annotated[str, Meta(max_length=16)]

MAX_METADATA_BYTES = 1024


class Device(msgspec.Struct, forbid_unknown_fields=True):
    id: DeviceId
    type: DeviceType | None = None
    name: DeviceName | None = None


class Client(msgspec.Struct, forbid_unknown_fields=True):
    ip: IpText | None = None
    user_agent: UserAgent | None = None


class CreateSessionRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    user_id: UserId
    device: Device
    policy: PolicyName | None = None
    expires_in: Duration | None = None
    extend_on_activity: bool | None = None
    max_lifetime: Duration | None = None
    max_sessions: Annotated[int, Meta(ge=1, le=1000)] | None = None
    on_limit: Literal["evict_oldest", "reject"] | None = None
    client: Client | None = None
    metadata: dict[str, Any] | None = None


class DeviceTrustRequest(msgspec.Struct, forbid_unknown_fields=True):
    trusted: bool
