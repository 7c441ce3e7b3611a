"""Inode flags through the driver against kernel overlayfs: lsattr, chattr, and
what an immutable or append-only entry refuses.

overlayfs reads an entry's flags from its real inode and keeps immutable and
append-only of an upper entry in ``trusted.overlay.protattr``; the VFS then
refuses changes to such an entry with EPERM. Over FUSE the kernel never
sees those flags, so the driver refuses the same changes itself: each test
here runs the same calls through both mounts and compares the answers, the
flags lsattr shows, the merged views and the upper layers (the protattr
xattr included).

One difference is deliberate: ``access(W_OK)`` on an immutable file is true
through the driver (false on overlayfs), since the kernel answers it from
the mode bits without asking a FUSE filesystem mounted with
``default_permissions``; the ``open`` that follows fails as on overlayfs.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from difftree import (
    FIXED_NS,
    Dir,
    File,
    Pair,
    apply,
    inode_flags,
    kernel_overlay_available,
    op,
    pair,
    upper_view,
)
from mounts import Stack, fuse_mount, kernel_mount

from unionfs import syscalls
from unionfs.protection import APPEND, IMMUTABLE

pytestmark = [
    pytest.mark.usefixtures("transport"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (kernel overlayfs, chattr, trusted xattrs)"),
    pytest.mark.skipif(os.geteuid() == 0 and not kernel_overlay_available(), reason="kernel overlayfs not available"),
]

T = FIXED_NS + 7 * 10**15 + 123_456_789  # an mtime with nanoseconds
SYNC_FL, NOATIME_FL = syscalls.FS_SYNC_FL, syscalls.FS_NOATIME_FL  # chattr +S, +A
XFLAG_IMMUTABLE, XFLAG_APPEND = 0x8, 0x10  # FS_XFLAG_*, as xfs_io -c "chattr +i" sets them


def lsattr(p: Pair, rels: tuple[str, ...]) -> list[dict[str, int]]:
    return [{rel: inode_flags(str(mnt / rel)) for rel in rels} for mnt in (p.kernel.mnt, p.driver.mnt)]


def on_both(p: Pair, call: Callable[[Path], None]) -> int | None:
    """call(mount point) through both mounts; both must answer the same errno."""
    codes = []
    for mnt in (p.kernel.mnt, p.driver.mnt):
        try:
            call(mnt)
            codes.append(None)
        except OSError as exc:
            codes.append(exc.errno)
    assert codes[0] == codes[1], f"kernel {codes[0]}, driver {codes[1]}"
    return codes[0]


def through_an_appending_fd(rel: str, change: Callable[[int], None]) -> Callable[[Path], None]:
    """A change made by a file descriptor opened with O_APPEND, as an append-only file allows."""
    def call(mnt: Path) -> None:
        fd = os.open(mnt / rel, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            change(fd)
        finally:
            os.close(fd)
    return call


FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2


def test_inode_flags_read_through_and_copied_up(tmp_path: Path) -> None:
    """lsattr (FS_IOC_GETFLAGS) shows the flags of the layer an entry is in; a copy-up
    carries the sync and noatime flags over, as overlayfs's does, and a file made in a
    copied-up directory inherits the directory's."""
    bottom = Dir({"n": File(b"n", flags=NOATIME_FL), "s": File(b"s", flags=SYNC_FL), "g": File(b"g"),
                  "d": Dir({"c": File(b"c")}, flags=NOATIME_FL)})
    rels = (".", "n", "s", "g", "d", "d/c")
    with pair(tmp_path, [Dir(), bottom]) as p:
        before = lsattr(p, rels)
        for step in (op("chmod", "n", 0o600), op("chmod", "s", 0o600), op("chmod", "g", 0o600),
                     op("write", "d/new", "excl", b"x"), op("utime", "d/c", T)):
            assert p.run(step) is None
        after = lsattr(p, (*rels, "d/new"))
        p.check()
    assert before[0] == before[1] and after[0] == after[1]
    flags = after[1]
    assert (flags["n"] & NOATIME_FL, flags["s"] & SYNC_FL, flags["d"] & NOATIME_FL, flags["d/new"] & NOATIME_FL) == (
        NOATIME_FL, SYNC_FL, NOATIME_FL, NOATIME_FL)
    assert not flags["g"] & (NOATIME_FL | SYNC_FL)
    for rel in ("n", "s", "d"):  # in the upper layer now, and the flags with them
        upper = inode_flags(str(p.driver.upper / rel))
        assert upper & (NOATIME_FL | SYNC_FL) == flags[rel] & (NOATIME_FL | SYNC_FL)


