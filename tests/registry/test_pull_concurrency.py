"""Pulls, loads, ``rmi`` and ``prune`` at once, from processes sharing one store, against the real registry.

Downloads are counted in the registry's access log (GETs of each layer
blob), unpacks through the ``layer.unpack.start`` crash point
(``CRASHPOINT_TRACE``, appended to by every process). After each round the
metadata must match the disk: every image's blobs hash to their names and
its layer directories have the same trees as in a store filled one command
at a time.
"""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest
import requests
from regkit import World
from storecheck import (
    check_store,
    layer_trees,
    layerstore,
    run_together,
    unreferenced,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

IMAGES = ("base:v1", "app1:v1", "app2:v1")  # app1 and app2 share base's layer
ARCHIVE_NAME = "archive/app2:v1"


@pytest.fixture(scope="module")
def archive(world: World) -> Path:
    """app2 as a docker-archive: plain-tar blobs (other digests than the registry's), the same diff_ids."""
    path = world.work / "app2-docker.tar"
    if not path.exists():
        subprocess.run(["skopeo", "copy", "-q", f"oci:{world.layout}:app2", f"docker-archive:{path}:{ARCHIVE_NAME}"],
                       check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def reference(world: World, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("concurrency-reference")
    for name in IMAGES:
        pulled = layerstore(root, "pull", "-q", world.name(world.open, name))
        assert pulled.rc == 0, pulled
    return layer_trees(root)


def layer_blobs(world: World) -> set[str]:
    out: set[str] = set()
    for name in IMAGES:
        repo, tag = name.split(":")
        r = requests.get(f"http://{world.open.host}/v2/{repo}/manifests/{tag}",
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10)
        out.update(layer["digest"] for layer in r.json()["layers"])
    return out


def test_pulls_and_a_load_at_once_download_and_unpack_each_layer_once(
    world: World, tmp_path: Path, archive: Path, reference: dict[str, dict]
) -> None:
    """Five pulls (two of one image, one under another repository name) and a load, on a new store each round."""
    name = {image: world.name(world.open, image) for image in IMAGES}
    commands = [("pull", "-q", name["app1:v1"]), ("pull", "-q", name["app1:v1"]), ("pull", "-q", world.name(world.open, "tags/app:v1")),
                ("pull", "-q", name["app2:v1"]), ("pull", "-q", name["base:v1"]), ("load", "-q", "-i", str(archive))]
    blobs = layer_blobs(world)
    for round_ in range(5):
        root, trace = tmp_path / f"store-{round_}", tmp_path / f"trace-{round_}"
        mark = world.open.mark()
        for result in run_together(root, commands, random.Random(round_), CRASHPOINT_TRACE=str(trace)):
            assert result.rc == 0, result
        answers = world.open.requests(mark)
        gets = {digest: [a["status"] for a in answers if a["method"] == "GET" and a["uri"].endswith(f"/blobs/{digest}")]
                for digest in blobs}
        assert gets == {digest: [200] for digest in blobs}, f"round {round_}"
        assert trace.read_text().splitlines().count("layer.unpack.start") == len(reference), f"round {round_}"
        assert check_store(root, reference) == {*name.values(), world.name(world.open, "tags/app:v1"), ARCHIVE_NAME}


def test_pull_load_rmi_and_prune_at_once_never_corrupt_the_store(
    world: World, tmp_path: Path, archive: Path, reference: dict[str, dict]
) -> None:
    """Rounds of four commands drawn from pulls, a load, rmi and prunes, run at once on one store."""
    root = tmp_path / "store"
    name = {image: world.name(world.open, image) for image in IMAGES}
    pool = [
        ("pull", "-q", name["base:v1"]), ("pull", "-q", name["app1:v1"]), ("pull", "-q", name["app2:v1"]),
        ("load", "-q", "-i", str(archive)),
        ("rmi", name["app1:v1"]), ("rmi", name["app2:v1"]), ("rmi", "-f", name["base:v1"]), ("rmi", ARCHIVE_NAME),
        ("prune", "-a", "-f"), ("image", "prune", "-f"),
    ]
    rounds, failures = 8, 0
    for round_ in range(rounds):
        rng = random.Random(1000 + round_)
        commands = rng.sample(pool, 4)
        for result in run_together(root, commands, rng):
            assert "Traceback" not in result.err, result
            if result.rc != 0:  # only what another process did first may stop a command
                failures += 1
                assert result.args[0] == "rmi" and result.err == f"Error: No such image: {result.args[-1]}\n", result
        names = check_store(root, reference)
        assert names <= {*name.values(), ARCHIVE_NAME}, f"round {round_}: {names}"
        pruned = layerstore(root, "prune", "-f")
        assert pruned.rc == 0, pruned
        assert unreferenced(root) == (set(), set()), f"round {round_}"
    print(f"{rounds} rounds of 4 commands; {failures} rmi found their image gone")
