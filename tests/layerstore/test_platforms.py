"""Platforms: which image load takes from a multi-platform archive, under which name, and
``--platform`` on load, save, inspect, history and rmi.

umoci builds three single-platform images (linux/amd64, linux/arm64 and
linux/arm, which podman's ``manifest add --variant v6`` calls arm/v6), podman
gathers them into a manifest list and writes it as an oci-archive, and skopeo
copies that list, whole, into an OCI layout under two names. The archives
name the image once, on the index: the image that is loaded takes that name.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from imagebuild import build_layout, export, run, write
from storecheck import assert_clean_error, layerstore

from layerstore.platforms import host

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("podman") or not shutil.which("umoci"),
                                reason="needs root, podman, umoci and skopeo")

NAME = "example/multi:v1"
ARCHES = ("amd64", "arm64", "arm")


def _layout_config(layout: Path, tag: str) -> str:
    """The config digest (the image ID) of image ``tag`` of an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    (desc,) = [d for d in index["manifests"] if d["annotations"]["org.opencontainers.image.ref.name"] == tag]
    manifest = json.loads((layout / "blobs/sha256" / desc["digest"].split(":")[1]).read_text())
    return str(manifest["config"]["digest"])


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path | str]]:
    base = tmp_path_factory.mktemp("platforms")
    layout = base / "layout"
    for arch in ARCHES:
        build_layout(layout, arch, [lambda root, arch=arch: write(root, "etc/arch", f"{arch}\n")])
        run("umoci", "config", "--image", f"{layout}:{arch}", "--os", "linux", "--architecture", arch)
    runroot = Path(tempfile.mkdtemp(prefix="podrun-"))  # podman refuses a runroot longer than 50 characters
    podman = ["podman", "--root", str(base / "podroot"), "--runroot", str(runroot), "--storage-driver", "vfs"]
    try:
        run(*podman, "manifest", "create", "multi")
        for arch in ARCHES:
            run(*podman, "manifest", "add", *(["--variant", "v6"] if arch == "arm" else []), "multi", f"oci:{layout}:{arch}")
        run(*podman, "manifest", "push", "--all", "--format", "oci", "multi", f"oci-archive:{base / 'multi.tar'}:{NAME}")
    finally:
        subprocess.run([*podman, "manifest", "rm", "multi"], capture_output=True)
        shutil.rmtree(runroot, ignore_errors=True)
    twice = base / "twice"
    for name in (NAME, "example/multi:latest"):
        run("skopeo", "copy", "-q", "--all", f"oci-archive:{base / 'multi.tar'}:{NAME}", f"oci:{twice}:{name}")
    out: dict[str, Path | str] = {"multi": base / "multi.tar", "twice": twice, "layout": layout}
    out |= {arch: _layout_config(layout, arch) for arch in ARCHES}
    out["classic-arm64"] = export(layout, "arm64", "docker-archive", base / "arm64.tar", "example/arm64:v1")
    yield out


def _images(root: Path) -> list[str]:
    listed = layerstore(root, "images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", "--no-trunc")
    assert listed.rc == 0, listed
    return sorted(listed.out.splitlines())


def test_an_index_loads_this_machines_image_under_the_index_name(archives: dict[str, Path | str], tmp_path: Path) -> None:
    here = host().architecture
    if here not in ARCHES:
        pytest.skip(f"the archive has no image for this machine ({here})")
    loaded = layerstore(tmp_path, "load", "-i", str(archives["multi"]))
    assert loaded.rc == 0, loaded
    assert loaded.out == f"Loaded image: {NAME}\n"
    assert _images(tmp_path) == [f"{NAME} {archives[here]}"]


def test_an_index_named_twice_loads_one_image_with_both_names(archives: dict[str, Path | str], tmp_path: Path) -> None:
    loaded = layerstore(tmp_path, "load", "-q", "--platform", "linux/arm64", "-i", str(archives["twice"]))
    assert loaded.rc == 0, loaded
    assert sorted(loaded.out.splitlines()) == ["Loaded image: example/multi:latest", f"Loaded image: {NAME}"]
    assert _images(tmp_path) == [f"example/multi:latest {archives['arm64']}", f"{NAME} {archives['arm64']}"]


@pytest.mark.parametrize(("platform", "arch"), [("linux/arm64", "arm64"), ("arm64", "arm64"), ("linux/aarch64", "arm64"),
                                                ("linux/arm/v6", "arm"), ("linux/arm/v7", "arm"), ("linux/amd64", "amd64")])