# A lower layer with an immutable and an append-only file and directory.
PROTECTED = Dir({
    "i": File(b"immutable", flags=IMMUTABLE), "a": File(b"append-only", flags=APPEND), "p": File(b"plain"),
    "di": Dir({"c": File(b"c")}, flags=IMMUTABLE), "da": Dir({"c": File(b"c")}, flags=APPEND),
})
RELS = (".", "i", "a", "p", "di", "da", "di/c", "da/c")

# (operation, errno) that overlayfs refuses on those entries, in the order of the
# VFS's checks: EPERM wins over ENOENT of an xattr, ENOTEMPTY, EISDIR.
REFUSED = [
    (op("chmod", "i", 0o600), errno.EPERM), (op("chmod", "a", 0o600), errno.EPERM),
    (op("chown", "a", 1000, 1000), errno.EPERM), (op("chmod", "di", 0o700), errno.EPERM),
    (op("write", "i", "append", b"x"), errno.EPERM), (op("write", "a", "overwrite", b"x"), errno.EPERM),
    (op("write", "a", "trunc", b"x"), errno.EPERM), (op("truncate", "a", 1), errno.EPERM),
    (op("truncate", "i", 0), errno.EPERM), (op("touch", "i"), errno.EPERM), (op("utime", "a", T), errno.EPERM),
    (op("setxattr", "a", "user.k", b"v"), errno.EPERM), (op("removexattr", "i", "user.none"), errno.EPERM),
    (op("link", "a", "a2"), errno.EPERM), (op("link", "p", "di/p2"), errno.EPERM),
    (op("rename", "a", "a3"), errno.EPERM), (op("rename", "p", "i"), errno.EPERM),
    (op("rename", "p", "di/p"), errno.EPERM), (op("rename", "da/c", "c2"), errno.EPERM),
    (op("rename", "p", "da/c"), errno.EPERM), (op("rename", "di", "dj"), errno.EPERM),
    (op("unlink", "i"), errno.EPERM), (op("unlink", "di/c"), errno.EPERM), (op("unlink", "da/c"), errno.EPERM),
    (op("rmdir", "di"), errno.EPERM), (op("rmdir", "da"), errno.EPERM),
    (op("write", "di/new", "excl", b"x"), errno.EPERM), (op("mkdir", "di/sub"), errno.EPERM),
    (op("symlink", "p", "di/s"), errno.EPERM), (op("mkfifo", "di/f"), errno.EPERM),
    (op("tmpfile", "di", None, b"x", "proc"), errno.EPERM),
    (op("write", "i", "excl", b"x"), errno.EEXIST), (op("mkdir", "di/c"), errno.EEXIST),  # EEXIST comes first
]

# What they allow: appending to an append-only file, touching it, new entries in an
# append-only directory, and changes to an entry in an immutable one (its directory is
# copied up, the flag recorded in its xattr).
ALLOWED = [
    op("write", "a", "append", b"+"), op("touch", "a"), op("write", "da/new", "excl", b"n"), op("mkdir", "da/sub"),
    op("rename", "p", "da/p"), op("write", "di/c", "append", b"+"), op("chmod", "di/c", 0o600),
    op("read", "i"), op("listdir", "di"),
]


def test_protected_lower_entries_refuse_changes(tmp_path: Path) -> None:
    with pair(tmp_path, [Dir(), PROTECTED]) as p:
        assert lsattr(p, RELS)[0]["i"] & IMMUTABLE, "the layer's flags were not set"
        for step, code in REFUSED:
            assert p.run(step) == code, p.log[-1]
        # Opened for appending, an append-only file still cannot be cut or punched.
        assert on_both(p, through_an_appending_fd("a", lambda fd: os.ftruncate(fd, 1))) == errno.EPERM
        punch = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
        assert on_both(p, through_an_appending_fd("a", lambda fd: syscalls.fallocate(fd, punch, 0, 4096))) == errno.EPERM
        assert on_both(p, through_an_appending_fd("a", lambda fd: os.posix_fallocate(fd, 0, 8192))) is None
        p.check()  # nothing refused left anything behind (the fallocate allowed grew a on both)
        for step in ALLOWED:
            assert p.run(step) is None, p.log[-1]
        flags = lsattr(p, (*(rel for rel in RELS if rel != "p"), "da/new", "da/p"))
        assert p.run(op("write", "di/new", "excl", b"x")) == errno.EPERM  # copied up for its child, still immutable
        p.check()
    assert flags[0] == flags[1]
    assert upper_view(p.driver.upper)["di"].protattr == b"i"


