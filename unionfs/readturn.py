"""Which worker reads ``/dev/fuse`` next: the one that answered last.

The kernel hands each request to the reader that has waited longest, so with
eight workers blocked in read(2), one caller's requests go to each of them in
turn. Each wakes on the CPU it last ran on, often not the caller's, and the
scheduler then moves the caller after it (fuse-overlayfs, with one thread,
does not). Measured on a 2-CPU VM over ``/dev/fuse``, eight readers against
this: in 20,000 lookups of missing names the caller changed CPU 650 to 1,219
times against none, and they took 1.07 to 1.22 s against 1.00 to 1.02 s;
in 5,000 small copy-ups 1,432 to 1,512 times against 355 to 442.

So one worker at a time holds the turn: it reads a request, answers it and
reads the next, while the others wait for the turn. A request that takes
long (a copy-up, a cold lookup on a slow disk, a lower layer that hangs)
must not hold up the others' callers, so a watchdog passes the turn on once
the holder has been answering the same request for ``STALL`` seconds: the
next worker reads, and the one still busy waits for the turn once done.
The watchdog sleeps while no request comes.
"""
from __future__ import annotations

import threading
import time

STALL = 0.002  # seconds one request may hold the turn before another worker reads


class ReadTurn:
    """The turn to read requests, shared by the workers of one connection."""

    def __init__(self, stall: float = STALL) -> None:
        self.stall = stall
        self._turn = threading.Lock()  # held by the worker whose turn it is, or free
        self._state = threading.Lock()  # a holder ending a request against the watchdog passing its turn
        self._holder: object | None = None
        self._answering = False  # the holder is answering a request (not waiting in read)
        self._begun = 0  # requests the holders have begun
        self._active = threading.Event()  # set: the watchdog watches
        self._ended = False
        self._watchdog = threading.Thread(target=self._watch, name="fuse-turn", daemon=True)

    def start(self) -> None:
        self._watchdog.start()

    def take(self, me: object) -> None:
        """Wait for the turn (a worker that does not hold it, before it reads)."""
        self._turn.acquire()
        self._holder = me

    def begin(self) -> None:
        """The holder has read a request and answers it now."""
        self._begun += 1
        self._answering = True
        if not self._active.is_set():
            self._active.set()

    def done(self, me: object) -> bool:
        """The request is answered; whether me still holds the turn."""
        with self._state:
            if self._holder is not me:
                return False
            self._answering = False
            return True

    def leave(self, me: object) -> None:
        """A worker that ends (the connection has ended) lets the next one read."""
        with self._state:
            if self._holder is me:
                self._holder = None
                self._turn.release()

    def end(self) -> None:
        """The connection has ended: the watchdog stops."""
        self._ended = True
        self._active.set()

    def _watch(self) -> None:
        seen = -1
        while True:
            self._active.wait()
            if self._ended:
                return
            time.sleep(self.stall)
            with self._state:
                begun = self._begun
                if self._answering and begun == seen and self._holder is not None:
                    self._holder = None  # the holder finds this when done, and waits for its turn
                    self._answering = False
                    self._turn.release()
                elif not self._answering and begun == seen:
                    self._active.clear()  # no request since the last look: sleep until one comes
                    if self._begun != begun:  # begin() saw it set before it was cleared
                        self._active.set()
                seen = begun
