"""The driver against kernel overlayfs: same lower trees, same operations, same answers.

Two identical stacks are built from one description; one is mounted with
kernel overlayfs (the reference), the other with the driver. After every
operation both must have answered the same errno, and the merged views and
the upper layers must agree (see ``difftree`` for what is compared). The
entries that kept their inode number since the last comparison (a renamed
one at its new name) must be the same on both: a copy-up keeps the number,
a copy-up that breaks a lower hard link does not. Generated sequences also
unmount and remount both, after which the same must hold, and hold files
open while other operations change them: what is read, written and fstat'ed
through such a file must be the same on both. They also remove whole
directories as ``rm -rf`` does, a call at a time, each compared
(``difftree.tree_removal``).

The kernel is mounted with ``redirect_dir=on``: renaming a directory that has
lower parts is allowed by the driver (it writes ``trusted.overlay.redirect``),
while overlayfs's default on this kernel answers EXDEV. Views are read after
dropping the dentry and inode caches, so that they show what the driver
answers rather than what the kernel kept, and (after every targeted test's
operations and at the end of each generated sequence) also before, with the
caches the operations left warm, as a program sees them. The errno of each
operation is taken with warm caches.

Generated lower layers hold whiteouts and opaque directories in every form:
overlayfs's (0/0 devices, xattr whiteouts, the opaque xattr) and OCI's
``.wh.`` files; the kernel's copies get the overlayfs form of each OCI marker
(``difftree.as_overlayfs``), so one reference checks the driver's reading of
all of them. About one entry in four carries an inode flag (+i, +a, +A).
Generated sequences run a third time with the driver writing the OCI form in
its upper layer (``whiteout=oci``): the merged views are compared, and the
driver reads its upper back at the remounts and after the last operation.

A third of the generated operations run as an unprivileged user (uid/gid
1000, owner of some lower entries), so the permission model is compared too;
the driver is mounted with ``allow_other``, without which FUSE refuses every
other user outright.

Deliberate differences, each stated by a test below: .wh.* names and
user.overlay.*/unionfs.* xattr names are refused, overlayfs lists
whiteouts of single-layer lower directories (the driver never does; see
``difftree.diff_views``), overlayfs refuses to remove a directory that only
xattr whiteouts empty (the driver removes it), a truncation to the size a
file has keeps its times, a punch refused in an append-only file changes its
times (FUSE sets them before asking), and a change to an immutable or
append-only entry that the kernel refuses before asking the driver gets
EACCES, ENOTDIR or EISDIR where overlayfs says EPERM (see
``documented_difference``), and file handles are the kernel's FUSE code's,
where overlayfs without nfs_export makes none.

DIFF_EXAMPLES=N runs N generated examples instead of the default budget.
"""
from __future__ import annotations

import ctypes
import dataclasses
import errno
import fcntl
import os
import stat
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from budgets import examples, long_run_marks
from difftree import (
    FIXED_NS,
    FS_IOC_GETFLAGS,
    FS_IOC_SETFLAGS,
    IMMUTABLE_FL,
    Dir,
    Fifo,
    File,
    HardLink,
    Meta,
    Node,
    Op,
    FALLOC_KEEP_SIZE,
    FALLOC_PUNCH_HOLE,
    FALLOC_ZERO_RANGE,
    FD_ALLOCATE,
    FD_CHANGE,
    FD_CLOSE,
    FD_COPY,
    FD_MAP_WRITE,
    FD_READ,
    FD_REMOVE,
    FD_REOPEN,
    FD_STAT,
    FD_WRITE,
    FD_XATTRS,
    HELD_OPS,
    HOLD,
    KERNEL_OPTIONS,
    REMOUNT,
    RMTREE,
    Pair,
    Symlink,
    View,
    Whiteout,
    apply,
    build_layer,
    drop_caches,
    errname,
    fix_hardlinks,
    inode_flags,
    is_xattr_whiteout,
    kernel_overlay_available,
    link_open_file,
    lower_dirs,
    op,
    overlayfs_layer,
    pair,
    pair_over,
    redirected,
    scratch,
    through_two_names,
    tree_removal,
    upper_view,
    view,
    walk_spec,
)
from hypothesis import HealthCheck, Phase, event, given, reject, settings
from hypothesis import strategies as st
from mounts import Stack, fuse_mount, kernel_mount
from users import CAP_DAC_READ_SEARCH, CAP_FSETID, errno_without

from unionfs.protection import APPEND, IMMUTABLE


pytestmark = [
    pytest.mark.usefixtures("transport"),  # every test over /dev/fuse and over the per-CPU io_uring queues
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (kernel overlayfs, device nodes, trusted xattrs)"),
    pytest.mark.skipif(os.geteuid() == 0 and not kernel_overlay_available(), reason="kernel overlayfs not available"),
    *long_run_marks("DIFF_EXAMPLES", seconds_each=1.0),
]

# -- generated trees and operations ----------------------------------------------

NAMES = ("a", "b", "c", "d")  # never ".wh.*": the driver refuses to create those (EINVAL), overlayfs doesn't
OWNERS = ((0, 0), (1000, 1000), (1000, 0))
# trusted.overlay.overlay.e: a user's trusted.overlay.e, kept escaped by the union whose upper held it
XATTRS = (("user.k", b"1"), ("user.m", b"two"), ("trusted.t", b"t"), ("trusted.overlay.overlay.e", b"E"))
# what operations set and remove: a user's overlay.* in either prefix, which a mount keeps
# escaped in its own and which the other takes apart (taken_apart)
XATTR_NAMES = ("user.k", "trusted.t", "trusted.overlay.e", "user.overlay.e")
FILE_MODES = (0o644, 0o600, 0o755, 0o4755, 0o2750)
DIR_MODES = (0o755, 0o700, 0o2775, 0o777, 0o1777)


