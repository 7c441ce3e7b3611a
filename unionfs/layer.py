"""One layer directory, reached through an open directory descriptor.

Every call is relative to the layer's root fd (``dir_fd=``), so paths as long
as PATH_MAX below the mount point work whatever the length of the layer's own
path, and no call ever follows a symlink out of the layer.
"""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from unionfs import markers, syscalls

_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG)  # a marker name too long to exist
_NO_XATTR = (errno.ENODATA, errno.ENOTSUP, errno.EPERM)
_ABSENT = _NO_XATTR + _MISSING  # what getxattr answers with None


@dataclass(frozen=True, slots=True)
class Entry:
    """A visible name in one layer directory, as readdir needs it."""

    is_dir: bool
    ino: int
    type_bits: int  # S_IFMT part of st_mode


@dataclass(frozen=True, slots=True)
class DirInfo:
    """A directory of one layer, read once: lower layers never change."""

    entries: dict[str, Entry]
    hides: frozenset[str]  # names this layer hides in the layers below
    opaque: bool
    redirect: str | None
    implicit: bool = False  # made only as a parent: attributes come from below
    impure: bool = False  # overlay.impure: overlayfs copied entries up into it (see Union._lower_metacopy)


_DTYPE_BITS = {
    "dir": stat.S_IFDIR,
    "file": stat.S_IFREG,
    "symlink": stat.S_IFLNK,
}


def rel_join(parent: str, name: str) -> str:
    return name if parent == "." else f"{parent}/{name}"


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def private_roots(paths: Sequence[str]) -> list[int] | None:
    """Directory descriptors on paths, all in one private copy of the mount at their
    common directory, without the mounts below it; or None where that cannot be had.

    Overlayfs takes its layers this way (clone_private_mount): a mount inside a layer
    is not part of the union, and the union may be mounted on a layer's path or
    below it. A descriptor on the path itself would lead through such a mount, into
    this driver, which would then wait for itself. Copying a mount needs
    CAP_SYS_ADMIN; a driver without it cannot be mounted there (see ``overlapping``).
    Paths in one call stay on one mount: the work dir's renames into the upper layer
    need that. None as well where a mount between the common directory and a path
    leaves the copy with another directory there."""
    real = [os.path.realpath(path) for path in paths]
    base = os.path.commonpath(real)
    try:
        tree = syscalls.open_tree(base)
    except OSError:  # EPERM without the capability, EINVAL on an unbindable mount, ENOSYS before 5.2;
        return None  # a path that is not there the plain open reports
    fds: list[int] = []
    try:
        for path, resolved in zip(paths, real):
            try:
                fds.append(os.open(os.path.relpath(resolved, base), DIR_FLAGS, dir_fd=tree))
            except OSError:  # not in the copy: a mount on the way (or a problem the plain open reports)
                break
            mine, theirs = os.fstat(fds[-1]), os.stat(path)
            if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
                break
        else:
            return fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    finally:
        os.close(tree)
    for fd in fds:
        os.close(fd)
    return None


def overlapping(mountpoint: str, layers: Sequence[str]) -> str | None:
    """The layer that the mount point lies strictly below, if any: a union that could not
    take private copies of its layers would meet itself there."""
    point = os.path.realpath(mountpoint)
    for layer in layers:
        root = os.path.realpath(layer)
        if point != root and _within(point, root):
            return layer
    return None


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def layout_problem(lowerdirs: Sequence[str], upperdir: str | None, workdir: str | None) -> str | None:
    """What overlayfs refuses in where the writable layers lie: upper and work inside
    one another or on two mounts (a copy-up is renamed from one into the other; a
    private copy of their common mount would pass over a bind mount's read-only flag
    or ID mapping), on a read-only mount, or a lower layer that is (or lies inside)
    either of them, which would show the union's own writes as a lower layer's. Lower
    layers that overlap each other are taken, as fuse-overlayfs takes them: an image
    may hold the same layer twice."""
    if upperdir is None or workdir is None:
        return None
    upper, work = os.path.realpath(upperdir), os.path.realpath(workdir)
    if _within(work, upper) or _within(upper, work):
        return "upperdir and workdir must be separate directories, neither inside the other"
    if os.stat(upper).st_dev != os.stat(work).st_dev:
        return "upperdir and workdir must be on the same filesystem"
    if syscalls.mount_id(upper) != syscalls.mount_id(work):
        return "upperdir and workdir must be on the same mount (a bind mount over one of them makes two)"
    if os.statvfs(upper).f_flag & os.ST_RDONLY:
        return f"upperdir {upperdir}: on a read-only mount (leave out upperdir and workdir for a read-only union)"
    for lower in lowerdirs:
        real = os.path.realpath(lower)
        for name, path in (("upperdir", upper), ("workdir", work)):
            if _within(real, path):
                return f"lowerdir {lower} overlaps {name} {path}: the union's writes would show in a lower layer"
    return None


