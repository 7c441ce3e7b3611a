"""Real parts for the full-disk and concurrency tests: a small filesystem, the CLI in its own process,
and a check that a store's metadata matches its disk.

- ``small_fs``: a tmpfs of a given size, mounted for the test and always
  unmounted; ``fill`` leaves a given number of bytes free on it.
- ``layerstore``: the command line as a separate process (``python3 -m
  layerstore``), as a user or a second user would run it at the same time.
- ``check_store``: every image the metadata lists has its config, manifest
  and layer blobs (each hashing to its name) and its layer directories (each
  the same tree as a reference); nothing half-written is in view.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trees import tree  # noqa: F401 - the tests import it from here too

REPO = Path(__file__).resolve().parents[1]
ENOSPC_TEXT = "No space left on device"
Tree = dict[str, tuple[Any, ...]]


@contextlib.contextmanager
def small_fs(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes at path: the disk that fills up."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True, capture_output=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(fs: Path, leave: int) -> Path:
    """A filler file that leaves ``leave`` bytes free on fs (removing it frees the space again)."""
    filler = fs / f"filler-{len(list(fs.glob('filler-*')))}"
    size = free_bytes(fs) - leave
    assert size > 0, f"only {free_bytes(fs)} bytes free, cannot leave {leave}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    return filler


# -- the command line in processes of its own -------------------------------------------------


def cli_env(root: Path, **extra: str) -> dict[str, str]:
    """``LAYERSTORE_ROOT`` and this checkout first on the path, for ``python3 -m layerstore``."""
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "LAYERSTORE_ROOT": str(root), "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}
    env.pop("CRASHPOINT_KILL", None)
    env.pop("CRASHPOINT_TRACE", None)
    return {**env, **extra}


@dataclass
class Run:
    args: tuple[str, ...]
    rc: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"layerstore {' '.join(self.args)} -> {self.rc}\nstdout: {self.out}\nstderr: {self.err}"


def start(root: Path, *args: str, stdin: Any = subprocess.DEVNULL, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "layerstore", *args], stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(root, **env))


def finish(args: Sequence[str], process: subprocess.Popen[str], timeout: float = 120) -> Run:
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return Run(tuple(args), process.returncode, out, err)


def run_together(root: Path, commands: list[tuple[str, ...]], rng: random.Random, **env: str) -> list[Run]:
    """Start the commands in a shuffled order, a few milliseconds apart, and wait for all."""
    order = list(commands)
    rng.shuffle(order)
    running = []
    for args in order:
        running.append((args, start(root, *args, **env)))
        time.sleep(rng.choice((0, 0, 0.005, 0.02, 0.05)))  # varies the interleaving only
    return [finish(args, process) for args, process in running]


def layerstore(root: Path, *args: str, stdin: Any = subprocess.DEVNULL, **env: str) -> Run:
    return finish(args, start(root, *args, stdin=stdin, **env))


def assert_clean_error(run: Run, operation: str, problem: str) -> None:
    """Exit 1 and one error line, the last on stderr (progress may come before it):
    ``Error: <operation ...>: ... <problem>``; no traceback."""
    lines = run.err.strip().splitlines()
    assert run.rc == 1, run
    assert "Traceback" not in run.err, run
    assert [line for line in lines if "rror" in line] == lines[-1:], run
    assert lines[-1].startswith(f"Error: {operation}") and lines[-1].endswith(problem), run


# -- what a store holds -----------------------------------------------------------------------


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def layer_trees(root: Path) -> dict[str, Tree]:
    """The tree of every layer directory of a store, by diff_id: the reference a store is compared with."""
    from layerstore.store import Store

    with Store(root) as store:
        return {diff_id: tree(store.layers.path(diff_id)) for diff_id in store.layers.diff_ids()}


def check_store(root: Path, reference: dict[str, Tree] | None = None) -> set[str]:
    """Assert the store is whole; its image names (``repo:tag``, or the ID of an untagged image).

    Every image: config and manifest blobs present and right, each layer's
    blob present and right and its directory present (the same tree as in
    ``reference`` when given). No unpack staging, no half-written ingest
    file (a resumable ``.partial`` download may stay), no layer lock or lease left.
    """
    from layerstore.store import Store

    names: set[str] = set()
    with Store(root) as store:
        images = [str(r["id"]) for r in store.meta.query("SELECT id FROM images")]
        for image_id in images:
            assert file_digest(store.blobs.path(image_id)) == image_id
            for row in store.meta.query("SELECT digest FROM manifests WHERE image_id = ?", image_id):
                assert file_digest(store.blobs.path(row["digest"])) == row["digest"]
            rows = store.meta.query("SELECT diff_id, blob FROM image_layers WHERE image_id = ? ORDER BY position", image_id)
            for row in rows:
                assert file_digest(store.blobs.path(row["blob"])) == row["blob"], f"layer blob {row['blob']} of {image_id}"
                assert store.layers.has(row["diff_id"]), f"layer {row['diff_id']} of {image_id} missing"
                if reference is not None:
                    assert tree(store.layers.path(row["diff_id"])) == reference[row["diff_id"]], f"layer {row['diff_id']} differs"
            names.update(store.tags_of(image_id) or [image_id])
        for digest in store.blobs.digests():
            assert file_digest(store.blobs.path(digest)) == digest, f"blob {digest} is not what its name says"
        assert store.layers.stale_staging() == []
        assert list(store.layers.locks.iterdir()) == []
        assert [p.name for p in store.blobs.stale_ingests() if not p.name.endswith(".partial")] == []
        assert store.meta.query("SELECT * FROM leases") == []
    return names


def unreferenced(root: Path) -> tuple[set[str], set[str]]:
    """Blobs and layers that no image names, nor a stored manifest or repo digest: what ``prune`` is for."""
    from layerstore.model import Manifest
    from layerstore.store import Store

    with Store(root) as store:
        blobs = {str(r[0]) for r in store.meta.query(
            "SELECT blob FROM image_layers UNION SELECT digest FROM manifests UNION SELECT id FROM images "
            "UNION SELECT digest FROM repo_digests")}
        for row in store.meta.query("SELECT digest FROM manifests"):
            manifest = Manifest.parse(store.blobs.read(row["digest"]), "manifest")
            blobs |= {manifest.config.digest, *(layer.digest for layer in manifest.layers)}
        layers = {str(r[0]) for r in store.meta.query("SELECT diff_id FROM image_layers")}
        return set(store.blobs.digests()) - blobs, set(store.layers.diff_ids()) - layers
