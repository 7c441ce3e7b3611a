"""Go's text for the values a template sees: ``fmt``'s (``{{.}}`` prints with
``%v``, and ``printf`` takes Go's verbs, flags, width and precision) and
``encoding/json``'s (``{{json .}}``, ``inspect``).

The values are JSON-shaped, standing for the Go values of Docker's types: a
``str`` is a string, a ``bool`` a bool, an ``int`` an int64 (Docker's
numbers) and an ``Int`` an int (what ``len`` gives), a ``float`` a float64, a
list a slice (``Strings`` a []string), a dict a map (printed in key order), a
``Fields`` a struct, ``None`` a nil and ``NO_VALUE`` what a missing map key
gives (``<no value>``). A verb that does not suit a value prints as Go prints
it: ``%!d(string=linux)``.
"""
from __future__ import annotations

import json
import math
import re
import sys
from decimal import Decimal
from typing import Any


class _NoValue:
    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE: Any = _NoValue()


class Int(int):
    """A Go int (what ``len`` gives), as against the int64 of the data's numbers:
    a function that takes an int takes only this."""


class Byte(int):
    """A Go byte (uint8): what ``index`` of a string gives."""


class Strings(list):  # type: ignore[type-arg]
    """A Go []string (what ``split`` gives), as against the []interface {} of the data's lists."""


class Fields:
    """A struct: ``kind`` names its type, ``fields`` holds its values by name."""

    kind: str
    fields: dict[str, Any]

    def json_fields(self) -> dict[str, Any]:
        """What ``{{json .}}`` shows: the fields, unless a type's MarshalJSON shows others."""
        return self.fields


class GoStruct(Fields):
    """A struct that JSON shows field by field, in their order (a Docker formatter
    context's MarshalJSON marshals a map of its fields instead: sorted keys)."""

    def __init__(self, kind: str, fields: dict[str, Any]) -> None:
        self.kind = kind
        self.fields = fields


def type_name(value: Any) -> str:
    """``%T``."""
    if isinstance(value, Fields):
        return value.kind
    if value is None or value is NO_VALUE:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Int):
        return "int"
    if isinstance(value, Byte):
        return "uint8"
    if isinstance(value, int):
        return "int64"  # Docker's integer fields
    if isinstance(value, float):
        return "float64"
    if isinstance(value, Strings):
        return "[]string"
    if isinstance(value, (list, tuple)):
        return "[]interface {}"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return "interface {}"


def sprint(value: Any) -> str:
    """``fmt.Sprint`` of one value: ``%v``."""
    if value is NO_VALUE:
        return "<no value>"
    return _format(value, _Spec("v"))


def sprint_args(*args: Any) -> str:
    """``fmt.Sprint``: a space between two operands when neither is a string."""
    out = []
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(sprint(a))
    return "".join(out)


def sprintln(*args: Any) -> str:
    return " ".join(sprint(a) for a in args) + "\n"


class _Spec:
    """One verb with its flags, width and precision."""

    __slots__ = ("verb", "minus", "plus", "sharp", "space", "zero", "width", "prec", "plus_v", "sharp_v")

    def __init__(self, verb: str, flags: str = "", width: int | None = None, prec: int | None = None) -> None:
        self.verb = verb
        self.minus, self.plus, self.sharp = "-" in flags, "+" in flags, "#" in flags
        self.space, self.zero = " " in flags, "0" in flags and "-" not in flags
        self.width = width
        self.prec = prec
        # %+v names a struct's fields, %#v writes Go syntax; neither flag then means what it does elsewhere
        self.plus_v, self.sharp_v = verb == "v" and self.plus, verb == "v" and self.sharp
        if verb == "v":
            self.plus = self.sharp = False

    def as_verb(self, verb: str) -> _Spec:
        """These flags with another verb, as Go prints a wrong verb's value (with %v) or a type (%T)."""
        spec = _Spec(verb, width=self.width, prec=self.prec)
        spec.minus, spec.plus, spec.sharp, spec.space, spec.zero = self.minus, self.plus, self.sharp, self.space, self.zero
        return spec


_DIRECTIVE = re.compile(r"%([-+# 0]*)(\*|\d+)?(?:\.(\*|\d*))?(.)?", re.DOTALL)


