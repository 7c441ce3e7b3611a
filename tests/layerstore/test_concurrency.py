"""Several ``layerstore`` processes on one store at once: loads, ``rmi``, ``prune`` and a mount.

Every command runs as a process of its own with ``LAYERSTORE_ROOT`` set, as
users would run them side by side. Unpacks are counted through the
``layer.unpack.start`` crash point (``CRASHPOINT_TRACE``), which every
process appends to one trace file.
"""
from __future__ import annotations

import fcntl
import os
import random
import shutil
import threading
from pathlib import Path

import pytest
from imagebuild import build_layout, export, run, write
from storecheck import check_store, layer_trees, layerstore, run_together, tree
from waiting import wait_for

from layerstore.layers import LayerDirs

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("umoci"), reason="needs root (FUSE), umoci and skopeo")

MIB = 1 << 20
ROUNDS = 5


def base_layer(root: Path) -> None:
    write(root, "etc/os-release", 'NAME="Concurrency test"\n')
    write(root, "bin/tool.sh", "#!/bin/sh\necho tool\n", 0o755)
    os.symlink("tool.sh", root / "bin/tool")


def heavy_layer(root: Path) -> None:
    """Long enough to unpack that loads started together overlap in it."""
    (root / "data").mkdir()
    for i in range(4):
        (root / f"data/part{i}").write_bytes(bytes([65 + i]) * (4 * MIB))
    for i in range(200):
        write(root, f"data/small/{i:03}", f"file {i}\n")


def app_layer(root: Path) -> None:
    write(root, "srv/app.txt", "app\n")
    os.unlink(root / "bin/tool")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("concurrency-images")
    layout = build_layout(base / "layout", "base", [base_layer])
    build_layout(layout, "app", [heavy_layer, app_layer], base="base")
    out = {
        "base": export(layout, "base", "oci-archive", base / "base.tar", "conc/base:v1"),
        "app": export(layout, "app", "oci-archive", base / "app.tar", "conc/app:v1"),
        "app-zstd": export(layout, "app", "oci-archive", base / "app-zstd.tar", "conc/app:zstd", "--dest-compress-format", "zstd"),
    }
    rootfs = base / "unpacked-app"
    run("umoci", "unpack", "--image", f"{layout}:app", str(rootfs))
    out["app-rootfs"] = rootfs / "rootfs"
    return out


