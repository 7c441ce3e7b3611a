"""Output as the Docker CLI prints it: sizes, ages, dates, tables and ``--format``.

Sizes and durations follow go-units (``HumanSizeWithPrecision``,
``HumanDuration``), dates Go's ``time`` package, tables Go's tabwriter with
Docker's settings (minimum width 10, padding 3), and ``--format`` runs
``layerstore.gotemplate`` over a record per row (Docker's formatter contexts).
"""
from __future__ import annotations

import datetime as _dt
import math
import re
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from layerstore.gofmt import Fields
from layerstore.gotemplate import Template

TABLE_MINWIDTH = 10
TABLE_PADDING = 3
_DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


# -- sizes, durations, dates ------------------------------------------------------


def human_size(size: float, precision: int = 3) -> str:
    """go-units ``HumanSizeWithPrecision``: decimal units, ``%.<precision>g``."""
    size = float(size)
    i = 0
    while size >= 1000.0 and i < len(_DECIMAL_UNITS) - 1:
        size /= 1000.0
        i += 1
    return f"{size:.{precision}g}{_DECIMAL_UNITS[i]}"


def human_size4(size: float) -> str:
    """go-units ``HumanSize`` (precision 4), as ``system df`` and ``prune`` print."""
    return human_size(size, 4)


SECOND = 10**9  # Go's time.Second, and the two below, in nanoseconds
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
_MIN_DURATION, _MAX_DURATION = -(2**63), 2**63 - 1  # Go's time.Duration, an int64 of nanoseconds


def _go_units(nanos: int, unit: int) -> float:
    """``Duration.Seconds``, ``Minutes`` or ``Hours``: whole units and the rest added
    as float64, with Go's division (towards zero); Python's floats are the same
    doubles, so each rounding is Go's."""
    whole, rest = divmod(abs(nanos), unit)
    sign = -1 if nanos < 0 else 1
    return float(sign * whole) + float(sign * rest) / float(unit)


def human_duration(nanos: int) -> str:
    """go-units ``HumanDuration`` of a ``time.Duration`` (nanoseconds)."""
    seconds = int(_go_units(nanos, SECOND))
    if seconds < 1:
        return "Less than a second"
    if seconds == 1:
        return "1 second"
    if seconds < 60:
        return f"{seconds} seconds"
    minutes = int(_go_units(nanos, MINUTE))
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    in_hours = _go_units(nanos, HOUR)
    hours = int(in_hours + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(in_hours) // 24 // 365} years"


def go_since(unix: int, now_ns: int) -> int:
    """``time.Now().Sub(time.Unix(unix, 0))`` in nanoseconds: Go's ``Sub`` saturates
    at the ends of a Duration, about 292 years either way."""
    return max(_MIN_DURATION, min(_MAX_DURATION, now_ns - unix * SECOND))


def created_since(unix: float, now: float | None = None) -> str:
    """Docker's CREATED words: ``HumanDuration(time.Now().Sub(time.Unix(created, 0))) + " ago"``,
    created in whole seconds as the API gives it (``Time.Unix``, rounded down).
    now: seconds, for tests."""
    now_ns = time.time_ns() if now is None else int(now * SECOND)
    return human_duration(go_since(math.floor(unix), now_ns)) + " ago"


GO_ZERO_UNIX = -62135596800  # time.Time{}.Unix(): 0001-01-01T00:00:00Z
HISTORY_EPOCH = 946684800  # 2000-01-01T00:00:00Z


def image_created_since(unix: float | None) -> str:
    """An image's CreatedSince (``images``, ``system df -v``): empty for an image without
    a date, which the API gives as Go's zero time and the Docker CLI tells by
    ``IsZero``; the default ``images`` table shows N/A for it."""
    if unix is None or math.floor(unix) == GO_ZERO_UNIX:
        return ""
    return created_since(unix)


def step_created_since(unix: float | None) -> str:
    """A history step's CreatedSince: N/A up to 2000-01-01, as the Docker CLI shows
    steps dated 1970 by reproducible builds (``SOURCE_DATE_EPOCH=0``) or not at all."""
    if unix is None or math.floor(unix) <= HISTORY_EPOCH:
        return "N/A"
    return created_since(unix)


def _zone(unix: int) -> tuple[int, str]:
    """The local zone's offset (seconds east) and name at unix. Python's dates end at
    years 1 and 9999; past them, the zone as it is there."""
    clamped = min(max(unix, _FIRST_DAY), _LAST_DAY)
    t = _dt.datetime.fromtimestamp(clamped, _dt.UTC).astimezone()
    offset = t.utcoffset() or _dt.timedelta(0)
    return int(offset.total_seconds()), t.tzname() or ""


_FIRST_DAY, _LAST_DAY = -62135596800 + 86400, 253402300799 - 86400  # 0001-01-02, 9999-12-30


def _civil(unix: int) -> tuple[int, int, int, int, int, int]:
    """Year, month, day, hour, minute, second of a unix time, for any year (proleptic Gregorian)."""
    days, secs = divmod(unix, 86400)
    z = days + 719468  # days since 0000-03-01
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    return year, month, doy - (153 * mp + 2) // 5 + 1, secs // 3600, secs // 60 % 60, secs % 60


def _go_date(seconds: int) -> str:
    """``2006-01-02 15:04:05`` of a count of seconds from 1970 on a clock (UTC's, or a zone's)."""
    year, month, day, hour, minute, second = _civil(seconds)
    digits = f"{abs(year):04d}" if year >= 0 else f"-{abs(year):04d}"
    return f"{digits}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:{second:02d}"


def _go_clock(unix: int) -> tuple[str, int, str]:
    """``2006-01-02 15:04:05`` in local time, the zone's offset in seconds and its name."""
    offset, name = _zone(unix)
    return _go_date(unix + offset), offset, name


def _go_offset(offset: int, colon: str) -> str:
    """-0700 or -07:00: whole minutes, as Go drops the seconds of an old zone's offset."""
    minutes = int(offset / 60)
    return f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}{colon}{abs(minutes) % 60:02d}"


