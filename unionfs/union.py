"""The union: every filesystem operation on merged paths, as plain Python.

This module knows nothing of FUSE (``handlers`` adapts it), so it can be driven
and tested directly. Each operation resolves its path, copies up what it is
about to change, and changes the upper layer in a way that is atomic for
every observer: new entries replace whiteouts by an exchange through the work
directory, and removals leave their whiteout in the same step
(``RENAME_EXCHANGE`` / ``RENAME_WHITEOUT``, as overlayfs does).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from unionfs import crashpoints, incompat, markers, placement, protection, syscalls
from unionfs.copyup import CopyUp, Prepared, WorkDir, clear_dir, clear_dir_fd
from unionfs.inodes import InodeMap
from unionfs.layer import Layer, layout_problem, private_roots, rel_join
from unionfs.markers import WhiteoutForm
from unionfs.protection import APPEND, BOTH, IMMUTABLE, Protections
from unionfs.resolve import Node, Resolver, child_path, split

log = logging.getLogger(__name__)
T = TypeVar("T")


def fail(code: int, path: str) -> OSError:
    """An OSError that FUSE turns into -code (fusepy needs errno > 0)."""
    return OSError(code, os.strerror(code), path)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asked: new entries belong to the caller, not to the driver."""

    uid: int
    gid: int
    umask: int = 0  # applied here: the kernel leaves it to us (FUSE_CAP_DONT_MASK)


ROOT = Caller(0, 0)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC
_ATTR_OPEN = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC  # for the inode-flag ioctls
_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # a removed upper directory: it takes changes
_DIR_PATH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # a removed lower one: read only
_FALLOC_FL_KEEP_SIZE = 1
# Open flags of the caller's that the driver's own fd must not have: O_DIRECT is
# between the caller and the kernel, and would make the driver's unaligned
# buffers fail with EINVAL.
_NOT_ON_HOST = os.O_NOCTTY | os.O_DIRECT
# An unlink that frees at least this much is not a quick request (see placement).
_LONG_REMOVAL = 1 << 20


def fd_flags(flags: int) -> int:
    """The flags of the driver's own fd for a caller's open of an existing file."""
    return (flags & ~(os.O_CREAT | os.O_EXCL | _NOT_ON_HOST)) | os.O_CLOEXEC


def _trusted_xattrs_writable(target: int | str) -> bool:
    """Whether this process may write trusted.* xattrs on target (a descriptor or path of
    the work directory). Root in a user namespace may not: they need CAP_SYS_ADMIN in the
    initial one. A filesystem without xattrs says so at the calls that need them."""
    probe = "trusted.unionfs.probe"
    try:
        os.setxattr(target, probe, b"")
    except PermissionError:
        return False
    except OSError:
        return True
    with contextlib.suppress(OSError):
        os.removexattr(target, probe)
    return True


def _needs_owner(caller: Caller | None, gid: int) -> bool:
    """Whether a new entry must be given to the caller: its ids are not the driver's."""
    return caller is not None and (caller.uid != os.geteuid() or gid != os.getegid())


