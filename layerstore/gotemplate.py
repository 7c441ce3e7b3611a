"""Go's ``text/template``, as the Docker CLI runs ``--format``: its functions
(``json``, ``upper``, ``lower``, ``title``, ``split``, ``join``, ``pad``,
``truncate``), Go's built-in ones, variables, ``if``/``range``/``with``/``else``,
``break`` and ``continue``; values print with ``layerstore.gofmt``.

The tests render templates with Go's own package too and compare.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from layerstore.errors import CommandError
from layerstore.gofmt import (
    NO_VALUE,
    Byte,
    Fields,
    Int,
    StringMap,
    Strings,
    Struct,
    go_json,
    go_quote,
    sprint,
    sprint_args,
    sprintf,
    sprintln,
    type_name,
)


class TemplateError(CommandError):
    """``--format`` did not parse or could not be executed on an item."""

    def __init__(self, message: str) -> None:
        super().__init__(f"template parsing error: template: {message}")


def truth(value: Any) -> bool:
    """Go template truth: false, 0, nil and empty things are false."""
    if value is NO_VALUE or value is None:
        return False
    if isinstance(value, Fields):
        return True
    return bool(value)


class _Exec(Exception):
    def __init__(self, pos: int, text: str, message: str) -> None:
        super().__init__(message)
        self.pos = pos
        self.text = text
        self.message = message


@dataclass
class _Node:
    pos: int
    text: str


@dataclass
class _Field(_Node):
    base: str  # "." (dot), or a variable: "$" (the data), "$name"
    chain: list[str]


@dataclass
class _Literal(_Node):
    value: Any


@dataclass
class _Ident(_Node):
    name: str


@dataclass
class _Pipe(_Node):
    cmds: list[list[_Node]]
    decl: list[str] = field(default_factory=list)  # {{$x := ...}}, {{range $i, $e := ...}}
    assign: bool = False  # {{$x = ...}}: sets the nearest $x instead


@dataclass
class _Paren(_Node):
    pipe: _Pipe
    chain: list[str]


@dataclass
class _Text:
    text: str


@dataclass
class _Action:
    pipe: _Pipe


@dataclass
class _Block:
    kind: str  # if, range, with
    pipe: _Pipe
    body: list[Any]
    orelse: list[Any]


@dataclass
class _Loop:
    kind: str  # break, continue


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\\n]|\\.)*")
    | (?P<raw>`[^`]*`)
    | (?P<num>[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
    | (?P<field>(?:\$[A-Za-z0-9_]*)?(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.|\$[A-Za-z0-9_]*)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<punct>:=|[|()=,])
    | (?P<bad>\S)
    )""",
    re.VERBOSE,
)
_KEYWORDS = ("if", "range", "with", "else", "end", "define", "template", "block", "break", "continue")
_VARIABLE = re.compile(r"\$[A-Za-z0-9_]*")


# the Docker CLI's header functions: in a table's header row these give their argument back
_HEADER_FUNCS = ("json", "split", "join", "title", "lower", "upper", "truncate", "println", "pad")


