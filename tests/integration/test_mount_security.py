"""Who gets into a mount made by root, checked as another user on real mounts.

FUSE lets only the mounting user in unless ``allow_other`` is given; a
``layerstore mount`` is ``nosuid,nodev`` unless ``--allow-setuid`` is given,
so a set-user-ID file or a device node in an image gives nobody a way in.
Each check also runs with the opt-out, to show that it can fail.

Every probe runs as uid/gid 65534 with no supplementary groups (and so no
capabilities). The mounts live in a directory of /tmp that other users can
traverse, since pytest's own temporary directories are private to root.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import mounts
from mounts import Stack, device_open_to_users, force_unmount, fuse_mount, mounts_under, serve_as
from users import NOBODY, errno_as

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "layerstore"))  # the image builder of the store's tests
from imagebuild import build_layout, export

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts and other users need root")

REPO = Path(__file__).resolve().parents[2]
THIRD = 1000  # neither the mounting user nor root
ID = shutil.which("id") or "/usr/bin/id"  # prints euid= when it differs from the real uid


def as_nobody(action: Callable[[], object]) -> int | None:
    """Run action in a child as uid/gid 65534 without groups: its errno, or None."""
    return errno_as(NOBODY, action)


def read(path: Path) -> Callable[[], object]:
    return lambda: path.read_bytes()


def run_id_as_nobody(path: Path) -> str:
    """What a set-user-ID copy of id(1) reports when nobody runs it."""
    result = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", str(path)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def mount_flags(mountpoint: Path) -> set[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        line = next(line for line in f if line.split()[4] == str(mountpoint))
    return set(line.split()[5].split(","))


def populate(root: Path) -> None:
    """What an image could carry: a readable and a private file, a set-uid-root id(1), a device node."""
    (root / "hello.txt").write_text("hello\n")
    os.chmod(root / "hello.txt", 0o644)
    (root / "secret").write_text("root only\n")
    os.chmod(root / "secret", 0o600)
    (root / "bin").mkdir(mode=0o755, exist_ok=True)
    shutil.copyfile(ID, root / "bin/id")
    os.chown(root / "bin/id", 0, 0)
    os.chmod(root / "bin/id", 0o4755)
    (root / "dev").mkdir(mode=0o755, exist_ok=True)
    os.mknod(root / "dev/null", stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(root / "dev/null", 0o666)  # mknod is subject to the umask


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A directory every user can traverse; whatever is mounted below it is unmounted at the end."""
    base = Path(tempfile.mkdtemp(prefix="unionfs-security-"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        for point in sorted(mounts_under(base), key=len, reverse=True):
            force_unmount(point)
        shutil.rmtree(base, ignore_errors=True)


# -- unionfs ------------------------------------------------------------------------

@pytest.fixture
def stack(reachable: Path) -> Stack:
    s = Stack.make(reachable)
    populate(s.lowers[1])
    os.chmod(s.mnt, 0o755)
    return s


def test_unionfs_mount_by_root_is_closed_to_others(stack: Stack) -> None:
    """Without allow_other FUSE refuses every other user outright, whatever the modes say."""
    with fuse_mount(stack) as mnt:
        assert (mnt / "hello.txt").read_text() == "hello\n"  # the mounting user
        assert as_nobody(lambda: os.stat(mnt)) == errno.EACCES
        assert as_nobody(lambda: os.listdir(mnt)) == errno.EACCES
        assert as_nobody(read(mnt / "hello.txt")) == errno.EACCES
        assert as_nobody(lambda: os.stat(mnt / "hello.txt")) == errno.EACCES


def test_unionfs_allow_other_lets_others_in_subject_to_modes(stack: Stack) -> None:
    with fuse_mount(stack, "allow_other") as mnt:
        assert as_nobody(lambda: os.stat(mnt)) is None
        assert as_nobody(lambda: os.listdir(mnt)) is None
        assert as_nobody(read(mnt / "hello.txt")) is None
        assert as_nobody(read(mnt / "secret")) == errno.EACCES  # 0600 root
        assert as_nobody(lambda: (mnt / "new").write_text("x")) == errno.EACCES  # root dir 0755


def test_unionfs_allow_root_on_a_root_mount_keeps_others_out(stack: Stack) -> None:
    """allow_root has the kernel let everyone in, and the driver refuses all but the
    mounting user and root (libfuse's rule): for a root mount, nobody else gets in."""
    with fuse_mount(stack, "allow_root") as mnt:
        assert (mnt / "hello.txt").read_text() == "hello\n"
        assert as_nobody(lambda: os.listdir(mnt)) == errno.EACCES
        assert as_nobody(read(mnt / "hello.txt")) == errno.EACCES
        assert as_nobody(lambda: os.stat(mnt / "bin/id")) == errno.EACCES  # a name not looked up yet


@contextlib.contextmanager
def users_may_allow_others() -> Iterator[None]:
    """fusermount3 takes allow_other or allow_root from a user only with user_allow_other
    in /etc/fuse.conf; the file is put back as it was."""
    conf = Path("/etc/fuse.conf")
    before = conf.read_bytes() if conf.exists() else None
    conf.write_bytes((before or b"") + b"\nuser_allow_other\n")
    try:
        yield
    finally:
        if before is None:
            conf.unlink()
        else:
            conf.write_bytes(before)


def test_unionfs_allow_root_on_a_users_mount_lets_root_in_and_no_one_else(reachable: Path) -> None:
    """A user's mount with allow_root: the user and root get in, a third user does not."""
    lower, upper, work, mnt = (reachable / name for name in ("lower", "upper", "work", "mnt"))
    for path in (lower, upper, work, mnt):
        path.mkdir(mode=0o755)
    (lower / "hello.txt").write_text("hello\n")
    os.chmod(lower / "hello.txt", 0o644)
    for path in (upper, work, mnt):
        os.chown(path, NOBODY, NOBODY)
    options = ",".join([f"lowerdir={lower},upperdir={upper},workdir={work}", *mounts.TRANSPORT, "allow_root"])
    with device_open_to_users(), users_may_allow_others():
        pid, ready = serve_as(NOBODY, options, mnt)
    try:
        assert ready == "ready", ready
        assert os.listdir(mnt) == ["hello.txt"] and (mnt / "hello.txt").read_text() == "hello\n"  # root
        assert errno_as(NOBODY, lambda: (mnt / "mine.txt").write_text("mine\n")) is None  # the mounting user
        assert errno_as(THIRD, lambda: os.listdir(mnt)) == errno.EACCES
        assert errno_as(THIRD, read(mnt / "mine.txt")) == errno.EACCES
        assert errno_as(THIRD, lambda: os.stat(mnt / "absent")) == errno.EACCES
    finally:
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (upper / "mine.txt").stat().st_uid == NOBODY


@pytest.mark.parametrize("engine", [(), ("engine=fusepy",)], ids=["native", "fusepy"])
@pytest.mark.parametrize("flags", [(), ("nosuid", "nodev")])
def test_unionfs_set_id_and_devices_follow_the_mount_flags(stack: Stack, flags: tuple[str, ...],
                                                           engine: tuple[str, ...]) -> None:
    """Like overlayfs, a root mount honours set-id bits and devices unless nosuid,nodev are
    given, with either engine (libfuse adds nosuid,nodev unless told otherwise)."""
    with fuse_mount(stack, "allow_other", *engine, *flags) as mnt:
        safe = bool(flags)
        assert {"nosuid", "nodev"} <= mount_flags(mnt) if safe else not {"nosuid", "nodev"} & mount_flags(mnt)
        assert ("euid=0(" in run_id_as_nobody(mnt / "bin/id")) is not safe
        opened = as_nobody(lambda: os.close(os.open(mnt / "dev/null", os.O_RDWR)))
        assert opened == (errno.EACCES if safe else None)


# -- layerstore mount -----------------------------------------------------------------

def layerstore(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "layerstore", "--root", str(root), *args],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


@pytest.fixture(scope="module")
def image_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer image made by umoci and skopeo holding what populate() writes."""
    base = tmp_path_factory.mktemp("security-image")

    def layer(rootfs: Path) -> None:
        populate(rootfs)

    layout = build_layout(base / "layout", "v1", [layer])
    return export(layout, "v1", "docker-archive", base / "image.tar", "example/setuid:v1")


@pytest.fixture
def store(tmp_path: Path, image_archive: Path) -> Path:
    root = tmp_path / "store"
    loaded = layerstore(root, "load", "-i", str(image_archive))
    assert loaded.returncode == 0, loaded.stderr
    return root


@pytest.fixture
def container(store: Path, reachable: Path) -> Iterator[Callable[..., Path]]:
    """Mount the image with the given layerstore mount flags; unmounted by layerstore umount at the end."""
    mounted: list[Path] = []

    def mount(*flags: str) -> Path:
        mnt = reachable / f"rootfs{len(mounted)}"
        mnt.mkdir(mode=0o755)
        result = layerstore(store, "mount", *flags, "example/setuid:v1", str(mnt))
        assert result.returncode == 0, result.stderr
        mounted.append(mnt)
        return mnt

    try:
        yield mount
    finally:
        for mnt in mounted:
            layerstore(store, "umount", str(mnt))


def test_layerstore_mount_is_closed_to_others_by_default(container: Callable[..., Path]) -> None:
    mnt = container()
    assert (mnt / "hello.txt").read_text() == "hello\n"
    assert {"nosuid", "nodev"} <= mount_flags(mnt)
    assert as_nobody(lambda: os.stat(mnt)) == errno.EACCES
    assert as_nobody(lambda: os.listdir(mnt)) == errno.EACCES
    assert as_nobody(read(mnt / "hello.txt")) == errno.EACCES


def test_layerstore_mount_allow_other(container: Callable[..., Path]) -> None:
    """--allow-other lets others in, with the modes as they are, and the set-id bits still off."""
    mnt = container("--allow-other")
    assert as_nobody(lambda: os.listdir(mnt)) is None
    assert as_nobody(read(mnt / "hello.txt")) is None
    assert as_nobody(read(mnt / "secret")) == errno.EACCES
    assert as_nobody(lambda: (mnt / "new").write_text("x")) == errno.EACCES


def test_layerstore_set_id_files_and_devices_give_no_way_in(container: Callable[..., Path]) -> None:
    """A set-uid-root binary runs with the caller's own uid, and device nodes do not open."""
    mnt = container("--allow-other")
    st = os.stat(mnt / "bin/id")
    assert st.st_mode & stat.S_ISUID and st.st_uid == 0  # the image does carry them
    assert stat.S_ISCHR(os.stat(mnt / "dev/null").st_mode)
    out = run_id_as_nobody(mnt / "bin/id")
    assert f"uid={NOBODY}(" in out and "euid=" not in out, out
    assert as_nobody(lambda: os.close(os.open(mnt / "dev/null", os.O_RDWR))) == errno.EACCES
    with pytest.raises(PermissionError):
        (mnt / "dev/null").open("rb")  # nodev holds for root too


def test_layerstore_allow_setuid_opts_out(container: Callable[..., Path]) -> None:
    """With --allow-setuid the same image hands out root: what the default prevents."""
    mnt = container("--allow-other", "--allow-setuid")
    assert not {"nosuid", "nodev"} & mount_flags(mnt)
    assert "euid=0(" in run_id_as_nobody(mnt / "bin/id")
    assert as_nobody(lambda: os.close(os.open(mnt / "dev/null", os.O_RDWR))) is None


def test_layerstore_mount_read_only_refuses_every_change(container: Callable[..., Path]) -> None:
    """--read-only: the image's layers and no container layer, as a read-only mount."""
    mnt = container("--read-only")
    assert (mnt / "hello.txt").read_text() == "hello\n"
    assert "ro" in mount_flags(mnt)
    for change in (lambda: (mnt / "hello.txt").write_text("x"), lambda: os.mkdir(mnt / "new"),
                   lambda: os.unlink(mnt / "hello.txt")):
        with pytest.raises(OSError) as exc:
            change()
        assert exc.value.errno == errno.EROFS
