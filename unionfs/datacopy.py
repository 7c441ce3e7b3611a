"""A file's data copied in the kernel; a large copy streams through a bounded
window of the page cache.

The data moves by ``copy_file_range`` (``sendfile`` where a filesystem pair
refuses it), over the source's data extents only, so holes stay holes.

Why a window. A plain copy of a large file leaves the page cache holding the
source's pages and the copy's dirty pages, twice the file's size, and a
durable copy's fsync then writes the whole copy at once. Here a copy of at
least four pieces drops each piece of the source that the copy itself
brought into the page cache (``cachestat`` tells, before the copy); a
durable one also starts writing each piece of the copy out as soon as it is
copied, waits for the piece two behind and drops that one too. So a copy-up
holds a few pieces of memory, does not push the rest of the machine's page
cache out, and leaves its fsync little to write.

Measured on a 2-vCPU VM, 1 GiB, caches dropped, copy and fsync: 1.05 to 1.25 s
through the window; the plain copy 1.0 to 1.5 s where the guest's free
memory was still backed by the host, and up to 5 s where that memory had
been handed back (free page reporting) and each new page of the cache was
faulted in from the host again. The disk reads the file in 0.55 s and
writes it in 0.43 s, and does not do both faster at once.
"""
from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Callable

from unionfs import crashpoints, syscalls

PIECE = 32 << 20  # written out and dropped as one
_WINDOW_PIECES = 4  # a copy of fewer pieces is copied whole
_BEHIND = 2  # pieces left to be written while the next one is copied
_MAX_LOOKS = 4096  # pieces (128 GiB) looked at one by one in a partly cached source
_WHOLE = 1 << 30  # the most asked of one copy_file_range outside a window


class _Window:
    """The pieces of a copy on their way to the disk. Pieces are aligned to
    PIECE. The source's pages are the copy's to drop where none of the file
    was cached when the copy began, or else piece by piece where none of the
    piece was; that is looked at before the copy, since readahead brings in
    the start of the next piece early."""

    def __init__(self, src_fd: int, dst_fd: int, size: int, write_behind: bool) -> None:
        self.src_fd, self.dst_fd = src_fd, dst_fd
        self.write_behind = write_behind
        self.all_cold = syscalls.cached_pages(src_fd, 0, size) == 0
        self.cold: set[int] = set()
        if not self.all_cold and size <= _MAX_LOOKS * PIECE:  # a huge sparse file: drop none
            self.cold = {p for p in range(0, size, PIECE) if syscalls.cached_pages(src_fd, p, PIECE) == 0}
        self.writing: deque[tuple[int, int]] = deque()

    def copied(self, offset: int, length: int) -> None:
        if self.all_cold or offset - offset % PIECE in self.cold:
            os.posix_fadvise(self.src_fd, offset, length, os.POSIX_FADV_DONTNEED)
        if not self.write_behind:
            return
        syscalls.write_range(self.dst_fd, offset, length, wait=False)
        self.writing.append((offset, length))
        while len(self.writing) > _BEHIND:
            done, n = self.writing.popleft()
            syscalls.write_range(self.dst_fd, done, n, wait=True)  # raises its writeback error
            os.posix_fadvise(self.dst_fd, done, n, os.POSIX_FADV_DONTNEED)

    def finish(self) -> None:
        """Drop what readahead brought in past the pieces copied (holes, the
        end), in runs: a large folio across two pieces goes only with both."""
        if self.all_cold:
            os.posix_fadvise(self.src_fd, 0, 0, os.POSIX_FADV_DONTNEED)  # 0: to the end
            return
        start = end = -1
        for piece in sorted(self.cold) + [-1]:
            if piece != end:
                if end > start:
                    os.posix_fadvise(self.src_fd, start, end - start, os.POSIX_FADV_DONTNEED)
                start = piece
            end = piece + PIECE


def copy_data(src_fd: int, dst_fd: int, size: int, durable: bool = False,
              stop: Callable[[], bool] | None = None) -> int:
    """Copy the data extents of src to dst; a large copy through a window (see
    the module's doc), written out behind it where durable, for the fsync that
    follows. Returns where the copied data ends: short of size after a final
    hole. A large copy asks stop after each piece, and raises EINTR when told to."""
    window = _Window(src_fd, dst_fd, size, write_behind=durable) if size >= _WINDOW_PIECES * PIECE else None
    step = PIECE if window is not None else _WHOLE
    try:
        return _copy_extents(src_fd, dst_fd, size, step, window, stop)
    finally:
        if window is not None:
            window.finish()


def _copy_extents(src_fd: int, dst_fd: int, size: int, step: int, window: _Window | None,
                  stop: Callable[[], bool] | None) -> int:
    offset = 0
    while offset < size:
        try:
            data = os.lseek(src_fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                break
            raise
        end = os.lseek(src_fd, data, os.SEEK_HOLE)
        pos = data
        while pos < end:
            n = _copy_range(src_fd, dst_fd, pos, min(end - pos, step - pos % step))
            if n == 0:  # the source shrank under us
                return pos
            if window is not None:
                window.copied(pos, n)
            pos += n
            crashpoints.point("copyup.data")
            if stop is not None and pos < size and stop():
                raise OSError(errno.EINTR, "copy-up given up: its caller is being killed")
        offset = end
    return offset


def _copy_range(src_fd: int, dst_fd: int, pos: int, length: int) -> int:
    try:
        return os.copy_file_range(src_fd, dst_fd, length, pos, pos)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    os.lseek(dst_fd, pos, os.SEEK_SET)
    return os.sendfile(dst_fd, src_fd, pos, length)