class Template:
    """A parsed ``--format`` string; ``execute`` renders one item."""

    def __init__(self, source: str, *, missing_key_error: bool = False) -> None:
        self.source = source
        self.missing_key_error = missing_key_error
        self._vars = ["$"]  # while parsing: the variables in scope, as Go's parser checks them
        self._range_depth = 0
        self.nodes = self._parse(source)

    # parse ---------------------------------------------------------------------
    def _where(self, pos: int) -> str:
        line = self.source.count("\n", 0, pos) + 1
        return f":{line}"

    def _parse_error(self, pos: int, message: str) -> TemplateError:
        return TemplateError(f"{self._where(pos)}: {message}")

    def _parse(self, src: str) -> list[Any]:
        items: list[tuple[str, Any, int]] = []  # ("text", str, pos) | ("action", str, pos)
        i = 0
        trim_next = False
        while i <= len(src):
            start = src.find("{{", i)
            if start < 0:
                text = src[i:]
                if trim_next:
                    text = text.lstrip(" \t\r\n")
                if text:
                    items.append(("text", text, i))
                break
            text = src[i:start]
            if trim_next:
                text = text.lstrip(" \t\r\n")
            inner_start = start + 2
            if src.startswith("- ", inner_start) or src.startswith("-\t", inner_start) or src.startswith("-\n", inner_start):
                text = text.rstrip(" \t\r\n")
                inner_start += 1
            if text:
                items.append(("text", text, i))
            end = src.find("}}", inner_start)
            if end < 0:
                raise self._parse_error(start, "unclosed action")
            inner_end = end
            trim_next = False
            if end - 1 >= inner_start and src[end - 1] == "-" and end - 2 >= inner_start and src[end - 2] in " \t\n":
                inner_end = end - 1
                trim_next = True
            items.append(("action", src[inner_start:inner_end], inner_start))
            i = end + 2
        body, _, _ = self._parse_list(items, 0, top=True)
        return body

    def _parse_list(self, items: list[tuple[str, Any, int]], k: int, top: bool = False) -> tuple[list[Any], int, str]:
        out: list[Any] = []
        while k < len(items):
            kind, text, pos = items[k]
            k += 1
            if kind == "text":
                out.append(_Text(text))
                continue
            stripped = text.strip()
            if stripped.startswith("/*"):
                if not stripped.endswith("*/"):
                    raise self._parse_error(pos, "unclosed comment")
                continue
            word = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", text)
            keyword = word.group(1) if word and word.group(1) in _KEYWORDS else None
            if keyword in ("if", "range", "with"):
                assert word is not None
                block, k = self._control(keyword, text[word.end():], pos + word.end(), items, k, pos)
                out.append(block)
                continue
            if keyword in ("break", "continue"):
                assert word is not None
                rest = self._tokens(text[word.end():], pos + word.end())
                if rest:
                    raise self._parse_error(rest[0][2], f"unexpected {go_quote(rest[0][1])} in {{{{{keyword}}}}}")
                if not self._range_depth:
                    raise self._parse_error(pos, f"{{{{{keyword}}}}} outside {{{{range}}}}")
                out.append(_Loop(keyword))
                continue
            if keyword == "end":
                if top:
                    raise self._parse_error(pos, "unexpected {{end}}")
                return out, k, "end"
            if keyword == "else":
                if top:
                    raise self._parse_error(pos, "unexpected {{else}}")
                rest = text.strip()[len("else") :].strip()
                if rest:
                    if rest.split()[0] not in ("if", "with"):
                        raise self._parse_error(pos, f"unexpected {go_quote(rest.split()[0])} in else")
                    return out, k, "else " + rest
                return out, k, "else"
            if keyword is not None:
                raise self._parse_error(pos, f"{{{{{keyword}}}}} is not supported")
            out.append(_Action(self._parse_pipe(text, pos)))
        if not top:
            raise self._parse_error(len(self.source), "unexpected EOF")
        return out, k, ""

    def _control(self, kind: str, text: str, base: int, items: list[tuple[str, Any, int]], k: int, pos: int) -> tuple[_Block, int]:
        """if, range or with up to its {{end}}: the variables it declares end there too."""
        mark = len(self._vars)
        try:
            pipe = self._parse_pipe(text, base, kind)
            self._range_depth += kind == "range"
            try:
                body, k, stop = self._parse_list(items, k)
            finally:
                self._range_depth -= kind == "range"
            orelse: list[Any] = []
            if stop == "else":
                orelse, k, stop = self._parse_list(items, k)
            elif stop.startswith("else "):  # {{else if ...}}: one {{end}} closes the chain
                sub = stop[len("else ") :]
                m = re.match(r"\s*([A-Za-z_]+)", sub)
                assert m is not None
                block, k = self._control(m.group(1), sub[m.end():], pos, items, k, pos)
                orelse, stop = [block], "end"
            if stop != "end":
                raise self._parse_error(pos, f"unexpected EOF in {kind}")
            return _Block(kind, pipe, body, orelse), k
        finally:
            del self._vars[mark:]

    def _tokens(self, text: str, base: int) -> list[tuple[str, str, int]]:
        toks: list[tuple[str, str, int]] = []
        i = 0
        while i < len(text):
            m = _TOKEN.match(text, i)
            if m is None or m.end() == i:
                break
            kind = m.lastgroup or ""
            value = m.group(kind)
            start = base + m.start(kind)
            if kind == "bad":
                raise self._parse_error(start, f"unexpected {go_quote(value)} in command")
            toks.append((kind, value, start))
            i = m.end()
        return toks

    def _parse_pipe(self, text: str, base: int, context: str = "command") -> _Pipe:
        toks = self._tokens(text, base)
        decl, assign, k = self._declarations(toks, context)
        pipe, k = self._pipe_from(toks, k, base, text, context)
        if k != len(toks):
            raise self._parse_error(toks[k][2], f"unexpected {go_quote(toks[k][1])} in operand")
        pipe.decl, pipe.assign = decl, assign
        self._vars.extend(decl)  # in scope after the pipeline, not in it
        return pipe

    def _declarations(self, toks: list[tuple[str, str, int]], context: str) -> tuple[list[str], bool, int]:
        """``$x :=`` or ``$x =`` before a pipeline; two variables (``$i, $e :=``) only in a range."""
        decl: list[str] = []
        k = 0
        while k + 1 < len(toks) and toks[k][0] == "field" and _VARIABLE.fullmatch(toks[k][1]):
            after = toks[k + 1][1] if toks[k + 1][0] == "punct" else ""
            if after in (":=", "="):
                return [*decl, toks[k][1]], after == "=", k + 2
            if after != ",":
                break
            decl.append(toks[k][1])
            k += 2
            if context != "range" or len(decl) >= 2:
                raise self._parse_error(toks[k - 1][2], f"too many declarations in {context}")
            if k < len(toks) and not (toks[k][0] == "field" and _VARIABLE.fullmatch(toks[k][1])):
                raise self._parse_error(toks[k][2], "range can only initialize variables")
        if decl:  # "$i," and no second variable with its ":="
            raise self._parse_error(toks[min(k, len(toks) - 1)][2], "range can only initialize variables")
        return [], False, 0

    def _pipe_from(self, toks: list[tuple[str, str, int]], k: int, base: int, text: str, context: str = "command") -> tuple[_Pipe, int]:
        cmds: list[list[_Node]] = []
        cmd: list[_Node] = []
        while k < len(toks):
            kind, value, pos = toks[k]
            if kind == "punct" and value == ")":
                break
            k += 1
            if kind == "punct" and value == "|":
                if not cmd:
                    raise self._parse_error(pos, "missing command")
                cmds.append(cmd)
                cmd = []
            elif kind == "punct" and value == "(":
                inner, k = self._pipe_from(toks, k, base, text, "parenthesized pipeline")
                if k >= len(toks) or toks[k][1] != ")":
                    raise self._parse_error(pos, "unclosed left paren")
                k += 1
                chain: list[str] = []
                if k < len(toks) and toks[k][0] == "field" and toks[k][1].startswith(".") and toks[k][2] == toks[k - 1][2] + 1:
                    chain = toks[k][1][1:].split(".")
                    k += 1
                cmd.append(_Paren(pos, "(" + inner.text + ")", inner, chain))
            elif kind == "punct":  # := = , out of place
                raise self._parse_error(pos, f"unexpected {go_quote(value)} in {'operand' if cmd else 'command'}")
            elif kind == "str":
                cmd.append(_Literal(pos, value, _unquote(value)))
            elif kind == "raw":
                cmd.append(_Literal(pos, value, value[1:-1]))
            elif kind == "num":
                num: Any = float(value) if any(c in value for c in ".eE") else Int(value)  # a Go int constant
                cmd.append(_Literal(pos, value, num))
            elif kind == "field":
                if value.startswith("$"):
                    name, _, rest = value.partition(".")
                    if name not in self._vars:
                        raise self._parse_error(pos, f'undefined variable "{name}"')
                    cmd.append(_Field(pos + len(name) if rest else pos, value, name, rest.split(".") if rest else []))
                else:
                    chain = [p for p in value.split(".") if p]
                    # Go places a chain (.A.B) at its second field
                    cmd.append(_Field(pos + len(chain[0]) + 1 if len(chain) > 1 else pos, value, ".", chain))
            elif kind == "ident":
                if value in ("true", "false"):
                    cmd.append(_Literal(pos, value, value == "true"))
                elif value == "nil":
                    cmd.append(_Literal(pos, value, None))
                elif value in _FUNCS:
                    cmd.append(_Ident(pos, value, value))
                else:
                    raise self._parse_error(pos, f'function "{value}" not defined')
        if cmd:
            cmds.append(cmd)
        elif cmds:
            raise self._parse_error(base + len(text), "missing command")
        if not cmds:
            raise self._parse_error(base, f"missing value for {context}")
        for stage, c in enumerate(cmds[1:], 2):  # a later stage gets an argument: a literal or dot cannot
            if isinstance(c[0], _Literal) or (isinstance(c[0], _Field) and c[0].text == "."):
                raise self._parse_error(c[0].pos, f"non executable command in pipeline stage {stage}")
        first = cmds[0][0].pos
        return _Pipe(first, " | ".join(" ".join(n.text for n in c) for c in cmds), cmds), k

    # execute --------------------------------------------------------------------
    # ``scope``: the variables, [name, value] pairs, innermost last, "$" (the data) first; a control
    # structure drops what it pushed at its {{end}}, a range at each iteration's end.
    def execute(self, data: Any, *, header: bool = False) -> str:
        out: list[str] = []
        try:
            self._run(self.nodes, data, [["$", data]], header, out)
        except _Exec as exc:
            line = self.source.count("\n", 0, exc.pos) + 1
            col = exc.pos - (self.source.rfind("\n", 0, exc.pos) + 1)
            raise TemplateError(f':{line}:{col}: executing "" at <{exc.text}>: {exc.message}') from None
        return "".join(out)

    def _run(self, nodes: list[Any], dot: Any, scope: list[list[Any]], header: bool, out: list[str]) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                out.append(node.text)
            elif isinstance(node, _Action):
                value = self._pipe(node.pipe, dot, scope, header)
                if not node.pipe.decl:
                    out.append(sprint(value))
            elif isinstance(node, _Loop):
                raise _Break() if node.kind == "break" else _Continue()
            elif isinstance(node, _Block):
                mark = len(scope)
                try:
                    value = self._pipe(node.pipe, dot, scope, header)
                    if node.kind == "range":
                        self._range(node, value, dot, scope, header, out)
                    elif truth(value):
                        self._run(node.body, value if node.kind == "with" else dot, scope, header, out)
                    else:
                        self._run(node.orelse, dot, scope, header, out)
                finally:
                    del scope[mark:]

    def _range(self, node: _Block, value: Any, dot: Any, scope: list[list[Any]], header: bool, out: list[str]) -> None:
        items: Iterable[tuple[Any, Any]]
        if isinstance(value, dict):
            items = [(k, value[k]) for k in sorted(value, key=str)]
        elif isinstance(value, (list, tuple)):
            items = ((Int(i), v) for i, v in enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            if len(node.pipe.decl) > 1:
                raise _Exec(node.pipe.pos, node.pipe.text, f"can't use {value} to iterate over more than one variable")
            items = ((Int(i), Int(i)) for i in range(value))
        elif value is None or value is NO_VALUE:
            items = []
        elif header:
            items = [(0, value)]
        else:
            raise _Exec(node.pipe.pos, node.pipe.text, f"range can't iterate over {sprint(value)}")
        mark = len(scope)
        ran = False
        try:
            for key, item in items:
                ran = True
                if node.pipe.decl:  # the last variable takes the element, a first one the key
                    scope[-1][1] = item
                    if len(node.pipe.decl) > 1:
                        scope[-2][1] = key
                try:
                    self._run(node.body, item, scope, header, out)
                except _Continue:
                    pass
                finally:
                    del scope[mark:]
            if not ran:
                self._run(node.orelse, dot, scope, header, out)
        except _Break:  # Go's range takes a {{break}} of its {{else}} too (of an outer range)
            pass

    def _pipe(self, pipe: _Pipe, dot: Any, scope: list[list[Any]], header: bool) -> Any:
        value: Any = NO_VALUE
        piped = False
        for cmd in pipe.cmds:
            value = self._command(cmd, dot, scope, header, value if piped else NO_VALUE, piped)
            piped = True
        for name in pipe.decl:
            if pipe.assign:
                _variable(scope, name, pipe)[1] = value
            else:
                scope.append([name, value])
        return value

    def _command(self, cmd: list[_Node], dot: Any, scope: list[list[Any]], header: bool, final: Any, has_final: bool) -> Any:
        head = cmd[0]
        if isinstance(head, _Ident) and head.name in ("and", "or") and not header:
            return self._and_or(head, cmd[1:], dot, scope, final, has_final)
        if isinstance(head, _Ident):
            if header:
                args = [self._operand(n, dot, scope, header) for n in cmd[1:]]
            else:
                args = self._arguments(head, cmd[1:], dot, scope, final, has_final)
            if has_final and header:
                args.append(final)
            return self._call(head, args, header, " ".join(n.text for n in cmd))
        if len(cmd) > 1 or has_final:
            if isinstance(head, _Field) and head.chain:
                raise _Exec(head.pos, head.text, f"{head.chain[-1]} is not a method but has arguments")
            raise _Exec(head.pos, head.text, f"can't give argument to non-function {head.text}")
        return self._operand(head, dot, scope, header)

    def _and_or(self, head: _Ident, nodes: list[_Node], dot: Any, scope: list[list[Any]], final: Any, has_final: bool) -> Any:
        """and, or: the first argument that decides, and the later ones not evaluated (Go 1.18)."""
        if not nodes and not has_final:
            raise _Exec(head.pos, head.text, f"wrong number of args for {head.name}: want at least 1 got 0")
        value: Any = NO_VALUE
        for node in nodes:
            value = self._operand(node, dot, scope, False)
            if truth(value) == (head.name == "or"):
                return value
        return final if has_final else value

    def _arguments(self, head: _Ident, nodes: list[_Node], dot: Any, scope: list[list[Any]], final: Any, has_final: bool) -> list[Any]:
        """The arguments of a call, checked against the function's Go signature as Go checks them."""
        fixed, variadic = _SIGNATURES[head.name]
        given = len(nodes) + has_final
        if variadic is None and given != len(fixed):
            raise _Exec(head.pos, head.text, f"wrong number of args for {head.name}: want {len(fixed)} got {given}")
        if given < len(fixed):
            raise _Exec(head.pos, head.text, f"wrong number of args for {head.name}: want at least {len(fixed)} got {len(nodes)}")
        types = [fixed[i] if i < len(fixed) else str(variadic) for i in range(given)]
        args = []
        for node, typ in zip(nodes, types):
            if isinstance(node, _Literal) and typ not in ("any", "value"):
                args.append(_literal_argument(node, typ))
            else:
                args.append(_typed(self._operand(node, dot, scope, False), typ, node))
        if has_final:
            args.append(_typed(final, types[-1], head))
        return args

    def _operand(self, node: _Node, dot: Any, scope: list[list[Any]], header: bool) -> Any:
        if isinstance(node, _Literal):
            return node.value
        if isinstance(node, _Field):
            value = dot if node.base == "." else _variable(scope, node.base, node)[1]
            return self._chain(node, value, node.chain)
        if isinstance(node, _Paren):
            return self._chain(node, self._pipe(node.pipe, dot, scope, header), node.chain)
        if isinstance(node, _Ident):
            return self._call(node, [], header, node.text)
        raise _Exec(node.pos, node.text, "bad operand")

    def _chain(self, node: _Node, value: Any, chain: list[str]) -> Any:
        for name in chain:
            if isinstance(value, Fields):
                if name not in value.fields:
                    raise _Exec(node.pos, node.text, f"can't evaluate field {name} in type {value.kind}")
                value = value.fields[name]
            elif isinstance(value, dict):
                if name in value:
                    value = value[name]
                elif isinstance(value, Struct) and name in value.omitted:
                    value = value.omitted[name]
                elif self.missing_key_error:
                    raise _Exec(node.pos, node.text, f'map has no entry for key "{name}"')
                else:
                    value = NO_VALUE
            elif value is NO_VALUE:  # below a missing key
                if self.missing_key_error:
                    raise _Exec(node.pos, node.text, f'nil data; no entry for key "{name}"')
            elif value is None:
                raise _Exec(node.pos, node.text, f"nil pointer evaluating interface {{}}.{name}")
            else:
                raise _Exec(node.pos, node.text, f"can't evaluate field {name} in type {type_name(value)}")
        return value

    def _call(self, ident: _Ident, args: list[Any], header: bool, command: str) -> Any:
        """command: the call as written, which Go's errors show."""
        name = ident.name
        if header and name in _HEADER_FUNCS:
            return sprint(args[0]) if args else ""
        fn = _FUNCS[name]
        try:
            return fn(*args)
        except _Exec:
            raise
        except (TypeError, ValueError, IndexError, KeyError, ArithmeticError) as exc:
            raise _Exec(ident.pos, command, f"error calling {name}: {exc}") from None


# Go's parameter types of each function: the fixed ones, then the variadic one's (None: no more).
# "value": a reflect.Value, which the builtins take as it is; "any": an interface{}, where nothing is nil.
_SIGNATURES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "json": (("any",), None), "split": (("string", "string"), None), "join": (("[]string", "string"), None),
    "title": (("string",), None), "lower": (("string",), None), "upper": (("string",), None),
    "pad": (("string", "int", "int"), None), "truncate": (("string", "int"), None),
    "print": ((), "any"), "println": ((), "any"), "printf": (("string",), "any"),
    "len": (("value",), None), "not": (("value",), None), "index": (("value",), "value"),
    "slice": (("value",), "value"), "and": (("value",), "value"), "or": (("value",), "value"),
    "eq": (("value",), "value"), "ne": (("value", "value"), None), "lt": (("value", "value"), None),
    "le": (("value", "value"), None), "gt": (("value", "value"), None), "ge": (("value", "value"), None),
}


