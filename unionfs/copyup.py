"""Copy-up: bring a lower entry into the upper layer before its first change.

overlayfs.rst "Non-directories" and "Permission model": parents first with
their metadata, then the entry with its data, owner, mode, xattrs and times.
Each entry is built in the work directory and renamed into place, so a crash
never leaves a half-copied file visible; data is fsynced first unless the
mount is ``volatile``. Data moves in the kernel: a reflink where the
filesystem shares extents, else ``copy_file_range`` over the data extents
only, which keeps sparse files sparse (``datacopy``).
"""
from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import functools
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable

from unionfs import crashpoints, incompat, markers, protection, syscalls
from unionfs.datacopy import copy_data
from unionfs.inodes import InodeMap
from unionfs.layer import Layer
from unionfs.publish import SMALL, Pending, Publisher
from unionfs.resolve import Node, Resolver, split, to_rel

log = logging.getLogger(__name__)

# open flags that the copy's own fd (O_RDWR) can stand for; 0o100000 is the kernel's O_LARGEFILE
_PLAIN_OPEN = os.O_ACCMODE | os.O_CLOEXEC | os.O_NOFOLLOW | 0o100000
_LOCK_WAIT = 5.0  # seconds
_INTENT = ".intent"
SPARE = ".spare"  # the suffix of an empty file made ahead for a copy-up (WorkDir.make_spares)
SPARES = 64  # kept ready while small copy-ups are being published
_SPARE_DIRS = 64  # emptied directories kept for copy-ups of directories (WorkDir.recycle_dir)
_SMALL_DIR = 4096  # larger: a directory that once held many entries, slower to list even when empty
_RENAME = ".rename"
_READ_COPY = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
# Inode flags a copy-up carries over, as overlayfs's does (OVL_COPY_FS_FLAGS_MASK).
# Immutable and append-only it records in an xattr instead (see protection).
COPIED_FLAGS = syscalls.FS_SYNC_FL | syscalls.FS_NOATIME_FL


def _plain_rel(rel: str) -> bool:
    """A record's path may only name something inside the upper layer."""
    return bool(rel) and not rel.startswith("/") and ".." not in rel.split("/")


def _make_work_dir(name: str, dir_fd: int | None) -> None:
    """work/ made, or kept if it is a directory; anything else there is replaced, as
    overlayfs replaces it: the name is the union's own."""
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    except FileExistsError:
        if stat.S_ISDIR(os.lstat(name, dir_fd=dir_fd).st_mode):
            return
        os.unlink(name, dir_fd=dir_fd)
        os.mkdir(name, 0o700, dir_fd=dir_fd)


