"""Where a file's data lies on the disk: its data and holes as ``SEEK_DATA`` and
``SEEK_HOLE`` tell, and its extents as the FIEMAP ioctl tells, with whether
each is shared with another file (a reflink)."""
from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Extent:
    logical: int
    physical: int
    length: int
    shared: bool


_FS_IOC_FIEMAP = 0xC020660B
_FIEMAP_FLAG_SYNC = 0x1
_FIEMAP_EXTENT_LAST = 0x1
_FIEMAP_EXTENT_SHARED = 0x2000
_HEAD = struct.Struct("=QQIIII")  # struct fiemap, without its extents
_EXTENT = struct.Struct("=QQQQQI12x")  # struct fiemap_extent
_BATCH = 64


def extents(path: Path) -> list[Extent]:
    """The file's extents by FIEMAP, written out first, neighbours merged."""
    found: list[Extent] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        start, last = 0, False
        while not last:
            buf = bytearray(_HEAD.pack(start, (1 << 64) - 1 - start, _FIEMAP_FLAG_SYNC, 0, _BATCH, 0))
            buf += bytes(_BATCH * _EXTENT.size)
            fcntl.ioctl(fd, _FS_IOC_FIEMAP, buf)
            mapped = _HEAD.unpack_from(buf)[3]
            if mapped == 0:
                break
            for i in range(mapped):
                logical, physical, length, _, _, flags = _EXTENT.unpack_from(buf, _HEAD.size + i * _EXTENT.size)
                _add(found, Extent(logical, physical, length, bool(flags & _FIEMAP_EXTENT_SHARED)))
                start, last = logical + length, bool(flags & _FIEMAP_EXTENT_LAST)
    finally:
        os.close(fd)
    return found


def _add(found: list[Extent], e: Extent) -> None:
    if found:
        p = found[-1]
        if p.logical + p.length == e.logical and p.physical + p.length == e.physical and p.shared == e.shared:
            found[-1] = Extent(p.logical, p.physical, p.length + e.length, p.shared)
            return
    found.append(e)


def data_extents(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of the data, as SEEK_DATA/SEEK_HOLE tell."""
    found = []
    fd = os.open(path, os.O_RDONLY)
    try:
        offset, size = 0, os.fstat(fd).st_size
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: only a hole is left
                    raise
                break
            offset = os.lseek(fd, start, os.SEEK_HOLE)
            found.append((start, offset - start))
    finally:
        os.close(fd)
    return found


def write_sparse(path: Path, size: int, data: Sequence[tuple[int, int]], drop_cache: bool = False) -> None:
    """A new file of size bytes: random data at each (offset, length) of data, holes
    elsewhere; written out, and out of the page cache too if drop_cache."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, size)
        for offset, length in data:
            os.pwrite(fd, os.urandom(length), offset)
        os.fsync(fd)
        if drop_cache:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
