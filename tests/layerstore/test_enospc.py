"""A store on a disk that fills up: ``load`` (blob, spool, unpack) and copy-up through a mount.

The store lives on a small tmpfs; a filler file takes the space the
operation needs. Each failure must be one clean line (the operation and "No
space left on device"), the images loaded before must stay listed and whole,
nothing half-written may be in view, ``prune`` must take what is left over,
and once the filler is gone the same operation must succeed.
"""
from __future__ import annotations

import errno
import gzip
import os
import shutil
from pathlib import Path

import pytest
from imagebuild import build_layout, export, run, write
from storecheck import (
    ENOSPC_TEXT,
    Run,
    assert_clean_error,
    check_store,
    file_digest,
    fill,
    layer_trees,
    layerstore,
    small_fs,
    tree,
    unreferenced,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("umoci"), reason="needs root (tmpfs, FUSE), umoci and skopeo")

MIB = 1 << 20
BIG = 3 * MIB  # random bytes: the blob is as big as the layer
WIDE = 12 * MIB  # a repeated pattern: a blob of a few kB, a layer of 12 MiB


def base_layer(root: Path) -> None:
    write(root, "etc/os-release", 'NAME="Full disk test"\n')
    write(root, "bin/tool.sh", "#!/bin/sh\necho tool\n", 0o755)


def big_layer(root: Path) -> None:
    (root / "data").mkdir()
    (root / "data/big.bin").write_bytes(os.urandom(BIG))