def test_chattr_through_the_mount(tmp_path: Path) -> None:
    """chattr +i, +a and the rest, by FS_IOC_SETFLAGS and by FS_IOC_FSSETXATTR, on lower
    and new entries: what they then refuse and allow, and what lsattr shows."""
    bottom = Dir({"p": File(b"p"), "q": File(b"q"), "d": Dir({"c": File(b"c")}), "i": File(b"i", flags=IMMUTABLE)})
    with pair(tmp_path, [Dir(), bottom]) as p:
        steps = [
            (op("chattr", "p", IMMUTABLE), None), (op("chmod", "p", 0o600), errno.EPERM),
            (op("write", "p", "append", b"x"), errno.EPERM), (op("unlink", "p"), errno.EPERM),
            (op("chattr", "p", NOATIME_FL), None),  # another flag, while immutable
            (op("chattr", "p", 0, IMMUTABLE), None), (op("chmod", "p", 0o600), None),
            (op("write", "n", "excl", b"n"), None), (op("chattr", "n", APPEND), None),
            (op("write", "n", "append", b"+"), None), (op("write", "n", "trunc", b"-"), errno.EPERM),
            (op("touch", "n"), None), (op("utime", "n", T), errno.EPERM),
            (op("chattr", "q", XFLAG_APPEND, 0, "xflags"), None), (op("truncate", "q", 0), errno.EPERM),
            (op("chattr", "q", XFLAG_IMMUTABLE, XFLAG_APPEND, "xflags"), None), (op("write", "q", "append", b"+"), errno.EPERM),
            (op("chattr", "d", IMMUTABLE), None), (op("write", "d/new", "excl", b"x"), errno.EPERM),
            (op("write", "d/c", "append", b"+"), None),
            (op("chattr", "i", 0, IMMUTABLE), None), (op("unlink", "i"), None),
            (op("mkdir", "e"), None), (op("chattr", "e", APPEND), None), (op("mkdir", "e/f"), None),
            (op("rmdir", "e/f"), errno.EPERM),
        ]
        for step, code in steps:
            assert p.run(step) == code, p.log[-1]
        flags = lsattr(p, (".", "p", "n", "q", "d", "d/c", "e", "e/f"))
        p.check()
    assert flags[0] == flags[1]
    assert (flags[1]["p"] & (IMMUTABLE | NOATIME_FL), flags[1]["n"] & APPEND, flags[1]["q"] & (IMMUTABLE | APPEND),
            flags[1]["d"] & IMMUTABLE, flags[1]["e"] & APPEND) == (NOATIME_FL, APPEND, IMMUTABLE, IMMUTABLE, APPEND)
    uppers = upper_view(p.driver.upper)
    assert (uppers["n"].protattr, uppers["q"].protattr, uppers["d"].protattr, uppers["p"].protattr) == (
        b"a", b"i", b"i", None)
    assert not inode_flags(str(p.driver.upper / "q")) & (IMMUTABLE | APPEND)  # on the record, not the inode


def test_protection_outlives_the_mount_and_kernel_overlayfs_reads_it(tmp_path: Path) -> None:
    """What chattr recorded through the driver holds after a remount, and under kernel
    overlayfs mounted on the same layers; and the other way round."""
    s = Stack.make(tmp_path, 1)
    (s.lowers[0] / "p").write_bytes(b"p")
    (s.lowers[0] / "d").mkdir()
    with fuse_mount(s) as mnt:
        assert apply(mnt, op("chattr", "p", IMMUTABLE)) is None
        assert apply(mnt, op("chattr", "d", APPEND)) is None
        assert apply(mnt, op("write", "d/x", "excl", b"x")) is None
    with kernel_mount(s) as mnt:
        assert apply(mnt, op("chmod", "p", 0o600)) == errno.EPERM
        assert apply(mnt, op("unlink", "d/x")) == errno.EPERM
        assert inode_flags(str(mnt / "p")) & IMMUTABLE and inode_flags(str(mnt / "d")) & APPEND
        assert apply(mnt, op("chattr", "d", IMMUTABLE, APPEND)) is None
    with fuse_mount(s) as mnt:
        assert apply(mnt, op("chmod", "p", 0o600)) == errno.EPERM
        assert apply(mnt, op("write", "d/y", "excl", b"y")) == errno.EPERM  # the kernel made it immutable
        assert inode_flags(str(mnt / "d")) & (IMMUTABLE | APPEND) == IMMUTABLE


