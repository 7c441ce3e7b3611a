"""Named crash points: where a test may kill this process, deterministically.

State-changing code calls ``point("blob.renamed")`` between the steps whose
order makes it crash-safe. Normally that is one attribute test. A
fault-injection test arms it through the environment (so it reaches daemons
and subprocesses too):

- ``CRASHPOINT_TRACE=FILE`` appends each point passed to FILE, one name a
  line: the list of places a run could be killed.
- ``CRASHPOINT_KILL=N`` kills the process with SIGKILL at the N-th point
  passed (1-based), or ``NAME:K`` at the K-th passing of point NAME. The same
  number replays the same crash.
- ``CRASHPOINT_FAULT=NAME`` makes ``fault(NAME)`` raise ``OSError(EIO)``: one
  thread failing while the process lives on. Faults are not crash points:
  they are neither counted nor traced, so kill numbers stay the same.
- ``CRASHPOINT_PAUSE=NAME:SECONDS`` makes ``pause(NAME)`` sleep: a thread
  held up at that step (preempted, or its answer slow to reach the kernel)
  while the others go on, as under load; neither counted nor traced either.

Both the driver and the layer store use it; work that runs on several
threads asks ``armed()`` and runs on one, so that N means the same step on
every run.
"""
from __future__ import annotations

import errno
import os
import signal
import threading
import time

_lock = threading.Lock()
_armed = False
_trace: int | None = None  # fd of the trace file
_kill_at: int | None = None
_kill_name: str | None = None
_passed = 0
_passed_by_name: dict[str, int] = {}
_pause: tuple[str, float] | None = None


def _configure() -> None:
    global _armed, _trace, _kill_at, _kill_name, _pause
    name, _, seconds = os.environ.get("CRASHPOINT_PAUSE", "").rpartition(":")
    _pause = (name, float(seconds)) if name else None
    trace = os.environ.get("CRASHPOINT_TRACE")
    kill = os.environ.get("CRASHPOINT_KILL")
    _trace = os.open(trace, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644) if trace else None
    _kill_at = _kill_name = None
    if kill:
        name, _, count = kill.rpartition(":")
        _kill_at = int(count)
        _kill_name = name or None
    _armed = _trace is not None or _kill_at is not None


def rearm() -> None:
    """Read the environment again and start counting from zero (after a fork)."""
    global _passed
    with _lock:
        _passed = 0
        _passed_by_name.clear()
        _configure()


def armed() -> bool:
    return _armed


def point(name: str) -> None:
    """A place where the process may die without the data on disk becoming wrong."""
    if not _armed:
        return
    global _passed
    with _lock:
        _passed += 1
        seen = _passed_by_name[name] = _passed_by_name.get(name, 0) + 1
        if _trace is not None:
            os.write(_trace, f"{name}\n".encode())
        hit = seen == _kill_at if _kill_name is not None else _passed == _kill_at
        if hit and (_kill_name is None or _kill_name == name):
            os.kill(os.getpid(), signal.SIGKILL)


def pause(name: str) -> None:
    """Where a thread held up lets the others overtake it."""
    if _pause is not None and _pause[0] == name:
        time.sleep(_pause[1])


def fault(name: str) -> None:
    """Where one thread's unexpected failure must not take down more than it should."""
    if os.environ.get("CRASHPOINT_FAULT") == name:
        raise OSError(errno.EIO, f"fault injected at {name}")


_configure()
