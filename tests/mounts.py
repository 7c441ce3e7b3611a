"""Mounting for tests: this driver and kernel overlayfs, over the same trees.

Every mount is undone in ``finally``, lazily when it must, so a test that
fails or a driver that crashes never leaves a mount behind for the next test.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pickle
import select
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from unionfs.mount import MountSpec, is_mounted, mount, mounted, serve, unmount
from unionfs.options import parse
from unionfs.uring import SYSFS_ENABLE


@dataclass(frozen=True)
class Stack:
    """Directories of one union under a test's temp dir: lowers top first."""

    lowers: tuple[Path, ...]
    upper: Path
    work: Path
    mnt: Path

    @classmethod
    def make(cls, base: Path, nlower: int = 2, prefix: str = "") -> "Stack":
        lowers = tuple(base / f"{prefix}lower{i}" for i in range(nlower))
        upper, work, mnt = base / f"{prefix}upper", base / f"{prefix}work", base / f"{prefix}mnt"
        for path in (*lowers, upper, work, mnt):
            path.mkdir(parents=True, exist_ok=True)
        return cls(lowers, upper, work, mnt)

    def spec(self, *options: str, read_only: bool = False) -> MountSpec:
        if read_only:
            return MountSpec(tuple(map(str, self.lowers)), options=options)
        return MountSpec(tuple(map(str, self.lowers)), str(self.upper), str(self.work), options)


# Options every fuse_mount adds: how requests reach the driver. /dev/fuse unless a test asks
# for the rings (the ``transport`` and ``kernel_io_uring`` fixtures), whatever the machine offers.
DEFAULT_TRANSPORT: tuple[str, ...] = ("io_uring=off",)
TRANSPORT: tuple[str, ...] = DEFAULT_TRANSPORT
# The fuse module's parameter is the machine's: every test run on it switches it under this lock.
_SWITCH_LOCK = Path("/run/lock" if os.path.isdir("/run/lock") else tempfile.gettempdir(), "unionfs-tests-enable-uring.lock")
_held = 0  # this process's depth in _switch_lock: a second flock of the file would wait for the first


@contextlib.contextmanager
def _switch_lock() -> Iterator[None]:
    global _held
    if _held:
        _held += 1
        try:
            yield
        finally:
            _held -= 1
        return
    fd = os.open(_SWITCH_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _held = 1
        try:
            yield
        finally:
            _held = 0
    finally:
        os.close(fd)


@contextlib.contextmanager
def kernel_io_uring_switch(value: str, hold: bool = True) -> Iterator[None]:
    """The fuse module's enable_uring set to value ("Y" or "N") meanwhile, then as it was.
    The kernel reads it at each mount, so another test run switching it mid-test would
    change how this one's mounts are served: hold keeps every other switch waiting until
    this one is undone (without it, the lock is held only while writing, for a session's
    default that a test's own switch may override)."""
    param = Path(SYSFS_ENABLE)

    def write(text: str) -> str:
        with contextlib.nullcontext() if hold else _switch_lock():
            was = param.read_text().strip()
            param.write_text(text)
            return was

    with _switch_lock() if hold else contextlib.nullcontext():
        before = write(value)
        try:
            yield
        finally:
            write(before)


@contextlib.contextmanager
def fuse_mount(stack: Stack, *options: str, read_only: bool = False, env: Mapping[str, str] | None = None) -> Iterator[Path]:
    """The driver under test, started as its own daemon process (env: added to its environment)."""
    with mounted(stack.spec(*TRANSPORT, *options, read_only=read_only), str(stack.mnt), env=env):
        yield stack.mnt


@contextlib.contextmanager
def union_by(kind: str, stack: Stack, *kernel_options: str) -> Iterator[Path]:
    """The union of stack by the driver ("unionfs") or by kernel overlayfs ("kernel", with kernel_options)."""
    if kind == "kernel":
        with kernel_mount(stack, *kernel_options) as mnt:
            yield mnt
    else:
        with fuse_mount(stack) as mnt:
            yield mnt


def remount_driver(stack: Stack, *options: str) -> None:
    """Unmount the driver at stack.mnt and start it again over the same layers; the
    ``fuse_mount`` that mounted it unmounts the new one."""
    unmount(str(stack.mnt))
    mount(stack.spec(*TRANSPORT, *options), str(stack.mnt))


def _mount_overlay(stack: Stack, options: Sequence[str], read_only: bool = False) -> None:
    opts = "lowerdir=" + ":".join(map(str, stack.lowers))
    if not read_only:
        opts += f",upperdir={stack.upper},workdir={stack.work}"
    if options:
        opts += "," + ",".join(options)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(stack.mnt)], check=True, capture_output=True)


