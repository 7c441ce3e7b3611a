"""Pull output as the Docker CLI shows it (``pkg/jsonmessage``), on stdout.

Two kinds of line: a status (``latest: Pulling from library/busybox``,
``Digest: ...``) and a layer's progress (``a3ed95caeb02: Pull complete``).
On a terminal each layer keeps one line that is rewritten in place (cursor up,
clear line, cursor down) and ``Downloading``/``Extracting`` carry a progress
bar; elsewhere every layer update that is not a byte count is its own line and
the byte counts are left out, exactly as ``docker pull | cat`` prints it.
"""
from __future__ import annotations

import os
import shutil
import threading
from typing import Protocol, TextIO

from layerstore.formatting import human_size4


class PullOutput(Protocol):
    def status(self, ident: str, text: str) -> None: ...
    def layer(self, ident: str, action: str, current: int = 0, total: int = 0) -> None: ...


class Quiet:
    """``-q``: nothing but the name at the end (printed by the command)."""

    def status(self, ident: str, text: str) -> None:
        pass

    def layer(self, ident: str, action: str, current: int = 0, total: int = 0) -> None:
        pass


class Display:
    """The JSON message stream display of the Docker CLI; safe to call from download threads."""

    def __init__(self, out: TextIO, terminal: bool | None = None) -> None:
        self.out = out
        self.terminal = out.isatty() if terminal is None else terminal
        self._lines: dict[str, int] = {}  # layer id -> its line, counted from the first
        self._lock = threading.Lock()

    def status(self, ident: str, text: str) -> None:
        with self._lock:
            self._lines = {}  # a line that is not progress ends the block of layer lines
            self.out.write(f"{ident}: {text}\n" if ident else f"{text}\n")
            self.out.flush()

    def layer(self, ident: str, action: str, current: int = 0, total: int = 0) -> None:
        bar = progress_bar(current, total, self._width()) if self.terminal else ""
        with self._lock:
            if not self.terminal:
                if current > 0 or total > 0:
                    return  # "disable progressbar in non-terminal"
                self.out.write(f"{ident}: {action}\n")
                self.out.flush()
                return
            line = self._lines.get(ident)
            if line is None:
                line = self._lines[ident] = len(self._lines)
                self.out.write("\n")
            up = len(self._lines) - line
            self.out.write(f"\x1b[{up}A\x1b[2K\r{ident}: {action} {bar}\r\x1b[{up}B")
            self.out.flush()

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.out.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return shutil.get_terminal_size((200, 24)).columns


def progress_bar(current: int, total: int, width: int = 200) -> str:
    """``JSONProgress.String()``: ``[=====>     ]  1.2MB/3.4MB`` (the bar only on wide terminals)."""
    if current <= 0 and total <= 0:
        return ""
    if total <= 0:
        return f"{human_size4(current):>8}"
    percentage = min(int(current / total * 100) // 2, 50)
    bar = ""
    if width > 110:
        bar = "[" + "=" * percentage + ">" + " " * max(50 - percentage, 0) + "] "
    numbers = f"{human_size4(current):>8}/{human_size4(total)}"
    if current > total:
        numbers = f"{human_size4(current):>8}"
    return bar + numbers
