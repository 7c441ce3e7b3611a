"""Extended attributes below a directory descriptor, both ways the driver has them:
the *xattrat calls (Linux 6.13), and the /proc/self/fd path used without them."""
from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from unionfs import syscalls


@pytest.fixture(params=["xattrat", "proc"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "xattrat" and not syscalls.XATTRAT:
        pytest.skip("the *xattrat calls do not work here")
    monkeypatch.setattr(syscalls, "XATTRAT", request.param == "xattrat")
    return str(request.param)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    path = tmp_path / "root"
    (path / "a" / "b").mkdir(parents=True)
    (path / "a" / "b" / "f").write_text("f\n")
    os.symlink("f", path / "a" / "b" / "link")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield path, fd
    finally:
        os.close(fd)


def long_rel(root: Path) -> str:
    """A name below root of over 4,000 characters: with /proc/self/fd/N/ in front it would
    be longer than a path may be."""
    rel = "/".join(["d" * 200] * 20)
    os.makedirs(root / rel)
    (root / rel / "f").write_text("deep\n")
    return rel + "/f"


def test_set_get_list_remove_reach_the_file_the_name_gives(root: tuple[Path, int], way: str) -> None:
    path, fd = root
    for rel in ("a/b/f", ".", "a/b", long_rel(path)):
        value = bytes(range(256)) * 8 + b"\0end"
        syscalls.setxattrat(fd, rel, "user.k", value)
        assert syscalls.getxattrat(fd, rel, "user.k") == value
        if len(rel) < 1000:
            assert os.getxattr(path / rel, "user.k") == value  # on the file that the path names
        assert "user.k" in syscalls.listxattrat(fd, rel)
        with pytest.raises(OSError) as exists:
            syscalls.setxattrat(fd, rel, "user.k", b"again", os.XATTR_CREATE)
        assert exists.value.errno == errno.EEXIST
        syscalls.setxattrat(fd, rel, "user.k", b"", os.XATTR_REPLACE)
        assert syscalls.getxattrat(fd, rel, "user.k") == b""
        syscalls.removexattrat(fd, rel, "user.k")
        with pytest.raises(OSError) as gone:
            syscalls.getxattrat(fd, rel, "user.k")
        assert gone.value.errno == errno.ENODATA
        assert "user.k" not in syscalls.listxattrat(fd, rel)


def test_a_symlink_is_not_followed_and_errors_are_the_calls(root: tuple[Path, int], way: str) -> None:
    path, fd = root
    syscalls.setxattrat(fd, "a/b/f", "user.k", b"on the target")
    with pytest.raises(OSError) as on_link:
        syscalls.getxattrat(fd, "a/b/link", "user.k")
    assert on_link.value.errno == errno.ENODATA  # followed, it would have found the target's
    assert "user.k" not in syscalls.listxattrat(fd, "a/b/link")
    with pytest.raises(OSError) as user_on_link:
        syscalls.setxattrat(fd, "a/b/link", "user.k", b"x")
    assert user_on_link.value.errno == errno.EPERM  # user.* is not for symlinks
    for call in (lambda: syscalls.getxattrat(fd, "a/missing", "user.k"), lambda: syscalls.listxattrat(fd, "a/missing"),
                 lambda: syscalls.removexattrat(fd, "a/missing", "user.k")):
        with pytest.raises(OSError) as missing:
            call()
        assert missing.value.errno == errno.ENOENT
