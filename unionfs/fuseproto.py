"""The FUSE wire protocol (``linux/fuse.h``, version 7.38): opcodes, flags, records.

The driver reads requests from ``/dev/fuse`` and writes replies to it, with
no library in between; this module is the one place that knows the byte
layout of what crosses that boundary.
"""
from __future__ import annotations

import enum
import errno
import os
import struct
from typing import Final, NamedTuple


class _NoReply(enum.Enum):
    NO_REPLY = "no reply"


# What a handler returns for a request the kernel expects no reply to (FORGET).
NO_REPLY: Final = _NoReply.NO_REPLY


class FileRange(NamedTuple):
    """A READ's answer, read by the transport straight into its reply buffer:
    no megabyte allocated per READ, and over the rings no copy of it either."""

    fd: int
    offset: int
    size: int

    def read_into(self, buffer: memoryview) -> memoryview:
        if self.size > len(buffer):  # a short answer would read as the end of the file
            raise OSError(errno.EIO, f"READ of {self.size} bytes, more than the {len(buffer)} negotiated")
        return buffer[:os.preadv(self.fd, [buffer[:self.size]], self.offset)]


# A reply's payload: None for an empty reply.
Reply = bytes | bytearray | memoryview | _NoReply | None
# What a handler returns: a reply's payload, or the file range a READ's is read from.
Payload = Reply | FileRange

KERNEL_MAJOR = 7
KERNEL_MINOR = 38

# -- opcodes ---------------------------------------------------------------
LOOKUP = 1
FORGET = 2
GETATTR = 3
SETATTR = 4
READLINK = 5
SYMLINK = 6
MKNOD = 8
MKDIR = 9
UNLINK = 10
RMDIR = 11
RENAME = 12
LINK = 13
OPEN = 14
READ = 15
WRITE = 16
STATFS = 17
RELEASE = 18
FSYNC = 20
SETXATTR = 21
GETXATTR = 22
LISTXATTR = 23
REMOVEXATTR = 24
FLUSH = 25
INIT = 26
OPENDIR = 27
READDIR = 28
RELEASEDIR = 29
FSYNCDIR = 30
ACCESS = 34
CREATE = 35
INTERRUPT = 36
DESTROY = 38
IOCTL = 39
BATCH_FORGET = 42
FALLOCATE = 43
READDIRPLUS = 44
RENAME2 = 45
LSEEK = 46
COPY_FILE_RANGE = 47
SYNCFS = 50
TMPFILE = 51  # 7.37: open(O_TMPFILE); the request is a CREATE's, the name "/"
STATX = 52  # 7.39: a statx(2) that asks for the birth time; sent whatever minor INIT answered

# -- INIT flags ------------------------------------------------------------
ASYNC_READ = 1 << 0
ATOMIC_O_TRUNC = 1 << 3
BIG_WRITES = 1 << 5
DONT_MASK = 1 << 6
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
ASYNC_DIO = 1 << 15
WRITEBACK_CACHE = 1 << 16
PARALLEL_DIROPS = 1 << 18
POSIX_ACL = 1 << 20
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
HANDLE_KILLPRIV_V2 = 1 << 28
INIT_EXT = 1 << 30
# in the second flags word, which follows INIT_IN and INIT_OUT's flags with INIT_EXT
OVER_IO_URING = 1 << (41 - 32)

# -- other flags -----------------------------------------------------------
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_CACHE_DIR = 1 << 3
GETATTR_FH = 1 << 0
FSYNC_FDATASYNC = 1 << 0

FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_FH = 1 << 6
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8
FATTR_CTIME = 1 << 10
FATTR_KILL_SUIDGID = 1 << 11
WRITE_KILL_SUIDGID = 1 << 2  # in fuse_write_in's write_flags
OPEN_KILL_SUIDGID = 1 << 0  # in fuse_open_in's open_flags

NOTIFY_INVAL_INODE = 2  # a notification's code, sent in the error field with unique 0
NOTIFY_INVAL_INODE_OUT = struct.Struct("<Qqq")  # node id, offset, length (0, 0: all of it)
NOTIFY_STORE = 4
NOTIFY_STORE_OUT = struct.Struct("<QQII")  # node id, offset, size, padding; the data follows

UNKNOWN_INO = 0xFFFFFFFF  # what libfuse reports for an entry it has no attributes for