def go_time_string(unix: float | None) -> str:
    """Go's ``time.Unix(s, 0).String()`` in local time: ``2024-01-02 15:04:05 +0000 UTC``."""
    if unix is None:
        return ""
    clock, offset, name = _go_clock(int(unix))
    zone = _go_offset(offset, "")
    return f"{clock} {zone} {name or zone}"


def go_rfc3339(unix: float | None) -> str:
    """Go's ``time.Unix(s, 0).Format(time.RFC3339)`` in local time (``Z`` for UTC)."""
    if unix is None:
        return ""
    clock, offset, _ = _go_clock(int(unix))
    return clock.replace(" ", "T") + ("Z" if offset == 0 else _go_offset(offset, ":"))


_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9})\d*)?\s*(Z|z|[+-]\d\d:?\d\d)?\s*$"
)


@dataclass(frozen=True)
class Timestamp:
    """An RFC 3339 time with nanoseconds, as image configs carry them."""

    unix: int  # whole seconds since the epoch
    nanos: int
    offset_minutes: int

    def rfc3339nano(self) -> str:
        """Go's ``Format(time.RFC3339Nano)``: trailing zeros of the fraction dropped."""
        out = _go_date(self.unix + self.offset_minutes * 60).replace(" ", "T")
        if self.nanos:
            out += "." + f"{self.nanos:09d}".rstrip("0")
        return out + ("Z" if self.offset_minutes == 0 else _go_offset(self.offset_minutes * 60, ":"))


def parse_time(text: object) -> Timestamp | None:
    """An RFC 3339 timestamp from a config, or None when absent or unreadable."""
    if not isinstance(text, str):
        return None
    m = _RFC3339.match(text.strip())
    if not m:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    nanos = int((m.group(7) or "0").ljust(9, "0"))
    zone = m.group(8) or "Z"
    offset = 0
    if zone not in ("Z", "z"):
        digits = zone[1:].replace(":", "")
        offset = int(digits[:2]) * 60 + int(digits[2:])
        offset = -offset if zone[0] == "-" else offset
    try:
        base = _dt.datetime(year, month, day, hour, minute, second, tzinfo=_dt.UTC)
    except ValueError:
        return None
    unix = int((base - _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)).total_seconds()) - offset * 60
    return Timestamp(unix, nanos, offset)


