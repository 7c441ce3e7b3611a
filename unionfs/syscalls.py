"""Linux system calls that the os module lacks: renameat2, utimensat with
UTIME_NOW/UTIME_OMIT, statx's attributes, the inode-flag and FICLONE ioctls,
sync_file_range, syncfs, cachestat, and the *xattrat calls.

Copy-up, whiteout creation and directory replacement must be atomic the way
overlayfs makes them atomic, and that needs renameat2's RENAME_EXCHANGE and
RENAME_WHITEOUT flags (renameat2(2)).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import threading
from collections.abc import Callable
from typing import TypeVar

RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
RENAME_WHITEOUT = 1 << 2

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
AT_SYMLINK_NOFOLLOW = 0x100
_AT_FDCWD = -100
FICLONE = 0x40049409
T = TypeVar("T")

# The C library this interpreter runs on, for what os does not offer; the one
# instance the driver uses (ctypes.util.find_library would run ldconfig).
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long  # syscall(2) returns a long
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
libc.renameat2.restype = ctypes.c_int


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
libc.utimensat.restype = ctypes.c_int


def _raise(path: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err), path)


def renameat2(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str, flags: int = 0) -> None:
    """rename with flags, both names relative to their directory descriptors."""
    if libc.renameat2(src_dir_fd, os.fsencode(src), dst_dir_fd, os.fsencode(dst), flags) != 0:
        _raise(dst)


def _timespecs(times_ns: tuple[int, int]) -> ctypes.Array[_Timespec]:
    """Two timespecs from nanoseconds; a value of UTIME_NOW or UTIME_OMIT keeps its meaning."""
    ts = (_Timespec * 2)()
    for i, value in enumerate(times_ns):
        if value in (UTIME_NOW, UTIME_OMIT):
            ts[i].tv_sec, ts[i].tv_nsec = 0, value
        else:
            ts[i].tv_sec, ts[i].tv_nsec = divmod(value, 1_000_000_000)
    return ts


def utimensat(dir_fd: int, path: str, times_ns: tuple[int, int], follow_symlinks: bool = False) -> None:
    """Set times in nanoseconds; a value of UTIME_NOW or UTIME_OMIT keeps its meaning."""
    flags = 0 if follow_symlinks else AT_SYMLINK_NOFOLLOW
    if libc.utimensat(dir_fd, os.fsencode(path), _timespecs(times_ns), flags) != 0:
        _raise(path)


libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
libc.fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with its mode flags (KEEP_SIZE, PUNCH_HOLE, ...), which os lacks."""
    if libc.fallocate(fd, mode, offset, length) != 0:
        _raise(f"fd {fd}")


libc.futimens.argtypes = [ctypes.c_int, ctypes.POINTER(_Timespec)]
libc.futimens.restype = ctypes.c_int


def futimens(fd: int, times_ns: tuple[int, int]) -> None:
    """utimensat on an open file; UTIME_NOW and UTIME_OMIT keep their meaning."""
    if libc.futimens(fd, _timespecs(times_ns)) != 0:
        _raise(f"fd {fd}")


FS_IOC_GETFLAGS, FS_IOC_SETFLAGS = 0x80086601, 0x40086602
FS_IOC_FSGETXATTR, FS_IOC_FSSETXATTR = 0x801C581F, 0x401C5820  # struct fsxattr, 28 bytes
FS_SYNC_FL, FS_NOATIME_FL = 0x8, 0x80
_NO_FLAGS = (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)


def inode_flags(fd: int) -> int | None:
    """The file's inode flags (what lsattr shows); None where its filesystem has none."""
    try:
        return int.from_bytes(fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(8))[:4], "little", signed=True)
    except OSError as exc:
        if exc.errno in _NO_FLAGS:
            return None
        raise


def copy_inode_flags(src_fd: int, dst_fd: int, mask: int) -> int:
    """Give dst the flags of mask that src has, and only those; nothing where either
    filesystem has no flags (as overlayfs's copy-up, ovl_copy_fileattr). Returns src's
    flags (0 where it has none)."""
    have, had = inode_flags(src_fd), inode_flags(dst_fd)
    if have is None or had is None:
        return have or 0
    want = (had & ~mask) | (have & mask)
    if want != had:
        try:
            fcntl.ioctl(dst_fd, FS_IOC_SETFLAGS, want.to_bytes(8, "little", signed=True))
        except OSError as exc:  # EPERM: a driver that is neither the owner nor CAP_FOWNER
            if exc.errno not in (*_NO_FLAGS, errno.EPERM):
                raise
    return have


