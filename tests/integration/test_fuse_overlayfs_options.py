"""fuse-overlayfs's own options, against fuse-overlayfs itself: static_nlink, noacl, and
its tuning knobs, which this driver accepts so that the same option string mounts both."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mounts import Stack, fuse_mount, fuse_overlayfs
from users import errno_as

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("fuse-overlayfs"),
                                reason="needs root and fuse-overlayfs")


def both(tmp_path: Path, options: str, make: object, look: object) -> dict[str, object]:
    """driver -> what look(mount) saw, over lowers that make(stack) filled."""
    seen = {}
    for driver in ("fuse-overlayfs", "unionfs"):
        stack = Stack.make(tmp_path / driver)
        make(stack)  # type: ignore[operator]
        mount = fuse_overlayfs(stack, options) if driver == "fuse-overlayfs" else fuse_mount(stack, *options.split(","))
        with mount as mnt:
            seen[driver] = look(mnt)  # type: ignore[operator]
    return seen


def tree(stack: Stack) -> None:
    for sub in ("a", "b", "c"):
        (stack.lowers[1] / "only_below" / sub).mkdir(parents=True)  # one layer's directory, link count 5
    (stack.lowers[0] / "merged" / "x").mkdir(parents=True)
    (stack.lowers[1] / "merged" / "y").mkdir(parents=True)


def dir_links(mnt: Path) -> dict[str, int]:
    os.mkdir(mnt / "new")
    os.mkdir(mnt / "new" / "sub")
    return {name: os.lstat(mnt / name).st_nlink for name in ("only_below", "only_below/a", "merged", "new")}


def test_static_nlink_gives_every_directory_one_link(tmp_path: Path) -> None:
    seen = both(tmp_path, "static_nlink", tree, dir_links)
    assert seen["unionfs"] == seen["fuse-overlayfs"] == {"only_below": 1, "only_below/a": 1, "merged": 1, "new": 1}
    stack = Stack.make(tmp_path / "plain")
    tree(stack)
    with fuse_mount(stack) as mnt:  # without it, a directory of one layer shows its own count, as on overlayfs
        assert dir_links(mnt) == {"only_below": 5, "only_below/a": 2, "merged": 1, "new": 3}


def acl_file(stack: Stack) -> None:
    path = stack.lowers[1] / "f"
    path.write_bytes(b"secret\n")
    os.chmod(path, 0o640)  # root's, group root: user 1000 gets nothing from the mode bits
    subprocess.run(["setfacl", "-m", "u:1000:r", str(path)], check=True)


def read_as_1000(mnt: Path) -> tuple[int | None, str]:
    acl = subprocess.run(["getfacl", "-cpn", str(mnt / "f")], capture_output=True, text=True, check=True).stdout
    return errno_as(1000, lambda: Path("f").read_bytes(), cwd=mnt), "user:1000:r--" in acl


@pytest.mark.skipif(not shutil.which("setfacl"), reason="needs the acl package")
@pytest.mark.parametrize("options", ["allow_other", "allow_other,noacl"])
def test_noacl_leaves_access_to_the_mode_bits(tmp_path: Path, options: str) -> None:
    """With noacl the ACL is still there to read, but only the mode bits decide, as in
    fuse-overlayfs; without it, the ACL grants user 1000 the read."""
    seen = both(tmp_path, options, acl_file, read_as_1000)
    assert seen["unionfs"] == seen["fuse-overlayfs"]
    denied = 13 if "noacl" in options else None  # EACCES
    assert seen["unionfs"] == (denied, True)


def test_tuning_options_are_accepted_and_the_unsupported_refused(tmp_path: Path) -> None:
    stack = Stack.make(tmp_path)
    (stack.lowers[1] / "f").write_bytes(b"f\n")
    with fuse_mount(stack, "threaded=1", "fast_ino=1", "writeback=0", "noxattrs=0", "xattr_permissions=0") as mnt:
        assert (mnt / "f").read_bytes() == b"f\n"
    for option, message in (("noxattrs=1", "noxattrs=1: not supported"), ("xattr_permissions=2", "not supported"),
                            ("plugins=/p.so", "plugins are not supported")):
        opts = f"lowerdir={stack.lowers[0]}:{stack.lowers[1]},upperdir={stack.upper},workdir={stack.work},{option}"
        result = subprocess.run([sys.executable, "-m", "unionfs", "-o", opts, str(stack.mnt)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(not shutil.which("setfacl"), reason="needs the acl package")
@pytest.mark.parametrize("options, expected", [((), 13), (("noacl",), None)])
def test_noacl_with_the_fusepy_engine_drops_its_own_acl_checks(tmp_path: Path, options: tuple[str, ...],
                                                               expected: int | None) -> None:
    """libfuse 2 cannot hand ACLs to the kernel, so that engine checks those that deny what
    the mode bits allow itself; noacl leaves the mode bits alone there too."""
    stack = Stack.make(tmp_path)
    path = stack.lowers[1] / "f"
    path.write_bytes(b"open\n")
    os.chmod(path, 0o644)
    subprocess.run(["setfacl", "-m", "u:1000:---", str(path)], check=True)
    with fuse_mount(stack, "engine=fusepy", "allow_other", *options) as mnt:
        assert errno_as(1000, lambda: Path("f").read_bytes(), cwd=mnt) == expected