def wide_layer(root: Path) -> None:
    (root / "data").mkdir(exist_ok=True)
    (root / "data/wide.txt").write_bytes(b"0123456789abcdef" * (WIDE // 16))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("enospc-images")
    layout = build_layout(base / "layout", "base", [base_layer])
    build_layout(layout, "big", [big_layer], base="base")
    build_layout(layout, "wide", [wide_layer], base="base")
    out = {
        "base": export(layout, "base", "docker-archive", base / "base.tar", "full/base:v1"),
        "big": export(layout, "big", "docker-archive", base / "big.tar", "full/big:v1"),  # layers as plain tar
        "wide": export(layout, "wide", "oci-archive", base / "wide.tar", "full/wide:v1"),  # layers gzipped
    }
    out["big.gz"] = base / "big.tar.gz"
    out["big.gz"].write_bytes(gzip.compress(out["big"].read_bytes(), compresslevel=1))
    rootfs = base / "unpacked-big"
    run("umoci", "unpack", "--image", f"{layout}:big", str(rootfs))
    out["big-rootfs"] = rootfs / "rootfs"
    return out


@pytest.fixture(scope="module")
def reference(images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The layer trees of the three images loaded on a disk with room to spare."""
    root = tmp_path_factory.mktemp("enospc-reference")
    for name in ("base", "big", "wide"):
        loaded = layerstore(root, "load", "-q", "-i", str(images[name]))
        assert loaded.rc == 0, loaded
    return layer_trees(root)


def load_base(root: Path, images: dict[str, Path]) -> None:
    loaded = layerstore(root, "load", "-q", "-i", str(images["base"]))
    assert loaded.rc == 0, loaded


def prune_and_check(root: Path, reference: dict[str, dict], names: set[str]) -> None:
    """The store opens and lists exactly ``names``, whole; prune then leaves nothing unreferenced."""
    assert check_store(root, reference) == names
    pruned = layerstore(root, "prune", "-f")
    assert pruned.rc == 0, pruned
    assert unreferenced(root) == (set(), set())
    assert check_store(root, reference) == names


@pytest.mark.parametrize("source", ["file", "gzip-stdin"])
def test_load_on_a_full_disk_fails_cleanly_and_succeeds_once_there_is_room(
    tmp_path: Path, images: dict[str, Path], reference: dict[str, dict], source: str
) -> None:
    """The blob (or, from stdin, the spooled archive) does not fit: nothing of it stays."""
    with small_fs(tmp_path / "small", 16 * MIB) as fs:
        root = fs / "store"
        load_base(root, images)
        filler = fill(fs, leave=MIB)

        def load() -> Run:
            if source == "file":
                return layerstore(root, "load", "-i", str(images["big"]))
            with open(images["big.gz"], "rb") as stdin:
                return layerstore(root, "load", stdin=stdin)

        failed = load()
        assert_clean_error(failed, "load " + (str(images["big"]) if source == "file" else "stdin"), ENOSPC_TEXT)
        assert not list((root / "tmp").iterdir())  # the spool file went with the failure
        prune_and_check(root, reference, {"full/base:v1"})

        filler.unlink()
        loaded = load()
        assert loaded.rc == 0, loaded
        assert check_store(root, reference) == {"full/base:v1", "full/big:v1"}


def test_unpack_that_outgrows_the_disk_leaves_no_layer(tmp_path: Path, images: dict[str, Path], reference: dict[str, dict]) -> None:
    """The blob fits, its 12 MiB layer does not: no staging left, the blob is prune's."""
    with small_fs(tmp_path / "small", 16 * MIB) as fs:
        root = fs / "store"
        load_base(root, images)
        filler = fill(fs, leave=4 * MIB)

        failed = layerstore(root, "load", "-i", str(images["wide"]))
        assert_clean_error(failed, f"load {images['wide']}", ENOSPC_TEXT)
        blobs, layers = unreferenced(root)
        assert blobs and layers == set()  # the verified blobs were stored (gzipped, unlike base.tar's); no layer appeared
        prune_and_check(root, reference, {"full/base:v1"})

        filler.unlink()
        loaded = layerstore(root, "load", "-i", str(images["wide"]))
        assert loaded.rc == 0, loaded
        assert check_store(root, reference) == {"full/base:v1", "full/wide:v1"}


def test_copy_up_on_a_full_disk_is_enospc_and_leaves_no_partial_copy(
    tmp_path: Path, images: dict[str, Path], reference: dict[str, dict]
) -> None:
    """A mounted image's big file cannot be copied up: ENOSPC, the lower file still shows, work dir clean."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with small_fs(tmp_path / "small", 16 * MIB) as fs:
        root = fs / "store"
        loaded = layerstore(root, "load", "-q", "-i", str(images["big"]))
        assert loaded.rc == 0, loaded
        mounted = layerstore(root, "mount", "full/big:v1", str(mnt))
        assert mounted.rc == 0, mounted
        try:
            [container] = list((root / "containers").iterdir())
            upper, work = container / "upper", container / "work"
            original = file_digest(images["big-rootfs"] / "data/big.bin")
            filler = fill(fs, leave=MIB)

            with pytest.raises(OSError) as caught:
                os.open(mnt / "data/big.bin", os.O_WRONLY)
            assert caught.value.errno == errno.ENOSPC
            with pytest.raises(OSError) as caught, open(mnt / "data/big.bin", "ab") as f:
                f.write(b"more")
            assert caught.value.errno == errno.ENOSPC
            assert not (upper / "data/big.bin").exists()  # no partial copy-up in view
            assert [p for p in work.rglob("*") if p != work / "work"] == []  # nor in the work dir
            assert file_digest(mnt / "data/big.bin") == original
            assert tree(mnt) == tree(images["big-rootfs"])
            assert check_store(root, reference) == {"full/big:v1"}

            filler.unlink()
            with open(mnt / "data/big.bin", "r+b") as f:
                f.write(b"changed")
            with open(mnt / "data/big.bin", "rb") as f:
                head = f.read(7)
            assert head == b"changed" and (mnt / "data/big.bin").stat().st_size == BIG
            assert (upper / "data/big.bin").stat().st_size == BIG
            assert [p for p in work.rglob("*") if p != work / "work"] == []
        finally:
            removed = layerstore(root, "rm", "-f", mounted.out.strip())
        assert removed.rc == 0, removed
        assert check_store(root, reference) == {"full/big:v1"}


def test_a_disk_with_no_room_at_all_still_answers_in_one_line(tmp_path: Path, images: dict[str, Path]) -> None:
    """Even the metadata database cannot be opened for writing: a clean error, not a traceback."""
    with small_fs(tmp_path / "small", 8 * MIB) as fs:
        root = fs / "store"
        load_base(root, images)
        filler = fill(fs, leave=0)
        for args in (("images",), ("load", "-i", str(images["big"]))):
            result = layerstore(root, *args)
            if result.rc != 0:
                assert_clean_error(result, args[0], ENOSPC_TEXT)
        filler.unlink()
        listed = layerstore(root, "images", "--format", "{{.Repository}}:{{.Tag}}")
        assert listed.rc == 0 and listed.out.split() == ["full/base:v1"], listed



def test_removal_works_on_a_disk_with_no_room_at_all(tmp_path: Path, images: dict[str, Path]) -> None:
    """rmi is how space comes back: the store's reserve lets its metadata commit."""
    with small_fs(tmp_path / "small", 8 * MIB) as fs:
        root = fs / "store"
        load_base(root, images)
        assert (root / "reserve").is_file()
        filler = fill(fs, leave=0)
        removed = layerstore(root, "rmi", "full/base:v1")
        assert removed.rc == 0, removed
        assert "Deleted: sha256:" in removed.out
        assert not (root / "reserve").exists()  # given up, so that the removal could commit
        filler.unlink()
        listed = layerstore(root, "images", "-q")
        assert listed.rc == 0 and listed.out == ""
        assert (root / "reserve").is_file()  # made again once there was room
        assert check_store(root) == set()


def test_listing_and_prune_work_on_a_disk_with_no_room_at_all(tmp_path: Path, images: dict[str, Path]) -> None:
    """The store opens on a full disk (its reserve given up if it must), and prune -a frees the space."""
    with small_fs(tmp_path / "small", 8 * MIB) as fs:
        root = fs / "store"
        load_base(root, images)
        filler = fill(fs, leave=0)
        listed = layerstore(root, "images", "--format", "{{.Repository}}:{{.Tag}}")
        assert listed.rc == 0 and listed.out.split() == ["full/base:v1"], listed
        pruned = layerstore(root, "image", "prune", "-a", "-f")
        assert pruned.rc == 0, pruned
        assert "Total reclaimed space:" in pruned.out
        assert os.statvfs(fs).f_bavail > 0
        filler.unlink()
        listed = layerstore(root, "images", "-q")
        assert listed.rc == 0 and listed.out == ""
        assert (root / "reserve").is_file()
        assert check_store(root) == set()
