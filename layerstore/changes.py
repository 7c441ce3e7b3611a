"""Dockerfile instructions applied to an image's config: ``import -c`` and ``commit -c``.

Docker takes the instructions that only set configuration (``CMD``,
``ENTRYPOINT``, ``ENV``, ``EXPOSE``, ``LABEL``, ``ONBUILD``, ``STOPSIGNAL``,
``USER``, ``VOLUME``, ``WORKDIR``) and runs them as its builder would, in
order, over the config (moby's ``BuildFromConfig``). The words are the
Dockerfile's: single quotes keep everything, double quotes and a backslash
escape, ``$VAR`` and ``${VAR}`` (with ``:-`` and ``:+``) expand from the
environment built so far in ``ENV``, ``LABEL``, ``EXPOSE``, ``VOLUME``,
``USER``, ``WORKDIR`` and ``STOPSIGNAL``; ``CMD`` and ``ENTRYPOINT`` take a
JSON list (exec form) or a shell command line (run by ``/bin/sh -c``).
"""
from __future__ import annotations

import json
import posixpath
import re
import signal
from typing import Any

from layerstore.errors import CommandError

ALLOWED = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR")
_PORT = re.compile(r"^(\d+)(?:-(\d+))?(?:/(tcp|udp|sctp))?$", re.IGNORECASE)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ChangeError(CommandError):
    """A change that is not one of the allowed instructions, or that does not parse."""


def apply(config: dict[str, Any], changes: list[str]) -> dict[str, Any]:
    """The container config (``config`` of an image config, Docker's ``Config``) after
    changes, each one Dockerfile line; config itself is left as it was."""
    out = {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    cmd_set = False
    for line in changes:
        keyword, _, rest = line.strip().partition(" ")
        if not keyword:
            continue
        instruction, rest = keyword.upper(), rest.strip()
        if instruction not in ALLOWED:
            raise ChangeError(f"change {line!r}: {keyword.lower()} is not a valid change command"
                              f" (one of {', '.join(ALLOWED)})")
        env = _env_map(out)
        if instruction == "CMD":
            out["Cmd"] = _command(rest)
            cmd_set = True
        elif instruction == "ENTRYPOINT":
            out["Entrypoint"] = _command(rest)
            if not cmd_set:  # as the builder does: an ENTRYPOINT drops a CMD that came before this build
                out.pop("Cmd", None)
        elif instruction == "ENV":
            for name, value in _pairs(line, rest, env):
                env[name] = value
                _set_env(out, name, value)
        elif instruction == "LABEL":
            labels = dict(out.get("Labels") or {})
            labels.update(_pairs(line, rest, env))
            out["Labels"] = labels
        elif instruction == "EXPOSE":
            ports = dict(out.get("ExposedPorts") or {})
            for word in _words(line, rest, env):
                ports.update(dict.fromkeys(_ports(line, word), {}))
            out["ExposedPorts"] = ports
        elif instruction == "VOLUME":
            volumes = dict(out.get("Volumes") or {})
            for path in _json_list(rest) or _words(line, rest, env):
                if not path:
                    raise ChangeError(f"change {line!r}: VOLUME specified can not be an empty string")
                volumes[path] = {}
            out["Volumes"] = volumes
        elif instruction == "USER":
            out["User"] = _one(line, rest, env)
        elif instruction == "WORKDIR":
            path = _one(line, rest, env)
            out["WorkingDir"] = posixpath.normpath(posixpath.join(str(out.get("WorkingDir") or "/"), path))
        elif instruction == "STOPSIGNAL":
            out["StopSignal"] = _signal(line, _one(line, rest, env))
        elif instruction == "ONBUILD":
            trigger = rest.split(None, 1)[0].upper() if rest else ""
            if trigger in ("", "ONBUILD", "FROM", "MAINTAINER"):
                raise ChangeError(f"change {line!r}: {trigger or 'an empty'} isn't allowed as an ONBUILD trigger")
            out["OnBuild"] = [*(out.get("OnBuild") or []), rest]
    return out


def _command(rest: str) -> list[str]:
    exec_form = _json_list(rest)
    return exec_form if exec_form is not None else ["/bin/sh", "-c", rest]


def _json_list(rest: str) -> list[str] | None:
    """The exec form, a JSON list of strings; None for anything else (then it is a shell form)."""
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest)
    except ValueError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def _env_map(config: dict[str, Any]) -> dict[str, str]:
    pairs = (entry.partition("=") for entry in config.get("Env") or [])
    return {name: value for name, _, value in pairs}


def _set_env(config: dict[str, Any], name: str, value: str) -> None:
    entries = list(config.get("Env") or [])
    for i, entry in enumerate(entries):
        if entry.partition("=")[0] == name:
            entries[i] = f"{name}={value}"
            break
    else:
        entries.append(f"{name}={value}")
    config["Env"] = entries


