"""The host's pace: how fast this machine runs the driver's Python right now.

A ratio compares drivers within one run. Between runs the host's speed
changes: with the same code, the unlink row took 0.45 to 0.57 s in one
round of runs and 0.71 to 0.84 s in the next. So a run's table notes how long
this checkout's ``Union`` takes to remove the ``rm-rf`` fixture's tree,
called in-process with no FUSE and no round trips, once before the rows
and once after: runs whose paces differ measured different hosts.

Run as a script in a fresh interpreter (as the driver runs), so that the
benchmark's own imports and heap do not change what it measures:
``pace.py UPPER_SCRATCH ROOT LOWER...`` prints the milliseconds of each
repetition as JSON.
"""
from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from drivers import REPO_ROOT

if TYPE_CHECKING:
    from unionfs.union import Union

REPEAT = 5


def _remove(union: Union, path: str) -> None:
    """``rm -rf``'s calls, in its order: list, remove each entry, and ask for the
    directory's attributes after each removal (the kernel does, for its
    permission check); then remove the directory."""
    for name, attrs, _ in union.listed(path):
        if name in (".", ".."):
            continue
        child = f"{path}/{name}"
        if attrs is not None and stat.S_ISDIR(attrs["st_mode"]):
            _remove(union, child)
        else:
            union.unlink(child)
        union.getattr(path)
    union.rmdir(path)


def replay(lowers: list[str], scratch: Path, root: str, repeat: int = REPEAT) -> list[float]:
    """Milliseconds of each removal of /root, each over a new upper layer."""
    from unionfs.union import Union  # this checkout's: see __main__

    scratch.mkdir(parents=True, exist_ok=True)
    times = []
    for i in range(repeat):
        upper, work = scratch / f"pace-upper-{i}", scratch / f"pace-work-{i}"
        upper.mkdir()
        work.mkdir()
        union = Union(lowers, str(upper), str(work))
        try:
            t0 = time.perf_counter()
            _remove(union, "/" + root)
            times.append((time.perf_counter() - t0) * 1e3)
        finally:
            union.close()
            shutil.rmtree(upper, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
    return times


def measure(lowers: list[Path], scratch: Path, root: str, timeout: float = 300.0) -> list[float]:
    """replay() in a fresh interpreter; RuntimeError with its last line of output if it fails."""
    cmd = [sys.executable, str(Path(__file__).resolve()), str(scratch), root] + [str(p) for p in lowers]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit status {done.returncode}")
    return [float(t) for t in json.loads(done.stdout)]


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))  # this checkout's driver, as the benchmark's unionfs slot runs it
    print(json.dumps(replay(sys.argv[3:], Path(sys.argv[1]), sys.argv[2])))
