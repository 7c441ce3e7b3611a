"""The FUSE side: fusepy callbacks that hand each request to the Union.

This is the only module besides ``mount``'s process start that imports
fusepy. Requests that carry a file handle (read, write, fsync, fgetattr) go
straight to the host fd: one ``os.pread`` per read, no path lookup
(``flag_nopath``).
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import fuse  # type: ignore[import-untyped]  # fusepy has no type information

from unionfs.permissions import MAY_READ, MAY_WRITE, AccessControl, Requester
from unionfs.syscalls import UTIME_NOW
from unionfs.union import Caller, Union, kill_set_id

log = logging.getLogger(__name__)

_NO_ID = 0xFFFFFFFF  # (uid_t)-1: leave unchanged


class UnionOperations(fuse.Operations):
    """fusepy operations over a Union; times in nanoseconds."""

    use_ns = True
    flag_nullpath_ok = 1
    flag_nopath = 1
    flag_utime_omit_ok = 1
    # No flush: the kernel then stops sending one per close(), a request saved
    # on every file; writes reach the host fd at once, so there is nothing to flush.
    flush = None
    # No ioctl: fusepy's own answers EIO to every one (it decodes the null path
    # that flag_nullpath_ok gives); without it the kernel answers ENOTTY, as for a
    # file of any filesystem that knows no such request.
    ioctl = None

    def __init__(self, union: Union, on_ready: Callable[[], None] | None = None, acl: bool = True) -> None:
        self.union = union
        self.on_ready = on_ready
        self.acl = AccessControl(union, enabled=acl)  # what default_permissions leaves out: access ACLs
        self._fd_layer: dict[int, int] = {}
        self._dirs: dict[int, str] = {}
        self._dir_ids = iter(range(1 << 40, 1 << 62))  # never equal to a file's fd
        self._lock = threading.Lock()

    def __call__(self, op: str, *args: Any) -> Any:
        try:
            return getattr(self, op)(*args)
        except OSError as exc:
            if exc.errno and exc.errno > 0:
                raise
            log.exception("%s%r: error without errno", op, args[:1])
        except Exception:
            log.exception("%s%r failed", op, args[:1])
        raise fuse.FuseOSError(errno.EIO)

    @staticmethod
    def _caller() -> Caller:
        ctx = ctypes.cast(fuse._libfuse.fuse_get_context(), ctypes.POINTER(_Context)).contents
        return Caller(ctx.uid, ctx.gid, ctx.umask)

    @staticmethod
    def _requester() -> Requester:
        ctx = ctypes.cast(fuse._libfuse.fuse_get_context(), ctypes.POINTER(_Context)).contents
        return Requester(ctx.uid, ctx.gid, ctx.pid)

    # -- lifecycle ---------------------------------------------------------------
    def init(self, path: str) -> None:
        if self.on_ready:
            self.on_ready()

    def destroy(self, path: str) -> None:
        self.union.close()

    # -- attributes --------------------------------------------------------------
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, int]:
        if fh is not None:
            dir_path = self._dirs.get(fh)
            if dir_path is not None:
                return self.union.getattr(dir_path)
            if fh in self._fd_layer:
                return self.union.fgetattr(fh, self._fd_layer[fh])
        if path is None:
            raise fuse.FuseOSError(errno.EBADF)
        return self.union.getattr(path)

    def chmod(self, path: str, mode: int) -> None:
        self.acl.walk(self._requester(), path)
        self.union.chmod(path, mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        self.acl.walk(self._requester(), path)
        self.union.chown(path, -1 if uid == _NO_ID else uid, -1 if gid == _NO_ID else gid)

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        if times is None or UTIME_NOW in times:
            self.acl.touch(self._requester(), path)
        else:
            self.acl.walk(self._requester(), path)
        self.union.utimens(path, times)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> None:
        if fh is not None:
            os.ftruncate(fh, length)
        elif path is not None:
            who = self._requester()
            self.acl.walk(who, path)
            self.acl.entry(who, path, MAY_WRITE)
            self.union.truncate(path, length)

    def statfs(self, path: str) -> dict[str, int]:
        return self.union.statfs()

    # -- names -------------------------------------------------------------------
    def readlink(self, path: str) -> str:
        self.acl.walk(self._requester(), path)
        return self.union.readlink(path)

    def opendir(self, path: str) -> int:
        who = self._requester()
        self.acl.walk(who, path)
        self.acl.entry(who, path, MAY_READ)
        with self._lock:
            handle = next(self._dir_ids)
            self._dirs[handle] = path
        return handle

    def readdir(self, path: str | None, fh: int) -> list[tuple[str, dict[str, int] | None, int]]:
        dir_path = self._dirs.get(fh) or path
        if dir_path is None:
            raise fuse.FuseOSError(errno.EBADF)
        return [(name, attrs, 0) for name, attrs in self.union.readdir(dir_path)]

    def releasedir(self, path: str | None, fh: int) -> None:
        self._dirs.pop(fh, None)

    def mkdir(self, path: str, mode: int) -> None:
        self.acl.in_dir(self._requester(), path)
        self.union.mkdir(path, mode, self._caller())

    def mknod(self, path: str, mode: int, dev: int) -> None:
        self.acl.in_dir(self._requester(), path)
        self.union.mknod(path, mode, dev, self._caller())

    def symlink(self, path: str, target: str) -> None:
        # fusepy passes (link path, link content)
        self.acl.in_dir(self._requester(), path)
        self.union.symlink(path, target, self._caller())

    def link(self, path: str, existing: str) -> None:
        # fusepy passes (new name, existing name)
        self.acl.link(self._requester(), existing, path)
        self.union.link(existing, path)

    def unlink(self, path: str) -> None:
        self.acl.in_dir(self._requester(), path)
        self.union.unlink(path)

    def rmdir(self, path: str) -> None:
        self.acl.in_dir(self._requester(), path)
        self.union.rmdir(path)

    def rename(self, old: str, new: str) -> None:
        self.acl.rename(self._requester(), old, new)
        self.union.rename(old, new)

    # -- files -------------------------------------------------------------------
    def open(self, path: str, flags: int) -> int:
        self.acl.open(self._requester(), path, flags)
        caller = self._caller()
        # libfuse 2 does not say whether the caller has CAP_FSETID: only root is taken to have it
        fd, index = self.union.open(path, flags, caller, None if caller.uid == 0 else kill_set_id)
        self._fd_layer[fd] = index
        return fd

    def create(self, path: str, mode: int, flags: int = os.O_RDWR) -> int:
        self.acl.in_dir(self._requester(), path)
        fd = self.union.create(path, mode, flags, self._caller())
        self._fd_layer[fd] = 0
        return fd

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)

    def release(self, path: str | None, fh: int) -> None:
        self._fd_layer.pop(fh, None)
        self.union.release(fh)
        os.close(fh)

    def fsync(self, path: str | None, datasync: int, fh: int) -> None:
        self.union.fsync(fh, bool(datasync))

    def fsyncdir(self, path: str, datasync: int, fh: int) -> None:
        self.union.fsyncdir(path)

    # -- xattrs ------------------------------------------------------------------
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        self.acl.xattr(self._requester(), path, name, MAY_READ)
        return self.union.getxattr(path, name)

    def listxattr(self, path: str) -> list[str]:
        self.acl.walk(self._requester(), path)
        return self.union.listxattr(path)

    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> None:
        self.acl.xattr(self._requester(), path, name, MAY_WRITE)
        self.union.setxattr(path, name, value, options)

    def removexattr(self, path: str, name: str) -> None:
        self.acl.xattr(self._requester(), path, name, MAY_WRITE)
        self.union.removexattr(path, name)



class _Context(ctypes.Structure):
    """libfuse 2.8+'s struct fuse_context, with the umask that fusepy leaves out."""

    _fields_ = [
        ("fuse", ctypes.c_void_p),
        ("uid", ctypes.c_uint32),
        ("gid", ctypes.c_uint32),
        ("pid", ctypes.c_int32),
        ("private_data", ctypes.c_void_p),
        ("umask", ctypes.c_uint32),
    ]


