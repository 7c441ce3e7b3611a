"""Inode numbers reported through the mount.

Layers on one filesystem already have unique inode numbers, so they are
reported as they are (what overlayfs does on a "samefs" stack). Layers on
several filesystems get the filesystem's index in the top bits, like
overlayfs's ``xino``. A copied-up entry reports its origin's number, recorded
in an xattr at copy-up, so st_ino survives copy-up and remounts.
"""
from __future__ import annotations

import threading

_INO_BITS = 56


class InodeMap:
    def __init__(self, devs: list[int]) -> None:
        self._index: dict[int, int] = {}
        for dev in devs:
            self._index.setdefault(dev, len(self._index))
        self._single = len(self._index) == 1
        self._lock = threading.Lock()

    def __call__(self, dev: int, ino: int) -> int:
        if self._single and dev in self._index:
            return ino
        index = self._index.get(dev)
        if index is None:
            with self._lock:
                index = self._index.setdefault(dev, len(self._index))
                self._single = False
        return (index << _INO_BITS) | (ino & ((1 << _INO_BITS) - 1))