@contextlib.contextmanager
def kernel_mount(stack: Stack, *options: str, read_only: bool = False) -> Iterator[Path]:
    """Kernel overlayfs over the same directories: the reference."""
    _mount_overlay(stack, options, read_only)
    try:
        yield stack.mnt
    finally:
        force_unmount(stack.mnt)


@contextlib.contextmanager
def fuse_overlayfs(stack: Stack, options: str) -> Iterator[Path]:
    """fuse-overlayfs over the same directories, where its behaviour is the reference
    (its own options)."""
    lowers = ":".join(map(str, stack.lowers))
    subprocess.run(["fuse-overlayfs", "-o", f"lowerdir={lowers},upperdir={stack.upper},workdir={stack.work},{options}",
                    str(stack.mnt)], check=True, capture_output=True, timeout=30)
    try:
        yield stack.mnt
    finally:
        force_unmount(stack.mnt)


def remount_kernel(stack: Stack, *options: str) -> None:
    """Unmount kernel overlayfs at stack.mnt and mount it again; the ``kernel_mount``
    that mounted it unmounts the new one."""
    unmount(str(stack.mnt))
    _mount_overlay(stack, options)


@contextlib.contextmanager
def loop_fs(base: Path, name: str, mkfs: Sequence[str], size: int) -> Iterator[Path]:
    """A new filesystem made by mkfs in a sparse image of size bytes under base,
    loop-mounted at base/name."""
    image, point = base / f"{name}.img", base / name
    point.mkdir()
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(point)], check=True, capture_output=True)
    try:
        yield point
    finally:
        force_unmount(point)  # the loop device goes with it (autoclear)


def loop_devices(image: Path) -> list[str]:
    """The loop devices attached to image (a loop_fs's goes with its last mount)."""
    out = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=True).stdout
    return [line.partition(":")[0] for line in out.splitlines()]


def power_cut(fs: Path) -> None:
    """The xfs of a loop_fs stops where its log on disk ends, as when the machine loses power:
    what only memory held is gone. It answers EIO until mount_again."""
    subprocess.run(["xfs_io", "-x", "-c", "shutdown", str(fs)], check=True, capture_output=True)


def mount_again(fs: Path) -> None:
    """Unmount a loop_fs and mount its image again: xfs replays its log."""
    subprocess.run(["umount", str(fs)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(fs.parent / f"{fs.name}.img"), str(fs)], check=True, capture_output=True)


def force_unmount(mountpoint: Path | str) -> None:
    if is_mounted(str(mountpoint)):
        try:
            unmount(str(mountpoint))
        except Exception:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


# A request made while a dead driver's descriptors are still being released: the kernel
# ends the requests on a released /dev/fuse (or ring) before it marks the connection
# gone, so one made in between is aborted, or cancelled on a ring. The release waits
# for every thread of the driver to exit, and a ring worker that waited under
# SCHED_IDLE (unionfs.placement) exits only once the CPU has nothing else to run.
ABORTED_IN_RELEASE = (errno.ECONNABORTED, errno.ECANCELED)
RELEASE_SECONDS = 10.0


def expect_disconnected(request: Callable[[], object], where: str = "") -> None:
    """request, which the kernel cannot answer from its caches, finds the connection
    gone (ENOTCONN); requests aborted while the release is under way are asked again,
    after a pause that leaves the CPU to the exiting driver, for RELEASE_SECONDS."""
    deadline = time.monotonic() + RELEASE_SECONDS
    while True:
        try:
            request()
        except OSError as exc:
            if exc.errno in ABORTED_IN_RELEASE and time.monotonic() < deadline:
                time.sleep(0.01)
                continue
            assert exc.errno == errno.ENOTCONN, f"{where}: {exc!r}, not ENOTCONN: the mount still answers"
            return
        raise AssertionError(f"{where}: the request succeeded: the driver did not die")