def _fits(value: Any, typ: str) -> bool:
    if typ == "string":
        return isinstance(value, str)
    if typ == "int":
        return isinstance(value, Int)
    if typ == "[]string":  # a list of strings stands for the []string fields of Docker's types
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    return True  # any, value


def _literal_argument(node: _Literal, typ: str) -> Any:
    """A constant where Go wants a string, an int or a []string (``evalArg``)."""
    if node.value is None:
        if typ == "[]string":
            return []
        raise _Exec(node.pos, node.text, f"cannot assign nil to {typ}")
    if typ == "int" and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if _fits(node.value, typ):
        return node.value
    if typ == "[]string":
        raise _Exec(node.pos, node.text, f"can't handle {node.text} for arg of type []string")
    raise _Exec(node.pos, node.text, f"expected {'integer' if typ == 'int' else typ}; found {node.text}")


def _typed(value: Any, typ: str, node: _Node) -> Any:
    """A computed value where Go wants typ (``validateType``): nothing (a missing key, a
    nil) makes an empty []string, and an error for a string or an int."""
    if typ == "value":
        return value
    if value is NO_VALUE or value is None:
        if typ in ("[]string", "any"):
            return [] if typ == "[]string" else None  # Go passes a nil, which prints <nil>
        raise _Exec(node.pos, node.text, f"invalid value; expected {typ}")
    if not _fits(value, typ):
        raise _Exec(node.pos, node.text, f"wrong type for value; expected {typ}; got {type_name(value)}")
    return value