class Layer:
    """A layer root; index 0 is the upper layer when the mount is writable.
    through: a descriptor to open root through, as ``rel`` below it (see ``private_roots``)."""

    def __init__(self, root: str, index: int, lower: bool = True, through: int | None = None, rel: str = ".") -> None:
        self.root = os.path.abspath(root)
        self.index = index
        self.fd = os.open(self.root, DIR_FLAGS) if through is None else os.open(rel, DIR_FLAGS, dir_fd=through)
        self.dev = os.fstat(self.fd).st_dev
        # Reading a lower layer leaves its atimes as they are, as on overlayfs, which
        # opens its real files with O_NOATIME where it may (ovl_path_open).
        self._noatime = os.O_NOATIME if lower else 0

    def open(self, rel: str, flags: int) -> int:
        """An fd on rel for reading; a lower layer's entry keeps its atime."""
        if self._noatime:
            try:
                return os.open(rel, flags | self._noatime, dir_fd=self.fd)
            except PermissionError as exc:
                if exc.errno != errno.EPERM:  # EPERM: neither its owner nor CAP_FOWNER
                    raise
        return os.open(rel, flags, dir_fd=self.fd)

    def close(self) -> None:
        os.close(self.fd)

    # -- stat and lookups ------------------------------------------------------
    def lstat(self, rel: str) -> os.stat_result | None:
        try:
            return os.lstat(rel, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in _MISSING:
                return None
            raise

    def exists(self, rel: str) -> bool:
        return self.lstat(rel) is not None

    def marker_exists(self, rel: str) -> bool:
        """Whether a marker (``.wh.NAME``) is in a directory that was just searched:
        its usual answer, no, comes without an exception (a third of lstat's time)."""
        return os.access(rel, os.F_OK, dir_fd=self.fd, follow_symlinks=False)

    def is_whiteout(self, rel: str, st: os.stat_result) -> bool:
        if markers.is_chardev_whiteout(st.st_mode, st.st_rdev):
            return True
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            return not self.xattr_names(rel).isdisjoint(markers.WHITEOUT_XATTRS)
        return False

    def dir_meta(self, rel: str) -> tuple[bool, str | None]:
        """(opaque, redirect) of a directory of this layer."""
        names = self.xattr_names(rel)
        opaque, redirect = self._xattr_meta(rel, names, self._opaque_value(rel, names))
        return opaque or self.exists(rel_join(rel, markers.OPAQUE_MARKER)), redirect

    def xattr_names(self, rel: str) -> frozenset[str]:
        """The names of rel's xattrs: one listxattr instead of a getxattr for each
        marker that is almost never there."""
        try:
            return frozenset(self.listxattr(rel))
        except OSError as exc:
            if exc.errno in _MISSING:
                return frozenset()
            raise

    def _first_xattr(self, rel: str, names: frozenset[str], candidates: tuple[str, ...]) -> bytes | None:
        """The value of the first of candidates (trusted., user.) that rel, whose xattr
        names are known, has."""
        for name in candidates:
            if name in names:
                value = self.getxattr(rel, name)
                if value is not None:
                    return value
        return None

    def _opaque_value(self, rel: str, names: frozenset[str]) -> bytes | None:
        """overlay.opaque of a directory: ``y`` opaque, ``x`` holding xattr whiteouts."""
        return self._first_xattr(rel, names, markers.OPAQUE_XATTRS)

    def _xattr_meta(self, rel: str, names: frozenset[str], opaque_value: bytes | None) -> tuple[bool, str | None]:
        """(opaque by xattr, redirect) of a directory whose xattr names are known."""
        return opaque_value == markers.OPAQUE_VALUE, self._redirect(rel, names)

    def _redirect(self, rel: str, names: frozenset[str]) -> str | None:
        redirect = self._first_xattr(rel, names, markers.REDIRECT_XATTRS)
        return None if redirect is None else os.fsdecode(redirect)

    def redirect(self, rel: str) -> str | None:
        """overlay.redirect of a directory of this layer: where the layers below hold it."""
        return self._redirect(rel, self.xattr_names(rel))

    def scan(self, rel: str) -> DirInfo:
        """Read a directory with its markers; raises if rel is not a directory."""
        entries: dict[str, Entry] = {}
        hides: set[str] = set()
        opaque = False
        names = self.xattr_names(rel)
        opaque_value = self._opaque_value(rel, names)
        xattr_whiteouts = opaque_value == markers.XWHITEOUTS_VALUE or not names.isdisjoint(markers.WHITEOUTS_XATTRS)
        fd = self.open(rel, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            with os.scandir(fd) as it:
                for de in it:
                    name = de.name
                    if name.startswith(markers.WH_PREFIX):
                        if name == markers.OPAQUE_MARKER:
                            opaque = True
                        elif len(name) > len(markers.WH_PREFIX):
                            hides.add(name[len(markers.WH_PREFIX):])
                        continue
                    if de.is_dir(follow_symlinks=False):
                        entries[name] = Entry(True, de.inode(), stat.S_IFDIR)
                        continue
                    if de.is_file(follow_symlinks=False):
                        bits = stat.S_IFREG
                        if xattr_whiteouts:
                            st = de.stat(follow_symlinks=False)
                            if self.is_whiteout(rel_join(rel, name), st):
                                hides.add(name)
                                continue
                    elif de.is_symlink():
                        bits = stat.S_IFLNK
                    else:
                        st = de.stat(follow_symlinks=False)
                        if markers.is_chardev_whiteout(st.st_mode, st.st_rdev):
                            hides.add(name)
                            continue
                        bits = stat.S_IFMT(st.st_mode)
                    entries[name] = Entry(False, de.inode(), bits)
        finally:
            os.close(fd)
        meta_opaque, redirect = self._xattr_meta(rel, names, opaque_value)  # the .wh..wh..opq marker was seen above
        implicit = not names.isdisjoint(markers.IMPLICIT_XATTRS)
        impure = not names.isdisjoint(markers.IMPURE_XATTRS)
        return DirInfo(entries, frozenset(hides), opaque or meta_opaque, redirect, implicit, impure)

    # -- xattrs ----------------------------------------------------------------
    # Relative to the layer's descriptor, never by an absolute path: this mount may sit on
    # the layer's own path or below it, and a path through it would ask this driver again.
    def getxattr(self, rel: str, name: str) -> bytes | None:
        return syscalls.getxattrat_unless(self.fd, rel, name, _ABSENT)

    def listxattr(self, rel: str) -> list[str]:
        try:
            return syscalls.listxattrat(self.fd, rel)
        except OSError as exc:
            if exc.errno == errno.ENOTSUP:
                return []
            raise

    def getxattr_strict(self, rel: str, name: str) -> bytes:
        return syscalls.getxattrat(self.fd, rel, name)

    def setxattr(self, rel: str, name: str, value: bytes, flags: int = 0) -> None:
        syscalls.setxattrat(self.fd, rel, name, value, flags)

    def removexattr(self, rel: str, name: str) -> None:
        syscalls.removexattrat(self.fd, rel, name)
