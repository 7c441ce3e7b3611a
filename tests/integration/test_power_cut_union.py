"""What a union made durable survives the machine losing power, as on kernel overlayfs.

The upper and work directories are on xfs in a loop-mounted image. After a
set of changes through the mount, each made durable the way a program makes
it durable (``fsync`` of the file, then of its directory), the filesystem is
shut down without writing its log (``xfs_io -x -c shutdown``): what was not
on disk by then is gone, as after a power cut. The driver is killed with it.
Then the image is mounted again (xfs replays its log) and the union over it.

Every change made durable must be there, whole; every other change must be
there whole or not at all, the entry as it was before (a copy-up that did
not reach its rename leaves the lower file, never part of a copy). The same
run on kernel overlayfs, the reference, must pass the same checks. The driver's
crash tests (``test_driver_crash``) kill the driver alone; here the upper
layer's filesystem loses what it held in memory too: the driver's ``fsync``
and its copy-ups synced before their rename, or in batches, are what is
tested.
"""
from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from mounts import Stack, abort_connection, driver_pid, force_unmount, loop_fs, mount_again, power_cut, union_by

pytestmark = [
    pytest.mark.usefixtures("transport"),
    pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts and kernel overlayfs need root"),
    pytest.mark.skipif(not (shutil.which("mkfs.xfs") and shutil.which("xfs_io")), reason="needs xfsprogs"),
]

MiB = 1 << 20
LOWER_FILES = {
    "small": b"small lower file\n",  # a small copy-up: published in a batch
    "large": bytes(range(256)) * (6 * MiB // 256),  # a copy-up synced before its rename
    "gone": b"removed\n",
    "renamed": b"renamed\n",
    "chmodded": b"mode changed\n",
    "xattred": b"xattr set\n",
    "linked": b"linked\n",
    "truncated": b"truncated to 4 bytes\n",
    "replaced": b"renamed over\n",
    "later-appended": b"appended, not synced\n",
    "later-chmodded": bytes(reversed(range(256))) * (6 * MiB // 256),
    "later-removed": b"removed, not synced\n",
}


def fsync(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append(path: Path, data: bytes, durable: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def create(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_changes(mnt: Path) -> None:
    """Each made durable as a careful program does: the file, then its directory."""
    append(mnt / "small", b"+appended\n", durable=True)
    append(mnt / "large", b"+appended\n", durable=True)
    create(mnt / "new", b"a new file\n")
    os.unlink(mnt / "gone")
    os.rename(mnt / "renamed", mnt / "renamed-to")
    os.mkdir(mnt / "newdir")
    create(mnt / "newdir/inner", b"in a new directory\n", 0o600)
    fsync(mnt / "newdir")
    os.chmod(mnt / "chmodded", 0o600)
    fsync(mnt / "chmodded")
    os.setxattr(mnt / "xattred", "user.note", b"kept")
    fsync(mnt / "xattred")
    os.link(mnt / "linked", mnt / "linked-too")
    os.truncate(mnt / "truncated", 4)
    fsync(mnt / "truncated")
    create(mnt / "replacement", b"renamed over a lower file\n")
    os.rename(mnt / "replacement", mnt / "replaced")
    os.symlink("new", mnt / "symlink")
    os.rename(mnt / "dir", mnt / "dir-renamed")
    os.chmod(mnt / "dir-renamed", 0o700)
    fsync(mnt / "dir-renamed")
    os.rmdir(mnt / "emptied")
    fsync(mnt)


def other_changes(mnt: Path) -> None:
    """Not made durable: each may be lost, but only whole."""
    append(mnt / "later-appended", b"+appended\n", durable=False)
    os.chmod(mnt / "later-chmodded", 0o640)
    os.unlink(mnt / "later-removed")


Entry = tuple[object, ...]


def entries(mnt: Path) -> dict[str, Entry]:
    """Each path's kind, mode, content or listing, user xattrs and link count (for files); a symlink's target."""
    out: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(mnt):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = os.lstat(path)
            rel = str(path.relative_to(mnt))
            if path.is_symlink():
                out[rel] = ("symlink", os.readlink(path))
                continue
            xattrs = tuple(sorted((x, os.getxattr(path, x)) for x in os.listxattr(path) if x.startswith("user.")))
            if path.is_dir():
                out[rel] = ("dir", oct(st.st_mode & 0o7777), tuple(sorted(os.listdir(path))), xattrs)
            else:
                out[rel] = ("file", oct(st.st_mode & 0o7777), path.read_bytes(), xattrs, st.st_nlink)
    return out


def build_lower(lower: Path) -> None:
    for name, data in LOWER_FILES.items():
        (lower / name).write_bytes(data)
    (lower / "dir").mkdir()
    (lower / "dir/in-dir").write_bytes(b"in a renamed directory\n")
    (lower / "emptied").mkdir()


def cut_power(fs: Path, mnt: Path, driver: str) -> None:
    """The upper layer's filesystem stops where its log on disk ends; the driver dies with it."""
    power_cut(fs)
    if driver == "unionfs":
        os.kill(driver_pid(mnt), signal.SIGKILL)
        abort_connection(mnt)
    force_unmount(mnt)


def run(tmp_path: Path, driver: str, changes: Callable[[Path], None], last: Callable[[Path], None]) -> tuple[
        dict[str, Entry], dict[str, Entry], dict[str, Entry], dict[str, Entry]]:
    """Entries before the changes, after the durable ones, after all, and after the power cut."""
    lower = tmp_path / "lower"
    lower.mkdir()
    build_lower(lower)
    with loop_fs(tmp_path, "xfs", ["mkfs.xfs", "-q"], 512 * MiB) as fs:
        stack = Stack((lower,), fs / "upper", fs / "work", tmp_path / "mnt")
        for path in (stack.upper, stack.work, stack.mnt):
            path.mkdir()
        # with redirect_dir=on overlayfs renames a lower directory, as the driver does
        with union_by(driver, stack, "redirect_dir=on") as mnt:
            before = entries(mnt)
            changes(mnt)
            durable = entries(mnt)
            last(mnt)
            changed = entries(mnt)
            cut_power(fs, mnt, driver)
        mount_again(fs)
        with union_by(driver, stack, "redirect_dir=on") as mnt:
            after = entries(mnt)
    return before, durable, changed, after


@pytest.mark.parametrize("driver", ["unionfs", "kernel"])
def test_durable_changes_survive_a_power_cut_and_the_rest_is_whole_or_absent(tmp_path: Path, driver: str) -> None:
    before, durable, changed, after = run(tmp_path, driver, durable_changes, other_changes)
    assert before != durable != changed  # the changes changed something
    kept = {path for path in durable if durable[path] == changed.get(path)}  # untouched by the other changes
    assert {path: after.get(path) for path in kept} == {path: durable[path] for path in kept}
    for path in set(before) | set(changed) | set(after):
        if path == "." or path in kept:
            continue
        assert after.get(path) in (durable.get(path), changed.get(path)), path
