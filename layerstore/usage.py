"""The command line's usage errors in the Docker CLI's words and exit codes.

argparse says ``unrecognized arguments: --bogus`` and exits 2. Docker's CLI
(cobra and pflag) says ``unknown flag: --bogus`` and exits 125 for a flag
it cannot parse, and exits 1 with ``'docker tag' requires 2 arguments`` for
a wrong number of arguments (podman exits 125 for both). Here each is one
``Error:`` line and a ``See 'layerstore CMD --help'.`` line, as older Docker
CLIs and podman print them.

Two of pflag's rules come along, as Docker users type them: a boolean flag
takes ``--quiet=false`` (any of Go's ``strconv.ParseBool`` spellings), and
a flag is never abbreviated (``--form`` is not ``--format``).
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from layerstore.gofmt import go_quote

# what the Docker CLI exits with: a flag it cannot parse, a wrong count of arguments or an unknown command
FLAG_ERROR = 125
ARGUMENT_ERROR = 1

# strconv.ParseBool's spellings
GO_BOOLS = {
    "1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
    "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False,
}

_SWITCHES = (argparse._StoreTrueAction, argparse._StoreFalseAction)
_ABOUT_ARGUMENT = re.compile(r"argument (?P<names>\S+): (?P<problem>.*)", re.S)
_INVALID_CHOICE = re.compile(r"invalid choice: (?P<value>.*?) \(choose from (?P<choices>.*)\)", re.S)
_INVALID_VALUE = re.compile(r"invalid (?P<type>\S+) value: (?P<value>.*)", re.S)
_IGNORED_VALUE = re.compile(r"ignored explicit argument (?P<value>.*)", re.S)


class UsageError(Exception):
    """A command line that does not parse: the message, the command to ask for help, the exit code."""

    def __init__(self, message: str, command: str, code: int) -> None:
        super().__init__(message)
        self.command = command
        self.code = code

    def report(self) -> str:
        return f"Error: {self}\nSee '{self.command} --help'.\n"


def arity(command: str, least: int, most: int | None) -> str:
    """What cobra's argument checks say: ``'layerstore tag' requires 2 arguments``."""
    def arguments(n: int) -> str:
        return "argument" if n == 1 else "arguments"

    if most is None:
        return f"'{command}' requires at least {least} {arguments(least)}"
    if least == most:
        return f"'{command}' requires {least} {arguments(least)}" if least else f"'{command}' accepts no arguments"
    if not least:
        return f"'{command}' requires at most {most} {arguments(most)}"
    return f"'{command}' requires at least {least} and at most {most} {arguments(most)}"


def _flag_name(option_strings: Sequence[str]) -> str:
    """pflag's name for a flag in its messages: ``-q, --quiet`` or ``--quiet``."""
    long = next((o for o in option_strings if o.startswith("--")), None)
    short = next((o for o in option_strings if not o.startswith("--")), None)
    if long and short:
        return f"{short}, {long}"
    return long or short or ""


def _unquoted(python_repr: str) -> str:
    """The value argparse quoted with repr()."""
    try:
        return str(ast.literal_eval(python_repr))
    except (ValueError, SyntaxError):
        return python_repr


def _value(python_repr: str) -> str:
    """A value as pflag quotes it: Go's %q."""
    return go_quote(_unquoted(python_repr))


