"""A full upper layer, against kernel overlayfs: a writer is told ENOSPC.

Over overlayfs the write that does not fit fails. With the driver a write
lands in the kernel's page cache (the writeback cache), and only its
write-back reaches the upper layer; a full one fails that WRITE, and the
kernel keeps the error for the file's close or fsync and drops the data. It
went on taking writes all the same: a program writing until ENOSPC never
stopped (a file of 846 GB on a 30 MiB upper after ten minutes). The driver
now refuses the file's next writes while the upper layer stays full, so the
writer stops some megabytes late, and its close reports the loss.
"""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounts import Stack, fuse_mount, kernel_mount
from storecheck import small_fs
from waiting import wait_for

pytestmark = [
    pytest.mark.usefixtures("transport"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (tmpfs, kernel overlayfs)"),
]

MIB = 1 << 20
SPACE = 16 * MIB
LIMIT = 512  # MiB a writer may try: far beyond the space and what the kernel holds dirty


@contextlib.contextmanager
def on_small_tmpfs(base: Path, name: str) -> Iterator[Stack]:
    """A stack whose upper and work directories are on a tmpfs of SPACE bytes."""
    with small_fs(base / f"{name}-fs", SPACE) as fs:
        lower = base / f"{name}-lower"
        lower.mkdir()
        (lower / "kept").write_bytes(b"lower data\n")
        stack = Stack((lower,), fs / "upper", fs / "work", base / f"{name}-mnt")
        for path in (stack.upper, stack.work, stack.mnt):
            path.mkdir()
        yield stack


def fill(mnt: Path) -> tuple[int, str | None, str | None]:
    """Write a new file a megabyte at a time until a write fails (at most LIMIT): the
    megabytes written, and the errors of the failed write and of the close."""
    fd = os.open(mnt / "big", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    written, failed, closed = 0, None, None
    try:
        while written < LIMIT:
            os.write(fd, b"z" * MIB)
            written += 1
    except OSError as exc:
        failed = errno.errorcode[exc.errno]
    try:
        os.close(fd)
    except OSError as exc:
        closed = errno.errorcode[exc.errno]
    return written, failed, closed


def test_a_writer_to_a_full_upper_layer_is_told_enospc(tmp_path: Path) -> None:
    answers = {}
    for name, mount in (("kernel", kernel_mount), ("driver", fuse_mount)):
        with on_small_tmpfs(tmp_path, name) as stack, mount(stack) as mnt:
            answers[name] = fill(mnt)
            os.unlink(mnt / "big")
            # The space comes back once the file is closed in the upper layer too: for the
            # driver at the kernel's RELEASE, which comes after close(2) has returned.
            assert wait_for(lambda: os.statvfs(stack.upper).f_bfree * os.statvfs(stack.upper).f_frsize > MIB, 5)
            (mnt / "after").write_bytes(b"room again\n")  # writes are taken again
            assert (mnt / "after").read_bytes() == b"room again\n"
            assert (mnt / "kept").read_bytes() == b"lower data\n"
    written, failed, closed = answers["kernel"]
    assert (failed, closed) == ("ENOSPC", None) and written <= SPACE // MIB
    written, failed, closed = answers["driver"]
    # Late by what the kernel held dirty when the first write-back failed; that is lost,
    # and the close says so.
    assert (failed, closed) == ("ENOSPC", "ENOSPC") and written < LIMIT // 2, answers
