"""Where a union may be mounted: on a layer's own path, or below a layer, as overlayfs allows.

Overlayfs takes each layer as a private copy of its mount, without the mounts below it:
a filesystem mounted inside a layer is not part of the union, and neither is the union
itself when it is mounted there. A driver that reached its layers by path would meet its
own mount and wait for itself, so each operation here runs with a bound
(``mounts.bounded``) and fails rather than hangs.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mounts
import pytest
from mounts import force_unmount
from trees import tree
from users import NOBODY, errno_as

from unionfs.mount import MountSpec, is_mounted, mount

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root here")

# Where the union goes, relative to the test's directory.
PLACES = {
    "on-the-lower": "lower",  # fuse-overlayfs issue 344: mods mounted over the game's own directory
    "below-the-lower": "lower/sub",  # lowerdir=/ and a mount point under it
    "below-the-upper": "upper/m",
}


def make_layers(base: Path) -> None:
    """A lower layer with a file that has an xattr, a directory, and a tmpfs mounted inside it."""
    lower, upper, work = base / "lower", base / "upper", base / "work"
    for path in (lower / "sub", lower / "dir", lower / "tm", upper / "m", work):
        path.mkdir(parents=True)
    (lower / "f").write_text("lower\n")
    os.setxattr(lower / "f", "user.k", b"v")
    (lower / "dir" / "inner").write_text("inner\n")
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(lower / "tm")], check=True)
    (lower / "tm" / "hidden").write_text("a mount inside a layer is not part of the union\n")


@contextlib.contextmanager
def layers(base: Path) -> Iterator[None]:
    make_layers(base)
    try:
        yield
    finally:
        force_unmount(base / "lower" / "tm")
        for name in ("lower", "upper", "work"):
            shutil.rmtree(base / name)


def view(mnt: Path) -> dict[str, Any]:
    """Every entry's attributes and content, and its user.* xattrs."""
    entries = tree(mnt)
    xattrs = {}
    for rel in [".", *entries]:
        names = os.listxattr(mnt / rel, follow_symlinks=False)
        xattrs[rel] = {n: os.getxattr(mnt / rel, n, follow_symlinks=False) for n in sorted(names) if n.startswith("user.")}
    return {"tree": entries, "xattrs": xattrs}


def change(mnt: Path) -> dict[str, Any]:
    """A copy-up, a new file, an xattr on a lower directory, a removal: the view before and after."""
    before = view(mnt)
    with open(mnt / "f", "a") as f:
        f.write("appended\n")
    (mnt / "new").write_text("new\n")
    os.setxattr(mnt / "dir", "user.added", b"yes")
    os.unlink(mnt / "dir" / "inner")
    return {"before": before, "after": view(mnt)}


def run(base: Path, place: str, mount_it: Callable[[Path], None]) -> dict[str, Any]:
    mnt = base / PLACES[place]
    with layers(base):
        mount_it(mnt)
        try:
            seen = mounts.bounded(lambda: change(mnt), mnt)
        finally:
            force_unmount(mnt)
        assert isinstance(seen, dict)
        return {**seen, "upper": tree(base / "upper")}


def kernel(base: Path) -> Callable[[Path], None]:
    def mount_it(mnt: Path) -> None:
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={base / 'lower'},upperdir={base / 'upper'},workdir={base / 'work'}", str(mnt)], check=True)
    return mount_it


def driver(base: Path) -> Callable[[Path], None]:
    def mount_it(mnt: Path) -> None:
        mount(MountSpec((str(base / "lower"),), str(base / "upper"), str(base / "work"), mounts.TRANSPORT), str(mnt))
    return mount_it


@pytest.mark.parametrize("place", PLACES)
def test_a_union_mounted_on_or_below_its_layers_shows_what_overlayfs_shows(tmp_path: Path, place: str, transport: str) -> None:
    expected = run(tmp_path, place, kernel(tmp_path))
    assert "tm" in expected["before"]["tree"] and "tm/hidden" not in expected["before"]["tree"]  # the case is exercised
    got = run(tmp_path, place, driver(tmp_path))
    assert got["before"] == expected["before"]
    assert got["after"] == expected["after"]
    assert got["upper"] == expected["upper"]


def test_a_user_mounts_on_a_layer_but_not_below_one(transport: str) -> None:
    """Without CAP_SYS_ADMIN the driver cannot take private copies of its layers' mounts:
    on a layer's own path it works all the same (every call goes through the layer's
    descriptor, opened before the mount), below one it is refused with a message."""
    base = Path(tempfile.mkdtemp(prefix="unionfs-places-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        lower, upper, work = base / "lower", base / "upper", base / "work"
        for path in (lower / "sub", upper, work):
            path.mkdir(parents=True)
        (lower / "f").write_text("lower\n")
        os.setxattr(lower / "f", "user.k", b"v")
        for path in (lower, lower / "sub", lower / "f", upper, work):
            os.chown(path, NOBODY, NOBODY)
        options = ",".join([f"lowerdir={lower},upperdir={upper},workdir={work}", *mounts.TRANSPORT])
        with mounts.device_open_to_users():
            _, answer = mounts.serve_as(NOBODY, options, lower / "sub")
            assert "the mount point is inside layer" in answer and "CAP_SYS_ADMIN" in answer, answer
            assert not is_mounted(str(lower / "sub"))
            pid, answer = mounts.serve_as(NOBODY, options, lower)
        try:
            assert answer == "ready", answer

            def as_user() -> int | None:
                return errno_as(NOBODY, lambda: (
                    os.getxattr(lower / "f", "user.k") == b"v" or _fail("xattr"),
                    (lower / "f").write_text("written\n"),
                    os.listxattr(lower / "f") == ["user.k"] or _fail("xattr list"),
                ))

            assert mounts.bounded(as_user, lower) is None
        finally:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        assert (upper / "f").read_text() == "written\n" and (lower / "f").read_text() == "lower\n"
        assert os.getxattr(upper / "f", "user.k") == b"v"
    finally:
        for point in (base / "lower" / "sub", base / "lower"):
            force_unmount(point)
        shutil.rmtree(base, ignore_errors=True)


def _fail(what: str) -> None:
    raise OSError(errno.EIO, f"{what} differs")