class Union:
    """A stack of layers: ``lowerdirs`` top first, an optional writable upper."""

    def __init__(
        self,
        lowerdirs: list[str] | tuple[str, ...],
        upperdir: str | None = None,
        workdir: str | None = None,
        *,
        whiteout: WhiteoutForm | None = None,
        durable: bool = True,
        userxattr: bool = False,
        static_nlink: bool = False,
    ) -> None:
        """userxattr: records in user.overlay.* and user.unionfs.*, as overlayfs's option
        for mounts in a user namespace, where trusted.* cannot be written.
        static_nlink: every directory shows one link, as fuse-overlayfs's option."""
        if not lowerdirs:
            raise ValueError("at least one lowerdir is needed")
        if (upperdir is None) != (workdir is None):
            raise ValueError("upperdir and workdir go together")
        problem = layout_problem(lowerdirs, upperdir, workdir)
        if problem:
            raise ValueError(problem)
        # undo: what was opened is closed if the rest fails; through: the private copies of
        # the layers' mounts, closed at the end either way (the layers' own descriptors keep them).
        with contextlib.ExitStack() as undo, contextlib.ExitStack() as through:
            self.private = True  # every layer taken from a private copy of its mount

            def private(paths: list[str]) -> list[int | None]:
                fds = private_roots(paths)
                if fds is None:
                    self.private = False
                    return [None] * len(paths)
                for fd in fds:
                    through.callback(os.close, fd)
                return list(fds)

            upper_fd, work_fd = private([upperdir, workdir]) if upperdir and workdir else (None, None)
            layers: list[Layer] = []
            for path in ([upperdir] if upperdir else []) + list(lowerdirs):
                fd = upper_fd if upperdir and not layers else private([path])[0]
                layers.append(Layer(path, len(layers), lower=bool(layers) or upperdir is None, through=fd))
                undo.callback(layers[-1].close)
            self.layers = layers
            self.writable = upperdir is not None
            self.durable = durable
            self.static_nlink = static_nlink
            self.form = whiteout or (WhiteoutForm.OVERLAY if os.geteuid() == 0 or userxattr else WhiteoutForm.OCI)
            trusted = self.form is WhiteoutForm.OVERLAY and not userxattr
            if trusted and workdir is not None and not _trusted_xattrs_writable(workdir if work_fd is None else work_fd):
                # A user namespace: overlayfs's records in user.overlay.*, as with userxattr, where
                # trusted.* ones would refuse every rename of a merged directory and every opaque one.
                log.info("trusted.* xattrs cannot be written here: records in user.overlay.*, as with userxattr")
                trusted = False
            own_prefix = "trusted.unionfs." if trusted else "user.unionfs."
            self.origin_xattr = own_prefix + "origin"
            overlay = "trusted.overlay." if trusted else "user.overlay."
            self.overlay_prefix = overlay  # the prefix a caller's own overlay.* xattrs are escaped in
            self.opaque_xattr = overlay + "opaque"
            self.redirect_xattr = overlay + "redirect"
            self.resolver = Resolver(layers, self.writable)
            self.protections = Protections(layers, self.resolver, overlay + "protattr")
            self.inodes = InodeMap([layer.dev for layer in layers])
            self._origins: dict[int, int] = {}
            self._kept_removed: dict[int, str] = {}  # fd -> work-dir name of a removed upper directory (rmdir)
            self._metacopies: set[int] = set()  # upper inodes that are overlayfs metacopy files
            # (layer, inode) -> whether a lower file is a metacopy file: asked once, lower layers never change
            self._lower_metacopies: dict[tuple[int, int], bool] = {}
            top = layers[0]
            self.namemax = os.statvfs(top.fd).f_namemax
            if self.writable and self.form is WhiteoutForm.OCI:
                self.namemax -= len(markers.WH_PREFIX)  # room for the .wh. whiteout of any name
            self.upper = top
            self.work: WorkDir | None = None
            self.copyup: CopyUp | None = None
            if self.writable:
                assert workdir is not None
                self.work = WorkDir(workdir, top, through=work_fd)
                undo.callback(self.work.close)
                if not durable:
                    try:
                        incompat.mark_volatile(self.work.fd)
                    except OSError as exc:
                        raise ValueError(f"workdir {workdir}: the volatile mark cannot be written: {exc.strerror}") from exc
                self.copyup = CopyUp(
                    self.resolver, self.work, self.inodes, durable=durable, private_prefix=own_prefix,
                    protattr_xattr=self.protections.xattr, on_new_inode=self._forget,
                )
            undo.pop_all()
        self._rename_lock = threading.Lock()
        self._closed = False

    def release_lowers(self, fds: Iterable[int] = ()) -> None:
        """Let go of the lower layers before the driver has finished: each descriptor
        into them (the layers' own, and fds: files open on them) becomes an empty
        memory file under the same number. A FUSE unmount returns before the driver
        has exited, and a script may unmount a lower layer's filesystem next, as it
        may after overlayfs's unmount. A request still being answered then finds
        nothing there (ENOTDIR, end of file), not a file that took the number;
        what is pending needs only the upper layer and the work directory."""
        void = os.memfd_create("unionfs-released", os.MFD_CLOEXEC)
        try:
            for fd in [*(layer.fd for layer in self.layers if not self.resolver.is_upper(layer.index)), *fds]:
                os.dup2(void, fd, inheritable=False)
        finally:
            os.close(void)

    def close(self) -> None:
        """Place what is pending and close the layers; once, however often called."""
        if self._closed:
            return
        self._closed = True
        if self.copyup is not None and self.copyup.publisher is not None:
            self.copyup.publisher.close()  # what is pending goes into place, and its thread ends
        if self.work is not None and not self.durable:
            try:
                incompat.unmark_volatile(self.work.fd)
            except OSError as exc:
                log.warning("the work directory keeps its volatile mark: %s", exc.strerror)
        for layer in self.layers:
            layer.close()
        if self.work:
            self.work.close()

    def settle(self) -> None:
        """Wait until no copy-up is pending: the upper layer is then complete, and
        the work directory holds nothing of this driver's (no spare files)."""
        if self.copyup is not None and self.copyup.publisher is not None:
            self.copyup.publisher.settle()
        if self.work is not None:
            self.work.drop_spares()

    # -- helpers ---------------------------------------------------------------
    def _writable(self, path: str) -> tuple[CopyUp, WorkDir]:
        if self.copyup is None or self.work is None:
            raise fail(errno.EROFS, path)
        return self.copyup, self.work

    def prepare_copy_up(self, path: str) -> Prepared | None:
        """Before the mount's lock is taken for a change of path that may copy it up:
        a large lower file's data copied ahead (CopyUp.prepare). A guess: a change
        that fails, or copies up nothing, leaves the copy unused, and ``let_go``
        removes it. Not for a protected file, whose changes mostly fail."""
        if self.copyup is None:
            return None
        node = self.resolver.resolve(path)
        if node is None or node.is_dir:
            return None
        return self.copyup.prepare(node, lambda: bool(self.protections.of(node)))

    def let_go(self, prepared: Prepared | None) -> None:
        """The change that prepare_copy_up was asked for is done."""
        if prepared is not None and self.copyup is not None:
            self.copyup.release(prepared)

    def _check_name(self, name: str, path: str) -> None:
        if len(os.fsencode(name)) > self.namemax:
            raise fail(errno.ENAMETOOLONG, path)
        if markers.is_marker_name(name):
            raise fail(errno.EINVAL, path)  # would be read back as a whiteout

    def node(self, path: str) -> Node:
        node = self.resolver.resolve(path)
        if node is None:
            if len(os.fsencode(split(path)[1])) > self.namemax:
                raise fail(errno.ENAMETOOLONG, path)
            raise fail(errno.ENOENT, path)
        return node

    def _dir(self, path: str) -> Node:
        node = self.node(path)
        if not node.is_dir:
            raise fail(errno.ENOTDIR, path)
        return node

    def _lstat(self, node: Node) -> os.stat_result:
        st = self.layers[node.layer].lstat(node.rel)
        if st is None:
            raise fail(errno.ENOENT, node.path)
        return st

    def _ino(self, index: int, rel: str, st: os.stat_result) -> int:
        if not self.resolver.is_upper(index):
            return self.inodes(st.st_dev, st.st_ino)
        ino = self._origins.get(st.st_ino)
        if ino is None:
            names = self.upper.xattr_names(rel)
            value = self.upper.getxattr(rel, self.origin_xattr) if self.origin_xattr in names else None
            ino = int(value) if value else self.inodes(st.st_dev, st.st_ino)
            if stat.S_ISREG(st.st_mode) and not names.isdisjoint(markers.METACOPY_XATTRS):
                if st.st_ino not in self._metacopies:
                    log.warning("refusing %s: an overlayfs metacopy file, whose data is in a lower layer", rel)
                self._metacopies.add(st.st_ino)  # not kept in _origins: looked at again each time
            else:
                self._origins[st.st_ino] = ino
        return ino

    def _forget(self, st: os.stat_result | None) -> None:
        if st is not None:
            self._origins.pop(st.st_ino, None)
            self._metacopies.discard(st.st_ino)

    @staticmethod
    def attrs(st: os.stat_result, ino: int, nlink: int | None = None) -> dict[str, int]:
        return {
            "st_mode": st.st_mode,
            "st_ino": ino,
            "st_nlink": st.st_nlink if nlink is None else nlink,
            "st_uid": st.st_uid,
            "st_gid": st.st_gid,
            "st_size": st.st_size,
            "st_atime": st.st_atime_ns,
            "st_mtime": st.st_mtime_ns,
            "st_ctime": st.st_ctime_ns,
            "st_rdev": st.st_rdev,
            "st_blocks": st.st_blocks,
            "st_blksize": st.st_blksize,
        }

    # -- reading -----------------------------------------------------------------
    def getattr(self, path: str) -> dict[str, int]:
        node = self.node(path)
        # overlayfs reports nlink 1 for merged directories: counting subdirs
        # of every layer is not worth it, and find(1) copes (ovl_getattr).
        one = node.merged or (self.static_nlink and node.is_dir)
        return self.layer_getattr(*node.attr_source, path, 1 if one else None)

    def birth_time(self, path: str) -> tuple[int, int] | None:
        """That of the real file whose attributes path shows, as overlayfs's getattr answers."""
        index, rel = self.node(path).attr_source
        return syscalls.birth_time(self.layers[index].fd, rel)

    def fbirth_time(self, fd: int, index: int) -> tuple[int, int] | None:
        """That of an open file, by its fd (an O_PATH one too)."""
        return syscalls.birth_time(fd, None)

    def upper_identity(self, path: str) -> tuple[int, int] | None:
        """(st_dev, st_ino) of the upper file at path if it has more than one name there."""
        node = self.node(path)
        if node.is_dir or not self.resolver.is_upper(node.layer):
            return None
        st = self.upper.lstat(node.rel)
        return (st.st_dev, st.st_ino) if st is not None and st.st_nlink > 1 else None

    def layer_getattr(self, index: int, rel: str, path: str, nlink: int | None = None) -> dict[str, int]:
        """The attributes of the entry at rel in one layer, as the merged view shows them."""
        st = self.layers[index].lstat(rel)
        if st is None:
            raise fail(errno.ENOENT, path)
        ino = self._ino(index, rel, st)
        if (self.resolver.is_upper(index) and st.st_ino in self._metacopies) or self._lower_metacopy(index, rel, st):
            # Its data would read as zeros, and a write would lose it for good. overlayfs
            # without metacopy=on refuses such a file the same way (ovl_lookup), in any layer.
            raise fail(errno.EPERM, path)
        return self.attrs(st, ino, nlink)

    def _lower_metacopy(self, index: int, rel: str, st: os.stat_result) -> bool:
        """Whether rel is a metacopy file in a lower layer: the upper layer of an overlayfs
        mount with metacopy=on, stacked as a lower one. overlayfs marks the directory of
        every entry it copies up impure, so only the files of such directories are asked
        for their xattrs, once each; a layer made any other way costs nothing more."""
        if index not in self.resolver.impure_layers or not stat.S_ISREG(st.st_mode):
            return False  # its directory was read to find it: had it been impure, the layer would be here
        info = self.resolver.lower_dir(index, rel.rpartition("/")[0] or ".")
        if info is None or not info.impure:
            return False
        key = (index, st.st_ino)
        found = self._lower_metacopies.get(key)
        if found is None:
            found = not self.layers[index].xattr_names(rel).isdisjoint(markers.METACOPY_XATTRS)
            if found:
                log.warning("refusing %s in lower layer %s: an overlayfs metacopy file, whose data is in a layer below",
                            rel, self.layers[index].root)
            if len(self._lower_metacopies) >= 65536:
                self._lower_metacopies.clear()
            self._lower_metacopies[key] = found
        return found

    def listed_getattr(self, index: int, rel: str, path: str, generation: int) -> dict[str, int]:
        """getattr of a non-directory that ``listed`` found at rel of layer index.
        While nothing has changed since (generation), that is also what path
        resolves to, and the resolver keeps it: the unlink or open that follows
        a listing (``rm -rf``, ``cp -r``) then needs no lookup through the layers."""
        attrs = self.layer_getattr(index, rel, path)
        self.resolver.remember(Node(path, False, ((index, rel),)), generation)
        return attrs

    @property
    def generation(self) -> int:
        """Changes with every change of what a path names (see ``listed``)."""
        return self.resolver.generation

    def fgetattr(self, fd: int, index: int) -> dict[str, int]:
        st = os.fstat(fd)
        if self.resolver.is_upper(index):
            ino = self._origins.get(st.st_ino)
            if ino is None:
                try:
                    ino = int(_by_fd(os.getxattr, fd, self.origin_xattr))
                except OSError:
                    ino = self.inodes(st.st_dev, st.st_ino)
                self._origins[st.st_ino] = ino
        else:
            ino = self.inodes(st.st_dev, st.st_ino)
        return self.attrs(st, ino)

    def fileattr(self, path: str, cmd: int, size: int) -> bytes:
        """The file attributes (FS_IOC_GETFLAGS, FS_IOC_FSGETXATTR: what lsattr shows) of
        the entry that path shows, as overlayfs reads them: its real inode's, and for an
        upper entry the protection its xattr records."""
        node = self.node(path)
        fd = self.layers[node.layer].open(node.rel or ".", _ATTR_OPEN)
        try:
            return self.ffileattr(fd, node.layer, cmd, size)
        finally:
            os.close(fd)

    def ffileattr(self, fd: int, index: int, cmd: int, size: int) -> bytes:
        """fileattr of a file or directory open in layer index: one whose names may be gone.
        An O_PATH descriptor (what a removal or a rename kept), which the ioctl refuses,
        is opened again through /proc for it."""
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH:
            reopened = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                return self.ffileattr(reopened, index, cmd, size)
            finally:
                os.close(reopened)
        value = fcntl.ioctl(fd, cmd, bytes(size))
        if self.resolver.is_upper(index):
            value = protection.with_protection(cmd, value, self.protections.of_fd(fd))
        return value

    def set_fileattr(self, path: str, cmd: int, value: bytes) -> None:
        """chattr through the mount (FS_IOC_SETFLAGS, FS_IOC_FSSETXATTR), as overlayfs's
        ovl_fileattr_set: the entry is copied up, immutable and append-only are recorded
        in its xattr, and the other flags set on the upper inode."""
        copyup, _ = self._writable(path)
        node = self.node(path)
        had = self.protections.of(node)
        rel = copyup.ensure(node)
        bits, rest = protection.split(cmd, value)
        self.protections.record(self.upper, rel, bits, had)
        fd = self.upper.open(rel or ".", _ATTR_OPEN)
        try:
            fcntl.ioctl(fd, cmd, rest)
        finally:
            os.close(fd)

    def fset_fileattr(self, fd: int, cmd: int, value: bytes) -> None:
        """set_fileattr of a file or directory open in the upper layer whose names are gone."""
        bits, rest = protection.split(cmd, value)
        self.protections.record_fd(fd, bits, self.protections.of_fd(fd))
        fcntl.ioctl(fd, cmd, rest)

    def readlink(self, path: str) -> str:
        node = self.node(path)
        try:
            return os.readlink(node.rel, dir_fd=self.layers[node.layer].fd)
        except OSError as exc:
            raise fail(exc.errno or errno.EIO, path) from None

    def listing(self, node: Node) -> list[tuple[str, int, str, int, int]]:
        """Merged entries of a directory: (name, layer, parent rel, d_ino, type bits)."""
        taken: set[str] = set()
        out: list[tuple[str, int, str, int, int]] = []
        for index, rel in node.layers:
            info = self.upper.scan(rel) if self.resolver.is_upper(index) else self.resolver.lower_dir(index, rel)
            if info is None:
                continue
            for name, entry in info.entries.items():
                if name not in taken:
                    taken.add(name)
                    out.append((name, index, rel, entry.ino, entry.type_bits))
            taken |= info.hides
        return out

    def readdir(self, path: str) -> list[tuple[str, dict[str, int] | None]]:
        return [(name, attrs) for name, attrs, _ in self.listed(path)]

    def listed(self, path: str) -> list[tuple[str, dict[str, int] | None, tuple[int, str] | None]]:
        """readdir's entries, each non-directory with the (layer index, rel) that
        holds it: while ``generation`` stays the same, ``listed_getattr`` there is
        its getattr without a lookup through the layers."""
        node = self._dir(path)
        out: list[tuple[str, dict[str, int] | None, tuple[int, str] | None]] = [(".", None, None), ("..", None, None)]
        for name, index, prel, d_ino, bits in self.listing(node):
            layer = self.layers[index]
            if self.resolver.is_upper(index):
                ino = self._origins.get(d_ino)
                if ino is None:
                    st = layer.lstat(rel_join(prel, name))
                    ino = self._ino(index, rel_join(prel, name), st) if st else d_ino
                    if st is not None and st.st_ino in self._metacopies:
                        continue  # refused (layer_getattr), and left out of listings as overlayfs does
            else:
                ino = self.inodes(layer.dev, d_ino)
            source = None if stat.S_ISDIR(bits) else (index, rel_join(prel, name))
            out.append((name, {"st_ino": ino, "st_mode": bits}, source))
        return out

    def open(self, path: str, flags: int, caller: Caller = ROOT,
             kill: Callable[[int], None] | None = None, appending: bool | None = None) -> tuple[int, int]:
        """An fd on the layer that holds the file, copied up first for writing.
        kill: called with the fd after an O_TRUNC (set-id bits to drop).
        appending: whether the caller's open has O_APPEND, where flags no longer
        say (the kernel's writeback cache appends by itself)."""
        node = self.node(path)
        flags = fd_flags(flags) | os.O_NOFOLLOW
        if not flags & _WRITE_FLAGS:
            return self.layers[node.layer].open(node.rel, flags), node.layer
        copyup, _ = self._writable(path)
        protected = self.protections.of(node)
        if appending is None:
            appending = bool(flags & os.O_APPEND)
        if protected & IMMUTABLE or (protected & APPEND and (flags & os.O_TRUNC or not appending)):
            raise fail(errno.EPERM, path)  # an append-only file opens for writing with O_APPEND only (may_open)
        fd = copyup.open(node, flags, data=not flags & os.O_TRUNC)
        if flags & os.O_TRUNC and kill is not None:
            kill(fd)
        return fd, 0

    def ftruncate(self, fd: int, length: int, retime: bool = True) -> None:
        """Truncation of a file open in the upper layer (ftruncate), unless it is append-only:
        the VFS checks only that (do_ftruncate), so a file made immutable after it was
        opened for writing is still cut through that fd, on overlayfs too. retime: whether
        a truncation to the size the file has changes its times, as truncate(2) does on
        the host."""
        if self.protections.of_fd(fd) & APPEND:
            raise fail(errno.EPERM, f"fd {fd}")
        _truncate(fd, length, retime)

    def fallocate(self, fd: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2) on a file open for writing: an append-only one may only grow (vfs_fallocate)."""
        protected = self.protections.of_fd(fd)
        if protected & IMMUTABLE or (protected & APPEND and mode & ~_FALLOC_FL_KEEP_SIZE):
            raise fail(errno.EPERM, f"fd {fd}")
        syscalls.fallocate(fd, mode, offset, length)

    def fsync(self, fd: int, datasync: bool = False) -> None:
        """fsync of an open file; a copy-up still pending under it is published first.
        A volatile mount syncs nothing, as overlayfs's ``volatile`` omits every sync
        of the upper layer (ovl_should_sync)."""
        if self.copyup is not None and self.copyup.publisher is not None:
            self.copyup.publisher.check(fd)
        if self.durable:
            os.fdatasync(fd) if datasync else os.fsync(fd)

    def fsyncdir(self, path: str) -> None:
        """fsync of a directory: copy-ups pending below it are published, and its
        upper directory synced (ovl_dir_fsync), unless the mount is volatile. For
        the root, the whole mount settles (``unionfs.mount.settle``, before an unmount)."""
        if path == "/":
            self.settle()
        node = self._dir(path)
        if self.durable and self.resolver.is_upper(node.layer):
            fd = os.open(node.rel, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.upper.fd)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def release(self, fd: int) -> None:
        """A file handle is done with (before its fd is closed)."""
        if self.copyup is not None and self.copyup.publisher is not None:
            self.copyup.publisher.released(fd)

    def hold(self, path: str) -> tuple[tuple[int, int] | None, dict[str, int] | None, tuple[int, str] | None]:
        """What keeps the entry path names now reachable once a rename replaces it, as
        on any filesystem: (held, remains, kept). held: an fd on its real file and its
        layer's index (to be given back to release_held), for an upper file, which the
        rename removes (O_PATH), and for a directory, with remains, the attributes it
        will show, as rmdir_holding gives them (an upper one's fd takes changes:
        removed_attrs). kept: where a lower file stays, as unlink gives it; nothing is
        opened for it."""
        node = self.node(path)
        if not node.is_dir:
            if not self.resolver.is_upper(node.layer):
                return None, None, (node.layer, node.rel)
            return (self.open_path(node.layer, node.rel), node.layer), None, None
        return (self._open_dir(node), node.layer), self._remains(node, path), None

    def _open_dir(self, node: Node) -> int:
        """An fd that keeps a directory's real one once its name is gone: one that takes
        changes for an upper directory, an O_PATH one for a lower directory."""
        flags = _DIR_OPEN if self.resolver.is_upper(node.layer) else _DIR_PATH
        return os.open(node.rel or ".", flags, dir_fd=self.layers[node.layer].fd)

    def _remains(self, node: Node, path: str) -> dict[str, int]:
        """The attributes a directory shows once removed, to a process still in it, as
        overlayfs shows its real directory's: an upper one's link count is 0 then,
        unless it was merged (overlayfs shows 1 for those)."""
        remains = self.getattr(path)
        if self.resolver.is_upper(node.layer) and not node.merged:
            remains["st_nlink"] = 0
        return remains

    def statfs(self) -> dict[str, int]:
        st = os.statvfs(self.layers[0].fd)
        keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail", "f_flag")
        out = {key: getattr(st, key) for key in keys}
        out["f_namemax"] = self.namemax
        return out

    # -- creating ----------------------------------------------------------------
    def _new_entry(
        self, path: str, caller: Caller | None, make: Callable[[int, str, int], int | None], is_dir: bool = False, mode: int = 0
    ) -> int | None:
        """Create an entry in the upper layer, in place of a whiteout if one is there.
        caller: who makes a new inode; None for a new name of an existing one (a link)."""
        copyup, work = self._writable(path)
        ppath, name = split(path)
        self._check_name(name, path)
        parent = self._dir(ppath)
        if self.resolver.child(parent, name) is not None:
            raise fail(errno.EEXIST, path)
        self.protections.refuse(parent, path, IMMUTABLE)  # an append-only directory takes new entries
        prel = copyup.ensure(parent)
        rel = rel_join(prel, name)
        gid, mode = self._new_owner(prel, caller, mode)
        existing = None if self.resolver.upper_names.absent(prel, name) else self.upper.lstat(rel)
        over_whiteout = existing is not None and self.upper.is_whiteout(rel, existing)
        if existing is not None and not over_whiteout:
            raise fail(errno.EEXIST, path)
        if is_dir:
            self.resolver.expect_empty(rel)
        try:
            if not over_whiteout and not _needs_owner(caller, gid):
                fd = make(self.upper.fd, rel, mode)  # the driver's own ids are the caller's: nothing to set
                crashpoints.point("create.made")
            else:
                fd = self._build_aside(work, prel, rel, make, caller, gid, mode, is_dir, over_whiteout)
        except BaseException:
            if is_dir:
                self.resolver.not_made(rel)
            raise
        st = self.upper.lstat(rel)
        self._forget(st)
        gen = self.resolver.invalidate(path, made_dir=is_dir)
        if caller is not None and st is not None:  # a new inode, not a new name of one
            self._known_new(path, rel, st, gen)
        return fd

    def _known_new(self, path: str, rel: str, st: os.stat_result, gen: int) -> None:
        """What the entry reply that follows a create would ask the disk again: a new
        inode carries no origin or metacopy xattr, and a new non-directory in the upper
        hides every layer below (a directory may be merged or opaque: left to resolve)."""
        self._origins[st.st_ino] = self.inodes(st.st_dev, st.st_ino)
        if not stat.S_ISDIR(st.st_mode):
            self.resolver.remember(Node(path, False, ((0, rel),)), gen)

    def _new_owner(self, prel: str, caller: Caller | None, mode: int) -> tuple[int, int]:
        """The group and mode of an entry the caller makes in the upper directory prel."""
        if caller is None:
            return 0, mode
        gid = caller.gid
        pst = self.upper.lstat(prel)
        if pst is not None and pst.st_mode & stat.S_ISGID:
            gid = pst.st_gid  # BSD group semantics of a set-group-ID directory
        if caller.umask and self.upper.getxattr(prel, "system.posix_acl_default") is None:
            mode &= ~caller.umask  # with a default ACL the filesystem ignores the umask (acl(5))
        return gid, mode

    def _build_aside(
        self,
        work: WorkDir,
        prel: str,
        rel: str,
        make: Callable[[int, str, int], int | None],
        caller: Caller | None,
        gid: int,
        mode: int,
        is_dir: bool,
        over_whiteout: bool,
    ) -> int | None:
        """Build an entry beside its name, then put it there in one step.

        Under a temporary name the union never shows, so the parent's default
        ACL and set-group-ID bit apply as to any new entry, and the entry
        carries its owner before anyone can see it: a driver killed half-way
        leaves no root-owned file where the caller's was to be. Kernel
        overlayfs would show the temporary name: the work dir keeps a record
        of it, by which the next mount removes it if we die here. Over a
        whiteout the name goes from whiteout to entry in one rename (an
        exchange for a directory, which must be opaque first).
        """
        tmp_name = work.temp_name()
        tmp = rel_join(prel, markers.WH_PREFIX + tmp_name)
        work.record_intent(tmp_name, tmp)
        crashpoints.point("create.intent")
        fd = make(self.upper.fd, tmp, mode)
        try:
            crashpoints.point("create.tmp")
            self._own(self.upper, tmp, fd, caller, gid, mode)
            crashpoints.point("create.owned")
            if not over_whiteout:
                syscalls.renameat2(self.upper.fd, tmp, self.upper.fd, rel, syscalls.RENAME_NOREPLACE)
            elif is_dir:
                self._set_opaque(self.upper, tmp)
                crashpoints.point("create.opaque")
                syscalls.renameat2(self.upper.fd, tmp, self.upper.fd, rel, syscalls.RENAME_EXCHANGE)
                crashpoints.point("create.exchanged")
                os.unlink(tmp, dir_fd=self.upper.fd)  # the whiteout
            else:
                os.rename(tmp, rel, src_dir_fd=self.upper.fd, dst_dir_fd=self.upper.fd)
            crashpoints.point("create.renamed")
            work.drop_intent(tmp_name)
        except BaseException:
            if fd is not None:
                os.close(fd)
            st = self.upper.lstat(tmp)
            if st is not None and stat.S_ISDIR(st.st_mode):
                clear_dir(self.upper, tmp)
                os.rmdir(tmp, dir_fd=self.upper.fd)
            elif st is not None:
                os.unlink(tmp, dir_fd=self.upper.fd)
            work.drop_intent(tmp_name)
            raise
        return fd

    def _own(self, layer: Layer, rel: str, fd: int | None, caller: Caller | None, gid: int, mode: int) -> None:
        if caller is None:
            return
        if fd is not None:
            os.fchown(fd, caller.uid, gid)
            if mode & (stat.S_ISUID | stat.S_ISGID):
                os.fchmod(fd, mode & 0o7777)  # chown cleared the set-id bits
        else:
            os.chown(rel, caller.uid, gid, dir_fd=layer.fd, follow_symlinks=False)

    def _set_opaque(self, layer: Layer, rel: str) -> None:
        if self.form is WhiteoutForm.OVERLAY:
            layer.setxattr(rel, self.opaque_xattr, markers.OPAQUE_VALUE)
        else:
            os.close(os.open(rel_join(rel, markers.OPAQUE_MARKER), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600, dir_fd=layer.fd))

    def create(self, path: str, mode: int, flags: int, caller: Caller = ROOT) -> int:
        def make(dir_fd: int, rel: str, mode: int) -> int:
            return os.open(rel, (flags | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC) & ~_NOT_ON_HOST, mode & 0o7777, dir_fd=dir_fd)

        fd = self._new_entry(path, caller, make, mode=mode)
        assert fd is not None
        return fd

    def tmpfile(self, dir_path: str, mode: int, flags: int, caller: Caller = ROOT) -> int:
        """An unnamed file (O_TMPFILE) in the upper copy of dir_path, the caller's. It has
        no name that anyone could see before its owner is set, so nothing is built aside;
        ``link_open`` names it."""
        copyup, _ = self._writable(dir_path)
        parent = self._dir(dir_path)
        self.protections.refuse(parent, dir_path, IMMUTABLE)
        prel = copyup.ensure(parent)
        gid, mode = self._new_owner(prel, caller, mode)
        access = flags & (os.O_ACCMODE | os.O_EXCL | os.O_APPEND | os.O_SYNC | os.O_DSYNC | os.O_NOATIME)
        fd = os.open(prel or ".", access | os.O_TMPFILE | os.O_CLOEXEC, mode & 0o7777, dir_fd=self.upper.fd)
        try:
            if _needs_owner(caller, gid):
                self._own(self.upper, "", fd, caller, gid, mode)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def link_open(self, fd: int, path: str) -> None:
        """Give the upper file open as fd (an O_TMPFILE file) the name path."""
        def make(dir_fd: int, rel: str, mode: int) -> None:
            os.link(f"/proc/self/fd/{fd}", rel, dst_dir_fd=dir_fd, follow_symlinks=True)

        self._new_entry(path, None, make)

    def mkdir(self, path: str, mode: int, caller: Caller = ROOT) -> None:
        self._new_entry(path, caller, lambda d, rel, m: os.mkdir(rel, m & 0o7777, dir_fd=d), is_dir=True, mode=mode)

    def mknod(self, path: str, mode: int, rdev: int, caller: Caller = ROOT) -> None:
        if markers.is_chardev_whiteout(mode, rdev):
            raise fail(errno.EPERM, path)  # would read back as a whiteout; overlayfs refuses it too
        self._new_entry(path, caller, lambda d, rel, m: os.mknod(rel, m, rdev, dir_fd=d), mode=mode)

    def symlink(self, path: str, target: str, caller: Caller = ROOT) -> None:
        self._new_entry(path, caller, lambda d, rel, m: os.symlink(target, rel, dir_fd=d))

    def link(self, existing: str, path: str) -> None:
        copyup, _ = self._writable(path)
        source = self.node(existing)
        if source.is_dir:
            raise fail(errno.EPERM, existing)
        ppath, name = split(path)
        parent = self._dir(ppath)
        if self.resolver.child(parent, name) is not None:
            raise fail(errno.EEXIST, path)  # before the source is copied up for nothing
        self.protections.refuse(parent, path, IMMUTABLE)
        self.protections.refuse(source, existing, BOTH)
        srel = copyup.ensure(source)

        def make(dir_fd: int, rel: str, mode: int) -> None:
            os.link(srel, rel, src_dir_fd=self.upper.fd, dst_dir_fd=dir_fd, follow_symlinks=False)

        self._new_entry(path, None, make)

    # -- removing ----------------------------------------------------------------
    def _whiteout(self, prel: str, name: str) -> None:
        """Hide name of the lower layers; nothing of that name is in the upper."""
        _, work = self._writable(name)
        if self.form is WhiteoutForm.OVERLAY:
            work.link_marker(True, self.upper.fd, rel_join(prel, name))
            return
        marker = rel_join(prel, markers.WH_PREFIX + name)
        if not self.upper.exists(marker):
            work.link_marker(False, self.upper.fd, marker)

    def _remove_upper(self, prel: str, name: str, is_dir: bool, whiteout: bool) -> int | None:
        """Remove an upper entry, leaving a whiteout in the same step if asked. A
        directory's descriptor is returned, for a process still in it (rmdir): where
        the whiteout took its place, it stays in the work dir, emptied, until
        release_held recycles it (WorkDir.recycle_dir); else it is removed. None for
        a file, or a directory that could not be kept."""
        _, work = self._writable(name)
        rel = rel_join(prel, name)
        if whiteout and self.form is WhiteoutForm.OVERLAY:
            tmp = work.temp_name()
            work.link_marker(True, work.fd, tmp)
            syscalls.renameat2(work.fd, tmp, self.upper.fd, rel, syscalls.RENAME_EXCHANGE)
            crashpoints.point("remove.exchanged")
            if is_dir:
                fd = work.open_emptied(tmp)
                if fd is not None:
                    self._kept_removed[fd] = tmp
                return fd
            try:
                work.remove_tree(tmp)
            except OSError as exc:  # removed already: what is left in the work dir goes at the next mount
                log.warning("removing %s from the work directory: %s", tmp, exc.strerror or exc)
            return None
        if whiteout:
            self._whiteout(prel, name)  # .wh.NAME first: the own-layer entry still shows
        if not is_dir:
            os.unlink(rel, dir_fd=self.upper.fd)
            return None
        fd = self.upper.open(rel, _DIR_OPEN)
        try:
            clear_dir_fd(fd)
            crashpoints.point("remove.cleared")
            os.rmdir(rel, dir_fd=self.upper.fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _parent_in_upper(self, path: str, parent: Node | None = None) -> tuple[Node, str, str]:
        copyup, _ = self._writable(path)
        ppath, name = split(path)
        if parent is None:
            parent = self._dir(ppath)
        if self.resolver.is_upper(parent.layer):
            return parent, parent.rel, name
        prel = copyup.ensure(parent)
        return self._dir(ppath), prel, name

    def _removable(self, node: Node, path: str) -> Node:
        """The parent of node, which may lose node: neither is immutable or append-only
        (may_delete). Checked before anything else about the removal, as the VFS does."""
        parent = self._dir(split(path)[0])
        self.protections.refuse_removal(parent, node, path)
        return parent

    def unlink(self, path: str) -> tuple[int, str] | None:
        """unlink(2). Returns where a removed lower file stays (its layer's index and its
        path there), for a process that holds it without an open (O_PATH), which overlayfs
        answers from the lower file: lower layers never change (open_path)."""
        self._writable(path)
        node = self.node(path)
        parent = self._removable(node, path)
        if node.is_dir:
            raise fail(errno.EISDIR, path)
        parent, prel, name = self._parent_in_upper(path, parent)
        whiteout = True
        if self.resolver.is_upper(node.layer):
            st = self.upper.lstat(node.rel)
            if st is not None and st.st_size >= _LONG_REMOVAL:
                placement.before_long_work()
            whiteout = self.resolver.lower_positive(parent, name)
            self._remove_upper(prel, name, False, whiteout)
            self._forget(st)
            kept = None
        else:
            self._whiteout(prel, name)
            kept = (node.layer, node.rel)
        self.resolver.invalidate(path, gone=not whiteout)
        return kept

    def open_path(self, index: int, rel: str) -> int:
        """An O_PATH fd on the file at rel of layer index, which keeps it reachable once
        its name is gone: an upper file a rename replaces (hold), or a lower file that
        unlink or hold said stays there, when a call needs it."""
        return os.open(rel, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.layers[index].fd)

    def rmdir(self, path: str) -> dict[str, int]:
        """Returns the attributes the removed directory showed (see rmdir_holding)."""
        remains, held = self.rmdir_holding(path)
        if held is not None:
            self.release_held(*held)
        return remains

    def rmdir_holding(self, path: str) -> tuple[dict[str, int], tuple[int, int] | None]:
        """rmdir(2). Returns what a process still in the removed directory, or holding it
        open, is answered from, as overlayfs answers it from its real directory: the
        attributes it shows (_remains), and a descriptor on that real directory with
        its layer's index, to be given back to release_held (None where none could be
        opened). An upper one takes changes; a lower one only reads (removed_attrs)."""
        self._writable(path)
        if path == "/":
            raise fail(errno.EBUSY, path)
        node = self._dir(path)
        parent = self._removable(node, path)
        if self.listing(node):
            raise fail(errno.ENOTEMPTY, path)
        remains = self._remains(node, path)
        parent, prel, name = self._parent_in_upper(path, parent)
        whiteout = True
        if self.resolver.is_upper(node.layer):
            st = self.upper.lstat(node.rel)
            whiteout = self.resolver.lower_positive(parent, name)
            fd = self._remove_upper(prel, name, True, whiteout)
            self._forget(st)  # its inode number may come back for another entry
        else:
            try:
                fd = self._open_dir(node)
            except OSError as exc:  # out of descriptors, say: the removal goes on without it
                log.warning("keeping removed directory %s: %s", path, exc.strerror or exc)
                fd = None
            try:
                self._whiteout(prel, name)
            except BaseException:
                if fd is not None:
                    os.close(fd)
                raise
        self.resolver.invalidate(path, gone=not whiteout)  # empty: its children were forgotten as they went
        return remains, None if fd is None else (fd, node.layer)

    def removed_attrs(self, fd: int, index: int, remains: dict[str, int]) -> dict[str, int]:
        """What a directory removed or replaced (rmdir_holding, hold) shows now: the
        attributes it showed then, with what changed since on its real directory if
        that is an upper one. One kept in the work dir (see _remove_upper) shows the
        size that a removed directory has on the upper filesystem, as overlayfs's real
        one does."""
        if not self.resolver.is_upper(index):
            return remains  # a lower directory does not change
        st = os.fstat(fd)
        attrs = self.attrs(st, remains["st_ino"], remains["st_nlink"])
        if fd in self._kept_removed:
            attrs["st_size"] = self.work.removed_dir_size() if self.work is not None else 0
        return attrs

    def release_held(self, fd: int, index: int) -> None:
        """Give back a descriptor that kept a removed or replaced entry reachable
        (rmdir_holding, hold): an upper directory kept in the work dir serves the next
        copy-up of a directory."""
        name = self._kept_removed.pop(fd, None)
        os.close(fd)
        if name is not None and self.work is not None:
            try:
                self.work.recycle_dir(name)
            except OSError as exc:  # what is left in the work dir goes at the next mount
                log.warning("removing %s from the work directory: %s", name, exc.strerror or exc)

    # -- renaming ----------------------------------------------------------------
    def rename(self, old: str, new: str, noreplace: bool = False, whiteout: bool = False) -> None:
        """rename(2); noreplace: renameat2's RENAME_NOREPLACE (EEXIST if new exists);
        whiteout: its RENAME_WHITEOUT, which overlayfs refuses (EINVAL), but only once the
        checks that the VFS makes before asking it have passed."""
        copyup, _ = self._writable(new)
        source = self.node(old)
        if noreplace and self.resolver.resolve(new) is not None:
            raise fail(errno.EEXIST, new)
        if old == new:
            return
        if new.startswith(old.rstrip("/") + "/"):
            raise fail(errno.EINVAL, new)
        oname = split(old)[1]
        npath, nname = split(new)
        self._check_name(nname, new)
        target = self.resolver.resolve(new)
        if target is not None and self._one_upper_file(source, target):
            return  # two names of one file: rename(2) does nothing
        self._removable(source, old)
        if target is None:
            self.protections.refuse(self._dir(npath), new, IMMUTABLE)  # an append-only directory takes a new name
        else:
            self._removable(target, new)
            if source.is_dir and not target.is_dir:
                raise fail(errno.ENOTDIR, new)
            if not source.is_dir and target.is_dir:
                raise fail(errno.EISDIR, new)
        if whiteout:
            raise fail(errno.EINVAL, new)
        if target is not None and target.is_dir and self.listing(target):
            raise fail(errno.ENOTEMPTY, new)
        with self._rename_lock:
            self._rename(source, target, oname, npath, nname, copyup)

    def _one_upper_file(self, source: Node, target: Node) -> bool:
        """Whether two nodes are names of one upper file. Two names of one lower
        file are not: a change to either breaks them apart (overlayfs without
        index), so overlayfs gives each name an inode of its own and a rename
        between them is done, as it is here."""
        upper = self.resolver.is_upper
        if source.is_dir or target.is_dir or not (upper(source.layer) and upper(target.layer)):
            return False
        sst, tst = self._lstat(source), self._lstat(target)
        return (sst.st_dev, sst.st_ino) == (tst.st_dev, tst.st_ino)

    def _has_lower(self, node: Node) -> bool:
        return any(not self.resolver.is_upper(index) for index, _ in node.layers)

    def _redirect(self, node: Node, rel: str) -> None:
        """Instead of EXDEV: a moved merged directory keeps finding its lower
        parts through a redirect to where the layers below the upper find it
        (overlayfs redirect_dir). A relative redirect (overlayfs writes them for
        a rename within a directory) becomes absolute: it would name nothing in
        another parent."""
        if node.is_dir and self._has_lower(node) and not (self.upper.redirect(rel) or "").startswith("/"):
            self.upper.setxattr(rel, self.redirect_xattr, os.fsencode("/" + self._path_below(rel)))
            crashpoints.point("rename.redirect")

    def _path_below(self, rel: str) -> str:
        """Where the layers below the upper look for its directory rel: at rel, but
        for the redirects of the upper's directories on the way (overlayfs's
        ovl_get_redirect). Not at the path of rel's topmost lower part: a layer
        between may have a whiteout there, left by a rename of its own."""
        below = prefix = "."
        for name in rel.split("/"):
            prefix = rel_join(prefix, name)
            redirect = self.upper.redirect(prefix)
            if redirect is None:
                below = rel_join(below, name)
            elif redirect.startswith("/"):
                below = redirect.strip("/")
            else:
                below = rel_join(below, redirect)
        return below

    def exchange(self, old: str, new: str) -> None:
        """renameat2's RENAME_EXCHANGE: swap two entries in one step."""
        copyup, _ = self._writable(new)
        first, second = self.node(old), self.node(new)
        if old == new:
            return
        if new.startswith(old.rstrip("/") + "/") or old.startswith(new.rstrip("/") + "/"):
            raise fail(errno.EINVAL, new)
        self._removable(first, old)
        self._removable(second, new)
        with self._rename_lock:
            first_rel, second_rel = copyup.ensure(first), copyup.ensure(second)
            for node, rel, dest in ((first, first_rel, new), (second, second_rel, old)):
                self._redirect(node, rel)
                parent, _, name = self._parent_in_upper(dest)
                if node.is_dir and not self._has_lower(node) and self.resolver.lower_positive(parent, name):
                    self._set_opaque(self.upper, rel)  # lower entries named like its new place stay hidden
            crashpoints.point("exchange.prepared")
            syscalls.renameat2(self.upper.fd, first_rel, self.upper.fd, second_rel, syscalls.RENAME_EXCHANGE)
            crashpoints.point("exchange.exchanged")
            self.resolver.renamed(old, new, first.is_dir or second.is_dir, gone=False, exchange=True)

    def _rename(self, source: Node, target: Node | None, oname: str, npath: str, nname: str, copyup: CopyUp) -> None:
        old, new = source.path, child_path(npath, nname)
        _, work = self._writable(new)
        has_lower = self._has_lower(source)
        orel = copyup.ensure(source)
        self._redirect(source, orel)
        oparent, oprel, _ = self._parent_in_upper(old)
        nparent, nprel, _ = self._parent_in_upper(new)
        nrel = rel_join(nprel, nname)
        if source.is_dir and not has_lower and self.resolver.lower_positive(nparent, nname):
            self._set_opaque(self.upper, orel)  # lower entries named like the target stay hidden
            crashpoints.point("rename.opaque")
        existing = self.upper.lstat(nrel)
        whiteout = self.resolver.lower_positive(oparent, oname)
        marker = rel_join(oprel, markers.WH_PREFIX + oname) if whiteout else None  # the OCI form's
        record = None
        if existing is not None and stat.S_ISDIR(existing.st_mode) and target is not None:
            # only whiteouts: the merged directory is empty
            if self.form is WhiteoutForm.OVERLAY and len(target.layers) > 1:
                copyup.empty_dir(nrel, self.opaque_xattr)  # never shows what they hide
                self.resolver.invalidate(new)
            else:
                if len(target.layers) > 1:  # an empty directory cannot be opaque in the OCI form
                    record = work.record_rename(orel, nrel, marker)
                    crashpoints.point("rename.recorded")
                clear_dir(self.upper, nrel)
            crashpoints.point("rename.target_cleared")
        if existing is not None and source.is_dir and not stat.S_ISDIR(existing.st_mode):
            # a directory over a whiteout: exchange, then the whiteout is at the old name
            syscalls.renameat2(self.upper.fd, orel, self.upper.fd, nrel, syscalls.RENAME_EXCHANGE)
            crashpoints.point("rename.exchanged")
            if not whiteout:
                os.unlink(orel, dir_fd=self.upper.fd)
        elif whiteout and self.form is WhiteoutForm.OVERLAY:
            syscalls.renameat2(self.upper.fd, orel, self.upper.fd, nrel, syscalls.RENAME_WHITEOUT)
        else:
            if whiteout:
                if record is None and source.is_dir and has_lower:
                    # The .wh. file cuts the directory off from its lower parts while it is
                    # still at the old name: the next mount finishes what a crash cuts short.
                    record = work.record_rename(orel, nrel, marker)
                    crashpoints.point("rename.recorded")
                self._whiteout(oprel, oname)
            os.rename(orel, nrel, src_dir_fd=self.upper.fd, dst_dir_fd=self.upper.fd)
        crashpoints.point("rename.renamed")
        if record is not None:
            work.drop_record(record)
        self._forget(existing)
        subtree = source.is_dir or (target is not None and target.is_dir)
        self.resolver.renamed(old, new, subtree, gone=not whiteout)  # nothing below: nothing left at old

    # -- changing ----------------------------------------------------------------
    def _changeable(self, path: str, refused: int = BOTH) -> str:
        """The upper rel of path, copied up, unless path is immutable or append-only as
        refused says (notify_change, xattr_permission)."""
        copyup, _ = self._writable(path)
        node = self.node(path)
        self.protections.refuse(node, path, refused)
        return copyup.ensure(node)

    def chmod(self, path: str, mode: int) -> None:
        rel = self._changeable(path)
        st = self.upper.lstat(rel)
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise fail(errno.EOPNOTSUPP, path)
        os.chmod(rel, mode & 0o7777, dir_fd=self.upper.fd)

    def chown(self, path: str, uid: int, gid: int, dropped: Callable[[dict[str, int]], int] | None = None) -> None:
        """-1 leaves an id as it is. A chown that changes neither still copies the entry
        up (ovl_setattr copies up before it looks at what changes) and moves its change
        time, and no immutable or append-only flag refuses it (may_setattr). It drops
        the set-id bits of a non-directory all the same (chown_common), which the kernel
        leaves to a FUSE filesystem: dropped(attrs) says which, and raises where the
        caller may not change the mode."""
        mode = kill = 0
        if (uid, gid) == (-1, -1) and dropped is not None:
            attrs = self.getattr(path)
            mode = attrs["st_mode"]
            if not stat.S_ISDIR(mode):
                kill = dropped(attrs)
        rel = self._changeable(path, BOTH if (uid, gid) != (-1, -1) else 0)
        os.chown(rel, uid, gid, dir_fd=self.upper.fd, follow_symlinks=False)
        if kill:  # the copy-up kept the mode that the merged view showed
            os.chmod(rel, stat.S_IMODE(mode) & ~kill, dir_fd=self.upper.fd)

    def utimens(self, path: str, times_ns: tuple[int, int] | None, touch: bool = False) -> None:
        """touch: the caller gave no times (utimes(path, NULL)), which an append-only
        file allows; times_ns None means that too."""
        rel = self._changeable(path, IMMUTABLE if touch or times_ns is None else BOTH)
        syscalls.utimensat(self.upper.fd, rel, times_ns or (syscalls.UTIME_NOW, syscalls.UTIME_NOW))

    def truncate(self, path: str, length: int, kill: Callable[[int], None] | None = None, retime: bool = True) -> None:
        """kill: called with the file's fd after the truncation (set-id bits to drop);
        retime: as ftruncate's."""
        node = self.node(path)
        if node.is_dir:
            raise fail(errno.EISDIR, path)
        copyup, _ = self._writable(path)
        self.protections.refuse(node, path, BOTH)
        rel = copyup.ensure(node, data=length > 0)
        fd = os.open(rel, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self.upper.fd)
        try:
            _truncate(fd, length, retime)
            if kill is not None:
                kill(fd)
        finally:
            os.close(fd)

    # -- xattrs ------------------------------------------------------------------
    # A caller's xattr in the mount's overlay namespace is kept escaped, as overlayfs keeps
    # it (markers.ESCAPED_XATTR_PREFIXES); the records of overlayfs and of this driver
    # never show, and none can be set.
    def _stored(self, name: str, path: str, refusal: int) -> str:
        stored = markers.stored_xattr(name, self.overlay_prefix)
        if stored is None:
            raise fail(refusal, path)
        return stored

    def getxattr(self, path: str, name: str) -> bytes:
        stored = self._stored(name, path, errno.ENODATA)  # a record is not there for the caller
        index, rel = self.node(path).attr_source
        return self.layers[index].getxattr_strict(rel, stored)

    def fgetxattr(self, fd: int, name: str) -> bytes:
        """getxattr of an open file, by its fd (an O_PATH one too)."""
        return _by_fd(os.getxattr, fd, self._stored(name, f"fd {fd}", errno.ENODATA))

    def listxattr(self, path: str) -> list[str]:
        index, rel = self.node(path).attr_source
        return self._shown_xattrs(self.layers[index].listxattr(rel))

    def flistxattr(self, fd: int, index: int) -> list[str]:
        """listxattr of an open file, by its fd (an O_PATH one too)."""
        return self._shown_xattrs(_by_fd(os.listxattr, fd))

    def _shown_xattrs(self, names: Iterable[str]) -> list[str]:
        shown = (markers.shown_xattr(name, self.overlay_prefix) for name in names)
        return [name for name in shown if name is not None]

    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        stored = self._stored(name, path, errno.EPERM)
        rel = self._changeable(path)
        self.upper.setxattr(rel, stored, value, flags)

    def fsetxattr(self, fd: int, name: str, value: bytes, flags: int = 0) -> None:
        """setxattr of a file open in the upper layer whose names are gone, by its fd."""
        os.setxattr(fd, self._stored(name, f"fd {fd}", errno.EPERM), value, flags)

    def fremovable_xattr(self, fd: int, name: str) -> None:
        """What overlayfs asks of a lower file by fd before the copy-up that a removal of
        its xattr needs (ovl_xattr_set), as removexattr does by path: a name no caller may
        remove is EPERM, one the file lacks ENODATA."""
        _by_fd(os.getxattr, fd, self._stored(name, f"fd {fd}", errno.EPERM))

    def fremovexattr(self, fd: int, name: str) -> None:
        """removexattr of a file open in the upper layer whose names are gone, by its fd."""
        os.removexattr(fd, self._stored(name, f"fd {fd}", errno.EPERM))

    def removexattr(self, path: str, name: str) -> None:
        stored = self._stored(name, path, errno.EPERM)
        node = self.node(path)
        self.protections.refuse(node, path, BOTH)
        if not self.resolver.is_upper(node.layer):
            index, rel = node.attr_source
            self.layers[index].getxattr_strict(rel, stored)  # ENODATA before any copy-up
        copyup, _ = self._writable(path)
        self.upper.removexattr(copyup.ensure(node), stored)



