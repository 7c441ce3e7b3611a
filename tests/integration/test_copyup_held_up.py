"""A large file's copy-up held up half-way, against kernel overlayfs: what
becomes of a caller killed meanwhile, of one that waits for the same copy-up,
and of the other changes through the mount.

Overlayfs copies a file up in chunks and gives the copy up between two of
them when its caller has a fatal signal pending (``ovl_copy_up_file``); a
signal the caller handles does not stop it. It copies the data holding the
file's own lock, so changes elsewhere go on meanwhile. Through FUSE the driver
learns of a signal from the kernel's INTERRUPT (see ``unionfs.interrupts``),
and copies a large file's data before it takes the mount's lock for the change
(``CopyUp.prepare``).

To catch a copy-up half-way, every time, the lower layer is itself a FUSE
mount (this driver, read-only, over a plain directory) whose process the
test stops once the copy has begun: the copy then waits for its next read
of the lower file while the test sends its signals or makes its changes, and
goes on when the lower mount's process does. The same layers are mounted by
kernel overlayfs and by this driver, with the callers and the signals alike.
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
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import mounts
from conftest import needs_root
from mounts import Stack, fuse_mount

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


@dataclass
class Stall:
    """A union whose lower layer's process is stopped, and the callers of a test."""

    stack: Stack
    lower_pid: int
    callers: list[subprocess.Popen[str]] = field(default_factory=list)

    def call(self, restart: bool = True) -> subprocess.Popen[str]:
        """A caller that opens big for appending (SA_RESTART on its SIGUSR1 handler or not)."""
        caller = subprocess.Popen([sys.executable, "-c", CALLER, str(self.stack.mnt / "big"),
                                   "restart" if restart else "no"], stdout=subprocess.PIPE, text=True)
        self.callers.append(caller)
        assert caller.stdout is not None
        assert caller.stdout.readline() == "ready\n"
        return caller

    def go_on(self) -> None:
        os.kill(self.lower_pid, signal.SIGCONT)


@contextlib.contextmanager
def stalled_copy_up(tmp_path: Path, directory: Path, kind: str, restart: bool = True) -> Iterator[Stall]:
    """A caller's copy-up of big begun, then held up: the lower mount's process
    stopped, so the copy waits for its next read of the lower file. Afterwards
    nothing is left stopped or running."""
    with slow_lower(tmp_path, directory) as (lower, lower_pid):
        stack = Stack((tmp_path / "quick", lower), tmp_path / "upper", tmp_path / "work", tmp_path / "mnt")
        for path in (stack.lowers[0], stack.upper, stack.work, stack.mnt):
            path.mkdir()
        # Places whose lookups never reach the stopped layer: opaque directories.
        for opaque in (stack.lowers[0] / "plain", stack.upper / "scratch"):
            opaque.mkdir()
            os.setxattr(opaque, "trusted.overlay.opaque", b"y")
        (stack.lowers[0] / "plain" / "small").write_text("small\n")
        (stack.lowers[0] / "plain" / "kept").write_text("kept\n")
        with mounts.union_by(kind, stack):
            stall = Stall(stack, lower_pid)
            try:
                before = _read_by(lower_pid)
                stall.call(restart)
                _copy_begun(lower_pid, before)
                os.kill(lower_pid, signal.SIGSTOP)
                assert not (stack.upper / "big").exists(), "the copy ended before the lower mount was stopped"
                yield stall
            finally:
                stall.go_on()
                for caller in stall.callers:
                    if caller.poll() is None:
                        caller.kill()
                        caller.wait()


