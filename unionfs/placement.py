"""Keeping a FUSE caller on its CPU while a CPU is free.

Over io_uring a request is served by a worker pinned to the caller's CPU
(see ``uring``), and the worker wakes the caller while it is still running
itself. The scheduler then looks for an idle CPU for the caller, and while
the other CPUs have nothing to do it may move the caller there. Once it has
moved, the CPU it came from is idle at the next reply, and the scheduler
sends it back there (``recent_used_cpu``): from then on the caller changes
CPU at every reply, and each move costs waking an idle CPU and the caller's
caches. Measured on a 2-CPU VM: ``rm -rf`` of 3,000 entries took 0.45 to
0.8 s instead of 0.25 s, 20,000 lookups of missing names 1.1 to 1.3 s
instead of 0.3 s.

A CPU that runs nothing but ``SCHED_IDLE`` threads counts as idle in that
search (``sched_idle_cpu``), so a worker that sends its reply under
``SCHED_IDLE`` keeps the caller on its own CPU: the caller preempts the
worker and runs there at once. A ``SCHED_IDLE`` thread yields to every
other task, though, so the worker answers a request that may take long
under the normal policy, and takes ``SCHED_IDLE`` again to reply and wait
for the next one (two ``sched_setscheduler`` calls). A quick request, a
few tens of microseconds of metadata work (``handlers.QUICK``), is
answered under ``SCHED_IDLE``: the two calls and the rescheduling cost about
as much as the request (``rm -rf`` of 3,000 entries 4 to 8% faster
without them). Behind a busy task on its CPU, such a worker waits as one
waiting for the ring already did. And it takes ``SCHED_IDLE`` only while
a CPU is free: every ``CHECK_EVERY`` requests it counts the runnable tasks
(``/proc/loadavg``), and while they take every CPU it stays under the
normal policy, not to wait behind them for each request (unlinks took 1.4
times as long with a busy loop on each CPU). With every CPU taken, no idle
one draws the caller away anyway.

Two things come with the policy. A thread's disk I/O class follows
``SCHED_IDLE`` to "idle" unless the thread has set one, and copy-ups read
and write in the workers: they set best-effort first. And leaving
``SCHED_IDLE`` needs CAP_SYS_NICE or an RLIMIT_NICE that allows the
thread's nice value (sched_setscheduler(2)): without either, the workers
keep the normal policy. A driver killed while its workers wait is gone a
little later where the CPUs are busy: the kernel ends the connection once
every thread has exited, and aborts requests until then (ECONNABORTED).

The other way round, ``Gathering``: while callers on several CPUs keep the
workers of each busy, the workers answer under one interpreter lock from
every CPU at once, and moving them all to one CPU serves them sooner.
"""
from __future__ import annotations

import ctypes
import logging
import os
import resource
import threading
import time
from collections.abc import Collection

from unionfs.permissions import Requester
from unionfs.syscalls import libc

log = logging.getLogger(__name__)

CHECK_EVERY = 128  # requests between two looks at the run queue
_IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "riscv64": 30, "ppc64le": 273, "ppc64": 273, "s390x": 282}
_IOPRIO_WHO_PROCESS = 1  # with id 0: the calling thread
_IOPRIO_CLASS_BE = 2
IOPRIO_BEST_EFFORT = (_IOPRIO_CLASS_BE << 13) | 4  # what a nice-0 thread gets by default
_CAP_SYS_NICE = 23


def others_running(loadavg: bytes) -> int:
    """Runnable tasks besides the reader, from /proc/loadavg ("0.52 0.40 0.31 3/412 9876")."""
    return int(loadavg.split()[3].split(b"/")[0]) - 1


def may_leave_idle_policy() -> bool:
    """Whether the calling thread could go back from SCHED_IDLE to the normal policy."""
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20 - nice:
        return True
    return Requester(os.geteuid(), os.getegid(), threading.get_native_id()).capable(_CAP_SYS_NICE)


def set_best_effort_io() -> bool:
    """Give the calling thread the best-effort I/O class explicitly; False where it cannot."""
    nr = _IOPRIO_SET.get(os.uname().machine)
    if nr is None:
        return False
    args = (ctypes.c_long(nr), ctypes.c_long(_IOPRIO_WHO_PROCESS), ctypes.c_long(0), ctypes.c_long(IOPRIO_BEST_EFFORT))
    return libc.syscall(*args) == 0