# statx through a handle of its own, without argtypes or errno capture: converting
# arguments and saving errno cost twice what the call does, and lookups call it
# for every entry removed (see protection). A failure is raised by lstat instead.
_statx = ctypes.CDLL(None).statx
_STATX_SIZE = 256  # struct statx; its stx_attributes is the u64 at offset 8
_STATX_ATTRIBUTES = struct.Struct("<8xQ")
_statx_buffers = threading.local()


def _statx_buffer() -> ctypes.Array[ctypes.c_char]:
    buf = getattr(_statx_buffers, "buf", None)
    if buf is None:
        buf = _statx_buffers.buf = ctypes.create_string_buffer(_STATX_SIZE)
    return buf


def statx_attributes(dir_fd: int, rel: str) -> int:
    """The stx_attributes of rel (not following a symlink): among them immutable and
    append-only, which ext4, xfs, btrfs and tmpfs report, with the values of the
    inode flags FS_IMMUTABLE_FL and FS_APPEND_FL. No fd to open, as the flag ioctl needs."""
    buf = _statx_buffer()
    if _statx(dir_fd, os.fsencode(rel or "."), AT_SYMLINK_NOFOLLOW, 0, buf) != 0:
        os.lstat(rel or ".", dir_fd=dir_fd)  # raises the error
        return 0  # gone and back meanwhile: nothing known
    return int(_STATX_ATTRIBUTES.unpack_from(buf)[0])


def reflink(src_fd: int, dst_fd: int) -> bool:
    """Share the extents of src with dst (btrfs, xfs); False where the filesystem can't."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return True
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM):
            return False
        raise


libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
libc.sync_file_range.restype = ctypes.c_int
_SYNC_FILE_RANGE_WAIT_BEFORE, _SYNC_FILE_RANGE_WRITE, _SYNC_FILE_RANGE_WAIT_AFTER = 1, 2, 4


def start_writeback(fd: int) -> None:
    """Start writing a file's dirty data out, without waiting (sync_file_range
    SYNC_FILE_RANGE_WRITE): the fsyncs that follow then find it under way. Only
    a hint, so its errors are left to the fsync."""
    libc.sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def check_written(fd: int) -> None:
    """Wait for a file's writeback under way and raise its writeback error, if
    any, since fd last reported one (sync_file_range SYNC_FILE_RANGE_WAIT_BEFORE).
    Writes nothing, commits nothing, flushes nothing: after a syncfs, what tells
    whether this file's data made it."""
    if libc.sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WAIT_BEFORE) != 0:
        _raise(f"fd {fd}")


def write_range(fd: int, offset: int, length: int, wait: bool) -> None:
    """Write a range of a file's dirty pages out (sync_file_range): only start
    it, or also wait for it and raise its writeback error. Commits no metadata
    and flushes no disk cache: an fsync still makes the file durable."""
    flags = _SYNC_FILE_RANGE_WRITE
    if wait:
        flags |= _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WAIT_AFTER
    if libc.sync_file_range(fd, offset, length, flags) != 0:
        _raise(f"fd {fd}")


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in
                ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")]


_SYS_CACHESTAT = 451  # the same number on every architecture (Linux 6.5)
_cachestat_missing = False


def cached_pages(fd: int, offset: int, length: int) -> int | None:
    """How many pages of a file's range are in the page cache (cachestat(2));
    None where the kernel cannot tell (before Linux 6.5, or a filesystem that
    refuses)."""
    global _cachestat_missing
    if _cachestat_missing:
        return None
    rng, out = _CachestatRange(offset, length), _Cachestat()
    if libc.syscall(ctypes.c_long(_SYS_CACHESTAT), ctypes.c_long(fd), ctypes.byref(rng), ctypes.byref(out), ctypes.c_long(0)) == 0:
        return int(out.nr_cache)
    if ctypes.get_errno() == errno.ENOSYS:
        _cachestat_missing = True
    return None


libc.syncfs.argtypes = [ctypes.c_int]
libc.syncfs.restype = ctypes.c_int


def syncfs(fd: int) -> None:
    """Write out and commit the whole filesystem fd is on (syncfs(2), which os lacks)."""
    if libc.syncfs(fd) != 0:
        _raise(f"fd {fd}")


