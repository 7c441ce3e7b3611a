"""Data and holes through the mount (``SEEK_DATA``, ``SEEK_HOLE``), against kernel overlayfs.

What a copy relies on: reading the data ranges that ``SEEK_DATA`` and
``SEEK_HOLE`` give, and taking zeros everywhere else, gives the file's bytes.
The kernel sends FUSE's LSEEK without writing back the file's dirty pages
first, so the layer file lacks what was written and is not yet written back;
the driver answered from it, and a file still open for writing showed holes,
or nothing at all, where its new data was. The driver now leaves the question
to the kernel, which answers from its own size: all data up to the end, no
holes (as on fuse-overlayfs), where overlayfs shows the layer file's holes.
"""
from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from difftree import kernel_overlay_available, pair_over
from extents import write_sparse

pytestmark = [
    pytest.mark.usefixtures("transport"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (kernel overlayfs)"),
    pytest.mark.skipif(os.geteuid() == 0 and not kernel_overlay_available(), reason="kernel overlayfs not available"),
]

MIB = 1 << 20
DATA = [(64 * 1024, 4096), (MIB + 8192, 100_000)]  # of the lower file: a hole at its start, between and at its end
SIZE = 2 * MIB


def sparse_copy(fd: int) -> bytes:
    """The file's bytes as a copy that skips holes makes them: its data ranges read, zeros elsewhere."""
    size = os.fstat(fd).st_size
    out, pos = bytearray(size), 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # none after pos
                raise
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        out[start:end] = os.pread(fd, end - start, start)
        pos = end
    return bytes(out)


def write_into_holes(fd: int) -> None:
    os.pwrite(fd, b"in the first hole", 1000)
    os.pwrite(fd, b"past the end", SIZE + 5000)


def write_through_a_mapping(fd: int) -> None:
    with mmap.mmap(fd, SIZE) as m:
        m[2000:2011] = b"via the map"  # a hole of the lower file, the page dirty in the kernel


WRITES: dict[str, tuple[str, int, Callable[[int], None]]] = {
    "a lower file left as it is": ("sparse", os.O_RDONLY, lambda fd: None),
    "a lower file written into its holes and past its end, still open": ("sparse", os.O_RDWR, write_into_holes),
    "a lower file written through a shared mapping": ("sparse", os.O_RDWR, write_through_a_mapping),
    "a new file written past a hole, still open": ("new", os.O_RDWR | os.O_CREAT, write_into_holes),
}


@pytest.mark.parametrize("how", list(WRITES))
def test_a_copy_that_skips_holes_gets_every_byte_as_on_overlayfs(tmp_path: Path, how: str) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    write_sparse(lower / "sparse", SIZE, DATA)
    name, flags, write = WRITES[how]
    with pair_over(tmp_path, [lower]) as p:
        first_holes = []
        for mnt in (p.kernel.mnt, p.driver.mnt):
            fd = os.open(mnt / name, flags, 0o644)
            try:
                write(fd)
                other = os.open(mnt / name, os.O_RDONLY)  # another process's descriptor, as cp's
                try:
                    content = os.pread(other, 4 * SIZE, 0)
                    assert sparse_copy(other) == content, mnt
                    assert sparse_copy(fd) == content, mnt
                    first_holes.append(os.lseek(other, 0, os.SEEK_HOLE))
                finally:
                    os.close(other)
            finally:
                os.close(fd)
        kernel, driver = first_holes
        if how == "a lower file left as it is":
            # The difference: overlayfs shows the lower file's first hole (at its start).
            assert (kernel, driver) == (0, SIZE)
        p.check()
