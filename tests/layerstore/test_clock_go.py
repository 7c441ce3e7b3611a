"""Times as the Docker CLI shows them (``images`` CreatedAt, ``history`` in
RFC 3339, ``inspect``'s Created as the config has it) against Go's own
``time``: ``gocli/main.go`` prints ``time.Unix(s, 0).In(zone)`` both ways for
the same instants and zones, and reads and writes a config's timestamp again.

The zones include old offsets with seconds (Monrovia kept -0:44:30 until
1972), half and quarter hours, and the first and last years that an image's
``created`` can name (0001, Go's zero time, and 9999).

Durations (``until=``, ``fsck --max``) are read as ``time.ParseDuration``
reads them: signs, fractions, both spellings of micro, and overflow.
"""
from __future__ import annotations

import datetime as _dt

import gocli
import pytest
from budgets import examples, long_run_marks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zones import local_zone

from layerstore.formatting import go_rfc3339, go_time_string, parse_time
from layerstore.queries import go_duration

pytestmark = long_run_marks("CLOCK_EXAMPLES", seconds_each=0.05)


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Africa/Monrovia",
         "Pacific/Kiritimati", "America/St_Johns", "Europe/Amsterdam", "Asia/Kathmandu", "Europe/Dublin"]
ZERO, LAST = -62135596800, 253402300799  # 0001-01-01T00:00:00Z, 9999-12-31T23:59:59Z
INSTANTS = [0, ZERO, ZERO + 20 * 3600, LAST - 20 * 3600, 1704207845, 1719835445, -2208988800, 63072000,
            2147483647, 2147483648, 4102444800, -1000000000]


def ours(unix: int, zone: str) -> str:
    """Both forms with the process in zone, as a user's TZ sets it."""
    with local_zone(zone):
        return f"{go_time_string(unix)}|{go_rfc3339(unix)}"


@pytest.mark.parametrize("zone", ZONES)
def test_instants_show_as_in_go(go_cli: gocli.Ask, zone: str) -> None:
    assert [ours(u, zone) for u in INSTANTS] == [go_cli({"unix": u, "zone": zone})["out"] for u in INSTANTS]


@settings(max_examples=examples("CLOCK_EXAMPLES", 300), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(unix=st.integers(ZERO, LAST), zone=st.sampled_from(ZONES))
def test_generated_instants_show_as_in_go(go_cli: gocli.Ask, unix: int, zone: str) -> None:
    assert ours(unix, zone) == go_cli({"unix": unix, "zone": zone})["out"]


@settings(max_examples=examples("CLOCK_EXAMPLES", 300), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(unix=st.integers(ZERO + 86400, LAST - 86400), nanos=st.sampled_from([0, 5, 120000000, 999999999]),
       offset=st.one_of(st.just(0), st.integers(-23 * 60 - 59, 23 * 60 + 59)))
def test_a_configs_timestamp_is_written_back_as_by_go(go_cli: gocli.Ask, unix: int, nanos: int, offset: int) -> None:
    """inspect's Created: the config's own text, read and written with RFC 3339 and nanoseconds,
    its offset kept; from Go's zero time (0001-01-01) on."""
    local = _dt.datetime(1, 1, 1) + _dt.timedelta(seconds=unix - ZERO + offset * 60)
    zone = "Z" if offset == 0 else f"{'-' if offset < 0 else '+'}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    text = local.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0") + f".{nanos:09d}{zone}"
    parsed = parse_time(text)
    assert parsed is not None and parsed.unix == unix, text
    assert parsed.rfc3339nano() == go_cli({"rfc3339": text})["out"]


# -- durations (until=, fsck --max): time.ParseDuration --------------------------

DURATIONS = [
    "0", "-0", "+0", "00", "24h", "1h30m", "-1.5s", ".5s", "1.s", ".s", "1", "", "-", "1h ", " 1h", "1e3s", "1H",
    "300ms", "1us", "1µs", "1μs", "2562047h47m16.854775807s", "2562047h47m16.854775808s", "-2562047h47m16.854775808s",
    "9223372036854775807ns", "9223372036854775808ns", "0.000000000000000000001s", "1.99999999999999999999999s",
    "123456789012345678901234567890ns", "1.0000000000000000000000000000000000001h",
]


def go_nanos(go_cli: gocli.Ask, text: str) -> int | None:
    answer = go_cli({"duration": text})
    return int(answer["out"]) if "out" in answer else None


@pytest.mark.parametrize("text", DURATIONS)
def test_durations_read_as_gos(go_cli: gocli.Ask, text: str) -> None:
    assert go_duration(text) == go_nanos(go_cli, text)


_AMOUNTS = st.sampled_from(["1", "0", "9", "12", "3.", ".5", "2.25", "99999999999", "0.000000001", ".", "",
                            "9223372036854775807", "18446744073709551616"])
_UNITS = st.sampled_from(["ns", "us", "µs", "μs", "ms", "s", "m", "h", "", "x", "H"])


@settings(max_examples=examples("CLOCK_EXAMPLES", 300), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(sign=st.sampled_from(["", "-", "+"]), parts=st.lists(st.tuples(_AMOUNTS, _UNITS), min_size=1, max_size=4))
def test_generated_durations_read_as_gos(go_cli: gocli.Ask, sign: str, parts: list[tuple[str, str]]) -> None:
    text = sign + "".join(amount + unit for amount, unit in parts)
    assert go_duration(text) == go_nanos(go_cli, text)