def _by_fd(call: Callable[..., T], fd: int, *args: object) -> T:
    """call(fd, *args), or through /proc for an O_PATH fd (the file a rename replaced),
    which the xattr calls refuse with EBADF."""
    try:
        return call(fd, *args)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
    return call(f"/proc/self/fd/{fd}", *args)


def kill_set_id(fd: int, in_group: Callable[[int], bool] | None = None) -> None:
    """A write or truncation by a user without CAP_FSETID drops set-user-ID, and
    set-group-ID where group execute is set or (in_group given) the user is not
    in the file's group (the kernel's setattr_should_drop_suidgid). The kernel
    leaves this to the filesystem when it hands over O_TRUNC with the open, and
    for writes and truncations under FUSE_HANDLE_KILLPRIV_V2."""
    st = os.fstat(fd)
    kill = set_id_bits_dropped(st.st_mode, st.st_gid, in_group)
    if kill:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~kill)


def set_id_bits_dropped(mode: int, gid: int, in_group: Callable[[int], bool] | None) -> int:
    """The set-id bits that a change of a file with this mode and group drops:
    set-user-ID always, set-group-ID where group execute is set or (in_group
    given) the caller is not in the group (setattr_should_drop_suidgid)."""
    kill = mode & stat.S_ISUID
    if mode & stat.S_ISGID and (mode & stat.S_IXGRP or (in_group is not None and not in_group(gid))):
        kill |= stat.S_ISGID
    return kill


def _truncate(fd: int, length: int, retime: bool) -> None:
    """ftruncate, or nothing when the size is already length and the times must stay."""
    if retime or os.fstat(fd).st_size != length:
        os.ftruncate(fd, length)
