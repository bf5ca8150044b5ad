"""Service settings, read once at start-up from TOML and the environment."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

from service.durations import parse_duration_s
from service.policies import BUILTIN_POLICIES, DURATION_KEYS, Policy

API_KEYS_ENV = "SESSION_STORE_API_KEYS"
REDIS_URL_ENV = "SESSION_STORE_REDIS_URL"

LogLevel = Literal["debug", "info", "warning", "error"]


class ConfigError(Exception):
    """The configuration breaks a rule; the message names the key and the rule."""


class ServiceSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The [service] section. Durations are whole seconds once parsed."""

    default_policy: str = "standard"
    api_keys: list[str] = msgspec.field(default_factory=list)
    session_cookie: str = "session"
    trusted_proxies: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    # How long an expired record stays before Redis drops it, seconds. The
    # session's marker answers session_expired after that.
    expiry_grace: int = 60
    # How long the device registry remembers a device after its last use, seconds.
    device_retention: int = 90 * 86400
    # Deadline for one Redis call, seconds; past it the request gets 503.
    redis_timeout: float = 0.5
    redis_max_connections: int = 64
    # Per-user event stream: approximate length cap, and how long it is
    # kept after its last event, seconds.
    events_max_length: int = 1000
    event_retention: int = 30 * 86400
    # Approximate length cap of the global stream that collects every event.
    global_events_max_length: int = 100_000
    # Wrong secrets for one session within the window (seconds) before
    # the policy's on_invalid_secret action applies.
    invalid_secret_threshold: int = 5
    invalid_secret_window: int = 300
    # Seconds between heartbeat comments on an idle event stream.
    sse_heartbeat: int = 15
    key_prefix: str = "ss:"
    max_body_bytes: int = 16 * 1024
    log_level: LogLevel = "info"


class Settings(msgspec.Struct, kw_only=True):
    service: ServiceSettings
    policies: dict[str, Policy]
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @property
    def default_policy(self) -> Policy:
        return self.policies[self.service.default_policy]


_SERVICE_DURATION_KEYS = (
    "expiry_grace", "device_retention", "event_retention", "invalid_secret_window", "sse_heartbeat",
)


def load_settings(path: str | os.PathLike[str] | None, environ: dict[str, str] | None = None) -> Settings:
    """Read the TOML file (if any) and the environment into checked settings."""
    environ = dict(os.environ) if environ is None else environ
    document: dict[str, Any] = {}
    if path is not None:
        try:
            document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return build_settings(document, environ)


def build_settings(document: dict[str, Any], environ: dict[str, str]) -> Settings:
    unknown = set(document) - {"service", "policies"}
    if unknown:
        raise ConfigError(f"unknown section [{sorted(unknown)[0]}]; expected [service] or [policies.NAME]")

    service = _build_service(document.get("service", {}), environ)
    policies = _build_policies(document.get("policies", {}))
    if service.default_policy not in policies:
        raise ConfigError(
            f"service.default_policy: no policy named {service.default_policy!r}; "
            f"defined policies are {', '.join(sorted(policies))}"
        )
    networks = tuple(_parse_networks(service.trusted_proxies))
    return Settings(service=service, policies=policies, trusted_networks=networks)


def _build_service(section: object, environ: dict[str, str]) -> ServiceSettings:
    if not isinstance(section, dict):
        raise ConfigError("[service] must be a table")
    values = dict(section)
    for key in _SERVICE_DURATION_KEYS:
        if key in values:
            values[key] = _duration(f"service.{key}", values[key])

    env_keys = environ.get(API_KEYS_ENV, "")
    if env_keys.strip():
        values["api_keys"] = [key.strip() for key in env_keys.split(",") if key.strip()]

    try:
        service = msgspec.convert(values, ServiceSettings)
    except msgspec.ValidationError as exc:
        raise ConfigError(_located("service", str(exc))) from None
    _check_service(service)
    return service


def _check_service(service: ServiceSettings) -> None:
    for index, key in enumerate(service.api_keys):
        # Never echo the key itself: it is a secret.
        if len(key) < 16:
            raise ConfigError(f"service.api_keys[{index}]: an API key must be at least 16 characters")
    if not service.session_cookie or not service.session_cookie.isascii():
        raise ConfigError("service.session_cookie: must be a non-empty ASCII cookie name")
    if not 0 < service.redis_timeout <= 60:
        raise ConfigError("service.redis_timeout: must be more than 0 and at most 60 seconds")
    if service.redis_max_connections < 1:
        raise ConfigError("service.redis_max_connections: must be at least 1")
    if service.events_max_length < 1 or service.global_events_max_length < 1:
        raise ConfigError("service.events_max_length and global_events_max_length: must be at least 1")
    if service.invalid_secret_threshold < 1:
        raise ConfigError("service.invalid_secret_threshold: must be at least 1")
    if service.max_body_bytes < 1024:
        raise ConfigError("service.max_body_bytes: must be at least 1024")
    if "{" in service.key_prefix or "}" in service.key_prefix:
        raise ConfigError("service.key_prefix: must not contain '{' or '}', which would move the hash tag")


def _build_policies(section: object) -> dict[str, Policy]:
    if not isinstance(section, dict):
        raise ConfigError("[policies] must hold tables named [policies.NAME]")
    merged: dict[str, dict[str, object]] = {name: dict(keys) for name, keys in BUILTIN_POLICIES.items()}
    for name, keys in section.items():
        if not isinstance(keys, dict):
            raise ConfigError(f"policies.{name} must be a table")
        merged.setdefault(name, {}).update(keys)

    policies = {}
    for name, keys in merged.items():
        policies[name] = _build_policy(name, keys)
    return policies


def _build_policy(name: str, keys: dict[str, object]) -> Policy:
    values = dict(keys)
    if "expires_in" not in values:
        raise ConfigError(f"policies.{name}.expires_in: required")
    for key in DURATION_KEYS:
        if key in values:
            values[key] = _duration(f"policies.{name}.{key}", values[key])
    values["name"] = name

    try:
        policy = msgspec.convert(values, Policy)
        policy.check()
    except msgspec.ValidationError as exc:
        raise ConfigError(_located(f"policies.{name}", str(exc))) from None
    except ValueError as exc:
        raise ConfigError(f"policies.{name}: {exc}") from None
    return policy


def _duration(key: str, value: object) -> int:
    try:
        return parse_duration_s(value)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _located(section: str, message: str) -> str:
    """Rewrite msgspec's "... - at `$.key`" into "section.key: ..."."""
    text, _, path = message.partition(" - at `$")
    if path:
        return f"{section}{path.rstrip('`')}: {text}"
    return f"{section}: {text}"


def _parse_networks(cidrs: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for index, cidr in enumerate(cidrs):
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise ConfigError(f"service.trusted_proxies[{index}]: {cidr!r} is not a CIDR network") from None
    return networks
