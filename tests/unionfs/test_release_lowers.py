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
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounts import loop_devices, loop_fs
from requestkit import header, lookup
from waiting import wait_for

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


def test_the_lower_filesystem_can_be_unmounted_while_held_and_ends_once_let_go(
        requests: Requests, lower: Path, tmp_path: Path) -> None:
    """As on overlayfs, the union holds a private copy of the lower layer's mount: that
    layer's own mount can go at any time, and its filesystem lives on in the copy; a
    file open on it still reads. Let go of, nothing of it is left, while a copy-up made
    before still goes into place."""
    reading = open_file(requests, "kept", os.O_RDONLY)
    open_file(requests, "changed", os.O_WRONLY | os.O_APPEND)  # a small copy-up, pending until published
    assert umount(lower) == 0
    assert os.pread(reading, 64, 0) == b"lower data"
    requests.release_lowers()
    assert os.pread(reading, 64, 0) == b""  # a READ still on its way finds an empty file, not another one
    with pytest.raises(OSError):  # and a lookup finds nothing
        requests.union.getattr("/d")
    requests.union.settle()  # what was pending is placed
    assert (tmp_path / "upper" / "changed").read_bytes() == b"to copy up"


def test_a_lower_filesystem_on_a_device_lets_the_device_go_once_let_go(tmp_path: Path) -> None:
    """The private copy keeps the filesystem, and so its loop device, until the layers
    are let go of: then the device is detached (autoclear), as after overlayfs's unmount."""
    with loop_fs(tmp_path, "lowerfs", ["mkfs.ext4", "-q"], 16 << 20) as lower:
        (lower / "kept").write_bytes(b"lower data")
        image = tmp_path / "lowerfs.img"
        upper, work = tmp_path / "upper", tmp_path / "work"
        upper.mkdir()
        work.mkdir()
        union = Union([str(lower)], str(upper), str(work))
        try:
            requests = Requests(union, Timeouts())
            reading = open_file(requests, "kept", os.O_RDONLY)
            assert umount(lower) == 0
            assert loop_devices(image), "the device went with the mount"
            assert os.pread(reading, 64, 0) == b"lower data"
            requests.release_lowers()
            assert wait_for(lambda: not loop_devices(image), 10), "the loop device stayed after the union let go"
        finally:
            union.close()


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


def test_closing_leaves_no_descriptor_into_any_layer(requests: Requests, lower: Path, tmp_path: Path) -> None:
    """At the end, files still open through the mount close with the union: the upper
    layer's filesystem is not held either (Session.run calls this once no request
    is being answered). Descriptors are told by the file they are on: their paths are
    relative to the union's private copies of the layers' mounts."""
    open_file(requests, "kept", os.O_RDONLY)
    open_file(requests, "changed", os.O_RDWR)
    layers = files_under(lower, tmp_path / "upper", tmp_path / "work")
    assert open_files() & layers  # the case is exercised
    requests.close()
    assert open_files() & layers == set()
    assert (tmp_path / "upper" / "changed").read_bytes() == b"to copy up"


def files_under(*roots: Path) -> set[tuple[int, int]]:
    found = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [".", *dirnames, *filenames]:
                st = os.lstat(os.path.join(dirpath, name))
                found.add((st.st_dev, st.st_ino))
    return found


def open_files() -> set[tuple[int, int]]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        found.add((st.st_dev, st.st_ino))
    return found
