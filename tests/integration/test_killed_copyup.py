"""A caller killed while its large file is copied up, against kernel overlayfs.

Overlayfs copies a file up in chunks and gives the copy up between two of
them when its caller has a fatal signal pending (``ovl_copy_up_file``); a
signal the caller handles does not stop it. Through FUSE the driver learns of
a signal from the kernel's INTERRUPT (see ``unionfs.interrupts``).

To catch a copy-up half-way, every time, the lower layer is itself a FUSE
mount (this driver, read-only, over a plain directory) whose process the
test stops once the copy has begun: the copy then waits for its next read
of the lower file while the test sends its signals, and goes on when the
lower mount's process does. The same layers are mounted by kernel
overlayfs and by this driver, with the caller and the signals alike.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import mounts
from conftest import needs_root
from mounts import Stack, fuse_mount, kernel_mount

pytestmark = needs_root

SIZE = 256 << 20  # eight of the driver's pieces of a large copy (datacopy.PIECE)

# The caller: open for appending, as `echo >>` does, through the C library's open (not
# asked again after EINTR, as Python's own is). SIGUSR1 is handled: with SA_RESTART
# when argv[2] says "restart", as most programs' handlers are installed.
CALLER = r"""
import ctypes, os, signal, sys
signal.signal(signal.SIGUSR1, lambda *_: None)
signal.siginterrupt(signal.SIGUSR1, sys.argv[2] != "restart")
libc = ctypes.CDLL(None, use_errno=True)
print("ready", flush=True)
fd = libc.open(os.fsencode(sys.argv[1]), os.O_WRONLY | os.O_APPEND)
print(fd if fd >= 0 else -ctypes.get_errno(), flush=True)
"""


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A directory with one large file of data no two MiB of which are alike."""
    base = tmp_path_factory.mktemp("source")
    seed = os.urandom(1 << 20)
    with open(base / "big", "wb") as f:
        for i in range(SIZE >> 20):
            f.write(i.to_bytes(8, "little") + seed[8:])
    return base, _digest(base / "big")


@contextlib.contextmanager
def slow_lower(tmp_path: Path, source: Path) -> Iterator[tuple[Path, int]]:
    """source through a read-only mount of this driver: (its mount point, its process)."""
    feed = Stack((source,), tmp_path / "feed-upper", tmp_path / "feed-work", tmp_path / "feed")
    feed.mnt.mkdir()
    with fuse_mount(feed, read_only=True) as mnt:
        pid = mounts.driver_pid(mnt)
        try:
            yield mnt, pid
        finally:
            os.kill(pid, signal.SIGCONT)  # never left stopped: its unmount would wait for it


@contextlib.contextmanager
def union(kind: str, stack: Stack) -> Iterator[Path]:
    if kind == "kernel":
        with kernel_mount(stack) as mnt:
            yield mnt
    else:
        with fuse_mount(stack) as mnt:
            yield mnt


def _read_by(pid: int) -> int:
    """Bytes process pid has read so far (/proc's rchar)."""
    with open(f"/proc/{pid}/io", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def _copy_begun(lower_pid: int, before: int) -> None:
    """Wait until the lower mount has served a part of the file: the copy is under way
    (kernel overlayfs builds its copy as an unnamed file, so the work dir shows nothing)."""
    deadline = time.monotonic() + 30
    while _read_by(lower_pid) - before < (8 << 20):
        assert time.monotonic() < deadline, "no copy-up began within 30 s"
        time.sleep(0.001)


def _left_in(work: Path) -> list[str]:
    return [os.path.join(root, name) for root, _, files in os.walk(work) for name in files
            if os.lstat(os.path.join(root, name)).st_size > 0]


@pytest.fixture(params=["kernel", "dev", "io_uring"])
def kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Kernel overlayfs, and this driver over /dev/fuse and over the rings."""
    if request.param == "io_uring":
        request.getfixturevalue("kernel_io_uring")
        mounts.TRANSPORT = ("io_uring=on",)
    try:
        yield request.param
    finally:
        mounts.TRANSPORT = mounts.DEFAULT_TRANSPORT


# (signals sent to the caller half-way through its copy-up, SA_RESTART on its handler)
CASES = {
    "killed": (("KILL",), True),
    "handled": (("USR1",), True),
    "handled-then-killed": (("USR1", "KILL"), True),
    "handled-no-restart": (("USR1",), False),
}


@pytest.mark.parametrize("case", CASES)
def test_a_copy_up_stops_for_a_killed_caller(tmp_path: Path, source: tuple[Path, str], kind: str, case: str) -> None:
    """Killed: the caller dies at once and no copy shows, as in overlayfs. Handled:
    overlayfs gives the copy up too (the splice it copies with stops at any signal)
    and the open starts over under SA_RESTART, or fails with EINTR without it. A
    FUSE reply cannot ask for a start over, so this driver finishes the copy: what
    the started-over open gives, with SA_RESTART or without."""
    directory, digest = source
    signals, restart = CASES[case]
    killed = "KILL" in signals
    with slow_lower(tmp_path, directory) as (lower, lower_pid):
        stack = Stack((lower,), tmp_path / "upper", tmp_path / "work", tmp_path / "mnt")
        for path in (stack.upper, stack.work, stack.mnt):
            path.mkdir()
        with union(kind, stack) as mnt:
            before = _read_by(lower_pid)
            caller = subprocess.Popen([sys.executable, "-c", CALLER, str(mnt / "big"), "restart" if restart else "no"],
                                      stdout=subprocess.PIPE, text=True)
            try:
                assert caller.stdout is not None
                assert caller.stdout.readline() == "ready\n"
                _copy_begun(lower_pid, before)
                os.kill(lower_pid, signal.SIGSTOP)  # the copy waits for its next read of the lower file
                assert not (stack.upper / "big").exists(), "the copy ended before the lower mount was stopped"
                for name in signals:
                    time.sleep(0.2)  # the driver has the kernel's INTERRUPT by then
                    caller.send_signal(getattr(signal, f"SIG{name}"))
                time.sleep(0.2)
                os.kill(lower_pid, signal.SIGCONT)
                out, _ = caller.communicate(timeout=60)
            finally:
                os.kill(lower_pid, signal.SIGCONT)
                if caller.poll() is None:
                    caller.kill()
                    caller.wait()
            if killed:
                assert caller.returncode == -signal.SIGKILL
                assert not (stack.upper / "big").exists(), "the copy-up went on for a caller that was killed"
            elif kind == "kernel" and not restart:
                assert (caller.returncode, int(out)) == (0, -errno.EINTR)
                assert not (stack.upper / "big").exists()
            else:
                assert caller.returncode == 0
                assert int(out) >= 0, f"open failed with errno {-int(out)} for a signal the caller handles"
                assert _digest(stack.upper / "big") == digest
            # What the caller left, the merged view shows whole; a new writer copies it up.
            assert _digest(mnt / "big") == digest
            with open(mnt / "big", "ab") as f:
                f.write(b"!")
            assert os.path.getsize(stack.upper / "big") == SIZE + 1
        assert _left_in(stack.work) == []