@pytest.fixture(scope="module")
def reference(images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("concurrency-reference")
    loaded = layerstore(root, "load", "-q", "-i", str(images["app"]))
    assert loaded.rc == 0, loaded
    return layer_trees(root)


def unpacks(trace: Path) -> int:
    return trace.read_text().splitlines().count("layer.unpack.start") if trace.exists() else 0


def test_loads_at_once_unpack_each_layer_once(tmp_path: Path, images: dict[str, Path], reference: dict[str, dict]) -> None:
    """Four loads of images sharing layers (gzip and zstd blobs of the same diff_ids): three unpacks."""
    loads = [("load", "-q", "-i", str(images[name])) for name in ("app", "app", "app-zstd", "base")]
    counts = []
    for round_ in range(ROUNDS):
        root, trace = tmp_path / f"store-{round_}", tmp_path / f"trace-{round_}"
        results = run_together(root, loads, random.Random(round_), CRASHPOINT_TRACE=str(trace))
        for result in results:
            assert result.rc == 0, result
        counts.append(unpacks(trace))
        assert check_store(root, reference) == {"conc/base:v1", "conc/app:v1", "conc/app:zstd"}
    assert counts == [len(reference)] * ROUNDS


def _flock_waiters(inode: int) -> int:
    """Locks waiting on the file of this inode, as the kernel lists them (``->`` lines)."""
    with open("/proc/locks", encoding="ascii") as locks:
        return sum(1 for line in locks if " -> " in line and line.split()[-3].rpartition(":")[2] == str(inode))


def test_a_waiter_on_a_removed_layer_lock_does_not_join_the_next_holder(tmp_path: Path) -> None:
    """A holder releases by removing the lock file, then closing it. A newcomer between the two
    makes a new file and holds it; the waiter, woken on the old one, must wait for the new one."""
    layers = LayerDirs(tmp_path)
    diff_id = "sha256:" + "ab" * 32
    path = layers.locks / f"sha256-{'ab' * 32}"
    inside: list[str] = []
    overlaps: list[str] = []
    entered = {name: threading.Event() for name in ("waiter", "newcomer")}
    leave = threading.Event()

    def hold(name: str) -> None:
        with layers.locked(diff_id):
            if inside:
                overlaps.append(name)
            inside.append(name)
            entered[name].set()
            leave.wait(10)
            inside.remove(name)

    holder = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)  # the first holder, as layers.locked takes it
    old = os.fstat(holder).st_ino
    waiter = threading.Thread(target=hold, args=("waiter",))
    waiter.start()
    assert wait_for(lambda: _flock_waiters(old) == 1, 10)
    os.unlink(path)  # the holder's release, first half
    newcomer = threading.Thread(target=hold, args=("newcomer",))
    newcomer.start()
    assert entered["newcomer"].wait(10)
    new = path.stat().st_ino
    os.close(holder)  # second half: the waiter wakes on a file that has no name
    assert wait_for(lambda: bool(overlaps) or _flock_waiters(new) == 1, 10)
    assert overlaps == []  # the waiter waits on the newcomer's file, rather than being inside with it
    leave.set()
    for thread in (waiter, newcomer):
        thread.join(10)
    assert entered["waiter"].is_set() and inside == [] and overlaps == [] and not path.exists()


def test_rmi_and_prune_leave_a_mounted_image_alone(tmp_path: Path, images: dict[str, Path], reference: dict[str, dict]) -> None:
    """``rmi -f`` and ``prune -a`` from other processes, at once: the mount reads every file; the
    layers go only once the container is removed."""
    root, mnt = tmp_path / "store", tmp_path / "mnt"
    mnt.mkdir()
    for name in ("app", "base"):
        loaded = layerstore(root, "load", "-q", "-i", str(images[name]))
        assert loaded.rc == 0, loaded
    mounted = layerstore(root, "mount", "conc/app:v1", str(mnt))
    assert mounted.rc == 0, mounted
    expected = tree(images["app-rootfs"])
    layer_dirs = [root / "layers/sha256" / diff_id.split(":")[1] for diff_id in reference]
    try:
        for round_ in range(3):
            rng = random.Random(round_)
            commands = [("rmi", "-f", "conc/app:v1"), ("prune", "-a", "-f"), ("image", "prune", "-a", "-f"), ("rmi", "-f", "conc/base:v1")]
            for result in run_together(root, commands, rng):
                # the first rmi untags; a later one finds no such image; prune removes what no container uses
                assert result.rc == 0 or result.err == f"Error: No such image: {result.args[-1]}\n", result
                assert "Traceback" not in result.err, result
            assert tree(mnt) == expected
            assert all(d.is_dir() for d in layer_dirs)
            assert check_store(root, reference) == {_image_id(root)}
            loaded = layerstore(root, "load", "-q", "-i", str(images["app"]))  # tag it again for the next round
            assert loaded.rc == 0, loaded
    finally:
        removed = layerstore(root, "rm", "-f", mounted.out.strip())
    assert removed.rc == 0, removed
    pruned = layerstore(root, "prune", "-a", "-f")
    assert pruned.rc == 0, pruned
    assert not any(d.exists() for d in layer_dirs)
    assert check_store(root) == set()


def _image_id(root: Path) -> str:
    from layerstore.store import Store

    with Store(root) as store:
        [row] = store.meta.query("SELECT id FROM images")
        return str(row["id"])
