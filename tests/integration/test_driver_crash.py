"""The driver killed at every crash point of an operation loses nothing.

For each operation, one clean run lists the crash points it passes
(``CRASHPOINT_TRACE``); then, for each point i, a fresh stack is mounted with
``CRASHPOINT_KILL=i``, the operation is attempted (the driver dies with
SIGKILL inside it), the dead mount is removed and the stack remounted. The
merged view must then be exactly the state before or the state after the
operation, the work dir must hold no leftovers, kernel overlayfs must show
the same view over the same upper, and repeating the operation must give the
after-state. A failure names the operation and the kill point, which replays
it: ``CRASHPOINT_KILL=<number>`` always kills at the same step.
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mounts import Stack, expect_disconnected, fuse_mount, kernel_mount
from users import errno_as

from unionfs import syscalls

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts, whiteouts and kernel overlayfs need root")

# what a request in flight sees when its driver dies, and what comes after
DEAD_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO)
AT_FDCWD = -100
EXTENT = 8192
EXTENT_GAP = 256 << 10
LARGE_GAP = 1 << 20
View = dict[str, tuple[object, ...]]


def _pattern(seed: int, size: int) -> bytes:
    return bytes((seed * 31 + i * 7) % 251 for i in range(size))


def build(base: Path) -> Stack:
    """The same two lower layers and upper every time; some entries already in the upper."""
    stack = Stack.make(base)
    top, bottom = stack.lowers
    # several data extents apart, so that copy-up copies data in several steps
    fd = os.open(bottom / "data.bin", os.O_WRONLY | os.O_CREAT, 0o640)
    for i in range(3):
        os.pwrite(fd, _pattern(i, EXTENT), i * EXTENT_GAP)
    os.close(fd)
    os.chmod(bottom / "data.bin", 0o640)
    os.setxattr(bottom / "data.bin", "user.tag", b"data")
    # large enough to be copied before the mount's lock is taken (CopyUp.prepare)
    fd = os.open(bottom / "large.bin", os.O_WRONLY | os.O_CREAT, 0o640)
    for i in range(3):
        os.pwrite(fd, _pattern(i, EXTENT), i * LARGE_GAP)
    os.close(fd)
    os.setxattr(bottom / "large.bin", "user.tag", b"large")
    (bottom / "deep/a/b").mkdir(parents=True)
    for i, d in enumerate(("deep", "deep/a", "deep/a/b")):
        os.chmod(bottom / d, 0o750 - 0o10 * i)
        os.setxattr(bottom / d, "user.level", str(i).encode())
    (bottom / "deep/a/b/file.txt").write_text("deep\n")
    os.setxattr(bottom / "deep/a/b/file.txt", "user.tag", b"deep")
    (bottom / "dir/sub").mkdir(parents=True)
    (bottom / "dir/empty").mkdir()
    (bottom / "dir/x").write_text("x-content\n")
    os.setxattr(bottom / "dir/x", "user.tag", b"x")
    (bottom / "dir/sub/y").write_text("y\n")
    (bottom / "dir/sub/x").write_text("replaced by the rename\n")
    os.symlink("x", bottom / "dir/link")
    os.setxattr(bottom / "dir", "user.tag", b"dir")
    (top / "dir").mkdir()
    (top / "dir/z").write_text("z from the top layer\n")
    (top / "top.txt").write_text("top\n")
    # entries the upper already changed: a directory emptied by whiteouts, whiteouts over a file and a directory
    (bottom / "emptied").mkdir()
    (bottom / "emptied/f").write_text("f\n")
    (stack.upper / "emptied").mkdir()
    os.mknod(stack.upper / "emptied/f", stat.S_IFCHR | 0o600, 0)
    (bottom / "was").write_text("old\n")
    os.mknod(stack.upper / "was", stat.S_IFCHR | 0o600, 0)
    (bottom / "whdir").mkdir()
    (bottom / "whdir/inner").write_text("inner\n")
    os.mknod(stack.upper / "whdir", stat.S_IFCHR | 0o600, 0)
    (bottom / "shared").mkdir()
    os.chmod(bottom / "shared", 0o1777)
    return stack


def view(root: Path) -> View:
    """Every entry under root: type, mode, owner, size and content digest, link target, user xattrs."""
    out: View = {}

    def visit(rel: str) -> None:
        path = root / rel
        st = os.lstat(path)
        entry: list[object] = [stat.S_IFMT(st.st_mode), oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid]
        if stat.S_ISREG(st.st_mode):
            entry += [st.st_size, hashlib.sha256(path.read_bytes()).hexdigest()[:16]]
        elif stat.S_ISLNK(st.st_mode):
            entry.append(os.readlink(path))
        names = sorted(n for n in os.listxattr(path, follow_symlinks=False) if n.startswith("user."))
        entry += [(n, os.getxattr(path, n, follow_symlinks=False)) for n in names]
        out[rel] = tuple(entry)
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(path)):
                visit(name if rel == "." else f"{rel}/{name}")

    visit(".")
    return out


def difference(got: View, want: View) -> str:
    keys = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    return "; ".join(f"{k}: {got.get(k, 'missing')} != {want.get(k, 'missing')}" for k in keys[:6])


def write_into(name: str, offset: int) -> Callable[[Path], None]:
    """A few bytes written into a lower file at offset: its copy-up."""
    def write(mnt: Path) -> None:
        fd = os.open(mnt / name, os.O_WRONLY)
        try:
            os.pwrite(fd, b"NEW DATA", offset)
        finally:
            os.close(fd)
    return write


def append_deep(mnt: Path) -> None:
    with open(mnt / "deep/a/b/file.txt", "a") as f:
        f.write("more\n")


def as_user(action: Callable[[Path], None], uid: int = 1000) -> Callable[[Path], None]:
    """action run by another user (a forked child): what a container's processes do."""

    def run(mnt: Path) -> None:
        code = errno_as(uid, lambda: action(Path(".")), cwd=mnt)
        if code is not None:
            raise OSError(code, os.strerror(code), str(mnt))

    return run