def posix_acl(*entries: tuple[int, int, int]) -> bytes:
    """A system.posix_acl_* value: (tag, perm, id) entries, as setfacl would store them."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, uid) for tag, perm, uid in entries)


_ANY = 0xFFFFFFFF
# user::rwx user:1000:rwx group::r-x mask::rwx other::---
ACL = posix_acl((0x01, 7, _ANY), (0x02, 7, 1000), (0x04, 5, _ANY), (0x10, 7, _ANY), (0x20, 0, _ANY))
ACL_XATTRS = (("system.posix_acl_access", ACL), ("system.posix_acl_default", ACL))
_ACL_DIR = Dir({"f": File(), "e": Dir()}, mode=0o770, xattrs=ACL_XATTRS)

_name = st.sampled_from(NAMES)
# shallow paths more often: they hit existing entries
paths = st.one_of(_name, _name, st.tuples(_name, _name).map("/".join), st.tuples(_name, _name, _name).map("/".join))
datas = st.sampled_from((b"", b"x", b"hello\n", b"0123456789" * 10))
xattr_sets = st.lists(st.sampled_from(XATTRS), max_size=3, unique_by=lambda kv: kv[0]).map(lambda xs: tuple(sorted(xs)))
# POSIX ACLs: an access ACL on files and dirs, a default ACL (inherited by new entries) on dirs.
# The driver negotiates FUSE_POSIX_ACL, so the kernel checks them as it does on overlayfs.
GENERATE_ACLS = True
_acl = st.booleans() if GENERATE_ACLS else st.just(False)
file_xattr_sets = st.tuples(xattr_sets, _acl).map(lambda t: tuple(sorted(t[0] + (ACL_XATTRS[:1] if t[1] else ()))))
dir_xattr_sets = st.tuples(xattr_sets, _acl).map(lambda t: tuple(sorted(t[0] + (ACL_XATTRS if t[1] else ()))))
fixed_times = st.integers(1, 9).map(lambda k: FIXED_NS + 10**15 + 111_111 * k)
NOATIME_FL = 0x80  # chattr +A
# inode flags of lower files and dirs, on about one in four: protected lower entries refuse changes
lower_flags = st.sampled_from((0,) * 8 + (IMMUTABLE, APPEND, NOATIME_FL))


def _leaves(markers: bool) -> st.SearchStrategy:
    options = [
        st.builds(File, datas, st.sampled_from(FILE_MODES), st.sampled_from(OWNERS), file_xattr_sets, lower_flags),
        st.builds(Symlink, paths),
        st.just(HardLink("")),
        st.builds(Fifo, st.sampled_from((0o644, 0o600))),
    ]
    if markers:  # either form: the kernel's layers get the overlayfs one (difftree.as_overlayfs)
        options.append(st.builds(Whiteout, st.sampled_from(("chardev", "oci", "xattr"))))
    return st.one_of(options)


def _oci_hides(markers: bool) -> st.SearchStrategy[tuple[str, ...]]:
    """.wh.NAME markers beside the entries, which they must not hide if the layer has NAME."""
    return st.lists(st.sampled_from(NAMES), max_size=1).map(tuple) if markers else st.just(())


def _node(depth: int, markers: bool) -> st.SearchStrategy:
    if depth >= 3:
        return _leaves(markers)
    return st.one_of(_leaves(markers), _dir(depth, markers))


def _dir(depth: int, markers: bool) -> st.SearchStrategy[Dir]:
    return st.builds(
        Dir,
        st.dictionaries(st.sampled_from(NAMES), _node(depth + 1, markers), max_size=3),
        st.sampled_from(DIR_MODES),
        st.sampled_from(OWNERS),
        st.sampled_from((None, "xattr", "oci")) if markers else st.none(),
        dir_xattr_sets,
        oci_hides=_oci_hides(markers),
        flags=lower_flags,
    )


def _xattr_whiteouts_where_read(tree: Dir) -> Dir:
    """0/0 whiteouts for the xattr ones of an opaque directory, which overlayfs does not look
    for there (an opaque directory has no use for whiteouts, and its overlay.opaque is y, not x)."""
    def fix(node: Node, opaque: bool) -> Node:
        if isinstance(node, Dir):
            return _xattr_whiteouts_where_read(node)
        if opaque and isinstance(node, Whiteout) and node.form == "xattr":
            return Whiteout()
        return node
    children = {name: fix(node, tree.opaque is not None) for name, node in tree.children.items()}
    return dataclasses.replace(tree, children=children)


@st.composite
def layer_trees(draw: st.DrawFn, markers: bool) -> Dir:
    """One lower layer; ``markers``: may hold whiteouts and opaque dirs, in the overlayfs and
    the OCI forms, and redirects (not the bottom layer)."""
    # overlay.opaque on the root, which overlayfs ignores there (an OCI marker there would
    # hide what overlayfs can only hide name by name: not generated)
    root = draw(st.builds(Dir, st.dictionaries(st.sampled_from(NAMES), _node(1, markers), max_size=4),
                          opaque=st.sampled_from((None, None, None, "xattr")) if markers else st.none(),
                          oci_hides=_oci_hides(markers)))
    return _xattr_whiteouts_where_read(fix_hardlinks(root, draw(st.lists(st.integers(0, 7), max_size=4))))


def _spec_dir(tree: Dir, rel: str) -> Dir | None:
    """The directory at rel of a layer description, if it has one there."""
    node: Node = tree
    for name in filter(None, rel.split("/")):
        if not isinstance(node, Dir) or name not in node.children:
            return None
        node = node.children[name]
    return node if isinstance(node, Dir) else None


def _with_redirects(draw: st.DrawFn, tree: Dir, old: str, below: Sequence[Dir], anywhere: list[str]) -> Dir:
    """tree (a directory of one layer, at old in the layers below) with some of its
    directories redirected, as if renamed: to a directory that old holds in the
    layers below (a relative redirect, the name), to any directory of theirs
    (absolute, the path) or to a path they may not have. ``old`` follows the
    redirects above, so a relative redirect below a redirected directory names an
    entry where that directory's lower parts are. ``anywhere``: the paths of the
    directories below."""
    siblings = sorted({n for d in below if (p := _spec_dir(d, old)) for n, c in p.children.items() if isinstance(c, Dir)})
    children: dict[str, Node] = {}
    for name, node in tree.children.items():
        if isinstance(node, Dir):
            redirect = draw(st.one_of(st.none(), st.sampled_from(siblings or [None]), st.sampled_from(siblings or [None]),
                                      st.sampled_from(anywhere or [None]), paths.map("/".__add__)))
            where = f"{old}/{name}" if redirect is None else redirect if redirect.startswith("/") else f"{old}/{redirect}"
            node = dataclasses.replace(_with_redirects(draw, node, where, below, anywhere), redirect=redirect)
        children[name] = node
    return dataclasses.replace(tree, children=children)


@st.composite
def lower_stacks(draw: st.DrawFn, redirects: bool = True) -> tuple[Dir, ...]:
    """Two or three lower layers, top first; directories above the bottom one may be redirected."""
    n = draw(st.integers(2, 3))
    layers = [draw(layer_trees(markers=i < n - 1)) for i in range(n)]
    if not redirects:
        return tuple(layers)
    stack = []
    for i, layer in enumerate(layers[:-1]):
        anywhere = sorted({"/" + rel for d in layers[i + 1:] for rel, c in walk_spec(d) if isinstance(c, Dir)})
        stack.append(_with_redirects(draw, layer, "", layers[i + 1:], anywhere))
    return (*stack, layers[-1])


# what FD_CHANGE does to a held entry: (kind, argument)
FD_CHANGES = (("chmod", 0o600), ("chmod", 0o755), ("chown", 1000), ("chown", 0),
              ("utime", FIXED_NS + 5 * 10**15 + 987_654_321), ("truncate", 0), ("truncate", 3),
              ("setxattr", b"v"), ("removexattr", "user.k"), ("removexattr", "user.m"))

_operations = st.one_of(
    st.builds(op, st.just("write"), paths, st.sampled_from(("create", "excl", "overwrite", "append", "trunc")), datas,
              st.sampled_from((0o644, 0o600))),
    st.builds(op, st.just("truncate"), paths, st.sampled_from((0, 3, 200))),
    st.builds(op, st.just("copyrange"), st.one_of(_name, paths), st.one_of(_name, paths)),
    st.builds(op, st.just("mkdir"), paths, st.sampled_from((0o755, 0o700))),
    st.builds(op, st.just("rmdir"), paths),
    # rm -rf of a directory: its entries removed by the caller, then the directory, in the
    # order rm takes them (the rmdirs that succeed)
    st.builds(op, st.just(RMTREE), st.integers(0, 7)),
    st.builds(op, st.just("unlink"), paths),
    st.builds(op, st.just("rename"), paths, paths),
    # an exchange needs two entries: names in the root, which hold most of them, more often
    st.builds(op, st.just("rename2"), st.one_of(_name, paths), st.one_of(_name, paths),
              st.sampled_from(("noreplace", "exchange", "exchange", "whiteout"))),
    st.builds(op, st.just("symlink"), paths, paths),
    st.builds(op, st.just("link"), paths, paths),
    st.builds(op, st.just("chmod"), paths, st.sampled_from((0o600, 0o755, 0o4755, 0o2755))),
    st.builds(op, st.just("chown"), paths, st.sampled_from((0, 1000, -1)), st.sampled_from((0, 1000, -1))),
    st.builds(op, st.just("utime"), paths, fixed_times),
    st.builds(op, st.just("setxattr"), paths, st.sampled_from(XATTR_NAMES + ("user.n",)), st.sampled_from((b"v", b"w2"))),
    st.builds(op, st.just("removexattr"), paths, st.sampled_from(XATTR_NAMES + ("user.m",))),
    st.builds(op, st.just("mkfifo"), paths, st.sampled_from((0o644,))),
    st.builds(op, st.just("mknod"), paths, st.sampled_from(("chr", "sock"))),
    # mostly in the root, which exists: elsewhere most fail at the open
    st.builds(op, st.just("tmpfile"), st.sampled_from((".", ".", ".", "a", "b/c")), st.one_of(st.none(), _name, paths),
              datas, st.sampled_from(("empty-path", "proc", "excl"))),
    # chattr +i, +a, +A and their removal: what is protected then refuses changes (EPERM)
    st.builds(op, st.just("chattr"), paths, st.sampled_from((IMMUTABLE, APPEND, NOATIME_FL, 0)),
              st.sampled_from((0, IMMUTABLE | APPEND))),
    st.builds(op, st.just("touch"), paths),
    # what an entry is (its inode number, its names) outlives the mount
    st.just(op(REMOUNT)),
    # files and directories held open while other operations change them: what each reads, writes
    # and fstat shows
    st.builds(op, st.just(HOLD), st.integers(0, 7), st.sampled_from(("r", "r", "rw", "append", "trunc", "dir"))),
    st.builds(op, st.sampled_from((FD_READ, FD_READ, FD_STAT, FD_CLOSE, FD_XATTRS)), st.integers(0, 3)),
    # ... their names removed while they are held (whatever the name holds by then) ...
    st.builds(op, st.just(FD_REMOVE), st.integers(0, 3)),
    st.builds(op, st.just(FD_WRITE), st.integers(0, 3), st.sampled_from((b"w", b"written\n"))),
    # ... and changed by their descriptors, after their names went too
    st.builds(lambda i, change: op(FD_CHANGE, i, *change), st.integers(0, 3), st.sampled_from(FD_CHANGES)),
    # ... allocated in, punched and zeroed (fallocate), grown or not ...
    st.builds(op, st.just(FD_ALLOCATE), st.integers(0, 3),
              st.sampled_from((0, FALLOC_KEEP_SIZE, FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE, FALLOC_ZERO_RANGE,
                               FALLOC_ZERO_RANGE | FALLOC_KEEP_SIZE)),
              st.sampled_from((0, 1, 4096)), st.sampled_from((3, 5000))),
    # ... and opened again through /proc/self/fd, after their names went too
    st.builds(op, st.just(FD_REOPEN), st.integers(0, 3), st.sampled_from(("r", "append"))),
    # ... written through a shared mapping, and copied from one into another (or itself)
    st.builds(op, st.just(FD_MAP_WRITE), st.integers(0, 3), st.sampled_from((b"m", b"mapped\n"))),
    st.builds(op, st.just(FD_COPY), st.integers(0, 3), st.integers(0, 3), st.sampled_from((0, 2)),
              st.sampled_from((0, 1, 4096)), st.sampled_from((3, 100, 5000))),
)
# a third of them by an unprivileged user, who owns some of the lower entries (OWNERS);
# the pair's own operations are root's
operations = st.tuples(_operations, st.sampled_from((0, 0, 1000))).map(
    lambda t: t[0] if t[0].name in (REMOUNT, *HELD_OPS) else dataclasses.replace(t[0], uid=t[1]))


def protection_decides(root: Path, operation: Op) -> bool:
    """Whether an entry the operation names, or its directory (reached through any
    symlinks on the way, as the call reaches it), is immutable or append-only."""
    top = os.path.realpath(root)
    for arg in operation.args:
        if not isinstance(arg, str):
            continue
        paths = [str(root / arg)]
        directory = os.path.realpath(root / (os.path.dirname(arg) or "."))
        if os.path.commonpath([directory, top]) == top:  # not where a symlink leads out of the mount
            paths.append(directory)
        for path in paths:
            try:
                if inode_flags(path) & (IMMUTABLE | APPEND):
                    return True
            except OSError:
                continue
    return False


# The VFS checks these itself, before a FUSE filesystem is asked; overlayfs checks the flags first.
TYPE_CHECKED = {"rmdir": (errno.ENOTDIR,), "unlink": (errno.EISDIR,), "rename": (errno.ENOTDIR, errno.EISDIR),
                "rename2": (errno.ENOTDIR, errno.EISDIR)}


def documented_difference(p: Pair, operation: Op) -> Callable[[int | None, int | None], bool]:
    """Where overlayfs answers EPERM for a protected entry (the VFS checks the flag first)
    and the kernel answers for a FUSE inode, which carries no flags, before asking the
    driver: EACCES to an unprivileged caller without permission (the mode bits), ENOTDIR
    or EISDIR to a removal by the call for the other type, and ENOENT to the link of a
    file that may never get a name (O_TMPFILE with O_EXCL)."""
    def accept(kernel: int | None, driver: int | None) -> bool:
        if kernel != errno.EPERM or not protection_decides(p.kernel.mnt, operation):
            return False
        if operation.uid and driver == errno.EACCES:
            event("EPERM against EACCES: an unprivileged caller and a protected entry")
            return True
        if driver in TYPE_CHECKED.get(operation.name, ()):
            event(f"EPERM against {errname(driver)}: {operation.name} of a protected entry of the other type")
            return True
        if operation.name == "tmpfile" and operation.args[-1] == "excl" and driver == errno.ENOENT:
            event("EPERM against ENOENT: a file that may never get a name, linked into a protected directory")
            return True
        return False
    return accept


_SET_TIMES_FIRST = FALLOC_PUNCH_HOLE | FALLOC_ZERO_RANGE  # fallocate modes that FUSE changes the times for first


def times_set_before_asking(p: Pair, operation: Op, answer: int | None) -> bool:
    """Where the kernel changed a file's times before it asked the driver, which then
    refused: FUSE's fallocate that punches or zeroes a range updates mtime and ctime
    first (file_modified) and writes them back after the refusal, and an append-only
    file refuses it (EPERM); overlayfs's VFS refuses before any of that. The reference
    gets the same new times, so that the rest is compared (see
    test_a_punch_refused_in_an_append_only_file_leaves_the_times_fuse_set)."""
    if operation.name != FD_ALLOCATE or answer != errno.EPERM or not int(operation.args[1]) & _SET_TIMES_FIRST:
        return False
    kernel_fd = p.held[int(operation.args[0]) % len(p.held)][0]
    try:
        os.utime(kernel_fd)  # both times now, which an append-only file allows
    except PermissionError:  # an immutable one does not: its flag is lifted on the reference meanwhile
        flags = struct.unpack_from("<i", fcntl.ioctl(kernel_fd, FS_IOC_GETFLAGS, bytes(8)))[0]
        fcntl.ioctl(kernel_fd, FS_IOC_SETFLAGS, struct.pack("<q", flags & ~IMMUTABLE_FL))
        try:
            os.utime(kernel_fd)
        finally:
            fcntl.ioctl(kernel_fd, FS_IOC_SETFLAGS, struct.pack("<q", flags))
    return True


def empty_over_xattr_whiteouts(p: Pair, rel: object) -> bool:
    """Whether rel shows no entry through the kernel while a lower layer has xattr whiteouts
    in it, which overlayfs counts as entries when it judges it empty (see
    test_a_directory_emptied_by_xattr_whiteouts_is_empty). Names it lists but does not
    find (whiteouts of a directory only one layer has) are no entries."""
    path = p.kernel.mnt / str(rel)
    try:
        if any(os.path.lexists(path / name) for name in os.listdir(path)):
            return False
    except OSError:
        return False
    for path in lower_dirs(p.kernel.lowers, redirected(p.kernel.upper, _parent_resolved(p.kernel.mnt, str(rel)))):
        if any(is_xattr_whiteout(os.path.join(path, name), os.lstat(os.path.join(path, name))) for name in os.listdir(path)):
            return True
    return False


def size_is(root: Path, path: object, length: object) -> bool:
    """Whether path is a regular file of that length (through the mount at root)."""
    try:
        st = os.stat(root / str(path))
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == length


def lower_dir_reached_twice(lowers: Sequence[Path], v: View) -> bool:
    """Whether two directories of the view take lower parts from one lower directory:
    a redirect to a directory that is still in view at its own name. Overlayfs never
    writes such layers (a rename leaves a whiteout at the old name), and reads them
    as it happens: ESTALE for one of the two, or one inode for two files."""
    seen: set[str] = set()
    for rel, meta in v.entries.items():
        if meta.kind == "dir":
            for path in lower_dirs(lowers, rel):
                if path in seen:
                    return True
                seen.add(path)
    return False


def taken_apart(p: Pair, operation: Op) -> bool:
    """Whether operation names an overlay.* xattr that the two mounts take apart: one in
    the prefix overlayfs does not keep its records in, which it takes for a plain xattr
    and the driver keeps for itself (test_other_overlay_and_private_xattrs_are_refused);
    under the OCI form any, the driver's own prefix being user.overlay. (OCI_SEQUENCES)."""
    names = [str(arg) for arg in operation.args if ".overlay." in str(arg)]
    return bool(names) and ("whiteout=oci" in p.driver_options or not all(n.startswith(p.records) for n in names))


def moves_lower_dir(p: Pair, operation: Op) -> bool:
    """Whether a rename would move a directory with lower parts (its source, or for an
    exchange either name): overlayfs without redirect_dir answers EXDEV there."""
    source, target = (str(arg) for arg in operation.args[:2])
    names = (source, target) if operation.name == "rename2" and operation.args[2] == "exchange" else (source,)
    return any(os.path.isdir(p.kernel.mnt / name) and not os.path.islink(p.kernel.mnt / name)
               and bool(lower_dirs(p.kernel.lowers, _parent_resolved(p.kernel.mnt, name))) for name in names)


def _parent_resolved(mnt: Path, name: str) -> str:
    """name with the symlinks in its parent followed, as a rename reaches it (its last
    part is not followed); outside the mount, as it was."""
    root = os.path.realpath(mnt)
    parent = os.path.relpath(os.path.realpath(mnt / os.path.dirname(name)), root)
    return name if parent.startswith("..") else os.path.normpath(os.path.join(parent, os.path.basename(name)))


def random_operations(tmp_path: Path, lowers: tuple[Dir, ...], ops: list[Op], driver_options: tuple[str, ...] = (),
                      kernel_options: tuple[str, ...] = KERNEL_OPTIONS, walk: bool = True) -> None:
    """Any tree, any operations: same errno for each, same merged view and upper after each
    (the upper where the driver writes overlayfs's forms). walk False: the kernel's caches
    only dropped after each operation, the views compared at the end."""
    with scratch(tmp_path) as base, pair(base, lowers, kernel_options, root_mode=0o1777, driver_options=driver_options) as p:
        if lower_dir_reached_twice(p.kernel.lowers, p.check()):
            event("layers: rejected, a lower directory reached by two names")
            reject()
        pending = list(reversed(ops))
        while pending:
            operation = pending.pop()
            if operation.name == RMTREE:
                removals = tree_removal(p.kernel.mnt, operation)
                event(f"rmtree: {'the root' if removals[-1].args == ('.',) else 'a directory'}")
                pending.extend(reversed(removals))
                continue
            if operation.name == FD_REMOVE:
                removal = p.held_removal(operation)
                if removal is None:
                    continue
                operation = removal
            if operation.name == "truncate" and size_is(p.kernel.mnt, *operation.args):
                event("truncate: skipped, to the size the file has")  # see test_truncate_to_the_same_size
                continue
            if operation.name in ("rmdir", "rename") and empty_over_xattr_whiteouts(p, operation.args[-1]):
                event(f"{operation.name}: skipped, a directory emptied by xattr whiteouts")
                continue
            if operation.name in ("rename", "rename2") and "userxattr" in kernel_options and moves_lower_dir(p, operation):
                event(f"{operation.name}: skipped, a directory with lower parts under userxattr")  # see USER_SEQUENCES
                continue
            if taken_apart(p, operation):
                event(f"{operation.name}: skipped, an overlay.* xattr the two take apart")
                continue
            answer = p.run(operation, documented_difference(p, operation))
            event(f"{operation.name}: {errname(answer)}")  # --hypothesis-show-statistics
            if times_set_before_asking(p, operation, answer):
                event("fallocate refused: the times FUSE set before asking")
            if walk:
                p.check(warm=False)
            else:
                drop_caches()
        p.check()  # with warm caches too, once: what any of them left stale is still there
        if driver_options:  # what the upper layer holds, read back
            p.remount()
            p.check(warm=False)


