"""Times as the Docker CLI shows them (``images`` CreatedAt, ``history`` in
RFC 3339, ``inspect``'s Created as the config has it) against Go's own
``time``: ``gocli/main.go`` prints ``time.Unix(s, 0).In(zone)`` both ways for
the same instants and zones, and reads and writes a config's timestamp again.

The zones include old offsets with seconds (Monrovia kept -0:44:30 until
1972), half and quarter hours, and the first and last years that an image's
``created`` can name (0001, Go's zero time, and 9999).

Durations (``until=``, ``fsck --max``) are read as ``time.ParseDuration``
reads them: signs, fractions, both spellings of micro, and overflow; the
dates and times of ``until=`` as ``time.Parse`` reads them with the layouts
that Docker picks for them.
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
from layerstore.errors import CommandError
from layerstore.queries import go_duration, go_layout_time, parse_until

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


# -- until='s dates and times: time.Parse with the layouts Docker picks ------------

# Docker's layouts (GetTimestamp) and what go_layout_time calls them: the hour, minutes and
# seconds they hold, and whether they end in a zone
LAYOUTS = {
    "2006-01-02": (0, False), "2006-01-02Z07:00": (0, True),
    "2006-01-02T15": (1, False), "2006-01-02T15Z07:00": (1, True),
    "2006-01-02T15:04": (2, False), "2006-01-02T15:04Z07:00": (2, True),
    "2006-01-02T15:04:05": (3, False), "2006-01-02T15:04:05Z07:00": (3, True),
    "2006-01-02T15:04:05.999999999": (3, False), "2006-01-02T15:04:05.999999999Z07:00": (3, True),
}
STEADY_ZONES = ["UTC", "Asia/Kolkata", "America/Bogota"]  # no daylight saving: no local time is missing or twice


def same_time(go_cli: gocli.Ask, layout: str, value: str, zone: str) -> None:
    fields, zoned = LAYOUTS[layout]
    with local_zone(zone):
        mine = go_layout_time(value, fields, zoned, nanos_field=".999999999" in layout)
    answer = go_cli({"layout": layout, "value": value, "zone": "" if zoned else zone})
    if "out" not in answer:
        assert mine is None, (layout, value, answer)
        return
    unix, nanos = (int(n) for n in answer["out"].split())
    assert mine is not None and abs(mine - (unix + nanos / 1e9)) < 1e-6, (layout, value, mine, answer)


WHENS = [
    "2024-01-02", "2024-01-02Z", "2024-01-02+05:30", "2024-02-30", "2024-13-01", "2024-1-02", "24-01-02",
    "2024-01-02T15", "2024-01-02T5", "2024-01-02T24", "2024-01-02T15Z", "2024-01-02T15-03:00", "2024-01-02T15:04",
    "2024-01-02T15:4", "2024-01-02T15:60", "2024-01-02T15:04:05", "2024-01-02T15:04:05.5", "2024-01-02T15:04:05,25",
    "2024-01-02T15:04:05.1234567891234", "2024-01-02T15:04:05.", "2024-01-02T15:04:05Z", "2024-01-02T15:04:05z",
    "2024-01-02T15:04:05+01:00", "2024-01-02T15:04:05+0100", "2024-01-02T15:04:05.5+01:00", "2024-01-02 15:04:05",
    "2024-02-29T00:00:00", "2023-02-29T00:00:00", "2024-01-02T15:04:05Z ",
]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_until_times_read_as_go_reads_them(go_cli: gocli.Ask, layout: str) -> None:
    for value in WHENS:
        same_time(go_cli, layout, value, "Asia/Kolkata")


_ZONES_WRITTEN = st.one_of(st.just(""), st.sampled_from(["Z", "z", "+00:00"]),
                           st.builds(lambda s, h, m: f"{s}{h:02d}:{m:02d}", st.sampled_from("+-"),
                                     st.integers(0, 23), st.integers(0, 59)))


@st.composite
def whens(draw: st.DrawFn) -> str:
    text = f"{draw(st.integers(1000, 2999)):04d}-{draw(st.integers(0, 13)):02d}-{draw(st.integers(0, 32)):02d}"
    if draw(st.booleans()):
        text += f"T{draw(st.integers(0, 24)):0{draw(st.sampled_from([1, 2]))}d}"
        for _ in range(draw(st.integers(0, 2))):
            text += f":{draw(st.integers(0, 60)):02d}"
        if draw(st.booleans()):
            text += draw(st.sampled_from(".,")) + draw(st.text("0123456789", max_size=11))
    return text + draw(_ZONES_WRITTEN)


@settings(max_examples=examples("CLOCK_EXAMPLES", 300), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(value=whens(), layout=st.sampled_from(list(LAYOUTS)), zone=st.sampled_from(STEADY_ZONES))
def test_generated_until_times_read_as_go_reads_them(go_cli: gocli.Ask, value: str, layout: str, zone: str) -> None:
    same_time(go_cli, layout, value, zone)


@pytest.mark.parametrize(("value", "unix"), [
    ("2024-01-02", 1704153600 - 19800),  # local: Kolkata, +05:30
    ("2024-01-02Z", 1704153600),
    ("2024-01-02+01:00", 1704153600 - 3600),
    ("2024-01-02T15", 1704207600 - 19800),
    ("2024-01-02T15Z", 1704207600),
    ("2024-01-02T15-01:00", 1704207600 + 3600),
    ("2024-01-02T15:04", 1704207840 - 19800),
    ("2024-01-02T15:04+01:00", 1704207840 - 3600),
    ("2024-01-02T15:04:05", 1704207845 - 19800),
    ("2024-01-02T15:04:05.5Z", 1704207845.5),
    ("2024-01-02T15:04:05.25", 1704207845.25 - 19800),
    ("1700000000", 1700000000), ("1700000000.5", 1700000000.5), ("+5", 5), ("0", 0),
])
def test_until_picks_the_layout_as_docker_does(value: str, unix: float) -> None:
    """The value's punctuation picks the layout: a dot, a T and its colons, a zone (Z, +, or
    three dashes) or the local zone; what no layout reads and has no dash is a Unix time."""
    with local_zone("Asia/Kolkata"):
        assert parse_until(value) == unix


@pytest.mark.parametrize("value", ["2024-01-02T15:04:05z", "2024-1-2", "-5", "1e9", "nan", " 24h", "2024-01-02 15:04"])
def test_until_refuses_what_docker_refuses(value: str) -> None:
    with pytest.raises(CommandError):
        parse_until(value)
