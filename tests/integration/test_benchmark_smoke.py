"""The benchmarks still run, end to end, at their smallest scale.

Speed is measured by the scripts in ``benchmarks/``, not here: this only
keeps them from breaking unnoticed. One ``--quick`` run of ``run.py`` mounts
every driver and must give every row of every workload a time (or, where a
driver refuses the operation, its errno) for each driver, the host's pace,
and a table with the ratios. ``load.py`` and ``pull.py`` must time every
contender on every input, and the contenders that write one directory per
layer must have written the same entries. Nothing is asserted about the
times themselves.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mounts import mounts_under

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
RUN = BENCHMARKS / "run.py"
STORE_TOOLS = ("skopeo", "umoci", "docker-registry")
DRIVERS = ("kernel", "fuse-overlayfs", "unionfs")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("fuse-overlayfs"), reason="needs root and fuse-overlayfs (the comparison)")


def from_benchmark(module: str, expression: str) -> Any:
    """expression evaluated in a benchmark script's module, in another interpreter (its
    modules are not the tests'), and handed back through JSON."""
    code = (f"import json, sys; sys.path.insert(0, sys.argv[1]); from {module} import *; "
            f"print(json.dumps({expression}))")
    out = subprocess.run([sys.executable, "-c", code, str(BENCHMARKS)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def workload_rows() -> tuple[list[str], list[str]]:
    """(rows timed on each driver, rows timed once without one), from the benchmark's
    own list of workloads."""
    rows, reference = from_benchmark(
        "workloads", "[[r for w in WORKLOADS for r in w.rows], [r for w in WORKLOADS for r in w.ref_rows]]")
    assert len(rows) >= 20 and reference, (rows, reference)
    return rows, reference


def test_a_quick_run_gives_every_row_for_every_driver(tmp_path: Path) -> None:
    table = tmp_path / "table.md"
    result = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--repeat", "1", "--workdir", str(tmp_path), "--table", str(table)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    paces = [r for r in records if r["workload"] == "pace"]
    assert [p["when"] for p in paces] == ["before", "after"] and all(p["seconds"] > 0 for p in paces)
    text = table.read_text()
    assert "| workload |" in text and "unionfs/kernel" in text and "unionfs/fuse-overlayfs" in text
    # the driver runs under this interpreter, whose build moves the rows made of requests
    assert f"unionfs runs under {platform.python_implementation()} {platform.python_version()}, its core in " in text
    if "workdir on ext4" in text:  # each run's creates must not follow the last run's removals (drivers.spread_new_dirs)
        assert "in a block group of their own" in text, text

    rows, reference = workload_rows()
    for row in rows + reference:
        drivers = ("reference",) if row in reference else DRIVERS
        for driver in drivers:
            got = [r for r in records if r["workload"] == row and r["driver"] == driver]
            assert len(got) == 1, f"{row} on {driver}: {got}"
            timed = got[0]["seconds"] is not None and got[0]["seconds"] > 0
            refused = got[0].get("refused") and got[0].get("error", "").startswith("E")
            assert timed or (refused and driver != "unionfs"), f"{row} on {driver}: {got[0]}"
        assert re.search(rf"^\| {re.escape(row)} \|", text, re.M), f"{row} missing from the table"
    assert mounts_under(tmp_path) == []


def run_quick(script: str, tmp_path: Path, *args: str) -> tuple[list[dict], str]:
    table = tmp_path / "table.md"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--repeat", "1", "--workdir", str(tmp_path),
         "--table", str(table), *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(tmp_path.iterdir()) == [table], "the work directory was left behind"
    return [json.loads(line) for line in result.stdout.splitlines()], table.read_text()


def timed(record: dict) -> bool:
    return not record.get("error") and record["seconds"] > 0 and record["entries"] > 0


@pytest.mark.skipif(not all(map(shutil.which, STORE_TOOLS)), reason=f"needs {', '.join(STORE_TOOLS)}")
def test_the_load_benchmark_times_every_contender_on_every_input(tmp_path: Path) -> None:
    contenders, inputs = from_benchmark("load", "[CONTENDERS, INPUTS]")
    records, text = run_quick("load.py", tmp_path, "--no-2x")
    for fmt in inputs:
        got = {r["contender"]: r for r in records if r["input"] == fmt}
        assert sorted(got) == sorted(contenders) and all(map(timed, got.values())), (fmt, got)
        per_layer = {name: got[name]["entries"] for name in ("load", "tar -x", "unpack")}
        assert len(set(per_layer.values())) == 1, (fmt, per_layer)
        assert re.search(rf"^\| 1x \| {fmt} \| cold \| [0-9.]+ \|", text, re.M), text  # its row of ratios
    assert re.search(r"^\| 1x \| 4 \| apt-like", text, re.M), text  # the layers table


@pytest.mark.skipif(not all(map(shutil.which, STORE_TOOLS)), reason=f"needs {', '.join(STORE_TOOLS)}")
def test_the_pull_benchmark_times_every_contender(tmp_path: Path) -> None:
    contenders = from_benchmark("pull", "CONTENDERS")
    records, text = run_quick("pull.py", tmp_path, "--cache", "")
    got = {r["contender"]: r for r in records}
    assert sorted(got) == sorted(contenders) and all(map(timed, got.values())), got
    assert got["pull"]["entries"] == got["unpack"]["entries"], got
    assert re.search(r"^\| pull / skopeo\+umoci \| [0-9.]+ \|", text, re.M), text
    assert re.search(r"^\| 4 \| apt-like", text, re.M), text
