"""The driver through real FUSE mounts: command line, lifecycle and the rules
that only show through the kernel (permissions, inode numbers, long paths)."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import platform
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import mounts
import pytest
from difftree import drop_caches, through_two_names
from extents import data_extents, write_sparse
from mounts import Stack, expect_disconnected, force_unmount, fuse_mount, kernel_mount, loop_fs
from storecheck import small_fs
from users import NOBODY, errno_as
from waiting import wait_for

from unionfs import fuseproto as fp
from unionfs import syscalls
from unionfs.mount import is_mounted

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root here")
_LIBC = ctypes.CDLL(None, use_errno=True)
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def unionfs(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "unionfs", *args], capture_output=True, text=True, timeout=60, **kwargs)  # type: ignore[call-overload]


def opts(stack: Stack) -> str:
    return stack.spec().option_string()


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    s = Stack.make(tmp_path)
    (s.lowers[1] / "base.txt").write_text("base\n")
    (s.lowers[0] / "top.txt").write_text("top\n")
    return s


def test_daemon_mounts_and_umount_unmounts(stack: Stack) -> None:
    result = unionfs("-o", opts(stack), str(stack.mnt))
    assert result.returncode == 0, result.stderr
    try:
        # The command returns once the daemon has let go of its start-up descriptors.
        pid = mounts.driver_pid(stack.mnt)
        held = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert [held.pop(fd) for fd in (0, 1, 2)] == [os.devnull] * 3
        assert not [target for target in held.values() if target.startswith("pipe:") or target == os.devnull], held
        assert sorted(os.listdir(stack.mnt)) == ["base.txt", "top.txt"]
        with open("/proc/self/mountinfo") as f:
            line = next(l for l in f if f" {stack.mnt} " in l)
        assert "fuse.unionfs" in line
        dev = os.stat(stack.mnt).st_dev
        with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb") as f:
            assert f.read().strip() == "1024"  # raised from FUSE's 128 KiB to one request's size
    finally:
        assert unionfs("umount", str(stack.mnt)).returncode == 0
    assert not is_mounted(str(stack.mnt))


def test_mount_helper_form(stack: Stack) -> None:
    """mount -t fuse.unionfs, as third-party union test suites mount a FUSE overlay."""
    result = subprocess.run(
        ["mount", "-t", "fuse.unionfs", "unionfs", str(stack.mnt), "-o", opts(stack)],
        capture_output=True, text=True, env={"PATH": SAFE_PATH}, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    try:
        assert (stack.mnt / "base.txt").read_text() == "base\n"
    finally:
        subprocess.run(["umount", str(stack.mnt)], check=True)


def test_the_source_given_before_the_mount_point_is_the_mounts_source(stack: Stack) -> None:
    """``unionfs -o OPTIONS SOURCE MOUNTPOINT``, as mount.fuse runs it for ``mount -t
    fuse.unionfs SOURCE ...``: SOURCE is the mount's source in mountinfo (what mount(8)
    and df show), as overlayfs's own is; without it, "unionfs"."""
    for given, shown in ((["layers-of-app"], "layers-of-app"), ([], "unionfs")):
        result = unionfs("-o", opts(stack), *given, str(stack.mnt))
        assert result.returncode == 0, result.stderr
        try:
            with open("/proc/self/mountinfo") as f:
                line = next(l for l in f if f" {stack.mnt} " in l)
            assert line.split(" - ")[1].split()[:2] == ["fuse.unionfs", shown]
        finally:
            assert unionfs("umount", str(stack.mnt)).returncode == 0


def test_lowerdir_plus_stacks_one_layer_each_as_on_overlayfs(tmp_path: Path) -> None:
    """overlayfs's lowerdir+= (Linux 6.8): one layer per option, top first, a colon in a
    path taken as it is; through mount(8) with the same option string as the kernel's."""
    layers = [tmp_path / "top", tmp_path / "mid:dle", tmp_path / "bottom"]
    for i, layer in enumerate(layers):
        layer.mkdir()
        (layer / "shared").write_text(f"{layer.name}\n")
        (layer / f"only{i}").write_text(f"{i}\n")
    (layers[0] / "shared").unlink()  # the middle layer's shows
    views = {}
    for driver in ("overlay", "fuse.unionfs"):
        upper, work, mnt = (tmp_path / driver / name for name in ("upper", "work", "mnt"))
        for path in (upper, work, mnt):
            path.mkdir(parents=True)
        options = ",".join([*(f"lowerdir+={layer}" for layer in layers), f"upperdir={upper}", f"workdir={work}"])
        result = subprocess.run(["mount", "-t", driver, driver, str(mnt), "-o", options],
                                capture_output=True, text=True, env={"PATH": SAFE_PATH}, timeout=60)
        assert result.returncode == 0, result.stderr
        try:
            (mnt / "only1").write_text("changed\n")
            views[driver] = [(name, (mnt / name).read_text()) for name in sorted(os.listdir(mnt))]
        finally:
            force_unmount(mnt)
        views[driver].append(sorted(os.listdir(upper)))
    assert views["fuse.unionfs"] == views["overlay"]
    assert views["overlay"][:4] == [("only0", "0\n"), ("only1", "changed\n"), ("only2", "2\n"), ("shared", "mid:dle\n")]
    refused = unionfs("-o", f"lowerdir={layers[0]},lowerdir+={layers[2]}", str(tmp_path / "overlay" / "mnt"))
    assert refused.returncode != 0 and "lowerdir+ cannot follow lowerdir" in refused.stderr
    assert "Traceback" not in refused.stderr


def _mounted_listing(mount: Callable[[str, Path], bool], options: str, mnt: Path, upper: Path) -> object:
    """What a mount with these options shows, and what a file made through it adds to
    upper; None if the mount is refused."""
    if not mount(options, mnt):
        return None
    try:
        (mnt / "made").write_text("made\n")
        return sorted(os.listdir(mnt)), sorted(os.listdir(upper))
    finally:
        force_unmount(mnt)


def _overlay_mount(options: str, mnt: Path) -> bool:
    """overlayfs given the options as they are, by mount(2)."""
    return _LIBC.mount(b"overlay", os.fsencode(mnt), b"overlay", 0, os.fsencode(options)) == 0


def _driver_mount(options: str, mnt: Path) -> bool:
    return unionfs("-o", options, str(mnt)).returncode == 0


def test_backslashes_in_options_are_read_as_overlayfs_reads_them(tmp_path: Path) -> None:
    """The same option strings to overlayfs (by mount(2), with nothing in between) and
    to the driver: a backslash escapes a comma, a colon or a backslash in lowerdir=,
    upperdir= and workdir=, and lowerdir+= takes its path as it is."""
    for name in ("a,b", "a\\b", "c\\", "d:e"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"in {name}").write_text("x\n")
    b = tmp_path
    layers = [f"lowerdir={b}/a\\,b", f"lowerdir+={b}/a\\,b", f"lowerdir={b}/a\\\\b", f"lowerdir+={b}/a\\b",
              f"lowerdir={b}/c\\\\", f"lowerdir={b}/d\\:e:{b}/a\\,b", f"lowerdir+={b}/d:e"]
    refused = 0
    for i, lower in enumerate(layers):
        seen = []
        for name, mount in (("kernel", _overlay_mount), ("driver", _driver_mount)):
            upper, work, mnt = (tmp_path / f"{name}{i}" / part for part in ("u,v", "w", "m"))
            for path in (upper, work, mnt):
                path.mkdir(parents=True)
            seen.append(_mounted_listing(mount, f"{lower},upperdir={upper.parent}/u\\,v,workdir={work}", mnt, upper))
        assert seen[1] == seen[0], lower
        refused += seen[0] is None
    assert refused == 1  # lowerdir+= with "\\,": no such directory


def test_read_only_without_upperdir(stack: Stack) -> None:
    with fuse_mount(stack, read_only=True) as mnt:
        assert (mnt / "top.txt").read_text() == "top\n"
        with pytest.raises(OSError) as exc:
            (mnt / "new").write_text("x")
        assert exc.value.errno == errno.EROFS


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_cleanly(stack: Stack, sig: int) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "unionfs", "-f", "-o", opts(stack), str(stack.mnt)])
    try:
        assert wait_for(lambda: is_mounted(str(stack.mnt)), 10.0)
        assert (stack.mnt / "top.txt").exists()
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
        assert not is_mounted(str(stack.mnt))
    finally:
        proc.kill()
        force_unmount(stack.mnt)


def test_umount_while_forgets_flow_is_quiet(stack: Stack, transport: str) -> None:
    """Unmounted right after many unlinks, each worker still has a read to make when
    the first one sees the end; none may find the descriptor closed under it (it
    said so on stderr, and its number could have been another file's by then)."""
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-m", "unionfs", "-f", "-o", ",".join((opts(stack), *mounts.TRANSPORT)),
                                 str(stack.mnt)], stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for(lambda: is_mounted(str(stack.mnt)), 10.0)
            for i in range(100):
                (stack.mnt / f"f{i}").write_bytes(b"x")
            for i in range(100):
                (stack.mnt / f"f{i}").unlink()
            result = unionfs("umount", str(stack.mnt))
            assert result.returncode == 0, result.stderr
            _, err = proc.communicate(timeout=20)
            assert proc.returncode == 0 and err == ""
        finally:
            proc.kill()
            force_unmount(stack.mnt)