class WorkDir(Layer):
    """The work directory (``workdir/work``, where overlayfs keeps its own).

    Given the upper layer, it also undoes entries that an interrupted
    operation was building inside the upper layer under a temporary name
    (see ``record_intent``), which kernel overlayfs would otherwise show.
    """

    def __init__(self, workdir: str, upper: Layer | None = None, through: int | None = None) -> None:
        """through: a descriptor on workdir to open it through (see ``private_roots``)."""
        path = os.path.join(workdir, "work")
        try:
            _make_work_dir(path if through is None else "work", through)
        except OSError as exc:  # named in full: made through a descriptor, its name alone says little
            raise OSError(exc.errno, exc.strerror, path) from None
        super().__init__(path, -1, through=through, rel="work")  # rel: below through, when given
        self._spares: collections.deque[str] = collections.deque()
        self._spare_dirs: collections.deque[str] = collections.deque()
        self._removed_dir_size: int | None = None  # removed_dir_size, once found
        self._lock(workdir)
        features = incompat.marked(self.fd)
        if features:
            self.close()
            raise ValueError(incompat.refusal(workdir, features))
        self.upper = upper
        self._counter = itertools.count()
        self._prefix = f"#unionfs.{os.getpid()}."
        self._shared: dict[bool, str] = {}
        self._shared_lock = threading.Lock()
        self.clean()

    def _lock(self, workdir: str) -> None:
        """One driver per work directory: another one's clean() would remove what
        this one is building. A driver just unmounted may still be placing its
        last copy-ups (see publish), so wait for it a little before refusing."""
        deadline = time.monotonic() + _LOCK_WAIT
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.close()
                    raise ValueError(f"workdir {workdir} is in use by another mount") from None
                time.sleep(0.05)

    def clean(self) -> None:
        """Remove what an interrupted operation left: never visible, never needed;
        or finish the operation where undoing it is not possible (``record_rename``)."""
        for name in os.listdir(self.fd):
            if name == incompat.INCOMPAT:
                continue  # overlayfs's marks are not ours to remove (see incompat)
            if name.endswith(_INTENT):
                self._undo_intent(name)
            elif name.endswith(_RENAME):
                self._finish_rename(name)
            self.remove_tree(name)

    def remove_tree(self, name: str) -> None:
        _remove_tree(self, name)

    def close(self) -> None:
        self.drop_spares()
        super().close()

    def make_spares(self, count: int) -> None:
        """Make empty files until count are ready for copy-ups to take (take_spare).

        Creating a file allocates an inode, and while a journal commit is being
        written that waits for the commit's I/O: some hundreds of microseconds
        against a few. Files made between the commits of published copy-ups
        save the next copy-ups that wait. Best effort: a copy-up without a
        spare creates its file itself."""
        while len(self._spares) < count:
            name = self.temp_name() + SPARE
            try:
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=self.fd))
            except OSError as exc:
                log.debug("no spare file made in the work dir: %s", exc.strerror)
                return
            self._spares.append(name)

    def take_spare(self) -> str | None:
        """The name of an empty file (mode 0600, the driver's), now the caller's; None if none is ready."""
        try:
            return self._spares.popleft()
        except IndexError:
            return None

    def drop_spares(self) -> None:
        while (name := self.take_spare()) is not None:
            try:
                os.unlink(name, dir_fd=self.fd)
            except OSError:
                pass  # the next mount removes it
        while (name := self.take_spare_dir()) is not None:
            try:
                os.rmdir(name, dir_fd=self.fd)
            except OSError:
                pass

    def recycle_dir(self, name: str) -> None:
        """Empty the directory name of the work dir and keep it for the next copy-up
        of a directory (take_spare_dir), else remove it.

        On ext4, mkdir allocates an inode and a block (100 to 300 us here) and
        rmdir frees them (50 to 100 us), against a few us to strip one of its
        xattrs. ``rm -rf`` of a lower tree copies each directory up to hold
        the whiteouts of its entries, then removes it: the directories it
        removes serve the copy-ups that follow."""
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        try:
            clear_dir_fd(fd)
            keep = len(self._spare_dirs) < _SPARE_DIRS and os.fstat(fd).st_size <= _SMALL_DIR
            if keep:
                try:
                    for xattr in os.listxattr(fd):
                        os.removexattr(fd, xattr)
                except OSError:
                    keep = False  # one it may not remove (a security label): a new directory then
        finally:
            os.close(fd)
        if keep:
            self._spare_dirs.append(name)
        else:
            os.rmdir(name, dir_fd=self.fd)

    def open_emptied(self, name: str) -> int | None:
        """A descriptor on the directory name of the work dir, emptied: a removal moved
        it here, and a process may still be in it (recycle_dir takes it later). None
        where it cannot be opened: it is recycled at once then. Either may fail, and
        the removal stands: what is left goes at the next mount."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError as exc:
            log.warning("keeping %s in the work directory: %s", name, exc.strerror or exc)
            try:
                self.recycle_dir(name)
            except OSError:
                pass
            return None
        try:
            clear_dir_fd(fd)
        except OSError as exc:
            log.warning("emptying %s in the work directory: %s", name, exc.strerror or exc)
        return fd

    def removed_dir_size(self) -> int:
        """st_size of an empty directory once removed, on the work dir's filesystem:
        ext4 sets it to 0, tmpfs keeps its empty size. Found once, by removing one."""
        if self._removed_dir_size is None:
            name = self.temp_name()
            try:
                os.mkdir(name, 0o700, dir_fd=self.fd)
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
                try:
                    os.rmdir(name, dir_fd=self.fd)
                    self._removed_dir_size = os.fstat(fd).st_size
                finally:
                    os.close(fd)
            except OSError as exc:  # a full disk, say: ext4's answer, asked again next time
                log.debug("no directory removed to find the size of one: %s", exc.strerror)
                return 0
        return self._removed_dir_size

    def take_spare_dir(self) -> str | None:
        """The name of an empty directory without xattrs, mode and owner still to be set; None if none."""
        try:
            return self._spare_dirs.popleft()
        except IndexError:
            return None

    def record_intent(self, name: str, upper_rel: str) -> None:
        """Note that upper_rel (basename ``.wh.`` + name) is about to be built in
        the upper layer: if the driver dies before ``drop_intent``, the next
        mount removes it."""
        self._write_record(name + _INTENT, upper_rel)

    def drop_intent(self, name: str) -> None:
        os.unlink(name + _INTENT, dir_fd=self.fd)

    def record_rename(self, source: str, target: str, marker: str | None) -> str:
        """Note that the upper directory source is about to replace target, whose
        whiteouts go first one by one, with the ``.wh.`` file marker (if any) at
        the old name. Half-way, the lower entries they hid show again, so there
        is no undoing it: if the driver dies before ``drop_record``, the next
        mount finishes it. Returns the record's name."""
        record = self.temp_name() + _RENAME
        self._write_record(record, "\0".join((source, target, marker or "")))
        return record

    def drop_record(self, record: str) -> None:
        os.unlink(record, dir_fd=self.fd)

    def _write_record(self, record: str, text: str) -> None:
        fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=self.fd)
        try:
            os.write(fd, os.fsencode(text))
        finally:
            os.close(fd)

    def _read_record(self, record: str) -> str:
        fd = os.open(record, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        try:
            return os.fsdecode(os.read(fd, 1 << 16))
        finally:
            os.close(fd)

    def _undo_intent(self, record: str) -> None:
        if self.upper is None:
            return
        rel = self._read_record(record)
        # only the exact temporary name is ever removed: a cut-short record names nothing
        if rel.split("/")[-1] != markers.WH_PREFIX + record[: -len(_INTENT)] or not _plain_rel(rel):
            return
        log.info("removing %s, left by an interrupted operation", rel)
        _remove_tree(self.upper, rel)

    def _finish_rename(self, record: str) -> None:
        if self.upper is None:
            return
        fields = self._read_record(record).split("\0")
        if len(fields) != 3 or not all(map(_plain_rel, fields[:2])) or (fields[2] and not _plain_rel(fields[2])):
            return  # cut short while being written: nothing was changed yet
        source, target, marker = fields
        if not self.upper.exists(source):
            return  # the rename was done
        log.info("finishing the rename of %s over %s, interrupted", source, target)
        st = self.upper.lstat(target)
        if st is not None and stat.S_ISDIR(st.st_mode):
            clear_dir(self.upper, target)
        if marker and not self.upper.exists(marker):
            # a file of its own, not link_marker's: a shared one would stay in the work dir
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600, dir_fd=self.upper.fd))
        os.rename(source, target, src_dir_fd=self.upper.fd, dst_dir_fd=self.upper.fd)

    def temp_name(self) -> str:
        return f"{self._prefix}{next(self._counter)}"

    def link_marker(self, chardev: bool, dir_fd: int, rel: str) -> None:
        """Make a whiteout (char 0/0) or an empty ``.wh.`` file at rel by hard link.

        A link costs a fraction of creating an inode (overlayfs shares one
        whiteout inode the same way); a new shared inode is made when the old
        one reaches the filesystem's link limit or is missing.
        """
        for _ in range(3):
            shared = self._shared.get(chardev)
            if shared is None:
                shared = self._make_shared(chardev)
            try:
                os.link(shared, rel, src_dir_fd=self.fd, dst_dir_fd=dir_fd, follow_symlinks=False)
                crashpoints.point("whiteout.linked")
                return
            except OSError as exc:
                if not (exc.errno == errno.EMLINK or (exc.errno == errno.ENOENT and not self.exists(shared))):
                    raise
                with self._shared_lock:
                    if self._shared.get(chardev) == shared:
                        del self._shared[chardev]
        raise OSError(errno.EMLINK, os.strerror(errno.EMLINK), rel)

    def _make_shared(self, chardev: bool) -> str:
        with self._shared_lock:
            name = self._shared.get(chardev)
            if name is None:
                name = self.temp_name()
                if chardev:
                    os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=self.fd)
                else:
                    os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=self.fd))
                crashpoints.point("whiteout.shared")
                self._shared[chardev] = name
            return name