# -- records ---------------------------------------------------------------
IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
OUT_HEADER = struct.Struct("<IiQ")  # len, error, unique
INIT_IN = struct.Struct("<IIII")  # major, minor, max_readahead, flags (flags2 follows with INIT_EXT)
INIT_IN_FLAGS2 = struct.Struct("<I")
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")
ATTR = struct.Struct("<QQQqqqIIIIIIIIII")  # ino size blocks atime mtime ctime [a/m/c]nsec mode nlink uid gid rdev blksize flags
ENTRY_OUT = struct.Struct("<QQQQII")  # nodeid generation entry_valid attr_valid entry_nsec attr_nsec; ATTR follows
ATTR_OUT = struct.Struct("<QII")  # attr_valid attr_valid_nsec dummy; ATTR follows
GETATTR_IN = struct.Struct("<IIQ")
STATX_IN = struct.Struct("<IIQII")  # getattr_flags, reserved, fh, sx_flags, sx_mask
STATX_OUT = struct.Struct("<QII16x")  # attr_valid attr_valid_nsec flags spare[2]; STATX_RECORD follows
# mask blksize attributes nlink uid gid mode spare ino size blocks attributes_mask; atime btime ctime
# mtime (seconds, nanoseconds, reserved); rdev and dev as major, minor; spare[14]
STATX_RECORD = struct.Struct("<IIQIIIHHQQQQ" + "qIi" * 4 + "IIII112x")
SETATTR_IN = struct.Struct("<IIQQQqqqIIIIIIII")
MKNOD_IN = struct.Struct("<IIII")
MKDIR_IN = struct.Struct("<II")
RENAME_IN = struct.Struct("<Q")
RENAME2_IN = struct.Struct("<QII")
LINK_IN = struct.Struct("<Q")
OPEN_IN = struct.Struct("<II")
CREATE_IN = struct.Struct("<IIII")
OPEN_OUT = struct.Struct("<QII")
RELEASE_IN = struct.Struct("<QIIQ")
READ_IN = struct.Struct("<QQII")
WRITE_IN = struct.Struct("<QQIIQII")
WRITE_OUT = struct.Struct("<II")
FSYNC_IN = struct.Struct("<QII")
SETXATTR_IN = struct.Struct("<II")
GETXATTR_IN = struct.Struct("<II")
GETXATTR_OUT = struct.Struct("<II")
FORGET_IN = struct.Struct("<Q")
BATCH_FORGET_IN = struct.Struct("<II")
FORGET_ONE = struct.Struct("<QQ")
KSTATFS = struct.Struct("<QQQQQIII28x")  # blocks bfree bavail files ffree bsize namelen frsize; padding, spare[6]
FALLOCATE_IN = struct.Struct("<QQQII")
COPY_FILE_RANGE_IN = struct.Struct("<QQQQQQQ")
IOCTL_IN = struct.Struct("<QIIQII")  # fh, flags, cmd, arg, in_size, out_size; in_size bytes follow
IOCTL_DIR = 1 << 4  # fuse_ioctl_in.flags: fh is a directory's (OPENDIR)
IOCTL_OUT = struct.Struct("<iIII")  # result, flags, in_iovs, out_iovs; the out data follows
DIRENT = struct.Struct("<QQII")  # ino, off (of the next entry), namelen, type; the name follows, padded to 8

_NS = 1_000_000_000


def attr(st: dict[str, int]) -> bytes:
    """A fuse_attr from the Union's attribute dict (times in nanoseconds)."""
    asec, ans = divmod(st["st_atime"], _NS)
    msec, mns = divmod(st["st_mtime"], _NS)
    csec, cns = divmod(st["st_ctime"], _NS)
    return ATTR.pack(
        st["st_ino"], st["st_size"], st["st_blocks"], asec, msec, csec, ans, mns, cns,
        st["st_mode"], st["st_nlink"], st["st_uid"], st["st_gid"], st["st_rdev"] & 0xFFFFFFFF, st["st_blksize"], 0,
    )


_STATX_BASIC_STATS, _STATX_BTIME = 0x7FF, 0x800


def statx(st: dict[str, int], born: tuple[int, int] | None) -> bytes:
    """A fuse_statx from the Union's attribute dict and the birth time, if known."""
    asec, ans = divmod(st["st_atime"], _NS)
    msec, mns = divmod(st["st_mtime"], _NS)
    csec, cns = divmod(st["st_ctime"], _NS)
    bsec, bns = born or (0, 0)
    rdev = st["st_rdev"]
    return STATX_RECORD.pack(
        _STATX_BASIC_STATS | (_STATX_BTIME if born else 0), st["st_blksize"], 0, st["st_nlink"], st["st_uid"],
        st["st_gid"], st["st_mode"], 0, st["st_ino"], st["st_size"], st["st_blocks"], 0,
        asec, ans, 0, bsec, bns, 0, csec, cns, 0, msec, mns, 0, os.major(rdev), os.minor(rdev), 0, 0,
    )


def split_timeout(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, int((seconds - whole) * _NS)


def dirent_size(name: bytes, plus: bool) -> int:
    size = (ENTRY_OUT.size + ATTR.size if plus else 0) + DIRENT.size + len(name)
    return (size + 7) & ~7


def dirent(ino: int, offset: int, mode: int, name: bytes) -> bytes:
    record = DIRENT.pack(ino, offset, len(name), (mode & 0o170000) >> 12) + name
    return record + b"\0" * (-len(record) % 8)
