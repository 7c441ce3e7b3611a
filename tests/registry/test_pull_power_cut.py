"""Images pulled from the real registry just before a power cut are there, whole, after it.

The store is on xfs in a loop-mounted image; after the pulls the filesystem
is shut down without writing its log (``mounts.power_cut``), as when the
machine loses power, and mounted again. The images must be listed as they
were (tags and repo digests), every layer tree must be as unpacked, and
``fsck`` must find nothing: a pull records an image only once its blobs and
layers are on disk.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from mounts import loop_fs, mount_again, power_cut
from regkit import World
from storecheck import check_store, layer_trees, layerstore

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not (shutil.which("mkfs.xfs") and shutil.which("xfs_io")),
                                reason="needs root (loop mounts) and xfsprogs")

MIB = 1 << 20
LISTING = ("images", "--digests", "--format", "{{.Repository}}:{{.Tag}} {{.Digest}} {{.ID}}")


def test_images_pulled_before_a_power_cut_are_whole_after_it(world: World, tmp_path: Path) -> None:
    names = [world.name(world.open, name) for name in ("base:v1", "big:v1")]
    reference_root = tmp_path / "reference"
    for name in names:
        assert layerstore(reference_root, "pull", "-q", name).rc == 0
    reference = layer_trees(reference_root)
    with loop_fs(tmp_path, "xfs", ["mkfs.xfs", "-q"], 512 * MIB) as fs:
        root = fs / "store"
        for name in names:
            pulled = layerstore(root, "pull", "-q", name)
            assert pulled.rc == 0, pulled
        listed = layerstore(root, *LISTING)
        assert listed.rc == 0 and len(listed.out.splitlines()) == 2, listed
        power_cut(fs)
        mount_again(fs)
        assert layerstore(root, *LISTING).out == listed.out
        assert check_store(root, reference) == set(names)
        checked = layerstore(root, "fsck")
        assert (checked.rc, checked.err) == (0, ""), checked