def _pairs(line: str, rest: str, env: dict[str, str]) -> list[tuple[str, str]]:
    """``NAME=VALUE ...``, or the old ``NAME VALUE`` (the rest of the line the value)."""
    words = _words(line, rest, env, keep_raw=True)
    if not words:
        raise ChangeError(f"change {line!r}: needs at least one argument")
    if "=" not in words[0][1]:  # the old form
        name, _, value = rest.partition(" ")
        if not value.strip():
            raise ChangeError(f"change {line!r}: needs two arguments, or NAME=VALUE")
        return [(name, _expand_words(line, value.strip(), env))]
    out = []
    for word, raw in words:
        name, eq, value = word.partition("=")
        if not eq or not raw.split("=", 1)[0] or not name:
            raise ChangeError(f"change {line!r}: {raw!r} is not NAME=VALUE")
        out.append((name, value))
    return out


def _one(line: str, rest: str, env: dict[str, str]) -> str:
    value = _expand_words(line, rest, env)
    if not value:
        raise ChangeError(f"change {line!r}: needs an argument")
    return value


def _expand_words(line: str, text: str, env: dict[str, str]) -> str:
    """text as one word: quotes removed and variables expanded, its spaces kept."""
    return "".join(_words(line, text, env, split=False))


def _ports(line: str, word: str) -> list[str]:
    m = _PORT.match(word)
    if m is None:
        raise ChangeError(f"change {line!r}: invalid port {word!r} (PORT[-PORT][/tcp|udp|sctp])")
    first, last, proto = int(m.group(1)), int(m.group(2) or m.group(1)), (m.group(3) or "tcp").lower()
    if not 0 < first <= last <= 65535:
        raise ChangeError(f"change {line!r}: invalid port {word!r}")
    return [f"{port}/{proto}" for port in range(first, last + 1)]


def _signal(line: str, text: str) -> str:
    """Docker keeps the signal as written, once it knows it (a name, with or without SIG, or a number)."""
    name = text.upper()
    if text.isdigit() and 0 < int(text) <= 64:
        return text
    if hasattr(signal.Signals, name if name.startswith("SIG") else "SIG" + name):
        return text
    raise ChangeError(f"change {line!r}: invalid signal {text!r}")


def _words(line: str, text: str, env: dict[str, str], keep_raw: bool = False, split: bool = True) -> Any:
    """Shell words of text as the Dockerfile reads them, with variables expanded: a list of
    words, or of (word, raw text) pairs with keep_raw; one word without split."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        while split and i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        start, word = i, []
        while i < n and not (split and text[i].isspace()):
            c = text[i]
            if c == "'":
                end = text.find("'", i + 1)
                if end < 0:
                    raise ChangeError(f"change {line!r}: unmatched single quote")
                word.append(text[i + 1:end])
                i = end + 1
            elif c == '"':
                i += 1
                while i < n and text[i] != '"':
                    if text[i] == "\\" and i + 1 < n and text[i + 1] in '"\\$`':
                        word.append(text[i + 1])
                        i += 2
                    elif text[i] == "$":
                        value, i = _variable(line, text, i, env)
                        word.append(value)
                    else:
                        word.append(text[i])
                        i += 1
                if i >= n:
                    raise ChangeError(f"change {line!r}: unmatched double quote")
                i += 1
            elif c == "\\" and i + 1 < n:
                word.append(text[i + 1])
                i += 2
            elif c == "$":
                value, i = _variable(line, text, i, env)
                word.append(value)
            else:
                word.append(c)
                i += 1
        out.append(("".join(word), text[start:i]))
    return out if keep_raw else [w for w, _ in out]


def _variable(line: str, text: str, i: int, env: dict[str, str]) -> tuple[str, int]:
    """$NAME or ${NAME}, ${NAME:-default}, ${NAME:+alternative} at text[i]: (value, index after)."""
    if text.startswith("${", i):
        end = text.find("}", i + 2)
        if end < 0:
            raise ChangeError(f"change {line!r}: missing '}}'")
        inner = text[i + 2:end]
        name, op, arg = (inner.partition(":-") if ":-" in inner else inner.partition(":+"))
        if not _NAME.fullmatch(name):
            raise ChangeError(f"change {line!r}: bad substitution ${{{inner}}}")
        value = env.get(name, "")
        if op == ":-":
            value = value or arg
        elif op == ":+":
            value = arg if value else ""
        return value, end + 1
    m = _NAME.match(text, i + 1)
    if m is None:
        return "$", i + 1
    return env.get(m.group(0), ""), m.end()
