"""Inode numbers remembered for upper entries must go with the entries.

The union remembers the number it reports for each upper inode (the origin a
copy-up recorded). The host filesystem hands a freed inode number to the next
new file, so a number remembered past its entry's removal is reported for
whatever comes next.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from unionfs.union import Union


def test_copy_up_into_a_reused_inode_reports_its_own_origin(tmp_path: Path) -> None:
    """After the unlink of a copied-up file, a file copied up into its freed
    inode must report its own lower number, not the removed file's. (A removed
    directory's inode goes to the next directory copy-up: see
    test_a_removed_directory_serves_the_next_copy_up_without_what_it_had.)"""
    lower, upper, work = (tmp_path / name for name in ("lower", "upper", "work"))
    for path in (lower, upper, work):
        path.mkdir()
    (lower / "f").write_text("f")
    names = [f"g{i}" for i in range(200)]
    for name in names:
        (lower / name).write_text(name)
    union = Union([str(lower)], str(upper), str(work))
    try:
        union.chmod("/f", 0o600)  # copies f up
        union.getattr("/f")
        freed = os.lstat(upper / "f").st_ino
        union.unlink("/f")
        for name in names:
            before = union.getattr("/" + name)["st_ino"]
            union.chmod("/" + name, 0o600)  # copies the file up
            if os.lstat(upper / name).st_ino == freed:
                assert union.getattr("/" + name)["st_ino"] == before
                return
    finally:
        union.close()
    pytest.skip("the host filesystem did not reuse the freed inode number")