def test_appends_that_copy_up_read_nothing_back(stack: Stack, transport: str) -> None:
    """With the writeback cache, an append fills the page it writes into first: the
    driver hands a copied-up file's last page over with the OPEN, so the kernel asks
    for no READ, and the pages it writes back hold the file's data. A file that a
    reader holds open gets no page (it may be locked for the reader's READ), and the
    reader still sees the append. The driver's read of the page is not the caller's:
    the copy keeps its atime."""
    page = mmap.PAGESIZE
    sizes = {"short": 100, "long": 2 * page + 17, "page": page, "empty": 0, "held": 300}
    data = {name: bytes((i * 7 + size) % 251 for i in range(size)) for name, size in sizes.items()}
    for name, content in data.items():
        (stack.lowers[1] / name).write_bytes(content)
        os.utime(stack.lowers[1] / name, ns=(1_000_000_000, 2_000_000_000))  # a read would move atime on
    proc = subprocess.Popen([sys.executable, "-m", "unionfs", "-f", "-d", "-o", ",".join((opts(stack), *mounts.TRANSPORT)),
                             str(stack.mnt)], stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: is_mounted(str(stack.mnt)), 10.0)
        reader = os.open(stack.mnt / "held", os.O_RDONLY)  # one READ: its pages are in the cache
        try:
            assert os.read(reader, 10) == data["held"][:10]
            for name in sizes:
                fd = os.open(stack.mnt / name, os.O_WRONLY | os.O_APPEND)
                try:
                    assert os.write(fd, b"+appended") == 9
                finally:
                    os.close(fd)
            assert os.pread(reader, 400, 0) == data["held"] + b"+appended"
        finally:
            os.close(reader)
        result = unionfs("umount", str(stack.mnt))
        assert result.returncode == 0, result.stderr
        _, log = proc.communicate(timeout=20)
    finally:
        proc.kill()
        force_unmount(stack.mnt)
    for name, content in data.items():
        if name != "held":  # as on overlayfs: appending is not reading
            assert (stack.upper / name).stat().st_atime_ns == 1_000_000_000, name
        assert (stack.upper / name).read_bytes() == content + b"+appended", name
    reads = [line for line in log.splitlines() if f" op {fp.READ} " in line]
    assert len(reads) == 1, f"READs beyond the reader's one: {reads}"


def test_reads_through_the_mount_leave_lower_atimes_alone(stack: Stack) -> None:
    """Kernel overlayfs opens its real files with O_NOATIME: reading a lower file,
    listing a lower directory and copying a file up leave the lower layer's atimes
    as they were, where relatime would have moved them on. The driver's do too."""
    bottom = stack.lowers[1]
    (bottom / "quiet").mkdir()
    entries = [bottom / "quiet", bottom / "quiet/read.txt", bottom / "quiet/copied.txt"]
    for path in entries[1:]:
        path.write_text(f"{path.name}\n")
    seen = {}
    for mount in (kernel_mount, fuse_mount):
        shutil.rmtree(stack.upper / "quiet", ignore_errors=True)
        for path in entries:
            os.utime(path, ns=(1_000_000_000, 2_000_000_000))  # atime before mtime: relatime reads move it
        with mount(stack) as mnt:
            assert (mnt / "quiet/read.txt").read_text() == "read.txt\n"
            assert sorted(os.listdir(mnt / "quiet")) == ["copied.txt", "read.txt"]
            with open(mnt / "quiet/copied.txt", "a") as f:
                f.write("more\n")
        seen[mount.__name__] = {path.name: path.stat().st_atime_ns for path in entries}
    assert seen["fuse_mount"] == seen["kernel_mount"] == dict.fromkeys(["quiet", "read.txt", "copied.txt"], 1_000_000_000)


def test_umount_of_a_dead_mount(stack: Stack, transport: str) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "unionfs", "-f", "-o", ",".join((opts(stack), *mounts.TRANSPORT)),
                             str(stack.mnt)])
    try:
        assert wait_for(lambda: is_mounted(str(stack.mnt)), 10.0)
        proc.kill()
        proc.wait()
        expect_disconnected(lambda: os.stat(stack.mnt / "top.txt"))
        result = unionfs("umount", str(stack.mnt))
        assert result.returncode == 0, result.stderr
        assert not is_mounted(str(stack.mnt))
    finally:
        force_unmount(stack.mnt)


def test_a_mount_whose_driver_stopped_answering_is_still_found_without_asking_it(stack: Stack, transport: str) -> None:
    """is_mounted (which umount asks first) must not wait for a driver that is alive but
    stopped: nothing cached answers a GETATTR of the root with attr_timeout=0.

    The stat that shows the driver stopped answering is not killed to end it: over
    io_uring the request is on the driver's ring as soon as it is made, and the
    kernel waits for its answer uninterruptibly. The driver is let go on first."""
    proc = subprocess.Popen([sys.executable, "-m", "unionfs", "-f", "-o",
                             ",".join((opts(stack), "attr_timeout=0", *mounts.TRANSPORT)), str(stack.mnt)])
    stuck: subprocess.Popen[bytes] | None = None
    try:
        assert wait_for(lambda: is_mounted(str(stack.mnt)), 10.0)
        os.kill(proc.pid, signal.SIGSTOP)
        found: list[bool] = []
        asker = threading.Thread(target=lambda: found.append(is_mounted(str(stack.mnt))), daemon=True)
        asker.start()
        asker.join(5.0)
        assert found == [True], "is_mounted waited for the stopped driver"
        stuck = subprocess.Popen([sys.executable, "-c", f"import os; os.stat({str(stack.mnt)!r})"])
        with pytest.raises(subprocess.TimeoutExpired):
            stuck.wait(2.0)  # else a stat of the root did not wait: the check proves nothing
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        if stuck is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                stuck.wait(30)  # answered now
        force_unmount(stack.mnt)  # a stat still waiting then ends with ENOTCONN
        if stuck is not None:
            stuck.kill()
            stuck.wait(10)
        proc.wait(30)


def test_umount_of_a_mount_whose_driver_stopped_ends_and_detaches_it(stack: Stack, transport: str) -> None:
    """unmount asks the driver to place its pending copy-ups first. A stopped driver
    does not answer, and over io_uring the kernel waits for that answer
    uninterruptibly: unmount must still return, detach the mount and leave nothing
    of its own waiting (asked from a thread, the question kept its process from
    exiting, SIGKILL included). The copy-up is in place once the driver goes on."""
    proc = subprocess.Popen([sys.executable, "-m", "unionfs", "-f", "-o",
                             ",".join((opts(stack), *mounts.TRANSPORT)), str(stack.mnt)])
    unmounter: subprocess.Popen[str] | None = None
    try:
        assert wait_for(lambda: is_mounted(str(stack.mnt)), 10.0)
        with open(stack.mnt / "base.txt", "a") as f:
            f.write("more\n")
        os.kill(proc.pid, signal.SIGSTOP)
        code = "import sys; from unionfs.mount import unmount; print(unmount(sys.argv[1], settle_timeout=1.0))"
        unmounter = subprocess.Popen([sys.executable, "-c", code, str(stack.mnt)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        try:
            out, err = unmounter.communicate(timeout=30)  # not killed on a timeout: it may not die
        except subprocess.TimeoutExpired:
            pytest.fail("unmount waited for the stopped driver")
        assert (unmounter.returncode, out) == (0, "False\n"), err
        assert not is_mounted(str(stack.mnt))
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        if unmounter is not None:
            unmounter.communicate(timeout=30)
        force_unmount(stack.mnt)
    assert proc.wait(30) == 0
    assert (stack.upper / "base.txt").read_text().endswith("more\n")


def test_a_plain_umount_lets_go_of_the_lower_layers_before_the_driver_ends(tmp_path: Path) -> None:
    """umount(8) returns before the driver has exited. The driver lets go of the lower
    layers as soon as it sees the connection end, while it still places a copy-up in
    the upper layer (its sync held up here for seconds): a lower layer's filesystem
    unmounted right after the union's is gone, its loop device detached, as after
    overlayfs's unmount; the copy-up is in place when the driver ends."""
    with loop_fs(tmp_path, "lowerfs", ["mkfs.ext4", "-q"], 16 << 20) as lowerfs:
        (lowerfs / "f").write_bytes(b"lower\n")
        stack = Stack((lowerfs,), tmp_path / "upper", tmp_path / "work", tmp_path / "mnt")
        for path in (stack.upper, stack.work, stack.mnt):
            path.mkdir()
        result = unionfs("-o", ",".join((opts(stack), *mounts.TRANSPORT)), str(stack.mnt),
                         env={**os.environ, "CRASHPOINT_PAUSE": "copyup.publishing:6"})
        assert result.returncode == 0, result.stderr
        try:
            pid = mounts.driver_pid(stack.mnt)
            fd = os.open(stack.mnt / "f", os.O_WRONLY | os.O_APPEND)  # a small copy-up, published after the pause
            try:
                os.write(fd, b"more\n")
            finally:
                os.close(fd)
            subprocess.run(["umount", str(stack.mnt)], check=True)
            subprocess.run(["umount", str(lowerfs)], check=True)
            assert wait_for(lambda: not mounts.loop_devices(tmp_path / "lowerfs.img"), 4), "the lower layer was held"
            assert Path(f"/proc/{pid}").exists(), "the driver ended: the test shows nothing"
            assert not (stack.upper / "f").exists()
        finally:
            force_unmount(stack.mnt)
        assert wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30)
        assert (stack.upper / "f").read_bytes() == b"lower\nmore\n"


def test_user_mistakes_are_one_line_errors(stack: Stack, tmp_path: Path) -> None:
    missing = unionfs("-o", f"lowerdir={tmp_path}/nope", str(stack.mnt))
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "nope: no such directory" in missing.stderr
    bad = unionfs("-o", "lowerdir=/tmp,bogus", str(stack.mnt))
    assert bad.returncode == 2 and "unknown option: bogus" in bad.stderr
    not_mounted = unionfs("umount", str(stack.mnt))
    assert not_mounted.returncode == 1 and "not mounted" in not_mounted.stderr
    with fuse_mount(stack):
        busy = unionfs("-o", opts(stack), str(stack.mnt))
        assert busy.returncode == 1 and "in use" in busy.stderr
        assert "Traceback" not in busy.stderr


def _options(lowers: list[Path], upper: Path, work: Path) -> str:
    return f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"


def _kernel_refuses(options: str, mnt: Path) -> bool:
    """Whether kernel overlayfs refuses to mount these layers (unmounted again if not)."""
    kernel = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(mnt)],
                            capture_output=True, text=True, timeout=30)
    if kernel.returncode == 0:
        force_unmount(mnt)
    return kernel.returncode != 0


