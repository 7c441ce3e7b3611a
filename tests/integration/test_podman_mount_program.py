"""The driver as podman's overlay mount program, the place fuse-overlayfs usually takes.

containers/storage's overlay driver starts its ``mount_program`` as
``PROGRAM -o lowerdir=...,upperdir=...,workdir=..., MERGED`` for each
container or image it mounts, and unmounts the mount itself. With a mount
program, ``podman diff`` and ``podman commit`` read a container's changes by
comparing mounts, so they see what the driver shows, renamed lower
directories included. The same changes made in a container that the driver
mounts and in one that the kernel's overlayfs mounts (podman's default) must
give the same ``podman diff``, and commit to images whose trees are the same;
so must a build.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from difftree import diff_maps, view

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("podman"), reason="needs root and podman")
EXAMPLE = Path(__file__).resolve().parents[2] / "layerstore/demo/example.tar"
IMAGE = "docker.io/example/demo:latest"
Podman = Callable[..., str]


def podman_with(root: Path, mount_program: str | None) -> Iterator[Podman]:
    runroot = Path(tempfile.mkdtemp(prefix="podrun-"))  # podman refuses a runroot longer than 50 characters
    base = ["podman", "--root", str(root), "--runroot", str(runroot), "--storage-driver", "overlay"]
    if mount_program is not None:
        base += ["--storage-opt", f"overlay.mount_program={mount_program}"]

    def run(*args: str) -> str:
        result = subprocess.run([*base, *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"podman {' '.join(args)}: {result.stderr}"
        return result.stdout.strip()

    try:
        yield run
    finally:
        for undo in (["umount", "--all"], ["image", "umount", "--all"]):
            subprocess.run([*base, *undo], capture_output=True, timeout=120)
        shutil.rmtree(runroot, ignore_errors=True)


@pytest.fixture
def kernel_podman(tmp_path: Path) -> Iterator[Podman]:
    yield from podman_with(tmp_path / "kernel", None)


@pytest.fixture
def driver_podman(tmp_path: Path) -> Iterator[Podman]:
    program = shutil.which("unionfs")
    assert program is not None, "the unionfs command is not installed"
    yield from podman_with(tmp_path / "driver", program)


def change(rootfs: Path) -> None:
    """What a build step might do: write, append to, remove and add files of the
    image's layers, move a lower directory (mv copies it where rename says EXDEV)
    and remove another."""
    (rootfs / "hello.txt").write_text("hello\n")
    with open(rootfs / "etc/passwd", "a") as f:
        f.write("extra:x:1234:1234::/:/bin/sh\n")
    (rootfs / "etc/os-release").unlink()
    (rootfs / "new/sub").mkdir(parents=True)
    (rootfs / "new/sub/file").write_bytes(b"\0" * 5000)
    (rootfs / "link").symlink_to("etc/passwd")
    os.chmod(rootfs / "etc/www", 0o700)
    subprocess.run(["mv", str(rootfs / "usr/share"), str(rootfs / "usr/moved")], check=True)
    shutil.rmtree(rootfs / "var")


def test_podman_commits_through_the_driver_what_it_commits_through_overlayfs(
        kernel_podman: Podman, driver_podman: Podman) -> None:
    diffs, trees = [], []
    for podman in (kernel_podman, driver_podman):
        podman("load", "-q", "-i", str(EXAMPLE))
        podman("create", "--name", "box", IMAGE)
        change(Path(podman("mount", "box")))
        diffs.append(sorted(podman("diff", "box").splitlines()))
        podman("umount", "box")
        podman("commit", "-q", "box", "changed")
        diffs.append(sorted(podman("diff", "changed").splitlines()))
        trees.append(view(podman("image", "mount", "changed"), lsattr=False).entries)
        podman("image", "umount", "changed")
    kernel_box, kernel_image, driver_box, driver_image = diffs
    assert "D /etc/os-release" in kernel_box and "A /usr/moved/doc" in kernel_box, kernel_box
    # Comparing mounts, podman also lists as changed each directory that holds a change
    # (Docker's rule for its own diffs): /srv, which holds /srv/www (changed by a chmod
    # through the symlink /etc/www). From overlayfs's upper layer it lists what changed.
    assert "C /srv" not in kernel_box and "C /srv/www" in kernel_box
    assert driver_box == sorted([*kernel_box, "C /srv"])
    assert driver_image == sorted([*kernel_image, "C /srv"])
    assert "usr/moved/doc" in trees[0] and "var" not in trees[0]
    assert not diff_maps(*trees)


CONTAINERFILE = """\
FROM docker.io/example/demo:latest
COPY file /etc/copied
COPY tree /usr/share/tree
ADD file /srv/www/added
COPY file tree/sub/deep /opt/both/
"""


def test_podman_builds_through_the_driver_what_it_builds_through_overlayfs(
        tmp_path: Path, kernel_podman: Podman, driver_podman: Podman) -> None:
    """A build whose steps copy into the image (no RUN, which needs a container
    runtime): each step mounts the working container, writes into it and commits."""
    context = tmp_path / "context"
    (context / "tree/sub").mkdir(parents=True)
    (context / "file").write_text("copied\n")
    (context / "tree/sub/deep").write_text("deep\n")
    (context / "Containerfile").write_text(CONTAINERFILE)
    trees = []
    for podman in (kernel_podman, driver_podman):
        podman("load", "-q", "-i", str(EXAMPLE))
        podman("build", "-q", "--cgroup-manager", "cgroupfs", "-t", "built", str(context))
        trees.append(view(podman("image", "mount", "built"), lsattr=False).entries)
        podman("image", "umount", "built")
    assert {"etc/copied", "usr/share/tree/sub/deep", "srv/www/added", "opt/both/deep"} <= set(trees[0])
    assert not diff_maps(*trees)
