"""Durable copy-ups of small files, synced in batches off the caller's path.

A durable copy-up must be on disk before its name appears in the upper layer
(overlayfs fsyncs the copy, ``ovl_copy_up_file``). That fsync waits for a
journal commit, which costs more than the rest of a small copy-up, and a
workload that appends to many lower files one after the other pays it once
per file.

So for a small file opened for writing, the copy is finished in the work
directory and the open returns an fd on it at once. A thread then syncs the
waiting copies together and renames each into place, keeping the parent's
times as a copy-up does. Until then the copy is *pending*:

- anything that resolves its path, or a directory above it, waits for it
  (``Resolver.resolve`` calls ``wait_for``), so every request through the
  mount sees the copy at its place;
- fsync of the file, fsync of a directory above it and the end of the
  mount wait for it too; ``unionfs umount`` asks for that first. A
  ``sync`` or ``syncfs`` does not: the kernel sends FUSE_SYNCFS to virtiofs
  alone, so a pending copy is in place a batch's gathering time (below) and
  its sync after its open, whatever syncs meanwhile;
- a driver killed before the rename leaves only a temporary name in the work
  directory, which the next mount removes: the lower file shows again, as
  after a crash before the copy-up, and writes made to the copy that were
  never fsynced are lost with it, as unsynced writes are.

How a batch is synced: one fsync per copy is one journal commit for the
first and a disk cache flush for each of the others, and on a disk with a
write cache each flush costs about what the rest of a small copy-up does
(150 to 200 us, measured), and slows the copy-ups being made meanwhile. So
where little else is waiting to be written, one ``syncfs`` of the upper
filesystem syncs the whole batch: one commit, one flush. Then each copy's
own writeback error, if any, is asked for by its fd (``sync_file_range``
waiting for writeback, which writes, commits and flushes nothing):
``syncfs`` reports an error anywhere on the filesystem, once (and before
Linux 5.8, none), and it may be one of the next batch's copies, written out
by this one's sync. After a failed ``syncfs`` each copy is fsynced alone.
Where much else is dirty, ``syncfs`` would wait for all of it, so each copy
is fsynced alone too, its writeback started first for all of them
(``sync_file_range``) so that the first fsync commits them all. Fewer
commits also mean fewer waits for the copy-ups made meanwhile, which is why
a batch gathers for 20 ms (5,000 appends to small lower files: 1.3 s with
20 ms, 1.6 s with 2 ms).

Between batches, before the next commit, the thread also makes the empty
files that the next copies are built in (``WorkDir.make_spares``): a file
created while a commit is being written waits for the commit's I/O.

What is given up: the upper directory read directly, not through the
mount, shows such a copy some 20 ms after the open, not at once; and a
``sync`` right after the open does not make the copy durable, only the
file's fsync does (as for data written to it).
"""
from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from unionfs import crashpoints, syscalls

log = logging.getLogger(__name__)

SMALL = 1 << 20  # larger copies are synced by the open itself: their data, not the commit, is the cost
_DELAY = 0.02  # how long the first copy of a batch waits for others; a waiter cuts it short
_LIMIT = 256  # pending copies at most; a copy-up beyond waits
_OTHER_UNWRITTEN = 64 << 20  # page cache waiting to be written, beyond the batch's, that a syncfs may wait for


@dataclass(eq=False)
class Pending:
    """A copy finished in the work directory, waiting to be synced and renamed."""

    path: str  # its merged path
    tmp: str  # its name in the work directory
    fd: int  # open on it, for the fsync; closed once published
    user_fd: int | None  # the fd the open returned, while it is open
    size: int  # its data when copied


def unwritten_bytes() -> int | None:
    """Page cache waiting to be written, machine-wide (Dirty and Writeback in
    /proc/meminfo); None where that cannot be read."""
    total, found = 0, 0
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith((b"Dirty:", b"Writeback:")):
                    total += int(line.split()[1]) * 1024
                    found += 1
    except (OSError, ValueError, IndexError):
        return None
    return total if found == 2 else None


def _above(path: str) -> list[str]:
    """The directories above a merged path: '/a/b/c' -> ['/a/b', '/a', '/']."""
    out = []
    while path != "/":
        path = path.rpartition("/")[0] or "/"
        out.append(path)
    return out


