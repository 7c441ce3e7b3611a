"""Kill a store command at each of its crash points, and judge what it left.

A command runs in a forked child with ``CRASHPOINT_KILL=N``; the child dies
by SIGKILL at its N-th crash point (``unionfs.crashpoints``). The store it
leaves must then pass ``fsck --repair`` with nothing worse than leftovers,
keep every image that was complete before, and let the same command succeed
when it is run again, ending exactly where a run that was never killed ends.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from storecheck import layer_trees

from layerstore import fsck
from layerstore.cli import main
from layerstore.layers import remove_tree
from layerstore.store import Store
from unionfs import crashpoints

# What a killed command may leave: garbage for fsck to clear, never damage.
HARMLESS = ("no image uses it", "left by interrupted work", "the process is gone")


def run(root: Path, argv: list[str], *, kill: str | None = None, trace: Path | None = None, log: Path | None = None) -> int:
    """The CLI in a forked child: its exit code, or -9 when a crash point killed it."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 70
        try:
            out = os.open(log or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(out, 1)
            os.dup2(out, 2)
            for name, value in (("CRASHPOINT_KILL", kill), ("CRASHPOINT_TRACE", trace)):
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = str(value)
            crashpoints.rearm()
            code = main(["--root", str(root), *argv])
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL, f"{argv} died of signal {os.WTERMSIG(status)}"
        return -9
    return os.WEXITSTATUS(status)


def points(root: Path, argv: list[str], scratch: Path) -> list[str]:
    """The crash points a clean run of argv passes, in order."""
    trace = scratch / "trace"
    trace.unlink(missing_ok=True)
    assert run(root, argv, trace=trace) == 0, f"{argv} failed on a clean run"
    return trace.read_text().split()


def copy_store(src: Path, dst: Path) -> None:
    if dst.exists():
        remove_tree(dst)
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


@dataclass(frozen=True)
class Image:
    tags: tuple[str, ...]
    layers: tuple[str, ...]


@dataclass(frozen=True)
class State:
    images: dict[str, Image]
    trees: dict[str, dict]  # diff_id -> tree of its layer directory
    blobs: frozenset[str]

    @classmethod
    def of(cls, root: Path) -> State:
        with Store(root) as store:
            images = {
                str(r["id"]): Image(tuple(store.tags_of(str(r["id"]))), tuple(store.image_layers(str(r["id"]))))
                for r in store.meta.query("SELECT id FROM images")
            }
            blobs = frozenset(store.blobs.digests())
        return cls(images, layer_trees(root), blobs)


def check_after_kill(root: Path, before: State, after: State, removed: set[str], label: str, new_ids: bool = False) -> State:
    """fsck repairs only leftovers; every image of before (but those the command removes) is whole.

    ``new_ids``: the command makes an image whose ID differs on every run
    (commit: the config records when); it must carry the tags and layers
    of the image the uninterrupted run made.
    """
    with Store(root) as store:
        report = fsck.check(store, repair=True, max_age=0)  # all that no image uses is garbage here
        damage = [str(f) for f in report.findings if not f.problem.endswith(HARMLESS)]
        assert not damage, f"{label}: fsck found damage: {damage}"
        again = fsck.check(store, max_age=0)
        assert again.exit_code == fsck.CLEAN, f"{label}: not clean after repair: {[str(f) for f in again.findings]}"
    state = State.of(root)
    for image_id, image in before.images.items():
        if image_id in removed and image_id not in state.images:
            continue
        assert image_id in state.images, f"{label}: image {image_id} was lost"
        now = set(state.images[image_id].tags)
        end = set(after.images[image_id].tags) if image_id in after.images else set()
        assert set(image.tags) & end <= now <= set(image.tags) | end, f"{label}: image {image_id} has tags {sorted(now)}"
    for image_id, image in state.images.items():
        expected_ids = set(before.images) | set(after.images)
        if new_ids:
            expected_ids |= {i for i, made in state.images.items() if made in after.images.values() and i not in before.images}
        assert image_id in expected_ids, f"{label}: unexpected image {image_id}"
        for diff_id in image.layers:
            expected = before.trees.get(diff_id) or after.trees.get(diff_id)
            assert state.trees.get(diff_id) == expected, f"{label}: layer {diff_id} of image {image_id} is not whole"
    return state


def kill_points(count: int, limit: int | None = None) -> Iterator[int]:
    """1..count, or an even spread of limit of them (always the first and last)."""
    if limit is None or count <= limit:
        yield from range(1, count + 1)
        return
    step = (count - 1) / (limit - 1)
    yield from sorted({1 + round(i * step) for i in range(limit)})
