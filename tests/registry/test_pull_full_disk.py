"""``pull`` onto a disk that fills up, against the real registry.

The store is on a small tmpfs with room for the base image but not for the
6 MiB layer of ``big:v1``. The pull must fail in one clean line, leave the
base image whole and no blob or layer of the big one in view; what it got
of the blob stays as its resumable partial file, so once there is room the
next pull asks the registry only for the rest (one GET of the blob, a 206
when bytes were kept).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests
from regkit import World
from storecheck import (
    ENOSPC_TEXT,
    assert_clean_error,
    check_store,
    fill,
    layer_trees,
    layerstore,
    small_fs,
    unreferenced,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (tmpfs)")

MIB = 1 << 20


def big_blob(world: World) -> tuple[str, int]:
    r = requests.get(f"http://{world.open.host}/v2/big/manifests/v1",
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10)
    (layer,) = r.json()["layers"]
    return layer["digest"], layer["size"]


@pytest.fixture(scope="module")
def reference(world: World, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("pull-reference")
    for name in ("base:v1", "big:v1"):
        pulled = layerstore(root, "pull", "-q", world.name(world.open, name))
        assert pulled.rc == 0, pulled
    return layer_trees(root)


def test_pull_on_a_full_disk_fails_cleanly_and_resumes_once_there_is_room(
    world: World, tmp_path: Path, reference: dict[str, dict]
) -> None:
    base, big = world.name(world.open, "base:v1"), world.name(world.open, "big:v1")
    with small_fs(tmp_path / "small", 24 * MIB) as fs:
        root = fs / "store"
        pulled = layerstore(root, "pull", "-q", base)
        assert pulled.rc == 0, pulled
        filler = fill(fs, leave=4 * MIB)

        failed = layerstore(root, "pull", big)
        assert_clean_error(failed, f"pull {big}", ENOSPC_TEXT)
        assert check_store(root, reference) == {base}
        pruned = layerstore(root, "prune", "-f")
        assert pruned.rc == 0, pruned
        assert unreferenced(root) == (set(), set())
        assert check_store(root, reference) == {base}
        digest, size = big_blob(world)
        partial = root / "ingest" / f"{digest.split(':')[1]}.partial"
        have = partial.stat().st_size if partial.exists() else 0
        assert [p.name for p in (root / "ingest").iterdir()] == ([partial.name] if partial.exists() else [])

        filler.unlink()
        mark = world.open.mark()
        pulled = layerstore(root, "pull", big)
        assert pulled.rc == 0, pulled
        assert check_store(root, reference) == {base, big}
        gets = [r for r in world.open.requests(mark) if r["method"] == "GET" and r["uri"].endswith(f"/blobs/{digest}")]
        assert len(gets) == 1, gets  # the layer blob, once
        assert (gets[0]["status"], gets[0]["written"]) == ((206, size - have) if have else (200, size))
        assert not list((root / "ingest").iterdir())
