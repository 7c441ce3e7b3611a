"""Entries answered but not yet handed to the kernel, and the changes that wait for them.

With the writeback cache the kernel keeps a regular file's size and times
itself, and takes the driver's only when it makes the file's inode, from an
entry (a LOOKUP's, or one of a READDIRPLUS). An entry answered before a
change to its file, and handed over only after the change was done and the
kernel had forgotten the file, makes a new inode with the size from before
the change, and that size stays: reads end there, and an append writes over
what lies past it. Between the answer and its hand-over the answering thread
may wait its turn for the interpreter lock while other requests are answered.

So a change after which the kernel may forget a file waits until the entries
of that file already answered have been handed over: the RELEASE of a handle
that wrote (the kernel holds the inode until that RELEASE is answered) and a
SETATTR (a truncate by name changes the size without any handle). Each
transport says when a thread's answer is out (``sent``). The caller that
asked for the entry is woken then and makes the inode at once; what is left
is that caller not being run between the hand-over and a forgetting of the
file, which also needs the kernel to drop it right then.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

log = logging.getLogger(__name__)

WAIT_AT_MOST = 5.0  # seconds: an answer is handed over in microseconds; this only bounds a fault


class Unsent:
    """Node ids in answers not yet handed to the kernel, by the thread that answered."""

    def __init__(self) -> None:
        self._held: dict[int, set[int]] = {}
        self._changed = threading.Condition()

    def hold(self, nodeids: Iterable[int]) -> None:
        """This thread's answer gives these nodes' attributes to the kernel."""
        with self._changed:
            self._held.setdefault(threading.get_ident(), set()).update(nodeids)

    def holding(self) -> bool:
        """Whether this thread's answer waits to be handed over for something."""
        return bool(self._held) and threading.get_ident() in self._held

    def sent(self) -> None:
        """This thread's answer has been handed to the kernel."""
        if self._held:
            with self._changed:
                if self._held.pop(threading.get_ident(), None) is not None:
                    self._changed.notify_all()

    def wait(self, nodeid: int) -> None:
        """Until no other thread's answer that gives nodeid's attributes is still to be
        handed over. (This thread's own are out: it answers one request at a time.)"""
        if not self._held:
            return
        me = threading.get_ident()
        with self._changed:
            if not self._changed.wait_for(
                    lambda: not any(nodeid in held for thread, held in self._held.items() if thread != me),
                    WAIT_AT_MOST):
                log.warning("node %d: an entry answered %.0f s ago is still not handed to the kernel", nodeid,
                            WAIT_AT_MOST)