def exchange(first: str, second: str) -> Callable[[Path], None]:
    """renameat2(RENAME_EXCHANGE) of two entries of the mount."""
    return lambda mnt: syscalls.renameat2(AT_FDCWD, str(mnt / first), AT_FDCWD, str(mnt / second), syscalls.RENAME_EXCHANGE)


def create_over_whiteout(mnt: Path) -> None:
    os.close(os.open(mnt / "was", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))


@dataclass(frozen=True)
class Op:
    name: str
    run: Callable[[Path], None]
    must_pass: dict[str, int] = field(default_factory=dict)  # point name -> times at least
    options: tuple[str, ...] = ()  # mount options the operation needs
    kernel_reads_upper: bool = True  # False where the upper gets .wh. files, which kernel overlayfs shows as files


OPS = [
    Op("write-lower-file", write_into("data.bin", EXTENT_GAP + 100), {"copyup.data": 3, "copyup.fsynced": 1, "copyup.renamed": 1}),
    Op("chmod-lower-file", lambda m: os.chmod(m / "dir/x", 0o600), {"copyup.xattrs": 2, "copyup.renamed": 2}),
    Op("write-large-lower-file", write_into("large.bin", LARGE_GAP + 100),
       {"copyup.data": 3, "copyup.prepared": 1, "copyup.fsynced": 1, "copyup.renamed": 1}),
    Op("chown-large-lower-file", lambda m: os.chown(m / "large.bin", 1000, 1000), {"copyup.prepared": 1,
                                                                                   "copyup.renamed": 1}),
    Op("append-in-deep-lower-dir", append_deep, {"copyup.renamed": 4}),
    Op("rename-lower-file", lambda m: os.rename(m / "dir/x", m / "dir/sub/x"), {"copyup.renamed": 3, "rename.renamed": 1}),
    Op("rename-lower-dir", lambda m: os.rename(m / "dir", m / "dir2"), {"rename.redirect": 1, "rename.renamed": 1}),
    Op("rename-lower-dir-over-emptied-dir", lambda m: os.rename(m / "dir/sub", m / "emptied"), {"rename.target_cleared": 1}),
    # the OCI form cannot mark an empty directory opaque: the target's whiteouts go one by one, and a
    # crash half-way is finished by the next mount
    Op("rename-lower-dir-over-emptied-dir-oci", lambda m: os.rename(m / "dir/sub", m / "emptied"),
       {"rename.recorded": 1, "rename.target_cleared": 1}, ("whiteout=oci",), kernel_reads_upper=False),
    Op("unlink-lower-file", lambda m: os.unlink(m / "dir/sub/y"), {"copyup.renamed": 2, "whiteout.linked": 1}),
    Op("rmdir-lower-dir", lambda m: os.rmdir(m / "dir/empty"), {"whiteout.linked": 1}),
    Op("rmdir-dir-emptied-by-whiteouts", lambda m: os.rmdir(m / "emptied"), {"remove.exchanged": 1}),
    Op("exchange-lower-files", exchange("dir/x", "deep/a/b/file.txt"),
       {"copyup.renamed": 5, "exchange.prepared": 1, "exchange.exchanged": 1}),
    Op("exchange-lower-dir-with-file", exchange("dir", "top.txt"),
       {"rename.redirect": 1, "exchange.prepared": 1, "exchange.exchanged": 1}),
    # the OCI form: a .wh. file beside the entry that leaves, then the entry removed or moved; a
    # directory with lower parts would lose them there (the file hides them), so its rename is
    # recorded first and a crash half-way is finished by the next mount
    Op("unlink-lower-file-oci", lambda m: os.unlink(m / "dir/sub/y"), {"whiteout.linked": 1}, ("whiteout=oci",),
       kernel_reads_upper=False),
    Op("rmdir-lower-dir-oci", lambda m: os.rmdir(m / "dir/empty"), {"whiteout.linked": 1}, ("whiteout=oci",), kernel_reads_upper=False),
    Op("rmdir-dir-emptied-by-whiteouts-oci", lambda m: os.rmdir(m / "emptied"), {"whiteout.linked": 1, "remove.cleared": 1},
       ("whiteout=oci",), kernel_reads_upper=False),
    Op("rename-lower-file-oci", lambda m: os.rename(m / "dir/x", m / "dir/sub/x"), {"whiteout.linked": 1, "rename.renamed": 1},
       ("whiteout=oci",), kernel_reads_upper=False),
    Op("rename-lower-dir-oci", lambda m: os.rename(m / "dir", m / "dir2"),
       {"rename.redirect": 1, "rename.recorded": 1, "whiteout.linked": 1, "rename.renamed": 1}, ("whiteout=oci",),
       kernel_reads_upper=False),
    Op("create-file", lambda m: os.close(os.open(m / "new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)), {"create.made": 1}),
    Op("create-file-over-whiteout", create_over_whiteout, {"create.intent": 1, "create.renamed": 1}),
    Op("mkdir-over-whiteout", lambda m: os.mkdir(m / "whdir", 0o750), {"create.opaque": 1, "create.exchanged": 1}),
    # a user's new entry is built aside and given its owner before it has its name
    Op("create-file-as-user", as_user(lambda m: os.close(os.open(m / "shared/mine", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))),
       {"create.owned": 1, "create.renamed": 1}, ("allow_other",)),
    Op("mkdir-as-user", as_user(lambda m: os.mkdir(m / "shared/mydir", 0o750)), {"create.owned": 1}, ("allow_other",)),
]


def trace_points(op: Op, base: Path) -> tuple[list[str], View, View]:
    """Run op once on a clean mount: the points it passes, the view before and after."""
    trace = base / "points"
    stack = build(base / "stack")
    with fuse_mount(stack, *op.options, env={"CRASHPOINT_TRACE": str(trace)}) as mnt:
        before = view(mnt)
        op.run(mnt)
        after = view(mnt)
    points = trace.read_text().split() if trace.exists() else []
    return points, before, after


def crash_at(op: Op, number: int, name: str, base: Path, before: View, after: View) -> str:
    """Kill the driver at point number during op and check what is left; returns the outcome."""
    where = f"{op.name}: kill point {number} ({name}); replay with CRASHPOINT_KILL={number}"
    stack = build(base)
    with fuse_mount(stack, *op.options, env={"CRASHPOINT_KILL": str(number)}) as mnt:
        try:
            op.run(mnt)
        except OSError as exc:
            assert exc.errno in DEAD_ERRNOS, f"{where}: failed with {exc!r}, not as a dead driver"
        else:
            pytest.fail(f"{where}: the operation succeeded, the driver did not die")
        expect_disconnected(lambda: os.listdir(mnt), where)
    with fuse_mount(stack, *op.options) as mnt:
        state = view(mnt)
        leftovers = sorted(os.listdir(stack.work / "work"))
    assert state in (before, after), (
        f"{where}: the merged view is neither the state before nor after: "
        f"against before: {difference(state, before)} | against after: {difference(state, after)}"
    )
    assert leftovers == [], f"{where}: work dir leftovers after remount: {leftovers}"
    if not op.kernel_reads_upper:
        return _repeat_if_before(op, stack, state, before, after, where)
    try:
        with kernel_mount(stack, "redirect_dir=on") as mnt:
            kernel = view(mnt)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"{where}: kernel overlayfs refuses the upper: {exc.stderr!r}")
    assert kernel == state, f"{where}: kernel overlayfs shows another view: {difference(kernel, state)}"
    return _repeat_if_before(op, stack, state, before, after, where)


def _repeat_if_before(op: Op, stack: Stack, state: View, before: View, after: View, where: str) -> str:
    """Where the crash left the state before, the operation must still give the state after."""
    if state == before:
        with fuse_mount(stack, *op.options) as mnt:
            op.run(mnt)
            again = view(mnt)
        assert again == after, f"{where}: repeating the operation gives {difference(again, after)}"
        return "before"
    return "after"


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_crash_at_every_point_leaves_before_or_after(op: Op, tmp_path: Path) -> None:
    points, before, after = trace_points(op, tmp_path / "trace")
    assert before != after, f"{op.name}: the operation changes nothing"
    for name, times in op.must_pass.items():
        assert points.count(name) >= times, f"{op.name}: point {name} passed {points.count(name)} times, expected {times}: {points}"
    outcomes = [crash_at(op, i, name, tmp_path / f"kill{i}", before, after) for i, name in enumerate(points, 1)]
    print(f"{op.name}: {len(points)} kill points, {outcomes.count('before')} left the state before, {outcomes.count('after')} after")


def test_interrupted_create_leaves_nothing_for_kernel_overlayfs(tmp_path: Path) -> None:
    """A create over a whiteout builds its entry in the upper under a temporary
    name; a driver killed there must not leave it for kernel overlayfs to show."""
    stack = build(tmp_path)
    with fuse_mount(stack, env={"CRASHPOINT_KILL": "create.owned:1"}) as mnt, pytest.raises(OSError):
        create_over_whiteout(mnt)
    assert any(name.startswith(".wh.") for name in os.listdir(stack.upper)), "no temporary entry to clean up"
    with fuse_mount(stack):
        pass
    assert not any(name.startswith(".wh.") for name in os.listdir(stack.upper))
    assert stat.S_ISCHR(os.lstat(stack.upper / "was").st_mode)
