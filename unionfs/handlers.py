"""Each FUSE request, answered by the Union.

A handler gets the unpacked request header and the bytes after it, and
returns the reply's payload: ``None`` for an empty reply, bytes, an
``fp.FileRange`` for READ (read straight into the reply's buffer), or
``fp.NO_REPLY`` for the requests the kernel expects no answer to (FORGET). An
``OSError`` becomes the error reply. The permission checks are the
kernel's: the mount has ``default_permissions`` and negotiates
FUSE_POSIX_ACL, so mode bits and access ACLs are enforced before a request
gets here.
"""
from __future__ import annotations

import bisect
import errno
import fcntl
import functools
import logging
import mmap
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import xxhash

from unionfs import crashpoints
from unionfs import fuseproto as fp
from unionfs import syscalls
from unionfs.copyup import Prepared
from unionfs.idmap import IdMap
from unionfs.interrupts import Interrupts
from unionfs.nodes import Identity, NodeTable
from unionfs.permissions import CAP_FOWNER, CAP_FSETID, Requester
from unionfs.union import Caller, Union, fd_flags, kill_set_id, set_id_bits_dropped
from unionfs.unsent import Unsent

log = logging.getLogger(__name__)
T = TypeVar("T")
Handler = Callable[[tuple, memoryview], fp.Payload]
_NO_ID = 0xFFFFFFFF  # (uid_t)-1 in a setattr: leave unchanged
_CHANGES_FILE = fp.FATTR_MODE | fp.FATTR_UID | fp.FATTR_GID | fp.FATTR_SIZE  # a SETATTR beyond times
_WRITES = os.O_WRONLY | os.O_RDWR | os.O_TRUNC  # an open that may copy up
# A SETATTR that a caller sent: the times that the kernel writes back (the writeback cache,
# fuse_flush_times) are mtime and ctime alone; utimensat sets atime unless told to omit it.
_CALLER_CHANGES = _CHANGES_FILE | fp.FATTR_ATIME | fp.FATTR_ATIME_NOW
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
_NO_ENTRY = bytes(fp.ENTRY_OUT.size + fp.ATTR.size)  # a READDIRPLUS entry without attributes: node id 0
_KEPT_LISTINGS = 16  # directories whose last listing is kept for a second pass
_DESCRIBED_DIRS = 4096  # directories whose described entries are kept (_Described, some 150 bytes each)


def _gone_file(mtime: int, ctime: int) -> dict[str, int]:
    """The attributes of a regular file none of which is left, for the reply to the times the
    kernel writes back, which it does not read. (An explicit utime of the times alone, from
    a process holding the file by O_PATH, looks the same: the kernel takes these then, and
    asks again at once; only the type has to be right.) Times in nanoseconds."""
    return {"st_mode": stat.S_IFREG, "st_ino": 0, "st_nlink": 0, "st_uid": 0, "st_gid": 0, "st_size": 0,
            "st_atime": mtime, "st_mtime": mtime, "st_ctime": ctime, "st_rdev": 0, "st_blocks": 0, "st_blksize": 0}


def _name(data: memoryview) -> str:
    """The first NUL-terminated name of a request body (decoded as os.fsdecode does)."""
    raw = bytes(data)
    end = raw.find(b"\0")
    return (raw if end < 0 else raw[:end]).decode(_FS_ENCODING, _FS_ERRORS)


def _two_names(data: memoryview) -> tuple[str, str]:
    first, second = bytes(data).split(b"\0")[:2]
    return os.fsdecode(first), os.fsdecode(second)


# (cookie, name, attrs, source, encoded name) sorted by cookie
Listing = list[tuple[int, str, dict[str, int] | None, tuple[int, str] | None, bytes]]


class _Ahead:
    """Around a change that may copy up: what Requests._prepare copied ahead, let go of
    once the change is done (a class, not a generator: it is around every open for
    writing and every SETATTR)."""

    __slots__ = ("prepared", "union")

    def __init__(self, union: Union, prepared: Prepared | None) -> None:
        self.union, self.prepared = union, prepared

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        self.union.let_go(self.prepared)


@dataclass
class _Dir:
    nodeid: int
    keeps: bool  # the kernel keeps this open's listing (FOPEN_CACHE_DIR)
    # a pass's snapshot, stable while entries change
    entries: Listing | None = None
    generation: int = -1  # the Union's when the snapshot was taken


@dataclass
class _Described:
    """The entries of a directory's listing, up to a cookie, that a READDIRPLUS
    gave with attributes: how far, in which generation of the Union, and when."""

    generation: int
    last: int  # the cookie of the last entry given
    since: float  # time.monotonic() of the first answer


def _cookie(name: str) -> int:
    """A listing offset that depends on the name alone, as ext4's hash cookies do:
    the kernel keeps listings (FOPEN_CACHE_DIR) and may continue one that another
    open filled, so an offset must mean the same in every snapshot. Resuming after
    a cookie then shows each name that stayed exactly once."""
    if name == ".":
        return 1
    if name == "..":
        return 2
    return 3 + xxhash.xxh64_intdigest(os.fsencode(name)) % ((1 << 63) - 3)


@dataclass(frozen=True)
class Timeouts:
    """How long the kernel may keep what it was told, in seconds."""

    entry: float = 60.0
    attr: float = 1.0
    negative: float = 60.0


# Requests whose handlers do a small, bounded amount of metadata work: no file
# data is read, written or copied up, no directory is listed in full and no
# pending copy-up is published. A ring worker may answer them under SCHED_IDLE
# (see placement); SETATTR, LINK and RENAME can copy up, RMDIR lists. An
# UNLINK that frees a large file leaves SCHED_IDLE first (before_long_work).
QUICK = frozenset({
    fp.LOOKUP, fp.GETATTR, fp.READLINK, fp.GETXATTR, fp.LISTXATTR, fp.STATFS, fp.OPENDIR, fp.RELEASEDIR,
    fp.UNLINK, fp.MKDIR, fp.MKNOD, fp.SYMLINK, fp.CREATE,
})

# Requests that a process makes and waits for. Left out: what the kernel sends
# on its own behalf from any CPU (RELEASE and RELEASEDIR after the last close,
# WRITEs of written-back pages, READs ahead, SETATTRs that write back times),
# and READ and WRITE altogether, which can be either. Such requests on two
# CPUs' queues at once mean callers on both (see placement.Gathering).
WAITED_FOR = frozenset({
    fp.LOOKUP, fp.GETATTR, fp.READLINK, fp.GETXATTR, fp.LISTXATTR, fp.SETXATTR, fp.REMOVEXATTR, fp.STATFS,
    fp.ACCESS, fp.OPEN, fp.OPENDIR, fp.READDIR, fp.READDIRPLUS, fp.FLUSH, fp.CREATE, fp.MKNOD, fp.MKDIR,
    fp.SYMLINK, fp.LINK, fp.UNLINK, fp.RMDIR, fp.RENAME, fp.RENAME2, fp.STATX,
})


# The file-attribute reads and writes the kernel passes on (fuse_fileattr_get, _set), with
# the size it reads back or sends: the flags (an int, though the numbers say long) and
# struct fsxattr.
_GET_FILEATTR = {syscalls.FS_IOC_GETFLAGS: 4, syscalls.FS_IOC_FSGETXATTR: 28}
_SET_FILEATTR = {syscalls.FS_IOC_SETFLAGS: 4, syscalls.FS_IOC_FSSETXATTR: 28}


