"""Killed at every crash point, a store command loses nothing.

For load, commit, tag, rmi and prune: the command is run once to list its
crash points, then once per point with a SIGKILL there, on a fresh copy of
the same store. After each kill, fsck finds nothing worse than leftovers,
the images that were whole stay whole (their layers' trees unchanged, and a
sample of them mounted through the driver), and running the command again
ends exactly where an uninterrupted run ends. A failure names the command
and the kill point; ``CRASHPOINT_KILL=N`` replays it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from crashkit import State, check_after_kill, copy_store, kill_points, points, run
from trees import tree

from layerstore.containers import Containers
from layerstore.store import Store
from unionfs.mount import MountSpec, mounted

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("skopeo"), reason="needs root (layer owners, device whiteouts, mounts) and skopeo")

EXAMPLE = Path(__file__).resolve().parents[2] / "layerstore" / "demo" / "example.tar"
MOUNT_EVERY = 10  # every tenth kill point also mounts the images it kept


@dataclass(frozen=True)
class Op:
    name: str
    store: str  # which prepared store it starts from
    argv: tuple[str, ...]
    removes: tuple[str, ...] = ()  # tags whose images the command may remove
    repeatable: bool = True  # running it again after it completed is a no-op


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Stores in the states the commands start from, made by the commands themselves."""
    base = tmp_path_factory.mktemp("crash")
    stores = {name: base / name for name in ("empty", "one", "container", "shared")}
    Store(stores["empty"]).close()
    copy_store(stores["empty"], stores["one"])
    assert run(stores["one"], ["load", "-i", str(EXAMPLE)]) == 0
    copy_store(stores["one"], stores["container"])
    mnt = base / "mnt"
    mnt.mkdir()
    with Store(stores["container"]) as store:
        containers = Containers(store)
        containers.create_and_mount("example/demo", str(mnt), name="work")
        try:
            (mnt / "etc" / "app.conf").write_text("port = 80\n")
            (mnt / "srv" / "data").mkdir(parents=True)
            (mnt / "srv" / "data" / "blob").write_bytes(os.urandom(300_000))
            with open(mnt / "etc" / "os-release", "a") as f:
                f.write("VARIANT=app\n")
            for entry in sorted((mnt / "usr").rglob("*"), reverse=True)[:1]:
                entry.unlink() if not entry.is_dir() else shutil.rmtree(entry)
        finally:
            containers.umount("work")
    committed = base / "committed"
    copy_store(stores["container"], committed)
    assert run(committed, ["commit", "work", "example/app:v1"]) == 0
    assert run(committed, ["save", "-o", str(base / "app.tar"), "example/app:v1"]) == 0
    copy_store(stores["one"], stores["shared"])
    assert run(stores["shared"], ["load", "-i", str(base / "app.tar")]) == 0
    stores["app.tar"] = base / "app.tar"
    stores["app-oci.tar"] = base / "app-oci.tar"  # skopeo's OCI archive, gzip layers
    subprocess.run(
        ["skopeo", "copy", "-q", "--dest-compress-format", "gzip", f"docker-archive:{base / 'app.tar'}", f"oci-archive:{base / 'app-oci.tar'}:example/app:v1"],
        check=True,
    )
    return stores


OPS = [
    Op("load", "empty", ("load", "-i", str(EXAMPLE))),
    Op("load-sharing-layers", "one", ("load", "-i", "{app_tar}")),
    Op("load-oci-gzip", "empty", ("load", "-i", "{app_oci}")),
    Op("commit", "container", ("commit", "work", "example/app:v1"), repeatable=False),
    Op("tag", "one", ("tag", "example/demo", "example/demo:v2")),
    Op("rmi", "shared", ("rmi", "example/app:v1"), removes=("example/app:v1",)),
    Op("rmi-shared-base", "shared", ("rmi", "example/demo"), removes=("example/demo:latest",)),
    Op("prune-all", "shared", ("image", "prune", "-a", "-f"), removes=("example/app:v1", "example/demo:latest")),
]


def by_tag(state: State) -> dict[str, tuple[str, ...]]:
    return {tag: image.layers for image in state.images.values() for tag in image.tags}


def mounted_trees(root: Path, scratch: Path) -> dict[str, dict]:
    """Every tagged image of the store as the driver shows it."""
    out: dict[str, dict] = {}
    with Store(root) as store:
        images = {tag: [str(store.layers.path(d)) for d in reversed(store.image_layers(store.resolve(tag)))] for tag in _tags(store)}
    for tag, lowers in images.items():
        mnt = scratch / "view"
        mnt.mkdir(exist_ok=True)
        with mounted(MountSpec(tuple(lowers)), str(mnt)):
            out[tag] = tree(mnt)
    return out


def _tags(store: Store) -> list[str]:
    return [f"{r['repository']}:{r['tag']}" for r in store.meta.query("SELECT repository, tag FROM tags")]


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_killed_at_every_point(op: Op, prepared: dict[str, Path], tmp_path: Path) -> None:
    argv = [a.format(app_tar=prepared["app.tar"], app_oci=prepared["app-oci.tar"]) for a in op.argv]
    template = prepared[op.store]
    before = State.of(template)
    clean = tmp_path / "clean"
    copy_store(template, clean)
    passed = points(clean, argv, tmp_path)
    after = State.of(clean)
    views = mounted_trees(clean, tmp_path)
    with Store(template) as store:
        removed = {store.resolve(tag) for tag in op.removes}
    assert len(passed) >= 2, f"{op.name}: only {passed} crash points"

    print(f"{op.name}: {len(passed)} kill points")
    work = tmp_path / "work"
    for n in kill_points(len(passed)):
        label = f"{op.name} killed at point {n}/{len(passed)} ({passed[n - 1]}; CRASHPOINT_KILL={n})"
        copy_store(template, work)
        assert run(work, argv, kill=str(n), log=tmp_path / "log") == -9, f"{label}: not killed: the points changed"
        killed = check_after_kill(work, before, after, removed, label, new_ids=not op.repeatable)
        done = by_tag(killed) == by_tag(after) and killed.trees == after.trees
        if op.repeatable or not done:
            code = run(work, argv, log=tmp_path / "log")
            gone = op.removes and not any(tag in by_tag(killed) for tag in op.removes)
            assert code == 0 or (gone and code == 1), f"{label}: running it again failed: {(tmp_path / 'log').read_text()[-500:]}"
        final = State.of(work)
        assert by_tag(final) == by_tag(after), f"{label}: tags differ from an uninterrupted run"
        assert final.trees == after.trees, f"{label}: layers differ from an uninterrupted run"
        if op.repeatable:
            assert final.images == after.images and final.blobs == after.blobs, f"{label}: images or blobs differ"
        if n % MOUNT_EVERY == 0 or n == len(passed):
            assert mounted_trees(work, tmp_path) == views, f"{label}: a mounted image differs"
