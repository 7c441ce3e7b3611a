"""Unpacked layers: one directory per diff_id, shared by every image that has it.

Each directory holds that layer's changeset only, whiteouts kept as ``.wh.``
files, so it is exact, needs no privilege to read and turns back into a layer
tar. A layer is unpacked into ``layers/.staging`` and renamed into place once
its diff_id checked out and it and its inventory (``layers/.inventory``,
what ``fsck`` checks it against) are on disk, so a directory that exists is
a layer that is whole, after a power cut too. An unpack holds an ``flock`` on
``layers/.locks/<algorithm>-<hex>``, so that two processes loading or
pulling the same new layer unpack it once: the second waits and then finds
the layer.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from layerstore import inventory
from layerstore.blobs import fsync_dir
from layerstore.digest import parse_digest
from layerstore.unpack import UnpackResult, unpack_layer
from unionfs import crashpoints, syscalls

IMPLICIT_XATTR = "user.unionfs.implicit"  # read by unionfs (markers.IMPLICIT_XATTRS)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class LayerDirs:
    def __init__(self, root: Path) -> None:
        self.dir = root / "layers"
        self.staging = self.dir / ".staging"
        self.staging.mkdir(parents=True, exist_ok=True)
        self.inventories = self.dir / ".inventory"
        self.locks = self.dir / ".locks"
        self.locks.mkdir(exist_ok=True)

    def path(self, diff_id: str) -> Path:
        d = parse_digest(diff_id)
        return self.dir / d.algorithm / d.hex

    def inventory_path(self, diff_id: str) -> Path:
        d = parse_digest(diff_id)
        return self.inventories / d.algorithm / d.hex

    def has(self, diff_id: str) -> bool:
        return self.path(diff_id).is_dir()

    @contextlib.contextmanager
    def locked(self, diff_id: str) -> Iterator[None]:
        """Hold the layer's lock file; it is removed on release, under the lock.

        A waiter that gets the lock of a file removed meanwhile takes the new
        one, so exactly one process at a time holds the lock in force.
        """
        d = parse_digest(diff_id)
        path = self.locks / f"{d.algorithm}-{d.hex}"
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                mine, now = os.fstat(fd), os.stat(path)
            except FileNotFoundError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            if (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino):
                break
            os.close(fd)
        try:
            yield
        finally:
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            finally:
                os.close(fd)

    def unpack(self, stream: _Readable, diff_id: str, media_type: str | None) -> UnpackResult | None:
        """Unpack and verify, once: None when another process has unpacked it (it held the lock meanwhile)."""
        with self.locked(diff_id):
            if self.has(diff_id):
                return None
            crashpoints.point("layer.unpack.start")
            return self._unpack(stream, diff_id, media_type)

    def _unpack(self, stream: _Readable, diff_id: str, media_type: str | None) -> UnpackResult | None:
        final = self.path(diff_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = self.staging / secrets.token_hex(8)
        # implicit directories (no entry of this layer described them): the union takes their attributes from below
        result = unpack_layer(stream, staging, media_type=media_type, expected_diff_id=diff_id, implicit_xattr=IMPLICIT_XATTR)
        try:
            crashpoints.point("layer.unpacked")
            inventory.write(self.inventory_path(diff_id), staging)
            crashpoints.point("layer.inventoried")
            sync_filesystem(self.staging)  # the layer's root may be of mode 0, which a user cannot open
            rename_dir(staging, final)
        except OSError:
            remove_tree(staging)
            if not final.is_dir():
                raise
            return None
        fsync_dir(final.parent)  # the rename on disk before the layer is recorded
        crashpoints.point("layer.renamed")
        return result

    def diff_ids(self) -> list[str]:
        out: list[str] = []
        for algorithm in self.dir.iterdir():
            if algorithm.name.startswith("."):
                continue
            out.extend(f"{algorithm.name}:{entry.name}" for entry in algorithm.iterdir())
        return out

    def remove(self, diff_id: str) -> None:
        path = self.path(diff_id)
        if path.exists():
            doomed = self.staging / f"rm-{secrets.token_hex(8)}"
            rename_dir(path, doomed)  # gone from view in one step, then deleted
            crashpoints.point("layer.removing")
            remove_tree(doomed)
        self.inventory_path(diff_id).unlink(missing_ok=True)

    def orphan_inventories(self) -> list[Path]:
        """Inventories without their layer (a crash between the two), and unfinished ones."""
        out: list[Path] = []
        if self.inventories.is_dir():
            for algorithm in self.inventories.iterdir():
                for entry in algorithm.iterdir():
                    if entry.name.startswith(".") or not (self.dir / algorithm.name / entry.name).is_dir():
                        out.append(entry)
        return out

    def stale_staging(self) -> list[Path]:
        return list(self.staging.iterdir())


def sync_filesystem(directory: Path) -> None:
    """Write out and commit the filesystem that holds directory: a layer's files before the
    layer is recorded. Without it a power cut soon after a pull or load left layers that the
    store listed as whole with files of no data (the writes still in the page cache, the
    names and the database already on disk), as containerd's and containers/storage's did
    before their sync options. One syncfs commits a layer's thousands of files at once,
    where an fsync of each would wait for a commit each."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        syscalls.syncfs(fd)
    finally:
        os.close(fd)


def rename_dir(src: Path, dst: Path) -> None:
    """rename(2) of a directory to another parent rewrites its "..", which needs write
    permission on the directory itself: root has it anyway, and a user's store lends the
    owner the write bit for the moment (a layer's root is often 0555, as Fedora's is).
    A crash meanwhile leaves the bit, which fsck finds against the inventory."""
    try:
        os.rename(src, dst)
        return
    except PermissionError:
        mode = stat.S_IMODE(os.lstat(src).st_mode)
        if os.geteuid() == 0 or mode & 0o200:
            raise
    os.chmod(src, mode | 0o200)
    try:
        os.rename(src, dst)
    except BaseException:
        os.chmod(src, mode)
        raise
    os.chmod(dst, mode)


def remove_tree(path: Path) -> None:
    """Remove a tree whatever its modes (layers carry read-only dirs)."""

    def fix(func: object, name: str, exc: object) -> None:
        parent = os.path.dirname(name)
        os.chmod(parent, 0o700)
        if os.path.isdir(name) and not os.path.islink(name):
            os.chmod(name, 0o700)
            shutil.rmtree(name, onerror=fix)
        else:
            os.unlink(name)

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, onerror=fix)
    elif path.exists() or path.is_symlink():
        path.unlink()
