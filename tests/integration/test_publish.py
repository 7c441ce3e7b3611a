"""Copy-ups of small files opened for writing, published in batches (unionfs.publish).

The open returns before the copy is synced and renamed into place. These
tests hold the driver to what that must not change: every request through
the mount sees the copy at once, a settled mount has a complete upper
directory, and a driver killed with copies pending leaves each file either as
it was below or as written, never half, with the work directory clean.
"""
from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounts import Stack, driver_pid, force_unmount, fuse_mount, kernel_mount, loop_fs
from waiting import wait_for

from unionfs import syscalls
from unionfs.copyup import SPARE
from unionfs.mount import settle
from unionfs.publish import Publisher
from unionfs.union import Union

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts and kernel overlayfs need root")

COUNT = 200


def content(i: int) -> bytes:
    return f"file {i}\n".encode() * (i % 7 + 1)


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    s = Stack.make(tmp_path)
    for i in range(COUNT):
        layer = s.lowers[i % 2]
        (layer / "d").mkdir(exist_ok=True)
        (layer / "d" / f"f{i:03d}").write_bytes(content(i))
    return s


def append_all(mnt: Path) -> None:
    for i in range(COUNT):
        with open(mnt / "d" / f"f{i:03d}", "ab") as f:
            f.write(b"+\n")


def files_in(d: Path) -> dict[str, bytes]:
    return {name: (d / name).read_bytes() for name in os.listdir(d)} if d.exists() else {}


def upper_files(stack: Stack) -> dict[str, bytes]:
    return files_in(stack.upper / "d")


def work_entries(workdir: Path) -> list[str]:
    """What the work dir holds, but for the empty files made ahead for copy-ups
    (a copy built in one keeps its name, but not its size: small copies that
    wait for publication are never empty)."""
    work = workdir / "work"
    return [name for name in os.listdir(work) if not (name.endswith(SPARE) and os.lstat(work / name).st_size == 0)]


def listing(root: Path) -> dict[str, bytes]:
    return {name: (root / "d" / name).read_bytes() for name in os.listdir(root / "d")}


def test_changes_right_after_an_append_see_the_copy(stack: Stack) -> None:
    """Each append leaves a copy pending; the next request on the name (a rename,
    an unlink) must act on the copy, not on the lower file below it."""
    expected = {}
    with fuse_mount(stack) as mnt:
        for i in range(COUNT):
            path = mnt / "d" / f"f{i:03d}"
            with open(path, "ab") as f:
                f.write(b"+\n")
            if i % 3 == 0:
                os.rename(path, mnt / "d" / f"r{i:03d}")
                expected[f"r{i:03d}"] = content(i) + b"+\n"
            elif i % 3 == 1:
                os.unlink(path)
            else:
                expected[f"f{i:03d}"] = content(i) + b"+\n"
        assert listing(mnt) == expected
    with kernel_mount(stack) as mnt:
        assert listing(mnt) == expected


def test_a_rename_of_the_directory_right_after_appends_takes_the_copies_along(stack: Stack) -> None:
    """A copy pending in a directory holds up requests on the directory as well as those
    on its name: the directory renamed right after appends to files in it (within a
    batch's gathering time) has the copies in place under its new name, then and after
    a remount."""
    expected = {f"f{i:03d}": content(i) + (b"+\n" if i < 3 else b"") for i in range(COUNT)}
    with fuse_mount(stack) as mnt:
        for name in ("f000", "f001", "f002"):
            with open(mnt / "d" / name, "ab") as f:
                f.write(b"+\n")
        os.rename(mnt / "d", mnt / "e")
        assert files_in(mnt / "e") == expected
    with fuse_mount(stack) as mnt:
        assert files_in(mnt / "e") == expected and not (mnt / "d").exists()