def test_load_platform_takes_the_entry_that_suits_it(archives: dict[str, Path | str], tmp_path: Path, platform: str, arch: str) -> None:
    """An arm/v7 machine runs arm/v6 code: the v6 image is taken for it, as containerd takes it."""
    loaded = layerstore(tmp_path, "load", "-q", "--platform", platform, "-i", str(archives["multi"]))
    assert loaded.rc == 0, loaded
    assert _images(tmp_path) == [f"{NAME} {archives[arch]}"]


def test_no_image_for_the_platform_is_one_line_and_loads_nothing(archives: dict[str, Path | str], tmp_path: Path) -> None:
    for source in ("multi", "classic-arm64"):
        loaded = layerstore(tmp_path, "load", "--platform", "linux/arm/v5", "-i", str(archives[source]))
        has = "linux/amd64, linux/arm64, linux/arm/v6" if source == "multi" else "linux/arm64"
        assert_clean_error(loaded, f"archive {archives[source]}", f"no image for platform linux/arm/v5 (it has {has})")
    assert _images(tmp_path) == []
    assert not any(p.is_file() for p in (tmp_path / "blobs").rglob("*"))


def test_a_single_platform_archive_is_checked_by_its_config(archives: dict[str, Path | str], tmp_path: Path) -> None:
    loaded = layerstore(tmp_path, "load", "-q", "--platform", "linux/arm64", "-i", str(archives["classic-arm64"]))
    assert loaded.rc == 0, loaded
    assert _images(tmp_path) == [f"example/arm64:v1 {archives['arm64']}"]
    # without --platform an image is taken for what it is, whatever this machine is
    other = tmp_path / "other"
    assert layerstore(other, "load", "-q", "-i", str(archives["classic-arm64"])).rc == 0
    assert _images(other) == [f"example/arm64:v1 {archives['arm64']}"]


def test_save_platform_refuses_an_image_for_another(archives: dict[str, Path | str], tmp_path: Path) -> None:
    assert layerstore(tmp_path, "load", "-q", "--platform", "linux/arm64", "-i", str(archives["multi"])).rc == 0
    out = tmp_path / "saved.tar"
    refused = layerstore(tmp_path, "save", "--platform", "linux/amd64", "-o", str(out), NAME)
    assert_clean_error(refused, f'image "{NAME}"', "does not match the specified platform: wanted linux/amd64, actual: linux/arm64")
    assert not out.exists()
    saved = layerstore(tmp_path, "save", "--platform", "linux/arm64/v8", "-o", str(out), NAME)
    assert saved.rc == 0, saved
    again = tmp_path / "again"
    assert layerstore(again, "load", "-q", "-i", str(out)).rc == 0
    assert _images(again) == [f"{NAME} {archives['arm64']}"]


def test_inspect_history_and_rmi_refuse_an_image_for_another_platform(archives: dict[str, Path | str], tmp_path: Path) -> None:
    """An image here holds one platform: --platform checks it, as dockerd checks an image that is not multi-platform."""
    assert layerstore(tmp_path, "load", "-q", "--platform", "linux/arm64", "-i", str(archives["multi"])).rc == 0
    mismatch = "does not match the specified platform: wanted linux/amd64, actual: linux/arm64"

    shown = layerstore(tmp_path, "inspect", "--platform", "linux/amd64", "-f", "{{.Id}}", NAME)
    assert (shown.rc, shown.out) == (1, "")
    assert_clean_error(shown, f'image "{NAME}"', mismatch)
    shown = layerstore(tmp_path, "inspect", "--platform", "linux/arm64/v8", "-f", "{{.Architecture}}", NAME)
    assert (shown.rc, shown.out) == (0, "arm64\n"), shown

    assert_clean_error(layerstore(tmp_path, "history", "--platform", "linux/amd64", NAME), f'image "{NAME}"', mismatch)
    assert layerstore(tmp_path, "history", "-q", "--platform", "arm64", NAME).rc == 0

    refused = layerstore(tmp_path, "rmi", "--platform", "linux/amd64,linux/arm/v7", NAME)
    assert_clean_error(refused, f'image "{NAME}"', "wanted linux/amd64, linux/arm/v7, actual: linux/arm64")
    assert _images(tmp_path) == [f"{NAME} {archives['arm64']}"]
    removed = layerstore(tmp_path, "rmi", "--platform", "linux/amd64", "--platform", "linux/arm64", NAME)
    assert removed.rc == 0, removed
    assert removed.out.splitlines() == [f"Untagged: {NAME}", f"Deleted: {archives['arm64']}"]
    assert _images(tmp_path) == []