def _variable(scope: list[list[Any]], name: str, node: _Node) -> list[Any]:
    for pair in reversed(scope):
        if pair[0] == name:
            return pair
    raise _Exec(node.pos, node.text, f"undefined variable: {name}")


def _unquote(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        value = text[1:-1].encode().decode("unicode_escape")
    return str(value)


def _go_title(text: str) -> str:
    return re.sub(r"(?<![\w'’])(\w)", lambda m: m.group(1).upper(), text)


def _len(v: Any) -> int:
    if isinstance(v, str):
        return Int(len(v.encode()))
    if isinstance(v, (list, tuple, dict)):
        return Int(len(v))
    raise TypeError(f"len of type {type_name(v)}")


def _index(v: Any, *keys: Any) -> Any:
    """Go's index: a map by a string key, a list or a string (a byte) by an integer."""
    if _absent(v):
        raise ValueError("index of untyped nil")
    for key in keys:
        if isinstance(v, (dict, Fields)):
            if not isinstance(key, str):
                raise TypeError(f"value has type {type_name(key)}; should be string")
            if isinstance(v, Fields):
                v = v.fields.get(key, NO_VALUE)
            else:
                v = v.get(key, "" if isinstance(v, StringMap) else NO_VALUE)
        elif isinstance(v, (list, tuple, str)):
            if _absent(key):
                raise TypeError("cannot index slice/array with nil")
            if not isinstance(key, int) or isinstance(key, bool):
                raise TypeError(f"cannot index slice/array with type {type_name(key)}")
            if not 0 <= key < len(v.encode() if isinstance(v, str) else v):
                raise ValueError(f"index out of range: {key}")
            v = Byte(v.encode()[key]) if isinstance(v, str) else v[key]
        else:
            raise TypeError(f"can't index item of type {type_name(v)}")
    return v


_BASIC_KINDS = {"bool": "bool", "int": "int", "int64": "int", "uint8": "int", "float64": "float", "string": "string"}


def _basic_kind(v: Any) -> str:
    """Go's basicKind: what eq and lt compare (integers of any size with each other);
    "" for anything else (a list, a map, nothing)."""
    return _BASIC_KINDS.get(type_name(v), "")


def _absent(v: Any) -> bool:
    return v is None or v is NO_VALUE


def _eq(a: Any, *rest: Any) -> bool:
    """Go's eq: values of one basic kind compare; other kinds are an error, but for nothing."""
    if not rest:
        raise ValueError("missing argument for comparison")
    k1 = _basic_kind(a)
    for b in rest:
        k2 = _basic_kind(b)
        if k1 != k2:
            if not _absent(a) and not _absent(b):
                raise TypeError("incompatible types for comparison")
        elif k1:
            if a == b:
                return True
        elif _absent(a) or _absent(b):  # lists and maps compare only with nothing
            if _absent(a) and _absent(b):
                return True
        else:
            raise TypeError(f"non-comparable type {sprint(b)}: {type_name(b)}")
    return False


def _lt(a: Any, b: Any) -> bool:
    k1, k2 = _basic_kind(a), _basic_kind(b)
    if not k1 or not k2:
        raise TypeError("invalid type for comparison")
    if k1 != k2:
        raise TypeError("incompatible types for comparison")
    if k1 == "bool":
        raise TypeError("invalid type for comparison")
    return bool(a < b)


def _le(a: Any, b: Any) -> bool:
    return _lt(a, b) or _eq(a, b)


def _and(*args: Any) -> Any:
    for a in args:
        if not truth(a):
            return a
    return args[-1]


def _or(*args: Any) -> Any:
    for a in args:
        if truth(a):
            return a
    return args[-1]


def _pad(s: Any, before: int, after: int) -> str:
    text = sprint(s)
    if text and min(before, after) < 0:
        raise ValueError("strings: negative Repeat count")
    return " " * before + text + " " * after if text else ""  # Docker's padWithSpace leaves "" alone


def _slice(item: Any, *indexes: Any) -> Any:
    """Go's ``slice``: ``slice x 1 2`` is ``x[1:2]``; a string by bytes."""
    if item is None or item is NO_VALUE:
        raise ValueError("slice of untyped nil")
    if len(indexes) > 3:
        raise ValueError(f"too many slice indexes: {len(indexes)}")
    if isinstance(item, str):
        if len(indexes) == 3:
            raise ValueError("cannot 3-index slice a string")
        seq: Any = item.encode()
    elif isinstance(item, (list, tuple)):
        seq = list(item)
    else:
        raise TypeError(f"can't slice item of type {type_name(item)}")
    idx = [0, len(seq), len(seq)]
    for i, index in enumerate(indexes):
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"cannot index slice/array with type {type_name(index)}")
        if not 0 <= index <= len(seq):
            raise ValueError(f"index out of range: {index}")
        idx[i] = index
    for a, b in ((0, 1), (1, 2)):
        if idx[a] > idx[b]:
            raise ValueError(f"invalid slice index: {idx[a]} > {idx[b]}")
    part = seq[idx[0]:idx[1]]
    return part.decode(errors="replace") if isinstance(part, bytes) else part


def _truncate(s: Any, length: int) -> str:
    """Docker's truncateWithLength, by characters where it cuts bytes (and could split one)."""
    text = sprint(s)
    if length < 0:
        raise ValueError(f"runtime error: slice bounds out of range [:{length}]")
    return text if len(text) < length else text[:length]


_FUNCS: dict[str, Callable[..., Any]] = {
    "json": lambda v: go_json(v),
    "upper": str.upper,  # the arguments are checked against Go's signatures (_SIGNATURES)
    "lower": str.lower,
    "title": _go_title,
    "split": lambda s, sep: Strings(s.split(sep) if sep else list(s)),
    "join": lambda items, sep: sep.join(items),
    "pad": _pad,
    "truncate": _truncate,
    "println": sprintln,
    "print": sprint_args,
    "printf": sprintf,
    "len": _len,
    "index": _index,
    "slice": _slice,
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "lt": _lt,
    "le": _le,
    "gt": lambda a, b: not _le(a, b),
    "ge": lambda a, b: not _lt(a, b),
    "not": lambda a: not truth(a),
    "and": _and,
    "or": _or,
}
