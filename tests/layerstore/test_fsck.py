"""fsck: every kind of damage a store can suffer is found, named, and repaired
or left with a clear word; a repaired store loads, mounts and checks clean."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from trees import tree

from layerstore import fsck
from layerstore.store import Store

EXAMPLE = Path(__file__).resolve().parents[2] / "layerstore" / "demo" / "example.tar"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store")
    s.load(str(EXAMPLE))
    yield s
    s.close()


def layer_dirs(store: Store) -> list[Path]:
    image = store.resolve("example/demo")
    return [store.layers.path(d) for d in store.image_layers(image)]


def a_file(store: Store) -> Path:
    for layer in layer_dirs(store):
        for path in sorted(layer.rglob("*")):
            if path.is_file() and not path.is_symlink() and not path.name.startswith(".wh."):
                return path
    raise AssertionError("the example has no regular file")


def fsck_cli(store: Store, *args: str) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "layerstore", "--root", str(store.root), "fsck", *args], capture_output=True, text=True, check=False
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout


def listed(store: Store) -> list[str]:
    """What ``images`` shows as REPOSITORY:TAG."""
    result = subprocess.run([sys.executable, "-m", "layerstore", "--root", str(store.root), "images", "--format",
                             "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_a_fresh_store_is_clean(store: Store) -> None:
    code, out = fsck_cli(store)
    assert code == 0, out
    assert "clean" in out
    assert fsck_cli(store, "-q") == (0, "")  # quiet: nothing to say
    report = fsck.check(store)
    assert report.blobs >= 4 and report.layers == 2 and report.images == 1 and report.entries > 10


def append(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"!")


def same_size_edit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))


def keep_mtime(change: Callable[[Path], None]) -> Callable[[Path], None]:
    def changed(path: Path) -> None:
        st = os.lstat(path)
        change(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    return changed


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "appended": (append, "size"),
    "flipped bit, same size and mtime": (keep_mtime(same_size_edit), "content changed"),
    "mode": (lambda p: os.chmod(p, 0o4777), "mode"),
    "owner": (lambda p: os.chown(p, 4242, 4242), "uid"),
    "mtime": (lambda p: os.utime(p, ns=(0, 0)), "mtime_ns"),  # a save would write another tar
    "xattr": (lambda p: os.setxattr(p, "user.overlay.opaque", b"y"), "xattrs changed"),
    "removed": (lambda p: p.unlink(), "missing"),
    "extra file": (lambda p: (p.parent / "planted").write_text("x"), "not in the inventory"),
    "replaced by a symlink": (lambda p: (p.unlink(), os.symlink("/etc/shadow", p)), "kind"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_damaged_layer_is_found_and_unpacked_again(store: Store, damage: str) -> None:
    change, words = DAMAGE[damage]
    victim = a_file(store)
    image = store.resolve("example/demo")
    before = {d: tree(store.layers.path(d)) for d in store.image_layers(image)}
    layer = layer_of(store, victim)
    rel = victim.relative_to(layer)
    change(victim)
    code, out = fsck_cli(store)
    assert code == fsck.LEFT, out
    assert words in out
    assert fsck_cli(store, "-q") == (code, out)  # quiet says the problems and the summary all the same
    assert (f"{rel.parent}/planted" if damage == "extra file" else str(rel)) in out
    code, out = fsck_cli(store, "--repair")
    assert code == fsck.REPAIRED, out
    # the layer's own finding repairs it: the image never sees it missing
    findings = [line for line in out.splitlines() if f"sha256:{layer.name}" in line]
    assert len(findings) == 1, out
    assert findings[0].startswith(f"layer sha256:{layer.name}: ") and findings[0].endswith(" (unpacked again from its blob)"), out
    assert {d: tree(store.layers.path(d)) for d in store.image_layers(image)} == before
    assert fsck_cli(store)[0] == fsck.CLEAN


def test_a_directory_s_xattrs_are_checked_and_a_first_version_inventory_still_reads(store: Store) -> None:
    """A directory's xattrs (an opaque marker set or taken away behind the store's back
    changes what the union shows) are in the inventory. Inventories of version 1 did not
    record them: read, they check everything else and leave those out."""
    layer = layer_of(store, a_file(store))
    directory = next(path for path in sorted(layer.rglob("*")) if path.is_dir() and not path.is_symlink())
    rel = directory.relative_to(layer)
    os.setxattr(directory, "user.overlay.opaque", b"y")
    code, out = fsck_cli(store)
    assert code == fsck.LEFT and f"{rel}: xattrs changed" in out, out
    os.removexattr(directory, "user.overlay.opaque")
    assert fsck_cli(store)[0] == fsck.CLEAN

    diff_id = f"sha256:{layer.name}"
    path = store.layers.inventory_path(diff_id)
    lines = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes()).decode().splitlines()
    entries = [json.loads(line) for line in lines[1:]]
    old = [json.dumps({"inventory": 1})] + [json.dumps(e[:8] + ["" if e[1] == "dir" else e[8]] + e[9:]) for e in entries]
    os.chmod(path, 0o644)
    path.write_bytes(zstandard.ZstdCompressor().compress(("\n".join(old) + "\n").encode()))
    assert fsck_cli(store)[0] == fsck.CLEAN
    os.setxattr(directory, "user.overlay.opaque", b"y")
    assert fsck_cli(store)[0] == fsck.CLEAN  # not recorded: not checked
    append(a_file(store))
    code, out = fsck_cli(store)
    assert code == fsck.LEFT and f"{a_file(store).relative_to(layer)}: size" in out, out


def layer_of(store: Store, path: Path) -> Path:
    return next(layer for layer in layer_dirs(store) if layer in path.parents)


def test_corrupt_blob_is_removed_and_a_load_brings_it_back(store: Store) -> None:
    image = store.resolve("example/demo")
    blob = store.blobs.path(image)  # the config blob
    os.chmod(blob, 0o644)
    blob.write_bytes(blob.read_bytes().replace(b"amd64", b"arm64"))
    code, out = fsck_cli(store)
    assert code == fsck.LEFT and f"blob {image}: content has digest sha256:" in out
    code, out = fsck_cli(store, "--repair")
    assert code == fsck.LEFT, out  # the image lost its config: only a load or pull can give it back
    assert "removed; a pull or load fetches it again" in out and "pull or load the image again" in out
    assert not blob.exists()
    assert listed(store) == ["example/demo:latest"]  # still listed, for the load or pull that mends it
    store.load(str(EXAMPLE))
    assert fsck.check(store).exit_code == fsck.CLEAN


def test_lost_layer_directory_is_unpacked_again(store: Store) -> None:
    layer = layer_dirs(store)[0]
    before = tree(layer)
    store.layers.remove(f"sha256:{layer.name}")
    code, out = fsck_cli(store)
    assert code == fsck.LEFT and "is missing" in out
    assert fsck_cli(store, "--repair")[0] == fsck.REPAIRED
    assert tree(layer) == before


def test_lost_layer_and_blob_leave_the_image_for_a_new_load(store: Store) -> None:
    image = store.resolve("example/demo")
    diff_id = store.image_layers(image)[0]
    blob = store.meta.one("SELECT blob FROM image_layers WHERE diff_id = ?", diff_id)["blob"]
    store.layers.remove(diff_id)
    store.blobs.delete(blob)
    code, out = fsck_cli(store, "--repair")
    assert code == fsck.LEFT and "pull or load the image again" in out
    assert listed(store) == ["example/demo:latest"]
    store.load(str(EXAMPLE))
    assert fsck_cli(store)[0] == fsck.CLEAN


def test_a_lost_layer_blob_is_reported_for_its_image(store: Store) -> None:
    """The layer directory still serves mounts, but a save or a repair of the layer needs the blob."""
    image = store.resolve("example/demo")
    row = store.meta.one("SELECT position, blob FROM image_layers WHERE image_id = ? ORDER BY position DESC", image)
    store.blobs.delete(row["blob"])
    code, out = fsck_cli(store)
    assert code == fsck.LEFT, out
    assert f"image {image}: blob {row['blob']} of layer {row['position']} is missing: pull or load the image again" in out
    assert fsck_cli(store, "--repair")[0] == fsck.LEFT
    store.load(str(EXAMPLE))
    assert fsck_cli(store)[0] == fsck.CLEAN


def test_layer_without_inventory_cannot_be_trusted(store: Store) -> None:
    diff_id = store.image_layers(store.resolve("example/demo"))[1]
    store.layers.inventory_path(diff_id).unlink()
    code, out = fsck_cli(store)
    assert code == fsck.LEFT and "no inventory" in out
    assert fsck_cli(store, "--repair")[0] == fsck.REPAIRED
    assert store.layers.inventory_path(diff_id).is_file()
    assert fsck_cli(store)[0] == fsck.CLEAN


def test_damaged_inventory_is_reported_not_a_crash(store: Store) -> None:
    diff_id = store.image_layers(store.resolve("example/demo"))[0]
    store.layers.inventory_path(diff_id).write_bytes(b"\x28\xb5\x2f\xfd garbage")
    code, out = fsck_cli(store)
    assert code == fsck.LEFT and "unreadable inventory" in out
    assert fsck_cli(store, "--repair")[0] == fsck.REPAIRED


def test_leftovers_of_interrupted_work(store: Store) -> None:
    (store.layers.staging / "0123abcd").mkdir()
    (store.blobs.ingest_dir / "feed.part").write_bytes(b"half")
    (store.blobs.ingest_dir / ("ab" * 32 + ".partial")).write_bytes(b"resumable")
    orphan = store.layers.inventory_path("sha256:" + "cd" * 32)
    orphan.write_bytes(b"x")
    with store.meta.transaction() as tx:
        tx.execute("INSERT INTO leases VALUES ('lease:dead', 2147483646, 0)")
    extra = store.blobs.put_bytes(b"nobody's blob")
    two_days_ago = time.time() - 2 * 86400
    os.utime(store.blobs.path(extra.digest), (two_days_ago, two_days_ago))
    code, out = fsck_cli(store)
    assert code == fsck.LEFT
    for words in ("layers/.staging/0123abcd", "ingest/feed.part", str(orphan.relative_to(store.root)), "lease of process", f"blob {extra.digest}: no image uses it"):
        assert words in out
    assert ".partial" not in out  # a download a later pull resumes
    assert fsck_cli(store, "--repair")[0] == fsck.REPAIRED
    assert fsck_cli(store)[0] == fsck.CLEAN
    assert (store.blobs.ingest_dir / ("ab" * 32 + ".partial")).exists()


def test_recent_unused_blobs_and_layers_are_kept_until_max(store: Store) -> None:
    """What a stopped pull or load verified waits a day for the next try, as in podman system check."""
    image = store.resolve("example/demo")
    diff_id = store.image_layers(image)[-1]
    store.rmi("example/demo", prune=False)  # the image goes, its files stay: what an interrupted load leaves
    code, out = fsck_cli(store)
    assert code == fsck.CLEAN, out
    assert "recent layers and blobs that no image uses kept (prune removes them)" in out and "no image uses it" not in out
    code, out = fsck_cli(store, "--repair")
    assert code == fsck.CLEAN and store.layers.has(diff_id), out
    code, out = fsck_cli(store, "--max", "1h")
    assert code == fsck.CLEAN, out
    code, out = fsck_cli(store, "--max", "0")
    assert code == fsck.LEFT and f"layer {diff_id}: no image uses it" in out and f"blob {image}: no image uses it" in out
    day_old = time.time() - 86400 - 60
    os.utime(store.layers.inventory_path(diff_id), (day_old, day_old))
    code, out = fsck_cli(store)
    assert code == fsck.LEFT and f"layer {diff_id}: no image uses it" in out and f"blob {image}: no image uses it" not in out
    code, out = fsck_cli(store, "--repair")
    assert code == fsck.REPAIRED and not store.layers.has(diff_id) and store.blobs.has(image), out
    result = subprocess.run([sys.executable, "-m", "layerstore", "--root", str(store.root), "prune", "-f"],
                            capture_output=True, text=True, check=True)
    assert not store.blobs.has(image), result.stdout
    assert fsck_cli(store, "--max", "0")[0] == fsck.CLEAN


def test_max_that_is_not_a_duration(store: Store) -> None:
    result = subprocess.run([sys.executable, "-m", "layerstore", "--root", str(store.root), "fsck", "--max", "soon"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["Error: invalid --max 'soon': not a duration (for example 24h, 90m, 0)"]


def test_leftovers_are_not_judged_while_a_load_runs(store: Store) -> None:
    (store.layers.staging / "in-progress").mkdir()
    with store.lease():
        report = fsck.check(store, repair=True)
    assert report.busy and report.exit_code == fsck.CLEAN
    assert (store.layers.staging / "in-progress").exists()


def test_metadata_that_names_missing_rows(store: Store) -> None:
    with sqlite3.connect(store.root / "meta.db") as db:  # foreign keys off: what a bug could leave
        db.execute("INSERT INTO tags VALUES ('ghost', 'latest', 'sha256:' || printf('%064d', 0))")
    code, out = fsck_cli(store)
    assert code == fsck.LEFT and "metadata: tags row" in out


def test_corrupt_database_is_reported_with_exit_4(store: Store) -> None:
    store.close()
    db = store.root / "meta.db"
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    data = bytearray(db.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)
    db.write_bytes(bytes(data))
    for command in (["fsck"], ["images"]):
        result = subprocess.run([sys.executable, "-m", "layerstore", "--root", str(store.root), *command], capture_output=True, text=True, check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.startswith(f"Error: {command[0]}: metadata database: "), result.stderr


def test_container_rows_and_directories_agree(store: Store) -> None:
    """A create killed after its row, or an rm killed after its row went, leaves one without the other."""
    from layerstore.containers import Containers

    containers = Containers(store)
    image = store.resolve("example/demo")
    with store.meta.transaction() as tx:  # the row of a create that died before its directories
        tx.execute("INSERT INTO containers (id, name, image_id, mountpoint, read_only, created) VALUES ('c0ffee', 'half-made', ?, NULL, 0, 0)", (image,))
        # a read-only container has no directories of its own: nothing is missing
        tx.execute("INSERT INTO containers (id, name, image_id, mountpoint, read_only, created) VALUES ('decaf0', 'reader', ?, NULL, 1, 0)", (image,))
    orphan = containers.dir / ("ab" * 32)  # the directories of an rm that died after its row
    (orphan / "upper" / "etc").mkdir(parents=True)
    code, out = fsck_cli(store)
    assert code == fsck.LEFT
    assert "container half-made: its upper and work directories missing" in out
    assert f"containers/{orphan.name}: no container has it" in out
    assert "reader" not in out
    code, out = fsck_cli(store, "--repair")
    assert code == fsck.REPAIRED, out
    upper, work = containers.paths("c0ffee")
    assert upper.is_dir() and work.is_dir() and not orphan.exists()
    assert fsck_cli(store)[0] == fsck.CLEAN


def test_a_layer_under_a_running_mount_is_reported_not_swapped(store: Store, tmp_path: Path) -> None:
    """Repair would pull the directory from under the container: it says so and waits."""
    from layerstore.containers import Containers

    containers = Containers(store)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    victim = a_file(store)
    containers.create_and_mount("example/demo", str(mnt), name="busy")
    try:
        append(victim)
        code, out = fsck_cli(store, "--repair")
        assert code == fsck.LEFT and "used by mounted container busy" in out, out
        assert victim.exists()
    finally:
        containers.umount("busy")
    code, out = fsck_cli(store, "--repair")
    assert code == fsck.REPAIRED and "unpacked again from its blob" in out, out