@contextlib.contextmanager
def busy_cpus() -> Iterator[None]:
    """A busy loop pinned to each CPU this process may use, meanwhile."""
    loops = [subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\n"
                               "while True: pass"]) for cpu in sorted(os.sched_getaffinity(0))]
    try:
        time.sleep(0.3)  # running by now
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def driver_pid(mountpoint: Path | str) -> int:
    """The pid of the driver process serving mountpoint (the daemon that ``unionfs``
    forked, with its command line, once the command itself has returned)."""
    target = os.path.abspath(mountpoint)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = [os.fsdecode(a) for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if "unionfs" in args and "umount" not in args and os.path.abspath(args[-1]) == target:
            found.append(int(entry))
    if len(found) != 1:
        raise LookupError(f"{target}: {len(found)} driver processes found: {found}")
    return found[0]


def mounts_under(base: Path | str) -> list[str]:
    prefix = os.path.realpath(base) + "/"
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if (p + "/").startswith(prefix)]


@contextlib.contextmanager
def device_open_to_users() -> Iterator[None]:
    """/dev/fuse as udev leaves it on Debian (0666): fusermount3 opens it as the user."""
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", 0o666)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", mode)


def _forked(child: Callable[[int], int]) -> tuple[int, int]:
    """A forked child that runs child(write end of a pipe) and exits with what it returns
    (1 if it raised): its pid, and the pipe's read end."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            code = child(write_end)
        finally:
            os._exit(code)
    os.close(write_end)
    return pid, read_end


def serve_as(uid: int, options: str, mnt: Path) -> tuple[int, str]:
    """Fork a driver running as uid (no exec: the interpreter may live where uid cannot read):
    its pid, and "ready" or the error it ended with."""
    def child(write_end: int) -> int:
        try:
            import unionfs.handlers, unionfs.session  # noqa: E401, F401 - while the interpreter's files are readable
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            serve(parse([options]), str(mnt), on_ready=lambda: os.write(write_end, b"ready"))
            return 0
        except BaseException as exc:  # noqa: BLE001 - whatever happens, the child ends here
            os.write(write_end, repr(exc).encode())
            return 1

    pid, read_end = _forked(child)
    try:
        answer = os.read(read_end, 4096).decode()  # the driver keeps its end open while it serves
    finally:
        os.close(read_end)
    return pid, answer


FUSECTL = "/sys/fs/fuse/connections"


def abort_connection(mountpoint: Path | str) -> None:
    """End every request of the FUSE mount at mountpoint and those to come (fusectl's
    abort), without looking at anything on the mount."""
    target = os.path.abspath(mountpoint)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        devices = [line.split()[2] for line in f if line.split()[4] == target]
    if not os.path.ismount(FUSECTL):
        subprocess.run(["mount", "-t", "fusectl", "fusectl", FUSECTL], capture_output=True)
    for device in devices:
        with contextlib.suppress(OSError):
            Path(FUSECTL, device.partition(":")[2], "abort").write_text("1")


def bounded(action: Callable[[], object], mountpoint: Path | str, seconds: float = 30.0) -> object:
    """action() run in a forked child, its result. A mount that does not answer in
    seconds (a driver waiting for itself) has its connection aborted, and the test fails
    then rather than hanging, with nothing left waiting on the mount."""
    def child(write_end: int) -> int:
        try:
            data, code = pickle.dumps((True, action())), 0
        except BaseException as exc:  # noqa: BLE001 - handed to the parent
            data, code = pickle.dumps((False, repr(exc))), 1
        view = memoryview(data)
        while view:
            view = view[os.write(write_end, view):]
        return code

    pid, read_end = _forked(child)
    chunks: list[bytes] = []
    deadline = time.monotonic() + seconds
    try:
        while True:
            ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                abort_connection(mountpoint)
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"{mountpoint}: no answer in {seconds:g} s: the connection was aborted")
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    ok, value = pickle.loads(b"".join(chunks))
    if not ok:
        raise AssertionError(f"in the child: {value}")
    return value
