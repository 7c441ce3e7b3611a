"""FUSE over io_uring: each CPU's requests are served on that CPU, whole.

The differential tests and the stress test run over both transports (the
``transport`` fixture); these state what only the rings have: requests go to
the queue of the caller's CPU and are answered by workers pinned there
(gathered on one CPU while callers on two keep them busy, not for a lone
caller that moves between the CPUs),
payloads of a full megabyte cross the ring buffers intact, a driver killed
with requests on its rings leaves a mount that unmounts, a worker that fails
ends the driver rather than leaving callers waiting, and ``io_uring=on``
refuses to mount where the kernel does not offer it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounts import (Stack, busy_cpus, driver_pid, expect_disconnected, force_unmount, fuse_mount,
                    kernel_io_uring_switch)

from unionfs import placement, uring
from unionfs.mount import is_mounted
from unionfs.session import _FORGET_GATHER

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the kernel's enable_uring parameter needs root")

MIB = 1 << 20


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    stack = Stack.make(tmp_path)
    (stack.lowers[0] / "d").mkdir()
    (stack.lowers[1] / "d").mkdir()
    (stack.lowers[1] / "d" / "lower.txt").write_bytes(b"lower\n")
    return stack


def driver_threads(pid: int) -> Iterator[tuple[str, int, dict[str, str]]]:
    """Each thread of the driver: (name, context switches so far, its /proc status
    and io fields)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            io = Path(f"/proc/{pid}/task/{tid}/io").read_text()
        except FileNotFoundError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        fields.update(line.split(": ", 1) for line in io.splitlines())
        yield name, int(fields["voluntary_ctxt_switches"]) + int(fields["nonvoluntary_ctxt_switches"]), fields


def queue_threads(pid: int) -> dict[int, list[tuple[int, str]]]:
    """The driver's ring workers by queue: (context switches so far, CPUs it may run on)."""
    found: dict[int, list[tuple[int, str]]] = {}
    for name, switches, fields in driver_threads(pid):
        if name.startswith(uring.THREAD_PREFIX):
            found.setdefault(int(name[len(uring.THREAD_PREFIX):]), []).append((switches, fields["Cpus_allowed_list"].strip()))
    return found


def switches(threads: dict[int, list[tuple[int, str]]]) -> dict[int, int]:
    return {qid: sum(s for s, _ in workers) for qid, workers in threads.items()}


@contextlib.contextmanager
def on_cpu(cpu: int) -> Iterator[None]:
    """This process pinned to one CPU, then back on the CPUs it had."""
    everywhere = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, everywhere)


@pytest.fixture
def two_cpus() -> list[int]:
    """The CPUs this process may use, when there are two or more."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    return cpus


def test_requests_are_served_on_the_callers_cpu(stack: Stack, kernel_io_uring: None) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    with fuse_mount(stack, "io_uring=on") as mnt:
        threads = queue_threads(driver_pid(mnt))
        assert sorted(threads) == list(range(uring.possible_cpus()))
        assert on_their_cpus(driver_pid(mnt), cpus), threads
        names = iter(range(10**6))
        for cpu in cpus:
            with on_cpu(cpu):
                before = switches(queue_threads(driver_pid(mnt)))
                for _ in range(200):  # a LOOKUP each: names never seen, so not cached
                    assert not os.path.lexists(mnt / "d" / f"missing-{next(names)}")
                after = switches(queue_threads(driver_pid(mnt)))
            woken = {qid: after[qid] - before[qid] for qid in after}
            assert woken[cpu] >= 200, woken
            assert all(n == 0 for qid, n in woken.items() if qid != cpu), woken
        assert on_their_cpus(driver_pid(mnt), cpus), "a lone caller gathered the workers"


def test_a_lone_caller_moving_between_cpus_at_every_few_requests_does_not_gather_the_workers(
        stack: Stack, kernel_io_uring: None, two_cpus: list[int]) -> None:
    """Both queues busy in every window, but from one thread: a lone caller that the
    scheduler moves at each reply (see placement) is not taken for two."""
    cpus = two_cpus
    with fuse_mount(stack, "io_uring=on") as mnt:
        deadline = time.monotonic() + 3 * placement.Gathering.WINDOW * placement.Gathering.RUN + 0.5
        i = 0
        try:
            while time.monotonic() < deadline:
                os.sched_setaffinity(0, {cpus[i // 20 % 2]})
                assert not os.path.lexists(mnt / "d" / f"hopping-{i}")
                i += 1
        finally:
            os.sched_setaffinity(0, set(cpus))
        assert i >= 8 * placement.Gathering.NEED, i
        assert on_their_cpus(driver_pid(mnt), cpus), queue_threads(driver_pid(mnt))


def on_their_cpus(pid: int, cpus: list[int]) -> bool:
    """Whether each ring worker of the CPUs this process may use is pinned to its own."""
    return all(allowed == str(qid) for qid, workers in queue_threads(pid).items() if qid in cpus
               for _, allowed in workers)


# A caller pinned to one CPU, looking up names never seen until it is killed.
_LOOKING_UP = """
import itertools, os, sys
directory, cpu = sys.argv[1], int(sys.argv[2])
os.sched_setaffinity(0, {cpu})
for i in itertools.count():
    os.path.lexists(f"{directory}/missing-{cpu}-{i}")