@pytest.mark.parametrize("layout", ["lower is upper", "lower inside upper", "lower is work", "lower inside work",
                                    "work inside upper", "upper inside work", "upper inside lower",
                                    "work inside lower"])
def test_layers_that_overlap_the_writable_ones_are_refused_where_overlayfs_refuses_them(
        tmp_path: Path, layout: str) -> None:
    """A lower layer that is, or lies inside, the upper or work dir would show the union's
    own writes; upper or work inside a lower layer overlayfs takes, and so does the driver."""
    base = tmp_path / "b"
    lower, upper, work, mnt = base / "lower", base / "upper", base / "work", tmp_path / "mnt"
    for path in (lower, upper, work, mnt):
        path.mkdir(parents=True)
    (lower / "f").write_text("f\n")
    lowers, up, wk = {
        "lower is upper": ([lower, upper], upper, work),
        "lower inside upper": ([upper / "in"], upper, work),
        "lower is work": ([lower, work], upper, work),
        "lower inside work": ([work / "in"], upper, work),
        "work inside upper": ([lower], upper, upper / "in"),
        "upper inside work": ([lower], work / "in", work),
        "upper inside lower": ([base], upper, work),
        "work inside lower": ([base], upper, work),
    }[layout]
    for path in (*lowers, up, wk):
        path.mkdir(exist_ok=True)
    options = _options(lowers, up, wk)
    kernel_refused = _kernel_refuses(options, mnt)
    ours = unionfs("-o", options, str(mnt))
    if ours.returncode == 0:
        assert unionfs("umount", str(mnt)).returncode == 0
    assert (ours.returncode != 0) == kernel_refused, ours.stderr
    assert ours.stderr.count("\n") == (0 if ours.returncode == 0 else 1), ours.stderr


def test_the_same_lower_layer_twice_is_taken_as_fuse_overlayfs_takes_it(stack: Stack) -> None:
    """overlayfs refuses it; an image may hold one layer twice, and the second adds nothing."""
    twice = f"lowerdir={stack.lowers[0]}:{stack.lowers[1]}:{stack.lowers[0]},upperdir={stack.upper},workdir={stack.work}"
    result = unionfs("-o", twice, str(stack.mnt))
    assert result.returncode == 0, result.stderr
    try:
        assert sorted(os.listdir(stack.mnt)) == ["base.txt", "top.txt"]
    finally:
        assert unionfs("umount", str(stack.mnt)).returncode == 0


@pytest.mark.parametrize("how", ["work on another filesystem", "upper under a bind mount",
                                 "upper under a read-only bind mount", "both on a read-only mount"])
def test_upper_and_work_on_two_mounts_or_a_read_only_one_are_refused_as_overlayfs_refuses_them(
        tmp_path: Path, how: str) -> None:
    """The driver takes upper and work from a private copy of their common mount. A bind
    mount over just one of them is not in that copy: the union mounted, and wrote past
    a read-only bind mount."""
    lower, base, mnt = tmp_path / "lower", tmp_path / "base", tmp_path / "mnt"
    upper, work = base / "upper", base / "work"
    for path in (lower, upper, work, mnt):
        path.mkdir(parents=True)
    mounted = {"work on another filesystem": [["-t", "tmpfs", "tmpfs", str(work)]],
               "upper under a bind mount": [["--bind", str(upper), str(upper)]],
               "upper under a read-only bind mount": [["--bind", str(upper), str(upper)],
                                                      ["-o", "remount,bind,ro", str(upper)]],
               "both on a read-only mount": [["--bind", str(base), str(base)],
                                             ["-o", "remount,bind,ro", str(base)]]}[how]
    target = mounted[0][-1]
    subprocess.run(["mount", *mounted[0]], check=True, timeout=30)
    try:
        for more in mounted[1:]:
            subprocess.run(["mount", *more], check=True, timeout=30)
        assert _kernel_refuses(_options([lower], upper, work), mnt), "overlayfs mounted it"
        refused = unionfs("-o", _options([lower], upper, work), str(mnt))
        assert (refused.returncode, refused.stderr.count("\n")) == (1, 1), refused.stderr
        expected = {"work on another filesystem": "must be on the same filesystem",
                    "both on a read-only mount": f"upperdir {upper}: on a read-only mount"}
        assert expected.get(how, "must be on the same mount") in refused.stderr, refused.stderr
        assert not is_mounted(str(mnt))
        assert os.listdir(upper) == [] and os.listdir(work) == []
    finally:
        subprocess.run(["umount", target], check=True, timeout=30)


def test_a_file_or_symlink_where_the_work_dir_goes_is_replaced_as_overlayfs_replaces_it(
        stack: Stack, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "kept").write_text("not the union's\n")
    work = stack.work / "work"
    for name, make in (("file", lambda: work.write_text("in the way\n")), ("symlink", lambda: work.symlink_to(elsewhere))):
        found = {}
        for kind, mounter in (("kernel", kernel_mount), ("unionfs", fuse_mount)):
            shutil.rmtree(stack.work)
            stack.work.mkdir()
            make()
            with mounter(stack) as mnt:
                (mnt / "base.txt").write_text("copied up\n")  # through the work dir
            found[kind] = (work.is_symlink(), work.is_dir())
            assert (stack.upper / "base.txt").read_text() == "copied up\n", (name, kind)
            (stack.upper / "base.txt").unlink()
        assert found["unionfs"] == found["kernel"] == (False, True), (name, found)
        assert os.listdir(elsewhere) == ["kept"]


def test_inode_numbers_survive_copy_up_and_remount(stack: Stack) -> None:
    lower = stack.lowers[1]
    (lower / "d").mkdir()
    (lower / "d/f").write_text("x")
    (lower / "d/linked").write_text("x")
    os.link(lower / "d/linked", lower / "d/other")
    stable = ("d", "d/f", "base.txt")
    with fuse_mount(stack) as mnt:
        dev = os.stat(mnt).st_dev
        before = {p: os.lstat(mnt / p).st_ino for p in (*stable, "d/linked")}
        assert os.lstat(mnt / "d/other").st_ino == before["d/linked"]
        assert os.lstat(mnt / "d/linked").st_nlink == 2
        assert os.lstat(mnt / "d/f").st_dev == dev
        for name in ("d/f", "d/linked"):
            with open(mnt / name, "a") as f:
                f.write("y")
        os.chmod(mnt / "base.txt", 0o600)
        assert {p: os.lstat(mnt / p).st_ino for p in stable} == {p: before[p] for p in stable}
        assert {e.name: e.inode() for e in os.scandir(mnt / "d")}["f"] == before["d/f"]
        # a copy-up breaks a lower hard link: the copy is a file of its own (as overlayfs)
        assert os.lstat(mnt / "d/linked").st_ino != os.lstat(mnt / "d/other").st_ino
        assert os.lstat(mnt / "d/other").st_ino == before["d/linked"]
    assert (stack.upper / "d/f").stat().st_ino != before["d/f"]
    with fuse_mount(stack) as mnt:
        assert {p: os.lstat(mnt / p).st_ino for p in stable} == {p: before[p] for p in stable}


def test_every_listing_gives_copied_up_entries_the_numbers_they_had(stack: Stack) -> None:
    """A copied-up entry keeps its lower number in listings too (d_ino is st_ino): in the
    entries that go with their attributes and in those that go without, which most of a
    long listing is, before and after a remount."""
    lower = stack.lowers[1] / "many"
    lower.mkdir()
    names = [f"file{i:03d}" for i in range(300)]
    for name in names:
        (lower / name).write_text("")
    with fuse_mount(stack) as mnt:
        numbers = {name: os.lstat(mnt / "many" / name).st_ino for name in names}
        for name in names:
            os.chmod(mnt / "many" / name, 0o600)  # a copy-up each
        for remount in (False, True):
            if remount:
                mounts.remount_driver(stack)
            drop_caches()
            assert {e.name: e.inode() for e in os.scandir(mnt / "many")} == numbers, f"remount={remount}"


