"""JSON text as Go's ``encoding/json`` reshapes it: ``Compact`` and ``Indent``.

Both work on the text, never on parsed values: string literals, numbers and
key order stay byte for byte what the registry sent, which is what Docker
prints for ``manifest inspect`` (a manifest's digest covers its bytes, so a
re-serialised document would be a different one). Like Go, ``indent`` keeps
trailing whitespace of the source and writes empty ``{}`` and ``[]`` on one
line; ``compact`` (what ``json.Marshal`` applies to a ``MarshalJSON`` result)
escapes ``<``, ``>``, ``&``, U+2028 and U+2029 inside strings.
"""
from __future__ import annotations

from layerstore.errors import CorruptArchive

_SPACE = " \t\r\n"
_HTML = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _string_end(text: str, start: int) -> int:
    """Index just past the string literal that opens at ``start``."""
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    raise CorruptArchive("JSON document", "unterminated string")


def compact(text: str, escape_html: bool = True) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == '"':
            end = _string_end(text, i)
            literal = text[i:end]
            if escape_html:
                literal = "".join(_HTML.get(ch, ch) for ch in literal)
            out.append(literal)
            i = end
            continue
        if c not in _SPACE:
            out.append(c)
        i += 1
    return "".join(out)


def indent(text: str, prefix: str = "", unit: str = "\t") -> str:
    """``json.Indent(dst, src, prefix, unit)``."""
    body = text.lstrip(_SPACE)
    trailing = body[len(body.rstrip(_SPACE)):]
    body = body.rstrip(_SPACE)
    out: list[str] = []
    depth = 0
    need_indent = False  # an opening bracket waits to see whether its container is empty
    i = 0

    def newline() -> None:
        out.append("\n" + prefix + unit * depth)

    while i < len(body):
        c = body[i]
        if c in _SPACE:
            i += 1
            continue
        if need_indent and c not in "]}":
            need_indent = False
            depth += 1
            newline()
        if c == '"':
            end = _string_end(body, i)
            out.append(body[i:end])
            i = end
            continue
        if c in "{[":
            need_indent = True
            out.append(c)
        elif c == ",":
            out.append(c)
            newline()
        elif c == ":":
            out.append(": ")
        elif c in "}]":
            if need_indent:
                need_indent = False  # an empty container stays "{}" / "[]"
            else:
                depth -= 1
                newline()
            out.append(c)
        else:
            out.append(c)
        i += 1
    return "".join(out) + trailing