def test_a_change_of_the_directory_while_a_copy_is_pending_keeps_its_time(stack: Stack) -> None:
    """A copy-up keeps its parent's times. A file made and removed in the directory
    while a copy in it is pending is a change of the directory that must stay."""
    with fuse_mount(stack) as mnt:
        (mnt / "d").stat()  # the directory copied up first, so its upper times are the ones seen
        with open(mnt / "d" / "f000", "ab") as f:
            f.write(b"+\n")
        (mnt / "d" / "new").write_bytes(b"")
        os.unlink(mnt / "d" / "new")
        changed = os.stat(mnt / "d").st_mtime_ns
        settle(mnt)
        assert os.stat(stack.upper / "d").st_mtime_ns == changed


@pytest.mark.parametrize("sync_tool", ["coreutils", "none"])
def test_a_burst_of_appends_is_in_the_upper_once_settled(stack: Stack, sync_tool: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Settled by coreutils' sync, and by a second interpreter where sync is not found."""
    if sync_tool == "none":
        find = shutil.which
        monkeypatch.setattr(shutil, "which", lambda name, *args, **kw: None if name == "sync" else find(name, *args, **kw))
    with fuse_mount(stack) as mnt:
        append_all(mnt)
        settle(str(mnt))
        upper = upper_files(stack)
        assert upper == {f"f{i:03d}": content(i) + b"+\n" for i in range(COUNT)}
        assert work_entries(stack.work) == [], "copies left in the work dir after settling"
    with kernel_mount(stack) as mnt:
        assert listing(mnt) == upper



def test_copies_built_in_spare_files_keep_mode_owner_and_xattrs(stack: Stack) -> None:
    """Between batches the driver makes empty files for the next copy-ups to take
    (a file created while a commit is written waits for it). A copy built in
    one is the lower file's as any other. A settled mount has none left, and
    the driver removes them as it ends."""
    for i in range(COUNT):
        lower = stack.lowers[i % 2] / "d" / f"f{i:03d}"
        os.chown(lower, 1000 + i % 3, 2000 + i % 5)
        os.chmod(lower, 0o600 | (i % 8) << 3)
        os.setxattr(lower, "user.k", f"v{i}".encode())
    (stack.lowers[0] / "d" / "extra").write_bytes(b"extra\n")
    half = COUNT // 2
    with fuse_mount(stack) as mnt:
        pid = driver_pid(mnt)
        for i in range(half):
            with open(mnt / "d" / f"f{i:03d}", "ab") as f:
                f.write(b"+\n")
        spares: set[int] = set()

        def spares_seen() -> bool:  # made after the first batch
            for name in os.listdir(stack.work / "work"):
                with contextlib.suppress(FileNotFoundError):
                    if name.endswith(SPARE) and (st := os.lstat(stack.work / "work" / name)).st_size == 0:
                        spares.add(st.st_ino)
            return bool(spares)

        assert wait_for(spares_seen, 10), "no spare file was made after a batch"
        for i in range(half, COUNT):
            with open(mnt / "d" / f"f{i:03d}", "ab") as f:
                f.write(b"+\n")
        settle(str(mnt))
        used = set()
        for i in range(half, COUNT):
            lower = os.lstat(stack.lowers[i % 2] / "d" / f"f{i:03d}")
            upper = stack.upper / "d" / f"f{i:03d}"
            st = os.lstat(upper)
            assert (st.st_mode, st.st_uid, st.st_gid) == (lower.st_mode, lower.st_uid, lower.st_gid), f"f{i:03d}"
            assert os.getxattr(upper, "user.k") == f"v{i}".encode()
            assert upper.read_bytes() == content(i) + b"+\n"
            if st.st_ino in spares:
                used.add(i)
        assert used, "no copy-up took a spare file"
        assert os.listdir(stack.work / "work") == [], "a settled mount left spare files in the work dir"
        with open(mnt / "d" / "extra", "ab") as f:
            f.write(b"+\n")  # a batch more: spares again, for the driver to remove as it ends
        assert wait_for(lambda: bool(os.listdir(stack.work / "work")), 10), "no spare file was made after the last batch"
        subprocess.run(["umount", str(mnt)], check=True)  # not unionfs.mount.unmount, which settles first
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10)
    assert os.listdir(stack.work / "work") == [], "spare files left in the work dir at unmount"