class Parser(argparse.ArgumentParser):
    """argparse with Docker's usage errors, boolean flags and no abbreviations."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    # -- parsing --------------------------------------------------------------

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            where: Parser = getattr(parsed, "_usage_parser", self)
            where.unrecognized(extras)
        return parsed

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> tuple[Any, list[str]]:  # type: ignore[override]
        words = list(sys.argv[1:] if args is None else args)
        self._words = words
        parsed, extras = super().parse_known_args(self._switches_with_values(words), namespace)
        if extras and not hasattr(parsed, "_usage_parser"):  # the innermost command's parser left them
            parsed._usage_parser = self
        return parsed, extras

    def _switches_with_values(self, words: list[str]) -> list[str]:
        """``--quiet=false`` as pflag reads it: the flag's own option when true, a hidden one that
        stores the opposite when false; any other value is a flag error."""
        out: list[str] = []
        for i, word in enumerate(words):
            if word == "--":
                return out + words[i:]
            name, eq, value = word.partition("=")
            action = self._option_string_actions.get(name) if eq and word.startswith("-") else None
            if not isinstance(action, _SWITCHES):
                out.append(word)
                continue
            truth = GO_BOOLS.get(value)
            if truth is None:
                self.fail(f"invalid argument {go_quote(value)} for {go_quote(_flag_name(action.option_strings))} flag: "
                          f"strconv.ParseBool: parsing {go_quote(value)}: invalid syntax", FLAG_ERROR)
            if truth:
                out.append(name)
                continue
            negated = f"{name}=false"
            if negated not in self._option_string_actions:
                self.add_argument(negated, dest=action.dest, action="store_const", const=not action.const,
                                  help=argparse.SUPPRESS)
            out.append(negated)
        return out

    # -- errors ---------------------------------------------------------------

    def fail(self, message: str, code: int) -> NoReturn:
        raise UsageError(message, self.prog, code)

    def _operands(self) -> list[argparse.Action]:
        return [a for a in self._actions if not a.option_strings]

    def _arity(self) -> tuple[int, int | None]:
        """The least and most operands this command takes (None: no most), from its positionals."""
        least, most = 0, 0
        unbounded = False
        for action in self._operands():
            if isinstance(action, argparse._SubParsersAction):
                return 1, None
            n = action.nargs
            least += 1 if n in (None, "+") else n if isinstance(n, int) else 0
            most += n if isinstance(n, int) else 1
            unbounded = unbounded or n in ("*", "+")
        return least, None if unbounded else most

    def unrecognized(self, extras: list[str]) -> NoReturn:
        """What this command's parser could not place: the first unknown flag, else too many arguments."""
        for word in extras:
            if len(word) > 1 and word.startswith("-"):
                if word.startswith("--"):
                    self.fail(f"unknown flag: {word.partition('=')[0]}", FLAG_ERROR)
                self.fail(f"unknown shorthand flag: '{word[1]}' in {word}", FLAG_ERROR)
        self.fail(arity(self.prog, *self._arity()), ARGUMENT_ERROR)

    def error(self, message: str) -> NoReturn:
        """argparse's own messages, said as pflag and cobra say them."""
        if message.startswith("the following arguments are required"):
            if any(isinstance(a, argparse._SubParsersAction) for a in self._operands()):
                unknown = [w for w in getattr(self, "_words", []) if len(w) > 1 and w.startswith("-")
                           and w.partition("=")[0] not in self._option_string_actions]
                if unknown:  # `layerstore --bogus`: the flag is the mistake, not the missing command
                    self.unrecognized(unknown)
                self.print_help(sys.stderr)  # `docker image`: the group's help, and no error
                self.exit(0)
            self.fail(arity(self.prog, *self._arity()), ARGUMENT_ERROR)
        about = _ABOUT_ARGUMENT.fullmatch(message)
        if about is None:
            self.fail(message, FLAG_ERROR)
        names, problem = about["names"].split("/"), about["problem"]
        if not names[0].startswith("-"):  # a positional: only a command name has choices
            choice = _INVALID_CHOICE.fullmatch(problem)
            if choice is None:
                self.fail(message, ARGUMENT_ERROR)
            command = _unquoted(choice["value"])
            if " " not in self.prog:
                self.fail(f"'{command}' is not a {self.prog} command", ARGUMENT_ERROR)
            self.fail(f"unknown command: {self.prog} {command}", ARGUMENT_ERROR)
        flag = _flag_name(names)
        if problem.startswith("expected"):
            long = next((n for n in names if n.startswith("--")), names[0])
            self.fail(f"flag needs an argument: {long}", FLAG_ERROR)
        if choice := _INVALID_CHOICE.fullmatch(problem):
            self.fail(f"invalid argument {_value(choice['value'])} for {go_quote(flag)} flag: "
                      f"expected one of {choice['choices']}", FLAG_ERROR)
        if invalid := _INVALID_VALUE.fullmatch(problem):
            value = _value(invalid["value"])
            reason = (f"strconv.ParseInt: parsing {value}: invalid syntax" if invalid["type"] == "int"
                      else f"invalid {invalid['type']} value")
            self.fail(f"invalid argument {value} for {go_quote(flag)} flag: {reason}", FLAG_ERROR)
        if ignored := _IGNORED_VALUE.fullmatch(problem):  # -qz: z is no flag of this command
            rest = _unquoted(ignored["value"])
            short = next((n for n in names if not n.startswith("--")), names[0])
            self.fail(f"unknown shorthand flag: '{rest[:1]}' in {short}{rest}", FLAG_ERROR)
        self.fail(f"{flag}: {problem}", FLAG_ERROR)