def test_protection_recorded_in_the_user_namespace_with_oci_whiteouts(tmp_path: Path) -> None:
    """With whiteout=oci the driver's records are user.* xattrs, which kernel overlayfs
    reads when mounted with userxattr."""
    s = Stack.make(tmp_path, 1)
    (s.lowers[0] / "p").write_bytes(b"p")
    with fuse_mount(s, "whiteout=oci") as mnt:
        assert apply(mnt, op("chattr", "p", APPEND)) is None
        assert apply(mnt, op("write", "p", "overwrite", b"x")) == errno.EPERM
        assert apply(mnt, op("write", "p", "append", b"+")) is None
    assert os.getxattr(s.upper / "p", "user.overlay.protattr") == b"a"
    assert not any(name.startswith("trusted.overlay.") for name in os.listxattr(s.upper / "p"))
    with kernel_mount(s, "userxattr") as mnt:
        assert apply(mnt, op("write", "p", "overwrite", b"x")) == errno.EPERM
        assert (mnt / "p").read_bytes() == b"p+"


def test_protection_moves_with_its_entry(tmp_path: Path) -> None:
    """A directory holding a protected entry may move; the entry stays protected under its
    new name, and what is made later under the old name is not."""
    bottom = Dir({"d": Dir({"i": File(b"i", flags=IMMUTABLE), "x": File(b"x")}), "u": Dir()})
    with pair(tmp_path, [Dir(), bottom]) as p:
        steps = [
            (op("chmod", "d/i", 0o600), errno.EPERM),  # the driver keeps d/i's answer from here on
            (op("write", "n", "excl", b"n"), None), (op("chattr", "n", APPEND), None),
            (op("rename", "d", "e"), None), (op("rename", "u", "d"), None),
            (op("chmod", "e/i", 0o600), errno.EPERM), (op("write", "e/x", "append", b"+"), None),
            (op("write", "d/i", "excl", b"new"), None), (op("chmod", "d/i", 0o600), None),
            (op("unlink", "d/i"), None), (op("rename", "n", "d/n"), errno.EPERM),
            (op("chattr", "n", 0, APPEND), None), (op("rename", "n", "d/n"), None),
            (op("write", "n", "excl", b"again"), None), (op("write", "n", "trunc", b"-"), None),
            # the same, all in the upper layer: the new w/k is the old one's very path and layer
            (op("mkdir", "w"), None), (op("write", "w/k", "excl", b"k"), None), (op("chattr", "w/k", APPEND), None),
            (op("write", "w/k", "trunc", b"-"), errno.EPERM), (op("rename", "w", "w2"), None),
            (op("mkdir", "w"), None), (op("write", "w/k", "excl", b"k"), None), (op("write", "w/k", "trunc", b"-"), None),
            (op("write", "w2/k", "trunc", b"-"), errno.EPERM),
        ]
        for step, code in steps:
            assert p.run(step) == code, p.log[-1]
        flags = lsattr(p, (".", "d", "d/n", "e", "e/i", "e/x", "n"))
        p.check()
    assert flags[0] == flags[1] and flags[1]["e/i"] & IMMUTABLE and not flags[1]["d/n"] & APPEND


