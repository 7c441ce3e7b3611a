"""Letting go of the lower layers as soon as the connection ends, driven through
the handlers without a mount.

A FUSE unmount returns before the driver has exited, and a script that
unmounts the union and then a lower layer's filesystem (as third-party union
test suites do after each test) would find that filesystem busy until the
driver's threads have ended. The first thread that sees the end swaps every
descriptor into the lower layers for an empty memory file under the same
number; what is pending in the upper layer is still placed afterwards."""
from __future__ import annotations

import ctypes
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from requestkit import header, lookup

from unionfs import fuseproto as fp
from unionfs.handlers import Requests, Timeouts
from unionfs.nodes import ROOT_ID
from unionfs.syscalls import libc
from unionfs.union import Union

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs for the lower layer")

def umount(path: Path) -> int:
    """umount(2) of path: 0, or the errno."""
    return 0 if libc.umount2(os.fsencode(path), 0) == 0 else ctypes.get_errno()


@pytest.fixture
def lower(tmp_path: Path) -> Iterator[Path]:
    """A lower layer on a filesystem of its own, which a test may unmount."""
    path = tmp_path / "lower"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "lower", str(path)], check=True)
    try:
        (path / "kept").write_bytes(b"lower data")
        (path / "changed").write_bytes(b"to copy up")
        (path / "d").mkdir()
        yield path
    finally:
        if os.path.ismount(path):
            subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def requests(tmp_path: Path, lower: Path) -> Iterator[Requests]:
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    union = Union([str(lower)], str(upper), str(work))
    try:
        yield Requests(union, Timeouts())
    finally:
        union.close()


def open_file(requests: Requests, name: str, flags: int) -> int:
    nodeid = lookup(requests, ROOT_ID, name)
    return fp.OPEN_OUT.unpack_from(requests.open(header(fp.OPEN, nodeid), memoryview(fp.OPEN_IN.pack(flags, 0))))[0]


def test_the_lower_filesystem_can_be_unmounted_once_let_go(requests: Requests, lower: Path, tmp_path: Path) -> None:
    """Busy while the union holds it, a file open on it included; free once let go of,
    while a copy-up made before still goes into place."""
    reading = open_file(requests, "kept", os.O_RDONLY)
    open_file(requests, "changed", os.O_WRONLY | os.O_APPEND)  # a small copy-up, pending until published
    assert umount(lower) == errno.EBUSY
    requests.release_lowers()
    assert umount(lower) == 0
    assert os.pread(reading, 64, 0) == b""  # a READ still on its way finds an empty file, not another one
    with pytest.raises(OSError):  # and a lookup finds nothing
        requests.union.getattr("/d")
    requests.union.settle()  # what was pending is placed
    assert (tmp_path / "upper" / "changed").read_bytes() == b"to copy up"


def test_letting_go_leaves_other_descriptors_alone(requests: Requests, tmp_path: Path) -> None:
    """Only descriptors into the lower layers are swapped: one the upper layer holds is not."""
    writing = open_file(requests, "changed", os.O_RDWR)
    other = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        requests.release_lowers()
        assert os.fstat(other).st_ino == os.stat(tmp_path).st_ino
        assert os.pread(writing, 64, 0) == b"to copy up"
    finally:
        os.close(other)


def test_closing_leaves_no_descriptor_into_any_layer(requests: Requests, tmp_path: Path) -> None:
    """At the end, files still open through the mount close with the union: the upper
    layer's filesystem is not held either (Session.run calls this once no request
    is being answered)."""
    open_file(requests, "kept", os.O_RDONLY)
    open_file(requests, "changed", os.O_RDWR)
    requests.close()
    into = [target for fd in os.listdir("/proc/self/fd")
            if (target := _target(fd)) is not None and target.startswith(str(tmp_path))]
    assert into == []
    assert (tmp_path / "upper" / "changed").read_bytes() == b"to copy up"


def _target(fd: str) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
