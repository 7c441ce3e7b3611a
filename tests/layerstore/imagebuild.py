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


def tree(root: Path) -> dict[str, tuple]:
    """type, mode, owner, size, content, link target of every entry under root."""
    import hashlib
    import os
    import stat

    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    extra = hashlib.sha256(f.read()).hexdigest()
                size = st.st_size
            elif stat.S_ISLNK(st.st_mode):
                extra, size = os.readlink(path), 0
            else:
                extra, size = "", 0
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, extra)
    return out