def sprintf(fmt: str, *args: Any) -> str:
    """``fmt.Sprintf``, without argument indexes (``%[1]d``)."""
    out: list[str] = []
    pos = 0
    argn = 0
    for m in _DIRECTIVE.finditer(fmt):
        out.append(fmt[pos:m.start()])
        pos = m.end()
        flags, width_text, prec_text, verb = m.group(1), m.group(2), m.group(3), m.group(4)
        width: int | None = None
        prec: int | None = None
        if width_text == "*":
            width = _star(args, argn)
            if width is None:
                out.append("%!(BADWIDTH)")
            elif width < 0:
                flags, width = flags + "-", -width
            argn += 1
        elif width_text:
            width = _parsenum(width_text)
        if prec_text == "*":
            prec = _star(args, argn)
            if prec is None or prec < 0:
                prec = None
                out.append("%!(BADPREC)")
            argn += 1
        elif prec_text is not None:
            prec = _parsenum(prec_text or "0")
        if (width_text not in (None, "*") and width is None) or (prec_text not in (None, "*") and prec is None):
            out.append("%!(NOVERB)")  # a number too long: Go gives up on the rest of the format
            pos = len(fmt)
            break
        if verb is None:
            out.append("%!(NOVERB)")
            continue
        if verb == "%":
            out.append("%")
            continue
        if argn >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[argn]
        argn += 1
        out.append(_format(arg, _Spec(verb, flags, width, prec)))
    out.append(fmt[pos:])
    if argn < len(args):
        extra = ", ".join(f"{type_name(a)}={sprint(a)}" if a is not None else "<nil>" for a in args[argn:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _parsenum(text: str) -> int | None:
    """A width or precision written out; None where Go's parsenum overflows (past 1e6, then a digit)."""
    num = 0
    for digit in text:
        if num > 1_000_000:
            return None
        num = num * 10 + int(digit)
    return num


def _star(args: tuple[Any, ...], n: int) -> int | None:
    """A width or precision given as an argument: an integer within a million, as Go takes."""
    if n < len(args) and isinstance(args[n], int) and not isinstance(args[n], bool) and abs(args[n]) <= 1_000_000:
        return int(args[n])
    return None


def _bad(value: Any, spec: _Spec) -> str:
    if value is None or value is NO_VALUE:
        return f"%!{spec.verb}(<nil>)"
    return f"%!{spec.verb}({type_name(value)}={_format(value, spec.as_verb('v'))})"


def _pad(text: str, spec: _Spec, zeros: bool = True) -> str:
    """To the width: on the right with -, else on the left, with zeros for the 0 flag
    (strings too, as the Go here does; numbers place their zeros themselves)."""
    if spec.width is None or len(text) >= spec.width:
        return text
    fill = spec.width - len(text)
    if spec.minus:
        return text + " " * fill
    return ("0" if zeros and spec.zero else " ") * fill + text


def _format(value: Any, spec: _Spec, nested: bool = False) -> str:
    """nested: an element of a list, map or struct, where a nil prints <nil> whatever the verb."""
    verb = spec.verb
    if verb == "T":
        if value is None or value is NO_VALUE:
            return _pad("<nil>", spec)  # padded, never cut
        return _string(type_name(value), spec.as_verb("s"))
    if spec.sharp_v and not isinstance(value, (int, float)):  # numbers and bools: as %v, with the flags
        return _go_syntax(value, spec, top=True)
    if value is None or value is NO_VALUE:
        if nested:
            return "<nil>"  # as Go writes a nil element: unpadded, whatever the verb
        return _pad("<nil>", spec) if verb == "v" else _bad(value, spec)
    if isinstance(value, bool):
        return _pad("true" if value else "false", spec) if verb in "tv" else _bad(value, spec)
    if isinstance(value, int):
        return _integer(value, spec)
    if isinstance(value, float):
        return _float(value, spec)
    if isinstance(value, str):
        return _string(value, spec)
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_format(v, spec, True) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{_format(k, spec, True)}:{_format(value[k], spec, True)}" for k in sorted(value, key=str))
        return "map[" + " ".join(items) + "]"
    if isinstance(value, Fields):
        names = sorted(value.fields)
        if spec.plus_v:
            return "{" + " ".join(f"{n}:{_format(value.fields[n], spec, True)}" for n in names) + "}"
        return "{" + " ".join(_format(value.fields[n], spec, True) for n in names) + "}"
    return _pad(str(value), spec)


def _go_syntax(value: Any, spec: _Spec, top: bool = False) -> str:
    """``%#v``: the value as Go source would write it; each string, number and bool in it
    padded to the width (and a string cut to the precision), as Go prints them."""
    if value is None or value is NO_VALUE:
        return _pad("<nil>", spec) if top else "interface {}(nil)"
    if isinstance(value, bool):
        return _pad("true" if value else "false", spec)
    if isinstance(value, (int, float)):
        return _format(value, spec.as_verb("v"))
    if isinstance(value, str):
        return _pad(go_quote(value if spec.prec is None else value[:spec.prec]), spec)
    if isinstance(value, (list, tuple)):
        return type_name(value) + "{" + ", ".join(_go_syntax(v, spec) for v in value) + "}"
    if isinstance(value, dict):
        items = (f"{_go_syntax(k, spec)}:{_go_syntax(value[k], spec)}" for k in sorted(value, key=str))
        return "map[string]interface {}{" + ", ".join(items) + "}"
    if isinstance(value, Fields):
        return value.kind + "{" + ", ".join(f"{n}:{_go_syntax(value.fields[n], spec)}" for n in sorted(value.fields)) + "}"
    return _pad(str(value), spec)


# -- numbers -------------------------------------------------------------------------


def _integer(value: int, spec: _Spec) -> str:
    verb = spec.verb
    if verb == "c":
        return _pad(_rune(value), spec)
    if verb == "q":
        return _pad("'" + _escape(_rune(value), "'", ascii_only=spec.plus) + "'", spec)
    if verb == "U":
        count = max(4, spec.prec or 0)
        text = f"U+{value & 0xFFFFFFFFFFFFFFFF:0{count}X}"  # a negative one as its uint64
        if spec.sharp and 0 <= value <= 0x10FFFF and chr(value).isprintable():
            text += f" '{chr(value)}'"
        return _pad(text, spec, zeros=False)
    bases = {"v": 10, "d": 10, "b": 2, "o": 8, "O": 8, "x": 16, "X": 16}
    if verb not in bases:
        return _bad(value, spec)
    base = bases[verb]
    if spec.prec == 0 and value == 0:  # nothing but the padding, no sign nor prefix
        return _pad("", spec, zeros=False)
    digits = _digits(abs(value), base, verb == "X")
    prec = spec.prec
    if prec is None and spec.zero and spec.width is not None:  # zeros after the sign, up to the width
        prec = spec.width - (value < 0 or spec.plus or spec.space)  # a prefix comes on top, as in Go
    if prec is not None:
        digits = digits.rjust(prec, "0")
    if spec.sharp:
        if base == 8 and not digits.startswith("0"):
            digits = "0" + digits
        elif base == 16:
            digits = ("0X" if verb == "X" else "0x") + digits
        elif base == 2:
            digits = "0b" + digits
    if verb == "O":
        digits = "0o" + digits
    sign = "-" if value < 0 else "+" if spec.plus else " " if spec.space else ""
    return _pad(sign + digits, spec, zeros=False)


def _digits(n: int, base: int, upper: bool) -> str:
    return {2: f"{n:b}", 8: f"{n:o}", 10: f"{n:d}", 16: f"{n:X}" if upper else f"{n:x}"}[base]


def _shortest(value: float) -> tuple[str, int]:
    """The fewest digits that read back as value, and where the point goes (strconv's)."""
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    assert isinstance(exponent, int)
    point = len(digits) + exponent
    return text, point if text != "0" else 1


def _float(value: float, spec: _Spec) -> str:
    verb = spec.verb
    if verb not in "veEfFgGxXb":
        return _bad(value, spec)
    sign = "-" if value < 0 or (value == 0 and str(value).startswith("-")) else "+" if spec.plus else " " if spec.space else ""
    magnitude = abs(value)
    if magnitude != magnitude or magnitude == float("inf"):
        body = "NaN" if magnitude != magnitude else "Inf"
        if body == "Inf" and not sign:
            sign = "+" if spec.plus else ""
        return _pad((sign if body == "Inf" or spec.plus else "") + body, spec, zeros=False)
    if verb in "xX":
        body = _hex_float(magnitude, spec.prec)
        if spec.sharp:  # a point, and zeros until the x and the digits make prec (6)
            mantissa, p, tail = body.partition("p")
            count = 1 + len(mantissa[2:].replace(".", ""))
            target = (6 if spec.prec is None else spec.prec) if verb == "x" else 0  # Go's counts %x alone, not %X
            mantissa += ("" if "." in mantissa else ".") + "0" * max(0, target - count)
            body = mantissa + p + tail
        body = body.upper() if verb == "X" else body
    elif verb == "b":
        body = _binary_float(magnitude)
    elif verb in "vgG" and spec.prec is None:
        digits, point = _shortest(magnitude)
        exp = point - 1
        if exp < -4 or exp >= 6:  # strconv's %g at its shortest decides with precision 6
            body = _exponent(digits, exp, "E" if verb == "G" else "e")
        else:
            body = _fixed(digits, point)
        if spec.sharp:  # a point, and zeros up to six significant digits
            mantissa, e, tail = body.partition("E" if verb == "G" else "e")
            significant = len(mantissa.replace(".", "").lstrip("0")) or 1
            body = mantissa + ("" if "." in mantissa else ".") + "0" * max(0, 6 - significant) + e + tail
    elif verb in "vgG":
        body = format(magnitude, f"{'#' if spec.sharp else ''}.{spec.prec}{'G' if verb == 'G' else 'g'}")
    else:
        body = format(magnitude, f"{'#' if spec.sharp else ''}.{6 if spec.prec is None else spec.prec}{verb}")
    text = sign + body
    if spec.zero and spec.width is not None and not spec.minus and len(text) < spec.width:
        return sign + body.rjust(spec.width - len(sign), "0")
    return _pad(text, spec, zeros=False)


def _hex_float(x: float, prec: int | None) -> str:
    """strconv's %x of a float: 0x1.8p+01, the leading digit 1, the fewest digits or prec of them."""
    if x == 0:
        return "0x0" + ("." + "0" * prec if prec else "") + "p+00"
    m, e = math.frexp(x)  # x = m * 2**e, 0.5 <= m < 1
    mant, exp = int(m * (1 << 53)), e - 1  # 1.fff... * 2**exp, 52 bits after the point
    if prec is not None and prec < 13:
        shift = 4 * (13 - prec)
        q, r = divmod(mant, 1 << shift)
        if r > 1 << (shift - 1) or (r == 1 << (shift - 1) and q & 1):  # to even
            q += 1
        mant = q << shift
        if mant >> 53:  # rounded up to 2.0
            mant >>= 1
            exp += 1
    frac = f"{mant & ((1 << 52) - 1):013x}"
    frac = frac.rstrip("0") if prec is None else (frac + "0" * max(0, prec - 13))[:prec]
    return f"0x{mant >> 52}" + ("." + frac if frac else "") + f"p{'-' if exp < 0 else '+'}{abs(exp):02d}"


def _binary_float(x: float) -> str:
    """strconv's %b of a float: the integer mantissa and the power of two, 4503599627370496p-52."""
    if x < sys.float_info.min:  # zero or subnormal: no implicit leading bit
        mant, exp = int(math.ldexp(x, 1074)), -1074
    else:
        m, e = math.frexp(x)
        mant, exp = int(m * (1 << 53)), e - 53
    return f"{mant}p{'+' if exp >= 0 else '-'}{abs(exp)}"


def json_float(value: float) -> str:
    """encoding/json's float64: the shortest digits, an exponent only below 1e-6 or from
    1e21 on (written e-7, not e-07), a whole number without a point."""
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"json: unsupported value: {sprint(value)}")  # as Go refuses them
    digits, point = _shortest(abs(value))
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value and not 1e-6 <= abs(value) < 1e21:
        return sign + re.sub(r"e-0(\d)$", r"e-\1", _exponent(digits, point - 1, "e"))
    return sign + _fixed(digits, point)


def _exponent(digits: str, exp: int, e: str) -> str:
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{mantissa}{e}{'-' if exp < 0 else '+'}{abs(exp):02d}"


def _fixed(digits: str, point: int) -> str:
    if point <= 0:
        return "0." + "0" * -point + digits
    if point >= len(digits):
        return digits + "0" * (point - len(digits))
    return digits[:point] + "." + digits[point:]


# -- strings -------------------------------------------------------------------------


def _string(value: str, spec: _Spec) -> str:
    verb = spec.verb
    if spec.prec is not None and verb in "vsq":
        value = value[:spec.prec]
    if verb in "vs":
        return _pad(value, spec)
    if verb == "q":
        if spec.sharp and _can_backquote(value):
            return _pad(f"`{value}`", spec)
        return _pad(go_quote(value, ascii_only=spec.plus), spec)
    if verb in "xX":
        data = value.encode(errors="surrogateescape")
        if spec.prec is not None:
            data = data[:spec.prec]
        if not data:
            return _pad("", spec)
        cells = [f"{b:02X}" if verb == "X" else f"{b:02x}" for b in data]
        prefix = ("0X" if verb == "X" else "0x") if spec.sharp else ""
        if spec.space:
            return _pad(" ".join(prefix + c for c in cells), spec)
        return _pad(prefix + "".join(cells), spec)
    return _bad(value, spec)


_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v", "\\": "\\\\"}


def _escape(ch: str, quote: str, ascii_only: bool) -> str:
    if ch == quote:
        return "\\" + ch
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte
        return f"\\x{code - 0xDC00:02x}"
    if ch.isprintable() and not (ascii_only and code >= 0x80):
        return ch
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _can_backquote(text: str) -> bool:
    """strconv.CanBackquote: no control character but tab, no backquote, DEL or BOM."""
    for ch in text:
        code = ord(ch)
        if code >= 0x80:
            if ch == "\ufeff" or 0xDC80 <= code <= 0xDCFF:  # a BOM, an undecodable byte
                return False
        elif (code < 0x20 and ch != "\t") or ch in "`\x7f":
            return False
    return True


def go_quote(text: str, ascii_only: bool = False) -> str:
    """strconv.Quote (QuoteToASCII with ``ascii_only``): Go's %q of a string."""
    return '"' + "".join(_escape(c, '"', ascii_only) for c in text) + '"'


def _rune(code: int) -> str:
    """The character of a code point; what is none (a surrogate, out of range) is U+FFFD, as in Go."""
    return chr(code) if 0 <= code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else "\ufffd"


# -- JSON as encoding/json writes it ---------------------------------------------------


def go_json(value: Any, *, escape_html: bool = False, indent: int | None = None) -> str:
    """JSON as Go's encoder writes it; Docker's ``json`` template function turns HTML escaping off."""
    text = _encode(_plain(value), " " * indent if indent else "", 0)
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    if escape_html:  # the daemon's API encoder escapes them; inspect passes its bytes through
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text


def _encode(value: Any, indent: str, level: int) -> str:
    """json.dumps's layout (MarshalIndent's with an indent), with Go's numbers."""
    if isinstance(value, float):
        return json_float(value)
    if isinstance(value, (list, tuple)) and value:
        items = [_encode(v, indent, level + 1) for v in value]
    elif isinstance(value, dict) and value:
        colon = ": " if indent else ":"
        items = [json.dumps(str(k), ensure_ascii=False) + colon + _encode(v, indent, level + 1) for k, v in value.items()]
    else:
        return json.dumps(value, ensure_ascii=False)
    start, end = ("[", "]") if isinstance(value, (list, tuple)) else ("{", "}")
    if not indent:
        return start + ",".join(items) + end
    inner = "\n" + indent * (level + 1)
    return start + inner + ("," + inner).join(items) + "\n" + indent * level + end


class Struct(dict):  # type: ignore[type-arg]
    """An object whose keys keep their order in JSON, as a Go struct's fields do (maps are sorted).
    ``omitted``: the struct's other fields, which JSON leaves out when empty (``omitempty``)
    but a template still reads, as their zero values."""

    omitted: dict[str, Any] = {}


class StringMap(dict):  # type: ignore[type-arg]
    """A Go ``map[string]string`` (labels): ``index`` of a missing key gives "", where a
    map of interfaces gives <no value>."""


class NilMap(StringMap):
    """A nil map: prints as map[], holds nothing, and is null in JSON."""


class NilSlice(list):  # type: ignore[type-arg]
    """A nil slice: prints as [], ranges over nothing, and is null in JSON."""


def _plain(value: Any) -> Any:
    if isinstance(value, (NilMap, NilSlice)):
        return None
    if isinstance(value, GoStruct):
        return {k: _plain(v) for k, v in value.json_fields().items()}
    if isinstance(value, Fields):
        shown = value.json_fields()
        return {k: _plain(shown[k]) for k in sorted(shown)}  # a Go map: sorted keys
    if isinstance(value, Struct):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, dict):
        return {str(k): _plain(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is NO_VALUE:
        return None
    return value
