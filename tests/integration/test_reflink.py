"""Copy-up on filesystems that share extents between files (xfs with reflink,
btrfs): the copy takes the lower file's extents instead of their bytes, as
kernel overlayfs's copy-up does, and a write to the copy leaves the lower file
as it was. Each test runs on a fresh filesystem in a loop-mounted image, with
this driver and with kernel overlayfs as the reference.

Extents are read with the FIEMAP ioctl: where both files map the same
logical range to the same blocks, the data was shared, not copied.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from extents import data_extents, extents, write_sparse
from mounts import Stack, loop_fs, union_by

MiB = 1 << 20
FICLONE = 0x40049409  # _IOW(0x94, 9, int)
MKFS = {
    "xfs": ["mkfs.xfs", "-q", "-m", "reflink=1"],
    "btrfs": ["mkfs.btrfs", "-q"],
}
IMAGE_SIZE = 512 * MiB  # sparse; xfs wants 300 MiB at least
# (offset, length) of the data in the lower file, 4 KiB-aligned; the rest is holes
DATA = [(0, 3 * MiB), (5 * MiB, 2 * MiB + 4096)]
SIZE = 9 * MiB  # ends in a hole

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts need root"),
    pytest.mark.skipif(not all(shutil.which(cmd[0]) for cmd in MKFS.values()),
                       reason="needs mkfs.xfs and mkfs.btrfs (xfsprogs, btrfs-progs)"),
]

DRIVERS = ("kernel", "unionfs")  # mounts.union_by


def sparse_file(path: Path) -> str:
    """The lower file: data, holes, an xattr. Returns its sha256."""
    write_sparse(path, SIZE, DATA)
    os.setxattr(path, "user.k", b"v")
    return sha256(path)


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def stack_on(fs: Path, lowers: tuple[Path, ...] = ()) -> Stack:
    """A union with its upper and work dirs on fs; lowers (top first) where given, else one on fs."""
    made = Stack.make(fs, nlower=1)
    return Stack(lowers or made.lowers, made.upper, made.work, made.mnt)


@pytest.fixture(params=sorted(MKFS))
def fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    with loop_fs(tmp_path, request.param, MKFS[request.param], IMAGE_SIZE) as point:
        yield point


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_copy_up_shares_the_lower_files_extents(fs: Path, driver: str) -> None:
    stack = stack_on(fs)
    lower = stack.lowers[0] / "big"
    digest = sparse_file(lower)
    with union_by(driver, stack) as mnt:
        os.chmod(mnt / "big", 0o600)  # copies up data and metadata
        assert sha256(mnt / "big") == digest
    copy = stack.upper / "big"
    assert extents(copy) == extents(lower)
    assert all(e.shared for e in extents(copy)), extents(copy)
    assert data_extents(copy) == DATA
    assert os.stat(copy).st_size == SIZE
    assert os.getxattr(copy, "user.k") == b"v"
    assert sha256(copy) == digest


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_a_write_to_the_copy_leaves_the_lower_file_and_the_rest_shared(fs: Path, driver: str) -> None:
    stack = stack_on(fs)
    lower = stack.lowers[0] / "big"
    digest = sparse_file(lower)
    block = os.urandom(4096)
    with union_by(driver, stack) as mnt:
        fd = os.open(mnt / "big", os.O_WRONLY)  # copies up, and the write goes to the copy
        try:
            os.pwrite(fd, block, MiB)
            os.fsync(fd)
        finally:
            os.close(fd)
        with open(mnt / "big", "rb") as f:
            f.seek(MiB)
            assert f.read(4096) == block
    copy = stack.upper / "big"
    assert sha256(lower) == digest
    with open(copy, "rb") as f:
        f.seek(MiB)
        assert f.read(4096) == block
    # the written block has blocks of its own; the rest of the copy is still the lower file's
    own = [e for e in extents(copy) if not e.shared]
    assert [(e.logical, e.length) for e in own] == [(MiB, 4096)]
    shared = {(e.logical, e.physical) for e in extents(copy) if e.shared}
    assert shared and all(any(lo.logical <= log < lo.logical + lo.length and
                              lo.physical + (log - lo.logical) == phys for lo in extents(lower))
                          for log, phys in shared)


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_a_lower_on_another_filesystem_is_copied_and_one_on_the_same_still_shares(
        tmp_path: Path, fs: Path, driver: str) -> None:
    """The top lower is on the test's own filesystem, where no extent can be shared
    with the upper: its file is copied, holes kept; a file of the
    bottom lower, on the upper's filesystem, copied up after it still shares."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert os.stat(elsewhere).st_dev != os.stat(fs).st_dev
    same = fs / "same"
    same.mkdir()
    stack = stack_on(fs, (elsewhere, same))
    far, near = sparse_file(elsewhere / "far"), sparse_file(same / "near")
    with union_by(driver, stack) as mnt:
        os.chmod(mnt / "far", 0o600)
        os.chmod(mnt / "near", 0o600)
    far_copy, near_copy = stack.upper / "far", stack.upper / "near"
    assert sha256(far_copy) == far
    # holes kept, though not to the block: xfs and btrfs allocate around what was written
    found = data_extents(far_copy)
    assert all(any(s <= start and start + n <= s + m for s, m in found) for start, n in DATA), found
    assert sum(m for _, m in found) < SIZE, found
    assert not any(e.shared for e in extents(far_copy))
    assert sha256(near_copy) == near and extents(near_copy) == extents(same / "near")
    assert all(e.shared for e in extents(near_copy))


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_a_copy_made_through_the_mount_shares_extents_and_a_clone_is_refused(fs: Path, driver: str) -> None:
    """copy_file_range (cp's default) is passed on to the layers, where it shares
    extents as it does through overlayfs. FICLONE (cp --reflink=always) never
    reaches the driver: the kernel's FUSE module has no clone and answers
    EOPNOTSUPP itself, where overlayfs clones."""
    stack = stack_on(fs)
    digest = sparse_file(stack.lowers[0] / "big")
    with union_by(driver, stack) as mnt:
        src = os.open(mnt / "big", os.O_RDONLY)
        dst = os.open(mnt / "copy", os.O_WRONLY | os.O_CREAT, 0o644)
        clone = os.open(mnt / "clone", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            done = 0
            while done < SIZE:
                n = os.copy_file_range(src, dst, SIZE - done, done, done)
                assert n > 0, done
                done += n
            refused = None
            try:
                fcntl.ioctl(clone, FICLONE, src)
            except OSError as exc:
                refused = exc.errno
        finally:
            for fd in (src, dst, clone):
                os.close(fd)
        assert sha256(mnt / "copy") == digest
    assert refused == (errno.EOPNOTSUPP if driver == "unionfs" else None)
    copy = stack.upper / "copy"
    assert extents(copy) and all(e.shared for e in extents(copy)), extents(copy)
    assert data_extents(copy) == DATA
    if driver == "kernel":
        assert sha256(stack.upper / "clone") == digest
