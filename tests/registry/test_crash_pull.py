"""A pull killed anywhere (mid-blob, between blobs, during unpack, at the
metadata commit) loses nothing, and the next pull finishes the job.

Downloads and unpacks run on their own threads, so a kill point is named
``POINT:K`` (the K-th passing of that point), which is the same step on
every run whatever the threads' interleaving.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from crashkit import State, check_after_kill, copy_store, kill_points, points, run
from regkit import World

from layerstore.store import Store

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (layer owners)")


def specs(passed: list[str], per_point: int = 12) -> list[str]:
    """Every point of the run by name and count; at most per_point of each (evenly spread)."""
    out: list[str] = []
    for name, count in Counter(passed).items():
        out.extend(f"{name}:{k}" for k in kill_points(count, per_point))
    return out


@pytest.mark.parametrize(
    ("image", "start"),
    [("big:v1", "empty"), ("app1:v1", "empty"), ("app2:v1", "with-base")],
    ids=["big-blob", "two-layers", "sharing-a-layer"],
)
def test_pull_killed_at_every_point(world: World, tmp_path: Path, image: str, start: str) -> None:
    name = world.name(world.open, image)
    template = tmp_path / "template"
    Store(template).close()
    if start == "with-base":
        assert run(template, ["pull", "-q", world.name(world.open, "base:v1")]) == 0
    before = State.of(template)
    clean = tmp_path / "clean"
    copy_store(template, clean)
    argv = ["pull", "-q", name]
    passed = points(clean, argv, tmp_path)
    after = State.of(clean)
    kills = specs(passed)
    print(f"pull {image}: {len(kills)} kill points of {len(passed)} passed")
    assert "download.chunk" in passed and "unpack.entry" in passed and "meta.commit" in passed

    work = tmp_path / "work"
    log = tmp_path / "log"
    for spec in kills:
        label = f"pull {image} killed at {spec} (CRASHPOINT_KILL={spec})"
        copy_store(template, work)
        assert run(work, argv, kill=spec, log=log) == -9, f"{label}: not killed"
        check_after_kill(work, before, after, set(), label)
        assert run(work, argv, log=log) == 0, f"{label}: the next pull failed: {log.read_text()[-500:]}"
        final = State.of(work)
        assert final.images == after.images and final.trees == after.trees, f"{label}: differs from an uninterrupted pull"
        assert final.blobs == after.blobs, f"{label}: blobs differ"
        assert not list((work / "ingest").iterdir()), f"{label}: the finished pull left ingest files"