def test_fsync_of_the_file_publishes_its_copy(stack: Stack) -> None:
    with fuse_mount(stack) as mnt:
        fd = os.open(mnt / "d" / "f007", os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"synced\n")
            os.fsync(fd)
            assert (stack.upper / "d" / "f007").read_bytes() == content(7) + b"synced\n"
        finally:
            os.close(fd)


def test_killed_driver_with_copies_pending_leaves_each_file_whole(stack: Stack) -> None:
    """SIGKILL right after a burst of appends: the last copies are still pending
    (the driver gathers them for 20 ms before one sync)."""
    before = {f"f{i:03d}": content(i) for i in range(COUNT)}
    after = {name: data + b"+\n" for name, data in before.items()}
    with fuse_mount(stack) as mnt:
        pid = driver_pid(mnt)
        append_all(mnt)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10)
        published = upper_files(stack)
        left = work_entries(stack.work)
        force_unmount(mnt)
    assert len(published) < COUNT and left, "nothing was pending when the driver died: the test proves nothing"
    assert all(published[name] == after[name] for name in published), "a published copy lacks the append"
    with fuse_mount(stack) as mnt:
        view = listing(mnt)
        assert os.listdir(stack.work / "work") == [], "the work dir was not cleaned at remount"
    assert all(view[name] in (before[name], after[name]) for name in before), "a file is neither as before nor as after"
    assert {name for name in view if view[name] == after[name]} == set(published)
    with kernel_mount(stack) as mnt:
        assert listing(mnt) == view


def test_fsync_reports_a_copy_that_could_not_be_published(tmp_path: Path) -> None:
    """In-process: the rename into place fails (as on a full or failing disk); the
    fsync of the file says so, the lower file stays, nothing is left behind."""
    lower, upper, work = (tmp_path / n for n in ("lower", "upper", "work"))
    for p in (lower, upper, work):
        p.mkdir()
    (lower / "f").write_bytes(b"lower\n")
    u = Union([str(lower)], str(upper), str(work))
    try:
        publisher = u.copyup.publisher
        assert publisher is not None

        def fail(tmp: str, path: str) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)

        publisher._place = fail  # type: ignore[method-assign]
        fd, _ = u.open("/f", os.O_RDWR)
        try:
            os.pwrite(fd, b"LOST", 0)
            with pytest.raises(OSError) as exc:
                u.fsync(fd)
            assert exc.value.errno == errno.EIO
            u.fsync(fd)  # reported once, as writeback errors are
        finally:
            u.release(fd)
            os.close(fd)
        assert u.resolver.resolve("/f") is not None
        fd, _ = u.open("/f", os.O_RDONLY)
        try:
            assert os.read(fd, 100) == b"lower\n"
        finally:
            os.close(fd)
        assert os.listdir(upper) == [] and work_entries(work) == []
    finally:
        u.close()
    assert os.listdir(work / "work") == []


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[tuple[Union, Path]]:
    """A Union without a mount, over COUNT lower files in d/: its publisher's
    ways of syncing can be watched and made to fail."""
    lower, upper, work = (tmp_path / n for n in ("lower", "upper", "work"))
    for p in (lower / "d", upper, work):
        p.mkdir(parents=True)
    for i in range(COUNT):
        (lower / "d" / f"f{i:03d}").write_bytes(content(i))
    u = Union([str(lower)], str(upper), str(work))
    try:
        yield u, upper
    finally:
        u.close()


def append_in_process(u: Union) -> None:
    for i in range(COUNT):
        fd, _ = u.open(f"/d/f{i:03d}", os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"+\n")
        finally:
            u.release(fd)
            os.close(fd)


def watch_syncs(monkeypatch: pytest.MonkeyPatch, publisher: Publisher) -> tuple[list[int], list[int]]:
    """Count the publisher's syncfs calls and the fsyncs made meanwhile (both still done)."""
    together: list[int] = []
    alone: list[int] = []
    sync_all, fsync = publisher._sync_all, os.fsync
    assert sync_all is not None

    def counted_sync_all() -> None:
        together.append(1)
        sync_all()

    def counted_fsync(fd: int) -> None:
        alone.append(fd)
        fsync(fd)

    monkeypatch.setattr(publisher, "_sync_all", counted_sync_all)
    monkeypatch.setattr(os, "fsync", counted_fsync)
    return together, alone