def _remove_tree(layer: Layer, rel: str) -> None:
    st = layer.lstat(rel)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        clear_dir(layer, rel)
        os.rmdir(rel, dir_fd=layer.fd)
    else:
        os.unlink(rel, dir_fd=layer.fd)


def clear_dir_fd(fd: int) -> None:
    """Remove everything inside an open directory, depth first."""
    for name in os.listdir(fd):
        try:
            os.unlink(name, dir_fd=fd)
        except IsADirectoryError:
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            try:
                clear_dir_fd(sub)
            finally:
                os.close(sub)
            os.rmdir(name, dir_fd=fd)


def clear_dir(layer: Layer, rel: str) -> None:
    fd = os.open(rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=layer.fd)
    try:
        clear_dir_fd(fd)
    finally:
        os.close(fd)


def _shown_alike(source: os.stat_result, copy: os.stat_result | None, same_number: bool) -> bool:
    """Whether a copy shows what its source showed (times are copied, and the
    kernel keeps a file's ctime itself)."""
    return (copy is not None and same_number and not stat.S_ISDIR(source.st_mode)
            and (source.st_mode, source.st_uid, source.st_gid, source.st_size, source.st_nlink, source.st_blocks)
            == (copy.st_mode, copy.st_uid, copy.st_gid, copy.st_size, copy.st_nlink, copy.st_blocks))


