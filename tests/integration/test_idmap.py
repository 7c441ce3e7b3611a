"""fuse-overlayfs's ID options, against fuse-overlayfs itself.

The same lower files, owned by IDs inside and outside the mapped ranges, the
same changes made through each mount by callers of several IDs, and then the
same answers, the same owners and modes in the view, and the same owners on
disk in the upper layer. The tests after the comparison state the rules on
the view and the upper layer too, so that a rule both drivers broke alike
would still fail here; the set-ID bits are compared with a plain directory,
where fuse-overlayfs does not follow the kernel.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from mounts import Stack, fuse_mount, fuse_overlayfs
from users import errno_as

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("fuse-overlayfs"),
                                reason="needs root and fuse-overlayfs")

ROOTLESS = "uidmapping=0:1000:1:1:100000:65536,gidmapping=0:1000:1:1:100000:65536"  # rootless podman's shape
OWNERS = {"r": (0, 0), "a": (1, 1), "b": (5000, 5000), "c": (100005, 100006), "d": (1000, 1000)}
Owners = dict[str, tuple[int, int, int]]


def make_lower(lower: Path) -> None:
    for name, (uid, gid) in OWNERS.items():
        path = lower / name
        if name == "d":
            path.mkdir(mode=0o755)
        else:
            path.write_bytes(b"x")
        os.chown(path, uid, gid)


def by(where: Path, uid: int, action: Callable[[], object], groups: tuple[int, ...] = (), gid: int | None = None) -> int | None:
    """The errno of action (None: it worked), run as uid in where: the test's temp
    directories above it are root's alone."""
    return errno_as(uid, action, groups=groups, cwd=where, gid=gid)


def changes(mnt: Path) -> list[int | None]:
    """The same changes through either mount: the errno of each."""
    def create(name: str) -> Callable[[], None]:
        return lambda: os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))

    def append() -> None:
        with open("r", "ab") as f:
            f.write(b"y")
    return [
        by(mnt, 0, create("new_root")),
        by(mnt, 1000, create("new_1000")),
        by(mnt, 0, lambda: os.chmod("d", 0o1777)),
        by(mnt, 100001, lambda: os.mkdir("d/dir_100001", 0o755), gid=100002),
        by(mnt, 1000, lambda: os.symlink("x", "d/sym_1000")),
        by(mnt, 0, lambda: os.chown("a", 100005, 100007)),
        by(mnt, 0, lambda: os.chown("b", 1000, -1)),
        by(mnt, 0, lambda: os.chown("c", -1, 0)),
        by(mnt, 1000, append),
    ]


def owners(root: Path) -> Owners:
    found = {}
    for path in sorted(root.rglob("*")):
        st = os.lstat(path)
        found[str(path.relative_to(root))] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    st = os.lstat(root)
    found["."] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    return found


def run_both(tmp_path: Path, options: str) -> dict[str, tuple[list[int | None], Owners, Owners]]:
    """driver -> (answers, view, upper on disk)"""
    out = {}
    for driver in ("fuse-overlayfs", "unionfs"):
        stack = Stack.make(tmp_path / driver, nlower=1)
        make_lower(stack.lowers[0])
        mount = fuse_overlayfs(stack, f"{options},allow_other") if driver == "fuse-overlayfs" else \
            fuse_mount(stack, *options.split(","), "allow_other")
        with mount as mnt:
            answers = changes(mnt)
            view = owners(mnt)
        # fuse-overlayfs marks every directory it makes opaque with .wh. files of root's:
        # markers are not what these tests compare
        upper = {name: ids for name, ids in owners(stack.upper).items() if name != "." and ".wh." not in name}
        out[driver] = (answers, view, upper)
    return out


@pytest.mark.parametrize("options", [
    ROOTLESS, "squash_to_root", "squash_to_root,squash_to_uid=5", "uidmapping=0:1000:70000,squash_to_gid=9",
])
def test_the_same_as_fuse_overlayfs(tmp_path: Path, options: str) -> None:
    results = run_both(tmp_path, options)
    theirs, ours = results["fuse-overlayfs"], results["unionfs"]
    assert ours[0] == theirs[0], "answers differ"
    assert ours[1] == theirs[1], "views differ"
    assert ours[2] == theirs[2], "uppers differ"