GENERATED = settings(
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no "explain": slow with mounts
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
SEQUENCES = given(lowers=lower_stacks(), ops=st.lists(operations, min_size=5, max_size=15))


# The union's rules are the same over both transports, and the targeted tests below
# take the rings' request paths too; so /dev/fuse, where requests come unless the
# kernel offers the rings, gets the larger share of the generated examples.
@pytest.mark.parametrize("transport", ["dev"], indirect=True)
@settings(GENERATED, max_examples=examples("DIFF_EXAMPLES", 300))
@SEQUENCES
def test_random_operations_match_kernel(tmp_path: Path, lowers: tuple[Dir, ...], ops: list[Op]) -> None:
    random_operations(tmp_path, lowers, ops)


@pytest.mark.parametrize("transport", ["io_uring"], indirect=True)
@settings(GENERATED, max_examples=examples("DIFF_EXAMPLES", 100))
@SEQUENCES
def test_random_operations_match_kernel_over_rings(tmp_path: Path, lowers: tuple[Dir, ...], ops: list[Op]) -> None:
    random_operations(tmp_path, lowers, ops)


# Walking the merged view after each operation looks every name up again, which also
# mends what the driver keeps of names whose directories the kernel forgot. Here the
# caches are only dropped between operations, so the kernel forgets directories while
# files in them are held open or have names elsewhere, and the next operations meet
# the driver's table as programs do (the stress test found a LINK that gave a second
# name of a file another inode that way); the views are compared at the end.
@pytest.mark.parametrize("transport", ["dev"], indirect=True)
@settings(GENERATED, max_examples=examples("DIFF_EXAMPLES", 100))
@SEQUENCES
def test_random_operations_match_kernel_unwalked(tmp_path: Path, lowers: tuple[Dir, ...], ops: list[Op]) -> None:
    random_operations(tmp_path, lowers, ops, walk=False)


Xattrs = tuple[tuple[str, bytes], ...]


def _with_xattrs(tree: Dir, change: Callable[[Xattrs], Xattrs]) -> Dir:
    """A layer with the xattrs of each file and directory changed."""
    def node_(node: Node) -> Node:
        if isinstance(node, Dir):
            return _with_xattrs(node, change)
        if isinstance(node, File):
            return dataclasses.replace(node, xattrs=change(node.xattrs))
        return node
    return dataclasses.replace(tree, children={name: node_(node) for name, node in tree.children.items()},
                               xattrs=change(tree.xattrs))


def without_overlay_xattrs(tree: Dir) -> Dir:
    """A layer without xattrs named *.overlay.*, escaped ones of a user's included."""
    return _with_xattrs(tree, lambda xattrs: tuple(x for x in xattrs if ".overlay." not in x[0]))


def user_overlay_xattrs(tree: Dir) -> Dir:
    """A layer whose user's overlay.* xattrs are kept escaped in user.overlay.overlay.*,
    as a union with userxattr keeps them, instead of trusted.overlay.overlay.*."""
    return _with_xattrs(tree, lambda xattrs: tuple(sorted(
        ("user." + name[len("trusted."):] if name.startswith("trusted.overlay.") else name, value)
        for name, value in xattrs)))


# The OCI form in the upper layer (.wh. files, .wh..wh..opq): its own paths for whiteouts,
# opaque directories and renames. The merged views are compared after each operation;
# the upper layers are not (the forms differ), but the generated remounts read it back.
# A driver that writes the OCI form keeps its records in user.overlay.* (it needs no
# privilege), where overlayfs keeps them in trusted.overlay.*: each shows, hides and
# escapes a user's overlay.* xattrs by its own namespace, so none is generated here.
OCI_SEQUENCES = given(lowers=lower_stacks().map(lambda stack: tuple(map(without_overlay_xattrs, stack))),
                      ops=st.lists(operations, min_size=5, max_size=15))


@pytest.mark.parametrize("transport", ["dev"], indirect=True)
@settings(GENERATED, max_examples=examples("DIFF_EXAMPLES", 60))
@OCI_SEQUENCES
def test_random_operations_match_kernel_with_oci_whiteouts(tmp_path: Path, lowers: tuple[Dir, ...], ops: list[Op]) -> None:
    random_operations(tmp_path, lowers, ops, ("whiteout=oci",))


# overlayfs with userxattr (what a mount in a user namespace needs: rootless podman's)
# keeps its records in user.overlay.*, and there neither follows redirects nor writes
# them; so the layers hold none, and a rename of a directory with lower parts, which it
# refuses (EXDEV) and the driver does, is left out. Its records are compared in the
# uppers, in that prefix only, where both keep a user's user.overlay.* escaped. It takes
# a trusted.overlay.* xattr for a plain one, which the driver keeps for itself: the
# operations on one are left out, and the layers hold none.
USER_SEQUENCES = given(lowers=lower_stacks(redirects=False).map(lambda stack: tuple(map(user_overlay_xattrs, stack))),
                       ops=st.lists(operations, min_size=5, max_size=15))


@pytest.mark.parametrize("transport", ["dev"], indirect=True)
@settings(GENERATED, max_examples=examples("DIFF_EXAMPLES", 60))
@USER_SEQUENCES
def test_random_operations_match_kernel_with_userxattr(tmp_path: Path, lowers: tuple[Dir, ...], ops: list[Op]) -> None:
    random_operations(tmp_path, lowers, ops, ("userxattr",), ("userxattr",))


# -- one rule each -----------------------------------------------------------------
# Each test runs its operations on both mounts (same errno asserted by Pair.run),
# compares views and uppers (Pair.check), and then states the rule itself on the
# view, so that a rule both implementations broke alike would still fail here.

T = FIXED_NS + 7 * 10**15 + 123_456_789  # an mtime with nanoseconds, set by utime ops


def names(v: View, parent: str = ".") -> list[str]:
    prefix = "" if parent == "." else parent + "/"
    return sorted(p[len(prefix):] for p in v.entries if p != "." and p.startswith(prefix) and "/" not in p[len(prefix):])


def test_topmost_wins(tmp_path: Path) -> None:
    """The topmost layer that has a name answers for it, whatever the kinds below."""
    top = Dir({"a": File(b"top"), "l": Symlink("a"), "m": File(b"mid?")})
    mid = Dir({"a": File(b"mid", mode=0o600), "l": File(b"file"), "m": Fifo()})
    bottom = Dir({"a": File(b"bottom", owner=(1000, 1000)), "m": Symlink("x")})
    with pair(tmp_path, [top, mid, bottom]) as p:
        v = p.check()
        assert v.entries["a"].content == b"top" and v.entries["a"].mode == "0644" and v.entries["a"].uid == 0
        assert v.entries["l"].kind == "symlink" and v.entries["m"].content == b"mid?"


def test_dirs_merge(tmp_path: Path) -> None:
    """A directory in several layers shows the entries of all of them, down the stack."""
    top = Dir({"d": Dir({"x": File(b"x"), "s": Dir({"p": File()})})})
    mid = Dir({"d": Dir({"y": File(b"y"), "s": Dir({"q": File()})})})
    bottom = Dir({"d": Dir({"z": File(b"z"), "x": File(b"old x")}, mode=0o700)})
    with pair(tmp_path, [top, mid, bottom]) as p:
        v = p.check()
        assert names(v, "d") == ["s", "x", "y", "z"] and names(v, "d/s") == ["p", "q"]
        assert v.entries["d/x"].content == b"x"
        assert v.entries["d"].mode == "0755"  # the topmost directory's attributes


def test_non_dir_hides_lower_dir(tmp_path: Path) -> None:
    """A file or symlink hides a directory below it entirely; a directory over a file starts afresh."""
    top = Dir({"f": File(b"f"), "l": Symlink("f"), "d": Dir({"x": File()})})
    bottom = Dir({"f": Dir({"y": File()}), "l": Dir({"y": File()}), "d": File(b"was a file")})
    with pair(tmp_path, [top, bottom]) as p:
        v = p.check()
        assert v.entries["f"].kind == "file" and v.entries["l"].kind == "symlink"
        assert "f/y" not in v.entries and "l/y" not in v.entries
        assert p.run(op("rmdir", "f")) == errno.ENOTDIR
        assert names(v, "d") == ["x"]


def test_whiteout_hides(tmp_path: Path) -> None:
    """A 0/0 whiteout hides the name in the layers below; a layer above it may bring the name back."""
    top = Dir({"b": File(b"new b")})
    mid = Dir({"a": Whiteout(), "b": Whiteout(), "d": Whiteout(), "e": Dir({"x": Whiteout()})})
    bottom = Dir({"a": File(b"old"), "b": File(b"old b"), "d": Dir({"y": File()}), "e": Dir({"x": File(), "z": File()})})
    with pair(tmp_path, [top, mid, bottom]) as p:
        v = p.check()
        assert names(v) == ["b", "e"] and v.entries["b"].content == b"new b" and names(v, "e") == ["z"]
        assert p.run(op("unlink", "a")) == errno.ENOENT
        assert p.run(op("rmdir", "d")) == errno.ENOENT


def test_xattr_whiteouts_hide_and_are_not_listed(tmp_path: Path) -> None:
    """Empty files with overlay.whiteout hide the name below; overlay.opaque=x on their
    directory says they are there, so that a listing leaves them out, and hides nothing."""
    top = Dir({"a": Whiteout("xattr"), "d": Dir({"x": Whiteout("xattr"), "n": File(b"n")}), "e": File()})
    bottom = Dir({"a": File(b"old"), "d": Dir({"x": File(b"x"), "y": File(b"y")}), "e": File(b"e")})
    with pair(tmp_path, [top, bottom]) as p:
        v = p.check()
        assert names(v) == ["d", "e"] and names(v, "d") == ["n", "y"] and v.entries["e"].content == b""
        assert p.run(op("write", "a", "excl", b"back")) is None and p.run(op("unlink", "d/y")) is None
        assert names(p.check(), "d") == ["n"]


def test_a_file_with_data_is_no_xattr_whiteout(tmp_path: Path) -> None:
    """Only an empty regular file with overlay.whiteout is a whiteout (overlayfs's
    ovl_path_check_xwhiteout_xattr): one with data, in a directory marked as holding xattr
    whiteouts, is a file, listed and read as any other, hiding the file below it."""
    marked = (("trusted.overlay.whiteout", b"y"),)
    top = Dir({"d": Dir({"x": Whiteout("xattr"), "full": File(b"data", xattrs=marked)})})
    bottom = Dir({"d": Dir({"x": File(b"x"), "full": File(b"lower"), "y": File(b"y")})})
    with pair(tmp_path, [top, bottom]) as p:
        v = p.check()
        assert names(v, "d") == ["full", "y"] and v.entries["d/full"].content == b"data"


def test_truncate_to_the_same_size(tmp_path: Path) -> None:
    """Deliberate difference: over the writeback cache the kernel keeps a file's times and
    changes none on a truncation that keeps its size, and the driver follows it; overlayfs
    sets mtime and ctime to now (ext4 does). Any other size changes mtime on both."""
    bottom = Dir({"e": File(), "f": File(b"ff"), "g": File(b"gg")})
    with pair(tmp_path, [Dir(), bottom]) as p:
        for rel, data in (("e", b""), ("f", b"ff")):
            step = op("truncate", rel, len(data))
            assert (apply(p.kernel.mnt, step), apply(p.driver.mnt, step)) == (None, None)
            assert [(mnt / rel).read_bytes() for mnt in (p.kernel.mnt, p.driver.mnt)] == [data, data]
        seen = [[os.stat(mnt / rel).st_mtime_ns for rel in ("e", "f")] for mnt in (p.kernel.mnt, p.driver.mnt)]
        drop_caches()
        assert [os.stat(p.driver.mnt / rel).st_mtime_ns for rel in ("e", "f")] == seen[1]  # nothing written back
        layer = [os.stat(p.kernel.lowers[1] / rel).st_mtime_ns for rel in ("e", "f")]
        assert all(t > old for t, old in zip(seen[0], layer, strict=True)) and seen[1] == layer
        assert p.run(op("truncate", "g", 1)) is None
        g = os.stat(p.kernel.lowers[1] / "g").st_mtime_ns
        assert all(os.stat(mnt / "g").st_mtime_ns > g and (mnt / "g").read_bytes() == b"g"
                   for mnt in (p.kernel.mnt, p.driver.mnt))



@pytest.mark.parametrize("mode", [FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE, FALLOC_ZERO_RANGE])
def test_a_punch_refused_in_an_append_only_file_leaves_the_times_fuse_set(tmp_path: Path, mode: int) -> None:
    """Deliberate difference (FUSE's): fallocate that punches or zeroes a range of an
    append-only file is refused with EPERM on both, and the data stays; but FUSE sets
    the file's mtime and ctime before it asks the driver, and keeps them, where the
    VFS refuses before any change on overlayfs. Appends change the times on both."""
    with pair(tmp_path, [Dir({"a": File(b"data", flags=APPEND)})]) as p:
        assert p.run(op(HOLD, 0, "append")) is None
        assert p.run(op(FD_ALLOCATE, 0, mode, 0, 3)) == errno.EPERM
        kernel, driver = (os.stat(mnt / "a").st_mtime_ns for mnt in (p.kernel.mnt, p.driver.mnt))
        assert kernel == os.stat(p.kernel.lowers[0] / "a").st_mtime_ns < driver
        assert times_set_before_asking(p, op(FD_ALLOCATE, 0, mode, 0, 3), errno.EPERM)
        p.check()
        assert p.run(op(FD_WRITE, 0, b"+")) is None
        assert [(mnt / "a").read_bytes() for mnt in (p.kernel.mnt, p.driver.mnt)] == [b"data+"] * 2
        p.check()

def test_a_directory_emptied_by_xattr_whiteouts_is_empty(tmp_path: Path) -> None:
    """Deliberate difference: overlayfs lists such a directory empty but refuses to remove
    it, or to rename over it (ENOTEMPTY): its emptiness check counts the xattr whiteouts
    as entries. The driver judges emptiness on the merged view, as for any whiteout."""
    top = Dir({"d": Dir({"x": Whiteout("xattr")}), "e": Dir({"x": Whiteout("xattr")}), "f": Dir()})
    bottom = Dir({"d": Dir({"x": File(b"x")}), "e": Dir({"x": File(b"x")})})
    with pair(tmp_path, [top, bottom]) as p:
        assert names(p.check(), "d") == names(p.check(), "e") == []
        for step in (op("rmdir", "d"), op("rename", "f", "e")):
            assert (apply(p.kernel.mnt, step), apply(p.driver.mnt, step)) == (errno.ENOTEMPTY, None), step
        assert sorted(os.listdir(p.driver.mnt)) == ["e"] and os.listdir(p.driver.mnt / "e") == []


def test_opaque_hides(tmp_path: Path) -> None:
    """An opaque directory hides what the layers below have at its path, not what is above it."""
    top = Dir({"d": Dir({"t": File()})})
    mid = Dir({"d": Dir({"m": File()}, opaque="xattr"), "e": Dir(opaque="xattr")})
    bottom = Dir({"d": Dir({"b": File(), "m": File(b"old")}), "e": Dir({"b": File()})})
    with pair(tmp_path, [top, mid, bottom]) as p:
        v = p.check()
        assert names(v, "d") == ["m", "t"] and v.entries["d/m"].content == b"" and names(v, "e") == []
        assert p.run(op("rmdir", "e")) is None  # empty once merged
        p.check()


def test_overlay_opaque_on_a_layer_root_is_ignored(tmp_path: Path) -> None:
    """overlayfs looks for overlay.opaque below the roots of its layers, not on them."""
    top = Dir({"t": File(b"t"), "d": Dir({"x": File()})}, opaque="xattr")
    bottom = Dir({"b": File(b"b"), "d": Dir({"y": File()})})
    with pair(tmp_path, [top, bottom]) as p:
        v = p.check()
        assert names(v) == ["b", "d", "t"] and names(v, "d") == ["x", "y"]
        assert p.run(op("rename", "d", "e")) is None
        assert names(p.check(), "e") == ["x", "y"]


def test_marker_never_hides_own_layer(tmp_path: Path) -> None:
    """An opaque directory shows its own entries; a whiteout only acts downwards."""
    top = Dir({"d": Dir({"x": File(b"own"), "w": Whiteout()}, opaque="xattr")})
    mid = Dir({"d": Dir({"w": File(b"hidden"), "x": File(b"hidden")})})
    bottom = Dir({"w": Whiteout(), "d": Dir({"y": File()})})  # a whiteout in the bottom layer hides nothing
    with pair(tmp_path, [top, mid, bottom]) as p:
        v = p.check()
        assert names(v) == ["d"] and names(v, "d") == ["x"] and v.entries["d/x"].content == b"own"


def test_readdir_merges_without_duplicates(tmp_path: Path) -> None:
    """Names in several layers are listed once, through readdir itself (not only through stat)."""
    layer = Dir({"d": Dir({"x": File(), "y": Dir(), "z": Symlink("x")}), "f": File()})
    with pair(tmp_path, [layer, layer, layer]) as p:
        p.run(op("write", "d/n", "create", b"n"))
        p.check()
        for mnt in (p.kernel.mnt, p.driver.mnt):
            assert sorted(os.listdir(mnt)) == ["d", "f"]
            listed = os.listdir(mnt / "d")
            assert sorted(listed) == ["n", "x", "y", "z"], listed
            with os.scandir(mnt / "d") as it:
                assert sorted(e.name for e in it) == ["n", "x", "y", "z"]


_LOWER_FILE = File(b"lower data", mode=0o640, owner=(1000, 1000), xattrs=(("user.k", b"1"), ("user.m", b"two")))
_LOWER_DIR = Dir({"x": File(b"x")}, mode=0o750, owner=(1000, 1000), xattrs=(("user.k", b"1"),))

# operation, the path to look at afterwards, the attributes it may change (all others are the lower's)
COPY_UP = {
    "write": (op("write", "f", "append", b"+"), "f", {"size", "content", "mtime"}),
    "open-trunc": (op("write", "f", "trunc", b""), "f", {"size", "content", "mtime"}),
    "truncate": (op("truncate", "f", 4), "f", {"size", "content", "mtime"}),
    "chmod": (op("chmod", "f", 0o600), "f", {"mode"}),
    "chown": (op("chown", "f", 0, 1000), "f", {"uid"}),
    "utime": (op("utime", "f", T), "f", {"mtime"}),
    "setxattr": (op("setxattr", "f", "user.n", b"new"), "f", {"xattrs"}),
    "removexattr": (op("removexattr", "f", "user.m"), "f", {"xattrs"}),
    "link": (op("link", "f", "g"), "g", {"nlink"}),
    "rename": (op("rename", "f", "g"), "g", set()),
    "dir-chmod": (op("chmod", "d", 0o700), "d", {"mode"}),
    "dir-chown": (op("chown", "d", 1000, 0), "d", {"gid"}),
    "dir-utime": (op("utime", "d", T), "d", {"mtime"}),
    "dir-setxattr": (op("setxattr", "d", "user.n", b"new"), "d", {"xattrs"}),
    "dir-rename": (op("rename", "d", "e"), "e", set()),
    "symlink-chown": (op("chown", "l", 1000, 1000), "l", {"uid", "gid"}),
    "symlink-utime": (op("utime", "l", T), "l", {"mtime"}),
    "symlink-rename": (op("rename", "l", "m"), "m", set()),
    "fifo-chmod": (op("chmod", "p", 0o600), "p", {"mode"}),
}


@pytest.mark.parametrize("case", list(COPY_UP))
def test_copy_up_keeps_metadata(tmp_path: Path, case: str) -> None:
    """Copy-up is invisible: mode, owner, mtime (to the ns), xattrs and data stay, but for what the op changes."""
    operation, path, changed = COPY_UP[case]
    bottom = Dir({"f": _LOWER_FILE, "d": _LOWER_DIR, "l": Symlink("f"), "p": Fifo(0o640)})
    with pair(tmp_path, [Dir(), bottom]) as p:
        source = operation.args[0]
        before = view(p.kernel.lowers[1]).entries[str(source)]
        assert p.run(operation) is None
        after = p.check().entries[path]
        ignored = changed | ({"nlink", "size"} if before.kind == "dir" else set())  # merged dirs: nlink 1, upper's size
        kept = [f.name for f in dataclasses.fields(Meta) if f.name not in ignored]
        assert {k: getattr(after, k) for k in kept} == {k: getattr(before, k) for k in kept}
        if "mtime" not in changed:
            assert after.mtime == before.mtime != "now"  # to the nanosecond
        if case == "utime" or case.endswith("-utime"):
            assert after.mtime == T


def test_a_change_of_nothing_copies_up_and_moves_the_change_time(tmp_path: Path) -> None:
    """chown(path, -1, -1) changes nothing, yet overlayfs copies the entry up (ovl_setattr
    copies up before it looks at what changes), an immutable one too, and the change time
    moves; fchown(fd, -1, -1) on a file already in the upper layer moves it as well."""
    bottom = Dir({"f": _LOWER_FILE, "d": _LOWER_DIR, "l": Symlink("f"), "i": File(b"i", flags=IMMUTABLE_FL),
                  "u": File(b"u")})
    with pair(tmp_path, [Dir(), bottom]) as p:
        for rel in ("f", "d", "l", "i", "u"):
            assert p.run(op("chown", rel, -1, -1)) is None
        assert {"f", "d", "l", "i", "u"} <= set(upper_view(p.driver.upper))
        p.check()  # the same upper layer as overlayfs's, the lower metadata kept
        before = [os.stat(mnt / "u").st_ctime_ns for mnt in (p.kernel.mnt, p.driver.mnt)]
        time.sleep(0.01)
        for mnt in (p.kernel.mnt, p.driver.mnt):
            fd = os.open(mnt / "u", os.O_RDWR)
            try:
                os.fchown(fd, -1, -1)
            finally:
                os.close(fd)
        drop_caches()
        after = [os.stat(mnt / "u").st_ctime_ns for mnt in (p.kernel.mnt, p.driver.mnt)]
        assert [a > b for a, b in zip(after, before, strict=True)] == [True, True]


def test_a_change_of_nothing_drops_set_id_bits_as_a_chown_does(tmp_path: Path) -> None:
    """chown(path, -1, -1) of a non-directory still drops its set-user-ID bit, and its
    set-group-ID bit where group execute is set (chown_common): a change of mode, so a
    caller who may not chmod the file gets EPERM and nothing is copied up."""
    bottom = Dir({"s": File(b"s", mode=0o4755), "g": File(b"g", mode=0o2755), "lock": File(b"l", mode=0o2644),
                  "mine": File(b"m", mode=0o6755, owner=(1000, 1000)), "plain": File(b"p", mode=0o755),
                  "d": Dir(mode=0o2755)})
    with pair(tmp_path, [Dir(), bottom], root_mode=0o1777) as p:
        assert p.run(op("chown", "s", -1, -1, uid=1000)) == errno.EPERM
        assert p.run(op("chown", "plain", -1, -1, uid=1000)) is None  # nothing to drop: anyone may
        assert p.run(op("chown", "mine", -1, -1, uid=1000)) is None
        for rel in ("s", "g", "lock", "d"):
            assert p.run(op("chown", rel, -1, -1)) is None
        p.check()
        modes = {rel: stat.S_IMODE(os.lstat(p.driver.mnt / rel).st_mode) for rel in ("s", "g", "lock", "mine", "d")}
        assert modes == {"s": 0o755, "g": 0o755, "lock": 0o2644, "mine": 0o755, "d": 0o2755}


def test_copy_up_of_the_dirs_above_shows_with_warm_caches(tmp_path: Path) -> None:
    """Creating a/b/c/new copies a, a/b and a/b/c up: each is merged from then on
    (link count 1), though the request names only a/b/c, whose attributes the
    kernel drops itself. The others' it looked up on the way there."""
    bottom = Dir({"a": Dir({"b": Dir({"c": Dir(), "d": Dir()}), "s": Dir()})})
    with pair(tmp_path, [Dir(), bottom]) as p:
        assert os.lstat(p.driver.mnt / "a").st_nlink == 4
        assert p.run(op("write", "a/b/c/new", "create", b"x")) is None
        v = p.check()
        assert v.entries["a"].nlink == v.entries["a/b"].nlink == v.entries["a/b/c"].nlink == 1


def test_copy_up_keeps_parent_dir_times(tmp_path: Path) -> None:
    """Copying a file up copies its parent directories up too; their mtimes stay (overlayfs restores them)."""
    bottom = Dir({"d": Dir({"e": Dir({"f": File(b"data")})})})
    with pair(tmp_path, [Dir(), bottom]) as p:
        lower = view(p.kernel.lowers[1])
        p.run(op("chmod", "d/e/f", 0o600))
        v = p.check()
        assert v.entries["d"].mtime == lower.entries["d"].mtime != "now"
        assert v.entries["d/e"].mtime == lower.entries["d/e"].mtime != "now"


def test_new_entries_in_set_group_id_dir(tmp_path: Path) -> None:
    """New entries in a set-group-ID directory take its group, and new directories its S_ISGID bit.

    Also where the name was deleted before, so that the new entry replaces a
    whiteout (it must not be built where the parent's rules do not apply).
    """
    bottom = Dir({"d": Dir({"f": File(), "e": Dir(), "l": Symlink("f")}, mode=0o2775, owner=(1000, 1000))})
    with pair(tmp_path, [Dir(), bottom]) as p:
        for name in ("f", "e", "l"):
            p.run(op("unlink" if name != "e" else "rmdir", f"d/{name}"))
        for step in (op("mkdir", "d/f", 0o755), op("mkdir", "d/n", 0o755), op("write", "d/e", "excl", b"", 0o644),
                     op("mkfifo", "d/l", 0o644), op("symlink", "x", "d/s")):
            assert p.run(step) is None
        v = p.check()
        assert v.entries["d/f"].mode == v.entries["d/n"].mode == "2755"
        assert {v.entries[f"d/{n}"].gid for n in ("f", "n", "e", "l", "s")} == {1000}


@pytest.fixture
def umask() -> Iterator[Callable[[int], int]]:
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def test_default_acl_inherited_by_new_entries(tmp_path: Path, umask: Callable[[int], int]) -> None:
    """New entries in a directory with a default ACL get it as their access ACL (mode from it), also over a whiteout.

    The directory comes from a lower layer: the ACL must survive its copy-up too.
    """
    umask(0)  # the umask rule is test_default_acl_ignores_umask's
    with pair(tmp_path, [Dir(), Dir({"d": _ACL_DIR})]) as p:
        p.run(op("unlink", "d/f"))
        p.run(op("rmdir", "d/e"))
        for step in (op("write", "d/g", "create", b"", 0o666), op("mkdir", "d/h", 0o777), op("mkfifo", "d/p", 0o666),
                     op("write", "d/f", "create", b"", 0o666), op("mkdir", "d/e", 0o777)):
            assert p.run(step) is None
        v = p.check()
        assert v.entries["d/f"].mode == v.entries["d/g"].mode == "0660" and v.entries["d/e"].mode == "0770"


def test_default_acl_ignores_umask(tmp_path: Path, umask: Callable[[int], int]) -> None:
    """Under a default ACL the umask does not apply (POSIX.1e): mode 0666 gives rw through the ACL mask."""
    umask(0o022)
    with pair(tmp_path, [Dir(), Dir({"d": _ACL_DIR})]) as p:
        assert p.run(op("write", "d/g", "create", b"", 0o666)) is None
        assert p.run(op("mkdir", "d/h", 0o777)) is None
        v = p.check()
        assert v.entries["d/g"].mode == "0660" and v.entries["d/h"].mode == "0770"


def test_access_acl_is_enforced(tmp_path: Path, acl_engine: tuple[str, ...]) -> None:
    """An access ACL that denies a named user what the mode bits would let in is obeyed, also after copy-up."""
    deny = posix_acl((0x01, 6, _ANY), (0x02, 0, 1000), (0x04, 4, _ANY), (0x10, 4, _ANY), (0x20, 4, _ANY))  # user:1000:---
    root_denied = posix_acl((0x01, 6, _ANY), (0x02, 0, 0), (0x04, 4, _ANY), (0x10, 4, _ANY), (0x20, 4, _ANY))  # user:0:---
    bottom = Dir({"deny": File(b"secret", xattrs=(("system.posix_acl_access", deny),)), "other": File(b"x"),
                  "mine": File(b"m", owner=(1000, 1000), xattrs=(("system.posix_acl_access", root_denied),))})
    with pair(tmp_path, [Dir(), bottom], driver_options=acl_engine) as p:
        assert p.run(op("read", "deny", uid=1000)) == errno.EACCES
        assert p.run(op("read", "deny", uid=1001)) is None  # "other" for everybody else
        assert p.run(op("read", "other", uid=1000)) is None
        assert p.run(op("read", "mine")) is None  # root, denied by user:0:---, overrides it (CAP_DAC_OVERRIDE)
        assert p.run(op("chown", "deny", 0, 0)) is None  # copied up by root: the ACL goes along
        assert p.run(op("read", "deny", uid=1000)) == errno.EACCES
        assert p.run(op("write", "deny", "append", b"+", uid=1000)) == errno.EACCES
        assert p.check().entries["deny"].content == b"secret"


def test_access_acl_granting_more_than_mode_bits(tmp_path: Path) -> None:
    """user:1000:rw- on a file whose "other" bits are r--: overlayfs lets 1000 write."""
    allow = posix_acl((0x01, 6, _ANY), (0x02, 6, 1000), (0x04, 4, _ANY), (0x10, 6, _ANY), (0x20, 4, _ANY))  # user:1000:rw-
    with pair(tmp_path, [Dir(), Dir({"allow": File(b"x", xattrs=(("system.posix_acl_access", allow),))})]) as p:
        assert p.run(op("write", "allow", "append", b"+", uid=1000)) is None
        assert p.check().entries["allow"].content == b"x+"


@pytest.fixture(params=[(), ("engine=fusepy",)], ids=["native", "fusepy"])
def acl_engine(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """The driver's options for a test of access ACLs, run under each engine: the native
    one has the kernel enforce them (FUSE_POSIX_ACL), engine=fusepy enforces them itself
    (unionfs.permissions), which libfuse 2 leaves no other way to."""
    return request.param  # type: ignore[no-any-return]


def acl_file(*entries: tuple[int, int, int], data: bytes = b"data", owner: tuple[int, int] = (0, 0)) -> File:
    return File(data, owner=owner, xattrs=(("system.posix_acl_access", posix_acl(*entries)),))


def acl_dir(children: dict[str, object], *entries: tuple[int, int, int], owner: tuple[int, int] = (0, 0)) -> Dir:
    return Dir(children, owner=owner, xattrs=(("system.posix_acl_access", posix_acl(*entries)),))  # type: ignore[arg-type]


U, G, M, O = 0x01, 0x04, 0x10, 0x20  # user::, group::, mask::, other:: (named: 0x02 user, 0x08 group)


def only_1000_limited(perm: int) -> tuple[tuple[int, int, int], ...]:
    """The entries of an ACL that grants rwx to all but user 1000, who gets perm."""
    return (U, 7, _ANY), (0x02, perm, 1000), (G, 7, _ANY), (M, 7, _ANY), (O, 7, _ANY)


@pytest.mark.parametrize("where", ["lower", "upper"])
def test_acl_named_group_denied(tmp_path: Path, where: str, acl_engine: tuple[str, ...]) -> None:
    """group:2000:--- shuts out members of 2000, as their primary or a supplementary group; others read."""
    f = acl_file((U, 6, _ANY), (G, 4, _ANY), (0x08, 0, 2000), (M, 4, _ANY), (O, 4, _ANY))
    with pair(tmp_path, [Dir(), Dir({"f": f})], driver_options=acl_engine) as p:
        if where == "upper":
            p.run(op("utime", "f", T))
        assert p.run(op("read", "f", uid=2000)) == errno.EACCES  # primary group 2000
        assert p.run(op("read", "f", uid=1000, groups=(2000,))) == errno.EACCES
        assert p.run(op("read", "f", uid=1000, groups=(3000,))) is None
        # one matching group entry that grants is enough (posix_acl_permission)
        both = acl_file((U, 6, _ANY), (G, 4, _ANY), (0x08, 0, 2000), (0x08, 4, 3000), (M, 4, _ANY), (O, 4, _ANY))
        p.check()
    with pair(tmp_path / "both", [Dir(), Dir({"f": both})], driver_options=acl_engine) as p:
        assert p.run(op("read", "f", uid=1000, groups=(2000, 3000))) is None
        assert p.run(op("read", "f", uid=1000, groups=(2000,))) == errno.EACCES


def test_acl_owning_group_entry_below_mask(tmp_path: Path, acl_engine: tuple[str, ...]) -> None:
    """group::r-- under mask::rw-: the file's group shows rw- in the mode, but its members may only read."""
    f = acl_file((U, 6, _ANY), (0x02, 6, 2000), (G, 4, _ANY), (M, 6, _ANY), (O, 0, _ANY), owner=(0, 1000))
    with pair(tmp_path, [Dir(), Dir({"f": f})], driver_options=acl_engine) as p:
        assert p.run(op("write", "f", "append", b"+", uid=1000)) == errno.EACCES
        assert p.run(op("truncate", "f", 0, uid=1000)) == errno.EACCES
        assert p.run(op("read", "f", uid=1000)) is None
        assert p.run(op("write", "f", "append", b"+", uid=1001, groups=(1000,))) == errno.EACCES
        assert p.run(op("write", "f", "append", b"+")) is None  # the owner: user::rw-
        assert p.check().entries["f"].content == b"data+"


def test_acl_mask_limits_named_user(tmp_path: Path, acl_engine: tuple[str, ...]) -> None:
    """user:1000:rw- under mask::r--: 1000 may read, not write, though "other" (rw-) could."""
    f = acl_file((U, 6, _ANY), (0x02, 6, 1000), (G, 4, _ANY), (M, 4, _ANY), (O, 6, _ANY))
    with pair(tmp_path, [Dir(), Dir({"f": f})], driver_options=acl_engine) as p:
        assert p.run(op("read", "f", uid=1000)) is None
        assert p.run(op("write", "f", "append", b"+", uid=1000)) == errno.EACCES
        assert p.run(op("truncate", "f", 1, uid=1000)) == errno.EACCES
        assert p.run(op("setxattr", "f", "user.k", b"v", uid=1000)) == errno.EACCES
        assert p.run(op("write", "f", "append", b"+", uid=1001)) is None  # "other"
        assert p.check().entries["f"].content == b"data+"


def test_acl_mask_without_group_bits_is_not_consulted(tmp_path: Path, acl_engine: tuple[str, ...]) -> None:
    """mask::--- leaves the mode without group bits, and the kernel then goes by the mode alone."""
    f = acl_file((U, 6, _ANY), (0x02, 0, 1000), (G, 4, _ANY), (M, 0, _ANY), (O, 4, _ANY))
    with pair(tmp_path, [Dir(), Dir({"f": f})], driver_options=acl_engine) as p:
        assert p.run(op("read", "f", uid=1000)) is None


def test_acl_exec_denied(tmp_path: Path, acl_engine: tuple[str, ...]) -> None:
    """user:1000:r-- on an executable whose "other" bits are r-x: 1000 may read it, not run it."""
    true = Path("/bin/true").read_bytes()
    prog = acl_file((U, 7, _ANY), (0x02, 4, 1000), (G, 5, _ANY), (M, 5, _ANY), (O, 5, _ANY), data=true)
    with pair(tmp_path, [Dir(), Dir({"prog": prog})], driver_options=acl_engine) as p:
        assert p.run(op("exec", "prog", uid=1000)) == errno.EACCES
        assert p.run(op("read", "prog", uid=1000)) is None
        assert p.run(op("exec", "prog", uid=1001)) is None


def test_acl_directory_search_and_write(tmp_path: Path, acl_engine: tuple[str, ...]) -> None:
    """A directory's ACL: no search (r--) closes everything below it; no write (r-x) forbids
    creating, removing and renaming in it; no read (--x) forbids listing only.

    (chmod of another's file below a closed directory is left out: the kernel answers EPERM
    from ownership before the driver is asked, where overlayfs stops at the directory.)"""
    inner = {"f": File(b"f", mode=0o666), "mine": File(owner=(1000, 1000)), "sub": Dir({"g": File(b"g", mode=0o666)}, mode=0o777)}
    bottom = Dir({"nosearch": acl_dir(inner, *only_1000_limited(4)), "nowrite": acl_dir(inner, *only_1000_limited(5)),
                  "noread": acl_dir(inner, *only_1000_limited(1))})
    with pair(tmp_path, [Dir(), bottom], root_mode=0o1777, driver_options=acl_engine) as p:
        for step in (op("read", "nosearch/f"), op("read", "nosearch/sub/g"), op("write", "nosearch/f", "append", b"+"),
                     op("write", "nosearch/new", "excl", b""), op("mkdir", "nosearch/d"), op("unlink", "nosearch/f"),
                     op("rename", "nosearch/f", "moved"), op("symlink", "x", "nosearch/l"), op("chmod", "nosearch/mine", 0o600),
                     op("utime", "nosearch/mine", T), op("setxattr", "nosearch/mine", "user.k", b"v"),
                     op("truncate", "nosearch/sub/g", 0), op("link", "nosearch/f", "linked"),
                     op("write", "nowrite/new", "excl", b""), op("mkdir", "nowrite/d"), op("unlink", "nowrite/f"),
                     op("rmdir", "nowrite/sub"), op("rename", "nowrite/f", "moved"), op("rename", "noread/f", "nowrite/f"),
                     op("mkfifo", "nowrite/p"), op("link", "noread/f", "nowrite/l"), op("listdir", "noread")):
            assert p.run(dataclasses.replace(step, uid=1000)) == errno.EACCES, step
        for step in (op("listdir", "nosearch"), op("read", "nowrite/f"), op("write", "nowrite/sub/g", "append", b"+"),
                     op("read", "noread/f"), op("write", "noread/f", "append", b"+"), op("read", "noread/sub/g"),
                     op("rename", "nowrite/sub/g", "nowrite/sub/h")):
            assert p.run(dataclasses.replace(step, uid=1000)) is None, step
        for step in (op("read", "nosearch/f"), op("listdir", "noread"), op("unlink", "nowrite/f")):
            assert p.run(dataclasses.replace(step, uid=1001)) is None, step  # everybody else: rwx
        p.check()


def test_acl_read_search_capability_reads_but_never_writes(tmp_path: Path, acl_engine: tuple[str, ...]) -> None:
    """A user with CAP_DAC_READ_SEARCH gets past an ACL that denies reading a file or
    listing or searching a directory, never past one that denies writing
    (generic_permission)."""
    inner = {"f": File(b"f", mode=0o666), "sub": Dir({"g": File(b"g", mode=0o666)}, mode=0o777)}
    bottom = Dir({"nosearch": acl_dir(inner, *only_1000_limited(0)), "nowrite": acl_dir(inner, *only_1000_limited(5)),
                  "deny": acl_file((U, 6, _ANY), (0x02, 0, 1000), (G, 6, _ANY), (M, 6, _ANY), (O, 6, _ANY))})
    with pair(tmp_path, [Dir(), bottom], root_mode=0o1777, driver_options=acl_engine) as p:
        for step in (op("read", "deny"), op("listdir", "nosearch"), op("read", "nosearch/sub/g")):
            assert p.run(dataclasses.replace(step, uid=1000, caps=(CAP_DAC_READ_SEARCH,))) is None, step
            assert p.run(dataclasses.replace(step, uid=1000)) == errno.EACCES, step
        for step in (op("write", "deny", "append", b"+"), op("write", "nowrite/new", "excl", b""), op("mkdir", "nowrite/d"),
                     op("unlink", "nowrite/f"), op("unlink", "nosearch/f"), op("setxattr", "deny", "user.k", b"v")):
            assert p.run(dataclasses.replace(step, uid=1000, caps=(CAP_DAC_READ_SEARCH,))) == errno.EACCES, step
        p.check()


def test_acl_hard_link_to_unwritable_file(tmp_path: Path, acl_engine: tuple[str, ...]) -> None:
    """protected_hardlinks: linking a file one does not own needs read and write access, ACL included."""
    if Path("/proc/sys/fs/protected_hardlinks").read_text().strip() != "1":
        pytest.skip("fs.protected_hardlinks is off")
    f = acl_file((U, 6, _ANY), (0x02, 4, 1000), (G, 6, _ANY), (M, 6, _ANY), (O, 6, _ANY))
    with pair(tmp_path, [Dir(), Dir({"f": f, "g": File(b"g", mode=0o666)})], root_mode=0o1777, driver_options=acl_engine) as p:
        assert p.run(op("link", "f", "l", uid=1000)) == errno.EPERM
        assert p.run(op("link", "g", "l", uid=1000)) is None
        if acl_engine:
            time.sleep(1.05)  # libfuse 2 shows the old name's new link count after 1 s (test_fusepy_engine_matches_kernel)
        p.check()


@pytest.mark.parametrize("change", [op("write", "f", "trunc", b"", uid=1000), op("write", "f", "create", b"", uid=1000),
                                    op("truncate", "f", 0, uid=1000), op("write", "f", "append", b"x", uid=1000),
                                    op("copyrange", "src", "f", uid=1000), op("allocate", "f", 8192, uid=1000)])
@pytest.mark.parametrize("where", ["lower", "upper"])
def test_unprivileged_change_clears_set_id_bits(tmp_path: Path, change: Op, where: str) -> None:
    """A write (copy_file_range and fallocate too), truncate(2) or open(O_TRUNC) by a user
    without CAP_FSETID clears S_ISUID and S_ISGID."""
    files = {"f": File(b"data", mode=0o6755, owner=(1000, 1000)), "src": File(b"copied")}
    with pair(tmp_path, [Dir(), Dir(files)]) as p:
        if where == "upper":
            p.run(op("chmod", "f", 0o6755))
        assert p.run(change) is None
        assert p.check().entries["f"].mode == "0755"


@pytest.mark.parametrize("change", [op("write", "-", "trunc", b"", uid=1000), op("truncate", "-", 0, uid=1000),
                                    op("write", "-", "append", b"x", uid=1000)])
def test_set_group_id_without_group_execute_goes_only_for_a_user_outside_the_group(tmp_path: Path, change: Op) -> None:
    """Without group execute, S_ISGID stays for a writer in the file's group and goes for one outside it."""
    files = {"out": File(b"data", mode=0o6646), "in": File(b"data", mode=0o2666, owner=(0, 1000))}
    with pair(tmp_path, [Dir(), Dir(files)]) as p:
        for name in files:
            assert p.run(dataclasses.replace(change, args=(name, *change.args[1:]))) is None
        v = p.check()
        assert (v.entries["out"].mode, v.entries["in"].mode) == ("0646", "2666")


def test_root_without_cap_fsetid_drops_set_id_bits(tmp_path: Path) -> None:
    """It is CAP_FSETID that keeps set-id bits through a write or truncation, not uid 0
    (a container's root may lack it): open(O_TRUNC), truncate(2) and a write all drop them."""
    changes = [op("write", "t", "trunc", b""), op("truncate", "u", 0), op("write", "w", "append", b"x")]
    files = {c.args[0]: File(b"data", mode=0o6755, owner=(1000, 1000)) for c in changes}
    with pair(tmp_path, [Dir(), Dir(files)]) as p:
        for change in changes:
            for mnt in (p.kernel.mnt, p.driver.mnt):
                def run(mnt: Path = mnt, change: Op = change) -> None:
                    code = apply(mnt, change)
                    if code is not None:
                        raise OSError(code, os.strerror(code))
                assert errno_without(CAP_FSETID, run) is None, (mnt, change)
        v = p.check()
        assert {name: v.entries[name].mode for name in files} == dict.fromkeys(files, "0755")


def test_a_write_drops_a_file_capability_each_time_one_is_set(tmp_path: Path) -> None:
    """Every write drops security.capability, by root too. The kernel asks for it once per
    file and then trusts that there is none, until one is set through the mount."""
    cap = ("security.capability", bytes.fromhex("0100000200200000000000000000000000000000"))
    with pair(tmp_path, [Dir(), Dir({"f": File(b"data", mode=0o666, xattrs=(cap,))})]) as p:
        assert p.run(op("write", "f", "append", b"1", uid=1000)) is None
        assert p.run(op("write", "f", "append", b"2")) is None
        assert p.run(op("setxattr", "f", *cap)) is None
        assert p.run(op("write", "f", "append", b"3")) is None
        v = p.check()
        assert cap[0] not in dict(v.entries["f"].xattrs) and v.entries["f"].content == b"data123"


def test_rmdir_judged_on_merged_view(tmp_path: Path) -> None:
    """ENOTEMPTY counts merged entries: a dir whose lower entries are all whited out is empty."""
    mid = Dir({"w": Dir({"x": Whiteout(), "y": Whiteout()}), "n": Dir({"x": Whiteout()})})
    bottom = Dir({"w": Dir({"x": File(), "y": Dir()}), "n": Dir({"x": File(), "y": File()})})
    with pair(tmp_path, [mid, bottom]) as p:
        assert p.run(op("rmdir", "w")) is None
        assert p.run(op("rmdir", "n")) == errno.ENOTEMPTY
        assert p.run(op("unlink", "n/y")) is None
        assert p.run(op("rmdir", "n")) is None  # its last entry whited out in the upper
        v = p.check()
        assert names(v) == []


def test_unlink_lower_file_then_recreate(tmp_path: Path) -> None:
    """A removed lower file stays gone; a new file of that name is new (mode, owner, data, xattrs)."""
    bottom = Dir({"a": File(b"old", mode=0o755, owner=(1000, 1000), xattrs=(("user.k", b"1"),)), "d": Dir({"b": File(b"old")})})
    with pair(tmp_path, [Dir(), bottom]) as p:
        assert p.run(op("unlink", "a")) is None
        assert p.run(op("unlink", "d/b")) is None
        assert "a" not in p.check().entries
        assert p.run(op("write", "a", "excl", b"new", 0o600)) is None
        assert p.run(op("mkfifo", "d/b", 0o644)) is None
        v = p.check()
        assert (v.entries["a"].content, v.entries["a"].mode, v.entries["a"].uid, v.entries["a"].xattrs) == (b"new", "0600", 0, ())
        assert v.entries["d/b"].kind == "fifo"


def test_mkdir_over_deleted_lower_dir_is_opaque(tmp_path: Path) -> None:
    """A directory made where a lower one was removed starts empty, and stays so (opaque upper dir)."""
    bottom = Dir({"d": Dir({"x": File(), "s": Dir({"y": File()})})})
    with pair(tmp_path, [Dir(), bottom]) as p:
        for step in (op("rmdir", "d/s"), op("unlink", "d/x"), op("unlink", "d/s/y"), op("rmdir", "d/s"), op("unlink", "d/x"),
                     op("rmdir", "d"), op("mkdir", "d", 0o700)):
            p.run(step)
        v = p.check()
        assert names(v, "d") == [] and v.entries["d"].mode == "0700"
        assert upper_view(p.driver.upper, p.driver.lowers)["d"].opaque == b"y"


def test_a_directory_moved_where_a_lower_entry_was_removed_hides_it(tmp_path: Path) -> None:
    """A directory of the upper alone, renamed to a name whose lower directory was
    removed, shows its own entries only (made opaque, as overlayfs does); over a
    removed lower file, the whiteout goes and none is left at the old name, which
    no lower entry had."""
    bottom = Dir({"d": Dir({"x": File()}), "f": File(b"f")})
    with pair(tmp_path, [Dir(), bottom]) as p:
        for step in (op("unlink", "d/x"), op("rmdir", "d"), op("mkdir", "e", 0o755), op("write", "e/y", "create", b"y"),
                     op("unlink", "f"), op("mkdir", "g", 0o755)):
            assert p.run(step) is None
        assert p.run(op("rename", "e", "d")) is None
        assert p.run(op("rename", "g", "f")) is None
        v = p.check()
        assert names(v) == ["d", "f"] and names(v, "d") == ["y"] and names(v, "f") == []
        assert upper_view(p.driver.upper, p.driver.lowers)["d"].opaque == b"y"
        p.remount()
        assert names(p.check(), "d") == ["y"]


def test_a_directory_exchanged_with_a_lower_one_hides_it(tmp_path: Path) -> None:
    """RENAME_EXCHANGE of a directory of the upper alone with a merged one: each shows
    its own entries at the other's name (the moved merged one by a redirect, the other
    made opaque over the lower directory of its new name)."""
    bottom = Dir({"d": Dir({"x": File()})})
    with pair(tmp_path, [Dir(), bottom]) as p:
        assert p.run(op("mkdir", "e", 0o755)) is None
        assert p.run(op("write", "e/y", "create", b"y")) is None
        assert p.run(op("rename2", "e", "d", "exchange")) is None
        v = p.check()
        assert names(v, "d") == ["y"] and names(v, "e") == ["x"]
        p.remount()
        v = p.check()
        assert names(v, "d") == ["y"] and names(v, "e") == ["x"]


@pytest.mark.parametrize("how", ["empty-path", "proc"])
def test_tmpfile_gets_its_name_by_linkat(tmp_path: Path, how: str) -> None:
    """open(O_TMPFILE) in a lower directory copies the directory up; linkat names the
    file, over a whiteout too, never over an entry (EEXIST); with O_EXCL it can get no
    name (ENOENT); a nameless one leaves nothing behind."""
    bottom = Dir({"d": Dir({"f": File(b"lower")}), "g": File(b"gone")})
    with pair(tmp_path, [Dir(), bottom], root_mode=0o1777) as p:
        assert p.run(op("unlink", "g")) is None
        assert p.run(op("tmpfile", "d", "d/new", b"data", how)) is None
        assert p.run(op("tmpfile", ".", "g", b"over a whiteout", how)) is None
        assert p.run(op("tmpfile", "d", "d/f", b"x", how)) == errno.EEXIST
        assert p.run(op("tmpfile", "d", "d/never", b"x", "excl")) == errno.ENOENT
        assert p.run(op("tmpfile", ".", None, b"nameless", how)) is None
        assert p.run(op("tmpfile", "d/f", "d/x", b"", how)) == errno.ENOTDIR
        assert p.run(op("tmpfile", ".", "mine", b"by 1000", "proc", uid=1000)) is None
        v = p.check()
    assert (v.entries["d/new"].content, v.entries["g"].content, v.entries["d/f"].content) == (b"data", b"over a whiteout", b"lower")
    assert names(v, "d") == ["f", "new"] and names(v) == ["d", "g", "mine"]
    assert (v.entries["mine"].uid, v.entries["mine"].gid, v.entries["mine"].mode) == (1000, 1000, "0640")


def tmpfile_seen(root: Path) -> list[object]:
    """What a program sees of an O_TMPFILE file before and after it gets a name."""
    fd = os.open(root, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b"one")
        before = os.fstat(fd)
        link_open_file(fd, str(root / "named"), "proc")
        after = os.fstat(fd)
        os.write(fd, b" two")  # through the descriptor, read back through the name
        by_name = os.stat(root / "named")
        return [before.st_nlink, after.st_nlink, before.st_ino == after.st_ino == by_name.st_ino,
                (root / "named").read_bytes(), by_name.st_size]
    finally:
        os.close(fd)


def test_tmpfile_is_one_inode_before_and_after_its_name(tmp_path: Path) -> None:
    with pair(tmp_path, [Dir({"l": File()})]) as p:
        seen = [tmpfile_seen(p.kernel.mnt), tmpfile_seen(p.driver.mnt)]
        p.check()
    assert seen[0] == seen[1] == [0, 1, True, b"one two", 7]


@pytest.mark.parametrize("create", [
    op("write", "a", "excl", b"x"), op("mkdir", "a", 0o755), op("symlink", "b", "a"), op("mkfifo", "a", 0o644),
    op("link", "b", "a"), op("write", "d", "excl", b"x"), op("mkdir", "d", 0o755),
])
def test_create_over_existing_lower_entry_is_eexist(tmp_path: Path, create: Op) -> None:
    """O_EXCL, mkdir, symlink, mknod and link see the lower entry: EEXIST, and nothing is copied up."""
    bottom = Dir({"a": File(b"lower"), "b": File(b"b"), "d": Dir({"x": File()})})
    with pair(tmp_path, [Dir(), bottom]) as p:
        assert p.run(create) == errno.EEXIST
        p.check()


def test_rename_lower_dir_keeps_contents(tmp_path: Path) -> None:
    """A renamed merged directory keeps every layer's entries (kernel: redirect_dir=on; default here is EXDEV)."""
    top = Dir({"d": Dir({"x": File(b"x"), "s": Dir({"p": File()})}), "t": Dir()})
    bottom = Dir({"d": Dir({"y": File(b"y"), "s": Dir({"q": File()})}), "t": Dir({"u": File()})})
    with pair(tmp_path, [top, bottom]) as p:
        assert p.run(op("rename", "d", "e")) is None
        v = p.check()
        assert "d" not in v.entries and names(v, "e") == ["s", "x", "y"] and names(v, "e/s") == ["p", "q"]
        assert p.run(op("rename", "e/s", "t/s")) is None
        assert p.run(op("write", "t/s/n", "create", b"n")) is None
        v = p.check()
        assert names(v, "t/s") == ["n", "p", "q"] and names(v, "t") == ["s", "u"]
        assert p.run(op("mkdir", "d", 0o755)) is None  # the old name is free and empty
        assert names(p.check(), "d") == []


@pytest.mark.parametrize("form", ["overlay", "oci"])
def test_a_lower_dir_renamed_onto_a_removed_name_keeps_its_contents(tmp_path: Path, form: str) -> None:
    """A lower directory renamed onto the name of a removed lower file or directory: in
    the OCI form the removed name's .wh. marker stays beside the directory that took
    the name, and hides what was there, not the directory's own lower parts, which
    its redirect names (they were lost, and its link count was the upper's)."""
    bottom = Dir({"a": Dir({"y": File(b"y")}), "b": Dir({"z": File(b"z")}), "c": File(b"c"), "e": Dir()})
    with pair(tmp_path, [Dir(), bottom], driver_options=(f"whiteout={form}",)) as p:
        for removal, rename in ((op("unlink", "c"), op("rename", "a", "c")), (op("rmdir", "e"), op("rename", "b", "e"))):
            assert p.run(removal) is None and p.run(rename) is None
        v = p.check()
        assert names(v) == ["c", "e"] and names(v, "c") == ["y"] and names(v, "e") == ["z"]
        assert v.entries["c"].nlink == v.entries["e"].nlink == 1  # merged directories, as overlayfs shows them
        p.remount()
        assert names(p.check(), "c") == ["y"]


def test_rename_lower_dir_without_redirect_dir_kernel_answers_exdev(tmp_path: Path) -> None:
    """Deliberate difference: overlayfs without redirect_dir answers EXDEV (mv then copies); the driver redirects."""
    bottom = Dir({"d": Dir({"y": File(b"y")})})
    with pair(tmp_path, [Dir(), bottom], kernel_options=()) as p:
        assert apply(p.kernel.mnt, op("rename", "d", "e")) == errno.EXDEV
        assert apply(p.driver.mnt, op("rename", "d", "e")) is None
        assert names(view(p.driver.mnt), "e") == ["y"]


REDIRECT = "trusted.overlay.redirect"


def test_layers_with_the_redirects_overlayfs_writes(tmp_path: Path) -> None:
    """Uppers of overlayfs mounts in which merged directories were renamed, stacked
    as lower layers. A rename within a directory leaves a relative redirect (the
    old name), looked up where the parent's lower parts are, which a redirect of
    the parent may have moved; a rename elsewhere leaves an absolute one. The
    driver follows them as overlayfs does, across three layers, and moves them on."""
    l0 = tmp_path / "l0"
    l0.mkdir()
    build_layer(l0, Dir({
        "p0": Dir({"c0": Dir({"f": File(b"f")}), "keep": File(b"k")}),
        "a": Dir({"b": Dir({"deep": File(b"d")})}),
        "m": Dir({"n": Dir({"x": File(b"x")})}),
    }))
    l1 = overlayfs_layer(tmp_path / "l1", [l0], [("p0", "p"), ("p/c0", "p/c"), ("a/b", "b2"), ("m/n", "m/n2")])
    l2 = overlayfs_layer(tmp_path / "l2", [l1, l0], [("p", "q"), ("b2", "a/b3"), ("m/n2", "m/n")])
    assert [os.getxattr(l1 / rel, REDIRECT) for rel in ("p", "p/c", "b2", "m/n2")] == [b"p0", b"c0", b"/a/b", b"n"]
    assert [os.getxattr(l2 / rel, REDIRECT) for rel in ("q", "a/b3", "m/n")] == [b"p", b"/b2", b"n2"]
    with pair_over(tmp_path, [l2, l1, l0]) as p:
        v = p.check()
        assert names(v, "q") == ["c", "keep"] and names(v, "q/c") == ["f"]
        assert names(v, "a/b3") == ["deep"] and names(v, "m/n") == ["x"] and names(v) == ["a", "m", "q"]
        for operation in (
            op("rename", "q/c", "c2"),  # a relative redirect that must become absolute
            op("write", "c2/g", "create", b"g"),
            op("rename", "m/n", "m/n4"),
            op("rename", "a/b3", "a/b5"),
            op("unlink", "a/b5/deep"),
            op("rmdir", "a/b5"),
            op("rename", "q", "r"),
        ):
            assert p.run(operation) is None
            p.check(warm=False)
        v = p.check()
        assert names(v, "c2") == ["f", "g"] and names(v, "m/n4") == ["x"] and names(v, "r") == ["keep"]
        assert names(v, "a") == []


def test_hard_links_in_a_lower_layer(tmp_path: Path) -> None:
    """Two names of one lower file: one inode number, link count 2, through both mounts."""
    bottom = Dir({"a": File(b"shared"), "d": Dir({"b": HardLink("a")}), "c": File()})
    with pair(tmp_path, [Dir(), bottom]) as p:
        v = p.check()
        assert v.same_inode == {frozenset({"a", "d/b"})}
        assert v.entries["a"].nlink == v.entries["d/b"].nlink == 2


def test_copy_up_of_one_lower_hard_link_gives_it_its_own_inode(tmp_path: Path) -> None:
    """Without index=on a copied-up name is a new file: overlayfs stops reporting the shared st_ino for it.

    Otherwise tar, rsync -H and cp -a would store two files of different
    content as one hard-linked file.
    """
    bottom = Dir({"a": File(b"shared"), "b": HardLink("a")})
    with pair(tmp_path, [Dir(), bottom]) as p:
        assert p.run(op("write", "a", "append", b"+")) is None
        v = p.check()
        assert v.entries["a"].content != v.entries["b"].content
        assert v.same_inode == frozenset()


def test_copy_up_of_one_lower_hard_link_by_an_xattr_shows_with_warm_caches(tmp_path: Path) -> None:
    """A SETXATTR's reply carries no attributes, and the kernel keeps a file's
    ctime itself: the new inode number and link count of the copy must reach
    the kernel's cache from the driver."""
    bottom = Dir({"a": File(b"shared"), "b": HardLink("a")})
    with pair(tmp_path, [Dir(), bottom]) as p:
        assert os.lstat(p.driver.mnt / "a").st_nlink == 2
        assert p.run(op("setxattr", "a", "user.k", b"v")) is None
        v = p.check()
        assert v.entries["a"].nlink == 1
        assert v.same_inode == frozenset()


def test_rename_between_hard_links(tmp_path: Path) -> None:
    """rename(2) between two names of one file.

    Names of one upper file (hard links made through the mount) are one inode
    on both mounts: nothing happens, as rename(2) says. Two names of one lower
    file show one inode number, but a change to either breaks them apart, and
    overlayfs without index=on gives each an inode of its own: the rename is
    done, the old name whited out, the new one a copy. The driver did nothing
    there, while the kernel moved its entry for the old name to the new one.
    """
    bottom = Dir({"a": File(b"shared"), "b": HardLink("a"), "d": Dir({"c": HardLink("a"), "e": HardLink("a")})})
    with pair(tmp_path, [Dir(), bottom]) as p:
        assert p.run(op("write", "n", "create", b"n")) is None
        assert p.run(op("link", "n", "m")) is None
        assert p.run(op("rename", "n", "m")) is None
        v = p.check()
        assert {"n", "m"} <= set(v.entries) and frozenset({"n", "m"}) in v.same_inode
        assert p.run(op("rename", "a", "b")) is None
        v = p.check()
        assert "a" not in v.entries and v.entries["b"].nlink == 1
        assert p.run(op("rename", "d/c", "d/e")) is None  # within a directory that is not copied up yet
        assert p.run(op("write", "d/e", "append", b"+")) is None
        v = p.check()
        assert names(v, "d") == ["e"] and v.entries["d/e"].content != v.entries["b"].content


def test_names_of_one_upper_file_are_one_file_with_warm_caches(tmp_path: Path) -> None:
    """Hard links made through the mount, of a new file and of a lower one: the
    kernel holds one inode for both names, so neither its page cache nor its
    link count can go stale between them (the driver gives both names one node id)."""
    bottom = Dir({"low": File(b"lower data")})
    with pair(tmp_path, [Dir(), bottom]) as p:
        assert p.run(op("write", "new", "create", b"new data")) is None
        seen = {}
        for name, mnt in (("kernel", p.kernel.mnt), ("driver", p.driver.mnt)):
            os.link(mnt / "new", mnt / "new2")
            os.link(mnt / "low", mnt / "low2")
            seen[name] = [through_two_names(mnt, "new", "new2"), through_two_names(mnt, "low2", "low")]
        assert seen["driver"] == seen["kernel"]
        assert seen["kernel"] == [
            [b"new data", b"new data", b"ABw data", b"CDw data", (2, 2), 1, True, b"CDw data"],
            [b"lower data", b"lower data", b"ABwer data", b"CDwer data", (2, 2), 1, True, b"CDwer data"],
        ]
        p.check()


_ERRNO_TREE = Dir({"f": File(b"f"), "d": Dir({"x": File()}), "e": Dir(), "l": Symlink("f"), "w": Whiteout()})
_ERRNO_BOTTOM = Dir({"d": Dir({"y": File()}), "w": File(b"hidden"), "g": Dir({"z": File()})})
ERRNO_CASES = [
    (op("unlink", "missing"), errno.ENOENT),
    (op("unlink", "w"), errno.ENOENT),
    (op("rmdir", "missing"), errno.ENOENT),
    (op("write", "missing/x", "create", b""), errno.ENOENT),
    (op("write", "w", "overwrite", b""), errno.ENOENT),
    (op("rename", "missing", "n"), errno.ENOENT),
    (op("rename", "f", "missing/n"), errno.ENOENT),
    (op("link", "w", "n"), errno.ENOENT),
    (op("chmod", "w", 0o600), errno.ENOENT),
    (op("mkdir", "f/x", 0o755), errno.ENOTDIR),
    (op("write", "f/x", "create", b""), errno.ENOTDIR),
    (op("rmdir", "f"), errno.ENOTDIR),
    (op("rmdir", "l"), errno.ENOTDIR),
    (op("rename", "d", "f"), errno.ENOTDIR),
    (op("unlink", "d"), errno.EISDIR),
    (op("write", "d", "overwrite", b""), errno.EISDIR),
    (op("truncate", "d", 0), errno.EISDIR),
    (op("rename", "f", "e"), errno.EISDIR),
    (op("rmdir", "d"), errno.ENOTEMPTY),
    (op("rmdir", "g"), errno.ENOTEMPTY),
    (op("rename", "e", "d"), errno.ENOTEMPTY),
    (op("rename", "e", "g"), errno.ENOTEMPTY),
    (op("mkdir", "d", 0o755), errno.EEXIST),
    (op("mkdir", "g", 0o755), errno.EEXIST),
    (op("symlink", "x", "l"), errno.EEXIST),
    (op("link", "f", "g"), errno.EEXIST),
    (op("mkfifo", "f", 0o644), errno.EEXIST),
    (op("rename", "d", "d/x"), errno.EINVAL),
    (op("link", "d", "n"), errno.EPERM),
    (op("removexattr", "f", "user.none"), errno.ENODATA),
    (op("mknod", "n", "chr-0-0"), errno.EPERM),  # a whiteout may not be made through the mount
    (op("mknod", "w", "chr-0-0"), errno.EPERM),
]


@pytest.mark.parametrize(("operation", "expected"), ERRNO_CASES, ids=[f"{o!r}-{errname(e)}" for o, e in ERRNO_CASES])
def test_errno(tmp_path: Path, operation: Op, expected: int) -> None:
    """Failing calls fail alike, with the errno the merged view implies, and change nothing."""
    with pair(tmp_path, [_ERRNO_TREE, _ERRNO_BOTTOM]) as p:
        assert p.run(operation) == expected
        p.check()
        assert upper_view(p.driver.upper) == {}


# -- deliberate differences ----------------------------------------------------------


@pytest.mark.parametrize("name", ["trusted.overlay.opaque", "trusted.overlay.x"])
def test_overlay_xattrs_of_a_user_are_kept_escaped_as_on_overlayfs(tmp_path: Path, name: str) -> None:
    """overlayfs on this kernel stores a trusted.overlay.* that a user sets escaped
    (trusted.overlay.overlay.*), so nested overlays work; so does the driver, and an
    escaped opaque marker makes nothing opaque here."""
    with pair(tmp_path, [Dir({"d": Dir({"x": File()})}), Dir({"d": Dir({"y": File()}), "f": File()})]) as p:
        for path in ("d", "f"):
            p.run(op("setxattr", path, name, b"y"))
            assert os.listxattr(p.driver.mnt / path) == os.listxattr(p.kernel.mnt / path) == [name]
            escaped = name.replace("trusted.overlay.", "trusted.overlay.overlay.", 1)
            assert os.getxattr(p.driver.upper / path, escaped) == os.getxattr(p.kernel.upper / path, escaped) == b"y"
        assert names(view(p.driver.mnt), "d") == ["x", "y"]
        p.run(op("removexattr", "f", name))
        p.check()


@pytest.mark.parametrize("name", ["user.overlay.x", "trusted.unionfs.x", "user.unionfs.x"])
def test_other_overlay_and_private_xattrs_are_refused(tmp_path: Path, name: str) -> None:
    """Deliberate difference: the driver reads markers in user.overlay.* in every layer, and
    keeps its own records in unionfs.*, so it refuses both names (EPERM) and hides them;
    overlayfs mounted without userxattr takes them for plain xattrs."""
    with pair(tmp_path, [Dir(), Dir({"d": Dir(), "f": File()})]) as p:
        for path in ("d", "f"):
            assert apply(p.kernel.mnt, op("setxattr", path, name, b"y")) is None
            assert apply(p.driver.mnt, op("setxattr", path, name, b"y")) == errno.EPERM
            assert name in os.listxattr(p.kernel.mnt / path)
            assert os.listxattr(p.driver.mnt / path) == []


@pytest.mark.parametrize("create", [op("write", ".wh.a", "create", b""), op("mkdir", ".wh..wh..opq", 0o755),
                                    op("symlink", "x", ".wh.b"), op("rename", "f", ".wh.f")])
def test_whiteout_prefix_names_are_refused(tmp_path: Path, create: Op) -> None:
    """Deliberate difference: the driver reads .wh.* names as markers, so it refuses to make them (EINVAL)."""
    with pair(tmp_path, [Dir(), Dir({"f": File()})]) as p:
        assert apply(p.kernel.mnt, create) is None
        assert apply(p.driver.mnt, create) == errno.EINVAL
        assert sorted(os.listdir(p.driver.mnt)) == ["f"]


def _records(upper: Path) -> list[tuple[str, str]]:
    """The opaque and protattr xattrs in an upper layer: (path, name)."""
    found = []
    for root, dirs, files in os.walk(upper):
        for name in dirs + files:
            path = os.path.join(root, name)
            found += [(os.path.relpath(path, upper), x) for x in os.listxattr(path, follow_symlinks=False)
                      if x.endswith((".opaque", ".protattr"))]
    return sorted(found)


def test_userxattr_keeps_overlayfs_records_in_the_user_namespace(tmp_path: Path) -> None:
    """overlayfs given userxattr (what a mount in a user namespace needs) keeps its records
    in user.overlay.*; the driver given it writes the same upper, which such an overlayfs
    mount then reads: the directory made where a lower one was removed stays opaque."""
    bottom = Dir({"d": Dir({"f": File(b"f")}), "e": Dir({"x": File(b"x")}), "g": File(b"g")})
    with pair(tmp_path, [Dir(), bottom], kernel_options=("userxattr",), driver_options=("userxattr",)) as p:
        for step in (op("unlink", "d/f"), op("rmdir", "d"), op("mkdir", "d", 0o755),
                     op("chattr", "g", IMMUTABLE_FL), op("write", "e/new", "create", b"n")):
            assert p.run(step) is None
        p.check()
        kernel, driver = _records(p.kernel.upper), _records(p.driver.upper)
    assert driver == kernel and ("d", "user.overlay.opaque") in driver and ("g", "user.overlay.protattr") in driver
    (tmp_path / "rework").mkdir()
    reread = Stack(p.driver.lowers, p.driver.upper, tmp_path / "rework", p.driver.mnt)
    with kernel_mount(reread, "userxattr") as mnt:
        assert os.listdir(mnt / "d") == [] and sorted(os.listdir(mnt / "e")) == ["new", "x"]


def _errno(call: Callable[[], object]) -> int | object:
    try:
        return call()
    except OSError as exc:
        return exc.errno


def test_a_metacopy_file_is_refused_as_overlayfs_without_metacopy_refuses_it(tmp_path: Path) -> None:
    """overlayfs with metacopy=on copies up a file's metadata alone and leaves its data
    below (overlay.metacopy). The driver does not follow that: such a file in its upper
    layer is refused with EPERM and left out of listings, as overlayfs without metacopy=on
    does, rather than read as zeros, which a write would then make for good."""
    answers = {}
    for driver, mount in (("kernel", kernel_mount), ("unionfs", fuse_mount)):
        stack = Stack.make(tmp_path / driver)
        (stack.lowers[1] / "f").write_bytes(b"lower data\n")
        (stack.lowers[1] / "g").write_bytes(b"g\n")
        with kernel_mount(stack, "metacopy=on", "redirect_dir=on") as mnt:
            os.chmod(mnt / "f", 0o600)  # only the metadata goes up
        assert "trusted.overlay.metacopy" in os.listxattr(stack.upper / "f")
        (stack.work / "work").rmdir()  # overlayfs's, which it would keep for its own next mount
        with mount(stack) as mnt:
            answers[driver] = [
                _errno(lambda: os.stat(mnt / "f")), _errno(lambda: (mnt / "f").read_bytes()),
                _errno(lambda: (mnt / "f").open("ab").close()), sorted(os.listdir(mnt)), (mnt / "g").read_bytes(),
            ]
        assert os.stat(stack.upper / "f").st_size == 11 and "trusted.overlay.metacopy" in os.listxattr(stack.upper / "f")
    assert answers["unionfs"] == answers["kernel"] == [errno.EPERM, errno.EPERM, errno.EPERM, ["g"], b"g\n"]


def test_a_metacopy_file_in_a_lower_layer_is_refused_as_overlayfs_without_metacopy_refuses_it(tmp_path: Path) -> None:
    """The upper layer of an overlayfs mount with metacopy=on, stacked as a lower layer of
    the next union (as container storage stacks layers): its metacopy files are listed, but
    every lookup of one fails with EPERM, as on overlayfs without metacopy=on, rather than
    read as the zeros the file holds. Operations that name one fail at its lookup."""
    first = Stack.make(tmp_path / "first", nlower=1)
    (first.lowers[0] / "d").mkdir()
    (first.lowers[0] / "d" / "f").write_bytes(b"lower data\n")
    (first.lowers[0] / "d" / "h").write_bytes(b"h\n")
    (first.lowers[0] / "d" / "empty").write_bytes(b"")
    with kernel_mount(first, "metacopy=on", "redirect_dir=on") as mnt:
        for name in ("f", "empty"):
            os.chmod(mnt / "d" / name, 0o600)  # only the metadata goes up
    for name in ("f", "empty"):
        assert "trusted.overlay.metacopy" in os.listxattr(first.upper / "d" / name)

    def run(mnt: Path) -> list[object]:
        d = mnt / "d"
        answers: list[object] = [sorted(os.listdir(d))]
        answers += [_errno(lambda: os.lstat(d / name).st_size) for name in sorted(os.listdir(d))]
        answers += [
            _errno(lambda: (d / "f").read_bytes()), _errno(lambda: (d / "f").open("ab").close()),
            _errno(lambda: os.unlink(d / "f")), _errno(lambda: os.rename(d / "f", d / "x")),
            _errno(lambda: os.rename(d / "h", d / "f")), _errno(lambda: os.link(d / "f", d / "y")),
            _errno(lambda: os.mkdir(d / "f")), _errno(lambda: os.close(os.open(d / "f", os.O_CREAT | os.O_WRONLY))),
            _errno(lambda: os.rmdir(d)), _errno(lambda: (d / "h").read_bytes()), sorted(os.listdir(d)),
        ]
        return answers

    answers = {}
    for driver, mount in (("kernel", kernel_mount), ("unionfs", fuse_mount)):
        second = Stack.make(tmp_path / driver, nlower=0)
        second = dataclasses.replace(second, lowers=(first.upper, *first.lowers))
        with mount(second) as mnt:
            answers[driver] = run(mnt)
        answers[driver].append(sorted(str(p.relative_to(second.upper)) for p in second.upper.rglob("*")))
    assert answers["unionfs"] == answers["kernel"]
    names = ["empty", "f", "h"]
    assert answers["kernel"][:4] == [names, errno.EPERM, errno.EPERM, 2]
    assert answers["kernel"][4:8] == [errno.EPERM] * 4


def test_escaped_overlay_xattrs_as_on_overlayfs(tmp_path: Path) -> None:
    """overlayfs keeps a trusted.overlay.X that a user sets through it as
    trusted.overlay.overlay.X, and shows that back as trusted.overlay.X, so that a union
    can be a layer of another (overlayfs.rst "Nesting overlayfs mounts"). An escaped
    marker is no marker of this union; a copy-up keeps escaped xattrs."""
    answers = {}
    for driver, mount in (("kernel", kernel_mount), ("unionfs", fuse_mount)):
        stack = Stack.make(tmp_path / driver)
        (stack.lowers[1] / "f").write_bytes(b"f\n")
        os.setxattr(stack.lowers[1] / "f", "trusted.overlay.overlay.foo", b"bar")
        (stack.lowers[1] / "d").mkdir()
        (stack.lowers[1] / "d" / "below").write_bytes(b"b\n")
        (stack.lowers[0] / "d").mkdir()
        os.setxattr(stack.lowers[0] / "d", "trusted.overlay.overlay.opaque", b"y")  # opaque to a union above, not here
        with mount(stack) as mnt:
            f = mnt / "f"
            steps: list[object] = [sorted(os.listxattr(f)), sorted(os.listdir(mnt / "d")), sorted(os.listxattr(mnt / "d"))]
            for name in ("trusted.overlay.foo", "trusted.overlay.overlay.foo", "trusted.overlay.opaque",
                         "trusted.overlay.origin", "trusted.unionfs.origin"):
                steps.append(_errno(lambda: os.getxattr(f, name)))
            steps += [
                _errno(lambda: os.setxattr(f, "trusted.overlay.new", b"1")),  # copies f up
                _errno(lambda: os.setxattr(f, "trusted.overlay.overlay.x", b"2")),
                _errno(lambda: os.setxattr(mnt / "d", "trusted.overlay.opaque", b"y")),
                _errno(lambda: os.removexattr(f, "trusted.overlay.missing")),
                _errno(lambda: os.removexattr(f, "trusted.overlay.new")),
                sorted(os.listxattr(f)), sorted(os.listdir(mnt / "d")), (mnt / "d" / "below").read_bytes(),
            ]
        escaped = {}
        for rel in ("f", "d"):
            names = os.listxattr(stack.upper / rel)
            escaped[rel] = sorted((n, os.getxattr(stack.upper / rel, n))
                                  for n in names if n.startswith("trusted.overlay.overlay."))
        answers[driver] = steps + [escaped]
        if driver == "unionfs":  # the driver's own records: a plain trusted xattr to overlayfs
            with mount(stack) as mnt:
                assert _errno(lambda: os.setxattr(mnt / "f", "trusted.unionfs.origin", b"1")) == errno.EPERM
    assert answers["unionfs"] == answers["kernel"]
    assert answers["kernel"][0] == ["trusted.overlay.foo"] and answers["kernel"][1] == ["below"]
    assert answers["kernel"][-1] == {
        "f": [("trusted.overlay.overlay.foo", b"bar"), ("trusted.overlay.overlay.overlay.x", b"2")],
        "d": [("trusted.overlay.overlay.opaque", b"y")],
    }


def test_rename_flags_as_on_overlayfs(tmp_path: Path) -> None:
    """renameat2's RENAME_NOREPLACE and RENAME_EXCHANGE: the same answers and the same result as
    overlayfs. RENAME_WHITEOUT, which overlayfs does not take: EINVAL, but only after the
    checks the VFS makes first, such as EPERM for an immutable entry (which the kernel
    cannot make for the driver: its inodes carry no flags)."""
    lower = Dir({"f": File(b"f"), "g": File(b"g"), "h": File(b"h"), "d": Dir({"x": File(b"x")}),
                 "e": Dir({"y": File(b"y")}), "k": File(b"k"), "i": File(b"i", flags=IMMUTABLE_FL)})
    with pair(tmp_path, [Dir({"e": Dir({"z": File(b"z")})}), lower]) as p:
        steps = [
            ("f", "n", "noreplace"), ("h", "g", "noreplace"), ("g", "h", "exchange"), ("g", "missing", "exchange"),
            ("d", "k", "exchange"), ("d", "e", "exchange"), ("e/x", "d/z", "exchange"), ("d", "d/z", "exchange"),
            ("n", "f", "noreplace"), ("g", "g", "exchange"), ("g", "h", "whiteout"),
            ("i", "n", "whiteout"), ("f", "i", "whiteout"), ("d", "e", "whiteout"), ("i", "j", "noreplace"),
        ]
        for src, dst, how in steps:
            p.run(op("rename2", src, dst, how))
        assert [p.run(op("rename2", "h", "g", how)) for how in ("noreplace", "whiteout")] == [errno.EEXIST, errno.EINVAL]
        p.check()


def test_fusepy_engine_matches_kernel(tmp_path: Path) -> None:
    """engine=fusepy, the path API through libfuse 2, still serves the same semantics."""
    top = Dir({"d": Dir({"x": File(b"top x")}), "gone": Whiteout(), "opq": Dir({"new": File(b"n")}, opaque="xattr"),
               "ln": Symlink("f")})
    bottom = Dir({"f": File(b"file", xattrs=(("user.k", b"v"),)), "gone": File(b"hidden"), "h": File(b"h"),
                  "d": Dir({"y": File(b"y"), "sub": Dir({"z": File(b"z")})}), "opq": Dir({"old": File(b"o")})})
    steps = [
        op("write", "f", "append", b"+"), op("chmod", "h", 0o600), op("chown", "h", 1000, 1000),
        op("setxattr", "f", "user.n", b"w"), op("removexattr", "f", "user.k"), op("truncate", "d/y", 0),
        op("unlink", "d/x"), op("rmdir", "d/sub"), op("mkdir", "d/sub"), op("rename", "d", "moved"),
        op("link", "h", "h2"), op("symlink", "moved", "sl"), op("mkfifo", "fifo"), op("rename", "h2", "gone"),
        op("write", "opq/old", "create", b"x"), op("write", "moved/y", "append", b"y", uid=1000),
        op("rmdir", "opq"), op("unlink", "opq/new"), op("rmdir", "opq"), op("listdir", "moved"),
    ]
    with pair(tmp_path, [top, bottom], root_mode=0o1777, driver_options=("engine=fusepy",)) as p:
        for step in steps:
            p.run(step)
            if step.name == "link":
                # libfuse 2 cannot tell the kernel that a new name changed the old one's
                # link count: it shows once the 1 s attribute timeout has passed (README)
                time.sleep(1.05)
            p.check()
        assert sorted(names(p.check())) == sorted(names(view(p.driver.mnt)))
        with pytest.raises(OSError) as unnamed:  # the README's limit: libfuse 2 has no TMPFILE
            os.close(os.open(p.driver.mnt, os.O_TMPFILE | os.O_WRONLY, 0o600))
        assert unnamed.value.errno == errno.EOPNOTSUPP


def test_listing_kept_by_the_kernel_follows_a_copy_up_that_renumbers(tmp_path: Path) -> None:
    """A copy-up of one name of a lower hard link gives it a number of its own: a
    listing the kernel kept from before must not show the old one."""
    with pair(tmp_path, [Dir(), Dir({"a": File(b"a"), "b": HardLink(to="a"), "c": File(b"c")})]) as p:
        for _ in range(2):
            p.run(op("listdir", "."))  # the second from the kernel's kept listing
        p.run(op("write", "a", "append", b"+"))
        p.run(op("listdir", "."))
        p.check()  # d_ino == st_ino for every entry
        entries = {e.name: e.inode() for e in os.scandir(p.driver.mnt)}
        assert entries["a"] == os.lstat(p.driver.mnt / "a").st_ino != os.lstat(p.driver.mnt / "b").st_ino


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("f_handle", ctypes.c_ubyte * 128)]


def _by_handle(mnt: Path, name: str, forget_between: bool) -> str:
    """name_to_handle_at of mnt/name, then open_by_handle_at of that handle: "ok" or an errno's name."""
    libc = ctypes.CDLL(None, use_errno=True)
    handle, mount_id = _FileHandle(128, 0), ctypes.c_int()
    if libc.name_to_handle_at(-100, os.fsencode(mnt / name), ctypes.byref(handle), ctypes.byref(mount_id), 0):
        return errno.errorcode[ctypes.get_errno()]
    if forget_between:
        # One drop can leave the inode: a dentry or inode used a moment ago is passed over
        # once (its referenced flag), and a drop makes few passes where little else is freed.
        for _ in range(3):
            drop_caches()
            time.sleep(0.05)
    root = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = libc.open_by_handle_at(root, ctypes.byref(handle), os.O_RDONLY)
        if fd < 0:
            return errno.errorcode[ctypes.get_errno()]
        os.close(fd)
        return "ok"
    finally:
        os.close(root)


def test_file_handles_are_the_kernels_fuse_codes(tmp_path: Path) -> None:
    """A deliberate difference (README, "Answered without the driver"): overlayfs without
    nfs_export makes no file handle; the kernel's FUSE code makes its own without asking
    the driver, and opens one only while it still holds the inode."""
    with pair(tmp_path, [Dir({"f": File(b"f")})]) as p:
        assert [_by_handle(p.kernel.mnt, "f", forget) for forget in (False, True)] == [errno.errorcode[errno.EOPNOTSUPP]] * 2
        assert [_by_handle(p.driver.mnt, "f", forget) for forget in (False, True)] == ["ok", "ESTALE"]