def _whole_and_writable(stack: Stack, digest: str) -> None:
    """What the callers left, the merged view shows whole; a new writer copies it up."""
    assert _digest(stack.mnt / "big") == digest
    with open(stack.mnt / "big", "ab") as f:
        f.write(b"!")
    assert os.path.getsize(stack.upper / "big") == SIZE + 1


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
    with stalled_copy_up(tmp_path, directory, kind, restart) as stall:
        caller, upper = stall.callers[0], stall.stack.upper
        for name in signals:
            time.sleep(0.2)  # the driver has the kernel's INTERRUPT by then
            caller.send_signal(getattr(signal, f"SIG{name}"))
        time.sleep(0.2)
        stall.go_on()
        out, _ = caller.communicate(timeout=60)
        if killed:
            assert caller.returncode == -signal.SIGKILL
            assert not (upper / "big").exists(), "the copy-up went on for a caller that was killed"
        elif kind == "kernel" and not restart:
            assert (caller.returncode, int(out)) == (0, -errno.EINTR)
            assert not (upper / "big").exists()
        else:
            assert caller.returncode == 0
            assert int(out) >= 0, f"open failed with errno {-int(out)} for a signal the caller handles"
            assert _digest(upper / "big") == digest
        _whole_and_writable(stall.stack, digest)
    assert _left_in(stall.stack.work) == []


def test_a_caller_waiting_for_another_s_copy_up_dies_when_killed(tmp_path: Path, source: tuple[Path, str],
                                                                   kind: str) -> None:
    """Overlayfs waits for another caller's copy-up of the same entry killably
    (ovl_copy_up_start): the waiter dies at once, while the copy it waited for
    is still held up, and that copy then ends for its own caller."""
    directory, digest = source
    with stalled_copy_up(tmp_path, directory, kind) as stall:
        first = stall.callers[0]
        waiter = stall.call()
        time.sleep(0.5)  # waiting for the first caller's copy-up by then
        waiter.kill()
        try:
            waiter.wait(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError("a killed caller went on waiting for another caller's copy-up") from None
        assert first.poll() is None  # still copying, held up
        stall.go_on()
        out, _ = first.communicate(timeout=60)
        assert (first.returncode, int(out) >= 0) == (0, True)
        assert _digest(stall.stack.upper / "big") == digest
        _whole_and_writable(stall.stack, digest)
    assert _left_in(stall.stack.work) == []


# Changes elsewhere in the mount, made by another process while a copy-up is held up,
# where no lookup reaches the stopped layer.
CHANGES = r"""
import os, sys
m = sys.argv[1]
with open(m + "/scratch/new", "w") as f:
    f.write("new")
os.mkdir(m + "/scratch/made")
os.rename(m + "/scratch/new", m + "/scratch/made/new")
with open(m + "/plain/small", "a") as f:  # another lower file copied up
    f.write("more")
os.chmod(m + "/plain/kept", 0o600)
os.rename(m + "/plain/kept", m + "/scratch/kept")
os.unlink(m + "/scratch/made/new")
os.rmdir(m + "/scratch/made")
print(sorted(os.listdir(m + "/scratch")), sorted(os.listdir(m + "/plain")), flush=True)
"""


def test_other_changes_go_on_while_a_copy_up_is_held_up(tmp_path: Path, source: tuple[Path, str], kind: str) -> None:
    directory, digest = source
    with stalled_copy_up(tmp_path, directory, kind) as stall:
        changes = subprocess.Popen([sys.executable, "-c", CHANGES, str(stall.stack.mnt)], stdout=subprocess.PIPE,
                                   text=True)
        stall.callers.append(changes)
        try:
            out, _ = changes.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError("changes elsewhere in the mount waited for a copy-up held up") from None
        assert changes.returncode == 0
        assert out == "['kept'] ['small']\n"
        first = stall.callers[0]
        assert first.poll() is None  # still copying, held up
        stall.go_on()
        out, _ = first.communicate(timeout=60)
        assert (first.returncode, int(out) >= 0) == (0, True)
        assert _digest(stall.stack.upper / "big") == digest
        assert (stall.stack.upper / "plain" / "small").read_text() == "small\nmore"
        assert oct(os.stat(stall.stack.upper / "scratch" / "kept").st_mode & 0o777) == oct(0o600)
        _whole_and_writable(stall.stack, digest)
    assert _left_in(stall.stack.work) == []
