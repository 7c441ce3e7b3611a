"""A ring worker's scheduling policy: SCHED_IDLE while it waits for the ring
and a CPU is free, the normal policy while it answers a request or every CPU
is taken, and best-effort disk I/O either way. Run on real threads against
the real run queue."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import mounts
import pytest
from waiting import wait_for

from unionfs import fuseproto as fp
from unionfs import placement
from unionfs.handlers import QUICK
from unionfs.union import Union

pytestmark = pytest.mark.skipif(not placement.may_leave_idle_policy(),
                                reason="leaving SCHED_IDLE needs CAP_SYS_NICE or RLIMIT_NICE")


def test_others_running_reads_the_fourth_field_of_loadavg() -> None:
    assert placement.others_running(b"0.00 0.01 0.05 1/123 4567\n") == 0
    assert placement.others_running(b"2.10 1.00 0.50 3/412 9876\n") == 2


def on_a_thread(work: Callable[[], object]) -> object:
    """work() on a thread of its own: a policy set there stays there."""
    result: list[object] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # handed to the test's thread
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def ionice_of_this_thread() -> str:
    return subprocess.run(["ionice", "-p", str(threading.get_native_id())], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def busy_cpus() -> Iterator[Callable[[], None]]:
    """start(): a busy loop pinned to each CPU, stopped at the end of the test."""
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(mounts.busy_cpus())


def test_a_worker_waits_under_sched_idle_only_while_a_cpu_is_free(busy_cpus: Callable[[], None]) -> None:
    def work() -> dict[str, object]:
        policy = placement.IdleWhileCpuFree()
        policy.start()
        seen: dict[str, object] = {"enabled": policy.enabled, "io": ionice_of_this_thread()}
        try:
            seen["free"] = wait_for(lambda: (policy.look(), policy.free)[1], 5.0)
            policy.waiting()
            seen["waiting"] = os.sched_getscheduler(0)
            policy.woken()
            seen["answering"] = os.sched_getscheduler(0)
            busy_cpus()
            policy.look()
            policy.look()  # two looks in a row: not a kernel thread's moment
            policy.waiting()
            seen["waiting while busy"] = os.sched_getscheduler(0)
            return seen
        finally:
            policy.woken()
            policy.close()

    seen = on_a_thread(work)
    assert seen == {"enabled": True, "io": "best-effort: prio 4", "free": True, "waiting": os.SCHED_IDLE,
                    "answering": os.SCHED_OTHER, "waiting while busy": os.SCHED_OTHER}


@contextlib.contextmanager
def answering_a_quick_request() -> Iterator[placement.IdleWhileCpuFree]:
    """A worker's policy, started, and under SCHED_IDLE as while it answers a
    quick request with a CPU free; the normal policy again at the end."""
    policy = placement.IdleWhileCpuFree()
    policy.start()
    try:
        assert wait_for(lambda: (policy.look(), policy.free)[1], 5.0)
        policy.waiting()
        policy.woken(quick=True)
        yield policy
    finally:
        policy.woken()
        policy.close()


def test_a_quick_request_is_answered_under_sched_idle_only_while_a_cpu_is_free(busy_cpus: Callable[[], None]) -> None:
    def work() -> dict[str, int]:
        seen: dict[str, int] = {}
        with answering_a_quick_request() as policy:
            seen["quick"] = os.sched_getscheduler(0)
            policy.waiting()
            policy.woken(quick=False)
            seen["not quick"] = os.sched_getscheduler(0)
            policy.waiting()
            busy_cpus()
            policy.look()
            policy.look()
            policy.woken(quick=True)
            seen["quick while busy"] = os.sched_getscheduler(0)
        return seen

    assert on_a_thread(work) == {"quick": os.SCHED_IDLE, "not quick": os.SCHED_OTHER,
                                 "quick while busy": os.SCHED_OTHER}


def test_quick_requests_are_only_those_that_never_move_file_data_or_list_a_directory() -> None:
    """A request that may copy up, read, write, list or publish must be answered
    under the normal policy: under SCHED_IDLE it would crawl behind a busy task."""
    slow = {fp.SETATTR, fp.LINK, fp.RENAME, fp.RENAME2, fp.OPEN, fp.READ, fp.WRITE, fp.RELEASE, fp.FSYNC,
            fp.SETXATTR, fp.REMOVEXATTR, fp.READDIR, fp.READDIRPLUS, fp.RMDIR, fp.FALLOCATE,
            fp.COPY_FILE_RANGE, fp.LSEEK, fp.SYNCFS, fp.FSYNCDIR, fp.IOCTL, fp.INIT, fp.DESTROY}
    assert not slow & QUICK
    assert {fp.LOOKUP, fp.GETATTR, fp.UNLINK} <= QUICK


def test_a_worker_leaves_sched_idle_before_an_unlink_that_frees_a_large_file(tmp_path: Path) -> None:
    """An UNLINK is quick, but freeing a file's pages and blocks is not: the
    worker takes the normal policy first, and only then."""
    lower, upper, work = (tmp_path / name for name in ("lower", "upper", "work"))
    for d in (lower, upper, work):
        d.mkdir()
    (upper / "small").write_bytes(b"s" * 4096)
    (upper / "large").write_bytes(b"l" * (2 << 20))
    union = Union([str(lower)], str(upper), str(work))

    def work_on_thread() -> dict[str, int]:
        seen: dict[str, int] = {}
        with answering_a_quick_request():
            union.unlink("/small")
            seen["after the small file"] = os.sched_getscheduler(0)
            union.unlink("/large")
            seen["after the large file"] = os.sched_getscheduler(0)
        return seen

    assert on_a_thread(work_on_thread) == {"after the small file": os.SCHED_IDLE,
                                           "after the large file": os.SCHED_OTHER}
    assert not (upper / "large").exists()
    placement.before_long_work()  # on a thread that is no ring worker: nothing to leave
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_a_worker_looks_again_every_so_many_requests(busy_cpus: Callable[[], None]) -> None:
    def work() -> list[bool]:
        policy = placement.IdleWhileCpuFree()
        policy.start()
        try:
            assert wait_for(lambda: (policy.look(), policy.free)[1], 5.0)
            busy_cpus()
            seen = []
            for _ in range(2 * placement.CHECK_EVERY):
                policy.served()
                seen.append(policy.free)
            return seen
        finally:
            policy.close()

    seen = on_a_thread(work)
    every = placement.CHECK_EVERY
    # the first look that finds every CPU taken is not enough; the second, CHECK_EVERY requests later, is
    assert seen == [True] * (2 * every - 1) + [False], seen


def test_without_the_right_to_leave_it_a_worker_never_takes_sched_idle() -> None:
    """An unprivileged driver (no CAP_SYS_NICE, RLIMIT_NICE 0) could not go back to
    the normal policy: it keeps it from the start."""
    probe = ("import os; from unionfs import placement; p = placement.IdleWhileCpuFree(); p.start(); p.waiting(); "
             "print(placement.may_leave_idle_policy(), p.enabled, os.sched_getscheduler(0) == os.SCHED_IDLE)")
    result = subprocess.run(["prlimit", "--nice=0", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             "--inh-caps=-all", sys.executable, "-c", probe], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(placement.__file__)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "False"]