def test_layers_on_several_filesystems_never_share_an_inode_number(tmp_path: Path) -> None:
    """Files of layers on two filesystems may have one inode number there; the mount shows
    one st_dev for all, so each filesystem's numbers take a range of their own (as
    overlayfs's xino), by name, in listings, after a copy-up and after a remount."""
    with small_fs(tmp_path / "fs1", 1 << 20) as one, small_fs(tmp_path / "fs2", 1 << 20) as two:
        (one / "a").write_text("a")
        (two / "b").write_text("b")
        assert os.stat(one / "a").st_ino == os.stat(two / "b").st_ino  # fresh tmpfs number alike
        s = Stack((one, two), tmp_path / "upper", tmp_path / "work", tmp_path / "mnt")
        for path in (s.upper, s.work, s.mnt):
            path.mkdir()
        with fuse_mount(s) as mnt:
            numbers = {name: os.lstat(mnt / name).st_ino for name in ("a", "b")}
            assert numbers["a"] != numbers["b"]
            assert {e.name: e.inode() for e in os.scandir(mnt)} == numbers
            with open(mnt / "a", "a") as f:  # copied up to a third filesystem
                f.write("+")
            assert {name: os.lstat(mnt / name).st_ino for name in ("a", "b")} == numbers
            mounts.remount_driver(s)
            assert {name: os.lstat(mnt / name).st_ino for name in ("a", "b")} == numbers


def test_names_of_one_upper_file_are_one_file_after_remount(stack: Stack) -> None:
    """An upper layer that already holds hard links (left by an earlier mount, or
    unpacked there): found by a listing or by name, both names are one inode to the
    kernel, so a write through one reads back through the other, as on overlayfs."""
    seen = []
    for mount in (kernel_mount, fuse_mount):
        for path in (stack.upper, stack.work):
            shutil.rmtree(path)
            path.mkdir()
        for d in ("listed", "named"):
            (stack.upper / d).mkdir()
            (stack.upper / d / "a").write_bytes(b"upper data")
            os.link(stack.upper / d / "a", stack.upper / d / "b")
        with mount(stack) as mnt:
            os.listdir(mnt / "listed")  # its names come by READDIRPLUS, the others by LOOKUP
            seen.append([through_two_names(mnt / d, "a", "b") for d in ("listed", "named")])
    assert seen[1] == seen[0]
    assert seen[0][0] == [b"upper data"] * 2 + [b"ABper data", b"CDper data", (2, 2), 1, True, b"CDper data"]


@pytest.mark.parametrize("made", ["link", "upper"])
def test_a_name_opens_after_the_kernel_forgot_its_directory(stack: Stack, made: str) -> None:
    """The kernel keeps one inode for the names of an upper file, and forgets a
    directory once none of its entries is cached. With the file held by its other
    name (O_PATH: the driver sees no open), the name whose directory was forgotten
    must open again when the directory is looked up anew."""
    (stack.lowers[1] / "one").mkdir()
    (stack.lowers[1] / "one/f").write_text("lower\n")
    if made == "upper":  # hard links an earlier mount left
        (stack.upper / "one").mkdir()
        (stack.upper / "two").mkdir()
        (stack.upper / "one/f").write_text("upper\n")
        os.link(stack.upper / "one/f", stack.upper / "two/f")
    with fuse_mount(stack) as mnt:
        expected = (mnt / "one/f").read_text()  # the name the kernel learns first
        if made == "link":  # the lower file copied up by a LINK, which gives its second name
            (mnt / "two").mkdir()
            os.link(mnt / "one/f", mnt / "two/f")
        held = os.open(mnt / "two/f", os.O_PATH)
        try:
            drop_caches()  # one/f's dentry goes, then one's, and the kernel forgets one
            time.sleep(0.2)  # for its FORGET, which the kernel sends after the fact
            assert (mnt / "one/f").read_text() == expected
            os.utime(mnt / "one/f", ns=(1, 2))
            assert os.stat(held).st_mtime_ns == 2
        finally:
            os.close(held)


def test_a_file_given_the_inode_number_of_a_removed_one_is_one_inode_under_its_names(stack: Stack) -> None:
    """Two names of a file; the kernel forgets the first one's directory while the other
    name holds the file's inode (O_PATH), and that name is removed: the kernel keeps the
    node (one name left, as far as it knows). The first name, looked up anew, is
    removed too. A new file that the upper layer gives the freed inode number, linked
    to a second name, is one inode to the kernel under both names, not the old file's
    node under one of them (found by the stress test: an append through one name did
    not show through the other)."""
    with fuse_mount(stack) as mnt:
        for d in ("one", "two"):
            (mnt / d).mkdir()
        (mnt / "one/a").write_bytes(b"old file")
        os.link(mnt / "one/a", mnt / "two/b")
        number = os.stat(stack.upper / "one/a").st_ino
        held = os.open(mnt / "two/b", os.O_PATH)
        try:
            drop_caches()  # a's dentry goes, then one's, and the kernel forgets one
            time.sleep(0.2)  # for its FORGET, which the kernel sends after the fact
            os.unlink(mnt / "two/b")
            os.unlink(mnt / "one/a")  # one and a looked up anew: a file of one name now
            for i in range(100):  # the upper filesystem gives the freed number again
                (mnt / f"one/c{i}").write_bytes(b"new")
                if os.stat(stack.upper / f"one/c{i}").st_ino == number:
                    break
            else:
                pytest.fail("the upper filesystem did not give the inode number again")
            os.link(mnt / f"one/c{i}", mnt / "two/d")
            with open(mnt / "two/d", "ab") as f:
                f.write(b" data")
            assert (mnt / f"one/c{i}").read_bytes() == b"new data"
            assert os.stat(mnt / f"one/c{i}").st_nlink == 2
        finally:
            os.close(held)


@pytest.mark.usefixtures("transport")
def test_a_listing_slow_to_reach_the_kernel_gives_no_stale_size_to_a_file_written_meanwhile(stack: Stack) -> None:
    """With the writeback cache the kernel keeps a file's size itself, and takes it
    from the driver only when it makes the file's inode: from a LOOKUP, or from an
    entry of a READDIRPLUS. A listing answered while the file was open for writing,
    whose answer reached the kernel after the writer had appended, closed, and the
    kernel had forgotten the file, would make its inode with the size from before
    the append, and reads through it would end there (found by the stress test)."""
    (stack.lowers[1] / "dir").mkdir()
    with fuse_mount(stack, env={"CRASHPOINT_PAUSE": "readdirplus.answered:1.5"}) as mnt:
        (mnt / "dir/f").write_bytes(b"0123456789")
        writer = os.open(mnt / "dir/f", os.O_WRONLY | os.O_APPEND)
        try:
            lister = threading.Thread(target=os.listdir, args=(mnt / "dir",))
            lister.start()
            time.sleep(0.5)  # the listing is answered (the file's size in it), and held up
            os.write(writer, b"abcdefghij")
        finally:
            os.close(writer)
        drop_caches()  # the kernel forgets the file before the listing's answer comes
        lister.join()
        assert (mnt / "dir/f").read_bytes() == b"0123456789abcdefghij"
        assert os.stat(mnt / "dir/f").st_size == 20


def appended_while_answered(asker: threading.Thread, path: Path) -> None:
    """Start asker, whose request's answer the driver holds up (CRASHPOINT_PAUSE), append
    ten bytes to path meanwhile, let the kernel forget the file, then let the answer in."""
    asker.start()
    time.sleep(0.5)  # the request is answered (the file's size in it), and held up
    with open(path, "ab") as f:
        f.write(b"abcdefghij")
    drop_caches()
    asker.join()


@pytest.mark.usefixtures("transport")
def test_a_listing_slow_to_reach_the_kernel_gives_no_stale_size_to_a_file_opened_after_it(stack: Stack) -> None:
    """The same, with the file opened for writing only once the listing was answered
    (by a name the kernel still had, so without a LOOKUP that would wait for the
    listing): its RELEASE, after which the kernel may forget it, waits until the
    listing's answer is handed over, and the kernel updates the inode it still has."""
    (stack.lowers[1] / "dir").mkdir()
    with fuse_mount(stack, env={"CRASHPOINT_PAUSE": "readdirplus.answered:1.5"}) as mnt:
        (mnt / "dir/f").write_bytes(b"0123456789")
        drop_caches()
        os.stat(mnt / "dir/f")  # the name is cached, the listing not
        appended_while_answered(threading.Thread(target=os.listdir, args=(mnt / "dir",)), mnt / "dir/f")
        assert (mnt / "dir/f").read_bytes() == b"0123456789abcdefghij"
        assert os.stat(mnt / "dir/f").st_size == 20


