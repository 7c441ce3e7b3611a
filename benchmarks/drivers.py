"""Mounting the same lower stack with kernel overlayfs, fuse-overlayfs and unionfs.

All three take the same ``lowerdir=TOP:...:BOTTOM,upperdir=U,workdir=W``
option string, so a mount differs only in the command used.  Mounting is
detected through ``/proc/self/mountinfo`` rather than ``os.path.ismount``:
stat()ing a wedged FUSE mount point would hang the benchmark.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fixtures import log

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DRIVER_CMD = [sys.executable, "-m", "unionfs"]
DRIVER_NAMES = ("kernel", "fuse-overlayfs", "unionfs")
FUSECTL = Path("/sys/fs/fuse/connections")


def drop_caches() -> bool:
    """Flush dirty data and drop the page, dentry and inode caches; False where that is not allowed (not root)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        return True
    except OSError:
        return False


class MountError(RuntimeError):
    """The driver did not come up; the message carries its output."""


def _unescape(field_: str) -> str:
    """Undo the octal escapes (``\\040`` etc.) used in mountinfo."""
    out, i = [], 0
    while i < len(field_):
        if field_[i] == "\\" and len(field_[i + 1 : i + 4]) == 3 and field_[i + 1 : i + 4].isdigit():
            out.append(chr(int(field_[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def mounts() -> list[tuple[str, str, str]]:
    """(mount point, fs type, major:minor) for every current mount."""
    result = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts = left.split()
            fstype = right.split()[0] if right else "?"
            result.append((_unescape(parts[4]), fstype, parts[2]))
    return result


def is_mounted(mnt: Path) -> bool:
    target = str(mnt)
    return any(m[0] == target for m in mounts())


def mounts_under(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    return [m[0] for m in mounts() if m[0].startswith(prefix) or m[0] == str(root)]


def fs_type(path: Path) -> str:
    """Filesystem type of the mount containing ``path`` (longest prefix match)."""
    real = os.path.realpath(path)
    best, best_type = "", "?"
    for point, fstype, _ in mounts():
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, best_type = point, fstype
    return best_type


_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS = 0x80086601, 0x40086602
_FS_TOPDIR_FL = 0x00020000


def spread_new_dirs(path: Path) -> bool:
    """Mark path as the top of directory hierarchies (``chattr +T``): ext4 then
    puts each directory made in it, and the files made in that one, in a block
    group of its own. Why: without a journal, ext4 skips every inode freed in
    the last seconds when it picks one for a new file, and looks each of them
    up in the inode table; a run that creates files right after the last run's
    upper was removed from the same group paid 10 to 100 times the cost of a
    create, whichever driver it measured. False where the filesystem has no
    such flag (xfs, btrfs: nothing to spread)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = struct.unpack("i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, struct.pack("i", 0)))[0]
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", flags | _FS_TOPDIR_FL))
        return bool(struct.unpack("i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, struct.pack("i", 0)))[0] & _FS_TOPDIR_FL)
    except OSError:
        return False
    finally:
        os.close(fd)


def daemon_pids(mnt: Path) -> list[int]:
    """PIDs of processes whose argv names this (unique, temporary) mount point.

    Used only to wait for a FUSE daemon to exit after unmount, or to stop
    one we started when it wedges; the match is by exact argument.
    """
    target = os.fsencode(str(mnt))
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if target in argv:
            pids.append(int(entry))
    return pids


def _run(cmd: list[str], timeout: float, env: dict | None = None, cwd: Path | None = None) -> tuple[int, str]:
    """Run a (possibly daemonizing) command; output goes to a file, not a pipe.

    A daemon inherits stdout/stderr: with pipes, ``communicate`` would wait
    for the daemon to exit, i.e. forever.
    """
    with tempfile.TemporaryFile() as out:
        try:
            rc = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=timeout, env=env, cwd=cwd
            ).returncode
        except subprocess.TimeoutExpired:
            rc = -1
        except OSError as e:
            return 127, str(e)
        out.seek(0)
        text = out.read()[-4000:].decode(errors="replace")
        if rc == -1:
            text += f"\n(timed out after {timeout:.0f}s)"
        return rc, text


@dataclass
class Driver:
    """One way of mounting a union; ``name`` is the label in the results."""

    name: str
    mount_cmd: list[str]
    umount_cmds: list[list[str]]
    is_fuse: bool
    extra_opts: str = ""
    env: dict | None = None
    cwd: Path | None = None
    note: str = ""
    disabled: str = ""
    mount_timeout: float = 60.0
    _conn: dict[str, int] = field(default_factory=dict)

    def options(self, lowers: list[Path], upper: Path, work: Path) -> str:
        opts = f"lowerdir={':'.join(str(p) for p in lowers)},upperdir={upper},workdir={work}"
        return f"{opts},{self.extra_opts}" if self.extra_opts else opts

    def mount(self, lowers: list[Path], upper: Path, work: Path, mnt: Path) -> float:
        """Mount and wait until the mount is visible; returns seconds taken."""
        cmd = self.mount_cmd + ["-o", self.options(lowers, upper, work), str(mnt)]
        t0 = time.perf_counter()
        rc, out = _run(cmd, self.mount_timeout, env=self.env, cwd=self.cwd)
        if rc != 0:
            if is_mounted(mnt):
                self.unmount(mnt)
            raise MountError(f"mount command exited {rc}: {out.strip()[-1500:]} [cmd: {shlex.join(cmd)}]")
        deadline = time.monotonic() + 30
        while not is_mounted(mnt):
            if time.monotonic() > deadline:
                raise MountError(f"mount command returned but the mount never appeared: {out.strip()[-1500:]} [cmd: {shlex.join(cmd)}]")
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
        for point, _, majmin in mounts():
            if point == str(mnt):
                self._conn[str(mnt)] = int(majmin.split(":")[1])
        return elapsed

    def unmount(self, mnt: Path) -> float:
        """Unmount with the driver's own command, falling back to lazy umount."""
        t0 = time.perf_counter()
        errors = []
        for cmd in self.umount_cmds + [["umount", "-l"]]:
            if not is_mounted(mnt):
                break
            if shutil.which(cmd[0]) is None and cmd[0] != sys.executable:
                continue
            rc, out = _run(cmd + [str(mnt)], 60, env=self.env, cwd=self.cwd)
            if rc != 0:
                errors.append(f"{shlex.join(cmd)}: {out.strip()[-300:]}")
        elapsed = time.perf_counter() - t0
        if self.is_fuse:
            # Let the daemon finish so the next mount does not compete with it.
            deadline = time.monotonic() + 15
            while daemon_pids(mnt) and time.monotonic() < deadline:
                time.sleep(0.02)
            for pid in daemon_pids(mnt):
                log(f"{self.name}: daemon {pid} still running after unmount; killing it")
                _kill(pid)
        self._conn.pop(str(mnt), None)
        if is_mounted(mnt):
            raise MountError(f"could not unmount {mnt}: {'; '.join(errors)}")
        if errors:
            log(f"{self.name}: unmount needed a fallback: {'; '.join(errors)}")
        return elapsed

    def abort(self, mnt: Path) -> None:
        """Unwedge a hung FUSE mount: abort the connection and stop its daemon."""
        if not self.is_fuse:
            return
        conn = self._conn.get(str(mnt))
        if conn is not None and (FUSECTL / str(conn) / "abort").exists():
            try:
                (FUSECTL / str(conn) / "abort").write_text("1")
            except OSError:
                pass
        for pid in daemon_pids(mnt):
            _kill(pid)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def compile_package(package: Path) -> None:
    """Write the package's bytecode, as an install does. Where PYTHONDONTWRITEBYTECODE
    is set (as in some CI environments), every mount compiled the driver from source
    again, and the mount row measured that: 0.37 s against 0.17 s."""
    import compileall

    if not compileall.compile_dir(str(package), quiet=1):
        log(f"compiling {package} failed: the mount row includes compiling it")


def make_drivers(
    names: list[str],
    driver_cmd: list[str] | None = None,
    driver_umount_cmd: list[str] | None = None,
    extra_opts: dict[str, str] | None = None,
) -> list[Driver]:
    """Build the selected drivers; a missing binary disables (not aborts) one."""
    extra_opts = extra_opts or {}
    drivers = []
    for name in names:
        if name == "kernel":
            d = Driver("kernel", ["mount", "-t", "overlay", "overlay"], [["umount"]], is_fuse=False)
        elif name == "fuse-overlayfs":
            d = Driver(
                "fuse-overlayfs",
                ["fuse-overlayfs"],
                [["fusermount3", "-u"], ["fusermount", "-u"], ["umount"]],
                is_fuse=True,
            )
            if shutil.which("fuse-overlayfs") is None:
                d.disabled = "fuse-overlayfs not installed"
        elif name == "unionfs":
            cmd = driver_cmd or DEFAULT_DRIVER_CMD
            default = cmd == DEFAULT_DRIVER_CMD
            if driver_umount_cmd:
                umounts = [driver_umount_cmd]
            elif default:
                umounts = [DEFAULT_DRIVER_CMD + ["umount"]]
            else:
                umounts = []
            umounts += [["fusermount3", "-u"], ["fusermount", "-u"], ["umount"]]
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
            # `python3 -m` would put its working directory (the repository) first
            # on sys.path, and a --driver-cmd naming another copy of the driver
            # by PYTHONPATH would then measure this one.
            env["PYTHONSAFEPATH"] = "1"
            d = Driver("unionfs", cmd, umounts, is_fuse=True, env=env, cwd=REPO_ROOT)
            if default:
                compile_package(REPO_ROOT / "unionfs")
            else:
                d.note = shlex.join(cmd)
            if shutil.which(cmd[0]) is None and not os.path.exists(cmd[0]):
                d.disabled = f"{cmd[0]} not found"
        else:
            raise ValueError(f"unknown driver {name!r} (choose from {', '.join(DRIVER_NAMES)})")
        d.extra_opts = extra_opts.get(name, "")
        drivers.append(d)
    return drivers
