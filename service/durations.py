"""Durations as the API and the config file write them: seconds or "90s", "5m", "24h", "30d"."""

from __future__ import annotations

import re

_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PATTERN = re.compile(r"^([0-9]{1,9})([smhd])$")

# The longest duration anything accepts, so arithmetic in ms stays far
# inside Lua's exactly representable integers (2**53).
MAX_DURATION_S = 10 * 365 * 86400


def parse_duration_s(value: object) -> int:
    """Return a duration in whole seconds, or raise ValueError naming the rule."""
    if isinstance(value, bool):
        raise ValueError("expected seconds or a duration like '90s', '5m', '24h', '30d', got a boolean")

    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        match = _PATTERN.fullmatch(value)
        if match is None:
            raise ValueError("expected seconds or a duration like '90s', '5m', '24h', '30d'")
        seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    else:
        raise ValueError(
            f"expected seconds or a duration like '90s', '5m', '24h', '30d', got {type(value).__name__}"
        )

    if seconds <= 0:
        raise ValueError("must be a positive duration")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"must be at most {MAX_DURATION_S} seconds (10 years)")
    return seconds


def format_duration(seconds: int) -> str:
    """Return the shortest exact spelling of a duration, e.g. 86400 -> "1d"."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
