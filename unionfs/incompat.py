"""overlayfs's marks of incompatible features in the work directory.

overlayfs.rst "Volatile mount": a ``volatile`` mount creates
``work/incompat/volatile`` (with an empty file ``dirty`` in it), and overlayfs
refuses to mount a work directory with any directory under ``work/incompat``,
because the upper layer may have lost changes in a crash. This driver writes
the same mark and honours it, so that neither it nor overlayfs mounts such an
upper layer again unawares.

overlayfs keeps the mark after a clean unmount too. This driver syncs the
upper layer's filesystem at a clean unmount and removes the mark then: once
synced, nothing is left to lose. So only a crash, or a sync that failed,
leaves it.
"""
from __future__ import annotations

import errno
import os

from unionfs import syscalls

INCOMPAT = "incompat"  # in workdir/work, as overlayfs names it
VOLATILE = "volatile"
DIRTY = "dirty"
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW


def marked(work_fd: int) -> list[str]:
    """The features marked in the work directory (the directories in work/incompat)."""
    try:
        fd = os.open(INCOMPAT, _DIR, dir_fd=work_fd)
    except (FileNotFoundError, NotADirectoryError):
        return []
    try:
        with os.scandir(fd) as entries:
            return sorted(entry.name for entry in entries if entry.is_dir(follow_symlinks=False))
    finally:
        os.close(fd)


def refusal(workdir: str, features: list[str]) -> str:
    """Why a work directory with these marks is not mounted, and what to do."""
    mark = os.path.join(workdir, "work", INCOMPAT, features[0])
    if features[0] == VOLATILE:
        return (f"workdir {workdir} was mounted volatile and may have lost changes in a crash; "
                f"if it did not crash, remove {mark} and mount again")
    return f"workdir {workdir} is marked with overlayfs's incompatible feature '{features[0]}' ({mark})"


def mark_volatile(work_fd: int) -> None:
    """Write the mark, synced: it must outlast any change that it warns of."""
    fds = [work_fd]
    try:
        for name in (INCOMPAT, VOLATILE):
            try:
                os.mkdir(name, 0o700, dir_fd=fds[-1])
            except FileExistsError:
                pass
            fds.append(os.open(name, _DIR, dir_fd=fds[-1]))
        os.close(os.open(DIRTY, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600, dir_fd=fds[-1]))
        for fd in reversed(fds):
            os.fsync(fd)
    finally:
        for fd in fds[1:]:
            os.close(fd)


def unmark_volatile(work_fd: int) -> None:
    """After a clean unmount: sync the filesystem of the upper layer (and work
    directory: they share it), then remove the mark. A failed sync raises and
    leaves the mark in place."""
    syscalls.syncfs(work_fd)
    volatile = os.path.join(INCOMPAT, VOLATILE)
    for name, remove in ((os.path.join(volatile, DIRTY), os.unlink), (volatile, os.rmdir), (INCOMPAT, os.rmdir)):
        try:
            remove(name, dir_fd=work_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:  # another feature's mark stays
                raise
            return