@pytest.mark.usefixtures("transport")
def test_a_lookup_slow_to_reach_the_kernel_gives_no_stale_size_to_a_hard_link_written_through_another_name(
        stack: Stack) -> None:
    """A LOOKUP of one name of an upper file answered, then the file appended to
    through its other name in another directory and closed: the kernel must not
    make the file's inode anew from the LOOKUP's size once it has forgotten it
    (the stress test found this through a hard link's two names)."""
    (stack.lowers[1] / "one").mkdir()
    (stack.lowers[1] / "two").mkdir()
    with fuse_mount(stack, env={"CRASHPOINT_PAUSE": "lookup.answered:1.5"}) as mnt:
        (mnt / "one/a").write_bytes(b"0123456789")
        os.link(mnt / "one/a", mnt / "two/b")
        drop_caches()
        os.stat(mnt / "two/b")
        os.stat(mnt / "one")  # so that the LOOKUP held up is a's
        appended_while_answered(threading.Thread(target=os.stat, args=(mnt / "one/a",)), mnt / "two/b")
        assert (mnt / "one/a").read_bytes() == b"0123456789abcdefghij"
        assert os.stat(mnt / "two/b").st_size == 20


def test_name_length_limit_is_reported_and_enforced(stack: Stack) -> None:
    with fuse_mount(stack) as mnt:
        assert os.statvfs(mnt).f_namemax == 255
        (mnt / ("n" * 255)).write_text("ok")
        with pytest.raises(OSError) as exc:
            (mnt / ("n" * 256)).write_text("too long")
        assert exc.value.errno == errno.ENAMETOOLONG


def test_statfs_answers_for_the_upper_layers_filesystem_as_overlayfs_does(tmp_path: Path) -> None:
    """statfs through the mount answers for the filesystem of the upper layer, and for a
    read-only union for that of the top lower layer, as overlayfs's (ovl_statfs): its
    sizes, its free blocks and inodes, and those left to users (ext4 keeps some for
    root), not a lower layer's on another filesystem."""
    def counts(path: Path) -> tuple[int, ...]:
        st = os.statvfs(path)
        return (st.f_bsize, st.f_blocks, st.f_bfree, st.f_bavail, st.f_files, st.f_ffree, st.f_namemax)

    below = tmp_path / "below"
    below.mkdir()
    (below / "f").write_text("f\n")
    with loop_fs(tmp_path, "fs", ["mkfs.ext4", "-q", "-m", "5"], 32 << 20) as fs:
        for read_only in (False, True):
            for mount_with in (kernel_mount, fuse_mount):
                name = f"{mount_with.__name__}-{'ro' if read_only else 'rw'}"
                layers = (fs / name / "top", below)
                s = Stack(layers, fs / name / "upper", fs / name / "work", tmp_path / name / "mnt")
                for path in (layers[0], s.upper, s.work, s.mnt):
                    path.mkdir(parents=True)
                with mount_with(s, read_only=read_only) as mnt:
                    before, shown, after = counts(fs), counts(mnt), counts(fs)
                    assert shown in (before, after), name  # (a write-back meanwhile changes the counts)
                    assert shown[2] != shown[3]  # the blocks kept for root: bfree is not bavail


def test_paths_up_to_path_max(tmp_path: Path) -> None:
    """A path near PATH_MAX below the mount point, in layers whose own paths are long:
    layer path + path is beyond PATH_MAX, so only calls relative to the layers' fds work."""
    layers = Stack.make(tmp_path / "/".join(["b" * 200] * 3))
    stack = Stack(layers.lowers, layers.upper, layers.work, tmp_path / "mnt")
    stack.mnt.mkdir()
    parts = ["d" * 200] * 19
    deep = stack.lowers[1]
    fd = os.open(deep, os.O_RDONLY)
    for part in parts:
        os.mkdir(part, dir_fd=fd)
        nfd = os.open(part, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
        f.write("deep")
    os.close(fd)
    rel = "/".join(parts) + "/f"
    assert len(rel) < 4096 - 1 < len(str(deep)) + len(rel)
    with fuse_mount(stack) as mnt:
        dfd = os.open(mnt, os.O_RDONLY)
        try:
            fd = os.open(rel, os.O_RDWR | os.O_APPEND, dir_fd=dfd)
            os.write(fd, b"er")
            os.close(fd)
            fd = os.open(rel, os.O_RDONLY, dir_fd=dfd)
            assert os.read(fd, 100) == b"deeper"
            os.close(fd)
            os.mkdir(rel[: -len("f")] + "new", dir_fd=dfd)
        finally:
            os.close(dfd)
    fd = os.open(stack.upper, os.O_RDONLY)  # the copy-up and the new directory are in the upper layer
    try:
        with open(os.open(rel, os.O_RDONLY, dir_fd=fd), "rb") as f:
            assert f.read() == b"deeper"
        assert stat.S_ISDIR(os.stat(rel[: -len("f")] + "new", dir_fd=fd).st_mode)
    finally:
        os.close(fd)


def test_permissions_are_the_kernels_and_new_files_the_callers(tmp_path: Path) -> None:
    reachable = Path(tempfile.mkdtemp(prefix="unionfs-perm-"))  # other users can't enter tmp_path
    os.chmod(reachable, 0o755)
    try:
        check_permissions(Stack(Stack.make(tmp_path).lowers, tmp_path / "upper", tmp_path / "work", reachable))
    finally:
        force_unmount(reachable)
        os.rmdir(reachable)


def check_permissions(stack: Stack) -> None:
    (stack.lowers[1] / "base.txt").write_text("base\n")
    shared = stack.lowers[1] / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    os.chmod(stack.lowers[1] / "base.txt", 0o644)
    as_user = ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups"]
    with fuse_mount(stack, "allow_other") as mnt:
        ok = subprocess.run([*as_user, "sh", "-c", f"umask 022; echo hi > {mnt}/shared/mine && mkdir {mnt}/shared/sub"], capture_output=True, text=True)
        assert ok.returncode == 0, ok.stderr
        st = os.lstat(mnt / "shared/mine")
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o644)
        assert os.lstat(stack.upper / "shared/sub").st_uid == 1000
        denied = subprocess.run([*as_user, "sh", "-c", f"echo x >> {mnt}/base.txt"], capture_output=True, text=True)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        assert not (stack.upper / "base.txt").exists()
    with fuse_mount(stack) as mnt:  # without allow_other, other users get nothing
        other = subprocess.run([*as_user, "ls", str(mnt)], capture_output=True, text=True)
        assert other.returncode != 0 and "Permission denied" in other.stderr


def test_private_xattrs_never_show(stack: Stack) -> None:
    (stack.lowers[1] / "d").mkdir()
    (stack.lowers[1] / "d/x").write_text("x")
    with fuse_mount(stack) as mnt:
        os.rename(mnt / "d", mnt / "e")  # writes a redirect and an origin in the upper
        os.setxattr(mnt / "e", "user.mine", b"1")
        assert os.listxattr(mnt / "e") == ["user.mine"]
        assert any(n.startswith("trusted.") for n in os.listxattr(stack.upper / "e"))
        for name in ("user.overlay.opaque", "trusted.unionfs.origin"):  # the other overlay prefix, the driver's own
            with pytest.raises(OSError) as exc:
                os.setxattr(mnt / "e", name, b"y")
            assert exc.value.errno == errno.EPERM
        with pytest.raises(OSError) as exc:
            os.getxattr(mnt / "e", "trusted.overlay.redirect")  # the record is there, escaped it is not
        assert exc.value.errno == errno.ENODATA
        os.setxattr(mnt / "e", "trusted.overlay.opaque", b"y")  # kept escaped, as overlayfs keeps it: no marker here
        assert os.getxattr(stack.upper / "e", "trusted.overlay.overlay.opaque") == b"y"
        assert sorted(os.listdir(mnt / "e")) == ["x"]
        assert sorted(os.listxattr(mnt / "e")) == ["trusted.overlay.opaque", "user.mine"]


def test_upper_written_by_the_driver_reads_the_same_under_kernel_overlayfs(stack: Stack) -> None:
    lower = stack.lowers[1]
    for rel in ("a/x", "a/y", "b/z", "c"):
        (lower / rel).parent.mkdir(parents=True, exist_ok=True)
        (lower / rel).write_text(rel)
    with fuse_mount(stack) as mnt:
        os.unlink(mnt / "a/x")
        os.rename(mnt / "b", mnt / "b2")
        (mnt / "c").write_text("changed")
        os.unlink(mnt / "base.txt")
        os.mkdir(mnt / "base.txt")
        ours = snapshot(mnt)
    with kernel_mount(stack, "redirect_dir=on") as mnt:
        assert snapshot(mnt) == ours


def snapshot(root: Path) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            out[rel] = ("d", "") if path.is_dir() else ("f", path.read_text())
    return out


def test_listing_stays_consistent_while_entries_change(stack: Stack) -> None:
    lower = stack.lowers[1] / "busy"
    lower.mkdir()
    for i in range(300):
        (lower / f"old{i}").write_text("")
    with fuse_mount(stack) as mnt:
        stop = threading.Event()

        def churn() -> None:
            i = 0
            while not stop.is_set():
                (mnt / f"busy/new{i}").write_text("")
                if i % 2:
                    os.unlink(mnt / f"busy/new{i - 1}")
                i += 1

        t = threading.Thread(target=churn)
        t.start()
        try:
            for _ in range(30):
                names = os.listdir(mnt / "busy")
                assert len(names) == len(set(names)), "duplicate names in one listing"
                assert {f"old{i}" for i in range(300)} <= set(names)
        finally:
            stop.set()
            t.join()