_worker = threading.local()  # .policy: the IdleWhileCpuFree of a ring worker's thread


def before_long_work() -> None:
    """Leave SCHED_IDLE before work that may take long inside a quick request:
    removing a file frees its cached pages and its blocks (0.4 s for 2 GiB
    just written), and under SCHED_IDLE that would crawl behind any busy task
    on the worker's CPU. A no-op on any other thread."""
    policy = getattr(_worker, "policy", None)
    if policy is not None:
        policy.woken(quick=False)


class IdleWhileCpuFree:
    """One ring worker's scheduling policy: ``SCHED_IDLE`` while it waits for the ring
    or answers a quick request and a CPU is free, the normal policy while it
    answers any other request. A request answered under ``SCHED_IDLE`` would crawl
    if every CPU became busy meanwhile (such a thread gets under 1% of a CPU that a
    busy loop shares with it), and a copy-up or the first listing of a large
    directory can take a while. Used by its own thread only."""

    def __init__(self) -> None:
        self.enabled = False
        self.free = False  # a CPU was free at the last look: wait under SCHED_IDLE
        self.idle = False  # under SCHED_IDLE now
        self._count = 0
        self._loadavg = -1
        self._cpus = 1
        self._busy_looks = 0  # looks in a row that found every CPU taken

    def start(self) -> None:
        """On the worker's thread, before its first request. Placement only saves
        time: whatever keeps it from starting leaves the normal policy."""
        if not hasattr(os, "SCHED_IDLE"):
            return
        try:
            if not may_leave_idle_policy() or not set_best_effort_io():
                return
        except Exception as exc:  # noqa: BLE001 - e.g. a codec the process can no longer import
            log.warning("a FUSE queue worker keeps the normal policy: %r", exc)
            return
        try:
            self._loadavg = os.open("/proc/loadavg", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        self._cpus = len(os.sched_getaffinity(os.getpid()))  # the process's, not this pinned thread's
        self.enabled = True
        _worker.policy = self
        self.look()

    def waiting(self) -> None:
        """Right before the worker sends its reply and waits for the next request."""
        if self.enabled and self.free and not self.idle:
            self._set(os.SCHED_IDLE)

    def woken(self, quick: bool = False) -> None:
        """Right after a request came: it is answered under the normal policy,
        unless it is quick (``handlers.QUICK``) and a CPU is free. Two policy
        changes cost about as much as such a request; the CPUs are looked at
        every CHECK_EVERY requests whatever their kind."""
        if self.idle and self.enabled and not (quick and self.free):
            self._set(os.SCHED_OTHER)

    def served(self) -> None:
        """After each request."""
        if self.enabled:
            self._count += 1
            if self._count >= CHECK_EVERY:
                self._count = 0
                self.look()

    def look(self) -> None:
        """Whether to wait under SCHED_IDLE: while a CPU is free, and until two looks in a
        row found every CPU taken. (A single look finds them all taken now and then, by
        kernel threads that run for a moment.)"""
        try:
            others = others_running(os.pread(self._loadavg, 128, 0))
        except (OSError, ValueError, IndexError) as exc:
            log.warning("the run queue cannot be read (%s): a FUSE queue worker keeps the normal policy", exc)
            self.enabled = self.free = False
            return
        if others < self._cpus:
            self._busy_looks = 0
            self.free = True
        else:
            self._busy_looks += 1
            self.free = self.free and self._busy_looks < 2

    def _set(self, policy: int) -> None:
        try:
            os.sched_setscheduler(0, policy, os.sched_param(0))
        except OSError as exc:
            self.enabled = self.free = False
            if self.idle:  # the right to leave SCHED_IDLE went away meanwhile
                log.warning("a FUSE queue worker stays under SCHED_IDLE: %s", exc.strerror)
            return
        self.idle = policy == os.SCHED_IDLE

    def close(self) -> None:
        if getattr(_worker, "policy", None) is self:
            _worker.policy = None
        if self._loadavg >= 0:
            os.close(self._loadavg)
            self._loadavg = -1


class Gathering:
    """Every ring worker on one CPU while callers on several CPUs keep them busy.

    The workers answer under one interpreter lock. With callers on two CPUs,
    the workers of both have requests, and each hands the lock to the other
    across CPUs, waking it: 4,000 file-server cycles took 5.1 s from two
    callers and 5.8 s from eight, against 3.5 s from one (benchmarks, the
    ``parallel`` rows). Gathered on one CPU, the workers take the lock in
    turn without those wakeups, and a reply to a caller on another CPU
    crosses over, as over ``/dev/fuse``.

    A lone caller stays served on its own CPU: the workers gather once the
    queues of two CPUs have each brought NEED requests within each of RUN
    WINDOWs in a row, from more than one caller (requests a caller waits
    for, ``waited_for``, not the kernel's background work; a lone caller
    that the scheduler moves between the CPUs at each reply fills both
    queues too), and spread again at the first request after QUIET seconds
    without such a window. (Whether two workers answer at the same moment
    says little: the one whose request came second waits for the lock
    before it can look.) Each worker counts in its own slot, written by its
    own thread only, so counting takes no lock."""

    NEED = 16
    WINDOW = 0.05
    RUN = 2  # windows in a row
    QUIET = 1.0
    LOOK_AT = frozenset({NEED // 4, NEED})  # a worker's requests in a window when it looks at the others'

    def __init__(self, waited_for: Collection[int]) -> None:
        self.waited_for = waited_for
        self.gathered = False
        self._lock = threading.Lock()  # around joining and moving
        self._slots: list[_Slot] = []
        self._home: set[int] = set()
        self._last_busy = 0.0  # when a look last found two CPUs' queues busy
        self._busy_window = -1  # the last window in which one did
        self._busy_run = 0  # windows in a row in which one did

    def join(self) -> _Slot:
        """On a worker's thread, once it is pinned: the worker's slot."""
        slot = _Slot(os.sched_getaffinity(0), threading.get_native_id())
        with self._lock:
            self._slots.append(slot)
            if self.gathered:
                _pin(slot.tid, self._home)
        return slot

    def arrive(self, slot: _Slot, opcode: int, caller: int) -> None:
        """A request came to this worker from thread caller."""
        if opcode not in self.waited_for:
            return
        now = time.monotonic()
        window = int(now / self.WINDOW)
        if slot.window != window:
            slot.window, slot.count, slot.callers = window, 0, set()
        slot.count += 1
        slot.callers.add(caller)
        if slot.count in self.LOOK_AT and self._busy_elsewhere(slot, window):
            self._last_busy = now
            if window != self._busy_window:  # a caller that moved to another CPU makes one such window
                self._busy_run = self._busy_run + 1 if window == self._busy_window + 1 else 1
                self._busy_window = window
            if not self.gathered and self._busy_run >= self.RUN:
                self._move(True, slot.cpus)
        elif self.gathered and now - self._last_busy > self.QUIET:
            self._move(False, set())

    def _busy_elsewhere(self, slot: _Slot, window: int) -> bool:
        """Whether this worker's CPU and another have each brought NEED requests in this
        window, and not all of them from one caller (which moved between the two)."""
        groups: dict[frozenset[int], tuple[int, set[int]]] = {}
        for other in list(self._slots):
            if other.window == window:
                key = frozenset(other.cpus)
                count, callers = groups.get(key, (0, set()))
                groups[key] = (count + other.count, callers | other.callers)
        mine = groups.pop(frozenset(slot.cpus), (0, set()))
        if mine[0] < self.NEED:
            return False
        return any(count >= self.NEED and len(callers | mine[1]) > 1 for count, callers in groups.values())

    def _move(self, gather: bool, home: set[int]) -> None:
        with self._lock:
            if self.gathered == gather:
                return
            self.gathered, self._home = gather, home
            for slot in self._slots:
                _pin(slot.tid, home if gather else slot.cpus)
        log.debug("FUSE queue workers %s", f"gathered on CPU {sorted(home)}" if gather else "back on their CPUs")


class _Slot:
    """One ring worker's: the CPUs it was pinned to, its thread, and the
    requests it counted in its last window and the threads that made them.
    Written by its own thread."""

    __slots__ = ("cpus", "tid", "window", "count", "callers")

    def __init__(self, cpus: set[int], tid: int) -> None:
        self.cpus, self.tid, self.window, self.count = cpus, tid, 0, 0
        self.callers: set[int] = set()


def _pin(tid: int, cpus: set[int]) -> None:
    try:
        os.sched_setaffinity(tid, cpus)
    except OSError as exc:  # a thread that has ended, a CPU taken away meanwhile: placement only saves time
        log.debug("thread %d not moved to CPUs %s: %s", tid, sorted(cpus), exc.strerror)
