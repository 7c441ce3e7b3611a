"""Images for tests, made by real tools: umoci builds OCI layouts, skopeo converts them.

Each layer is described as a callback that changes an unpacked rootfs; umoci
computes the changeset (whiteouts included) on repack, as it would for any
image build.
"""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from trees import tree  # noqa: F401 - the tests import it from here too

Change = Callable[[Path], None]


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def build_layout(layout: Path, tag: str, layers: list[Change], base: str | None = None) -> Path:
    """An OCI layout with one image ``tag``: one layer per change, over ``base`` if given."""
    if not (layout / "index.json").exists():
        run("umoci", "init", "--layout", str(layout))
    if base:
        run("umoci", "tag", "--image", f"{layout}:{base}", tag)
    else:
        run("umoci", "new", "--image", f"{layout}:{tag}")
    bundle = layout.parent / f"bundle-{tag}"
    for change in layers:
        shutil.rmtree(bundle, ignore_errors=True)
        run("umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle))
        change(bundle / "rootfs")
        run("umoci", "repack", "--image", f"{layout}:{tag}", str(bundle))
    shutil.rmtree(bundle, ignore_errors=True)
    return layout


def export(layout: Path, tag: str, transport: str, dest: Path, name: str, *extra: str) -> Path:
    """``skopeo copy`` into docker-archive:, oci-archive: or oci: (dest names the file or dir)."""
    target = f"{transport}:{dest}:{name}" if transport != "oci" else f"oci:{dest}:{name}"
    run("skopeo", "copy", "-q", *extra, f"oci:{layout}:{tag}", target)
    return dest


def write(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