def test_mapped_ids_are_shown_and_written_back(tmp_path: Path) -> None:
    answers, view, upper = run_both(tmp_path, ROOTLESS)["unionfs"]
    assert answers == [None] * len(answers)
    assert view["."][:2] == (1000, 1000)  # disk 0 is shown as 1000
    assert view["b"][:2] == (1000, 104999)  # chowned to shown 1000 (disk 0); its group, disk 5000, shown as 100000 + 4999
    assert view["d/dir_100001"][:2] == (100001, 100002) and upper["d/dir_100001"][:2] == (2, 3)
    assert upper["new_1000"][:2] == (0, 0) and upper["d/sym_1000"][:2] == (0, 0)
    assert upper["new_root"][:2] == (65534, 65534)  # root is in no range: the overflow ID
    assert upper["a"][:2] == (6, 8) and upper["c"][:2] == (100005, 65534)  # the unmapped disk uid kept by a chown of -1


def test_squashed_ids_are_only_shown(tmp_path: Path) -> None:
    answers, view, upper = run_both(tmp_path, "squash_to_root,squash_to_gid=9")["unionfs"]
    assert {ids[:2] for ids in view.values()} == {(0, 9)}
    assert upper["d/dir_100001"][:2] == (100001, 100002) and upper["new_root"][:2] == (0, 0)
    assert answers[1] is not None  # uid 1000 may not create in a root directory shown as root's, mode 0755


@pytest.mark.parametrize("options", [ROOTLESS, "squash_to_gid=9", "squash_to_root"])
def test_set_id_bits_are_dropped_by_the_ids_shown(tmp_path: Path, options: str) -> None:
    """What a chown(-1, -1) or a write does to set-group-ID files, where the kernel
    leaves it to the driver: judged by the caller's IDs against the file's shown IDs,
    as the kernel judges them on a plain directory whose files have those IDs.
    fuse-overlayfs is no reference here: it leaves the bits alone."""
    stack = Stack.make(tmp_path / "union", nlower=1)
    plain = tmp_path / "plain"
    plain.mkdir()
    files = {"sg": 0o2644, "sx": 0o2755, "sw": 0o2666}  # without and with group execute; writable by all
    for name, mode in files.items():
        (stack.lowers[0] / name).write_bytes(b"x")
        os.chown(stack.lowers[0] / name, 0, 1)
        os.chmod(stack.lowers[0] / name, mode)

    def chown(name: str) -> Callable[[], None]:
        return lambda: os.chown(name, -1, -1)

    def write(name: str) -> Callable[[], None]:
        def append() -> None:
            with open(name, "ab") as f:
                f.write(b"y")
        return append
    calls = [(chown, "sg", 1000, (1000, 100000)), (chown, "sx", 1000, (1000,)), (chown, "sg", 1000, (1000,)),
             (write, "sw", 2000, (1,))]  # in the file's group on disk, not in the group shown
    with fuse_mount(stack, *options.split(","), "allow_other") as mnt:
        for name in files:
            st = os.lstat(mnt / name)
            shutil.copy(mnt / name, plain / name)
            os.chown(plain / name, st.st_uid, st.st_gid)
            os.chmod(plain / name, stat.S_IMODE(st.st_mode))
        answers = {}
        for where in (mnt, plain):
            answers[where] = [(by(where, uid, call(name), groups=groups), stat.S_IMODE(os.lstat(where / name).st_mode))
                              for call, name, uid, groups in calls]
    assert answers[mnt] == answers[plain]
    if options == ROOTLESS:  # the files' disk IDs 0:1 are shown as 1000:100000
        assert answers[mnt] == [(None, 0o2644), (None, 0o755), (None, 0o644), (None, 0o666)]


def test_ids_inside_acls_are_not_mapped(tmp_path: Path) -> None:
    """As fuse-overlayfs does, the IDs named in a POSIX ACL pass through as they are, both
    ways: only owners are mapped (an ACL of the layer's uid 5 is shown as uid 5, though the
    owner 5 would be shown as 100004)."""
    def getfacl(path: Path) -> str:
        return subprocess.run(["getfacl", "-n", "--omit-header", path], capture_output=True, text=True, check=True).stdout

    found = {}
    for driver in ("fuse-overlayfs", "unionfs"):
        stack = Stack.make(tmp_path / driver, nlower=1)
        (stack.lowers[0] / "f").write_bytes(b"x")
        subprocess.run(["setfacl", "-m", "u:5:r,g:6:r", stack.lowers[0] / "f"], check=True)
        mount = fuse_overlayfs(stack, ROOTLESS) if driver == "fuse-overlayfs" else fuse_mount(stack, *ROOTLESS.split(","))
        with mount as mnt:
            before = getfacl(mnt / "f")
            subprocess.run(["setfacl", "-m", "u:100007:rw", mnt / "f"], check=True)
            after = getfacl(mnt / "f")
        found[driver] = (before, after, getfacl(stack.upper / "f"))
    assert found["unionfs"] == found["fuse-overlayfs"]
    before, after, upper = found["unionfs"]
    assert "user:5:r--" in before and "group:6:r--" in before
    assert "user:100007:rw-" in after and after == upper