def test_a_batch_of_copies_is_synced_by_one_syncfs(in_process: tuple[Union, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """One syncfs commits a whole batch: no copy is fsynced on its own (each of
    those fsyncs would flush the disk's cache once more)."""
    u, upper = in_process
    publisher = u.copyup.publisher
    assert publisher is not None
    publisher._other_unwritten = 1 << 50  # whatever else this machine has waiting to be written
    publisher._delay = 60.0  # one batch, cut short by settle(): a last copy alone in a batch of its own is fsynced
    together, alone = watch_syncs(monkeypatch, publisher)
    append_in_process(u)
    u.settle()
    assert files_in(upper / "d") == {f"f{i:03d}": content(i) + b"+\n" for i in range(COUNT)}
    assert alone == []
    assert 1 <= len(together) < COUNT // 2, f"{len(together)} syncs for {COUNT} copies: not batched"


def test_fsync_of_a_directory_above_a_pending_copy_publishes_it(in_process: tuple[Union, Path]) -> None:
    """FSYNCDIR of a directory other than the root (which settles the whole mount):
    the copies pending below it go into place before it returns."""
    u, upper = in_process
    publisher = u.copyup.publisher
    assert publisher is not None
    publisher._delay = 60.0  # nothing would be published for a minute otherwise
    fd, _ = u.open("/d/f001", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"+\n")
    finally:
        u.release(fd)
        os.close(fd)
    assert not (upper / "d" / "f001").exists()  # pending: the test can tell
    u.fsyncdir("/d")
    assert (upper / "d" / "f001").read_bytes() == content(1) + b"+\n"


def test_a_failed_syncfs_falls_back_to_each_copys_own_fsync(in_process: tuple[Union, Path],
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """syncfs fails for a writeback error anywhere on the filesystem; the fsync
    of each copy then tells whose it was. Here none was a copy's: all are published."""
    u, upper = in_process
    publisher = u.copyup.publisher
    assert publisher is not None
    publisher._other_unwritten = 1 << 50
    _, alone = watch_syncs(monkeypatch, publisher)

    def failing_sync_all() -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(publisher, "_sync_all", failing_sync_all)
    append_in_process(u)
    u.settle()
    assert files_in(upper / "d") == {f"f{i:03d}": content(i) + b"+\n" for i in range(COUNT)}
    assert len(alone) == COUNT
    assert "failed (Input/output error): each is synced alone" in caplog.text


def test_copies_are_fsynced_one_by_one_while_much_else_is_unwritten(in_process: tuple[Union, Path],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A syncfs would also wait for everything else dirty on the filesystem."""
    u, upper = in_process
    publisher = u.copyup.publisher
    assert publisher is not None
    publisher._other_unwritten = -(1 << 50)  # more than that is always waiting
    together, alone = watch_syncs(monkeypatch, publisher)
    append_in_process(u)
    u.settle()
    assert files_in(upper / "d") == {f"f{i:03d}": content(i) + b"+\n" for i in range(COUNT)}
    assert together == [] and len(alone) == COUNT


def test_a_copy_whose_own_writeback_failed_is_not_published_after_a_good_syncfs(
        in_process: tuple[Union, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """syncfs reports an error on its filesystem once, perhaps to the batch before
    (whose sync wrote this copy out too): each copy's own error is asked for by its
    fd. Here one copy's is EIO: that copy stays out, the lower file shows, the rest are in."""
    u, upper = in_process
    publisher = u.copyup.publisher
    assert publisher is not None
    publisher._other_unwritten = 1 << 50
    publisher._delay = 60.0  # one batch (see above)
    together, alone = watch_syncs(monkeypatch, publisher)
    checked: list[int] = []
    check_written = syscalls.check_written

    def one_fails(fd: int) -> None:
        checked.append(fd)
        check_written(fd)
        if len(checked) == 1:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(syscalls, "check_written", one_fails)
    append_in_process(u)
    u.settle()
    published = files_in(upper / "d")
    assert together and alone == [] and len(checked) == COUNT
    assert len(published) == COUNT - 1
    assert all(data == content(int(name[1:])) + b"+\n" for name, data in published.items())
    (lost,) = {f"f{i:03d}" for i in range(COUNT)} - set(published)
    fd, _ = u.open(f"/d/{lost}", os.O_RDONLY)
    try:
        assert os.read(fd, 1000) == content(int(lost[1:]))
    finally:
        os.close(fd)
    assert work_entries(upper.parent / "work") == []
    assert f"copy-up of /d/{lost} not published" in caplog.text


# -- volatile ----------------------------------------------------------------------------


@contextlib.contextmanager
def ext4_image(base: Path) -> Iterator[tuple[Path, Path]]:
    """A new ext4 mounted from an image under base: (its mount point, its journal's info)."""
    with loop_fs(base, "ext4", ["mkfs.ext4", "-q"], 128 << 20) as point:
        with open("/proc/mounts") as mounts:
            source = next(line.split()[0] for line in mounts if line.split()[1] == str(point))
        yield point, Path(f"/proc/fs/jbd2/{os.path.basename(source)}-8/info")


def commits(journal: Path) -> int:
    return int(journal.read_text().split()[0])  # "N transactions (M requested), ..."


SYNCED = 20


@pytest.mark.parametrize("driver, option", [
    ("kernel", ""), ("kernel", "volatile"), ("unionfs", ""), ("unionfs", "volatile"), ("unionfs", "fsync=0"),
])
def test_a_volatile_mount_syncs_nothing(tmp_path: Path, driver: str, option: str) -> None:
    """overlayfs's volatile omits every sync of the upper layer (fuse-overlayfs's fsync=0
    too): fsync, fdatasync and a directory's fsync return at once. On ext4 the fsync of
    a new file commits the journal; the commits are counted over SYNCED of them."""
    with ext4_image(tmp_path) as (fs, journal):
        stack = Stack.make(fs)
        (stack.lowers[1] / "d").mkdir()
        mount = kernel_mount if driver == "kernel" else fuse_mount
        with mount(stack, *filter(None, [option])) as mnt:
            os.sync()
            before = commits(journal)
            for i in range(SYNCED):
                fd = os.open(mnt / "d" / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644)
                try:
                    os.write(fd, b"x" * 4096)
                    os.fsync(fd) if i % 2 else os.fdatasync(fd)
                finally:
                    os.close(fd)
                fd = os.open(mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            made = commits(journal) - before
            assert sorted(os.listdir(mnt / "d")) == sorted(f"f{i}" for i in range(SYNCED))
    if option:
        assert made <= 2, f"{made} journal commits"  # the journal's own timer may commit once
    else:
        assert made >= SYNCED, f"{made} journal commits"


def mount_command(stack: Stack, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "unionfs", "-o", stack.spec(*options).option_string(), str(stack.mnt)],
                          capture_output=True, text=True, timeout=60)


def kernel_refuses(stack: Stack) -> bool:
    try:
        with kernel_mount(stack):
            return False
    except subprocess.CalledProcessError:
        return True


def test_a_volatile_mount_that_crashed_is_refused_as_overlayfs_refuses_it(tmp_path: Path) -> None:
    """A volatile mount marks its work directory as overlayfs does (work/incompat/volatile):
    after a crash the upper may have lost changes, and neither this driver nor overlayfs
    mounts it again until the mark is removed."""
    stack = Stack.make(tmp_path)
    (stack.lowers[1] / "f").write_text("lower\n")
    mark = stack.work / "work" / "incompat" / "volatile"
    with fuse_mount(stack, "volatile") as mnt:
        assert (mark / "dirty").is_file()
        (mnt / "f").write_text("changed\n")
        pid = driver_pid(mnt)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10)
        force_unmount(mnt)
    for options in ((), ("volatile",)):
        result = mount_command(stack, *options)
        assert (result.returncode, result.stderr.strip()) == (
            1, f"unionfs: workdir {stack.work} was mounted volatile and may have lost changes in a crash; "
               f"if it did not crash, remove {mark} and mount again")
        assert not os.path.ismount(stack.mnt)
    assert kernel_refuses(stack)  # the same mark as overlayfs's
    (mark / "dirty").unlink()
    mark.rmdir()
    with fuse_mount(stack) as mnt:
        assert (mnt / "f").read_text() == "changed\n"


def test_a_clean_volatile_unmount_syncs_and_removes_the_mark(tmp_path: Path) -> None:
    """overlayfs keeps its mark after a clean unmount too; this driver syncs the upper
    layer then, and with nothing left to lose, removes the mark."""
    stack = Stack.make(tmp_path)
    (stack.lowers[1] / "f").write_text("lower\n")
    with fuse_mount(stack, "volatile") as mnt:
        (mnt / "f").write_text("changed\n")
        pid = driver_pid(mnt)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10)  # its last steps follow the unmount
    assert os.listdir(stack.work / "work") == []
    with kernel_mount(stack) as mnt:
        assert (mnt / "f").read_text() == "changed\n"


def test_overlayfs_marks_in_the_work_directory_are_honoured(tmp_path: Path) -> None:
    """The mark of overlayfs's own volatile mount, which it keeps after a clean unmount,
    and that of a feature this driver does not know: both refuse the mount, as
    overlayfs refuses them, and neither is removed."""
    stack = Stack.make(tmp_path)
    incompat = stack.work / "work" / "incompat"
    with kernel_mount(stack, "volatile") as mnt:
        (mnt / "f").write_text("kernel\n")
    assert (incompat / "volatile").is_dir()
    result = mount_command(stack)
    assert result.returncode == 1 and "was mounted volatile" in result.stderr
    (incompat / "volatile" / "dirty").unlink()
    (incompat / "volatile").rmdir()
    (incompat / "future").mkdir()
    result = mount_command(stack)
    assert (result.returncode, result.stderr.strip()) == (
        1, f"unionfs: workdir {stack.work} is marked with overlayfs's incompatible feature 'future' ({incompat / 'future'})")
    assert kernel_refuses(stack)
    assert os.listdir(incompat) == ["future"]
    (incompat / "future").rmdir()
    with fuse_mount(stack) as mnt:
        assert (mnt / "f").read_text() == "kernel\n"


def fill(fs: Path) -> None:
    """Write files until not one more block is free (closing a file gives back
    what the filesystem had set aside for it, so each pass writes what is left)."""
    for i in itertools.count():
        try:
            filler = open(fs / f"filler{i}", "wb")
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            return  # not even an empty file
        with filler:
            try:
                while True:
                    filler.write(b"\0" * 4096)
                    filler.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        os.sync()
        if os.statvfs(fs).f_bfree == 0:
            return


def test_a_volatile_mark_that_cannot_be_written_fails_the_mount_in_one_line(tmp_path: Path) -> None:
    with loop_fs(tmp_path, "ext4", ["mkfs.ext4", "-q"], 16 << 20) as fs:
        stack = Stack.make(fs)
        (stack.work / "work").mkdir()
        fill(fs)
        try:
            result = mount_command(stack, "volatile")
        finally:
            force_unmount(stack.mnt)  # should it have mounted after all
        assert (result.returncode, result.stderr.strip()) == (
            1, f"unionfs: workdir {stack.work}: the volatile mark cannot be written: No space left on device")


def test_a_union_refused_its_work_directory_leaves_nothing_open(tmp_path: Path) -> None:
    """In-process: the directories it opened before the refusal are closed again."""
    stack = Stack.make(tmp_path)
    (stack.work / "work" / "incompat" / "volatile").mkdir(parents=True)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError, match="was mounted volatile"):
        Union([str(p) for p in stack.lowers], str(stack.upper), str(stack.work))
    assert len(os.listdir("/proc/self/fd")) == before