_WAIT_STEP = 0.05  # seconds between two looks at a waiting caller: is it being killed?
PREPARED = SMALL  # lower files larger than this are copied before the mount's lock is taken (CopyUp.prepare)


class _EntryLock:
    """One of the locks that copy-ups of the same entry take in turn. A caller
    waits for another caller's copy-up as overlayfs's waits (killable): it
    gives up with EINTR once it is being killed (CopyUp.stop)."""

    __slots__ = ("_lock", "_copyup")

    def __init__(self, copyup: CopyUp) -> None:
        self._lock = threading.Lock()
        self._copyup = copyup

    def __enter__(self) -> None:
        lock = self._lock
        if not lock.acquire(blocking=False):
            self._copyup.wait_killably(lambda seconds: lock.acquire(timeout=seconds))

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class Prepared:
    """A large lower file's data, copied into the work directory before the caller
    takes the mount's lock for the change that copies it up (CopyUp.prepare)."""

    __slots__ = ("key", "done", "tmp", "users")

    def __init__(self, key: tuple[int, str]) -> None:
        self.key = key  # (layer index, rel) of the lower file
        self.done = threading.Event()
        self.tmp: str | None = None  # its name in the work dir, once copied
        self.users = 1  # requests that asked for it and have not let go of it yet


class CopyUp:
    """Copies entries up, once each even when threads race for the same one."""

    def __init__(
        self,
        resolver: Resolver,
        work: WorkDir,
        inodes: InodeMap,
        *,
        durable: bool,
        private_prefix: str,
        protattr_xattr: str,
        on_new_inode: Callable[[os.stat_result | None], None] | None = None,
    ) -> None:
        self.resolver = resolver
        # told of each upper inode a copy-up makes: its number may be one that a
        # removed entry had, and whatever was cached about that one is stale
        self.on_new_inode = on_new_inode
        # Told the merged path of an entry whose st_ino changed with its copy-up:
        # listings that show its old number are stale (the FUSE side drops them).
        self.on_renumbered: Callable[[str], None] | None = None
        # Told the merged path of each entry copied up, and whether the merged view shows
        # it alike but for its birth time (the copy's). Not alike: a directory (merged
        # from now on: link count 1, the upper directory's size), a new inode number or
        # link count (one name of a lower hard link). The kernel may hold the old
        # attributes for its attribute timeout.
        self.on_attrs_changed: Callable[[str, bool], None] | None = None
        # Told the merged path of each regular file copied up, with a way to open the
        # copy for reading (files open on the lower file read the copy from then on)
        # and the copy's size.
        self.on_copied_up: Callable[[str, Callable[[], int], int], None] | None = None
        # Asked between the pieces of a large file's data: whether to give the copy up
        # (EINTR), as overlayfs does when its caller is killed (see interrupts).
        self.stop: Callable[[], bool] | None = None
        self.inodes = inodes
        self.upper = resolver.layers[0]
        self.work = work
        self.durable = durable
        self.origin_xattr = private_prefix + "origin"
        self.protattr_xattr = protattr_xattr
        self._locks = [_EntryLock(self) for _ in range(64)]
        self._prepared: dict[tuple[int, str], Prepared] = {}
        self._prepared_lock = threading.Lock()
        self._reflink = True
        # Small files opened for writing are synced and renamed in batches (see publish);
        # the resolver waits for them.
        self.publisher: Publisher | None = None
        if durable:
            self.publisher = Publisher(self._publish, work.remove_tree, functools.partial(syscalls.syncfs, work.fd),
                                       between=lambda: work.make_spares(SPARES))
            resolver.settle = self.publisher.wait_for

    def ensure(self, node: Node, data: bool = True) -> str:
        """Make sure node exists in the upper layer; returns its upper rel path."""
        for path in self._missing(node):
            self._copy_one(path, data or path != node.path)
        return self._upper_rel(node)

    def open(self, node: Node, flags: int, data: bool = True) -> int:
        """An fd opened with flags on node's copy in the upper layer, copied up first.
        A small file's copy may still be pending (see publish): the fd is on it."""
        missing = self._missing(node)
        for path in missing[:-1]:
            self._copy_one(path, True)
        if missing:
            fd = self._copy_one(missing[-1], data, flags)
            if fd is not None:
                return fd
        return os.open(self._upper_rel(node), flags, dir_fd=self.upper.fd)

    def prepare(self, node: Node, unlikely: Callable[[], bool] = lambda: False) -> Prepared | None:
        """Copy a large lower file's data into the work directory (and sync it), before
        the caller takes the mount's lock for a change that copies the file up: the
        copy-up under the lock then takes this copy (a lower file never changes) and
        has only the metadata left to do, so other changes through the mount do not
        wait for the data, as overlayfs copies the data holding the file's own lock
        only. A second caller for the same file waits for the first one's copy,
        killably. None where there is nothing to prepare, or where the change is
        unlikely to copy up (asked last, for a large file alone); the caller lets go of
        what it got (release) once its change is done."""
        if self.resolver.is_upper(node.layer):
            return None
        index, rel = node.attr_source
        src = self.resolver.layers[index]
        st = src.lstat(rel)
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_size <= PREPARED or unlikely():
            return None
        key = (index, rel)
        with self._prepared_lock:
            prepared = self._prepared.get(key)
            ours = prepared is None
            if prepared is None:
                prepared = self._prepared[key] = Prepared(key)
            else:
                prepared.users += 1
        if not ours:
            try:
                self.wait_killably(prepared.done.wait)
            except BaseException:
                self.release(prepared)
                raise
            return prepared
        tmp = self.work.temp_name()
        try:
            sfd = src.open(rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                dfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=self.work.fd)
                try:
                    self._copy_contents(sfd, dfd, st)
                    if self.durable:
                        os.fsync(dfd)
                    crashpoints.point("copyup.prepared")
                finally:
                    os.close(dfd)
            finally:
                os.close(sfd)
        except BaseException:
            with contextlib.suppress(OSError):
                self.work.remove_tree(tmp)
            with self._prepared_lock:  # the next caller copies anew; one waiting gets no copy
                prepared.users -= 1
                if self._prepared.get(key) is prepared:
                    del self._prepared[key]
            raise
        else:
            prepared.tmp = tmp
        finally:
            prepared.done.set()
        return prepared

    def wait_killably(self, wait: Callable[[float], bool]) -> None:
        """wait(seconds) until it is True, as overlayfs waits for another caller's
        copy-up (killable): EINTR once the caller is being killed (stop)."""
        while not wait(_WAIT_STEP):
            stop = self.stop
            if stop is not None and stop():
                raise OSError(errno.EINTR, "gave up waiting for a copy-up: the caller is being killed")

    def release(self, prepared: Prepared) -> None:
        """A request is done with what it prepared: the copy goes once no request
        wants it, unless a copy-up took it."""
        with self._prepared_lock:
            prepared.users -= 1
            if prepared.users or self._prepared.get(prepared.key) is not prepared:
                return
            del self._prepared[prepared.key]
            tmp, prepared.tmp = prepared.tmp, None
        if tmp is not None:
            self.work.remove_tree(tmp)

    def _take_prepared(self, key: tuple[int, str]) -> str | None:
        """The work dir name of a prepared copy of the lower file key, now the caller's."""
        with self._prepared_lock:
            prepared = self._prepared.get(key)
            if prepared is None or prepared.tmp is None:
                return None
            del self._prepared[key]
            tmp, prepared.tmp = prepared.tmp, None
            return tmp

    def _upper_rel(self, node: Node) -> str:
        """Where node is in the upper layer once copied up (a redirected directory keeps its rel)."""
        return node.rel if self.resolver.is_upper(node.layer) else to_rel(node.path)

    def _missing(self, node: Node) -> list[str]:
        """The paths to copy up, parents first, for node to be in the upper layer."""
        if self.resolver.is_upper(node.layer):
            return []
        pending: list[str] = []
        path = node.path
        while True:
            # The directories above need no wait for pending copies below them.
            current = self.resolver.resolve(path, settle=path == node.path)
            if current is None:
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
            if self.resolver.is_upper(current.layer):
                break
            pending.append(path)
            if path == "/":
                break
            path = split(path)[0]
        return pending[::-1]

    def _copy_one(self, path: str, data: bool, open_flags: int | None = None) -> int | None:
        """Copy one entry up. With open_flags, a small file is left pending and an fd
        opened with them on its copy is returned; None where the copy is in place."""
        with self._locks[hash(path) & 63]:
            node = self.resolver.resolve(path)
            if node is None:
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
            if self.resolver.is_upper(node.layer):
                return None
            index, rel = node.attr_source
            src = self.resolver.layers[index]
            st = src.lstat(rel)
            if st is None:
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
            publisher = self.publisher
            defer = (publisher is not None and open_flags is not None and data and stat.S_ISREG(st.st_mode)
                     and 0 < st.st_size <= SMALL)
            copied = None if defer or not data or not stat.S_ISREG(st.st_mode) else self._take_prepared((index, rel))
            if defer:
                spare = self.work.take_spare()
            else:
                spare = self.work.take_spare_dir() if stat.S_ISDIR(st.st_mode) else None
            tmp = copied or spare or self.work.temp_name()
            sync_fd = fd = None
            st_new: os.stat_result | None
            is_dir = stat.S_ISDIR(st.st_mode)
            if is_dir:
                self.resolver.expect_empty(to_rel(path))
            try:
                sync_fd = self._build(src, rel, st, tmp, data, keep_open=defer, spare=spare is not None,
                                      copied=copied is not None)
                same_number = self._set_origin(tmp, st, src)
                syscalls.utimensat(self.work.fd, tmp, (st.st_atime_ns, st.st_mtime_ns))
                crashpoints.point("copyup.times")
                if defer:
                    assert open_flags is not None and sync_fd is not None
                    if open_flags & os.O_ACCMODE == os.O_RDWR and not open_flags & ~_PLAIN_OPEN:
                        fd, sync_fd = sync_fd, os.dup(sync_fd)  # one open file for both: a path lookup less
                    else:
                        fd = os.open(tmp, open_flags, dir_fd=self.work.fd)
                    st_new = os.fstat(fd)
                else:
                    self._place(tmp, path)
                    st_new = self.upper.lstat(to_rel(path))
            except BaseException:
                for opened in (sync_fd, fd):
                    if opened is not None:
                        os.close(opened)
                self.work.remove_tree(tmp)
                if is_dir:
                    self.resolver.not_made(to_rel(path))
                raise
            if self.on_new_inode is not None:
                self.on_new_inode(st_new)
            if not same_number and self.on_renumbered is not None:
                self.on_renumbered(path)
            if self.on_attrs_changed is not None:
                self.on_attrs_changed(path, _shown_alike(st, st_new, same_number))
            if self.on_copied_up is not None and stat.S_ISREG(st.st_mode) and st_new is not None:
                # a deferred copy is under its temporary name until the publisher renames it
                dir_fd, copy = (self.work.fd, tmp) if defer else (self.upper.fd, to_rel(path))
                self.on_copied_up(path, lambda: os.open(copy, _READ_COPY, dir_fd=dir_fd), st_new.st_size)
            if defer:
                assert publisher is not None and sync_fd is not None
                publisher.submit(Pending(path, tmp, sync_fd, fd, st.st_size))
            self.resolver.invalidate(path, made_dir=is_dir)
            if defer and crashpoints.armed():
                publisher.wait_for(path)  # type: ignore[union-attr]  # every kill point in one order
            return fd

    def _place(self, tmp: str, path: str) -> None:
        """Rename a finished copy into place. A copy-up is no change of its parent:
        the times it had just before stay (ovl_copy_up_one)."""
        parent = to_rel(split(path)[0])
        before = self.upper.lstat(parent)
        os.rename(tmp, to_rel(path), src_dir_fd=self.work.fd, dst_dir_fd=self.upper.fd)
        crashpoints.point("copyup.renamed")
        if before is not None:
            syscalls.utimensat(self.upper.fd, parent, (before.st_atime_ns, before.st_mtime_ns))
            crashpoints.point("copyup.parent_times")

    def _publish(self, tmp: str, path: str) -> None:
        """A pending copy, synced by now, into place (on the publisher's thread)."""
        try:
            self._place(tmp, path)
        finally:
            self.resolver.invalidate(path)

    def empty_dir(self, rel: str, opaque_xattr: str) -> None:
        """Empty an upper directory whose entries are all whiteouts, with no moment
        at which the lower entries they hide show again (overlayfs's
        ovl_clear_empty): an empty opaque copy of it, built in the work dir,
        takes its place in one exchange. Clearing it in place would bring them
        back on a crash, and kernel overlayfs lists the whiteouts of an opaque
        directory as entries, so the whiteouts cannot stay behind an opaque mark."""
        st = self.upper.lstat(rel)
        if st is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), rel)
        tmp, wfd = self.work.temp_name(), self.work.fd
        try:
            os.mkdir(tmp, 0o700, dir_fd=wfd)
            os.chown(tmp, st.st_uid, st.st_gid, dir_fd=wfd, follow_symlinks=False)
            os.chmod(tmp, stat.S_IMODE(st.st_mode), dir_fd=wfd)
            self._copy_xattrs(self.upper, rel, tmp)
            origin = self.upper.getxattr(rel, self.origin_xattr)
            if origin is not None:
                self.work.setxattr(tmp, self.origin_xattr, origin)
            self.work.setxattr(tmp, opaque_xattr, markers.OPAQUE_VALUE)
            syscalls.utimensat(wfd, tmp, (st.st_atime_ns, st.st_mtime_ns))
            crashpoints.point("empty_dir.built")
            syscalls.renameat2(wfd, tmp, self.upper.fd, rel, syscalls.RENAME_EXCHANGE)
        except BaseException:
            self.work.remove_tree(tmp)
            raise
        crashpoints.point("empty_dir.exchanged")
        if self.on_new_inode is not None:
            self.on_new_inode(self.upper.lstat(rel))
        self.work.remove_tree(tmp)  # the old directory, with its whiteouts

    def _build(self, src: Layer, rel: str, st: os.stat_result, tmp: str, data: bool, keep_open: bool = False,
               spare: bool = False, copied: bool = False) -> int | None:
        """Make the copy at tmp in the work dir. keep_open: a file's data is not
        synced here, and an fd on it is returned for the publisher to sync.
        spare: tmp is a file or directory already made (WorkDir.make_spares,
        WorkDir.recycle_dir). copied: tmp is a file that holds the data already
        (prepare)."""
        wfd = self.work.fd
        mode = st.st_mode
        if stat.S_ISREG(mode):
            return self._copy_file(src, rel, st, tmp, data, keep_open, spare or copied, copied)
        else:
            if stat.S_ISDIR(mode):
                if not spare:
                    os.mkdir(tmp, 0o700, dir_fd=wfd)
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(rel, dir_fd=src.fd), tmp, dir_fd=wfd)
            else:
                os.mknod(tmp, mode, st.st_rdev, dir_fd=wfd)
            crashpoints.point("copyup.created")
            os.chown(tmp, st.st_uid, st.st_gid, dir_fd=wfd, follow_symlinks=False)
            if not stat.S_ISLNK(mode):
                os.chmod(tmp, stat.S_IMODE(mode), dir_fd=wfd)
            crashpoints.point("copyup.attrs")
            self._copy_xattrs(src, rel, tmp)
            crashpoints.point("copyup.xattrs")
            if stat.S_ISDIR(mode):
                self._copy_dir_flags(src, rel, tmp)
        return None

    def _copy_dir_flags(self, src: Layer, rel: str, tmp: str) -> None:
        """A recycled directory may carry the flags of the one it was: set them all."""
        sfd = src.open(rel or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            dfd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.work.fd)
            try:
                self._copy_flags(sfd, dfd, tmp, rel)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def _copy_file(self, src: Layer, rel: str, st: os.stat_result, tmp: str, data: bool, keep_open: bool,
                   spare: bool, copied: bool = False) -> int | None:
        sfd = src.open(rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            access = os.O_RDWR if keep_open else os.O_WRONLY  # kept: perhaps the open's own fd
            made = os.O_NOFOLLOW if spare else os.O_CREAT | os.O_EXCL
            dfd = os.open(tmp, access | made | os.O_CLOEXEC, 0o600, dir_fd=self.work.fd)
            try:
                crashpoints.point("copyup.created")
                if data and not copied:
                    self._copy_contents(sfd, dfd, st)
                os.fchown(dfd, st.st_uid, st.st_gid)
                os.fchmod(dfd, stat.S_IMODE(st.st_mode))  # after chown, which clears set-id bits
                crashpoints.point("copyup.attrs")
                self._copy_xattrs(src, rel, tmp)
                self._copy_flags(sfd, dfd, tmp, rel)
                crashpoints.point("copyup.xattrs")
                if keep_open:
                    kept, dfd = dfd, -1
                    return kept
                if self.durable and data and st.st_size:
                    os.fsync(dfd)
                    crashpoints.point("copyup.fsynced")
            finally:
                if dfd >= 0:
                    os.close(dfd)
        finally:
            os.close(sfd)
        return None

    def _copy_contents(self, sfd: int, dfd: int, st: os.stat_result) -> None:
        """The data of a file, holes and all: cloned where the filesystem can, else copied."""
        if not st.st_size:
            return
        if self._reflink and syscalls.reflink(sfd, dfd):
            end = st.st_size  # a clone takes the source's size too
            crashpoints.point("copyup.data")
        else:
            self._reflink = False
            end = copy_data(sfd, dfd, st.st_size, durable=self.durable, stop=self.stop)
        if end != st.st_size:
            os.ftruncate(dfd, st.st_size)  # a hole at the end
        crashpoints.point("copyup.size")

    def _copy_flags(self, sfd: int, dfd: int, tmp: str, rel: str) -> None:
        """The inode flags a copy carries, and the lower entry's immutable and
        append-only recorded in the copy's xattr, off its real inode (ovl_copy_fileattr)."""
        bits = syscalls.copy_inode_flags(sfd, dfd, COPIED_FLAGS) & protection.BOTH
        if bits:
            try:
                self.work.setxattr(tmp, self.protattr_xattr, protection.encode(bits))
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP):
                    raise
                log.warning("copy-up of %s: its immutable or append-only flag not recorded: %s", rel, exc.strerror)

    def _copy_xattrs(self, src: Layer, rel: str, tmp: str) -> None:
        for name in src.listxattr(rel):
            if markers.is_hidden_xattr(name) and not name.startswith(markers.ESCAPED_XATTR_PREFIXES):
                continue
            value = src.getxattr(rel, name)
            if value is None:
                continue
            try:
                self.work.setxattr(tmp, name, value)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP):
                    raise
                log.warning("copy-up of %s: xattr %s not copied: %s", rel, name, exc.strerror)

    def _set_origin(self, tmp: str, st: os.stat_result, src: Layer) -> bool:
        """Record the lower inode so st_ino stays the same after copy-up; False
        where the copy gets a number of its own."""
        if stat.S_ISLNK(st.st_mode) and self.origin_xattr.startswith("user."):
            return False  # the user namespace is not allowed on symlinks
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            # A copy-up breaks a lower hard link: the copy is another file now
            # and must not share its number with the names left below (ovl_getattr).
            return False
        ino = self.inodes(st.st_dev, st.st_ino)
        try:
            self.work.setxattr(tmp, self.origin_xattr, str(ino).encode())
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP):
                raise
            return False
        return True