def test_listing_continued_after_copy_ups_carries_the_new_attributes(stack: Stack) -> None:
    """READDIRPLUS sends each entry's attributes; a listing continued after its
    entries were copied up must send the copies' attributes, not the lower
    files' it saw when the listing began (the kernel would keep those)."""
    lower = stack.lowers[1] / "many"
    lower.mkdir()
    names = [f"file{i:04d}" for i in range(3000)]
    for name in names:
        (lower / name).write_text("")
        os.chmod(lower / name, 0o644)
    with fuse_mount(stack, "volatile") as mnt:
        with os.scandir(mnt / "many") as it:
            first = next(it).name  # the first getdents reads part of the listing only
            for name in names:
                if name != first:
                    os.chmod(mnt / "many" / name, 0o600)  # a copy-up each
            rest = {entry.name for entry in it}  # READDIRPLUS continued after the copy-ups
        assert rest | {first} == set(names)
        modes = {name: stat.S_IMODE(os.stat(mnt / "many" / name).st_mode) for name in names}
    stale = sorted(name for name, mode in modes.items() if mode != (0o644 if name == first else 0o600))
    assert not stale, f"{len(stale)} entries show the lower file's mode: {stale[:5]}"


def test_a_listing_repeated_at_once_shows_what_changed_through_the_mount(stack: Stack) -> None:
    """A listing asked for again while no name changed gives plain entries for
    what the kernel was just given attributes of (handlers ``_described_up_to``):
    changes of those files through the mount, which name nothing new, must
    show all the same, as the kernel learnt them from its own requests."""
    lower = stack.lowers[1] / "d"
    lower.mkdir()
    names = [f"f{i:02d}" for i in range(40)]
    for name in names:
        (lower / name).write_text("x")
    with fuse_mount(stack) as mnt:
        d = mnt / "d"
        for name in names:
            os.chmod(d / name, 0o644)  # copied up: later changes name nothing new
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            first = [name for name, _ in _getdents(fd, 4096) if name in names]  # one READDIRPLUS of 4 KiB: part of it
        finally:
            os.close(fd)
        assert 5 < len(first) < len(names)  # the kernel's listing is not complete: it asks again from the start
        expected = {}
        for i, name in enumerate(names):
            with open(d / name, "ab") as f:
                f.write(b"y" * i)
            os.chmod(d / name, 0o600 | (i % 2) * 0o040)
            expected[name] = (1 + i, 0o600 | (i % 2) * 0o040)
        os.truncate(d / first[0], 0)
        expected[first[0]] = (0, expected[first[0]][1])
        listed = {e.name: e.stat(follow_symlinks=False) for e in os.scandir(d)}  # the first ones plain now
        shown = {name: (st.st_size, stat.S_IMODE(st.st_mode)) for name, st in listed.items()}
        assert shown == expected


