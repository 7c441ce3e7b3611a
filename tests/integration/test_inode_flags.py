"""Inode flags through the driver against kernel overlayfs: what lsattr shows
and what a copy-up carries."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from difftree import FIXED_NS, Dir, File, Pair, apply, inode_flags, kernel_overlay_available, op, pair

from unionfs import syscalls

pytestmark = [
    pytest.mark.usefixtures("transport"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (kernel overlayfs, chattr, trusted xattrs)"),
    pytest.mark.skipif(os.geteuid() == 0 and not kernel_overlay_available(), reason="kernel overlayfs not available"),
]

T = FIXED_NS + 7 * 10**15 + 123_456_789  # an mtime with nanoseconds
SYNC_FL, NOATIME_FL = syscalls.FS_SYNC_FL, syscalls.FS_NOATIME_FL  # chattr +S, +A


def chattr_in_layer(path: Path, add: int, remove: int = 0) -> None:
    """chattr on a layer's own entry, by the ioctls the operations use."""
    assert apply(path.parent, op("chattr", path.name, add, remove)) is None


def lsattr(p: Pair, rels: tuple[str, ...]) -> list[dict[str, int]]:
    return [{rel: inode_flags(str(mnt / rel)) for rel in rels} for mnt in (p.kernel.mnt, p.driver.mnt)]


def test_inode_flags_read_through_and_copied_up(tmp_path: Path) -> None:
    """lsattr (FS_IOC_GETFLAGS) shows the flags of the layer an entry is in; a copy-up
    carries the sync and noatime flags over, as overlayfs's does, and a file made in a
    copied-up directory inherits the directory's."""
    bottom = Dir({"n": File(b"n"), "s": File(b"s"), "g": File(b"g"), "d": Dir({"c": File(b"c")})})
    rels = (".", "n", "s", "g", "d", "d/c")
    flags = {"n": NOATIME_FL, "s": SYNC_FL, "d": NOATIME_FL}

    def prepare(layer: Path) -> None:
        for rel, bits in flags.items():
            if (layer / rel).exists():
                chattr_in_layer(layer / rel, bits)

    with pair(tmp_path, [Dir(), bottom], prepare=prepare) as p:
        before = lsattr(p, rels)
        for step in (op("chmod", "n", 0o600), op("chmod", "s", 0o600), op("chmod", "g", 0o600),
                     op("write", "d/new", "excl", b"x"), op("utime", "d/c", T)):
            assert p.run(step) is None
        after = lsattr(p, (*rels, "d/new"))
        p.check()
    assert before[0] == before[1] and after[0] == after[1]
    seen = after[1]
    assert (seen["n"] & NOATIME_FL, seen["s"] & SYNC_FL, seen["d"] & NOATIME_FL, seen["d/new"] & NOATIME_FL) == (
        NOATIME_FL, SYNC_FL, NOATIME_FL, NOATIME_FL)
    assert not seen["g"] & (NOATIME_FL | SYNC_FL)
    for rel in ("n", "s", "d"):  # in the upper layer now, and the flags with them
        upper = inode_flags(str(p.driver.upper / rel))
        assert upper & (NOATIME_FL | SYNC_FL) == seen[rel] & (NOATIME_FL | SYNC_FL)