# -- tables: Go's text/tabwriter ----------------------------------------------------


def tabwrite(text: str, minwidth: int = TABLE_MINWIDTH, padding: int = TABLE_PADDING) -> str:
    """Go's ``tabwriter.NewWriter(out, minwidth, 1, padding, ' ', 0)`` over ``text``.

    Cells are tab-terminated; the text after a line's last tab is not part of a
    column. A line without tabs ends a block of columns, as in Go.
    """
    out: list[str] = []
    block: list[list[str]] = []
    lines = text.split("\n")
    for i, raw in enumerate(lines):
        last = i == len(lines) - 1
        if last and raw == "":
            break
        cells = raw.split("\t")
        if last and cells[-1] == "":  # Go ends a cell at a tab, the last one only if it holds text
            cells.pop()
        block.append(cells)
        if not last and len(cells) == 1:
            _format_block(block, minwidth, padding, out)
            block = []
    if block:
        _format_block(block, minwidth, padding, out)
    result = "".join(out)
    if not text.endswith("\n") and result.endswith("\n"):
        result = result[:-1]
    return result


def _format_block(lines: list[list[str]], minwidth: int, padding: int, out: list[str]) -> None:
    widths: list[int] = []

    def write_lines(line0: int, line1: int) -> None:
        for line in lines[line0:line1]:
            for j, cell in enumerate(line):
                out.append(cell)
                if j < len(widths):
                    out.append(" " * (widths[j] - _width(cell)))
            out.append("\n")

    def fmt(line0: int, line1: int) -> None:
        column = len(widths)
        this = line0
        while this < line1:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            write_lines(line0, this)
            line0 = this
            width = minwidth
            while this < line1 and column < len(lines[this]) - 1:
                width = max(width, _width(lines[this][column]) + padding)
                this += 1
            widths.append(width)
            fmt(line0, this)
            widths.pop()
            line0 = this
        write_lines(line0, line1)

    fmt(0, len(lines))


def _width(text: str) -> int:
    """Runes, as Go's tabwriter counts them."""
    return len(text)


def ellipsis(text: str, max_width: int) -> str:
    """Docker's ``formatter.Ellipsis``: cut to a display width, ending in ``…``."""
    if max_width <= 0:
        return ""
    if max_width == 1:
        return text[:1]
    widths = [2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text]
    if sum(widths) <= max_width:
        return text
    out, used = [], 0
    for ch, w in zip(text, widths):
        if used + w > max_width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


# -- Docker's formatter contexts ----------------------------------------------------


@dataclass
class Record(Fields):
    """One row for a template: Docker's formatter context (fields are its methods)."""

    kind: str
    fields: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    in_json: dict[str, Any] = field(default_factory=dict)  # fields a context's MarshalJSON shows otherwise

    def header_record(self) -> Record:
        return Record(self.kind, {k: self.headers.get(k, default_header(k)) for k in self.fields}, self.headers)

    def json_fields(self) -> dict[str, Any]:
        return {**self.fields, **self.in_json}


def default_header(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).upper()


# -- Docker's formatter.Context ----------------------------------------------------------


RAW = "raw"  # Docker's RawFormatKey: each command that takes it names its own "key: value" lines


def is_table(fmt: str) -> bool:
    return fmt.startswith("table")


def prepare(fmt: str) -> str:
    """Docker's ``preFormat``: drop ``table``, ``json`` means ``{{json .}}``, ``\\t``/``\\n`` escapes."""
    if is_table(fmt):
        fmt = fmt[len("table") :]
    elif fmt.strip() == "json":
        fmt = "{{json .}}"
    return fmt.strip(" ").replace("\\t", "\t").replace("\\n", "\n")


def render(fmt: str, records: Iterable[Record], header: Record) -> str:
    """Each record through the template, one per line; with ``table``, a header and aligned columns.

    ``header`` is an empty record of the kind listed: its header names make
    the header row, printed even when there are no records, as Docker does.
    """
    tmpl = Template(prepare(fmt))
    rows = "".join(tmpl.execute(r) + "\n" for r in records)
    if not is_table(fmt):
        return rows
    return tabwrite(tmpl.execute(header.header_record(), header=True) + "\n" + rows)
