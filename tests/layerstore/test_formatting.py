"""Docker's output conventions: go-units sizes and durations, Go dates, tabwriter, templates, globs."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from zones import local_zone

from layerstore.errors import CommandError
from layerstore.formatting import (
    Record,
    created_since,
    ellipsis,
    go_rfc3339,
    go_time_string,
    human_duration,
    human_size,
    human_size4,
    image_created_since,
    parse_time,
    render,
    step_created_since,
    tabwrite,
)
from layerstore.gofmt import go_json
from layerstore.gotemplate import Template, TemplateError
from layerstore.gofmt import sprint
from layerstore.queries import (
    go_path_match,
    parse_filters,
    parse_until,
    reference_matches,
)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (1, "1B"),
        (999, "999B"),
        (1000, "1kB"),
        (1024, "1.02kB"),
        (12_345, "12.3kB"),
        (999_999, "1e+03kB"),  # go-units prints %.3g of 999.999 so, too
        (4_260_000, "4.26MB"),
        (72_800_000, "72.8MB"),
        (1_230_000_000, "1.23GB"),
        (5 * 10**12, "5TB"),
        (10**27, "1e+03YB"),
    ],
)
def test_human_size_is_go_units_with_precision_3(size: int, text: str) -> None:
    assert human_size(size) == text


def test_human_size4_is_go_units_human_size() -> None:
    assert human_size4(12_345) == "12.35kB"
    assert human_size4(102_400) == "102.4kB"
    assert human_size4(0) == "0B"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "Less than a second"),
        (0.9, "Less than a second"),
        (1, "1 second"),
        (59, "59 seconds"),
        (60, "About a minute"),
        (119, "About a minute"),
        (120, "2 minutes"),
        (3599, "59 minutes"),
        (3600, "About an hour"),
        (5399, "About an hour"),  # int(1.4997h + 0.5) is 1
        (5400, "2 hours"),  # int(1.5h + 0.5) is 2
        (47 * 3600, "47 hours"),
        (48 * 3600, "2 days"),
        (13 * 86400, "13 days"),
        (14 * 86400, "2 weeks"),
        (59 * 86400, "8 weeks"),
        (60 * 86400, "2 months"),
        (729 * 86400, "24 months"),
        (730 * 86400, "2 years"),
        (3650 * 86400, "10 years"),
    ],
)
def test_human_duration_is_go_units(seconds: float, text: str) -> None:
    assert human_duration(int(seconds * 10**9)) == text


def test_created_since() -> None:
    assert created_since(1_000_000, now=1_000_000 + 3 * 86400) == "3 days ago"
    assert (image_created_since(None), image_created_since(-62135596800)) == ("", "")
    assert image_created_since(1_000_000) == created_since(1_000_000)
    assert (step_created_since(None), step_created_since(0), step_created_since(946684800)) == ("N/A",) * 3
    assert step_created_since(946684801) == created_since(946684801)
    assert created_since(-62135596800, now=1_700_000_000) == "292 years ago"  # Go's zero time: Sub saturates
    assert created_since(253402300799, now=1_700_000_000) == "Less than a second ago"  # in the future
    assert created_since(999_999.5, now=1_000_000 + 1.2) == "2 seconds ago"  # whole seconds, rounded down


@pytest.fixture
def utc() -> Iterator[None]:
    with local_zone("UTC"):
        yield


def test_go_time_formats(utc: None) -> None:
    assert go_time_string(1704207845) == "2024-01-02 15:04:05 +0000 UTC"
    assert go_rfc3339(1704207845) == "2024-01-02T15:04:05Z"


def test_go_time_formats_in_another_zone() -> None:
    with local_zone("Europe/Berlin"):
        assert go_time_string(1704207845) == "2024-01-02 16:04:05 +0100 CET"
        assert go_rfc3339(1704207845) == "2024-01-02T16:04:05+01:00"


def test_parse_time_keeps_nanoseconds_and_offsets() -> None:
    t = parse_time("2024-01-02T15:04:05.123456789Z")
    assert t is not None and t.unix == 1704207845 and t.nanos == 123456789
    assert t.rfc3339nano() == "2024-01-02T15:04:05.123456789Z"
    t = parse_time("2024-01-02T16:04:05.500000000+01:00")
    assert t is not None and t.unix == 1704207845
    assert t.rfc3339nano() == "2024-01-02T16:04:05.5+01:00"
    assert parse_time("yesterday") is None
    assert parse_time(None) is None


def test_tabwriter_minimum_width_and_padding() -> None:
    text = "REPOSITORY\tTAG\tIMAGE ID\nbusybox\tlatest\ta416a98b71e2\n"
    assert tabwrite(text) == "REPOSITORY   TAG       IMAGE ID\nbusybox      latest    a416a98b71e2\n"


def test_tabwriter_keeps_trailing_padding_of_empty_last_cells() -> None:
    # the last cell of a line is not a column: empty, the line ends with the previous cell's padding
    assert tabwrite("A\tB\tC\nx\ty\t\n") == "A         B         C\nx         y         \n"


def test_tabwriter_line_without_tabs_ends_a_block() -> None:
    text = "a\tb\nheading only\nlonger cell here\tc\n"
    assert tabwrite(text) == "a         b\nheading only\nlonger cell here   c\n"


def test_tabwriter_counts_runes() -> None:
    assert tabwrite("é…\tx\nab\ty\n") == "é…        x\nab        y\n"


def test_ellipsis() -> None:
    assert ellipsis("short", 45) == "short"
    cut = ellipsis("x" * 50, 45)
    assert cut == "x" * 44 + "…" and len(cut) == 45
    assert ellipsis("日本語のテキスト", 7) == "日本語…"


HEADERS = {"ID": "IMAGE ID", "Repository": "REPOSITORY", "Size": "SIZE"}


def _rec(**fields: object) -> Record:
    return Record("image", dict(fields), HEADERS)


EMPTY = _rec(ID="", Repository="", Size="", Labels={}, List=[])
ROW = _rec(ID="abc", Repository="busybox", Size="4.26MB", Labels={"b": "2", "a": "<1>"}, List=["x", "y"])


@pytest.mark.parametrize(
    ("fmt", "out"),
    [
        ("{{.ID}}", "abc\n"),
        ("{{.Repository}}:{{.ID}}\\t|", "busybox:abc\t|\n"),
        ("  {{.ID}}  ", "abc\n"),  # Docker trims spaces around the format
        ("{{upper .Repository}} {{lower \"ABC\"}} {{title \"hello world\"}}", "BUSYBOX abc Hello World\n"),
        ("{{json .Labels}}", '{"a":"<1>","b":"2"}\n'),  # sorted like a Go map, no HTML escaping
        ("{{json .List}}", '["x","y"]\n'),
        ("{{.Labels}} {{.List}} {{len .List}}", "map[a:<1> b:2] [x y] 2\n"),
        ("{{index .Labels \"b\"}}{{index .List 1}}", "2y\n"),
        ("{{range .List}}[{{.}}]{{end}}", "[x][y]\n"),
        ("{{range .Labels}}{{.}},{{else}}none{{end}}", "<1>,2,\n"),
        ("{{if eq .ID \"abc\"}}yes{{else}}no{{end}}", "yes\n"),
        ("{{if not .ID}}a{{else if .Size}}b{{else}}c{{end}}", "b\n"),
        ("{{.Size | printf \"%s!\"}}", "4.26MB!\n"),
        ("{{println .ID}}", "abc\n\n"),
        ("{{join (split \"a,b\" \",\") \"+\"}}", "a+b\n"),
        ("{{pad .ID 1 2}}|{{truncate .Repository 4}}", " abc  |busy\n"),
        ("{{- .ID -}}  \n  ", "abc\n"),
        ("{{/* comment */}}{{.ID}}", "abc\n"),
    ],
)
def test_template_subset(fmt: str, out: str) -> None:
    assert render(fmt, [ROW], EMPTY) == out


def test_json_format_is_one_object_per_line() -> None:
    assert render("json", [ROW, ROW], EMPTY).splitlines() == [go_json(ROW)] * 2
    assert go_json(ROW).startswith('{"ID":"abc","Labels":{"a":"<1>","b":"2"},"List":["x","y"]')


def test_table_prefix_prints_header_from_field_names_and_aligns() -> None:
    out = render("table {{.ID}}\\t{{.Repository}}:{{.Size}}", [ROW], EMPTY)
    assert out == "IMAGE ID   REPOSITORY:SIZE\nabc        busybox:4.26MB\n"
    assert render("table {{.ID}}\\t{{.Size}}", [], EMPTY) == "IMAGE ID   SIZE\n"  # the header without rows


def test_unknown_field_is_a_one_line_error() -> None:
    with pytest.raises(TemplateError) as info:
        render("{{.ID}} {{.Nope}}", [ROW], EMPTY)
    assert str(info.value) == 'template parsing error: template: :1:10: executing "" at <.Nope>: can\'t evaluate field Nope in type image'
    assert isinstance(info.value, CommandError) and "\n" not in str(info.value)
    with pytest.raises(TemplateError, match="can't evaluate field Nope"):
        render("table {{.Nope}}", [], EMPTY)  # the header checks fields too


@pytest.mark.parametrize("fmt", ["{{.ID", "{{nosuch .ID}}", "{{end}}", "{{if .ID}}x", "{{.ID | }}", "{{$x}}", "{{break}}"])
def test_parse_errors(fmt: str) -> None:
    with pytest.raises(TemplateError, match="^template parsing error: template: :1"):
        Template(fmt)


def test_raw_maps_with_missing_key_error() -> None:
    data = {"Id": "x", "Config": {"Labels": None}, "Size": 12, "List": [1, 2]}
    t = Template("{{.Id}} {{.Config.Labels}} {{.Size}} {{.List}}", missing_key_error=True)
    assert t.execute(data) == "x <nil> 12 [1 2]"
    with pytest.raises(TemplateError, match='map has no entry for key "Nope"'):
        Template("{{.Nope}}", missing_key_error=True).execute(data)
    assert Template("{{.Nope}}").execute(data) == "<no value>"


def test_sprint_is_go_fmt_v() -> None:
    assert sprint(True) == "true"
    assert sprint(1.5) == "1.5"
    assert sprint(2.0) == "2"
    assert sprint(123456.0) == "123456"
    assert sprint(1e6) == "1e+06"  # strconv's shortest %g: an exponent from 1e6 on
    assert sprint(1e21) == "1e+21"
    assert sprint(0.0001) == "0.0001" and sprint(0.00001) == "1e-05"
    assert sprint({"b": [1, None], "a": "x"}) == "map[a:x b:[1 <nil>]]"


@pytest.mark.parametrize(
    ("pattern", "name", "match"),
    [
        ("busybox", "busybox", True),
        ("busy*", "busybox", True),
        ("*", "example/app", False),  # * stops at /
        ("*/*", "example/app", True),
        ("example/*", "example/app", True),
        ("example/ap?", "example/app", True),
        ("example/[a-b]pp", "example/app", True),
        ("example/[^a]pp", "example/app", False),
        ("ex\\ample/app", "example/app", True),
        ("example/app:1.*", "example/app:1.0", True),
    ],
)
def test_go_path_match(pattern: str, name: str, match: bool) -> None:
    assert go_path_match(pattern, name) is match


def test_bad_glob_is_an_error() -> None:
    with pytest.raises(CommandError, match="syntax error in pattern"):
        go_path_match("example/[app", "example/app")


def test_reference_matches_familiar_name_and_name_tag() -> None:
    assert reference_matches("busybox", "busybox", tag="latest")
    assert reference_matches("busybox:latest", "busybox", tag="latest")
    assert not reference_matches("busybox:1.36", "busybox", tag="latest")
    assert reference_matches("docker.io/library/busybox:latest", "busybox", tag="latest")
    assert reference_matches("*/app:2.*", "example/app", tag="2.0")
    assert not reference_matches("*/app:2.*", "example/app", tag="1.0")


def test_parse_filters() -> None:
    assert parse_filters(["dangling=true", "label=a=b", "label=c"], ("dangling", "label")) == {"dangling": ["true"], "label": ["a=b", "c"]}
    with pytest.raises(CommandError, match="^invalid filter 'foo'$"):
        parse_filters(["foo=bar"], ("dangling",))
    with pytest.raises(CommandError, match=r"^bad format of filter \(expected name=value\)$"):
        parse_filters(["dangling"], ("dangling",))
    with pytest.raises(CommandError, match="^invalid filter 'dangling=maybe'$"):
        parse_filters(["dangling=maybe"], ("dangling",))


def test_parse_until() -> None:
    assert parse_until("1h30m", now=10_000) == 10_000 - 5400
    assert parse_until("1700000000") == 1_700_000_000
    assert parse_until("2024-01-02T15:04:05Z") == 1704207845
    assert parse_until("1700000000.5") == 1_700_000_000.5
    assert parse_until("-1h", now=10_000) == 10_000 + 3600  # Go's durations take a sign
    for text in ("soon", "1e9", "nan", "inf", " 1h"):  # Docker's reading of a Unix time takes digits only
        with pytest.raises(CommandError):
            parse_until(text)
