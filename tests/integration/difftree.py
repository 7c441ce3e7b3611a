"""Harness for differential tests: layer trees, operations and snapshots.

A layer is described as a value (``Dir`` of ``File``/``Symlink``/...), built
on disk identically for every stack, so the driver and kernel overlayfs see
byte-for-byte the same lower layers. Operations are values too (``Op``),
applied to a mount point and answered with an errno (None on success).
Snapshots turn a merged view or an upper layer into plain comparable data.

Every entry a test creates gets a fixed mtime far in the past; a snapshot
reports mtimes in that range exactly and any other as "now", so "copy-up kept
the time" and "the operation touched the time" are both compared without
depending on the clock.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import hashlib
import mmap
import os
import shutil
import stat
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mounts import Stack, force_unmount, fuse_mount, kernel_mount, remount_driver, remount_kernel
from users import errno_as

# -- layer descriptions ----------------------------------------------------------

FIXED_NS = 1_000_000_000 * 10**9  # 2001-09-09: every mtime this harness sets is near it
_FIXED_LIMIT = 1_500_000_000 * 10**9  # later than any fixed mtime, earlier than any real "now"
OCI_WH = ".wh."
OCI_OPQ = ".wh..wh..opq"


def _short_repr(obj: object) -> str:
    """Constructor-like repr without default-valued fields: readable falsifying examples."""
    parts = []
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING  # type: ignore[misc]
        )
        if value == default:
            continue
        if f.name in ("mode",) and isinstance(value, int):
            parts.append(f"{f.name}={value:#o}")
        else:
            parts.append(f"{f.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


def _pretty(obj: object, p: object, cycle: bool) -> None:
    """Hypothesis prints falsifying examples with this (IPython's pretty protocol)."""
    p.text(repr(obj))  # type: ignore[attr-defined]


@dataclass(frozen=True, repr=False)
class File:
    data: bytes = b""
    mode: int = 0o644
    owner: tuple[int, int] = (0, 0)
    xattrs: tuple[tuple[str, bytes], ...] = ()
    flags: int = 0  # inode flags (FS_*_FL), set last: chattr +i, +a, +A
    __repr__ = _short_repr
    _repr_pretty_ = _pretty


@dataclass(frozen=True, repr=False)
class Symlink:
    target: str
    __repr__ = _short_repr
    _repr_pretty_ = _pretty


@dataclass(frozen=True, repr=False)
class HardLink:
    """Another name of the regular file at ``to`` (a path in the same layer)."""

    to: str
    __repr__ = _short_repr
    _repr_pretty_ = _pretty


@dataclass(frozen=True, repr=False)
class Fifo:
    mode: int = 0o644
    __repr__ = _short_repr
    _repr_pretty_ = _pretty


@dataclass(frozen=True, repr=False)
class Whiteout:
    """Hides the name in the layers below: ``chardev`` (0/0, overlayfs), ``xattr`` (an empty
    file with overlay.whiteout, its directory marked overlay.opaque=x unless opaque) or
    ``oci`` (.wh.NAME)."""

    form: str = "chardev"
    __repr__ = _short_repr
    _repr_pretty_ = _pretty


@dataclass(frozen=True, repr=False)
class Dir:
    """A directory; ``opaque`` is None, "xattr" (trusted.overlay.opaque=y) or "oci" (.wh..wh..opq).

    ``oci_hides`` are extra ``.wh.NAME`` markers, possibly next to an entry
    NAME of the same layer (which they must not hide; they hide the NAME below).
    ``redirect``: as overlayfs writes it for a renamed directory, the old name
    in the same parent (relative) or the old path from the root (absolute).
    """

    children: Mapping[str, Node] = field(default_factory=dict)
    mode: int = 0o755
    owner: tuple[int, int] = (0, 0)
    opaque: str | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()
    oci_hides: tuple[str, ...] = ()
    flags: int = 0  # as File's
    redirect: str | None = None  # trusted.overlay.redirect: where the layers below hold this directory
    __repr__ = _short_repr
    _repr_pretty_ = _pretty


Node = File | Symlink | HardLink | Fifo | Whiteout | Dir


def as_overlayfs(tree: Dir) -> Dir:
    """The same layer with its OCI markers in the forms kernel overlayfs reads: a ``.wh.NAME``
    becomes a 0/0 whiteout, ``.wh..wh..opq`` the opaque xattr (xattr whiteouts stay as they
    are: overlayfs reads them). Next to the layer's own NAME,
    ``.wh.NAME`` deletes only the NAME below: a directory NAME then shows nothing of those,
    as if opaque. The driver reads either form; the kernel is the reference."""
    children: dict[str, Node] = {name: Whiteout() for name in tree.oci_hides if name not in tree.children}
    for name, node in tree.children.items():
        if isinstance(node, Dir):
            node = as_overlayfs(node)
            if name in tree.oci_hides:
                node = dataclasses.replace(node, opaque="xattr")
        elif isinstance(node, Whiteout) and node.form == "oci":
            node = Whiteout()
        children[name] = node
    return dataclasses.replace(tree, children=children, oci_hides=(),
                               opaque="xattr" if tree.opaque == "oci" else tree.opaque)


def walk_spec(tree: Dir, prefix: str = "") -> Iterator[tuple[str, Node]]:
    """(path, node) of every entry below tree, parents first."""
    for name, node in sorted(tree.children.items()):
        path = f"{prefix}{name}"
        yield path, node
        if isinstance(node, Dir):
            yield from walk_spec(node, path + "/")


def fix_hardlinks(tree: Dir, picks: Sequence[int] = ()) -> Dir:
    """Point every HardLink at an existing File of the tree (or drop it): valid layers only.

    Generated trees carry HardLink placeholders; the i-th one gets the file
    ``picks[i] % nfiles`` (sorted paths), so the choice is part of the example.
    """
    files = [path for path, node in walk_spec(tree) if isinstance(node, File)]
    counter = iter(range(1 << 30))

    def fix(d: Dir) -> dict[str, Node]:
        out: dict[str, Node] = {}
        for name, node in sorted(d.children.items()):
            if isinstance(node, HardLink):
                i = next(counter)
                if files:
                    out[name] = HardLink(files[(picks[i] if i < len(picks) else i) % len(files)])
            elif isinstance(node, Dir):
                out[name] = dataclasses.replace(node, children=fix(node))
            else:
                out[name] = node
        return out

    return dataclasses.replace(tree, children=fix(tree))


def build_layer(root: Path, tree: Dir, records: str = "trusted.overlay.") -> None:
    """Create tree under root (an existing dir) with fixed owners, modes, xattrs and mtimes;
    records: the prefix of overlayfs's xattrs (user.overlay. for a mount with userxattr)."""
    meta: list[tuple[str, Node]] = []
    links: list[tuple[str, str]] = []
    for path, node in walk_spec(tree):
        full = root / path
        if isinstance(node, File):
            full.write_bytes(node.data)
        elif isinstance(node, Dir):
            full.mkdir()
        elif isinstance(node, Symlink):
            os.symlink(node.target, full)
        elif isinstance(node, Fifo):
            os.mkfifo(full)
        elif isinstance(node, Whiteout):  # no times of its own: the forms number the rest alike
            if node.form == "chardev":
                os.mknod(full, stat.S_IFCHR | 0o600, os.makedev(0, 0))
            elif node.form == "xattr":
                full.write_bytes(b"")
                os.setxattr(full, records + "whiteout", b"y")
            else:
                (full.parent / (OCI_WH + full.name)).write_bytes(b"")
            continue
        elif isinstance(node, HardLink):
            links.append((node.to, path))
            continue
        meta.append((path, node))
    for to, path in links:
        os.link(root / to, root / path)
    for path, node in walk_spec_dirs(tree):
        for name in node.oci_hides:
            (root / path / (OCI_WH + name)).write_bytes(b"")
        if node.opaque == "oci":
            (root / path / OCI_OPQ).write_bytes(b"")
        elif node.opaque == "xattr":
            os.setxattr(root / path, records + "opaque", b"y")
        elif any(isinstance(child, Whiteout) and child.form == "xattr" for child in node.children.values()):
            os.setxattr(root / path, records + "opaque", b"x")  # holds xattr whiteouts
        if node.redirect is not None:
            os.setxattr(root / path, records + "redirect", os.fsencode(node.redirect))
    # metadata and times last, deepest first: creating children touches parents
    for n, (path, node) in reversed(list(enumerate([("", tree), *meta]))):
        full = root / path if path else root
        if isinstance(node, (File, Dir)):
            os.chown(full, *node.owner)
            os.chmod(full, node.mode)  # after chown, which clears set-id bits
            for name, value in node.xattrs:
                os.setxattr(full, name, value)
        elif isinstance(node, Fifo):
            os.chmod(full, node.mode)
        mtime = FIXED_NS + 1_000_003 * (n + 1)
        os.utime(full, ns=(mtime, mtime), follow_symlinks=False)
    # flags after every time: an immutable directory's times cannot be set (a flag changes only the ctime)
    for path, node in [("", tree), *meta]:
        if isinstance(node, (File, Dir)) and node.flags:
            _chattr(str(root / path if path else root), node.flags, 0, "flags")


def clear_protection(root: Path | str) -> None:
    """Immutable and append-only off everything under root (mount points left alone),
    so that it can be removed."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not (os.path.isdir(path) or os.path.isfile(path)) or os.path.ismount(path):
                continue
            if inode_flags(path) & PROTECTION_FLAGS:
                _chattr(path, 0, PROTECTION_FLAGS, "flags")


def walk_spec_dirs(tree: Dir) -> Iterator[tuple[str, Dir]]:
    """(path, Dir) of tree itself ("") and every directory below it."""
    yield "", tree
    for path, node in walk_spec(tree):
        if isinstance(node, Dir):
            yield path, node


# -- operations ------------------------------------------------------------------

_OPEN_FLAGS = {
    "create": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "excl": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "overwrite": os.O_WRONLY,
    "append": os.O_WRONLY | os.O_APPEND,
    "trunc": os.O_WRONLY | os.O_TRUNC,
}


def _write(p: str, how: str, data: bytes, mode: int = 0o644) -> None:
    # O_NONBLOCK: opening a FIFO for writing fails (ENXIO) instead of waiting for a reader
    fd = os.open(p, _OPEN_FLAGS[how] | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _by_writer(p: str, write: Callable[[int], object]) -> None:
    fd = os.open(p, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        write(fd)
    finally:
        os.close(fd)


def _copy_range(src: str, dst: str) -> None:
    """The start of src copied over the start of dst (copy_file_range; dst opened for
    writing, not truncated)."""
    fd_in = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        _by_writer(dst, lambda fd_out: os.copy_file_range(fd_in, fd_out, 100, 0, 0))
    finally:
        os.close(fd_in)


def _read(p: str) -> None:
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO opens at once
    try:
        os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def _touch(p: str, mtime_ns: int) -> None:
    os.utime(p, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


_NODES = {  # mknod kinds: (mode, device)
    "chr": (stat.S_IFCHR | 0o640, os.makedev(1, 3)),
    "chr-0-0": (stat.S_IFCHR | 0o640, os.makedev(0, 0)),  # what a whiteout looks like
    "sock": (stat.S_IFSOCK | 0o640, 0),
}


def _p(root: str, rel: str) -> str:
    return f"{root}/{rel}"


_LIBC = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD, _AT_SYMLINK_FOLLOW, _AT_EMPTY_PATH = -100, 0x400, 0x1000


def link_open_file(fd: int, dst: str, how: str) -> None:
    """Name the file open as fd dst: by the descriptor itself (AT_EMPTY_PATH, which needs
    CAP_DAC_READ_SEARCH) or through /proc/self/fd, as programs without it do."""
    if how == "empty-path":
        result = _LIBC.linkat(fd, b"", _AT_FDCWD, os.fsencode(dst), _AT_EMPTY_PATH)
    else:
        result = _LIBC.linkat(_AT_FDCWD, f"/proc/self/fd/{fd}".encode(), _AT_FDCWD, os.fsencode(dst), _AT_SYMLINK_FOLLOW)
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), dst)


RENAME_FLAGS = {"noreplace": 1, "exchange": 2, "whiteout": 4}  # renameat2's RENAME_*
FALLOC_KEEP_SIZE, FALLOC_PUNCH_HOLE, FALLOC_ZERO_RANGE = 0x01, 0x02, 0x10  # fallocate's FALLOC_FL_*


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _LIBC.fallocate(fd, mode, ctypes.c_long(offset), ctypes.c_long(length)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _renameat2(src: str, dst: str, how: str) -> None:
    if _LIBC.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), ctypes.c_uint(RENAME_FLAGS[how])) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), dst)


def _tmpfile(d: str, dst: str | None, data: bytes, how: str) -> None:
    """An unnamed file made in d (O_TMPFILE; "excl": one that may never get a name),
    written, then linked in as dst unless dst is None."""
    fd = os.open(d, os.O_TMPFILE | os.O_RDWR | (os.O_EXCL if how == "excl" else 0) | os.O_CLOEXEC, 0o640)
    try:
        os.write(fd, data)
        if dst is not None:
            link_open_file(fd, dst, how)
    finally:
        os.close(fd)


# The inode-flag ioctls (linux/fs.h), named here: the harness imports nothing of the driver's.
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS = 0x80086601, 0x40086602
IMMUTABLE_FL, APPEND_FL = 0x10, 0x20  # chattr +i, +a
PROTECTION_FLAGS = IMMUTABLE_FL | APPEND_FL
FS_IOC_FSGETXATTR, FS_IOC_FSSETXATTR = 0x801C581F, 0x401C5820


def inode_flags(p: str) -> int:
    """What lsattr shows (FS_IOC_GETFLAGS), of a file or directory."""
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return struct.unpack_from("<i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(8)))[0]
    finally:
        os.close(fd)


def _chattr(p: str, add: int, remove: int, how: str) -> None:
    """chattr: inode flags added and removed, with FS_IOC_SETFLAGS (how "flags") or, as
    xfs_io does, with the fsx_xflags of FS_IOC_FSSETXATTR (how "xflags": add and remove
    are FS_XFLAG_* bits then)."""
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if how == "flags":
            flags = struct.unpack_from("<i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(8)))[0]
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("<q", (flags | add) & ~remove))
        else:
            attr = bytearray(fcntl.ioctl(fd, FS_IOC_FSGETXATTR, bytes(28)))
            struct.pack_into("<I", attr, 0, (struct.unpack_from("<I", attr)[0] | add) & ~remove)
            fcntl.ioctl(fd, FS_IOC_FSSETXATTR, bytes(attr))
    finally:
        os.close(fd)


# name -> (function of (root, *args)); paths in args are relative to the mount
_OPS: dict[str, Callable[..., None]] = {
    "read": lambda r, path: _read(_p(r, path)),
    "write": lambda r, path, how, data, mode=0o644: _write(_p(r, path), how, data, mode),
    "truncate": lambda r, path, length: os.truncate(_p(r, path), length),
    "copyrange": lambda r, src, dst: _copy_range(_p(r, src), _p(r, dst)),
    "allocate": lambda r, path, length: _by_writer(_p(r, path), lambda fd: _fallocate(fd, 0, 0, length)),
    "mkdir": lambda r, path, mode=0o755: os.mkdir(_p(r, path), mode),
    "rmdir": lambda r, path: os.rmdir(_p(r, path)),
    "unlink": lambda r, path: os.unlink(_p(r, path)),
    "rename": lambda r, src, dst: os.rename(_p(r, src), _p(r, dst)),
    "rename2": lambda r, src, dst, how: _renameat2(_p(r, src), _p(r, dst), how),  # how: a key of RENAME_FLAGS
    "symlink": lambda r, target, path: os.symlink(target, _p(r, path)),
    "link": lambda r, src, dst: os.link(_p(r, src), _p(r, dst), follow_symlinks=False),
    "chmod": lambda r, path, mode: os.chmod(_p(r, path), mode),
    "chown": lambda r, path, uid, gid: os.chown(_p(r, path), uid, gid, follow_symlinks=False),
    "utime": lambda r, path, mtime_ns: _touch(_p(r, path), mtime_ns),
    "setxattr": lambda r, path, name, value: os.setxattr(_p(r, path), name, value, follow_symlinks=False),
    "removexattr": lambda r, path, name: os.removexattr(_p(r, path), name, follow_symlinks=False),
    "mkfifo": lambda r, path, mode=0o644: os.mkfifo(_p(r, path), mode),
    "mknod": lambda r, path, kind: os.mknod(_p(r, path), *_NODES[kind]),
    "listdir": lambda r, path: os.listdir(_p(r, path)),
    "exec": lambda r, path: _exec(_p(r, path)),
    "tmpfile": lambda r, d, dst, data, how: _tmpfile(_p(r, d), None if dst is None else _p(r, dst), data, how),
    "chattr": lambda r, path, add, remove=0, how="flags": _chattr(_p(r, path), add, remove, how),
    "touch": lambda r, path: os.utime(_p(r, path)),  # no times given: both now (an append-only file allows it)
}


def _exec(p: str) -> None:
    """execve(2) of p; a refused exec raises its errno (subprocess reports the child's)."""
    subprocess.run([p], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


@dataclass(frozen=True, repr=False)
class Op:
    """One system call on paths relative to the mount point, made by ``uid`` (its group: the same
    number) with the supplementary ``groups`` and the capabilities ``caps``."""

    name: str
    args: tuple[object, ...]
    uid: int = 0
    groups: tuple[int, ...] = ()
    caps: tuple[int, ...] = ()  # capabilities the unprivileged caller keeps

    def __repr__(self) -> str:
        mode_at = _MODE_ARG.get(self.name)
        args = ", ".join(f"{a:#o}" if i == mode_at else repr(a) for i, a in enumerate(self.args))
        return (f"{self.name}({args})" + (f" as {self.uid}" if self.uid else "") + (f" in {self.groups}" if self.groups else "")
                + (f" with capabilities {self.caps}" if self.caps else ""))

    _repr_pretty_ = _pretty


_MODE_ARG = {"write": 3, "mkdir": 1, "chmod": 1, "mkfifo": 1}  # which argument is a mode: shown in octal


REMOUNT = "remount"  # an operation on the pair: both unmounted and mounted again (Pair.remount)
# Operations on files and directories the pair holds open (Pair.held), by root: open
# one, read it from its start, write through it (then fsync, so that the upper layers
# compare), fstat it, change it by its descriptor (fchmod, fchown, futimens, ftruncate,
# fsetxattr, fremovexattr), allocate in it or punch or zero a range (fallocate), read
# its xattrs, open it again through /proc/self/fd (to read it, or to append a byte),
# write through a shared mapping of it (then msync), copy a range of one held file into
# another or itself (copy_file_range, then fsync), close it. Each names an entry by an
# index taken modulo their number: the regular
# files (or, to hold one, the directories) the kernel's mount shows, or the held ones;
# with none held, the file of that index is opened read-write first. What is held
# stays held while its names go, and FD_REMOVE removes the name one was opened by
# (unlink, or rmdir for a directory: whatever that name holds by then), by the
# operation's caller, as a plain unlink or rmdir (Pair.held_removal).
HOLD, FD_READ, FD_WRITE, FD_STAT, FD_CLOSE = "hold", "fdread", "fdwrite", "fdstat", "fdclose"
FD_CHANGE, FD_XATTRS, FD_REOPEN, FD_ALLOCATE = "fdchange", "fdxattrs", "fdreopen", "fdallocate"
FD_MAP_WRITE, FD_COPY = "fdmapwrite", "fdcopy"
HELD_OPS = (HOLD, FD_READ, FD_WRITE, FD_STAT, FD_CLOSE, FD_CHANGE, FD_XATTRS, FD_REOPEN, FD_ALLOCATE, FD_MAP_WRITE,
            FD_COPY)
FD_REMOVE = "fdremove"  # not run as such: Pair.held_removal makes it an unlink or rmdir
RMTREE = "rmtree"  # not run as such: tree_removal makes it the unlinks and rmdirs of an rm -rf
_HOLD_FLAGS = {"r": os.O_RDONLY, "rw": os.O_RDWR, "append": os.O_WRONLY | os.O_APPEND, "trunc": os.O_RDWR | os.O_TRUNC,
               "dir": os.O_RDONLY | os.O_DIRECTORY}


def _fd_write(fd: int, data: bytes) -> int:
    written = os.write(fd, data)
    os.fsync(fd)
    return written


def _fd_map_write(fd: int, data: bytes) -> int:
    """data written from the start of the file through a shared mapping of all of it, as
    far as the file reaches (past its end a mapping has no page), then msync'd: how
    much was written."""
    size = os.fstat(fd).st_size
    if not size:
        return 0  # nothing to map
    with mmap.mmap(fd, size) as mapped:
        n = min(len(data), size)
        mapped[:n] = data[:n]
        mapped.flush()
    return n


def _fd_copy(src: int, dst: int, src_offset: int, dst_offset: int, length: int) -> int:
    copied = os.copy_file_range(src, dst, length, src_offset, dst_offset)
    os.fsync(dst)
    return copied


def _fd_stat(fd: int) -> tuple[object, ...]:
    st = os.fstat(fd)
    return _kind(st.st_mode, st.st_rdev), f"{stat.S_IMODE(st.st_mode):04o}", st.st_uid, st.st_gid, st.st_size, st.st_nlink


# FD_CHANGE's kinds: (fd, argument)
_CHANGE_BY_FD: dict[str, Callable[[int, Any], None]] = {
    "chmod": os.fchmod,
    "chown": lambda fd, owner: os.fchown(fd, owner, owner),
    "utime": lambda fd, ns: os.utime(fd, ns=(ns, ns)),
    "truncate": os.ftruncate,
    "setxattr": lambda fd, value: os.setxattr(fd, "user.k", value),
    "removexattr": os.removexattr,
}


def _fd_xattrs(fd: int) -> list[tuple[str, bytes]]:
    return sorted((name, os.getxattr(fd, name)) for name in os.listxattr(fd))


def _fd_reopen(fd: int, how: str) -> object:
    """What open("/proc/self/fd/N") of a held entry reads, or what a byte appended
    through it writes: the entry's real file, its names gone or not."""
    flags = os.O_WRONLY | os.O_APPEND if how == "append" else os.O_RDONLY
    new = os.open(f"/proc/self/fd/{fd}", flags | os.O_CLOEXEC)
    try:
        return os.write(new, b"r") if how == "append" else os.read(new, 4096)
    finally:
        os.close(new)


_ON_HELD: dict[str, Callable[..., object]] = {
    FD_READ: lambda fd: os.pread(fd, 4096, 0),
    FD_WRITE: _fd_write,
    FD_STAT: _fd_stat,
    FD_CHANGE: lambda fd, kind, arg: _CHANGE_BY_FD[kind](fd, arg),
    FD_XATTRS: _fd_xattrs,
    FD_REOPEN: _fd_reopen,
    FD_ALLOCATE: _fallocate,  # (fd, mode, offset, length)
    FD_MAP_WRITE: _fd_map_write,
}


def regular_files(root: Path | str) -> list[str]:
    """The regular files below root, sorted (names listed but not found are left out:
    see ``diff_views``)."""
    root = os.fspath(root)
    found = []
    for parent, _, names in os.walk(root):
        for name in names:
            path = os.path.join(parent, name)
            try:
                if stat.S_ISREG(os.lstat(path).st_mode):
                    found.append(os.path.relpath(path, root))
            except FileNotFoundError:
                continue
    return sorted(found)


def directories(root: Path | str) -> list[str]:
    """The directories below root and root itself ("."), sorted."""
    root = os.fspath(root)
    return sorted(os.path.relpath(parent, root) for parent, _, _ in os.walk(root))


def _renamed_over_dir(fd: int) -> bool:
    """Whether fd is on a directory whose name a rename gave to another entry: its path
    (as /proc shows the name of an entry removed) names something again."""
    if not stat.S_ISDIR(os.fstat(fd).st_mode):
        return False
    link = os.readlink(f"/proc/self/fd/{fd}")
    return link.endswith(" (deleted)") and os.path.lexists(link.removesuffix(" (deleted)"))


def _answer(call: Callable[[], object]) -> object:
    """What call returned, or the name of the errno it raised."""
    try:
        return call()
    except OSError as exc:
        return errname(exc.errno)


def op(name: str, *args: object, uid: int = 0, groups: tuple[int, ...] = (), caps: tuple[int, ...] = ()) -> Op:
    assert name in _OPS or name in (REMOUNT, FD_REMOVE, RMTREE, *HELD_OPS), name
    return Op(name, args, uid, groups, caps)


def tree_removal(root: Path | str, operation: Op) -> list[Op]:
    """RMTREE as the removals an ``rm -rf`` of a directory makes, by its caller: the
    directory of the operation's index (modulo their number, "." first: see
    ``directories``), as root sees the mount at root; what is below a directory first,
    an unlink of each non-directory and an rmdir of each directory, no symlink
    followed, names sorted so that both mounts get the same calls. Each is run and
    compared on its own, whatever the ones before answered (rm -rf goes on past a
    failure)."""
    def below(rel: str) -> Iterator[Op]:
        path = _p(os.fspath(root), rel)
        try:
            is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
            names = sorted(os.listdir(path)) if is_dir else []
        except OSError:
            is_dir, names = False, []
        for name in names:
            yield from below(os.path.normpath(os.path.join(rel, name)))
        yield dataclasses.replace(operation, name="rmdir" if is_dir else "unlink", args=(rel,))
    found = directories(root)
    return list(below(found[int(operation.args[0]) % len(found)]))


def _call(root: str, operation: Op) -> int | None:
    try:
        _OPS[operation.name](root, *operation.args)
    except OSError as exc:
        return exc.errno
    return None


def apply(root: Path | str, operation: Op) -> int | None:
    """Run operation on the mount at root: its errno, or None on success.

    An operation of another user runs in a child process with that uid and
    gid and the operation's supplementary groups and capabilities (none by
    default); it starts in the mount's root, so the
    test's own (private) directories above it need not be searchable.
    """
    if not operation.uid:
        return _call(os.fspath(root), operation)

    def call() -> None:
        code = _call(".", operation)
        if code is not None:
            raise OSError(code, os.strerror(code))

    return errno_as(operation.uid, call, groups=operation.groups, cwd=root, caps=operation.caps)


def errname(code: int | None) -> str:
    return "ok" if code is None else errno.errorcode.get(code, str(code))


# -- snapshots -------------------------------------------------------------------


@dataclass(frozen=True)
class Meta:
    """What a merged view shows of one path."""

    kind: str
    mode: str  # octal permission bits, as text for readable diffs
    uid: int
    gid: int
    size: int
    nlink: int
    mtime: int | str  # a fixed mtime exactly, else "now"
    content: bytes | str | None  # regular files: bytes, or a hash when long
    target: str | None
    xattrs: tuple[tuple[str, bytes], ...]
    flags: int | str | None = None  # lsattr of a file or directory


def _kind(mode: int, rdev: int = 1) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode):
        return "whiteout" if rdev == 0 else "chr"
    if stat.S_ISSOCK(mode):
        return "sock"
    return "other"


def _content(path: str) -> bytes | str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    return data if len(data) <= 48 else "sha256:" + hashlib.sha256(data).hexdigest()[:16]


# overlayfs's and the driver's own xattrs in a layer: their values are implementation details.
# A user's overlay.* xattr is kept escaped there (trusted.overlay.overlay.*), by both alike.
PRIVATE_XATTRS = ("trusted.overlay.", "user.overlay.", "trusted.unionfs.", "user.unionfs.")
ESCAPED_XATTRS = ("trusted.overlay.overlay.", "user.overlay.overlay.")


def _xattrs(path: str, in_layer: bool) -> tuple[tuple[str, bytes], ...]:
    """Every xattr, sorted (user.*, trusted.*, security.*); in_layer: the records of overlayfs
    and of the driver left out. Through a mount every name shows: neither shows a record."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        return (("<listxattr>", errname(exc.errno).encode()),)
    if in_layer:
        names = [n for n in names if not n.startswith(PRIVATE_XATTRS) or n.startswith(ESCAPED_XATTRS)]
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))


def _mtime(ns: int) -> int | str:
    return ns if ns < _FIXED_LIMIT else "now"


def _walk(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of everything below root, sorted, without following symlinks."""
    stack = [""]
    while stack:
        rel = stack.pop()
        names = sorted(os.listdir(_p(root, rel) if rel else root), reverse=True)
        for name in names:
            child = f"{rel}/{name}" if rel else name
            st = os.lstat(_p(root, child))
            yield child, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(child)


@dataclass(frozen=True)
class View:
    """A merged view: every path's Meta, and the names that share an inode."""

    entries: dict[str, Meta]
    listing_dupes: tuple[str, ...]  # directories whose readdir listed a name twice
    ghosts: tuple[str, ...]  # names readdir listed but lookup did not find
    dino_mismatch: tuple[str, ...]  # names whose readdir d_ino is not their st_ino
    same_inode: frozenset[frozenset[str]]
    numbers: dict[str, int] = field(default_factory=dict)  # each path's st_ino: which entries kept theirs


def through_two_names(root: Path, first: str, second: str) -> list[object]:
    """What a program sees through two names of one file, with every cache warm:
    writes through one name read back through the other, the link count and
    ctime of the other after one is unlinked."""
    one, other = root / first, root / second
    seen: list[object] = [one.read_bytes(), other.read_bytes()]  # both names' pages cached
    for writer, reader, data in ((one, other, b"AB"), (other, one, b"CD")):
        with open(writer, "r+b") as f:
            f.write(data)
        seen.append(reader.read_bytes())
    seen.append((one.stat().st_nlink, other.stat().st_nlink))
    before = other.stat().st_ctime_ns
    time.sleep(0.01)  # a ctime of its own for the unlink
    one.unlink()
    after = other.stat()
    seen += [after.st_nlink, after.st_ctime_ns > before, other.read_bytes()]
    return seen


def drop_caches() -> None:
    """Forget dentries and inodes: a FUSE mount re-asks the driver instead of answering from its caches."""
    with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as f:
        f.write("2")


class CachesDropped:
    """The kernel's cached names and inodes dropped every ``every`` seconds while
    the block runs: it forgets directories and files in use and looks them up
    again, its FORGETs racing the LOOKUPs that follow (how the names of a file
    whose directory the kernel forgot went stale). ``count``: drops so far."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            drop_caches()
            self.count += 1

    def __enter__(self) -> CachesDropped:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _meta(path: str, st: os.stat_result, lsattr: bool = True) -> Meta:
    kind = _kind(st.st_mode, st.st_rdev)
    return Meta(
        kind=kind,
        mode=f"{stat.S_IMODE(st.st_mode):04o}",
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size,
        nlink=st.st_nlink,
        mtime=_mtime(st.st_mtime_ns),
        content=_content(path) if kind == "file" else None,
        target=os.readlink(path) if kind == "symlink" else None,
        xattrs=_xattrs(path, in_layer=False),
        flags=_flags(path) if lsattr and kind in ("file", "dir") else None,
    )


def _flags(path: str) -> int | str:
    try:
        return inode_flags(path)
    except OSError as exc:
        return f"<{errname(exc.errno)}>"


def named_view(root: Path | str, rels: Iterable[str], lsattr: bool = True,
               ) -> tuple[dict[str, Meta | None], frozenset[frozenset[str]]]:
    """What a program that knows the names sees: each looked up by its path, with
    no listing of a directory first (READDIRPLUS would refresh the attributes the
    kernel holds). Returns each path's Meta (None where it is missing) and the
    names that share an inode."""
    root = os.fspath(root)
    entries: dict[str, Meta | None] = {}
    inodes: dict[int, set[str]] = {}
    for rel in rels:
        path = _p(root, rel) if rel != "." else root
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            entries[rel] = None
            continue
        entries[rel] = _meta(path, st, lsattr)
        inodes.setdefault(st.st_ino, set()).add(rel)
    return entries, frozenset(frozenset(v) for v in inodes.values() if len(v) > 1)


def view(root: Path | str, lsattr: bool = True) -> View:
    """Everything a merged view shows: read through the mount at root (``lsattr``: inode
    flags too)."""
    root = os.fspath(root)
    entries: dict[str, Meta] = {}
    inodes: dict[int, set[str]] = {}
    dupes: list[str] = []
    ghosts: list[str] = []
    mismatch: list[str] = []

    numbers: dict[str, int] = {}

    def record(rel: str, st: os.stat_result) -> None:
        entries[rel] = _meta(_p(root, rel) if rel != "." else root, st, lsattr)
        inodes.setdefault(st.st_ino, set()).add(rel)
        numbers[rel] = st.st_ino

    record(".", os.lstat(root))
    todo = [""]
    while todo:
        rel = todo.pop()
        with os.scandir(_p(root, rel) if rel else root) as it:
            listed = sorted((e.name, e.inode()) for e in it)
        if len(listed) != len({name for name, _ in listed}):
            dupes.append(rel or ".")
        for name, d_ino in dict(listed).items():
            child = f"{rel}/{name}" if rel else name
            try:
                st = os.lstat(_p(root, child))
            except FileNotFoundError:
                ghosts.append(child)
                continue
            if st.st_ino != d_ino:
                mismatch.append(child)
            record(child, st)
            if stat.S_ISDIR(st.st_mode):
                todo.append(child)
    return View(entries, tuple(sorted(dupes)), tuple(sorted(ghosts)), tuple(mismatch),
                frozenset(frozenset(v) for v in inodes.values() if len(v) > 1), numbers)


def record(path: str, name: str) -> bytes | None:
    """overlayfs's record name (opaque, whiteout, redirect, protattr) on path: in
    trusted.overlay.*, or in user.overlay.* where a mount with userxattr reads and writes
    them (no layer here has both)."""
    value = _xattr(path, "trusted.overlay." + name)
    return value if value is not None else _xattr(path, "user.overlay." + name)


def _xattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise


def lower_dirs(lowers: Sequence[Path | str], rel: str) -> list[str]:
    """The directories of the lower layers (top first) that make up the merged
    directory rel, as overlayfs finds them, path component by component: a 0/0
    or xattr whiteout or a non-directory ends the merge, an opaque directory is
    the last, and a redirect leads the layers below to the directory's old name
    in the same parent (relative) or to a path from their root (absolute).
    Empty where the lowers show no directory at rel."""
    return [path for _, path in _dirs_below([os.fspath(low) for low in lowers], 0, rel)]


def _dirs_below(roots: list[str], start: int, rel: str) -> list[tuple[int, str]]:
    dirs = [(i, roots[i]) for i in range(start, len(roots))]
    for name in (n for n in rel.split("/") if n and n != "."):
        dirs = _child_dirs(roots, dirs, name)
        if not dirs:
            break
    return dirs


def _child_dirs(roots: list[str], parents: list[tuple[int, str]], name: str) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for i, parent in parents:
        path = _p(parent, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            break  # a whiteout (either form) or a non-directory hides what is below
        found.append((i, path))
        if record(path, "opaque") == b"y":
            break
        target = record(path, "redirect")
        if target is not None:
            text = os.fsdecode(target)
            if text.startswith("/"):
                found += _dirs_below(roots, i + 1, text)
                break
            name = text
    return found


def lower_is_dir(lowers: Sequence[Path | str], rel: str) -> bool:
    """Whether the lower layers alone (top first) show a directory at rel."""
    return bool(lower_dirs(lowers, rel))


def lower_whiteout(lowers: Sequence[Path | str], rel: str) -> bool:
    """Whether a lower directory of rel's merged parent holds a whiteout (either form) named like rel."""
    parent, _, name = rel.rpartition("/")
    for d in lower_dirs(lowers, parent):
        path = _p(d, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if _kind(st.st_mode, st.st_rdev) == "whiteout" or is_xattr_whiteout(path, st):
            return True
    return False


@dataclass(frozen=True)
class UpperMeta:
    """An upper-layer entry as overlayfs semantics see it (not how it was made)."""

    kind: str  # "whiteout" for a 0/0 character device
    opaque: bytes | None  # overlay.opaque
    mode: str | None
    uid: int | None
    gid: int | None
    nlink: int | None
    content: bytes | str | None
    target: str | None
    xattrs: tuple[tuple[str, bytes], ...]
    protattr: bytes | None = None  # overlay.protattr: immutable, append-only


def upper_view(upper: Path | str, lowers: Sequence[Path | str] = (), records: str = "trusted.overlay.") -> dict[str, UpperMeta]:
    """The upper layer, semantically: kinds, opaque flags, data and metadata.

    Left out on purpose: overlay.* xattrs other than the opaque and protattr records
    (in ``records``, the prefix overlayfs keeps them in: user.overlay. with userxattr;
    origin, impure, redirect values differ between implementations), unionfs.*, mtimes
    (the merged view compares those), and the mode, owner and link count of
    whiteouts (overlayfs shares one whiteout inode between many names).
    The opaque flag counts only where the ``lowers`` show a directory at the
    same path: overlayfs also marks new directories in a merged parent opaque
    as an optimization (ovl_create_upper, ovl_rename), where it hides nothing.
    """
    upper = os.fspath(upper)
    out: dict[str, UpperMeta] = {}
    for rel, st in _walk(upper):
        path = _p(upper, rel)
        kind = _kind(st.st_mode, st.st_rdev)
        if kind == "whiteout":
            out[rel] = UpperMeta(kind, None, None, None, None, None, None, None, ())
            continue
        opaque = None
        if kind == "dir" and lower_is_dir(lowers, rel):
            opaque = _xattr(path, records + "opaque")
        out[rel] = UpperMeta(
            kind=kind,
            opaque=opaque,
            mode=f"{stat.S_IMODE(st.st_mode):04o}",
            uid=st.st_uid,
            gid=st.st_gid,
            nlink=None if kind == "dir" else st.st_nlink,
            content=_content(path) if kind == "file" else None,
            target=os.readlink(path) if kind == "symlink" else None,
            xattrs=_xattrs(path, in_layer=True),
            protattr=_xattr(path, records + "protattr"),
        )
    return out


def layer_state(root: Path | str) -> dict[str, tuple[object, ...]]:
    """Everything a write could change in a layer, the driver's own xattrs and
    the ctime included, for checking that the lower layers stay untouched."""
    root = os.fspath(root)
    out: dict[str, tuple[object, ...]] = {}
    for rel, st in _walk(root):
        path = _p(root, rel)
        kind = _kind(st.st_mode, st.st_rdev)
        names = sorted(os.listxattr(path, follow_symlinks=False))
        out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size, st.st_nlink, st.st_ino,
                    st.st_mtime_ns, st.st_ctime_ns, _content(path) if kind == "file" else None,
                    os.readlink(path) if kind == "symlink" else None,
                    tuple((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))
    return out


def diff_maps(kernel: Mapping[str, object], driver: Mapping[str, object]) -> list[str]:
    """Readable differences of two path -> value maps, kernel first."""
    out = []
    for path in sorted(set(kernel) | set(driver)):
        k, d = kernel.get(path), driver.get(path)
        if k == d:
            continue
        if k is None or d is None:
            out.append(f"{path}: kernel={k!r} driver={d!r}")
            continue
        fields = [f"{f.name}: kernel={getattr(k, f.name)!r} driver={getattr(d, f.name)!r}"
                  for f in dataclasses.fields(k) if getattr(k, f.name) != getattr(d, f.name)]  # type: ignore[arg-type]
        out.append(f"{path}: " + "; ".join(fields))
    return out


def is_xattr_whiteout(path: str, st: os.stat_result) -> bool:
    """An empty regular file with overlay.whiteout: overlayfs's other whiteout."""
    return stat.S_ISREG(st.st_mode) and not st.st_size and record(path, "whiteout") is not None


def redirected(upper: Path | str, rel: str) -> str:
    """The path below the upper layer that rel's lower parts come from (overlay.redirect of its dirs)."""
    parts = rel.split("/")
    lower: list[str] = []
    for i, name in enumerate(parts):
        lower.append(name)
        path = _p(os.fspath(upper), "/".join(parts[: i + 1]))
        if os.path.isdir(path) and not os.path.islink(path):
            target = record(path, "redirect")
            if target is not None:
                text = os.fsdecode(target)
                lower = text.strip("/").split("/") if text.startswith("/") else [*lower[:-1], text]
    return "/".join(lower)


def diff_views(
    kernel: View, driver: View, lowers: Sequence[Path | str] = (), kernel_upper: Path | str | None = None
) -> list[str]:
    """Differences of two merged views over the same ``lowers``.

    Deliberate difference: overlayfs passes readdir of a directory that only
    one lower layer has straight to that directory (no OVL_WHITEOUTS flag), so
    it lists 0/0 whiteouts that lookup then does not find, and xattr whiteouts
    where no overlay.opaque=x says they are there. The driver never lists
    0/0 whiteouts. Such kernel-only names are accepted when they are
    whiteouts of a lower layer; any other name listed but not found is a
    difference.
    """
    out = diff_maps(kernel.entries, driver.entries)

    def is_lower_whiteout(rel: str) -> bool:
        return lower_whiteout(lowers, redirected(kernel_upper, rel) if kernel_upper is not None else rel)

    kernel_ghosts = tuple(g for g in kernel.ghosts if not is_lower_whiteout(g))
    if kernel_ghosts or driver.ghosts:
        out.append(f"names listed but not found: kernel={kernel_ghosts} driver={driver.ghosts}")
    if kernel.listing_dupes != driver.listing_dupes:
        out.append(f"duplicate readdir names in: kernel={kernel.listing_dupes} driver={driver.listing_dupes}")
    if kernel.dino_mismatch != driver.dino_mismatch:
        out.append(f"readdir d_ino is not st_ino: kernel={kernel.dino_mismatch} driver={driver.dino_mismatch}")
    if kernel.same_inode != driver.same_inode:
        fmt = lambda groups: sorted(sorted(g) for g in groups)  # noqa: E731
        out.append(f"names sharing an inode: kernel={fmt(kernel.same_inode)} driver={fmt(driver.same_inode)}")
    return out


def renamed(path: str, renames: Sequence[tuple[str, str]]) -> str:
    """path's name after renames, in order (a renamed directory takes its entries along)."""
    for old, new in renames:
        if path == old or path.startswith(old + "/"):
            path = new + path[len(old):]
    return path


def kept_numbers(before: Mapping[str, int], after: Mapping[str, int], renames: Sequence[tuple[str, str]]) -> set[str]:
    """The paths (named as before) whose entry shows the st_ino it had, at its name now."""
    return {path for path, number in before.items() if after.get(renamed(path, renames)) == number}


def diff_identity(before: tuple[Mapping[str, int], Mapping[str, int]], after: tuple[Mapping[str, int], Mapping[str, int]],
                  renames: Sequence[tuple[str, str]]) -> list[str]:
    """Entries that kept their inode number on one mount and not on the other
    (a copy-up keeps it; a copy-up that breaks a lower hard link does not)."""
    kernel, driver = (kept_numbers(b, a, renames) for b, a in zip(before, after, strict=True))
    if kernel == driver:
        return []
    return [f"kept their inode number: on the kernel only {sorted(kernel - driver)}, "
            f"on the driver only {sorted(driver - kernel)}"]


# -- a kernel mount and a driver mount over identical trees ------------------------

def records_prefix(kernel_options: Sequence[str]) -> str:
    """Where overlayfs mounted with kernel_options keeps its records (opaque, whiteout,
    redirect, protattr): user.overlay.* with userxattr, trusted.overlay.* otherwise."""
    return "user.overlay." if "userxattr" in kernel_options else "trusted.overlay."


KERNEL_OPTIONS = ("redirect_dir=on",)  # the driver always redirects renamed merged dirs; overlayfs's default here is off (EXDEV)


@dataclass
class Pair:
    """The same lower layers under kernel overlayfs and under the driver, with separate uppers."""

    kernel: Stack
    driver: Stack
    log: list[str] = field(default_factory=list)
    # the driver's lower layers as built, before the mount: nothing may change them
    lowers_built: list[dict[str, tuple[object, ...]]] = field(default_factory=list)
    lsattr: bool = True  # inode flags compared: the fusepy engine answers no ioctl
    # Each mount's st_ino of every path at the last check, and the renames done since
    # (old, new): which entries kept their number is compared at the next check.
    numbers: tuple[dict[str, int], dict[str, int]] | None = None
    renames: list[tuple[str, str]] = field(default_factory=list)
    kernel_options: tuple[str, ...] = ()  # each mount's options, for a remount
    driver_options: tuple[str, ...] = ()
    held: list[tuple[int, int]] = field(default_factory=list)  # (kernel's fd, driver's fd) of each entry held open
    held_names: dict[tuple[int, int], tuple[str, bool]] = field(default_factory=dict)  # path opened, a directory?

    @property
    def records(self) -> str:
        """The prefix of overlayfs's records in the uppers."""
        return records_prefix(self.kernel_options)

    def remount(self) -> None:
        """Both unmounted and mounted again over the layers as they are: what an
        entry is (its inode number, its names) must outlive the mount. Held files
        are closed first, as a mount in use cannot go."""
        self.close_held()
        remount_kernel(self.kernel, *self.kernel_options)
        remount_driver(self.driver, *self.driver_options)
        self.log.append("remount")

    def run(self, operation: Op, accept: Callable[[int | None, int | None], bool] | None = None) -> int | None:
        """Apply operation to both mounts; both must answer the same errno, or answers
        that ``accept`` (kernel's, driver's) takes for a documented difference."""
        if operation.name == REMOUNT:
            self.remount()
            return None
        if operation.name in HELD_OPS:
            return self._on_held(operation)
        k = apply(self.kernel.mnt, operation)
        d = apply(self.driver.mnt, operation)
        self.log.append(f"{operation!r} -> kernel {errname(k)}, driver {errname(d)}")
        assert k == d or (accept is not None and accept(k, d)), "errno differs:\n  " + "\n  ".join(self.log)
        if operation.name == "rename" and k is None and d is None:
            self.renames.append(tuple(os.path.normpath(arg) for arg in operation.args))  # type: ignore[arg-type]
        return k

    def held_removal(self, operation: Op) -> Op | None:
        """FD_REMOVE as the removal it stands for: an unlink (rmdir for a directory) of
        the name that the held entry it picks was opened by, by the same caller; None
        with nothing held."""
        if not self.held:
            return None
        path, is_dir = self.held_names[self.held[int(operation.args[0]) % len(self.held)]]  # type: ignore[call-overload]
        return dataclasses.replace(operation, name="rmdir" if is_dir else "unlink", args=(path,))

    def _on_held(self, operation: Op) -> int | None:
        """A held-file operation on both mounts: the same answer (data, attributes or
        errno name) from each."""
        answers: list[object]
        if operation.name == HOLD:
            index, how = operation.args
            files = directories(self.kernel.mnt) if how == "dir" else regular_files(self.kernel.mnt)
            if not files:
                return None
            path = files[int(index) % len(files)]  # type: ignore[call-overload]
            answers = [_answer(lambda mnt=mnt: os.open(_p(os.fspath(mnt), path), _HOLD_FLAGS[str(how)] | os.O_CLOEXEC))
                       for mnt in (self.kernel.mnt, self.driver.mnt)]
            fds = [a for a in answers if isinstance(a, int)]
            if len(fds) == 2:
                self.held.append((fds[0], fds[1]))
                self.held_names[(fds[0], fds[1])] = (path, how == "dir")
                answers = ["ok", "ok"]
            for fd in fds if len(fds) == 1 else ():
                os.close(fd)
            operation = dataclasses.replace(operation, args=(path, how))  # logged by its name
        else:
            if not self.held:
                self._on_held(op(HOLD, operation.args[0], "rw"))
                if not self.held:
                    return None  # no file to open, or its open failed alike on both
            pair = self.held[int(operation.args[0]) % len(self.held)]  # type: ignore[call-overload]
            if operation.name == FD_CLOSE:
                self.held.remove(pair)
                del self.held_names[pair]
                answers = [_answer(lambda fd=fd: os.close(fd)) for fd in pair]
            elif operation.name == FD_COPY:  # (source index, destination index, offsets, length)
                dst = self.held[int(operation.args[1]) % len(self.held)]  # type: ignore[call-overload]
                answers = [_answer(lambda s=s, d=d: _fd_copy(s, d, *operation.args[2:]))  # type: ignore[misc]
                           for s, d in zip(pair, dst)]
            else:
                call = _ON_HELD[operation.name]
                if operation.name == FD_CHANGE and _renamed_over_dir(pair[0]):
                    driver = _answer(lambda: call(pair[1], *operation.args[1:]))
                    if driver == "ENOTDIR":
                        # A lower directory that a rename replaced: the driver refuses changes to it,
                        # where overlayfs copies it up over the directory renamed there (see
                        # test_nameless_files). The kernel's is not asked.
                        self.log.append(f"{operation!r} -> driver ENOTDIR, a lower directory renamed over")
                        return errno.ENOTDIR
                    answers = [_answer(lambda: call(pair[0], *operation.args[1:])), driver]
                else:
                    answers = [_answer(lambda fd=fd: call(fd, *operation.args[1:])) for fd in pair]
        self.log.append(f"{operation!r} -> kernel {answers[0]!r}, driver {answers[1]!r}")
        assert answers[0] == answers[1], "answers differ:\n  " + "\n  ".join(self.log)
        return getattr(errno, answers[0]) if isinstance(answers[0], str) and answers[0] != "ok" else None

    def close_held(self) -> None:
        for fds in self.held:
            for fd in fds:
                os.close(fd)
        self.held.clear()
        self.held_names.clear()

    def views(self) -> tuple[View, View]:
        drop_caches()
        return view(self.kernel.mnt, self.lsattr), view(self.driver.mnt, self.lsattr)

    def check(self, warm: bool = True) -> View:
        """Merged views and upper layers agree; returns the kernel's view.

        warm: first compare what a program sees, each name looked up with what
        the operations left in the kernel's caches (the driver's attribute
        timeout is long: what a change did to entries it does not name must
        reach the kernel as an invalidation), then the views as the driver
        answers afresh.
        """
        problems: list[str] = []
        oci = "whiteout=oci" in self.driver_options
        if warm:
            kw = view(self.kernel.mnt, self.lsattr)
            driver_entries, driver_same = named_view(self.driver.mnt, kw.entries, self.lsattr)
            problems += [f"warm {line}" for line in diff_maps(kw.entries, driver_entries)]
            if kw.same_inode != driver_same:
                problems.append(f"warm: names sharing an inode: kernel={sorted(map(sorted, kw.same_inode))} "
                                f"driver={sorted(map(sorted, driver_same))}")
        kv, dv = self.views()
        numbers = kv.numbers, dv.numbers
        if oci:
            # Records in user.* cannot go on symlinks and special files: copied up, they get
            # numbers of their own, as on overlayfs with userxattr at the next mount.
            held = {rel for rel, meta in kv.entries.items() if meta.kind in ("file", "dir")}
            numbers = ({rel: ino for rel, ino in kv.numbers.items() if rel in held},
                       {rel: ino for rel, ino in dv.numbers.items() if rel in held})
        problems += diff_views(kv, dv, self.kernel.lowers, self.kernel.upper)
        if self.numbers is not None:
            problems += diff_identity(self.numbers, numbers, self.renames)
        self.numbers, self.renames = numbers, []
        if not oci:  # else the forms differ: remounts read the driver's back
            problems += [f"upper {line}" for line in diff_maps(
                upper_view(self.kernel.upper, self.kernel.lowers, self.records),
                upper_view(self.driver.upper, self.driver.lowers, self.records))]
        for i, (built, lower) in enumerate(zip(self.lowers_built, self.driver.lowers, strict=True)):
            now = layer_state(lower)
            problems += [f"driver's lower {i} changed: {path}: built={built.get(path)!r} now={now.get(path)!r}"
                         for path in sorted(set(built) | set(now)) if built.get(path) != now.get(path)]
        steps = "\n  ".join(self.log or ["(no operations)"])
        assert not problems, f"after:\n  {steps}\ndifferences:\n  " + "\n  ".join(problems)
        return kv


@contextlib.contextmanager
def pair(
    base: Path,
    lowers: Sequence[Dir],
    kernel_options: Sequence[str] = KERNEL_OPTIONS,
    root_mode: int | None = None,
    driver_options: Sequence[str] = (),
) -> Iterator[Pair]:
    """Build lowers (top first) twice under base and mount them: kernel overlayfs and the driver.
    The kernel's get the overlayfs forms of any OCI markers (``as_overlayfs``).

    The driver gets ``allow_other``, without which FUSE lets no other user
    in at all, while overlayfs applies the usual permission checks.
    ``root_mode``: the mode of the upper roots, which the merged roots show.
    """
    stacks: list[Stack] = []
    try:
        for prefix in ("k-", "d-"):
            s = Stack.make(base, len(lowers), prefix)
            stacks.append(s)
            for root, tree in zip(s.lowers, lowers, strict=True):
                build_layer(root, as_overlayfs(tree) if prefix == "k-" else tree, records_prefix(kernel_options))
            if root_mode is not None:
                os.chmod(s.upper, root_mode)
        with _mounted(*stacks, kernel_options, driver_options) as p:
            yield p
    finally:
        for lower in (lower for s in stacks for lower in s.lowers):  # immutable entries would outlive any removal
            clear_protection(lower)


@contextlib.contextmanager
def pair_over(base: Path, lowers: Sequence[Path], kernel_options: Sequence[str] = KERNEL_OPTIONS) -> Iterator[Pair]:
    """Kernel overlayfs and the driver over the same existing lower layers (top first),
    each with an upper of its own: layers made by a tool, which neither mount may change."""
    kstack, dstack = (Stack(tuple(lowers), base / f"{prefix}upper", base / f"{prefix}work", base / f"{prefix}mnt")
                      for prefix in ("k-", "d-"))
    for path in (kstack.upper, kstack.work, kstack.mnt, dstack.upper, dstack.work, dstack.mnt):
        path.mkdir(parents=True)
    with _mounted(kstack, dstack, kernel_options, ()) as p:
        yield p


@contextlib.contextmanager
def _mounted(kstack: Stack, dstack: Stack, kernel_options: Sequence[str], driver_options: Sequence[str]) -> Iterator[Pair]:
    built = [layer_state(lower) for lower in dstack.lowers]
    with kernel_mount(kstack, *kernel_options), fuse_mount(dstack, "allow_other", *driver_options):
        p = Pair(kstack, dstack, lowers_built=built, lsattr="engine=fusepy" not in driver_options,
                 kernel_options=tuple(kernel_options), driver_options=("allow_other", *driver_options))
        try:
            yield p
        finally:
            p.close_held()


def overlayfs_layer(upper: Path, lowers: Sequence[Path], renames: Sequence[tuple[str, str]]) -> Path:
    """A layer made by overlayfs: upper (a new directory) after renaming, through a
    mount over lowers (top first), each (old, new) of renames. Where the old entry
    is a directory with lower parts, overlayfs writes its redirect."""
    stack = Stack(tuple(lowers), upper, upper.with_name(upper.name + "-work"), upper.with_name(upper.name + "-mnt"))
    for path in (stack.upper, stack.work, stack.mnt):
        path.mkdir(parents=True)
    with kernel_mount(stack, *KERNEL_OPTIONS) as mnt:
        for old, new in renames:
            os.rename(mnt / old, mnt / new)
    return upper


@contextlib.contextmanager
def scratch(parent: Path) -> Iterator[Path]:
    """A fresh directory per hypothesis example, removed with whatever is mounted in it."""
    base = Path(tempfile.mkdtemp(dir=parent))
    try:
        yield base
    finally:
        for mnt in sorted(base.glob("*mnt"), reverse=True):
            force_unmount(mnt)
        shutil.rmtree(base, ignore_errors=True)


def kernel_overlay_available() -> bool:
    with open("/proc/filesystems", encoding="ascii") as f:
        if any(line.split()[-1] == "overlay" for line in f):
            return True
    return subprocess.run(["modprobe", "overlay"], capture_output=True).returncode == 0
