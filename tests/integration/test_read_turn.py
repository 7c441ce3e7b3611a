"""Which worker reads /dev/fuse (unionfs.readturn), through real mounts: one worker
answers a caller's run of requests, and a request that hangs does not hold up
the others' callers."""
from __future__ import annotations

import errno
import os
import signal
import threading
from pathlib import Path

import pytest
from mounts import Stack, bounded, driver_pid, fuse_mount

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root here")

LOOKUPS = 2000


def cpu_times(pid: int) -> dict[int, int]:
    """Each thread's time on a CPU so far, in nanoseconds (schedstat)."""
    times = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                times[int(tid)] = int(f.read().split()[0])
        except OSError:
            continue  # the thread has ended
    return times


def test_one_worker_answers_a_callers_run_of_requests(tmp_path: Path) -> None:
    stack = Stack.make(tmp_path, 1)
    (stack.lowers[0] / "d").mkdir()
    with fuse_mount(stack, "io_uring=off") as mnt:
        os.stat(mnt / "d")
        pid = driver_pid(mnt)
        before = cpu_times(pid)
        for i in range(LOOKUPS):  # names never seen: each one a LOOKUP
            with pytest.raises(FileNotFoundError):
                os.stat(mnt / "d" / f"missing{i}")
        after = cpu_times(pid)
    spent = sorted((after[tid] - before.get(tid, 0) for tid in after), reverse=True)
    # Eight workers blocked in read(2) would each get an eighth of them, in turn.
    assert spent[0] >= 0.8 * sum(spent), spent


def test_a_hanging_request_does_not_hold_up_other_callers(tmp_path: Path) -> None:
    """The lower layer of the mount under test is itself a mount whose driver is
    stopped: a lookup there hangs until it continues. Meanwhile statfs and a lookup
    in a directory of the upper layer alone are answered."""
    below = Stack.make(tmp_path, 1, prefix="below-")
    (below.lowers[0] / "d" / "e").mkdir(parents=True)
    with fuse_mount(below, "io_uring=off", read_only=True) as lower_mnt:
        stack = Stack(lowers=(lower_mnt,), upper=tmp_path / "upper", work=tmp_path / "work", mnt=tmp_path / "mnt")
        for path in (stack.upper, stack.work, stack.mnt):
            path.mkdir()
        with fuse_mount(stack, "io_uring=off") as mnt:
            os.stat(mnt / "d")
            (mnt / "own").mkdir()
            hung: list[BaseException | None] = []

            def lookup_below() -> None:
                try:
                    os.stat(mnt / "d" / "e" / "missing")  # d/e not seen yet: its listing is read below
                except BaseException as exc:  # noqa: BLE001 - checked below
                    hung.append(exc)
                else:
                    hung.append(None)

            lower_pid = driver_pid(lower_mnt)
            os.kill(lower_pid, signal.SIGSTOP)
            waiter = threading.Thread(target=lookup_below, daemon=True)
            try:
                waiter.start()
                waiter.join(0.5)
                assert waiter.is_alive(), f"the lookup below did not wait for the stopped driver: {hung}"
                answered = bounded(lambda: (os.statvfs(mnt).f_namemax, os.path.exists(mnt / "own" / "x")), mnt, 10.0)
                assert answered == (255, False)
            finally:
                os.kill(lower_pid, signal.SIGCONT)
            waiter.join(30.0)
            assert not waiter.is_alive()
            assert len(hung) == 1 and isinstance(hung[0], OSError) and hung[0].errno == errno.ENOENT, hung