class Requests:
    """The Union behind the kernel's requests: node ids, open files, listings."""

    def __init__(self, union: Union, timeouts: Timeouts, *, writeback: bool = True, ids: IdMap = IdMap(),
                 acl: bool = True) -> None:
        """acl: let the kernel enforce POSIX ACLs (FUSE_POSIX_ACL); without, the mode bits alone decide."""
        self.union = union
        self.acl = acl
        self.ids = ids
        # Attributes as the kernel gets them: IDs as the mount shows them (see idmap).
        self._attr: Callable[[dict[str, int]], bytes] = fp.attr if ids.identity else lambda st: fp.attr(ids.shown(st))
        self._statx: Callable[[dict[str, int], tuple[int, int] | None], bytes] = (
            fp.statx if ids.identity else lambda st, born: fp.statx(ids.shown(st), born))
        self.nodes = NodeTable()
        self.nodes.release_held = union.release_held
        self.nodes.open_kept = union.open_path
        entry_s, entry_ns = fp.split_timeout(timeouts.entry)
        attr_s, attr_ns = fp.split_timeout(timeouts.attr)
        neg_s, neg_ns = fp.split_timeout(timeouts.negative)
        self._entry_times = (entry_s, attr_s, entry_ns, attr_ns)
        self._negative = fp.ENTRY_OUT.pack(0, 0, neg_s, 0, neg_ns, 0) + bytes(fp.ATTR.size)
        self._attr_valid = fp.ATTR_OUT.pack(attr_s, attr_ns, 0)
        self._attr_now = fp.ATTR_OUT.pack(0, 0, 0)  # valid for this request only
        self._statx_valid = fp.STATX_OUT.pack(attr_s, attr_ns, 0)
        self._files: dict[int, tuple[int, int]] = {}  # fd -> (index of the layer it is open on, node id)
        self._node_fds: dict[int, list[int]] = {}  # node id -> its open fds
        self._out_of_space: set[int] = set()  # nodes whose written-back data found the upper layer full
        self._writing: set[int] = set()  # the fds of _files open for writing
        self._dirs: dict[int, _Dir] = {}
        self._kept_dirs: set[int] = set()  # node ids with an open whose listing the kernel keeps
        self._described: dict[int, _Described] = {}  # directory node id -> its entries the kernel has attributes of
        self._listings: dict[int, tuple[int, Listing]] = {}  # directory node id -> (generation, its last listing)
        self._describe_for = timeouts.attr / 2
        self._dir_ids = iter(range(1, 1 << 62))
        self._lock = threading.Lock()
        self._copying = threading.local()  # .copy: (path, size) of the file this thread's request copied up
        self.max_write = 1 << 20
        # The kernel's page cache holds writes and sends them in large requests;
        # it then owns size and mtime, reads back partial pages, and does O_APPEND.
        self.writeback = writeback
        self.notify: Callable[[int, bytes], None] | None = None  # set by the session: a message to the kernel
        self.interrupts = Interrupts()  # the session marks which request each thread answers
        self.unsent = Unsent()  # the transport says when each thread's answer is out
        self.offer_io_uring = False  # set by the session when its rings are ready
        self.over_io_uring = False  # the kernel agreed: requests come through the rings
        if union.copyup is not None:
            union.copyup.on_renumbered = self._renumbered
            union.copyup.on_copied_up = self._copied_up
            union.copyup.on_attrs_changed = self._attrs_changed
            union.copyup.stop = self.interrupts.caller_dying

    def table(self) -> dict[int, Handler]:
        return {
            fp.LOOKUP: self.lookup, fp.FORGET: self.forget, fp.BATCH_FORGET: self.batch_forget,
            fp.GETATTR: self.getattr, fp.SETATTR: self.setattr, fp.READLINK: self.readlink,
            fp.SYMLINK: self.symlink, fp.MKNOD: self.mknod, fp.MKDIR: self.mkdir, fp.UNLINK: self.unlink,
            fp.RMDIR: self.rmdir, fp.RENAME: self.rename, fp.RENAME2: self.rename2, fp.LINK: self.link,
            fp.OPEN: self.open, fp.READ: self.read, fp.WRITE: self.write, fp.STATFS: self.statfs,
            fp.RELEASE: self.release, fp.FSYNC: self.fsync, fp.SETXATTR: self.setxattr,
            fp.GETXATTR: self.getxattr, fp.LISTXATTR: self.listxattr, fp.REMOVEXATTR: self.removexattr,
            fp.INIT: self.init, fp.OPENDIR: self.opendir, fp.READDIR: self.readdir,
            fp.READDIRPLUS: self.readdirplus, fp.RELEASEDIR: self.releasedir, fp.CREATE: self.create,
            fp.INTERRUPT: self.interrupt, fp.DESTROY: self.destroy, fp.IOCTL: self.ioctl,
            fp.FALLOCATE: self.fallocate, fp.COPY_FILE_RANGE: self.copy_file_range,
            fp.SYNCFS: self.syncfs, fp.FSYNCDIR: self.fsyncdir, fp.TMPFILE: self.tmpfile, fp.STATX: self.statx,
            # FLUSH and ACCESS answered ENOSYS: the kernel then stops sending them. So is LSEEK
            # (SEEK_DATA, SEEK_HOLE), which the kernel sends without writing back the file's
            # dirty pages first: the layer file lacks what is written and not yet written
            # back, and its holes and end would tell a copy to skip that data. The kernel
            # then answers from its own size: all data up to the end, no holes.
        }

    # -- session ---------------------------------------------------------------
    def init(self, h: tuple, data: memoryview) -> bytes:
        major, minor, max_readahead, flags = fp.INIT_IN.unpack_from(data)
        if major != fp.KERNEL_MAJOR:
            raise OSError(errno.EPROTO, f"FUSE protocol {major}.{minor} is not {fp.KERNEL_MAJOR}.x")
        want = (
            fp.ASYNC_READ | fp.ATOMIC_O_TRUNC | fp.BIG_WRITES | fp.DONT_MASK | fp.DO_READDIRPLUS | fp.READDIRPLUS_AUTO
            | fp.ASYNC_DIO | fp.PARALLEL_DIROPS | (fp.POSIX_ACL if self.acl else 0) | fp.MAX_PAGES | fp.CACHE_SYMLINKS
            # set-id bits are dropped here; the kernel then asks for security.capability
            # once per file rather than before every write (SB_NOSEC)
            | fp.HANDLE_KILLPRIV_V2
        )
        self.writeback = self.writeback and bool(flags & fp.WRITEBACK_CACHE)  # what the kernel keeps to itself
        if self.writeback:
            want |= fp.WRITEBACK_CACHE
        flags2 = 0
        if flags & fp.INIT_EXT and len(data) >= fp.INIT_IN.size + fp.INIT_IN_FLAGS2.size:
            offered2 = fp.INIT_IN_FLAGS2.unpack_from(data, fp.INIT_IN.size)[0]
            if self.offer_io_uring and offered2 & fp.OVER_IO_URING:
                want |= fp.INIT_EXT
                flags2 = fp.OVER_IO_URING
                self.over_io_uring = True
        max_pages = self.max_write // 4096
        reply = fp.INIT_OUT.pack(
            fp.KERNEL_MAJOR, min(minor, fp.KERNEL_MINOR), max_readahead, flags & want,
            16, 12, self.max_write, 1, max_pages, 0, flags2,
        )
        return reply

    def destroy(self, h: tuple, data: memoryview) -> None:
        return None

    def release_lowers(self) -> None:
        """The connection has ended: let go of the lower layers now (Union.release_lowers),
        files still open on them included. Under the locks that closing those files
        takes, so that none is closed, and its number taken by another file, meanwhile."""
        upper = self.union.resolver.is_upper
        with self._lock:
            opened = [fd for fd, (index, _) in self._files.items() if not upper(index)]
            self.nodes.with_all_held(lambda held: self.union.release_lowers(
                opened + [fd for fd, index in held if not upper(index)]))

    def close(self) -> None:
        """Close every file still open through the mount, then the union: once the
        connection has ended and no request is being answered (``Session.run``),
        so that the upper layer's filesystem is free too."""
        with self._lock:
            for fd in self._files:
                os.close(fd)
            self._files.clear()
            self._node_fds.clear()
            self._writing.clear()
        self.nodes.close_held()
        self.union.close()

    def interrupt(self, h: tuple, data: memoryview) -> fp.Payload:
        """No answer: a request interrupted goes on, but a copy-up stops where its
        caller is being killed (see interrupts)."""
        self.interrupts.interrupt(data)
        return fp.NO_REPLY

    def _prepare(self, nodeid: int, name: str | None = None, wanted: bool = True) -> _Ahead:
        """Around a change that may copy a file up, outside the mount's lock for it: a
        large lower file's data copied ahead (Union.prepare_copy_up), let go of when
        the change is done; nothing where its name is gone, or unless wanted."""
        prepared = None
        if wanted:
            try:
                path = self.nodes.path(nodeid) if name is None else self.nodes.child_path(nodeid, name)
            except OSError:
                path = None
            if path is not None:
                prepared = self.union.prepare_copy_up(path)
        return _Ahead(self.union, prepared)

    # -- names -----------------------------------------------------------------
    def _entry(self, parent: int, name: str, path: str, seq: int | None = None) -> tuple[int, bytes]:
        """(node id, fuse_entry_out) for parent/name; node id 0 if a change began since seq."""
        attrs = self.union.getattr(path)
        identity = self._identity(attrs, path)
        nodeid = self.nodes.looked_up(parent, name, seq, identity)
        if identity is not None and nodeid:  # its file may be changed through another name meanwhile
            self.unsent.hold((nodeid,))
        entry_s, attr_s, entry_ns, attr_ns = self._entry_times
        return nodeid, fp.ENTRY_OUT.pack(nodeid, 0, entry_s, attr_s, entry_ns, attr_ns) + self._attr(attrs)

    def _identity(self, attrs: dict[str, int], path: str) -> Identity | None:
        """The upper file that path is one of several names of (see ``nodes``)."""
        if attrs["st_nlink"] > 1 and not stat.S_ISDIR(attrs["st_mode"]):
            return self.union.upper_identity(path)
        return None

    def _copied_up(self, path: str, open_copy: Callable[[], int], size: int) -> None:
        """Files open for reading on the lower file of path read its copy from now on,
        as on overlayfs (which swaps the real file under such a file, ovl_real_fdget):
        the kernel's cache of their pages can be dropped, and a READ then asked of
        the lower file would mix old data into a file that another open changed.
        The OPEN that made the copy learns of it too (``_hand_over_last_page``)."""
        self._copying.copy = (path, size)
        nodeid = self.nodes.find(path)
        if not nodeid:
            return
        with self._lock:
            for fd in self._node_fds.get(nodeid, ()):
                if self._files[fd][0] != 0:
                    try:
                        copy = open_copy()
                    except OSError as exc:  # the copy-up itself is done: this reader stays on the lower file
                        log.warning("a file open on %s stays on the lower file: %s", path, exc.strerror)
                        continue
                    try:
                        os.dup2(copy, fd, inheritable=False)  # the same fd number, which the kernel holds
                    finally:
                        os.close(copy)
                    self._files[fd] = (0, nodeid)

    def _renumbered(self, path: str) -> None:
        """The kernel keeps listings (FOPEN_CACHE_DIR); one that shows an entry's
        old number must go, though its names did not change."""
        parent = self.nodes.find(path.rsplit("/", 1)[0] or "/")
        if parent and self.notify is not None:
            self.notify(fp.NOTIFY_INVAL_INODE, fp.NOTIFY_INVAL_INODE_OUT.pack(parent, 0, 0))

    def _attrs_changed(self, path: str, alike: bool) -> None:
        """The kernel keeps attributes for the attribute timeout; a copy-up changed
        those of path (see ``CopyUp.on_attrs_changed``), which the kernel may hold
        under a node that this request does not name. Where only the birth time
        changed, only a node whose birth time the kernel holds is stale; the
        attributes the kernel gets for it then carry no timeout until a STATX has
        told it the new birth time (``birth_time_given``)."""
        if alike and not self.nodes.births_given:
            return
        nodeid, held = self.nodes.birth_time_replaced(path)
        if nodeid and (held or not alike) and self.notify is not None:  # offset -1: the attributes only
            self.notify(fp.NOTIFY_INVAL_INODE, fp.NOTIFY_INVAL_INODE_OUT.pack(nodeid, -1, 0))

    def _undo_entry(self, result: tuple[int, bytes]) -> None:
        if result[0]:
            self.nodes.forget(result[0], 1)

    def lookup(self, h: tuple, data: memoryview) -> bytes:
        name, parent = _name(data), h[3]
        try:
            answer = self.nodes.stable(lambda seq: self._entry(parent, name, self.nodes.child_path(parent, name), seq),
                                       self._undo_entry)[1]
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return self._negative  # cached by the kernel as a missing name
            raise
        crashpoints.pause("lookup.answered")
        return answer

    def forget(self, h: tuple, data: memoryview) -> fp.Payload:
        self.nodes.forget(h[3], fp.FORGET_IN.unpack_from(data)[0])
        return fp.NO_REPLY

    def batch_forget(self, h: tuple, data: memoryview) -> fp.Payload:
        count = fp.BATCH_FORGET_IN.unpack_from(data)[0]
        offset = fp.BATCH_FORGET_IN.size
        for _ in range(count):
            nodeid, lookups = fp.FORGET_ONE.unpack_from(data, offset)
            self.nodes.forget(nodeid, lookups)
            offset += fp.FORGET_ONE.size
        return fp.NO_REPLY

    def readlink(self, h: tuple, data: memoryview) -> bytes:
        # A symlink whose name is gone, held by O_PATH: readlinkat(fd, "") reads it still.
        return os.fsencode(self._of_file(h[3], None, self.union.readlink, lambda fd, index: os.readlink("", dir_fd=fd)))

    def _made(self, h: tuple, name: str, make: Callable[[str], Any]) -> bytes:
        with self.nodes.change():
            path = self.nodes.child_path(h[3], name)
            make(path)
            return self._entry(h[3], name, path)[1]

    def mknod(self, h: tuple, data: memoryview) -> bytes:
        mode, rdev, umask, _ = fp.MKNOD_IN.unpack_from(data)
        name = _name(data[fp.MKNOD_IN.size:])
        return self._made(h, name, lambda path: self.union.mknod(path, mode, rdev, self._caller(h, umask)))

    def mkdir(self, h: tuple, data: memoryview) -> bytes:
        mode, umask = fp.MKDIR_IN.unpack_from(data)
        name = _name(data[fp.MKDIR_IN.size:])
        return self._made(h, name, lambda path: self.union.mkdir(path, mode, self._caller(h, umask)))

    def symlink(self, h: tuple, data: memoryview) -> bytes:
        name, target = _two_names(data)
        return self._made(h, name, lambda path: self.union.symlink(path, target, self._caller(h)))

    def link(self, h: tuple, data: memoryview) -> bytes:
        source = fp.LINK_IN.unpack_from(data)[0]
        name = _name(data[fp.LINK_IN.size:])
        if self.nodes.detached(source):
            # The kernel links a file without names only if it is an O_TMPFILE file
            # (I_LINKABLE): name it through the descriptor it is open by.
            return self._name_unnamed(h, source, name)

        def link(path: str) -> None:
            source_path = self.nodes.path(source)
            self.union.link(source_path, path)
            identity = self.union.upper_identity(source_path)
            if identity is not None:  # the new name gets the source's id: one inode in the kernel
                self.nodes.identify(source, identity)
        with self._prepare(source):
            return self._made(h, name, link)

    def _name_unnamed(self, h: tuple, source: int, name: str) -> bytes:
        with self._lock:  # a RELEASE cannot close the fd meanwhile
            fd = self._upper_fd(source)
            if fd is None:
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
            fd = os.dup(fd)
        try:
            with self.nodes.change():
                path = self.nodes.child_path(h[3], name)
                self.union.link_open(fd, path)
                self.nodes.named(source, h[3], name)
                return self._entry(h[3], name, path)[1]
        finally:
            os.close(fd)

    def unlink(self, h: tuple, data: memoryview) -> None:
        name = _name(data)
        with self.nodes.change():
            kept = self.union.unlink(self.nodes.child_path(h[3], name))
            gone = self.nodes.removed(h[3], name, kept=kept)
        self._keeps_its_links(gone)

    def _keeps_its_links(self, nodeid: int | None) -> None:
        """A lower file whose name a removal or a rename took keeps its link count on
        overlayfs (its lower names stay), while the kernel takes one off the count it
        holds. If the file is open on the lower layer, where fstat can still show it,
        the kernel is told to ask again. (The upper file's own count drops as the kernel's.)"""
        if nodeid is None or self.notify is None:
            return
        with self._lock:
            lower = any(self._files[fd][0] != 0 for fd in self._node_fds.get(nodeid, ()))
        if lower:
            self.notify(fp.NOTIFY_INVAL_INODE, fp.NOTIFY_INVAL_INODE_OUT.pack(nodeid, -1, 0))

    def rmdir(self, h: tuple, data: memoryview) -> None:
        name = _name(data)
        with self.nodes.change():
            # A process may still be in the directory, or have it open: it lists it as
            # empty, and is answered from its real directory, kept until the kernel forgets
            # it, as on overlayfs.
            remains, held = self.union.rmdir_holding(self.nodes.child_path(h[3], name))
            self.nodes.removed(h[3], name, remains, held)

    def _rename(self, parent: int, new_parent: int, names: memoryview, flags: int) -> None:
        old, new = _two_names(names)
        if flags & ~(syscalls.RENAME_NOREPLACE | syscalls.RENAME_WHITEOUT) and flags != syscalls.RENAME_EXCHANGE:
            raise OSError(errno.EINVAL, "rename flags")  # what the VFS lets through is one of these
        with self._prepare(parent, old), self.nodes.change():
            old_path, new_path = self.nodes.child_path(parent, old), self.nodes.child_path(new_parent, new)
            if flags == syscalls.RENAME_EXCHANGE:
                self.union.exchange(old_path, new_path)
                self.nodes.exchanged(parent, old, new_parent, new)
            else:
                held, remains, kept = self._hold(new_parent, new, new_path) if flags == 0 else (None, None, None)
                try:
                    self.union.rename(old_path, new_path, noreplace=bool(flags & syscalls.RENAME_NOREPLACE),
                                      whiteout=bool(flags & syscalls.RENAME_WHITEOUT))
                except BaseException:
                    if held:
                        self.union.release_held(*held)
                    raise
                self._keeps_its_links(self.nodes.renamed(parent, old, new_parent, new, held, remains, kept))

    def _hold(self, parent: int, name: str, path: str
              ) -> tuple[tuple[int, int] | None, dict[str, int] | None, tuple[int, str] | None]:
        """The entry a rename is about to replace, if the kernel knows it: an open
        already on its way to it must still find it, as on any filesystem, and a
        process in a directory replaced is answered from its real one, as on
        overlayfs (Union.hold)."""
        if not self.nodes.known(parent, name):
            return None, None, None
        try:
            return self.union.hold(path)
        except OSError:
            return None, None, None

    def rename(self, h: tuple, data: memoryview) -> None:
        self._rename(h[3], fp.RENAME_IN.unpack_from(data)[0], data[fp.RENAME_IN.size:], 0)

    def rename2(self, h: tuple, data: memoryview) -> None:
        new_parent, flags, _ = fp.RENAME2_IN.unpack_from(data)
        self._rename(h[3], new_parent, data[fp.RENAME2_IN.size:], flags)

    # -- attributes ------------------------------------------------------------
    def _attrs(self, nodeid: int, fh: int | None) -> dict[str, int]:
        return self._of_file(nodeid, fh, self.union.getattr, self.union.fgetattr, self._nameless_attrs)

    def _of_file(self, nodeid: int, fh: int | None, by_path: Callable[[str], T], by_fd: Callable[[int, int], T],
                 nameless: Callable[[int], T] | None = None) -> T:
        """What by_path tells of the node's path, or by_fd of a descriptor on its file (and
        the index of that file's layer): the one fh names, or one that outlived the names
        (or what nameless tells of a node without names)."""
        if fh is not None and fh in self._files:
            return by_fd(fh, self._files[fh][0])
        try:
            return self.nodes.stable(lambda seq: by_path(self.nodes.path(nodeid)))
        except OSError as exc:
            if exc.errno != errno.ESTALE:
                raise
        return nameless(nodeid) if nameless is not None else self._nameless(nodeid, by_fd)

    def _nameless_attrs(self, nodeid: int) -> dict[str, int]:
        remains = self.nodes.remains(nodeid)
        if remains is None:
            kept = self.nodes.kept(nodeid)
            if kept is not None:  # a removed lower file, as it stays in its layer: no open needed
                return self.union.layer_getattr(*kept, kept[1])
            return self._nameless(nodeid, self.union.fgetattr)
        attrs = self.nodes.with_held(nodeid, lambda fd, index: self.union.removed_attrs(fd, index, remains))
        return remains if attrs is None else attrs

    def _nameless(self, nodeid: int, by_fd: Callable[[int, int], T]) -> T:
        """Of a node whose names are gone: by a descriptor still open on its file (the
        upper one first: a copy-up's), or the one a rename, an unlink or a removed
        directory kept (``with_held``); ESTALE without either."""
        with self._lock:  # a RELEASE cannot close the fd meanwhile
            fds = self._node_fds.get(nodeid)
            if fds:
                fd = self._upper_fd(nodeid)
                fd = fds[-1] if fd is None else fd  # a removed file still open: fstat(2) works on it
                return by_fd(fd, self._files[fd][0])
        found = self.nodes.with_held(nodeid, by_fd)
        if found is None:
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))
        return found

    def getattr(self, h: tuple, data: memoryview) -> bytes:
        flags, _, fh = fp.GETATTR_IN.unpack_from(data)
        if self._out_of_space and flags & fp.GETATTR_FH and h[3] in self._out_of_space and self._still_full(h[3]):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # before a write to the file: see write
        return self._valid(h[3]) + self._attr(self._attrs(h[3], fh if flags & fp.GETATTR_FH else None))

    def _valid(self, nodeid: int) -> bytes:
        """An attribute reply's timeout: none while the kernel holds a stale birth time."""
        if self.nodes.births_given and self.nodes.birth_time_stale(nodeid):
            return self._attr_now
        return self._attr_valid

    def statx(self, h: tuple, data: memoryview) -> bytes:
        """Sent instead of GETATTR when the caller asks for the birth time: that of the
        real file, as on overlayfs (``stat`` asks for it; ``ls -l`` and ``find`` do not)."""
        flags, _, fh, _, _ = fp.STATX_IN.unpack_from(data)
        handle = fh if flags & fp.GETATTR_FH else None
        born = self._of_file(h[3], handle, self.union.birth_time, self.union.fbirth_time)
        reply = self._statx_valid + self._statx(self._attrs(h[3], handle), born)
        self.nodes.birth_time_given(h[3])
        return reply

    def setattr(self, h: tuple, data: memoryview) -> bytes:
        (valid, _, fh, size, _, atime, mtime, ctime, atime_ns, mtime_ns, ctime_ns, mode, _, uid, gid, _
         ) = fp.SETATTR_IN.unpack_from(data)
        self.unsent.wait(h[3])
        handle = fh if valid & fp.FATTR_FH and fh in self._files else None
        # utimes(path, NULL), which an append-only file allows: both times "now". With the
        # writeback cache the kernel sends its own clock's now for mtime, the ctime it set.
        touch = bool(valid & fp.FATTR_ATIME_NOW and valid & fp.FATTR_MTIME and (
            valid & fp.FATTR_MTIME_NOW or (valid & fp.FATTR_CTIME and (mtime, mtime_ns) == (ctime, ctime_ns))))
        if handle is None and self.nodes.detached(h[3]):
            # Its names are gone (unlinked or replaced while open): fchmod, fchown and
            # futimens change the upper file by a descriptor it is still open by (or one
            # a rename kept), as they change overlayfs's real file.
            def set_by(fd: int) -> None:
                self._set(h, valid, fd, size, (atime, atime_ns), (mtime, mtime_ns), mode, uid, gid, touch)
            remains = self.nodes.remains(h[3])
            if remains is not None:  # a removed directory
                def change_dir(fd: int, index: int) -> dict[str, int]:
                    set_by(fd)
                    return self.union.removed_attrs(fd, index, remains)
                return self._valid(h[3]) + self._attr(self._change_removed_dir(h[3], change_dir))

            def change_file(fd: int) -> dict[str, int]:
                set_by(fd)
                return self.union.fgetattr(fd, 0)
            with self._lock:  # a RELEASE cannot close the fd meanwhile
                fd = self._upper_fd(h[3], writable=bool(valid & fp.FATTR_SIZE))
                if fd is not None:
                    return self._valid(h[3]) + self._attr(change_file(fd))
            if valid & _CALLER_CHANGES:
                changed = self._change_nameless(h[3], change_file, bool(valid & fp.FATTR_SIZE))
                return self._valid(h[3]) + self._attr(changed)
            # The times the kernel kept for a file it just unlinked (writeback cache):
            # once per such file. Nobody can see them, and no upper file to set them on.
            return self._changed(h[3], lambda: self._nameless_attrs(h[3]), valid, (mtime, mtime_ns),
                                 (ctime, ctime_ns))
        upper_fd = handle if handle is not None and self._files[handle][0] == 0 else None
        ahead = upper_fd is None and not (valid & fp.FATTR_SIZE and not size)
        with self._prepare(h[3], wanted=ahead), self.nodes.exclusive():
            self._set(h, valid, upper_fd, size, (atime, atime_ns), (mtime, mtime_ns), mode, uid, gid, touch)
        return self._changed(h[3], lambda: self._attrs(h[3], handle), valid, (mtime, mtime_ns), (ctime, ctime_ns))

    def _changed(self, nodeid: int, attrs: Callable[[], dict[str, int]], valid: int, mtime: tuple[int, int],
                 ctime: tuple[int, int]) -> bytes:
        """The reply to a SETATTR whose changes are made: the node's attributes (attrs). Times
        alone of a file whose names are gone are taken without a file to set them on
        (_set), also where nothing of it is left to answer from (an upper file unlinked
        once closed, or unlinked by another process meanwhile): they are the times the
        kernel writes back after an unlink, and it keeps an error of that request against
        the whole filesystem, for the next syncfs(2) to report (fuse_flush_time_update).
        Only a regular file's times come with the change time (the kernel keeps those)."""
        try:
            return self._valid(nodeid) + self._attr(attrs())
        except OSError as exc:
            if exc.errno != errno.ESTALE or valid & _CHANGES_FILE or not valid & fp.FATTR_CTIME:
                raise
        return self._attr_now + self._attr(_gone_file(mtime[0] * 1_000_000_000 + mtime[1],
                                                      ctime[0] * 1_000_000_000 + ctime[1]))

    def _change_removed_dir(self, nodeid: int, change: Callable[[int, int], T],
                            asked_first: Callable[[int], object] | None = None) -> T:
        """change(fd, layer index) on the real directory of a removed one, kept for it
        (Union.rmdir_holding, Union.hold), as overlayfs changes it: an upper one takes
        it; a lower one would need a copy-up, which overlayfs fails with ENOTDIR there,
        after asked_first (see _change). ESTALE where none was kept."""
        def upper_only(fd: int, index: int) -> tuple[T]:
            if not self.union.resolver.is_upper(index):
                if asked_first is not None:
                    asked_first(fd)
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            return (change(fd, index),)
        done = self.nodes.with_held(nodeid, upper_only)
        if done is None:
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))
        return done[0]

    def _caller(self, h: tuple, umask: int = 0) -> Caller:
        """Who asks, in the IDs of the disk: a new entry's owner."""
        return Caller(self.ids.uid_on_disk(h[4]), self.ids.gid_on_disk(h[5]), umask)

    def _set_id_killer(self, h: tuple) -> Callable[[int], None]:
        """What a write or truncation by h's caller does to an fd's set-id bits. Asked for
        by the kernel (HANDLE_KILLPRIV_V2) when the caller has no CAP_FSETID."""
        requester, shown = Requester(h[4], h[5], h[6]), self.ids.gid_shown
        return functools.partial(kill_set_id, in_group=lambda gid: requester.in_group(shown(gid)))

    def _dropped_by_chown(self, h: tuple) -> Callable[[dict[str, int]], int]:
        """The set-id bits that a chown by h's caller drops from a file with these
        attributes (notify_change: set-user-ID always, set-group-ID as
        setattr_should_drop_sgid says), and EPERM where there are some and the
        caller may not change the file's mode (setattr_prepare)."""
        ids = self.ids

        def dropped(attrs: dict[str, int]) -> int:
            caller = Requester(h[4], h[5], h[6])
            kill = set_id_bits_dropped(attrs["st_mode"], attrs["st_gid"],
                                       lambda gid: caller.in_group(ids.gid_shown(gid)) or caller.capable(CAP_FSETID))
            if kill and caller.uid != ids.uid_shown(attrs["st_uid"]) and not caller.capable(CAP_FOWNER):
                raise OSError(errno.EPERM, os.strerror(errno.EPERM))
            return kill
        return dropped

    def _set(self, h: tuple, valid: int, upper_fd: int | None, size: int, atime: tuple[int, int],
             mtime: tuple[int, int], mode: int, uid: int, gid: int, touch: bool) -> None:
        """The SETATTR's changes: by upper_fd, an fd on the entry's upper file, where
        given; else by the node's path."""
        owner = (self.ids.uid_on_disk(uid) if valid & fp.FATTR_UID and uid != _NO_ID else -1,
                 self.ids.gid_on_disk(gid) if valid & fp.FATTR_GID and gid != _NO_ID else -1)
        times = valid & (fp.FATTR_ATIME | fp.FATTR_MTIME | fp.FATTR_ATIME_NOW | fp.FATTR_MTIME_NOW)
        # A truncation's "mtime now" is done by the host's truncate already.
        if valid & fp.FATTR_SIZE and times == fp.FATTR_MTIME | fp.FATTR_MTIME_NOW:
            times = 0
        # With the writeback cache the kernel keeps a file's times itself, and sends none with
        # a truncation to the size it holds: the host's truncate must not change them then,
        # or the kernel's copy and the file's would differ until the kernel writes its own back.
        retime = not self.writeback or bool(valid & fp.FATTR_MTIME)
        new_times = (self._time(valid, fp.FATTR_ATIME, fp.FATTR_ATIME_NOW, *atime),
                     self._time(valid, fp.FATTR_MTIME, fp.FATTR_MTIME_NOW, *mtime))
        if upper_fd is not None:
            # A file open on the upper layer (an ftruncate, or the kernel writing back the
            # times it kept): by its fd, which works after its name is gone too.
            if valid & fp.FATTR_MODE:
                os.fchmod(upper_fd, mode & 0o7777)
            if valid & (fp.FATTR_UID | fp.FATTR_GID):
                os.fchown(upper_fd, *owner)
            if valid & fp.FATTR_SIZE:
                self.union.ftruncate(upper_fd, size, retime)
                if valid & fp.FATTR_KILL_SUIDGID:
                    self._set_id_killer(h)(upper_fd)
            if times:
                syscalls.futimens(upper_fd, new_times)
            return
        try:
            path = self.nodes.path(h[3])
        except OSError as exc:
            if exc.errno == errno.ESTALE and not valid & _CHANGES_FILE:
                return  # times the kernel kept for a file whose name is gone: nobody can see them
            raise
        if not (valid & _CHANGES_FILE or times):
            # A change of nothing: chown(path, -1, -1), which sends the file's new change time
            # where the kernel keeps its times (the writeback cache: regular files), or the
            # kernel dropping a writer's privileges ahead of its WRITE, which sends nothing.
            dropped = self._dropped_by_chown(h) if valid & fp.FATTR_CTIME else None
            self.union.chown(path, -1, -1, dropped)
            return
        if valid & fp.FATTR_MODE:
            self.union.chmod(path, mode)
        if valid & (fp.FATTR_UID | fp.FATTR_GID):
            self.union.chown(path, *owner)
        if valid & fp.FATTR_SIZE:
            self.union.truncate(path, size, self._set_id_killer(h) if valid & fp.FATTR_KILL_SUIDGID else None, retime)
        if times:
            self.union.utimens(path, new_times, touch)

    @staticmethod
    def _time(valid: int, given: int, now: int, seconds: int, ns: int) -> int:
        if not valid & given:
            return syscalls.UTIME_OMIT
        if valid & now:
            return syscalls.UTIME_NOW
        return seconds * 1_000_000_000 + ns

    def statfs(self, h: tuple, data: memoryview) -> bytes:
        st = self.union.statfs()
        return fp.KSTATFS.pack(
            st["f_blocks"], st["f_bfree"], st["f_bavail"], st["f_files"], st["f_ffree"],
            st["f_bsize"], st["f_namemax"], st["f_frsize"],
        )

    # -- files -----------------------------------------------------------------
    def _opened(self, fd: int, index: int, nodeid: int, flags: int) -> None:
        """fd, opened with flags, is the node's file handle from now on. One that writes is
        counted before the names lock is let go (see ``_readdirplus``)."""
        with self._lock:
            self._files[fd] = (index, nodeid)
            self._node_fds.setdefault(nodeid, []).append(fd)
            if flags & (os.O_WRONLY | os.O_RDWR):
                self._writing.add(fd)

    def _open_for_writing(self, nodeid: int) -> bool:
        with self._lock:
            return any(fd in self._writing for fd in self._node_fds.get(nodeid, ()))

    def _upper_fd(self, nodeid: int, writable: bool = False) -> int | None:
        """A descriptor the node is open by in the upper layer, if any; under self._lock.
        writable: one open for writing (ftruncate refuses any other, EINVAL)."""
        return next((fd for fd in self._node_fds.get(nodeid, ())
                     if self._files[fd][0] == 0 and (not writable or fd in self._writing)), None)

    def _host_flags(self, flags: int) -> int:
        if self.writeback:  # the kernel may read to fill a page it writes, and appends itself
            if flags & os.O_ACCMODE == os.O_WRONLY:
                flags = flags & ~os.O_ACCMODE | os.O_RDWR
            flags &= ~os.O_APPEND
        return flags

    def _hand_over_last_page(self, nodeid: int, fd: int, size: int) -> None:
        """With the writeback cache, a write to a page that the kernel lacks waits for a
        READ of that page first: the first append to a file just copied up would read
        back its last page. The page goes to the kernel before the OPEN's answer
        (NOTIFY_STORE) instead. Only while the node has no other open: then none of its
        pages is dirty (a close writes them back) or being read, so the store neither
        undoes a write nor waits for a READ that a worker held here would have to answer."""
        start = size - size % mmap.PAGESIZE
        if start == size or self.notify is None:
            return
        with self._lock:  # an OPEN of the node answered meanwhile would let its reads begin
            if self._node_fds.get(nodeid):
                return
            status = fcntl.fcntl(fd, fcntl.F_GETFL)
            try:  # this read is not the caller's: the copy keeps the lower file's atime
                fcntl.fcntl(fd, fcntl.F_SETFL, status | os.O_NOATIME)
            except PermissionError as exc:
                if exc.errno != errno.EPERM:
                    raise
                return  # neither the file's owner nor CAP_FOWNER (as in Layer.open): the kernel reads it later
            try:
                page = os.pread(fd, size - start, start)
            finally:
                fcntl.fcntl(fd, fcntl.F_SETFL, status)
            self.notify(fp.NOTIFY_STORE, fp.NOTIFY_STORE_OUT.pack(nodeid, start, len(page), 0) + page)

    def open(self, h: tuple, data: memoryview) -> bytes:
        asked, open_flags = fp.OPEN_IN.unpack_from(data)
        flags = self._host_flags(asked)
        nodeid, caller = h[3], self._caller(h)
        if flags & _WRITES:  # may copy up: no name moves meanwhile
            kill = self._set_id_killer(h) if open_flags & fp.OPEN_KILL_SUIDGID else None  # O_TRUNC
            with self._prepare(nodeid, wanted=not flags & os.O_TRUNC), self.nodes.exclusive():
                path = None if self.nodes.detached(nodeid) else self.nodes.path(nodeid)
                if path is not None:
                    self._copying.copy = None
                    fd, index = self.union.open(path, flags, caller, kill, appending=bool(asked & os.O_APPEND))
                    copy = self._copying.copy
                    if self.writeback and copy is not None and copy[0] == path:
                        self._hand_over_last_page(nodeid, fd, copy[1])
                    self._opened(fd, index, nodeid, flags)
            if path is None:
                fd, index = self._reopen_nameless(nodeid, flags)
                self._opened(fd, index, nodeid, flags)
        else:
            try:
                fd, index = self.nodes.stable(lambda seq: self.union.open(self.nodes.path(nodeid), flags, caller),
                                              lambda opened: os.close(opened[0]))
            except OSError as exc:
                if exc.errno != errno.ESTALE:
                    raise
                fd, index = self._reopen_nameless(nodeid, flags)
            self._opened(fd, index, nodeid, flags)
        return fp.OPEN_OUT.pack(fd, fp.FOPEN_KEEP_CACHE, 0)  # lower files never change; the upper only through us

    def _reopen_nameless(self, nodeid: int, flags: int) -> tuple[int, int]:
        """An open of a file whose names are gone: through /proc/PID/fd, or one that was on
        its way when a rename replaced the file. As on overlayfs, its real file opens again:
        the one it is still open by (the upper one first), the one a rename took, or a
        removed lower file kept. A lower one opens for reading only: writing would need a
        copy-up, which overlayfs tries and fails (_no_copy_up)."""
        def reopen(fd: int, index: int) -> tuple[int, int]:
            if flags & _WRITES and not self.union.resolver.is_upper(index):
                raise self._no_copy_up(nodeid)
            return os.open(f"/proc/self/fd/{fd}", fd_flags(flags)), index
        return self._nameless(nodeid, reopen)

    def create(self, h: tuple, data: memoryview) -> bytes:
        flags, mode, umask, _ = fp.CREATE_IN.unpack_from(data)
        flags = self._host_flags(flags)
        name = _name(data[fp.CREATE_IN.size:])
        with self.nodes.change():
            path = self.nodes.child_path(h[3], name)
            fd = self.union.create(path, mode, flags, self._caller(h, umask))
            try:
                nodeid, entry = self._entry(h[3], name, path)
            except BaseException:
                os.close(fd)
                raise
            self._opened(fd, 0, nodeid, flags)
        return entry + fp.OPEN_OUT.pack(fd, fp.FOPEN_KEEP_CACHE, 0)

    def tmpfile(self, h: tuple, data: memoryview) -> bytes:
        flags, mode, umask, _ = fp.CREATE_IN.unpack_from(data)
        flags = self._host_flags(flags)
        with self.nodes.exclusive():  # copies the directory up: no name moves meanwhile
            fd = self.union.tmpfile(self.nodes.path(h[3]), mode, flags, self._caller(h, umask))
        try:
            attrs = self.union.fgetattr(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        nodeid = self.nodes.unnamed()
        self._opened(fd, 0, nodeid, flags)
        entry_s, attr_s, entry_ns, attr_ns = self._entry_times
        return (fp.ENTRY_OUT.pack(nodeid, 0, entry_s, attr_s, entry_ns, attr_ns) + self._attr(attrs)
                + fp.OPEN_OUT.pack(fd, fp.FOPEN_KEEP_CACHE, 0))

    def read(self, h: tuple, data: memoryview) -> fp.FileRange:
        fh, offset, size, _ = fp.READ_IN.unpack_from(data)
        return fp.FileRange(fh, offset, size)

    def write(self, h: tuple, data: memoryview) -> bytes:
        fh, offset, size, write_flags, _, _, _ = fp.WRITE_IN.unpack_from(data)
        if write_flags & fp.WRITE_KILL_SUIDGID:
            self._set_id_killer(h)(fh)
        start = fp.WRITE_IN.size
        try:
            return fp.WRITE_OUT.pack(os.pwrite(fh, data[start:start + size], offset), 0)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._refuse_writes_while_full(h[3])
            raise

    def _refuse_writes_while_full(self, nodeid: int) -> None:
        """With the writeback cache a write(2) lands in the kernel's page cache, and only its
        write-back reaches the upper layer: a full one fails that WRITE, the kernel keeps the
        error for the file's next fsync or close and drops the data, and went on taking
        writes, so that a program writing until ENOSPC never stopped. The kernel asks for a
        file's attributes before it takes a write (GETATTR with the file's handle) when they
        are stale: they are made stale, and that question is answered ENOSPC while the upper
        layer stays full (as lseek's SEEK_END, which asks the same way). What a process wrote
        before the first write-back failed is lost beyond the space there was, and its close
        or fsync says so. (Without notifications, nothing to do.)"""
        if self.notify is None:
            return
        self._out_of_space.add(nodeid)
        self.notify(fp.NOTIFY_INVAL_INODE, fp.NOTIFY_INVAL_INODE_OUT.pack(nodeid, -1, 0))

    def _still_full(self, nodeid: int) -> bool:
        """Whether the upper layer still has less than a megabyte free (for the driver's own
        writes: the root's reserve counts, as for overlayfs's writes to it)."""
        st = os.statvfs(self.union.upper.fd)
        free = st.f_bfree if os.geteuid() == 0 else st.f_bavail
        if free * st.f_frsize >= 1 << 20:
            self._out_of_space.discard(nodeid)
            return False
        return True

    def release(self, h: tuple, data: memoryview) -> None:
        fh = fp.RELEASE_IN.unpack_from(data)[0]
        if fh in self._writing:  # once answered, the kernel may forget what was written
            self.unsent.wait(h[3])
        with self._lock:
            opened = self._files.pop(fh, None)
            if opened is None:
                return
            fds = self._node_fds.get(opened[1], [])
            if fh in fds:
                fds.remove(fh)
            if not fds:
                self._node_fds.pop(opened[1], None)
            self._writing.discard(fh)
            self.union.release(fh)
            os.close(fh)

    def fsync(self, h: tuple, data: memoryview) -> None:
        fh, flags, _ = fp.FSYNC_IN.unpack_from(data)
        self.union.fsync(fh, bool(flags & fp.FSYNC_FDATASYNC))

    def fsyncdir(self, h: tuple, data: memoryview) -> None:
        if not self.nodes.detached(h[3]):  # a removed directory's removal is its parent's to sync
            self.union.fsyncdir(self.nodes.path(h[3]))

    def fallocate(self, h: tuple, data: memoryview) -> None:
        fh, offset, length, mode, _ = fp.FALLOCATE_IN.unpack_from(data)
        self.union.fallocate(fh, mode, offset, length)

    def copy_file_range(self, h: tuple, data: memoryview) -> bytes:
        fh_in, off_in, _, fh_out, off_out, length, _ = fp.COPY_FILE_RANGE_IN.unpack_from(data)
        return fp.WRITE_OUT.pack(os.copy_file_range(fh_in, fh_out, min(length, 1 << 30), off_in, off_out), 0)

    def ioctl(self, h: tuple, data: memoryview) -> bytes:
        """Only the file attributes (lsattr, chattr), which the kernel asks of and sets on a
        file or directory it opened for it, having checked the caller's right to; any
        other ioctl is ENOTTY, as on overlayfs."""
        fh, flags, cmd, _, in_size, out_size = fp.IOCTL_IN.unpack_from(data)
        if _GET_FILEATTR.get(cmd) == out_size:
            # By the file's descriptor, which also answers for a file whose names are gone
            # (a directory's handle is no descriptor: by its path, or what it kept).
            value = self._of_file(h[3], None if flags & fp.IOCTL_DIR else fh,
                                  lambda path: self.union.fileattr(path, cmd, out_size),
                                  lambda fd, index: self.union.ffileattr(fd, index, cmd, out_size))
            return fp.IOCTL_OUT.pack(0, 0, 0, 0) + value
        if _SET_FILEATTR.get(cmd) == in_size and not out_size:
            value = bytes(data[fp.IOCTL_IN.size:fp.IOCTL_IN.size + in_size])
            self._change(h[3], lambda path: self.union.set_fileattr(path, cmd, value),  # may copy up
                         lambda fd: self.union.fset_fileattr(fd, cmd, value))
            return fp.IOCTL_OUT.pack(0, 0, 0, 0)
        raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))

    def syncfs(self, h: tuple, data: memoryview) -> None:
        self.union.settle()
        if self.union.writable:
            syscalls.syncfs(self.union.upper.fd)  # the upper filesystem's alone, as overlayfs does (ovl_sync_fs)

    # -- directories -----------------------------------------------------------
    def opendir(self, h: tuple, data: memoryview) -> bytes:
        if not self.nodes.detached(h[3]):  # a removed directory opens, and lists nothing
            self.nodes.path(h[3])  # ENOENT for a directory the kernel has forgotten
        with self._lock:
            fh = next(self._dir_ids)
            keeps = h[3] not in self._kept_dirs
            if keeps:
                self._kept_dirs.add(h[3])
            self._dirs[fh] = _Dir(h[3], keeps)
        # The kernel keeps listings between opens: names change only through this mount, and
        # each change through it drops its directory's listing; so does a copy-up that gives
        # an entry a new number (_renumbered). But it fills the listing it keeps with what
        # any keeping open's READDIR answers at the position the fill has reached, and one
        # open may start the fill again after a change while another's answer from before
        # the change is on its way in: that would keep a removed name. So only one open of
        # a directory at a time has its listing kept; the others are answered by the driver.
        # All keep the kernel's listing (FOPEN_KEEP_CACHE): an open without it would drop it.
        return fp.OPEN_OUT.pack(fh, (fp.FOPEN_CACHE_DIR if keeps else 0) | fp.FOPEN_KEEP_CACHE, 0)

    def releasedir(self, h: tuple, data: memoryview) -> None:
        with self._lock:
            handle = self._dirs.pop(fp.RELEASE_IN.unpack_from(data)[0], None)
            if handle is not None and handle.keeps:
                self._kept_dirs.discard(handle.nodeid)

    def _listing(self, data: memoryview) -> tuple[_Dir, int, int]:
        """The handle, the index of the first entry after the request's offset, and its size."""
        fh, offset, size, _ = fp.READ_IN.unpack_from(data)
        handle = self._dirs.get(fh)
        if handle is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        if handle.entries is None or offset == 0:  # a snapshot per pass: stable while entries change
            handle.generation, handle.entries = self._snapshot(handle.nodeid)
        return handle, bisect.bisect_right(handle.entries, offset, key=lambda entry: entry[0]), size

    def _snapshot(self, nodeid: int) -> tuple[int, Listing]:
        """(generation, entries) of a directory. A program that lists a directory twice
        in a row (``rm -rf`` opens each one to see whether it is empty, then again to
        remove what is in it) gets the first listing again while nothing has changed."""
        generation = self.union.generation
        if self.nodes.detached(nodeid):
            return generation, []
        kept = self._listings.get(nodeid)
        if kept is not None and kept[0] == generation:
            return kept
        listing = self.nodes.stable(lambda seq: self.union.listed(self.nodes.path(nodeid)))
        entries = sorted((_cookie(name), name, attrs, source, os.fsencode(name)) for name, attrs, source in listing)
        kept = (generation, entries)
        with self._lock:  # only the last few: a listing of a large directory is large
            self._listings.pop(nodeid, None)
            if len(self._listings) >= _KEPT_LISTINGS:
                del self._listings[next(iter(self._listings))]  # the oldest
            self._listings[nodeid] = kept
        return kept

    def readdir(self, h: tuple, data: memoryview) -> bytes:
        handle, start, size = self._listing(data)
        entries = handle.entries
        assert entries is not None
        out = bytearray()
        for cookie, name, attrs, _, raw in entries[start:]:
            if len(out) + fp.dirent_size(raw, False) > size:
                break
            ino, mode = (attrs["st_ino"], attrs["st_mode"]) if attrs else (fp.UNKNOWN_INO, 0o040000)
            out += fp.dirent(ino, cookie, mode, raw)
        return bytes(out)

    def readdirplus(self, h: tuple, data: memoryview) -> bytes:
        with self.nodes.exclusive():  # each entry's attributes and node id from the same moment
            answer = self._readdirplus(data)
        crashpoints.pause("readdirplus.answered")
        return answer

    def _readdirplus(self, data: memoryview) -> bytes:
        handle, start, size = self._listing(data)
        entries = handle.entries
        assert entries is not None
        if not entries:
            return b""  # a removed directory's too, which has no path
        base = self.nodes.path(handle.nodeid)
        prefix = base if base == "/" else base + "/"
        entry_s, attr_s, entry_ns, attr_ns = self._entry_times
        unchanged = handle.generation == self.union.generation  # the snapshot's sources still hold
        described = self._described_up_to(handle) if unchanged else -1
        known, looked_up, entry_out, attr = self.nodes.known, self.nodes.looked_up, fp.ENTRY_OUT.pack, self._attr
        # A file open for writing goes as a plain entry, looked up when asked for. The kernel
        # keeps a regular file's size itself (writeback cache) and takes the driver's only
        # when it makes the file's inode, here or in a LOOKUP: had the file's writer
        # appended, closed, and the kernel forgotten the file before this answer reached
        # it, the inode it then made would keep the size from before the append. An open
        # for writing that begins once the names lock is let go (none begins while it is
        # held) has its RELEASE wait until this answer is out (see unsent).
        writing, peek = self._writing, self.nodes.peek
        given: list[int] = []  # regular files whose attributes go out
        out = bytearray()
        last = None
        for cookie, name, attrs, source, raw in entries[start:]:
            if len(out) + fp.dirent_size(raw, True) > size:
                break
            last = cookie
            head = _NO_ENTRY
            ino, mode = fp.UNKNOWN_INO, 0o040000
            if attrs is not None and cookie <= described and known(handle.nodeid, name):
                ino, mode = attrs["st_ino"], attrs["st_mode"]  # the kernel has it: a plain entry
            elif attrs is not None:
                try:
                    if source is not None and unchanged:
                        full = self.union.listed_getattr(*source, prefix + name, handle.generation)
                    else:
                        full = self.union.getattr(prefix + name)
                except OSError:
                    full = None  # gone since the snapshot: a plain entry, looked up if asked for
                if full is not None:
                    identity = self._identity(full, prefix + name)
                    regular = stat.S_ISREG(full["st_mode"])
                    if not (writing and regular and self._open_for_writing(peek(handle.nodeid, name, identity))):
                        nodeid = looked_up(handle.nodeid, name, None, identity)
                        head = entry_out(nodeid, 0, entry_s, attr_s, entry_ns, attr_ns) + attr(full)
                        if regular:
                            given.append(nodeid)
                    ino, mode = full["st_ino"], full["st_mode"]
                else:
                    ino, mode = attrs["st_ino"], attrs["st_mode"]
            out += head + fp.dirent(ino, cookie, mode, raw)
        if unchanged and last is not None:
            self._describe(handle, described, entries[start - 1][0] if start else 0, last)
        if given:
            self.unsent.hold(given)
        return bytes(out)

    # A program that lists a directory twice in a row (``rm -rf`` opens each one
    # to see whether it is empty, then again to remove what is in it) makes the
    # kernel ask for the same entries again: its listing cache fills only up to
    # the end of a directory. While nothing changed, entries that a READDIRPLUS
    # gave with attributes a moment ago, and that the kernel still holds, go
    # as plain entries: its attributes of them are as new as the driver's
    # (changes through the mount reach it; the layers below do not change).
    def _described_up_to(self, handle: _Dir) -> int:
        """The last cookie whose entry the kernel has attributes of, or -1."""
        done = self._described.get(handle.nodeid)
        if done is None or done.generation != handle.generation:
            return -1
        if time.monotonic() - done.since > self._describe_for:
            return -1  # its attributes are about to expire there: give them again
        return done.last

    def _describe(self, handle: _Dir, described: int, after: int, last: int) -> None:
        """Entries after the cookie after, through last, went with attributes;
        described: what _described_up_to said when the answer began."""
        if described >= after:  # they continue the entries described before
            done = self._described[handle.nodeid]
            done.last = max(done.last, last)
        elif after == 0:
            self._described.pop(handle.nodeid, None)  # in the order they were described
            if len(self._described) >= _DESCRIBED_DIRS:
                del self._described[next(iter(self._described))]  # the oldest, the nearest to expiring
            self._described[handle.nodeid] = _Described(handle.generation, last, time.monotonic())

    # -- xattrs ----------------------------------------------------------------
    @staticmethod
    def _sized(value: bytes, size: int) -> bytes:
        if size == 0:
            return fp.GETXATTR_OUT.pack(len(value), 0)
        if len(value) > size:
            raise OSError(errno.ERANGE, os.strerror(errno.ERANGE))
        return value

    def getxattr(self, h: tuple, data: memoryview) -> bytes:
        size, _ = fp.GETXATTR_IN.unpack_from(data)
        name = _name(data[fp.GETXATTR_IN.size:])
        with self._lock:  # a RELEASE cannot close the fd meanwhile
            fd = self._upper_fd(h[3])
            if fd is not None:
                # By the fd of a file open in the upper layer: the kernel asks before every
                # write, and the file may be a copy-up still pending (see publish).
                return self._sized(self.union.fgetxattr(fd, name), size)
        value = self._of_file(h[3], None, lambda path: self.union.getxattr(path, name),
                              lambda fd, index: self.union.fgetxattr(fd, name))
        return self._sized(value, size)

    def listxattr(self, h: tuple, data: memoryview) -> bytes:
        size, _ = fp.GETXATTR_IN.unpack_from(data)
        names = self._of_file(h[3], None, self.union.listxattr, self.union.flistxattr)
        return self._sized(b"".join(os.fsencode(n) + b"\0" for n in names), size)

    def setxattr(self, h: tuple, data: memoryview) -> None:
        size, flags = fp.SETXATTR_IN.unpack_from(data)
        rest = bytes(data[fp.SETXATTR_IN.size:])
        end = rest.index(b"\0")
        name, value = os.fsdecode(rest[:end]), rest[end + 1:end + 1 + size]
        self._change(h[3], lambda path: self.union.setxattr(path, name, value, flags),
                     lambda fd: self.union.fsetxattr(fd, name, value, flags))

    def removexattr(self, h: tuple, data: memoryview) -> None:
        name = _name(data)
        self._change(h[3], lambda path: self.union.removexattr(path, name), lambda fd: self.union.fremovexattr(fd, name),
                     lambda fd: self.union.fremovable_xattr(fd, name))

    def _change(self, nodeid: int, by_path: Callable[[str], None], by_fd: Callable[[int], None],
                asked_first: Callable[[int], object] | None = None) -> None:
        """A change by the node's path, or, where its names are gone (unlinked or replaced
        while open), by a descriptor it is still open by in the upper layer, as overlayfs
        changes its real file. asked_first: what overlayfs asks of a lower file or
        directory before the copy-up that such a change needs (and that fails there), by
        a descriptor of it: its error comes first."""
        with self._prepare(nodeid), self.nodes.exclusive():
            try:
                path = self.nodes.path(nodeid)
            except OSError as exc:
                if exc.errno != errno.ESTALE:
                    raise
            else:
                by_path(path)
                return
        if self.nodes.remains(nodeid) is not None:  # a removed directory
            self._change_removed_dir(nodeid, lambda fd, index: by_fd(fd), asked_first)
            return
        with self._lock:  # a RELEASE cannot close the fd meanwhile
            fd = self._upper_fd(nodeid)
            if fd is not None:
                by_fd(fd)
                return
            fds = self._node_fds.get(nodeid)  # none in the upper layer: a lower file's
            if fds and asked_first is not None:
                asked_first(fds[0])
                asked_first = None  # asked: not again of the file a rename or removal kept
        self._change_nameless(nodeid, by_fd, False, asked_first)

    def _change_nameless(self, nodeid: int, change: Callable[[int], T], writes: bool,
                         asked_first: Callable[[int], object] | None = None) -> T:
        """change(fd) on a file whose names are gone and that is open by no descriptor in
        the upper layer: an upper one that a rename took (Union.hold), by an fd opened for
        the change (the one kept is O_PATH, which fchmod and the rest refuse), as
        overlayfs changes its real file. A regular file only: opening anything else may
        block or act. Else it cannot change (_unchangeable), after asked_first (see
        _change) of a lower one kept."""
        def upper_file(held: int, index: int) -> tuple[T] | None:
            if not self.union.resolver.is_upper(index):
                if asked_first is not None:
                    asked_first(held)
                return None
            if not stat.S_ISREG(os.fstat(held).st_mode):
                return None
            fd = os.open(f"/proc/self/fd/{held}", (os.O_RDWR if writes else os.O_RDONLY) | os.O_CLOEXEC)
            try:
                return (change(fd),)
            finally:
                os.close(fd)
        done = self.nodes.with_held(nodeid, upper_file)
        if done is None:
            with self._lock:
                raise self._unchangeable(nodeid)
        return done[0]

    def _unchangeable(self, nodeid: int) -> OSError:
        """Why a node whose names are gone, and that is open by no descriptor in the upper
        layer, cannot change; under self._lock. A lower file (open, kept or taken by a
        rename) would need a copy-up, which overlayfs tries and fails (_no_copy_up).
        With nothing of it left, it is stale."""
        layer = self.nodes.held_layer(nodeid)
        if self._node_fds.get(nodeid) or (layer is not None and not self.union.resolver.is_upper(layer)):
            return self._no_copy_up(nodeid)
        return OSError(errno.ESTALE, os.strerror(errno.ESTALE))

    def _no_copy_up(self, nodeid: int) -> OSError:
        """How overlayfs fails the copy-up of a removed lower file: EEXIST, a whiteout has
        its name's place; ENOENT once the directory it was removed from is removed too,
        where the copy-up looks its name up in that dead directory."""
        code = errno.ENOENT if self.nodes.left_a_removed_dir(nodeid) else errno.EEXIST
        return OSError(code, os.strerror(code))