def test_a_caller_without_permission_gets_eacces_where_overlayfs_says_eperm(tmp_path: Path) -> None:
    """Deliberate differences: the VFS checks the immutable flag before the mode bits, and
    the kernel checks a FUSE inode's mode bits before it asks the driver (for access(2)
    too); with the permission, both say EPERM (the random tests accept this, see
    test_differential)."""
    bottom = Dir({"i": File(b"i", flags=IMMUTABLE), "d": Dir({"c": File(b"c")}, flags=IMMUTABLE)})
    with pair(tmp_path, [Dir(), bottom]) as p:
        for step in (op("write", "i", "append", b"x", uid=1000), op("write", "d/new", "excl", b"x", uid=1000)):
            assert (apply(p.kernel.mnt, step), apply(p.driver.mnt, step)) == (errno.EPERM, errno.EACCES)
        assert p.run(op("write", "i", "append", b"x")) == errno.EPERM
        assert p.run(op("chmod", "i", 0o666)) == errno.EPERM
        # access(W_OK) is the kernel's answer from the mode bits alone (overlayfs: EPERM),
        # and the open that follows fails on both.
        assert (os.access(p.kernel.mnt / "i", os.W_OK), os.access(p.driver.mnt / "i", os.W_OK)) == (False, True)
        assert on_both(p, lambda mnt: os.close(os.open(mnt / "i", os.O_WRONLY))) == errno.EPERM
        p.check()


def test_a_removal_by_the_call_for_the_other_type_gets_the_kernels_answer(tmp_path: Path) -> None:
    """Deliberate difference: the VFS refuses rmdir of a file, unlink of a directory and
    a rename over an entry of the other type itself; overlayfs checks the flags first
    (EPERM), while the kernel judges a FUSE inode, which carries no flags, by its type."""
    bottom = Dir({"i": File(b"i", flags=IMMUTABLE), "di": Dir(flags=IMMUTABLE), "d": Dir(),
                  "da": Dir({"f": File(b"f"), "e": Dir()}, flags=APPEND)})
    with pair(tmp_path, [Dir(), bottom]) as p:
        for step, theirs in ((op("rmdir", "i"), errno.ENOTDIR), (op("unlink", "di"), errno.EISDIR),
                             (op("rename", "i", "d"), errno.EISDIR), (op("rename", "d", "i"), errno.ENOTDIR),
                             (op("rmdir", "da/f"), errno.ENOTDIR), (op("unlink", "da/e"), errno.EISDIR)):
            assert (apply(p.kernel.mnt, step), apply(p.driver.mnt, step)) == (errno.EPERM, theirs), step
        assert p.run(op("rmdir", "di")) == errno.EPERM and p.run(op("unlink", "i")) == errno.EPERM
        p.check()


def test_a_file_that_may_never_get_a_name_linked_into_an_immutable_directory(tmp_path: Path) -> None:
    """Deliberate difference: linkat of an O_TMPFILE file made with O_EXCL is refused by
    the VFS before it asks a filesystem; overlayfs checks the directory's flags first
    (EPERM), the kernel's answer over FUSE is the file's (ENOENT). Without O_EXCL both
    refuse the link into the immutable directory alike."""
    bottom = Dir({"di": Dir({"c": File(b"c")}, flags=IMMUTABLE), "d": Dir()})
    with pair(tmp_path, [Dir(), bottom]) as p:
        step = op("tmpfile", "d", "di/t", b"x", "excl")
        assert (apply(p.kernel.mnt, step), apply(p.driver.mnt, step)) == (errno.EPERM, errno.ENOENT)
        assert p.run(op("tmpfile", "d", "di/t", b"x", "proc")) == errno.EPERM
        assert p.run(op("tmpfile", "d", "d/t", b"x", "excl")) == errno.ENOENT  # anywhere, on both
        assert p.run(op("listdir", "di")) is None
        p.check()


def test_a_file_made_immutable_while_open_for_writing_is_still_cut_through_that_fd(tmp_path: Path) -> None:
    """ftruncate checks only append-only (do_ftruncate): a file opened for writing and then
    made immutable is truncated through that fd on overlayfs, and here too; by its path,
    and once append-only, it is not."""
    bottom = Dir({"i": File(b"immutable soon"), "a": File(b"append-only soon")})
    with pair(tmp_path, [Dir(), bottom]) as p:
        def cut_after(rel: str, flag: int) -> Callable[[Path], None]:
            def call(mnt: Path) -> None:
                fd = os.open(mnt / rel, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    assert apply(mnt, op("chattr", rel, flag)) is None
                    os.ftruncate(fd, 4)
                finally:
                    os.close(fd)
            return call

        assert on_both(p, cut_after("i", IMMUTABLE)) is None
        assert on_both(p, cut_after("a", APPEND)) == errno.EPERM
        assert p.run(op("truncate", "i", 2)) == errno.EPERM
        assert p.run(op("read", "i")) is None
        p.check()
    assert (p.driver.upper / "i").read_bytes() == b"immu"