# -- extended attributes below a directory descriptor ---------------------------------------
# The *xattr calls of os take a path or an open file; a layer is reached only through its
# directory descriptor (an absolute path may lead through this very mount, when it is mounted
# on or below a layer, and a request would then wait for itself). Linux 6.13 has the *xattrat
# calls; without them a name goes through the descriptor's /proc/self/fd link.
_SYS_SETXATTRAT, _SYS_GETXATTRAT, _SYS_LISTXATTRAT, _SYS_REMOVEXATTRAT = 463, 464, 465, 466  # every architecture
_XATTR_MAX = 65536  # XATTR_SIZE_MAX and XATTR_LIST_MAX: no value or list is longer
_PROC_PATH_LIMIT = 4000  # longer names go through an O_PATH descriptor of their own
_scratch = threading.local()


class _XattrArgs(ctypes.Structure):
    _fields_ = [("value", ctypes.c_uint64), ("size", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


# syscall(2) with the *xattrat calls' arguments declared: ctypes converts them in C. With
# a ctypes object built for each argument in Python, a listxattrat of a file without
# xattrs took 5.4 us instead of 3.9, and the calls come with most lookups. Every argument
# is an integer or a pointer, which the C library's syscall passes on as the kernel takes them.
_c = ctypes
_value_call = _c.CFUNCTYPE(_c.c_long, _c.c_long, _c.c_int, _c.c_char_p, _c.c_uint, _c.c_char_p, _c.c_void_p,
                           _c.c_size_t, use_errno=True)(("syscall", libc))  # get and set: a struct xattr_args
_list_call = _c.CFUNCTYPE(_c.c_long, _c.c_long, _c.c_int, _c.c_char_p, _c.c_uint, _c.c_void_p, _c.c_size_t,
                          use_errno=True)(("syscall", libc))
_remove_call = _c.CFUNCTYPE(_c.c_long, _c.c_long, _c.c_int, _c.c_char_p, _c.c_uint, _c.c_char_p,
                            use_errno=True)(("syscall", libc))
_ARGS_SIZE = ctypes.sizeof(_XattrArgs)


def _xattrat_answers() -> bool:
    """Whether the *xattrat calls work here: asked once, of the root directory. Before
    Linux 6.13 they are ENOSYS, and a seccomp filter that does not know them may answer
    EPERM to every call, which must not pass for "no such attribute"."""
    args = _XattrArgs(0, 0, 0)
    if _value_call(_SYS_GETXATTRAT, _AT_FDCWD, b"/", 0, b"user.unionfs.probe", ctypes.addressof(args), _ARGS_SIZE) >= 0:
        return True
    return ctypes.get_errno() in (errno.ENODATA, errno.ENOTSUP)


XATTRAT = _xattrat_answers()  # else every call goes through /proc/self/fd


class _Scratch:
    """A thread's buffer for values and lists, and the xattr_args that points at it."""

    def __init__(self) -> None:
        self.buf = ctypes.create_string_buffer(_XATTR_MAX)
        self.at = ctypes.addressof(self.buf)
        self.args = _XattrArgs(self.at, _XATTR_MAX, 0)
        self.args_at = ctypes.addressof(self.args)
        self.set_args = _XattrArgs(self.at, 0, 0)  # a value to set is copied to buf first
        self.set_args_at = ctypes.addressof(self.set_args)


def _mine() -> _Scratch:
    try:
        return _scratch.mine
    except AttributeError:
        mine = _scratch.mine = _Scratch()
        return mine


def _via_proc(dir_fd: int, rel: str, call: Callable[..., T], *args: object) -> T:
    """call(path, *args) on rel below dir_fd, through /proc/self/fd."""
    if len(rel) < _PROC_PATH_LIMIT:
        return call(f"/proc/self/fd/{dir_fd}/{rel}", *args, follow_symlinks=False)
    fd = os.open(rel, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return call(f"/proc/self/fd/{fd}", *args, follow_symlinks=True)
    finally:
        os.close(fd)


def getxattrat(dir_fd: int, rel: str, name: str) -> bytes:
    """rel's extended attribute name, rel not followed if a symlink; OSError as os.getxattr."""
    value = getxattrat_unless(dir_fd, rel, name, ())
    assert value is not None
    return value


def getxattrat_unless(dir_fd: int, rel: str, name: str, absent: tuple[int, ...]) -> bytes | None:
    """getxattrat, or None for an errno in absent: the usual answer, no such attribute,
    comes without an exception (5.9 us instead of 8.5)."""
    if not XATTRAT:
        try:
            return _via_proc(dir_fd, rel, os.getxattr, name)
        except OSError as exc:
            if exc.errno in absent:
                return None
            raise
    mine = _mine()
    size = _value_call(_SYS_GETXATTRAT, dir_fd, os.fsencode(rel), AT_SYMLINK_NOFOLLOW, os.fsencode(name),
                       mine.args_at, _ARGS_SIZE)
    if size < 0:
        if ctypes.get_errno() in absent:
            return None
        _raise(rel)
    return ctypes.string_at(mine.at, size)


def listxattrat(dir_fd: int, rel: str) -> list[str]:
    if not XATTRAT:
        return _via_proc(dir_fd, rel, os.listxattr)
    at = _mine().at
    size = _list_call(_SYS_LISTXATTRAT, dir_fd, os.fsencode(rel), AT_SYMLINK_NOFOLLOW, at, _XATTR_MAX)
    if size < 0:
        _raise(rel)
    if not size:
        return []
    return [os.fsdecode(name) for name in ctypes.string_at(at, size).split(b"\0") if name]


def setxattrat(dir_fd: int, rel: str, name: str, value: bytes, flags: int = 0) -> None:
    if not XATTRAT:
        _via_proc(dir_fd, rel, os.setxattr, name, value, flags)
        return
    if len(value) > _XATTR_MAX:
        raise OSError(errno.E2BIG, os.strerror(errno.E2BIG), rel)
    mine = _mine()
    ctypes.memmove(mine.at, value, len(value))
    mine.set_args.size, mine.set_args.flags = len(value), flags
    if _value_call(_SYS_SETXATTRAT, dir_fd, os.fsencode(rel), AT_SYMLINK_NOFOLLOW, os.fsencode(name),
                   mine.set_args_at, _ARGS_SIZE) < 0:
        _raise(rel)


def removexattrat(dir_fd: int, rel: str, name: str) -> None:
    if not XATTRAT:
        _via_proc(dir_fd, rel, os.removexattr, name)
        return
    if _remove_call(_SYS_REMOVEXATTRAT, dir_fd, os.fsencode(rel), AT_SYMLINK_NOFOLLOW, os.fsencode(name)) < 0:
        _raise(rel)


STATX_BTIME = 0x800
_AT_EMPTY_PATH = 0x1000
_STATX_MASK_AND_BTIME = struct.Struct("<I76xqI")  # stx_mask at 0, stx_btime's seconds and nanoseconds at 80


def birth_time(dir_fd: int, rel: str | None) -> tuple[int, int] | None:
    """When rel (not following a symlink), or dir_fd's own file for None, was made:
    (seconds, nanoseconds); None where its filesystem does not record it."""
    buf = _statx_buffer()
    name, flags = (b"", _AT_EMPTY_PATH) if rel is None else (os.fsencode(rel or "."), AT_SYMLINK_NOFOLLOW)
    if _statx(dir_fd, name, flags, STATX_BTIME, buf) != 0:
        if rel is None:
            os.fstat(dir_fd)  # raises the error
        else:
            os.lstat(rel or ".", dir_fd=dir_fd)
        return None
    mask, sec, nsec = _STATX_MASK_AND_BTIME.unpack_from(buf)
    return (int(sec), int(nsec)) if mask & STATX_BTIME else None


_STATX_MNT_ID = 0x1000  # Linux 5.8
_STATX_MASK_AND_MNT_ID = struct.Struct("<I140xQ")  # stx_mask at 0, stx_mnt_id at 144


def mount_id(path: str) -> int | None:
    """The ID of the mount that path (followed) is on; None where the kernel does not say."""
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if _statx(_AT_FDCWD, os.fsencode(path), 0, _STATX_MNT_ID, buf) != 0:
        os.stat(path)  # raises the error
        return None
    mask, mnt_id = _STATX_MASK_AND_MNT_ID.unpack_from(buf)
    return int(mnt_id) if mask & _STATX_MNT_ID else None


_SYS_OPEN_TREE = 428  # every architecture (Linux 5.2)
OPEN_TREE_CLONE = 1


def open_tree(path: str, flags: int = OPEN_TREE_CLONE | os.O_CLOEXEC) -> int:
    """An O_PATH descriptor on path; with OPEN_TREE_CLONE, on a private copy of the mount
    there, detached from every namespace and without the mounts below it."""
    fd = libc.syscall(ctypes.c_long(_SYS_OPEN_TREE), ctypes.c_long(_AT_FDCWD), os.fsencode(path), ctypes.c_long(flags))
    if fd < 0:
        _raise(path)
    return int(fd)
