"""Calls by descriptor on a file whose names are gone, against kernel overlayfs.

A file unlinked while open, or replaced by a rename while open, keeps being a
file: fchmod, fchown, fsetxattr and the rest change it and fstat shows them.
The kernel sends FUSE requests for most of these calls without the descriptor,
by node alone, and the node has no path left; the driver then uses a
descriptor the file is still open by. A lower file open only for reading
cannot change: overlayfs tries to copy it up and fails, with EEXIST (a
whiteout has its name's place) or, once its directory is removed too, with
ENOENT, and so does the driver. Such a file also opens again through /proc/PID/fd, and one
held only by O_PATH, whose open the driver never sees, answers too.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from difftree import (FS_IOC_FSGETXATTR, FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, IMMUTABLE_FL, Dir, File, HardLink, Symlink,
                      kernel_overlay_available, pair)

from unionfs import syscalls

pytestmark = [
    pytest.mark.usefixtures("transport"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (kernel overlayfs, chown)"),
    pytest.mark.skipif(os.geteuid() == 0 and not kernel_overlay_available(), reason="kernel overlayfs not available"),
]

LOWER = File(b"lower data\n", xattrs=(("user.a", b"1"),))
LOWERS = [Dir({"ro": LOWER, "rw": LOWER, "replaced": LOWER, "replaced-ro": LOWER, "dir": Dir({"ro": LOWER})})]

NOATIME_FL = 0x80


def _flags(fd: int) -> int:
    return struct.unpack_from("<i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(8)))[0]


def _set_flags(fd: int, flags: int) -> None:
    fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("<q", flags))


CALLS: list[tuple[str, Callable[[int], object]]] = [
    ("fchmod", lambda fd: os.fchmod(fd, 0o640)),
    ("fchown", lambda fd: os.fchown(fd, 123, 456)),
    ("futimens", lambda fd: os.utime(fd, ns=(10**18, 2 * 10**18))),
    ("futimens, mtime alone", lambda fd: syscalls.futimens(fd, (syscalls.UTIME_OMIT, 3 * 10**18))),
    ("ftruncate", lambda fd: os.ftruncate(fd, 3)),
    ("fsetxattr", lambda fd: os.setxattr(fd, "user.b", b"2")),
    ("fgetxattr", lambda fd: os.getxattr(fd, "user.a")),
    ("flistxattr", lambda fd: sorted(os.listxattr(fd))),
    ("fremovexattr of one it lacks", lambda fd: os.removexattr(fd, "user.none")),
    ("fremovexattr", lambda fd: os.removexattr(fd, "user.a")),
    ("flistxattr after", lambda fd: sorted(os.listxattr(fd))),
    ("fstat", lambda fd: (lambda st: (oct(st.st_mode), st.st_uid, st.st_gid, st.st_size, st.st_nlink))(os.fstat(fd))),
    ("fsync", os.fsync),
    # What lsattr and chattr ask by a descriptor (the driver answered ESTALE)
    ("FS_IOC_GETFLAGS", _flags),
    ("FS_IOC_FSGETXATTR", lambda fd: fcntl.ioctl(fd, FS_IOC_FSGETXATTR, bytes(28))),
    ("chattr +A", lambda fd: _set_flags(fd, _flags(fd) | NOATIME_FL)),
    ("chattr +i", lambda fd: _set_flags(fd, _flags(fd) | IMMUTABLE_FL)),
    ("FS_IOC_GETFLAGS when immutable", _flags),
    ("chattr -i", lambda fd: _set_flags(fd, _flags(fd) & ~IMMUTABLE_FL)),
    ("FS_IOC_GETFLAGS after", _flags),
]


def nameless(mnt: Path, how: str) -> int:
    """A descriptor on a file whose names are gone, made as how says."""
    if how == "made and unlinked":
        fd = os.open(mnt / "new", os.O_CREAT | os.O_RDWR, 0o644)
        os.write(fd, b"new data\n")
        os.setxattr(fd, "user.a", b"1")
        os.unlink(mnt / "new")
    elif how.startswith("lower, open for reading, unlinked, its directory"):
        fd = os.open(mnt / "dir/ro", os.O_RDONLY)
        os.unlink(mnt / "dir/ro")
        if how.endswith("renamed"):
            os.rename(mnt / "dir", mnt / "moved")
        else:
            os.rmdir(mnt / "dir")
            if how.endswith("replaced"):
                (mnt / "dir").write_bytes(b"a file where the directory was\n")
    elif how in ("lower, open for writing, unlinked", "lower, open for reading, unlinked"):
        rel = "rw" if "writing" in how else "ro"
        fd = os.open(mnt / rel, os.O_RDWR if "writing" in how else os.O_RDONLY)
        os.unlink(mnt / rel)
    else:
        rel = "replaced" if how == "lower, open for writing, renamed over" else "replaced-ro"
        fd = os.open(mnt / rel, os.O_RDWR if rel == "replaced" else os.O_RDONLY)
        (mnt / "other").write_bytes(b"other\n")
        os.rename(mnt / "other", mnt / rel)
    return fd


HOWS = ["made and unlinked", "lower, open for writing, unlinked", "lower, open for writing, renamed over",
        "lower, open for reading, unlinked", "lower, open for reading, renamed over",
        "lower, open for reading, unlinked, its directory removed",
        "lower, open for reading, unlinked, its directory removed and replaced",
        "lower, open for reading, unlinked, its directory renamed"]


def refused(how: str) -> str:
    """How overlayfs fails the copy-up of a lower file open for reading whose name went:
    a whiteout has its name's place, or its directory is gone too (the copy-up's lookup
    in that dead directory)."""
    return "ENOENT" if how.endswith(("removed", "replaced")) else "EEXIST"


def outcome(call: Callable[[int], object], fd: int) -> object:
    try:
        return call(fd)
    except OSError as exc:
        return errno.errorcode[exc.errno]


@pytest.mark.parametrize("how", HOWS)
def test_calls_by_descriptor_on_a_file_without_names_answer_as_on_overlayfs(tmp_path: Path, how: str) -> None:
    with pair(tmp_path, LOWERS) as p:
        answers = []
        for mnt in (p.kernel.mnt, p.driver.mnt):
            fd = nameless(mnt, how)
            try:
                answers.append({name: outcome(call, fd) for name, call in CALLS})
            finally:
                os.close(fd)
        kernel, driver = answers
        if "reading" in how:
            # overlayfs refuses every change (EEXIST: the copy-up fails). The driver takes
            # one of mtime alone, which looks as the kernel's write-back of the times it
            # keeps does, and comes by node alone too.
            assert (kernel.pop("futimens, mtime alone"), driver.pop("futimens, mtime alone")) == (refused(how), None)
            assert kernel["fchmod"] == kernel["futimens"] == refused(how) and kernel["fgetxattr"] == b"1"
        else:
            assert kernel["fchmod"] is None and kernel["fstat"][:3] == ("0o100640", 123, 456)
        assert driver == kernel
        assert sorted(os.listdir(p.driver.upper)) == sorted(os.listdir(p.kernel.upper))


def _reopened(path: str, flags: int) -> object:
    fd = os.open(path, flags)
    try:
        return os.write(fd, b"+") if flags & os.O_WRONLY else os.read(fd, 100)
    finally:
        os.close(fd)


@pytest.mark.parametrize("how", HOWS)
def test_a_file_without_names_opens_again_through_proc(tmp_path: Path, how: str) -> None:
    """open("/proc/PID/fd/N") of a file still open after its name went, as one copies a
    deleted file back from a process that has it open: its real file opens again, for
    writing too where it is an upper one. A lower one open for reading opens for
    reading only (a copy-up would be needed, which fails). The driver answered ESTALE."""
    with pair(tmp_path, LOWERS) as p:
        answers = []
        for mnt in (p.kernel.mnt, p.driver.mnt):
            fd = nameless(mnt, how)
            proc = f"/proc/self/fd/{fd}"
            try:
                answers.append([outcome(lambda _: _reopened(proc, flags), fd)
                                for flags in (os.O_RDONLY, os.O_WRONLY | os.O_APPEND, os.O_RDONLY)])
            finally:
                os.close(fd)
        kernel, driver = answers
        assert kernel[0] in (b"new data\n", b"lower data\n")
        assert kernel[1] == (refused(how) if "reading" in how else 1)
        assert driver == kernel
        p.check()


def _o_path_stat(st: os.stat_result) -> tuple[object, ...]:
    return oct(st.st_mode), st.st_uid, st.st_gid, st.st_size, st.st_nlink


O_PATH_CALLS: list[tuple[str, Callable[[str, int], object]]] = [
    ("fstat", lambda proc, fd: _o_path_stat(os.fstat(fd))[:4]),  # the link count: see below
    ("getxattr", lambda proc, fd: os.getxattr(proc, "user.a")),
    ("listxattr", lambda proc, fd: sorted(os.listxattr(proc))),
    ("readlinkat", lambda proc, fd: os.readlink("", dir_fd=fd)),
    ("open for reading", lambda proc, fd: _reopened(proc, os.O_RDONLY)),
    ("chmod", lambda proc, fd: os.chmod(proc, 0o600)),
    ("chown", lambda proc, fd: os.chown(proc, 12, 34)),
    ("utime", lambda proc, fd: os.utime(proc, ns=(10**18, 2 * 10**18))),
    ("setxattr", lambda proc, fd: os.setxattr(proc, "user.b", b"2")),
    ("removexattr", lambda proc, fd: os.removexattr(proc, "user.a")),
    ("truncate", lambda proc, fd: os.truncate(proc, 2)),
    ("open for writing", lambda proc, fd: _reopened(proc, os.O_WRONLY | os.O_APPEND)),
    ("fstat after", lambda proc, fd: _o_path_stat(os.fstat(fd))),
    ("listxattr after", lambda proc, fd: sorted(os.listxattr(proc))),
]


@pytest.mark.parametrize("how", [
    "lower file unlinked", "lower file renamed over", "upper file renamed over", "lower symlink unlinked",
    "upper file unlinked",
])
def test_an_entry_held_by_o_path_when_its_name_goes_answers_as_on_overlayfs(tmp_path: Path, how: str) -> None:
    """An entry held only by an O_PATH descriptor, whose open the driver never sees, once
    unlinked or renamed over: through /proc/self/fd it is answered from its real file, as
    on overlayfs. A lower one shows its attributes, xattrs and data and refuses changes
    (EEXIST, as overlayfs's copy-up fails); an upper one that a rename replaced takes
    them. The driver answered ESTALE for the lower ones.

    Differences, as the README says:
    - a lower symlink: overlayfs takes chown and utime by copying it up at its old
      name, over the whiteout, and the removed name shows again; the driver refuses
      (EEXIST), as for a file;
    - an upper file unlinked is removed at once, so that its space is free at once, and
      is stale (ESTALE) for such a holder beyond the attributes the kernel keeps, where
      overlayfs keeps it for it;
    - the link count that fstat shows before anything else is asked (below)."""
    lowers = [Dir({"file": LOWER, "link": Symlink("target")})]
    with pair(tmp_path, lowers) as p:
        answers = []
        for mnt in (p.kernel.mnt, p.driver.mnt):
            name = "link" if "symlink" in how else "made" if how.startswith("upper") else "file"
            if how.startswith("upper"):
                # Made without an open: the RELEASE of one comes later, and the driver
                # would still hold the file by it.
                os.mknod(mnt / name, stat.S_IFREG | 0o644)
                os.truncate(mnt / name, 11)
                os.setxattr(mnt / name, "user.a", b"1")
            fd = os.open(mnt / name, os.O_PATH | os.O_NOFOLLOW)
            try:
                if how.endswith("renamed over"):
                    (mnt / "other").write_bytes(b"other\n")
                    os.rename(mnt / "other", mnt / name)
                else:
                    os.unlink(mnt / name)
                answers.append({call: outcome(lambda fd: run(f"/proc/self/fd/{fd}", fd), fd) for call, run in O_PATH_CALLS})
                answers[-1]["names"] = sorted(os.listdir(mnt))
            finally:
                os.close(fd)
        kernel, driver = answers
        if how == "upper file unlinked":
            assert kernel["open for reading"] == bytes(11) and kernel["chmod"] is None
            # fstat is answered from the attributes the kernel keeps (nothing asks the
            # driver): as they were, the changes refused; all else reaches the driver.
            assert driver.pop("fstat") == kernel["fstat"] == ("0o100644", 0, 0, 11)
            assert driver.pop("fstat after") == ("0o100644", 0, 0, 11, 0)
            assert {call: driver[call] for call, _ in O_PATH_CALLS if call in driver and call != "readlinkat"} == {
                call: "ESTALE" for call, _ in O_PATH_CALLS if call in driver and call != "readlinkat"}
            p.check()
            return
        if how == "lower symlink unlinked":
            assert kernel["readlinkat"] == "target" and kernel["chmod"] == errno.errorcode[errno.EOPNOTSUPP]
            assert (kernel.pop("chown"), driver.pop("chown")) == (None, "EEXIST")
            assert (kernel.pop("utime"), driver.pop("utime")) == (None, "EEXIST")
            assert (kernel.pop("names"), driver.pop("names")) == (["file", "link"], ["file"])
            assert kernel.pop("fstat after")[1:3] == (12, 34)
            assert driver.pop("fstat after")[1:3] == (0, 0)
        elif how.startswith("lower"):
            assert kernel["open for reading"] == b"lower data\n" and kernel["chmod"] == "EEXIST"
        else:
            assert kernel["open for writing"] == 1 and kernel["fstat after"] == ("0o100600", 12, 34, 3, 0)
        # Right after an unlink the kernel shows the link count it took one off (FUSE);
        # the lower file's own, which overlayfs shows, once it asks again (here after the
        # refused changes).
        assert driver == kernel
        if how != "lower symlink unlinked":  # there overlayfs's upper has the symlink again
            p.check()


def _syncfs_error(mnt: Path) -> str | None:
    """What syncfs(2) on the mount reports: a writeback error anywhere on it since the
    last syncfs, once (through a new descriptor, which has seen none)."""
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        syscalls.syncfs(fd)
        return None
    except OSError as exc:
        return errno.errorcode[exc.errno]
    finally:
        os.close(fd)


REMOVALS: list[tuple[str, Callable[[Path], object]]] = [
    ("made, closed, unlinked", lambda mnt: ((mnt / "a").write_bytes(b"data\n"), os.unlink(mnt / "a"))),
    ("made without an open, truncated, unlinked",
     lambda mnt: (os.mknod(mnt / "b", stat.S_IFREG | 0o644), os.truncate(mnt / "b", 5), os.unlink(mnt / "b"))),
    ("linked, both names unlinked", lambda mnt: ((mnt / "c").write_bytes(b"c\n"), os.link(mnt / "c", mnt / "d"),
                                                 os.unlink(mnt / "c"), os.unlink(mnt / "d"))),
    ("copied up, closed, unlinked", lambda mnt: ((mnt / "rw").write_bytes(b"new\n"), os.unlink(mnt / "rw"))),
    ("renamed over", lambda mnt: ((mnt / "e").write_bytes(b"e\n"), (mnt / "f").write_bytes(b"f\n"),
                                  os.rename(mnt / "e", mnt / "f"))),
]


@pytest.mark.parametrize("how", [how for how, _ in REMOVALS])
def test_removing_a_file_leaves_no_error_for_syncfs_as_on_overlayfs(tmp_path: Path, how: str) -> None:
    """Removing a file leaves syncfs(2) of the mount nothing to report. The kernel writes
    back the times it keeps for a regular file right after its last name goes (the
    writeback cache), and keeps an error of that against the whole filesystem; the driver
    answered ESTALE for an upper file removed once closed, of which nothing is left, and
    the next syncfs on the mount failed with it."""
    remove = dict(REMOVALS)[how]
    with pair(tmp_path, LOWERS) as p:
        answers = []
        for mnt in (p.kernel.mnt, p.driver.mnt):
            before = _syncfs_error(mnt)
            remove(mnt)
            answers.append((before, _syncfs_error(mnt)))
        assert answers[1] == answers[0] == (None, None)
        p.check()


def test_a_replaced_upper_file_open_for_reading_is_truncated_as_on_overlayfs(tmp_path: Path) -> None:
    """truncate through /proc/self/fd of a file a rename replaced, while it is open for reading
    too: the driver changed it by the reading descriptor, which ftruncate refuses (EINVAL).
    Found as a race: a reader closed just before, whose RELEASE came after the truncation."""
    with pair(tmp_path, [Dir({"file": LOWER})]) as p:
        results = []
        for mnt in (p.kernel.mnt, p.driver.mnt):
            os.mknod(mnt / "made", stat.S_IFREG | 0o644)  # no open: none the driver could use instead
            os.truncate(mnt / "made", 11)
            fd = os.open(mnt / "made", os.O_PATH)
            reader = None
            try:
                (mnt / "other").write_bytes(b"other\n")
                os.rename(mnt / "other", mnt / "made")
                reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
                results.append(outcome(lambda fd: os.truncate(f"/proc/self/fd/{fd}", 2), fd))
                results.append((os.fstat(reader).st_size, os.pread(reader, 20, 0)))
            finally:
                if reader is not None:
                    os.close(reader)
                os.close(fd)
        assert results[:2] == results[2:] == [None, (2, bytes(2))]
        p.check()


def test_a_lower_file_open_when_its_name_goes_shows_its_own_link_count(tmp_path: Path) -> None:
    """fstat, with nothing asked in between, of a lower file open for reading when its
    name is unlinked or renamed over: overlayfs shows the lower file's link count (its
    lower names stay), where the kernel takes one off the count it holds for a FUSE file.
    Before the driver told the kernel to ask again, it showed one link less: none, or
    one for a file with two names in its layer."""
    lowers = [Dir({"one": File(b"1"), "two": File(b"2"), "twin": HardLink("two"), "other": File(b"o")})]
    ways: list[tuple[str, str, Callable[[Path], None]]] = [
        ("one", "unlinked", lambda mnt: os.unlink(mnt / "one")),
        ("one", "renamed over", lambda mnt: os.rename(mnt / "other", mnt / "one")),
        ("two", "unlinked", lambda mnt: os.unlink(mnt / "two")),
        ("twin", "renamed over by its other name", lambda mnt: os.rename(mnt / "two", mnt / "twin")),
    ]
    for name, how, remove in ways:
        with pair(tmp_path / f"{name}-{how}".replace(" ", "-"), lowers) as p:
            seen = []
            for mnt in (p.kernel.mnt, p.driver.mnt):
                fd = os.open(mnt / name, os.O_RDONLY)
                try:
                    before = os.fstat(fd).st_nlink
                    remove(mnt)
                    seen.append((before, os.fstat(fd).st_nlink, os.pread(fd, 10, 0)))
                finally:
                    os.close(fd)
            assert seen[1] == seen[0], (name, how)
            assert seen[0][0] == seen[0][1] == (1 if name == "one" else 2)
            p.check()


def _dir_stat(st: os.stat_result) -> tuple[object, ...]:
    return oct(st.st_mode), st.st_uid, st.st_gid, st.st_nlink, st.st_size, st.st_mtime_ns


DIR_CALLS: list[tuple[str, Callable[[int], object]]] = [
    ("list by fd", lambda fd: os.listdir(fd)),
    ("list the working directory", lambda fd: os.listdir(".")),
    ("fstat", lambda fd: _dir_stat(os.fstat(fd))[:5]),
    ("stat the working directory", lambda fd: oct(os.stat(".").st_mode)),
    ("fsync", os.fsync),
    ("create in it", lambda fd: os.open("x", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)),
    ("mkdir in it", lambda fd: os.mkdir("y", dir_fd=fd)),
    ("flistxattr", lambda fd: sorted(os.listxattr(fd))),
    ("fgetxattr", lambda fd: os.getxattr(fd, "user.a")),
    ("fsetxattr", lambda fd: os.setxattr(fd, "user.b", b"2")),
    ("fchmod", lambda fd: os.fchmod(fd, 0o700)),
    ("fchown", lambda fd: os.fchown(fd, 123, 456)),
    ("futimens", lambda fd: os.utime(fd, ns=(10**18, 2 * 10**18))),
    ("fremovexattr of one it lacks", lambda fd: os.removexattr(fd, "user.none")),
    ("fremovexattr", lambda fd: os.removexattr(fd, "user.a")),
    ("FS_IOC_GETFLAGS", _flags),
    ("chattr +A", lambda fd: _set_flags(fd, _flags(fd) | NOATIME_FL)),
    ("flistxattr after", lambda fd: sorted(os.listxattr(fd))),
    ("FS_IOC_GETFLAGS after", _flags),
    ("fstat after", lambda fd: _dir_stat(os.fstat(fd))),
    ("stat the working directory after", lambda fd: _dir_stat(os.stat("."))),
]


CHANGES = ("fsetxattr", "fchmod", "fchown", "futimens", "fremovexattr", "chattr +A")


@pytest.mark.parametrize("how", ["made", "lower", "merged", "renamed over", "lower renamed over"])
def test_a_removed_directory_still_in_use_answers_as_on_overlayfs(tmp_path: Path, how: str) -> None:
    """Open, and the working directory of a process, when it is removed: it lists as
    empty, nothing can be made in it, and it is answered from its real directory. An
    upper one (made, merged, renamed over) shows its xattrs and takes changes by the
    descriptor; a lower one shows them and refuses changes (ENOTDIR). What the driver
    kept of them is gone from the work dir once it has ended.

    Deliberate difference: overlayfs takes a change to a lower directory that a rename
    replaced, by copying it up at the name the rename took, over the directory renamed
    there (which then shows the old one's mode and xattrs). The driver refuses it, as
    after rmdir."""
    marked = (("user.a", b"1"),)
    lowers = [Dir({"lower": Dir(xattrs=marked), "merged": Dir({"old": File(b"o\n")}, xattrs=marked)})]
    with pair(tmp_path, lowers) as p:
        answers = []
        here = os.getcwd()
        for mnt in (p.kernel.mnt, p.driver.mnt):
            victim = mnt / ("lower" if how.startswith("lower") else "merged" if how == "merged" else "made")
            if how in ("made", "renamed over"):
                victim.mkdir()
                os.setxattr(victim, "user.a", b"1")
            elif how == "merged":
                (victim / "new").write_bytes(b"n\n")  # copied up, then emptied
                (victim / "new").unlink()
                (victim / "old").unlink()
            fd = os.open(victim, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.chdir(victim)
                if how.endswith("renamed over"):
                    (mnt / "other").mkdir()
                    os.rename(mnt / "other", victim)
                else:
                    os.rmdir(victim)
                answers.append({name: outcome(call, fd) for name, call in DIR_CALLS})
            finally:
                os.chdir(here)
                os.close(fd)
        kernel, driver = answers
        assert kernel["list by fd"] == [] and kernel["fstat"][0] == "0o40755"
        if how == "lower renamed over":
            assert [driver[name] for name in CHANGES] == ["ENOTDIR"] * len(CHANGES)
            for answers_of in (kernel, driver):  # the changes, and what the kernel's showed after them
                for name in [*CHANGES, *(name for name in answers_of if name.endswith(" after"))]:
                    del answers_of[name]
        assert driver == kernel
    work = p.driver.work / "work"
    assert [name for name in os.listdir(work) if (work / name).is_dir()] == []  # the shared whiteout stays
