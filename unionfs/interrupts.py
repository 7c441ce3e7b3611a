"""Requests whose callers got a signal, and whether a long copy-up stops for one.

Kernel overlayfs copies a file up in 1 MiB chunks and stops between two of
them when its caller has a fatal signal pending (``ovl_copy_up_file``:
``signal_pending_state(TASK_KILLABLE)``): a process killed while it copies
up a large file dies at once, and the copy is never seen. Through FUSE, a
caller whose request the driver is answering waits uninterruptibly for the
answer, SIGKILL included; the kernel only tells the driver that the caller
got a signal (an INTERRUPT naming the request).

Any signal, one the caller handles too. Overlayfs gives its copy up then as
well (the splice it copies with stops at any pending signal), and the call
starts over where the handler has SA_RESTART, or fails with EINTR. A FUSE
reply cannot ask for a start over, and an EINTR would fail calls that start
over under overlayfs; so for a handled signal the copy goes on, which is what
the started-over call gives. It stops where the caller is dying, which
``/proc`` shows: the kernel adds SIGKILL to the pending signals of every
thread of a process that a signal kills (``complete_signal``), and the
request names the calling thread.

After an INTERRUPT the kernel sends no other for the same request, even when
a fatal signal comes later: a copy-up asks again after each piece (of a copy
of at least 128 MiB, see datacopy) until it ends.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Callable

_INTERRUPT_IN = struct.Struct("<Q")  # the unique of the request interrupted
_KEPT = 1024  # interrupted requests remembered; the oldest go (their answer is long sent)
_SIGKILL_BIT = 1 << 8  # SIGKILL (9) in a /proc status signal mask


def fatal_signal_pending(tid: int) -> bool:
    """Whether thread tid of this /proc is being killed (fatal_signal_pending)."""
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            status = f.read()
    except OSError:
        return False
    start = status.find(b"\nSigPnd:")
    if start < 0:
        return False
    end = status.find(b"\n", start + 1)
    return bool(int(status[start + 8:end], 16) & _SIGKILL_BIT)


def _proc_is_ours() -> bool:
    """Whether /proc numbers processes as the kernel numbers this mount's callers
    (the driver's own PID namespace, where it mounted): else a number there
    could be another process's, and no copy-up stops."""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False


class Interrupts:
    """The requests the kernel interrupted, oldest first. No lock: each step on the
    dict is one call that the interpreter lock keeps whole."""

    def __init__(self, dying: Callable[[int], bool] = fatal_signal_pending) -> None:
        self.asked: dict[int, None] = {}  # uniques
        self._dying = dying if _proc_is_ours() else (lambda tid: False)
        # The header of the request the calling thread answers, if any: set by the session.
        self.answering: Callable[[], tuple | None] = lambda: None

    def interrupt(self, data: memoryview) -> None:
        """An INTERRUPT's body: its request's caller got a signal. One that came after
        its request's answer stays until newer ones push it out."""
        asked = self.asked
        asked[_INTERRUPT_IN.unpack_from(data)[0]] = None
        if len(asked) > _KEPT:
            for unique in list(asked)[:len(asked) - _KEPT]:
                asked.pop(unique, None)

    def answered(self, unique: int) -> None:
        """An INTERRUPT for a request answered is no longer of use."""
        self.asked.pop(unique, None)

    def caller_dying(self) -> bool:
        """Whether the caller of the request this thread answers is being killed."""
        h = self.answering()
        return h is not None and h[2] in self.asked and self._dying(h[6])
