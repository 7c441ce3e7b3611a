"""Sizes and ages in the Docker CLI's words against go-units itself (Debian's
``golang-github-docker-go-units-dev``): ``HumanSizeWithPrecision`` for the SIZE
columns (precision 3 in ``images`` and ``history``, 4 in ``system df``) and
``HumanDuration`` for CREATED, with the float64 arithmetic of Go's
``Duration.Hours`` and ``Seconds`` on durations up to an int64's ends.
"""
from __future__ import annotations

import gocli
import pytest
from budgets import examples, long_run_marks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layerstore.formatting import go_since, human_duration, human_size

pytestmark = long_run_marks("CLOCK_EXAMPLES", seconds_each=0.05)

S, M, H = 10**9, 60 * 10**9, 3600 * 10**9
DAY = 24 * H
INT64 = (-(2**63), 2**63 - 1)
# Each boundary of the words, a nanosecond to either side; half hours (where hours
# round up); the int64's ends, where a float64 of hours no longer holds nanoseconds.
BOUNDARIES = [0, S, 2 * S, 60 * S, M, 2 * M, 60 * M, H, 90 * M, 48 * H, 14 * DAY, 60 * DAY, 730 * DAY,
              365 * DAY, 3 * 365 * DAY, 292 * 365 * DAY, 2562047 * H + 30 * M, INT64[1] - H, INT64[1]]
DURATIONS = sorted({max(INT64[0], min(INT64[1], b + d)) for b in BOUNDARIES for d in (-1, 0, 1)}
                   | {-S, -H, INT64[0], INT64[0] + 1, 5399 * S, 5400 * S - 1, 5400 * S})

SIZES = [0, 1, 999, 1000, 1001, 9_999, 99_499, 99_500, 99_950, 999_499, 999_500, 999_999, 1_000_000,
         2_746_000, 7_800_000, 123_456_789, 999_950_000, 10**12, 10**15, 10**18, 10**21, 10**24, 10**27,
         10**30, 2**53 + 1, 2**63 - 1, 2**64, 0.5, 1e-5, 999.95, 1234.5678]


def go_duration(ask: gocli.Ask, nanos: int) -> str:
    return ask({"since": nanos})["out"]


def go_size(ask: gocli.Ask, size: float, precision: int) -> str:
    return ask({"size": size, "precision": precision})["out"]


def test_durations_as_go_units_words_them(go_cli: gocli.Ask) -> None:
    assert [human_duration(d) for d in DURATIONS] == [go_duration(go_cli, d) for d in DURATIONS]


@pytest.mark.parametrize("precision", [3, 4])
def test_sizes_as_go_units_words_them(go_cli: gocli.Ask, precision: int) -> None:
    assert [human_size(s, precision) for s in SIZES] == [go_size(go_cli, s, precision) for s in SIZES]


@settings(max_examples=examples("CLOCK_EXAMPLES", 300), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(nanos=st.one_of(st.integers(*INT64), st.integers(-H, 3 * 365 * DAY),
                       st.builds(lambda b, d: max(INT64[0], min(INT64[1], b + d)),
                                 st.sampled_from(BOUNDARIES), st.integers(-2 * S, 2 * S))))
def test_generated_durations_as_go_units_words_them(go_cli: gocli.Ask, nanos: int) -> None:
    assert human_duration(nanos) == go_duration(go_cli, nanos)


@settings(max_examples=examples("CLOCK_EXAMPLES", 300), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(size=st.one_of(st.integers(0, 2**63 - 1), st.integers(0, 10**7),
                      st.floats(0, 1e30, allow_nan=False, allow_infinity=False)),
       precision=st.sampled_from([3, 4]))
def test_generated_sizes_as_go_units_words_them(go_cli: gocli.Ask, size: float, precision: int) -> None:
    """JSON carries the size as Go's float64 reads it: a Python int above 2**53 becomes
    the nearest double on both sides."""
    assert human_size(size, precision) == go_size(go_cli, size, precision)


def test_go_since_saturates_as_time_sub() -> None:
    assert go_since(-62135596800, 1_700_000_000 * S) == INT64[1]
    assert go_since(253402300799, -(10**19)) == INT64[0]
    assert go_since(1_000, 1_001 * S + 5) == S + 5