"""


def test_workers_gather_on_one_cpu_while_callers_on_two_keep_them_busy(stack: Stack, kernel_io_uring: None,
                                                                      two_cpus: list[int]) -> None:
    """With callers on two CPUs at once, every ring worker moves to one CPU, so that
    they stop handing the interpreter lock to each other across CPUs; once a lone
    caller is left, its first request after Gathering.QUIET puts them back on their
    own CPUs (see placement)."""
    cpus = two_cpus
    with fuse_mount(stack, "io_uring=on") as mnt:
        pid = driver_pid(mnt)
        callers = [subprocess.Popen([sys.executable, "-c", _LOOKING_UP, str(mnt / "d"), str(cpu)]) for cpu in cpus[:2]]
        try:
            deadline = time.monotonic() + 20
            while True:
                allowed = {a for workers in queue_threads(pid).values() for _, a in workers}
                if len(allowed) == 1:
                    break
                assert time.monotonic() < deadline, f"the workers stayed spread: {allowed}"
                time.sleep(0.05)
        finally:
            for caller in callers:
                caller.kill()
                caller.wait()
        assert allowed <= {str(cpu) for cpu in cpus[:2]}, allowed

        time.sleep(placement.Gathering.QUIET + 0.5)
        assert not on_their_cpus(pid, cpus), "spread again with no request"
        with on_cpu(cpus[0]):
            for i in range(20):
                assert not os.path.lexists(mnt / "d" / f"alone-{i}")
        assert on_their_cpus(pid, cpus), queue_threads(pid)


def worker_policies(pid: int) -> dict[int, tuple[int, int]]:
    """Each ring worker by thread id: (context switches so far, scheduling policy)."""
    return {int(fields["Pid"]): (switches, os.sched_getscheduler(int(fields["Pid"])))
            for name, switches, fields in driver_threads(pid) if name.startswith(uring.THREAD_PREFIX)}


def busiest_worker_policy(mnt: Path, lookups: int, cpu: int) -> tuple[int, int]:
    """lookups of missing names from one CPU: (tid, policy) of the worker that served most of them."""
    pid = driver_pid(mnt)
    before = worker_policies(pid)
    with on_cpu(cpu):
        for i in range(lookups):
            assert not os.path.lexists(mnt / "d" / f"missing-{time.monotonic_ns()}-{i}")
    after = worker_policies(pid)
    tid = max(after, key=lambda t: after[t][0] - before.get(t, (0, 0))[0])
    assert after[tid][0] - before.get(tid, (0, 0))[0] >= 4 * placement.CHECK_EVERY, (before, after)
    return tid, after[tid][1]


@pytest.mark.skipif(not placement.may_leave_idle_policy(), reason="leaving SCHED_IDLE needs CAP_SYS_NICE")
def test_workers_keep_the_caller_on_its_cpu_while_a_cpu_is_free(stack: Stack, kernel_io_uring: None) -> None:
    """Under SCHED_IDLE the worker's CPU counts as idle when it wakes the caller,
    and the caller stays there; with every CPU taken by other work the workers
    take the normal policy, not to wait behind it (see placement)."""
    cpu = min(os.sched_getaffinity(0))
    with fuse_mount(stack, "io_uring=on") as mnt:
        for _ in range(5):  # another task of the machine may be runnable when the worker looks
            tid, policy = busiest_worker_policy(mnt, 16 * placement.CHECK_EVERY, cpu)
            if policy == os.SCHED_IDLE:
                break
        assert policy == os.SCHED_IDLE, "a CPU was free, and the worker kept the normal policy"
        io_class = subprocess.run(["ionice", "-p", str(tid)], capture_output=True, text=True, check=True).stdout
        assert io_class.strip() == "best-effort: prio 4"

        with busy_cpus():
            _, policy = busiest_worker_policy(mnt, 16 * placement.CHECK_EVERY, cpu)
        assert policy == os.SCHED_OTHER, "with every CPU busy, the worker stayed under SCHED_IDLE"


def device_reader_reads(pid: int) -> int:
    """Read calls so far of the driver's threads that are not ring workers: the
    /dev/fuse readers, which over io_uring get only FORGET and INTERRUPT. (Read
    calls, not context switches: those also count each wait for the interpreter
    lock, which a busy machine multiplies.)"""
    return sum(int(fields["syscr"]) for name, _, fields in driver_threads(pid) if not name.startswith(uring.THREAD_PREFIX))


def test_forgets_of_unlinked_files_come_in_batches(stack: Stack, kernel_io_uring: None) -> None:
    """Each unlinked file's inode is forgotten (a FORGET through /dev/fuse); read one
    by one, each would take a read of its own. The driver reads one at a time and
    then waits for the kernel to gather the next ones into a BATCH_FORGET."""
    files = 400
    for i in range(files):
        (stack.lowers[1] / "d" / f"f{i}").write_bytes(b"x")
    with fuse_mount(stack, "io_uring=on") as mnt:
        names = [mnt / "d" / f"f{i}" for i in range(files)]
        for path in names:
            os.lstat(path)  # known to the kernel: each unlink then evicts an inode
        pid = driver_pid(mnt)
        before = device_reader_reads(pid)
        start = time.monotonic()
        for path in names:
            os.unlink(path)
        time.sleep(0.1)  # the last batch
        elapsed = time.monotonic() - start
        reads = device_reader_reads(pid) - before
        assert os.listdir(mnt / "d") == ["lower.txt"]
    assert reads <= elapsed / _FORGET_GATHER + 2, (reads, elapsed)  # at most one per wait
    assert reads < files // 2, reads


def test_megabyte_payloads_cross_the_rings_intact(stack: Stack, kernel_io_uring: None) -> None:
    data = os.urandom(8 * MIB + 12345)
    with fuse_mount(stack, "io_uring=on") as mnt:
        fd = os.open(mnt / "d" / "big", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for offset in range(0, len(data), MIB):
                os.pwrite(fd, data[offset:offset + MIB], offset)
            os.fsync(fd)  # the kernel's page cache sends the WRITEs now
        finally:
            os.close(fd)
        assert (stack.upper / "d" / "big").read_bytes() == data
        Path("/proc/sys/vm/drop_caches").write_text("3")  # so that reads are READ requests
        fd = os.open(mnt / "d" / "big", os.O_RDONLY)
        try:
            back = b"".join(iter(lambda: os.read(fd, MIB), b""))
        finally:
            os.close(fd)
        assert back == data


def test_killed_driver_with_requests_on_its_rings_unmounts(stack: Stack, kernel_io_uring: None) -> None:
    # The driver kills itself in the middle of a copy-up, with the WRITE's open on a ring.
    with fuse_mount(stack, "io_uring=on", env={"CRASHPOINT_KILL": "copyup.data:1"}) as mnt:
        with pytest.raises(OSError) as exc:
            with open(mnt / "d" / "lower.txt", "ab") as f:
                f.write(b"more\n")
        assert exc.value.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.ECANCELED)
        expect_disconnected(lambda: os.listdir(mnt / "d"))  # an OPENDIR: nothing cached answers it
        result = subprocess.run([sys.executable, "-m", "unionfs", "umount", str(mnt)], capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0, result.stderr
        assert not is_mounted(str(mnt))
    assert (stack.lowers[1] / "d" / "lower.txt").read_bytes() == b"lower\n"
    assert not (stack.upper / "d" / "lower.txt").exists()


def test_a_queue_worker_that_fails_ends_the_driver_instead_of_hanging_the_mount(stack: Stack,
                                                                                 kernel_io_uring: None) -> None:
    # Every worker fails before its entry is registered: the kernel, which holds each
    # request until every queue has an entry, would otherwise keep callers waiting forever.
    opts = stack.spec("io_uring=on").option_string()
    driver = subprocess.Popen([sys.executable, "-m", "unionfs", "-f", "-o", opts, str(stack.mnt)],
                              env={**os.environ, "CRASHPOINT_FAULT": "ring.register"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(str(stack.mnt)) and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        # a caller in its own process, so that a hang fails the test instead of hanging it
        caller = subprocess.Popen([sys.executable, "-c", f"import os; os.stat({str(stack.mnt / 'd')!r})"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, said = caller.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            driver.kill()  # the connection ends with the driver, and the caller with it
            driver.wait()
            caller.kill()
            caller.communicate()
            pytest.fail("a caller of the mount hung after its queue workers failed")
        assert caller.returncode != 0, "the stat succeeded: no worker failed"
        # the connection aborted under it, or already unmounted when it came
        assert any(text in said for text in ("not connected", "aborted", "canceled", "No such file")), said
        _, err = driver.communicate(timeout=30)
        assert driver.returncode == 1
        assert "FUSE queue of CPU" in err and "fault injected at ring.register" in err, err
        assert "Traceback" not in err, err
        assert not is_mounted(str(stack.mnt))
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        force_unmount(stack.mnt)


@pytest.fixture
def kernel_without_io_uring() -> Iterator[None]:
    if not Path(uring.SYSFS_ENABLE).exists():
        yield  # a kernel without it: nothing to switch off
        return
    with kernel_io_uring_switch("N"):
        yield


def test_io_uring_on_refuses_to_mount_where_the_kernel_does_not_offer_it(stack: Stack,
                                                                        kernel_without_io_uring: None) -> None:
    opts = f"lowerdir={stack.lowers[0]}:{stack.lowers[1]},upperdir={stack.upper},workdir={stack.work},io_uring=on"
    try:
        result = subprocess.run([sys.executable, "-m", "unionfs", "-o", opts, str(stack.mnt)], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and "io_uring=on" in result.stderr, result.stderr
        assert not is_mounted(str(stack.mnt))
    finally:
        force_unmount(stack.mnt)
    # auto falls back to /dev/fuse there
    with fuse_mount(stack, "io_uring=auto") as mnt:
        assert (mnt / "d" / "lower.txt").read_bytes() == b"lower\n"
        assert not queue_threads(driver_pid(mnt))


def test_io_uring_auto_takes_the_rings_where_the_kernel_offers_them(stack: Stack, kernel_io_uring: None) -> None:
    """The other half of auto, the default: one queue per possible CPU, and requests served there."""
    with fuse_mount(stack, "io_uring=auto") as mnt:
        before = switches(queue_threads(driver_pid(mnt)))
        assert sorted(before) == list(range(uring.possible_cpus()))
        for i in range(50):
            assert not os.path.lexists(mnt / "d" / f"missing-{i}")
        after = switches(queue_threads(driver_pid(mnt)))
        assert sum(after.values()) - sum(before.values()) >= 50
