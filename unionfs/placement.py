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
search (``sched_idle_cpu``), so a worker under ``SCHED_IDLE`` keeps the
caller on its own CPU: the caller preempts the worker and runs there at
once. That is right only while a CPU is free, since a ``SCHED_IDLE``
thread yields to every other task: with a busy loop on each CPU, unlinks
took twice as long under it. So each worker counts the runnable tasks
(``/proc/loadavg``) every ``CHECK_EVERY`` requests, and keeps the normal
policy while they take every CPU. With every CPU taken, no idle one draws
the caller away anyway.

Two things come with the policy. A thread's disk I/O class follows
``SCHED_IDLE`` to "idle" unless the thread has set one, and copy-ups read
and write in the workers: they set best-effort first. And leaving
``SCHED_IDLE`` needs CAP_SYS_NICE or an RLIMIT_NICE that allows the
thread's nice value (sched_setscheduler(2)): without either, the workers
keep the normal policy.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
import resource

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
    try:
        with open("/proc/thread-self/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_SYS_NICE & 1)
    except OSError:
        pass
    return False


def set_best_effort_io() -> bool:
    """Give the calling thread the best-effort I/O class explicitly; False where it cannot."""
    nr = _IOPRIO_SET.get(platform.machine())
    if nr is None:
        return False
    args = (ctypes.c_long(nr), ctypes.c_long(_IOPRIO_WHO_PROCESS), ctypes.c_long(0), ctypes.c_long(IOPRIO_BEST_EFFORT))
    return libc.syscall(*args) == 0


class IdleWhileAlone:
    """One ring worker's scheduling policy: ``SCHED_IDLE`` while no other task is
    runnable, the normal policy otherwise. Used by its own thread only."""

    def __init__(self) -> None:
        self.enabled = False
        self.idle = False
        self._count = 0
        self._loadavg = -1
        self._cpus = 1
        self._busy_looks = 0  # looks in a row that found every CPU taken

    def start(self) -> None:
        """On the worker's thread, before its first request."""
        if not hasattr(os, "SCHED_IDLE") or not may_leave_idle_policy() or not set_best_effort_io():
            return
        try:
            self._loadavg = os.open("/proc/loadavg", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        self._cpus = len(os.sched_getaffinity(os.getpid()))  # the process's, not this pinned thread's
        self.enabled = True
        self.look()

    def served(self) -> None:
        """After each request, before its reply goes out."""
        if self.enabled:
            self._count += 1
            if self._count >= CHECK_EVERY:
                self._count = 0
                self.look()

    def look(self) -> None:
        """Take the policy that the run queue asks for: SCHED_IDLE while a CPU is free, the
        normal one once two looks in a row found every CPU taken. (A single look finds
        them all taken now and then, by kernel threads that run for a moment.)"""
        if others_running(os.pread(self._loadavg, 128, 0)) < self._cpus:
            self._busy_looks = 0
            alone = True
        else:
            self._busy_looks += 1
            alone = self._busy_looks < 2 and self.idle
        if alone == self.idle:
            return
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE if alone else os.SCHED_OTHER, os.sched_param(0))
        except OSError as exc:
            self.enabled = False
            if exc.errno == errno.EPERM and self.idle:  # the right to leave it went away meanwhile
                log.warning("a FUSE queue worker stays under SCHED_IDLE: %s", exc.strerror)
            return
        self.idle = alone

    def close(self) -> None:
        if self._loadavg >= 0:
            os.close(self._loadavg)
            self._loadavg = -1
