"""Space held back so that a full disk never locks the store.

A download or unpack that fills the disk leaves no room for the few pages
SQLite must write to record anything, so without a reserve neither the end
of that pull (its lease) nor the ``rmi`` or ``prune`` that would free space
could commit. The store keeps ``ROOT/reserve``, a small allocated file; work
that frees space or closes a record gives it up when the disk is full and
tries once more, and the next command that finds room makes it again.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

SIZE = 2 << 20  # far more than a removal's metadata needs in the WAL
T = TypeVar("T")


class Reserve:
    def __init__(self, path: Path) -> None:
        self.path = path

    def ensure(self) -> None:
        """Make the reserve if it is missing and there is room (quietly not, otherwise)."""
        if self.path.exists():
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, SIZE)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)

    def release(self) -> bool:
        try:
            self.path.unlink()
            return True
        except FileNotFoundError:
            return False

    def with_room(self, work: Callable[[], T]) -> T:
        """Run work; if the disk is full, give up the reserve and run it once more."""
        try:
            return work()
        except OSError as exc:
            if exc.errno != errno.ENOSPC or not self.release():
                raise
        return work()