class Publisher:
    """Pending copy-ups and the thread that publishes them.

    place(tmp, path) renames a synced copy into place, keeping its parent's
    times, and forgets what was cached about path; discard(tmp) removes a
    copy that failed; between() runs after each batch, before the next one's
    commit (WorkDir.make_spares); sync_all() syncs the filesystem the copies
    are on (syncfs).
    """

    def __init__(self, place: Callable[[str, str], None], discard: Callable[[str], None],
                 sync_all: Callable[[], None], between: Callable[[], None] | None = None, delay: float = _DELAY,
                 limit: int = _LIMIT, other_unwritten: int = _OTHER_UNWRITTEN) -> None:
        self._place, self._discard, self._between = place, discard, between
        self._delay, self._limit = delay, limit
        self._sync_all, self._other_unwritten = sync_all, other_unwritten
        self._cond = threading.Condition()
        self._pending: dict[str, Pending] = {}
        self._dirs: Counter[str] = Counter()  # directory -> pending copies below it
        self._queue: list[Pending] = []
        self._by_fd: dict[int, Pending] = {}
        self._failed: dict[int, OSError] = {}  # user fd -> why its copy was not published
        self._urgent = False
        self._idle = False  # the thread waits for a first copy: a submit must wake it
        self._closing = False
        self._in_between = False  # between() is running
        self._thread: threading.Thread | None = None

    def submit(self, copy: Pending) -> None:
        with self._cond:
            while len(self._pending) >= self._limit:
                self._hurry()
            self._pending[copy.path] = copy
            self._dirs.update(_above(copy.path))
            if copy.user_fd is not None:
                self._by_fd[copy.user_fd] = copy
            self._queue.append(copy)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="unionfs-publish", daemon=True)
                self._thread.start()
            elif self._idle:
                self._cond.notify_all()  # not while a batch gathers: each wakeup costs a CPU's

    def _hurry(self) -> None:
        """Wait for the next batch, and let it start now (holding the lock)."""
        self._urgent = True
        self._cond.notify_all()
        self._cond.wait()

    def wait_for(self, path: str) -> None:
        """Return once nothing at path or below it is pending."""
        if not self._pending:
            return
        with self._cond:
            while path in self._pending or path in self._dirs:
                self._hurry()

    def settle(self) -> None:
        """Return once nothing is pending and the thread is not between batches."""
        with self._cond:
            while self._pending or self._in_between:
                if self._pending:
                    self._hurry()
                else:
                    self._cond.wait()

    def released(self, fd: int) -> None:
        """The open that fd came from is closed: nothing left to report to it."""
        with self._cond:
            copy = self._by_fd.pop(fd, None)
            if copy is not None:
                copy.user_fd = None
            self._failed.pop(fd, None)

    def check(self, fd: int) -> None:
        """For an fsync of fd: wait for its copy, and raise if it could not be published."""
        copy = self._by_fd.get(fd)
        if copy is not None:
            self.wait_for(copy.path)
        with self._cond:
            error = self._failed.pop(fd, None)
        if error is not None:
            raise OSError(error.errno, f"copy-up not published: {error.strerror}")

    def close(self) -> None:
        """Publish what is pending, and stop."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._idle = True
                while not self._queue and not self._closing:
                    self._cond.wait()
                self._idle = False
                if not self._queue:
                    self._thread = None
                    return
                deadline = time.monotonic() + self._delay  # one journal commit for all that comes meanwhile
                while not (self._urgent or self._closing) and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                batch, self._queue = self._queue, []
                self._urgent = False
            synced = self._sync_together(batch)
            if not synced:
                for copy in batch:
                    syscalls.start_writeback(copy.fd)
            failures = [(copy, error) for copy in batch if (error := self._publish(copy, synced)) is not None]
            with self._cond:
                for copy, error in failures:
                    if copy.user_fd is not None:
                        self._failed[copy.user_fd] = error
                for copy in batch:
                    del self._pending[copy.path]
                    self._dirs.subtract(_above(copy.path))
                    if copy.user_fd is not None and self._by_fd.get(copy.user_fd) is copy:
                        del self._by_fd[copy.user_fd]
                self._dirs = +self._dirs  # drop the zeros
                self._in_between = self._between is not None
                self._cond.notify_all()
            if self._between is not None:
                try:
                    self._between()
                except Exception:  # the thread must go on publishing
                    log.exception("between batches")
                with self._cond:
                    self._in_between = False
                    self._cond.notify_all()

    def _sync_together(self, batch: list[Pending]) -> bool:
        """Sync the whole batch by one syncfs, where that waits for little else;
        False where each copy is to be fsynced instead (see the module's doc)."""
        if len(batch) < 2:
            return False
        unwritten = unwritten_bytes()
        if unwritten is None or unwritten > self._other_unwritten + sum(copy.size for copy in batch):
            return False
        try:
            self._sync_all()
        except OSError as exc:
            log.warning("syncing %d copy-ups together failed (%s): each is synced alone", len(batch), exc.strerror)
            return False
        return True

    def _publish(self, copy: Pending, synced: bool) -> OSError | None:
        try:
            crashpoints.pause("copyup.publishing")  # a sync slow to return, as under load
            if synced:
                syscalls.check_written(copy.fd)
            else:
                os.fsync(copy.fd)
            crashpoints.point("copyup.fsynced")
            self._place(copy.tmp, copy.path)
            return None
        except Exception as exc:  # whatever it is, the waiters must not wait forever
            if not isinstance(exc, OSError):
                log.exception("copy-up of %s not published", copy.path)
                exc = OSError(errno.EIO, os.strerror(errno.EIO), copy.path)
            log.error("copy-up of %s not published, the lower file stays: %s", copy.path, exc.strerror)
            try:
                self._discard(copy.tmp)
            except OSError:
                pass  # the next mount removes it
            return exc
        finally:
            os.close(copy.fd)
