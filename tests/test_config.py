from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.config import ConfigError, build_settings, load_settings


def test_build_settings_has_builtin_policies() -> None:
    settings = build_settings({}, {})

    assert settings.policies["paranoid"].expires_in == 300
    assert settings.policies["standard"].expires_in == 86400
    assert settings.policies["trusted"].expires_in == 30 * 86400
    assert settings.policies["trusted"].requires_trusted_device is True
    assert settings.default_policy.name == "standard"


def test_build_settings_section_overrides_only_its_keys() -> None:
    settings = build_settings({"policies": {"standard": {"max_sessions": 4}}}, {})

    standard = settings.policies["standard"]
    assert standard.max_sessions == 4
    assert standard.expires_in == 86400


def test_build_settings_policy_defaults() -> None:
    policy = build_settings({"policies": {"kiosk": {"expires_in": "1h"}}}, {}).policies["kiosk"]

    assert policy.min_expires_in == 300
    assert policy.max_expires_in == 30 * 86400
    assert policy.max_lifetime == 30 * 86400
    assert policy.max_sessions == 10
    assert policy.on_limit == "evict_oldest"
    assert policy.max_creates_per_minute == 60
    assert policy.on_context_change == "none"


def test_build_settings_api_keys_from_environment() -> None:
    settings = build_settings({}, {"SESSION_STORE_API_KEYS": "aaaaaaaaaaaaaaaa1, bbbbbbbbbbbbbbbb2"})

    assert settings.service.api_keys == ["aaaaaaaaaaaaaaaa1", "bbbbbbbbbbbbbbbb2"]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"policies": {"x": {"expires_in": "5 minutes"}}}, "policies.x.expires_in:"),
        ({"policies": {"x": {"max_sessions": 2}}}, "policies.x.expires_in: required"),
        ({"policies": {"x": {"expires_in": "1h", "max_sessions": 0}}},
         "max_sessions must be between 1 and 1000"),
        ({"policies": {"x": {"expires_in": "1h", "on_limit": "drop"}}}, "policies.x.on_limit"),
        ({"policies": {"x": {"expires_in": "1h", "colour": "red"}}}, "colour"),
        ({"policies": {"x": {"expires_in": "2d", "max_lifetime": "1d"}}}, "must not exceed max_lifetime"),
        ({"policies": {"x": {"expires_in": "1m"}}}, "must lie within min_expires_in"),
        ({"service": {"default_policy": "nope"}}, "service.default_policy"),
        ({"service": {"api_keys": ["short"]}}, "service.api_keys[0]"),
        ({"service": {"trusted_proxies": ["not-a-net"]}}, "service.trusted_proxies[0]"),
        ({"service": {"redis_timeout": 0}}, "service.redis_timeout"),
        ({"service": {"key_prefix": "a{b"}}, "service.key_prefix"),
        ({"service": {"log_level": "loud"}}, "service.log_level"),
        ({"extra": {}}, "unknown section [extra]"),
    ],
    ids=["bad-duration", "missing-expires-in", "zero-sessions", "bad-on-limit", "unknown-key",
         "window-over-lifetime", "window-under-min", "unknown-default", "short-api-key",
         "bad-cidr", "zero-timeout", "brace-prefix", "bad-log-level", "unknown-section"],
)
def test_build_settings_rejects_bad_config(document: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_settings(document, {})

    assert message in str(caught.value)


def test_build_settings_error_does_not_echo_api_key() -> None:
    with pytest.raises(ConfigError) as caught:
        build_settings({"service": {"api_keys": ["sekrit"]}}, {})

    assert "sekrit" not in str(caught.value)


def test_load_settings_reports_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[service\n")

    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path, {})


def test_cli_serve_exits_on_bad_config_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[policies.kiosk]\nexpires_in = "1h"\nmax_sessions = -1\n')

    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--config", str(path), "--port", "1"],
        capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 2
    assert "policies.kiosk" in result.stderr
    assert "max_sessions must be between 1 and 1000" in result.stderr



@pytest.mark.parametrize("kind", ["missing", "file"])
def test_cli_serve_exits_on_unusable_metrics_dir(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "metrics"
    if kind == "file":
        target.write_text("")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(target)}

    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--redis-url", "redis://127.0.0.1:1/0", "--port", "1"],
        capture_output=True, text=True, timeout=60, env=env,
    )

    assert result.returncode == 2
    assert result.stderr == (f"session-store: PROMETHEUS_MULTIPROC_DIR is {str(target)!r}, which is not "
                             "an existing folder; create it or unset the variable\n")
