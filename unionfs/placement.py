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
"""
from __future__ import annotations

import ctypes
import logging
import os
import resource
import threading

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
