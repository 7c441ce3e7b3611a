"""The ``--format`` engine against Go's own ``text/template``.

``gocli/main.go`` renders with Go's package and the functions that the
Docker CLI adds (its ``templates`` package), built here with Debian's Go. Both
render the same templates over the same document, an image as ``inspect``
shows it, and must give the same text, or fail at the same stage (parse or
execution). Targeted cases also compare the error message; generated ones
compare what they print.

Go sees the document as JSON maps; Docker's templates see typed structs first,
and the engine follows those where the two part, so the cases stay clear of:
a JSON null that an action prints (a nil pointer there: ``{{.X}}`` prints
``<nil>``, where a map's nil prints ``<no value>``), a field of a string
(``in type string``), a list of strings handed to ``join`` (a ``[]string``). And by choice: a range over an integer
counts and ``json`` writes ``\\b`` and ``\\f`` so (both Go 1.22, which today's
Docker is built with; Debian's Go here is older), ``title`` leaves a letter
after an apostrophe alone, and ``truncate`` cuts characters, not bytes.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import gocli
import pytest
from budgets import examples, long_run_marks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layerstore.gotemplate import Template, TemplateError

pytestmark = long_run_marks("TEMPLATE_EXAMPLES", seconds_each=0.05)

DATA: dict[str, Any] = {
    "Id": "sha256:4b1c7a9e",
    "RepoTags": ["busybox:latest", "example/app:v1"],
    "RepoDigests": [],
    "Size": 4261550,
    "Ratio": 0.5,
    "Os": "linux",
    "Flag": True,
    "Off": False,
    "Text": "hello wide world",
    "Csv": "a,b,,c",
    "Config": {
        "Labels": {"b": "2", "a": "<1>", "maintainer": "X & Y"},
        "Env": ["PATH=/usr/bin", "A=1"],
        "Cmd": ["sh"],
        "ExposedPorts": {},
        "User": "",
    },
    "Nested": [{"Name": "a", "N": 1}, {"Name": "b", "N": 2}],
    "Empty": [],
}

Renderer = Callable[[str, Any, bool], dict[str, Any]]


@pytest.fixture
def go(go_cli: gocli.Ask) -> Renderer:
    return lambda template, data, strict: go_cli({"template": template, "data": data, "strict": strict})


def ours(template: str, data: Any, strict: bool) -> dict[str, Any]:
    try:
        parsed = Template(template, missing_key_error=strict)
    except TemplateError as exc:
        return {"stage": "parse", "err": str(exc).removeprefix("template parsing error: ")}
    try:
        return {"out": parsed.execute(data)}
    except TemplateError as exc:
        return {"stage": "exec", "err": str(exc).removeprefix("template parsing error: ")}


CASES = [
    # variables
    "{{$x := .Os}}{{$x}}-{{$x = \"y\"}}{{$x}}",
    "{{$x := 1}}{{if .Flag}}{{$x = 2}}{{end}}{{$x}}",
    "{{if .Flag}}{{$x := 2}}{{$x}}{{end}}",
    "{{with $t := .Os}}{{$t}} {{.}} {{$.Size}}{{end}}",
    "{{if $n := len .RepoTags}}{{$n}}{{end}}",
    "{{range $i, $e := .RepoTags}}{{$i}}={{$e}};{{end}}",
    "{{range $k, $v := .Config.Labels}}{{$k}}={{$v}};{{end}}",
    "{{range $e := .Config.Env}}[{{$e}}]{{end}}",
    "{{range $i, $e := .Empty}}x{{else}}none {{len $i}}{{end}}",
    "{{range .Nested}}{{$.Os}}:{{.Name}}{{end}}",
    "{{range $o := .Nested}}{{range $i, $t := $.RepoTags}}{{$o.Name}}{{$i}}{{end}}{{end}}",
    "{{range $i, $e := .Nested}}{{$x := $e.N}}{{$x}}{{end}}",
    "{{$y}}",
    "{{range $i, $e, $f := .RepoTags}}{{end}}",
    "{{$a, $b := .RepoTags}}",
    "{{with $a, $b := .RepoTags}}{{end}}",
    "{{if .Flag}}{{$z := 1}}{{end}}{{$z}}",
    "{{$x = 1}}",
    "{{$ := 1}}{{$}}",
    # break and continue
    "{{range .RepoTags}}{{if eq . \"example/app:v1\"}}{{break}}{{end}}[{{.}}]{{end}}",
    "{{range $i, $e := .Config.Env}}{{if eq $i 0}}{{continue}}{{end}}{{$e}}{{end}}",
    "{{range .Nested}}{{range $.RepoTags}}{{break}}{{end}}{{.Name}}{{end}}",
    "{{break}}",
    "{{if .Flag}}{{continue}}{{end}}",
    "{{range .RepoTags}}{{break 1}}{{end}}",
    "{{range .Empty}}{{else}}{{break}}{{end}}",
    # functions
    "{{slice .Os 1 3}} {{slice .RepoTags 1}} {{slice .Text 6}} {{slice .RepoTags 0 1 2}}",
    "{{slice .Os 3 1}}",
    "{{slice .Os 9}}",
    "{{slice .Os 0 1 2}}",
    "{{slice .Size 1}}",
    "{{pad .Config.User 2 2}}|{{pad .Os 1 0}}|",
    "{{truncate .Id 6}} {{truncate .Os 9}}",
    "{{join (split .Csv \",\") \"+\"}} {{len (split .Csv \",\")}} {{split .Os \"\"}}",
    "{{upper .Os}} {{lower \"ABC\"}} {{title .Text}}",
    "{{json .Config}} {{json .Nested}} {{json .Config.Cmd}} {{json .Ratio}}",
    "{{index .Config.Labels \"a\"}} {{index .RepoTags 1}} {{index .Nested 1 \"Name\"}}",
    "{{index .RepoTags 5}}",
    "{{len .Text}} {{len .Config.Labels}} {{len .Empty}}",
    "{{printf \"%s=%d %v %5.2f|%-6s|%q\" .Os .Size .Flag .Ratio .Os .Os}}",
    "{{printf \"%x %X %o %b %c %U %#U %q\" .Size .Size .Size 5 65 65 65 65}}",
    "{{printf \"%T %T %T %T %T %T %T\" .Os .Size .Ratio .RepoTags .Config .Flag 1}}",
    "{{printf \"%05d|%-8d|%+d|% d|%.3d|%8.3d|%-+5d|%x|%#x %#o %#b %O\" .Size 3 3 3 7 7 7 -255 255 8 5 8}}",
    "{{printf \"%.1f %e %g %8.3f %08.3f %-8.2e| %+.3g %G %6.2f|%-6.1f|%+06.1f\" .Ratio 1234.5 .Ratio 3.14159 3.14159 1234.5 0.000012345 1e-7 .Ratio .Ratio .Ratio}}",
    "{{printf \"%v %v %v %v\" 1e6 100000000.0 123456.0 0.00001}} {{1e6}} {{print 1e21 1.5}}",
    "{{printf \"%s|%d|%t|%f\" .Size .Os .Os .Os}}",
    "{{printf \"%v|%s|%q|%d|%x\" .RepoTags .RepoTags .RepoTags .RepoTags .RepoTags}} {{printf \"%v %+v\" .Config.Labels .Nested}}",
    "{{printf \"%q|%+q|%#q|%#q|%x|% x|%#x|%X|%.1x|%5.2s|%-4q|\" .Csv \"h\\u00e9\\n\" .Os \"a`b\" .Os .Os .Os .Os .Os .Os \"a\"}}",
    "{{printf \"%*d|%-*d|%.*f\" 5 3 4 2 1 .Ratio}}",
    "{{printf \"%*d|\" 1000001 3}} {{printf \"%99999999d|%d\" 1 2}} {{printf \"%.99999999d|\" 1}}",  # Go's limits
    "{{printf \"%\"}} {{printf \"%!\"}} {{printf \"%z\" 1}} {{printf \"%d %d\" 1}} {{printf \"%d\" 1 2 \"x\"}} {{printf \"%%\"}}",
    "{{printf \"%v %d %s\" .Nope .Nope .Nope}} {{printf \"%v\" nil}}",
    "{{print .Os .Size .Flag}} {{print 1 2}} {{print \"a\" \"b\"}}",
    "{{println .Os .Size}}",
    "{{and .Flag .Os}} {{and .Off .Os}} {{or .Off .Os}} {{or .Config.User .Empty}} {{not .Empty}}",
    "{{eq .Os \"linux\" \"darwin\"}} {{ne .Size 1}} {{lt .Size 5000000}} {{ge .Ratio 0.5}} {{eq .Config.User \"\"}}",
    "{{.Os | printf \"%s!\"}} {{.RepoTags | len}} {{\"x\" | printf \"%s%s\" \"y\"}}",
    "{{(index .Nested 0).Name}} {{(split .Os \"n\")}}",
    # values and misses
    "{{.Config.Cmd}} {{.Config.ExposedPorts}} {{.RepoDigests}} {{.Ratio}} {{.Nested}}",
    "{{.Nope}}",
    "{{.Config.Nope}}",
    "{{if .Nope}}y{{else}}n{{end}}",
    "{{with .Config.User}}set{{else}}empty{{end}} {{with .Config.Labels}}{{.a}}{{end}}",
    "{{if .Off}}a{{else if .Flag}}b{{else}}c{{end}}",
    "{{range .Os}}{{end}}",
    # syntax
    "{{- .Os -}}  \n  {{/* comment */}}  {{- .Size}}",
    "{{.Os",
    "{{end}}",
    "{{if .Flag}}x",
    "{{nosuch .Os}}",
    "{{.Os .Size}}",
    "{{.Os , .Size}}",
    "{{:= .Os}}",
    "{{1 | .Os}}",
]


@pytest.mark.parametrize("template", CASES)
@pytest.mark.parametrize("strict", [True, False], ids=["missingkey-error", "missingkey-default"])
def test_targeted_templates_render_as_in_go(go: Renderer, template: str, strict: bool) -> None:
    assert ours(template, DATA, strict) == go(template, DATA, strict)


# -- generated templates --------------------------------------------------------------

STRINGS = ['"x"', '"linux"', '","', '""', '"a,b"']
FIELDS = [".Id", ".RepoTags", ".Size", ".Os", ".Flag", ".Off", ".Text", ".Csv", ".Config.Labels", ".Config.Env",
          ".Config.Cmd", ".Config.User", ".Nested", ".Empty", ".Nope", ".Config.Labels.a", "."]
# Ranges only over what is no integer: a range over one counts in today's Docker, not in the Go here.
RANGED = [".RepoTags", ".Config.Labels", ".Config.Env", ".Nested", ".Empty", ".Config.Cmd", ".Os", ".Nope",
          '(split .Csv ",")', "(slice .RepoTags 1)"]
FUNCS = {"len": 1, "index": 2, "slice": 2, "eq": 2, "ne": 2, "lt": 2, "not": 1, "and": 2, "or": 2, "print": 2,
         "json": 1, "upper": 1, "lower": 1, "split": 2, "join": 2, "pad": 3, "truncate": 2}


@st.composite
def operands(draw: st.DrawFn, variables: tuple[str, ...], depth: int) -> str:
    kinds = ["field", "string", "number", "bool"] + ["variable"] * bool(variables) + ["call"] * (depth < 2)
    kind = draw(st.sampled_from(kinds))
    if kind == "field":
        return draw(st.sampled_from(FIELDS))
    if kind == "string":
        return draw(st.sampled_from(STRINGS))
    if kind == "number":
        return str(draw(st.integers(-1, 3)))
    if kind == "bool":
        return draw(st.sampled_from(["true", "false"]))
    if kind == "variable":
        return draw(st.sampled_from(variables)) + draw(st.sampled_from(["", "", ".Name", ".a"]))
    return "(" + draw(calls(variables, depth + 1)) + ")"


@st.composite
def calls(draw: st.DrawFn, variables: tuple[str, ...], depth: int) -> str:
    name = draw(st.sampled_from(sorted(FUNCS)))
    args = [draw(operands(variables, depth)) for _ in range(FUNCS[name])]
    if name == "join":  # a list of strings from the data is a []interface {} to Go, a []string in Docker's types
        args[0] = f"(split {args[0]} {draw(st.sampled_from(STRINGS))})"
    return " ".join([name, *args])


# Go's verbs with flags, width and precision. Not zero padding of strings (Go
# changed it after the version here) nor %x of a float (left out: no float here).
FORMATS = ['"%v"', '"%s|%d"', '"%q"', '"%x %X"', '"%T"', '"%+d"', '"%5.2f"', '"%-6v|"', '"%.3s"', '"%t"',
           '"%c %U"', '"%08.3d"', '"%#v"', '"%*d"', '"%e %g"', '"%% %o"', '"% x"', '"%6.1q"']


@st.composite
def printfs(draw: st.DrawFn, variables: tuple[str, ...]) -> str:
    args = [draw(operands(variables, 1)) for _ in range(draw(st.integers(0, 3)))]
    return " ".join(["printf", draw(st.sampled_from(FORMATS)), *args])


@st.composite
def pipelines(draw: st.DrawFn, variables: tuple[str, ...]) -> str:
    head = draw(st.one_of(operands(variables, 0), calls(variables, 0), printfs(variables)))
    if draw(st.booleans()):
        head += " | " + draw(st.sampled_from(["len", "json", "print", "upper", 'printf "%v"', "not"]))
    return head


@st.composite
def bodies(draw: st.DrawFn, variables: tuple[str, ...], in_range: bool, depth: int) -> str:
    out = []
    variables = tuple(variables)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["text", "action", "declare", "assign", "block", "loop"]))
        if kind == "text":
            out.append(draw(st.sampled_from([" ", "|", "\n", "x"])))
        elif kind == "action":
            out.append("{{" + draw(pipelines(variables)) + "}}")
        elif kind == "declare":
            name = f"$v{len(variables)}"
            out.append("{{" + f"{name} := " + draw(pipelines(variables)) + "}}")
            variables = (*variables, name)
        elif kind == "assign" and variables:
            out.append("{{" + draw(st.sampled_from(variables)) + " = " + draw(pipelines(variables)) + "}}")
        elif kind == "loop" and in_range:
            out.append("{{if " + draw(pipelines(variables)) + "}}{{" + draw(st.sampled_from(["break", "continue"])) + "}}{{end}}")
        elif kind == "block" and depth < 3:
            out.append(draw(blocks(variables, in_range, depth + 1)))
    return "".join(out)


@st.composite
def blocks(draw: st.DrawFn, variables: tuple[str, ...], in_range: bool, depth: int) -> str:
    kind = draw(st.sampled_from(["if", "with", "range"]))
    names: tuple[str, ...] = ()
    if kind == "range":
        head = draw(st.sampled_from(RANGED))
        names = draw(st.sampled_from([(), (f"$e{depth}",), (f"$k{depth}", f"$e{depth}")]))
    else:
        head = draw(pipelines(variables))
        names = draw(st.sampled_from([(), (f"$w{depth}",)]))
    decl = ", ".join(names) + " := " if names else ""
    inner = (*variables, *names)
    text = "{{" + f"{kind} {decl}{head}" + "}}" + draw(bodies(inner, in_range or kind == "range", depth))
    if draw(st.booleans()):
        text += "{{else}}" + draw(bodies(inner, in_range, depth))
    return text + "{{end}}"


@settings(max_examples=examples("TEMPLATE_EXAMPLES", 300), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(template=bodies((), False, 0), strict=st.booleans())
def test_generated_templates_render_as_in_go(go: Renderer, template: str, strict: bool) -> None:
    mine, theirs = ours(template, DATA, strict), go(template, DATA, strict)
    if "out" in theirs:
        assert mine == theirs
    else:
        assert mine.get("stage") == theirs["stage"], (mine, theirs)


# -- json ----------------------------------------------------------------------------

# Lone surrogates are no JSON text. \b and \f: Go writes them so from 1.22 on (Docker's
# today, and this encoder's), the Go here as \u0008 and \u000c.
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\b\f"), max_size=8)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                    st.floats(allow_nan=False, allow_infinity=False), texts)
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
                         max_leaves=12)


@settings(max_examples=examples("TEMPLATE_EXAMPLES", 300), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(document=documents)
def test_json_of_generated_documents_is_gos(go: Renderer, document: Any) -> None:
    """{{json .}} as Go's encoder writes it: key order, escapes, and numbers (1e+21 but
    100000000000000000000, 1e-7, a whole float without a point)."""
    assert ours("{{json .D}}", {"D": document}, False) == go("{{json .D}}", {"D": document}, False)


# -- printf ---------------------------------------------------------------------------

directives = st.tuples(
    st.lists(st.sampled_from("-+# 0"), max_size=3, unique=True).map("".join),
    st.one_of(st.just(""), st.integers(0, 12).map(str), st.just("*")),
    st.one_of(st.just(""), st.integers(0, 8).map(lambda n: f".{n}"), st.just("."), st.just(".*")),
    st.sampled_from("vsqdxXobcUtTeEfFgGO%"),
).map(lambda parts: "%" + "".join(parts))
formats = st.lists(st.one_of(directives, st.sampled_from(["|", "a", " "])), min_size=1, max_size=4).map("".join)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text("abc", max_size=2), scalars, max_size=2))


@settings(max_examples=examples("TEMPLATE_EXAMPLES", 300), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(fmt=formats, args=st.lists(values, max_size=3))
def test_printf_of_generated_formats_is_gos(go: Renderer, fmt: str, args: list[Any]) -> None:
    """Any verb, flags, width and precision (also from arguments) over any kind of value."""
    data = {f"A{i}": a for i, a in enumerate(args)}
    template = "{{printf " + json.dumps(fmt) + "".join(f" .A{i}" for i in range(len(args))) + "}}"
    assert ours(template, data, False) == go(template, data, False)
