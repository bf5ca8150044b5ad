from __future__ import annotations

import pytest

from service.durations import MAX_DURATION_S, format_duration, parse_duration_s


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("5m", 300), ("24h", 86400), ("30d", 2592000), (45, 45)],
    ids=["seconds-suffix", "minutes", "hours", "days", "integer"],
)
def test_parse_duration_accepts_contract_forms(text: object, seconds: int) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize(
    "value",
    ["", "5m\n", "5", "5 m", "5M", "1w", "-5m", "0s", 0, -1, 1.5, True, None, "99999999999d",
     MAX_DURATION_S + 1],
    ids=["empty", "newline", "no-unit", "space", "upper", "weeks", "negative-text", "zero-text", "zero",
         "negative", "float", "bool", "none", "huge-text", "over-max"],
)
def test_parse_duration_rejects_bad_values(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration_s(value)


@pytest.mark.parametrize(("seconds", "text"), [(86400, "1d"), (7200, "2h"), (300, "5m"), (90, "90s")])
def test_format_duration_shortest_exact_unit(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text
