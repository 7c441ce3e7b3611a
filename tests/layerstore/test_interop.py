"""What save writes, read by another real consumer: podman load."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imagebuild import build_layout, export, write
from layerstore.store import Store

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("podman") or not shutil.which("umoci"), reason="needs root, podman and umoci")
EXAMPLE = Path(__file__).resolve().parents[2] / "layerstore/demo/example.tar"


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Callable[..., str]]:
    runroot = Path(tempfile.mkdtemp(prefix="podrun-"))  # podman refuses a runroot longer than 50 characters
    base = ["podman", "--root", str(tmp_path / "podroot"), "--runroot", str(runroot), "--storage-driver", "vfs"]

    def run(*args: str) -> str:
        result = subprocess.run([*base, *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    yield run
    shutil.rmtree(runroot, ignore_errors=True)


@pytest.mark.parametrize("source", ["classic", "oci-gzip"])
def test_podman_loads_what_save_writes(tmp_path: Path, podman: Callable[..., str], source: str) -> None:
    if source == "classic":
        archive = EXAMPLE
    else:
        layout = build_layout(tmp_path / "layout", "img", [lambda root: write(root, "etc/hello", "hi\n")])
        archive = export(layout, "img", "oci-archive", tmp_path / "img.tar", "example/gz:v1")
    with Store(tmp_path / "store") as store:
        [image] = store.load(str(archive))
        name = image.names[0]
    saved = tmp_path / "saved.tar"
    subprocess.run([sys.executable, "-m", "layerstore", "--root", str(tmp_path / "store"), "save", "-o", str(saved), name], check=True)
    assert name in podman("load", "-i", str(saved))
    [inspected] = json.loads(podman("image", "inspect", name))
    assert inspected["Id"] == image.id.removeprefix("sha256:")