def test_a_listing_started_over_on_the_same_open_shows_what_changed(tmp_path: Path) -> None:
    """A listing started again from the start on the same open directory (rewinddir; a
    second ``os.listdir`` of one descriptor) shows the names made and removed since the
    first pass, as overlayfs's does (ovl_dir_reset), not the first pass again."""
    listed = []
    for mount_with in (kernel_mount, fuse_mount):
        s = Stack.make(tmp_path, prefix=mount_with.__name__ + "-")
        (s.lowers[1] / "d").mkdir()
        (s.lowers[1] / "d/old").write_text("")
        with mount_with(s) as mnt:
            fd = os.open(mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
            try:
                first = sorted(os.listdir(fd))
                (mnt / "d/new").write_text("")
                os.unlink(mnt / "d/old")
                listed.append((first, sorted(os.listdir(fd))))
            finally:
                os.close(fd)
    assert listed == [(["old"], ["new"])] * 2


def _getdents(fd: int, size: int) -> list[tuple[str, int]]:
    """One getdents64 call with a buffer of size bytes: [(name, d_off)]."""
    number = {"x86_64": 217, "aarch64": 61}[platform.machine()]
    buf = ctypes.create_string_buffer(size)
    n = _LIBC.syscall(number, fd, buf, size)
    if n < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    out, pos = [], 0
    while pos < n:
        _, off, reclen = struct.unpack_from("QqH", buf.raw, pos)
        out.append((buf.raw[pos + 19:pos + reclen].split(b"\0", 1)[0].decode(), off))
        pos += reclen
    return out


def test_a_listing_resumed_from_before_an_unlink_does_not_bring_the_name_back(stack: Stack) -> None:
    """The kernel keeps listings (FOPEN_CACHE_DIR) and fills its cache with what
    any open's READDIR answers at the position the fill has reached. An open
    that resumes a listing begun before an unlink must not put the removed name
    into a cache begun after it, where every later listing would show it."""
    lower = stack.lowers[1] / "dir"
    lower.mkdir()
    for i in range(20):
        (lower / f"f{i:02d}").write_text("")  # dirents of 24 bytes each, as are . and ..
    with fuse_mount(stack) as mnt:
        a = os.open(mnt / "dir", os.O_RDONLY | os.O_DIRECTORY)
        try:
            first = []
            while chunk := _getdents(a, 1 << 16):  # A's pass: the driver's snapshot, the kernel's cache
                first += chunk
            assert len(first) == 22
            keep = 4  # A goes back to just after its 4th entry
            os.lseek(a, first[keep - 1][1], os.SEEK_SET)
            victim = first[-1][0]
            os.unlink(mnt / "dir" / victim)
            b = os.open(mnt / "dir", os.O_RDONLY | os.O_DIRECTORY)
            try:
                # A second open that kept listings too would find the cache out of date and
                # start it again; the kernel caches one entry more than fits in B's buffer,
                # so that fill would stop where A stands, for A's old pass to go on with.
                assert len(_getdents(b, 24 * (keep - 1))) == keep - 1
            finally:
                os.close(b)
            resumed = []
            while chunk := _getdents(a, 1 << 16):  # A resumes where the fill stands
                resumed += chunk
        finally:
            os.close(a)
        assert {name for name, _ in resumed} <= {name for name, _ in first[keep:]}
        assert victim not in os.listdir(mnt / "dir")  # a listing begun after the unlink


@pytest.mark.parametrize("how", ["truncate", "append"])  # a copy without data, a small copy published later
def test_a_reader_opened_before_a_copy_up_reads_the_copy_as_on_kernel_overlayfs(stack: Stack, how: str) -> None:
    """overlayfs swaps the real file under a file open for reading when another open
    copies it up. Here the kernel may drop its cached pages of the file, and the
    next READ must come from the copy, not from the lower file the reader opened:
    that read back the old bytes, padded with zeros to the new size."""
    (stack.lowers[1] / "r").write_bytes(b"lower data\n")

    def run(mnt: Path) -> list[bytes]:
        reader = os.open(mnt / "r", os.O_RDONLY)
        try:
            seen = [os.pread(reader, 100, 0)]
            flags = os.O_WRONLY | (os.O_TRUNC if how == "truncate" else os.O_APPEND)
            writer = os.open(mnt / "r", flags)
            try:
                os.write(writer, b"upper data, longer\n")
                os.fsync(writer)
            finally:
                os.close(writer)
            seen.append(os.pread(reader, 100, 0))
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as f:
                f.write("1")  # the page cache: the next read of the reader is a READ
            seen.append(os.pread(reader, 100, 0))
            return seen
        finally:
            os.close(reader)

    kernel = Stack.make(stack.mnt.parent / "kernel")
    (kernel.lowers[1] / "r").write_bytes(b"lower data\n")
    with kernel_mount(kernel) as mnt:
        expected = run(mnt)
    with fuse_mount(stack) as mnt:
        assert run(mnt) == expected
    assert expected[0] == b"lower data\n" and expected[-1].endswith(b"upper data, longer\n")


def test_a_shared_mapping_made_before_a_copy_up_shows_the_copy(stack: Stack) -> None:
    """A read-only shared mapping of a lower file sees what another open writes after
    copying the file up: the kernel keeps one page cache for the FUSE file. Overlayfs's
    mapping stays on the lower file (the "non-standard behavior" its documentation
    lists), checked here too, so that a kernel that changes this is noticed."""
    def run(mnt: Path) -> list[bytes]:
        reader = os.open(mnt / "r", os.O_RDONLY)
        try:
            with mmap.mmap(reader, 0, mmap.MAP_SHARED, mmap.PROT_READ) as mapped:
                seen = [bytes(mapped[:10])]
                writer = os.open(mnt / "r", os.O_WRONLY)
                try:
                    os.write(writer, b"UPPER")
                    os.fsync(writer)
                finally:
                    os.close(writer)
                seen.append(bytes(mapped[:10]))
                return seen
        finally:
            os.close(reader)

    kernel = Stack.make(stack.mnt.parent / "kernel")
    for s in (stack, kernel):
        (s.lowers[1] / "r").write_bytes(b"lower data\n")
    with kernel_mount(kernel) as mnt:
        assert run(mnt) == [b"lower data"] * 2
    with fuse_mount(stack) as mnt:
        assert run(mnt) == [b"lower data", b"UPPER data"]


def test_racing_writers_copy_up_once(stack: Stack) -> None:
    (stack.lowers[1] / "shared.bin").write_bytes(b"\0" * (4 << 20))
    with fuse_mount(stack) as mnt:
        barrier = threading.Barrier(6)

        def write(i: int) -> None:
            barrier.wait()
            fd = os.open(mnt / "shared.bin", os.O_WRONLY)
            os.pwrite(fd, bytes([i + 1]) * 1000, i * 1000)
            os.close(fd)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        data = (mnt / "shared.bin").read_bytes()
    for i in range(6):
        assert data[i * 1000 : (i + 1) * 1000] == bytes([i + 1]) * 1000, f"write {i} was lost"
    assert len(data) == 4 << 20


def test_open_flags_and_utime_omit(stack: Stack) -> None:
    os.utime(stack.lowers[1] / "base.txt", ns=(1_000_000_000, 2_000_000_000))
    with fuse_mount(stack) as mnt:
        with pytest.raises(FileExistsError):
            os.open(mnt / "base.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        subprocess.run(["touch", "-m", "-d", "2001-01-01 00:00:00", str(mnt / "base.txt")], check=True)
        st = os.stat(mnt / "base.txt")
        assert st.st_atime_ns == 1_000_000_000, "UTIME_OMIT changed atime"
        assert time.gmtime(st.st_mtime).tm_year == 2001
        fd = os.open(mnt / "top.txt", os.O_WRONLY | os.O_TRUNC)
        os.close(fd)
        assert (mnt / "top.txt").read_text() == "" and (stack.lowers[0] / "top.txt").read_text() == "top\n"
        with open(mnt / "base.txt", "a") as f:
            f.write("more\n")
            f.flush()
            os.fsync(f.fileno())
        assert (mnt / "base.txt").read_text() == "base\nmore\n"


def test_o_direct_reads_and_writes_work_as_on_kernel_overlayfs(stack: Stack) -> None:
    """O_DIRECT is between the caller and the kernel: the driver's own fd must not
    have it, or its unaligned buffers fail (EINVAL)."""
    block = bytes(range(256)) * 16  # 4 KiB, the alignment O_DIRECT wants
    results = []
    for mount in (kernel_mount, fuse_mount):
        for name in ("base.txt", "new.bin"):  # a copy-up, and a new file
            (stack.upper / name).unlink(missing_ok=True)
        with mount(stack) as mnt:
            got = []
            for name in ("base.txt", "new.bin"):
                buf = mmap.mmap(-1, len(block))
                buf[:] = block
                fd = os.open(mnt / name, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
                try:
                    assert os.pwritev(fd, [buf], 0) == len(block)
                    buf[:] = bytes(len(block))
                    n = os.preadv(fd, [buf], 0)
                    got.append((name, n, bytes(buf[:n]) == block))
                finally:
                    os.close(fd)
            results.append(got)
    assert results[1] == results[0] == [("base.txt", 4096, True), ("new.bin", 4096, True)]


def test_reads_of_every_size_return_the_layer_files_bytes(stack: Stack, transport: str) -> None:
    """A READ's data is read straight into the buffer its reply goes out from:
    replies of a megabyte, of one page, and short at the end of the file."""
    mib = 1 << 20
    data = os.urandom(3 * mib + 4097)
    (stack.lowers[1] / "big.bin").write_bytes(data)
    with fuse_mount(stack) as mnt:
        Path("/proc/sys/vm/drop_caches").write_text("3")  # so that reads are READ requests
        assert (mnt / "big.bin").read_bytes() == data  # readahead: READs of a megabyte, the last one short
        fd = os.open(mnt / "big.bin", os.O_RDONLY | os.O_DIRECT)  # READs as the caller asks them
        try:
            buf = mmap.mmap(-1, 2 * mib)
            for offset, size in ((0, 4096), (mib - 4096, 2 * mib), (3 * mib, 8192)):
                n = os.preadv(fd, [memoryview(buf)[:size]], offset)
                assert n == min(size, len(data) - offset)
                assert buf[:n] == data[offset:offset + n]
        finally:
            os.close(fd)


def test_second_driver_on_a_workdir_in_use_is_refused(stack: Stack, tmp_path: Path) -> None:
    """Two drivers on one work directory would remove each other's half-built entries;
    the second waits 5 s for the first before it gives up."""
    other = tmp_path / "other-mnt"
    other.mkdir()
    with fuse_mount(stack) as mnt:
        try:
            started = time.monotonic()
            result = unionfs("-o", opts(stack), str(other))
            waited = time.monotonic() - started
            assert not os.path.ismount(other)
        finally:
            force_unmount(other)  # should it have mounted after all
        assert result.returncode != 0
        assert result.stderr.strip() == f"unionfs: workdir {stack.work} is in use by another mount"
        assert waited >= 5.0
        assert (mnt / "base.txt").read_text() == "base\n"  # the first mount is unharmed
    with fuse_mount(stack) as mnt:  # free again once the first driver is gone
        assert (mnt / "top.txt").read_text() == "top\n"


def test_a_workdir_let_go_within_the_wait_is_taken(stack: Stack) -> None:
    """A driver just unmounted may still be placing its last copy-ups, holding the work
    directory: the next driver on it waits for it rather than fail."""
    work = stack.work / "work"
    work.mkdir(mode=0o700)
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the lock the drivers take
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        letting_go = threading.Timer(1.5, fcntl.flock, (fd, fcntl.LOCK_UN))
        started = time.monotonic()
        letting_go.start()
        try:
            with fuse_mount(stack) as mnt:
                waited = time.monotonic() - started
                (mnt / "base.txt").write_text("changed\n")
        finally:
            letting_go.cancel()
            letting_go.join()
    finally:
        os.close(fd)
    assert waited >= 1.5
    assert (stack.upper / "base.txt").read_text() == "changed\n"  # the driver had the work directory


def test_special_files(stack: Stack) -> None:
    with fuse_mount(stack) as mnt:
        os.mkfifo(mnt / "fifo")
        os.mknod(mnt / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        assert stat.S_ISFIFO(os.lstat(mnt / "fifo").st_mode)
        assert os.lstat(mnt / "null").st_rdev == os.makedev(1, 3)
        with open(mnt / "null", "w") as f:
            f.write("discarded")
        os.symlink("top.txt", mnt / "link")
        assert os.readlink(mnt / "link") == "top.txt" and (mnt / "link").read_text() == "top\n"
        os.link(mnt / "top.txt", mnt / "hard")
        assert os.lstat(mnt / "hard").st_ino == os.lstat(mnt / "top.txt").st_ino


def test_unlinked_open_file_stays_readable_and_leaves_no_trace(stack: Stack) -> None:
    with fuse_mount(stack) as mnt:
        (mnt / "new").write_text("new data")
        keep = [open(mnt / name) for name in ("new", "base.txt")]
        try:
            os.unlink(mnt / "new")
            os.unlink(mnt / "base.txt")
            assert sorted(os.listdir(mnt)) == ["top.txt"]
            assert [f.read() for f in keep] == ["new data", "base\n"]
        finally:
            for f in keep:
                f.close()
    assert sorted(os.listdir(stack.upper)) == ["base.txt"]  # only the whiteout
    assert stat.S_ISCHR(os.lstat(stack.upper / "base.txt").st_mode)


def test_unknown_ioctl_is_enotty_as_on_kernel_overlayfs(stack: Stack) -> None:
    """Every open() in Python asks TCGETS (isatty); an EIO there reads as a failing disk."""

    def ioctl_errno(mnt: Path) -> int:
        fd = os.open(mnt / "base.txt", os.O_RDONLY)
        try:
            fcntl.ioctl(fd, termios.TCGETS, bytes(64))
        except OSError as exc:
            return exc.errno or 0
        finally:
            os.close(fd)
        return 0

    with kernel_mount(stack) as mnt:
        expected = ioctl_errno(mnt)
    with fuse_mount(stack) as mnt:
        assert ioctl_errno(mnt) == expected == errno.ENOTTY


def test_an_xattr_whiteout_in_an_unmarked_directory_is_the_empty_file_it_looks_like(tmp_path: Path) -> None:
    """A documented difference: overlayfs reads overlay.whiteout only in a directory marked
    opaque=x, yet hides such a file from lookups while it lists it; the driver shows the
    empty file it is, consistently, which hides the layers' entries below it as any file does."""
    lowers = (tmp_path / "top", tmp_path / "bottom")
    for root in lowers:
        (root / "d").mkdir(parents=True)
    (lowers[0] / "d" / "w").write_bytes(b"")
    os.setxattr(lowers[0] / "d" / "w", "trusted.overlay.whiteout", b"")
    (lowers[1] / "d" / "w").write_text("below\n")
    kernel = Stack(lowers, *(tmp_path / f"k-{n}" for n in ("upper", "work", "mnt")))
    driver = Stack(lowers, *(tmp_path / f"d-{n}" for n in ("upper", "work", "mnt")))
    for path in (kernel.upper, kernel.work, kernel.mnt, driver.upper, driver.work, driver.mnt):
        path.mkdir()
    with kernel_mount(kernel) as mnt:
        assert os.listdir(mnt / "d") == ["w"]
        assert not os.path.lexists(mnt / "d" / "w")
    with fuse_mount(driver) as mnt:
        assert os.listdir(mnt / "d") == ["w"]
        st = os.lstat(mnt / "d" / "w")
        assert stat.S_ISREG(st.st_mode) and st.st_size == 0
        assert (mnt / "d" / "w").read_bytes() == b""


def test_collapse_insert_and_fiemap_are_refused_by_the_kernels_fuse_code(stack: Stack) -> None:
    """A documented difference: overlayfs passes these to the upper filesystem (ext4 here
    takes them); the kernel's FUSE code answers EOPNOTSUPP without asking the driver."""
    collapse, insert = 0x08, 0x20  # FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE
    fiemap = 0xC020660B  # FS_IOC_FIEMAP, with room for the header and no extents

    def answers(mnt: Path) -> list[int | None]:
        (mnt / "big").write_bytes(os.urandom(64 * 1024))
        fd = os.open(mnt / "big", os.O_RDWR)
        found: list[int | None] = []
        calls: list[Callable[[], object]] = [
            lambda: syscalls.fallocate(fd, collapse, 0, 4096),
            lambda: syscalls.fallocate(fd, insert, 0, 4096),
            lambda: fcntl.ioctl(fd, fiemap, struct.pack("=QQIIII", 0, 1 << 20, 0, 0, 0, 0)),
        ]
        try:
            for call in calls:
                try:
                    call()
                    found.append(None)
                except OSError as exc:
                    found.append(exc.errno)
        finally:
            os.close(fd)
        return found

    with kernel_mount(stack) as mnt:
        assert answers(mnt) == [None, None, None]  # the upper filesystem (ext4) takes all three
    with fuse_mount(stack) as mnt:
        assert answers(mnt) == [errno.EOPNOTSUPP] * 3


def test_seek_to_the_end_of_a_directory_is_answered_by_the_kernel(stack: Stack) -> None:
    """A documented difference: overlayfs refuses lseek(SEEK_END) on a directory, and the
    kernel's FUSE code answers it with the size it holds, without asking the driver."""
    def seek_end(mnt: Path) -> int:
        fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        except OSError as exc:
            return -(exc.errno or 0)
        finally:
            os.close(fd)

    with kernel_mount(stack) as mnt:
        assert seek_end(mnt) == -errno.EINVAL
    with fuse_mount(stack) as mnt:
        assert seek_end(mnt) == os.stat(mnt).st_size


@pytest.mark.parametrize("option", [None, "userxattr", "whiteout=overlay"])
def test_a_user_mounts_through_fusermount3_and_sigterm_unmounts(transport: str, option: str | None) -> None:
    """Not root: fusermount3 mounts and hands the device back; whiteouts take the OCI form,
    or with userxattr overlayfs's, its records in user.overlay.* (a 0/0 device is one
    that any user may make). Asked for overlayfs's form alone, a user gets the same: the
    records cannot go to trusted.*."""
    userxattr = option is not None
    base = Path(tempfile.mkdtemp(prefix="unionfs-user-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        lower, upper, work, mnt = (base / name for name in ("lower", "upper", "work", "mnt"))
        for path in (lower, upper, work, mnt, lower / "dir"):
            path.mkdir()
        (lower / "old.txt").write_text("old\n")
        (lower / "gone.txt").write_text("gone\n")
        (lower / "dir" / "f").write_text("f\n")
        (lower / "locked.txt").write_text("locked\n")
        os.chmod(lower / "locked.txt", 0)
        for path in (upper, work, mnt, lower / "old.txt", lower / "dir", lower / "dir" / "f", lower / "locked.txt"):
            os.chown(path, NOBODY, NOBODY)
        options = [f"lowerdir={lower},upperdir={upper},workdir={work}", *mounts.TRANSPORT, *([option] if option else [])]
        with mounts.device_open_to_users():
            pid, ready = mounts.serve_as(NOBODY, ",".join(options), mnt)
        try:
            assert ready == "ready", ready
            with open("/proc/self/mountinfo", encoding="utf-8") as f:
                line = next(line for line in f if f" {mnt} " in line)
            assert "fuse.unionfs" in line and f"user_id={NOBODY}" in line
            assert errno_as(NOBODY, lambda: (mnt / "old.txt").write_text("new\n")) is None
            assert errno_as(NOBODY, lambda: os.unlink(mnt / "gone.txt")) is None
            for remake in (lambda: os.unlink(mnt / "dir" / "f"), lambda: os.rmdir(mnt / "dir"), lambda: os.mkdir(mnt / "dir")):
                assert errno_as(NOBODY, remake) is None
            assert errno_as(0, lambda: os.stat(mnt / "old.txt")) == errno.EACCES  # no allow_other: the user's alone
            # the copy-up reads with the driver's own rights, which a mode of 0 leaves out, as in fuse-overlayfs
            assert errno_as(NOBODY, lambda: os.chmod(mnt / "locked.txt", 0o600)) == errno.EACCES
        finally:
            os.kill(pid, signal.SIGTERM)
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert not is_mounted(str(mnt))
        assert (upper / "old.txt").read_text() == "new\n" and (upper / "old.txt").stat().st_uid == NOBODY
        assert (lower / "gone.txt").exists() and os.listdir(mnt) == []
        assert not (upper / "locked.txt").exists() and stat.S_IMODE((lower / "locked.txt").stat().st_mode) == 0
        if userxattr:
            assert stat.S_ISCHR(os.lstat(upper / "gone.txt").st_mode) and os.lstat(upper / "gone.txt").st_rdev == 0
            assert os.getxattr(upper / "dir", "user.overlay.opaque") == b"y" and os.listdir(upper / "dir") == []
            assert not [name for name in os.listxattr(upper / "dir") if name.startswith("trusted.")]
        else:
            assert (upper / ".wh.gone.txt").exists() and (upper / ".wh.dir").exists()  # hides only the layers below
    finally:
        force_unmount(base / "mnt")
        shutil.rmtree(base, ignore_errors=True)


def test_root_of_a_user_namespace_keeps_the_records_in_user_xattrs(stack: Stack, transport: str) -> None:
    """Root in a user namespace (where rootless podman mounts) may not write trusted.*
    xattrs. Without userxattr the driver keeps overlayfs's records in user.overlay.* all
    the same, where trusted.* ones would refuse every rename of a merged directory and
    every directory made over a removed one (EPERM). overlayfs mounted there without
    userxattr answers those with EIO and asks for the option in the kernel log."""
    top = stack.lowers[0]
    for directory in ("d", "e"):
        (top / directory).mkdir()
        (top / directory / "f").write_text("f\n")
    options = ",".join([opts(stack), *mounts.TRANSPORT])
    mnt, python = stack.mnt, sys.executable
    script = f"""
        {python} -m unionfs -o {options} {mnt}
        trap '{python} -m unionfs umount {mnt}' EXIT
        mv {mnt}/d {mnt}/d2 && rm -rf {mnt}/e && mkdir {mnt}/e && rm {mnt}/top.txt
        ls {mnt} {mnt}/d2 {mnt}/e
    """
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-euc", script],
                         capture_output=True, text=True, timeout=120)
    listed = f"{mnt}:\nbase.txt\nd2\ne\n\n{mnt}/d2:\nf\n\n{mnt}/e:\n"
    assert (run.returncode, run.stdout) == (0, listed), run.stderr
    upper = stack.upper  # as the namespace's unmount left it (unionfs umount places pending copy-ups)
    assert os.getxattr(upper / "d2", "user.overlay.redirect") == b"/d"
    assert os.getxattr(upper / "e", "user.overlay.opaque") == b"y"
    assert all(os.lstat(upper / name).st_rdev == 0 and stat.S_ISCHR(os.lstat(upper / name).st_mode) for name in ("d", "top.txt"))
    assert not [(path, name) for path in (upper, *upper.rglob("*")) for name in os.listxattr(path, follow_symlinks=False)
                if name.startswith("trusted.")]
    with fuse_mount(stack, "userxattr") as again:  # what the namespace left, read back by root outside it
        assert sorted(os.listdir(again)) == ["base.txt", "d2", "e"] and os.listdir(again / "d2") == ["f"]
        assert os.listdir(again / "e") == []


def test_a_sparse_copy_up_allocates_the_data_alone(stack: Stack) -> None:
    """A copy-up copies a sparse file's data extents and leaves its holes: the copy's
    data lies where the lower file's does, plus what was appended. overlayfs copies
    from each data extent's start in pieces of up to 1 MiB, holes after the data
    included, so its copy of a file with data in a few places takes more blocks."""
    mib = 1 << 20
    data = [(0, 4096), (5 * mib, 4096), (100 * mib, 3 * mib)]
    write_sparse(stack.lowers[-1] / "sparse", 256 * mib, data)
    blocks = {}
    for kind, mounter in (("kernel", kernel_mount), ("unionfs", fuse_mount)):
        for path in (stack.upper, stack.work):
            shutil.rmtree(path)
            path.mkdir()
        with mounter(stack) as mnt:
            with open(mnt / "sparse", "ab") as f:
                f.write(b"+")
        copy = stack.upper / "sparse"
        blocks[kind] = copy.stat().st_blocks
    assert data_extents(copy) == [*data, (256 * mib, 1)]
    assert blocks["unionfs"] <= blocks["kernel"]
    assert blocks["unionfs"] * 512 < 4 * mib, blocks