class _ConnInfo(ctypes.Structure):
    """The head of libfuse 2's struct fuse_conn_info."""

    _fields_ = [(name, ctypes.c_uint) for name in ("proto_major", "proto_minor", "async_read", "max_write", "max_readahead", "capable", "want")]


FUSE_CAP_DONT_MASK = 1 << 6
_PINNED_THREADS: set[int] = set()
_gilstate_ensure = ctypes.pythonapi.PyGILState_Ensure
_gilstate_ensure.restype = ctypes.c_int


class UnionFUSE(fuse.FUSE):
    """fusepy's FUSE with two changes measured to matter.

    - Each libfuse worker thread keeps its Python thread state between
      requests. A ctypes callback on a thread Python did not start creates
      and destroys a thread state on every call; taking one extra
      ``PyGILState_Ensure`` reference per thread halves the cost of a request.
    - The open flags reach ``create`` (fusepy drops them), and the caller's
      umask is applied by the union, not by the kernel.
    """

    def init(self, conn: int | None) -> Any:
        # The kernel leaves the umask to us, so that a directory's default ACL
        # can replace it as it does on any other filesystem (acl(5)).
        if conn:
            info = ctypes.cast(conn, ctypes.POINTER(_ConnInfo)).contents
            if info.capable & FUSE_CAP_DONT_MASK:
                info.want |= FUSE_CAP_DONT_MASK
        return super().init(conn)

    @staticmethod
    def _wrapper(func: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
        thread = threading.get_ident()
        if thread not in _PINNED_THREADS:
            _PINNED_THREADS.add(thread)
            _gilstate_ensure()  # never released: the state lives as long as the thread
        try:
            return func(*args, **kwargs) or 0
        except OSError as exc:
            if exc.errno and exc.errno > 0:
                return -exc.errno
            log.exception("%s: OSError without errno", func.__name__)
        except Exception:
            log.exception("%s failed", func.__name__)
        return -errno.EIO

    def create(self, path: bytes, mode: int, fip: Any) -> int:
        fi = fip.contents
        fi.fh = self.operations("create", path.decode(self.encoding), mode, fi.flags)
        return 0
