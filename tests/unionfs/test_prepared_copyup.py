"""A large lower file's data copied ahead of its copy-up (CopyUp.prepare), in-process
on the real filesystem: the copy-up takes that copy, and a copy no change took is
removed. Through a mount, in tests/integration/test_copyup_held_up.py."""
from __future__ import annotations

import errno
import filecmp
import os
import subprocess
from pathlib import Path

import pytest
from storecheck import small_fs

from unionfs.copyup import PREPARED
from unionfs.union import Union

MiB = 1 << 20


def union(base: Path, lower: Path | None = None) -> Union:
    lower = lower or base / "lower"
    for d in (lower, base / "upper", base / "work"):
        d.mkdir(exist_ok=True)
    return Union([str(lower)], str(base / "upper"), str(base / "work"))


def in_work(base: Path) -> list[Path]:
    return sorted((base / "work" / "work").iterdir())


def test_the_copy_up_takes_the_prepared_copy(tmp_path: Path) -> None:
    u = union(tmp_path)
    (tmp_path / "lower" / "big").write_bytes(os.urandom(PREPARED + 1))
    prepared = u.prepare_copy_up("/big")
    assert prepared is not None
    [copy] = in_work(tmp_path)
    assert filecmp.cmp(copy, tmp_path / "lower" / "big", shallow=False)
    number = copy.stat().st_ino
    try:
        u.chmod("/big", 0o600)
    finally:
        u.let_go(prepared)
    assert (tmp_path / "upper" / "big").stat().st_ino == number  # that copy, not another
    assert (tmp_path / "upper" / "big").stat().st_mode & 0o777 == 0o600
    assert filecmp.cmp(tmp_path / "upper" / "big", tmp_path / "lower" / "big", shallow=False)
    assert in_work(tmp_path) == []


def test_a_copy_no_change_took_goes_with_its_last_user(tmp_path: Path) -> None:
    u = union(tmp_path)
    (tmp_path / "lower" / "big").write_bytes(os.urandom(PREPARED + 1))
    first = u.prepare_copy_up("/big")
    second = u.prepare_copy_up("/big")
    assert first is second is not None  # one copy for both
    assert len(in_work(tmp_path)) == 1
    u.let_go(first)
    assert len(in_work(tmp_path)) == 1
    u.let_go(second)
    assert in_work(tmp_path) == []
    assert not (tmp_path / "upper" / "big").exists()


@pytest.mark.parametrize("name", ["small", "upper", "immutable", "dir", "missing"])
def test_nothing_is_prepared_where_a_copy_up_copies_little_or_fails(tmp_path: Path, name: str) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "small").write_bytes(b"x" * PREPARED)  # copied up under the lock, as fast
    (tmp_path / "upper").mkdir(exist_ok=True)
    (tmp_path / "upper" / "upper").write_bytes(b"x" * (PREPARED + 1))
    (lower / "immutable").write_bytes(b"x" * (PREPARED + 1))
    (lower / "dir").mkdir()
    subprocess.run(["chattr", "+i", str(lower / "immutable")], check=True)  # its changes fail (EPERM)
    try:
        u = union(tmp_path)
        assert u.prepare_copy_up("/" + name) is None
        assert in_work(tmp_path) == []
    finally:
        subprocess.run(["chattr", "-i", str(lower / "immutable")], check=True)


def test_a_prepared_copy_that_fills_the_disk_fails_and_leaves_nothing(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "big").write_bytes(os.urandom(8 * MiB))
    with small_fs(tmp_path / "small", 4 * MiB) as fs:
        u = union(fs, lower)
        with pytest.raises(OSError) as exc:
            u.prepare_copy_up("/big")
        assert exc.value.errno == errno.ENOSPC
        assert in_work(fs) == []
        with pytest.raises(OSError) as exc:  # asked again: copied again, not a failed one kept
            u.prepare_copy_up("/big")
        assert exc.value.errno == errno.ENOSPC
        assert in_work(fs) == []
