"""A store whose filesystem loses power right after ``load`` has the images it listed, whole.

The store is on xfs in a loop-mounted image; images built by umoci and
exported by skopeo are loaded, and the filesystem is then shut down without
writing its log (``mounts.power_cut``): what only the page cache held is
gone, as when the machine loses power. Mounted again, the store must list
the images it listed and hold every layer as it was unpacked: the failure
that containerd and containers/storage users met (moby/moby#49784,
containerd/containerd#8973), layers recorded as whole with files of no
data, would show here as layer trees that differ from the reference and
as ``fsck`` problems. Pulls and imports unpack through the same code
(``Layers.unpack``), and so do commits: a container's file made durable
and the image committed from it are there after the power cut too.
"""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
from imagebuild import build_layout, export, write
from mounts import abort_connection, driver_pid, force_unmount, loop_fs, mount_again, power_cut
from storecheck import check_store, layer_trees, layerstore

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("umoci") and shutil.which("mkfs.xfs") and shutil.which("xfs_io")),
    reason="needs root (loop mounts), umoci, skopeo and xfsprogs")

MIB = 1 << 20


def base_layer(root: Path) -> None:
    write(root, "etc/os-release", 'NAME="Power cut test"\n')
    write(root, "bin/tool.sh", "#!/bin/sh\necho tool\n", 0o755)
    (root / "usr/lib").mkdir(parents=True)
    for i in range(200):
        (root / f"usr/lib/small-{i}.so").write_bytes(os.urandom(1000 + i))


def data_layer(root: Path) -> None:
    (root / "data").mkdir()
    (root / "data/big.bin").write_bytes(os.urandom(3 * MIB))
    os.unlink(root / "etc/os-release")


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    base = tmp_path_factory.mktemp("power-cut-images")
    layout = build_layout(base / "layout", "base", [base_layer])
    build_layout(layout, "data", [data_layer], base="base")
    return [export(layout, "base", "docker-archive", base / "base.tar", "cut/base:v1"),  # plain tar layers
            export(layout, "data", "oci-archive", base / "data.tar", "cut/data:v1")]  # gzip layers


def test_images_loaded_before_a_power_cut_are_whole_after_it(tmp_path: Path, archives: list[Path]) -> None:
    reference_root = tmp_path / "reference"
    for archive in archives:
        assert layerstore(reference_root, "load", "-q", "-i", str(archive)).rc == 0
    reference = layer_trees(reference_root)
    with loop_fs(tmp_path, "xfs", ["mkfs.xfs", "-q"], 512 * MIB) as fs:
        root = fs / "store"
        for archive in archives:
            loaded = layerstore(root, "load", "-q", "-i", str(archive))
            assert loaded.rc == 0, loaded
        listed = layerstore(root, "images", "--format", "{{.Repository}}:{{.Tag}}")
        power_cut(fs)
        mount_again(fs)
        assert layerstore(root, "images", "--format", "{{.Repository}}:{{.Tag}}").out == listed.out
        assert check_store(root, reference) == {"cut/base:v1", "cut/data:v1"}
        checked = layerstore(root, "fsck")
        assert (checked.rc, checked.err) == (0, ""), checked


def test_a_container_and_an_image_committed_from_it_are_whole_after_a_power_cut(tmp_path: Path, archives: list[Path]) -> None:
    with loop_fs(tmp_path, "xfs", ["mkfs.xfs", "-q"], 512 * MIB) as fs:
        root, mnt = fs / "store", tmp_path / "rootfs"
        mnt.mkdir()
        assert layerstore(root, "load", "-q", "-i", str(archives[0])).rc == 0
        mounted = layerstore(root, "mount", "--name", "c1", "cut/base:v1", str(mnt))
        assert mounted.rc == 0, mounted
        fd = os.open(mnt / "etc/written", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"made durable in the container\n")
        os.fsync(fd)
        os.close(fd)
        fd = os.open(mnt / "etc", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        committed = layerstore(root, "commit", "c1", "cut/committed:v1")
        assert committed.rc == 0, committed
        power_cut(fs)
        os.kill(driver_pid(mnt), signal.SIGKILL)
        abort_connection(mnt)
        force_unmount(mnt)
        mount_again(fs)
        assert check_store(root) == {"cut/base:v1", "cut/committed:v1"}
        checked = layerstore(root, "fsck")
        assert (checked.rc, checked.err) == (0, ""), checked
        # the container mounted again where it was, and a new one of the committed image
        for name, args in (("c1", ("c1",)), ("c2", ("--name", "c2", "cut/committed:v1", str(mnt)))):
            again = layerstore(root, "mount", *args)
            assert again.rc == 0, again
            try:
                assert (mnt / "etc/written").read_bytes() == b"made durable in the container\n"
                assert len((mnt / "usr/lib/small-7.so").read_bytes()) == 1007
            finally:
                assert layerstore(root, "umount", name).rc == 0
