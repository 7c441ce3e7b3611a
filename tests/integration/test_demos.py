"""The README's first command ends in the demos: they must run, show what they say, and fail loudly.

Each demo runs as a user types it, ``python3 -m unionfs.demo`` and
``python3 -m layerstore.demo``, with its scratch directories under the
test's own (``TMPDIR``), so that a mount it left behind would be found and
undone by the suite's fixture, and counted as a failure here.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mounts import mounts_under

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts, the kernel's whiteout form)")

DEMO_SECONDS = 120


def run_demo(module: str, tmp: Path, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TMPDIR=str(tmp))
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, env=env, timeout=DEMO_SECONDS)


def sections(output: str) -> dict[str, str]:
    """The demo's output by step: its ``# title`` line, then the command and what it printed."""
    steps = (part.partition("\n") for part in ("\n" + output).split("\n# ")[1:])
    return {title: body for title, _, body in steps}


def failing(tool: str, tmp: Path) -> str:
    """A PATH on which ``tool`` exists but fails, as a broken step would."""
    bin_dir = tmp / "failing-bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / tool).write_text("#!/bin/sh\nexit 3\n")
    (bin_dir / tool).chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def test_unionfs_demo_shows_the_copy_up_and_the_whiteout(tmp_path: Path) -> None:
    result = run_demo("unionfs.demo", tmp_path)
    assert result.returncode == 0, result.stderr
    steps = sections(result.stdout)
    merged = steps["the merged view: /var/cache is whited out by the app layer"]
    assert "-printf '%y %P\\n'" in merged.split("\n", 1)[0]  # the command as one would type it
    assert "f etc/passwd" in merged and "var/cache" not in merged and "d var" in merged
    assert "demo:x:1000" in steps["after an append, an unlink and a new file"]
    upper = steps["the upper layer: copied-up parents, the copied-up file, a whiteout"].splitlines()
    assert "f -rw-r--r-- etc/passwd" in upper
    assert "c c--------- usr/share/doc/demo/README" in upper  # overlayfs's 0/0 whiteout
    assert "f -rw-r--r-- srv/www/new.html" in upper
    assert not any("var" in line for line in upper)  # nothing copied up that was not changed
    assert "demo:x:1000" not in steps["the lower layers are unchanged"]
    assert mounts_under(tmp_path) == [] and list(tmp_path.iterdir()) == []  # unmounted, scratch removed


def test_layerstore_demo_loads_mounts_writes_and_cleans_up(tmp_path: Path) -> None:
    result = run_demo("layerstore.demo", tmp_path)
    assert result.returncode == 0, result.stderr
    steps = sections(result.stdout)
    assert "example/demo" in steps["list it"]
    assert "hello from the demo image" in steps["a script of the base layer"]
    changes = steps["what changed, as docker diff shows it"].splitlines()
    assert {"C /etc/passwd", "A /srv/www/new.html", "D /usr/share/doc/demo/GPL-3"} <= set(changes)
    assert "mounted" in steps["containers"]
    assert "Deleted: sha256:" in steps["and the image"]
    assert mounts_under(tmp_path) == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("module", "tool", "message"), [
    ("unionfs.demo", "cat", "unionfs demo: a command above failed"),
    ("layerstore.demo", "ls", "layerstore demo: failed: explore"),
])
def test_a_failing_step_fails_the_demo(tmp_path: Path, module: str, tool: str, message: str) -> None:
    """A demo that went on after a broken step still says so, and still cleans up."""
    result = run_demo(module, tmp_path, path=failing(tool, tmp_path))
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert mounts_under(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["failing-bin"]
