"""save: archives of the original blobs that load back byte for byte and that skopeo and umoci read.

Images are built by umoci and exported by skopeo (a classic docker-archive,
an oci-archive, a zstd OCI layout); what skopeo copies out of a saved
archive is unpacked by umoci and compared with the image mounted by unionfs.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pty
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from imagebuild import build_layout, export, run, tree, write

from layerstore.containers import Containers
from layerstore.errors import CorruptArchive, NotFound
from layerstore.export import DOCKER_ARCHIVE, OCI_ARCHIVE, TarWriter, preferred_manifest, save
from layerstore.store import Store

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("umoci"), reason="needs root, umoci and skopeo")

APP, BASE = "example/app:v2", "example/base:v1"


def base_layer(root: Path) -> None:
    write(root, "etc/os-release", 'NAME="Test"\n')
    write(root, "bin/tool.sh", "#!/bin/sh\necho tool\n", 0o755)
    os.symlink("tool.sh", root / "bin/tool")
    write(root, "var/cache/old.db", "stale\n")
    write(root, "srv/one", "1\n")
    os.link(root / "srv/one", root / "srv/one-link")


def second_layer(root: Path) -> None:
    shutil.rmtree(root / "var/cache")
    write(root, "srv/app.txt", "app\n", 0o600)


def app_layer(root: Path) -> None:
    write(root, "srv/app.txt", "app v2\n")
    os.unlink(root / "bin/tool")
    write(root, "opt/new/file", "new\n")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("save-images")
    layout = build_layout(base / "layout", "base", [base_layer, second_layer])
    build_layout(layout, "app", [app_layer], base="base")
    return {
        "base-docker": export(layout, "base", "docker-archive", base / "base.tar", BASE),  # no manifest: one is made
        "app-oci": export(layout, "app", "oci-archive", base / "app.tar", APP),
        "app-zstd": export(layout, "app", "oci", base / "app-zstd", "zstd", "--dest-compress-format", "zstd"),
    }


@pytest.fixture(scope="module")
def app_tree(images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """The app image as the unionfs mount shows it."""
    base = tmp_path_factory.mktemp("save-mount")
    with Store(base / "store") as store:
        store.load(str(images["app-oci"]))
        (base / "mnt").mkdir()
        containers = Containers(store)
        c = containers.create_and_mount(APP, str(base / "mnt"), read_only=True)
        try:
            return tree(base / "mnt")
        finally:
            containers.remove(c.name, force=True)


@pytest.fixture
def store(tmp_path: Path, images: dict[str, Path]) -> Iterator[Store]:
    with Store(tmp_path / "store") as s:
        s.load(str(images["base-docker"]))
        s.load(str(images["app-oci"]))
        yield s


def save_to(store: Store, path: Path, names: list[str], fmt: str = DOCKER_ARCHIVE) -> Path:
    save(store, names, str(path), sys.stdout.buffer, fmt)
    return path


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def umoci_tree(layout: Path, tmp_path: Path) -> dict[str, tuple]:
    run("umoci", "unpack", "--image", f"{layout}:x", str(tmp_path / "bundle"))
    return tree(tmp_path / "bundle/rootfs")


@pytest.mark.parametrize("fmt", [DOCKER_ARCHIVE, OCI_ARCHIVE])
def test_save_load_save_is_byte_identical(store: Store, tmp_path: Path, fmt: str, app_tree: dict[str, tuple]) -> None:
    first = save_to(store, tmp_path / "first.tar", [APP, BASE], fmt)
    with Store(tmp_path / "second") as second:
        loaded = second.load(str(first))
        assert sorted((i.id, i.names) for i in loaded) == sorted((store.resolve(n), (n,)) for n in (APP, BASE))
        again = save_to(second, tmp_path / "again.tar", [APP, BASE], fmt)
        for name in (APP, BASE):
            image_id = store.resolve(name)
            assert preferred_manifest(second, image_id)[0] == preferred_manifest(store, image_id)[0]
    assert first.read_bytes() == again.read_bytes()
    blobs = {name: data for name, data in members(first).items() if name.startswith("blobs/")}
    for name, data in blobs.items():
        digest = "sha256:" + name.removeprefix("blobs/sha256/")
        assert hashlib.sha256(data).hexdigest() == digest[7:] and store.blobs.read(digest) == data
    with tarfile.open(first) as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos] == sorted(i.name for i in infos)
    assert {(i.mtime, i.uid, i.gid, i.uname, i.gname) for i in infos} == {(0, 0, 0, "", "")}
    assert first.stat().st_size % 512 == 0 and first.read_bytes()[-1024:] == bytes(1024)

    copy = tmp_path / "copy"
    if fmt == DOCKER_ARCHIVE:
        inspect = json.loads(run("skopeo", "inspect", f"docker-archive:{first}:{APP}"))
        assert inspect["Layers"] == store.config(store.resolve(APP))["rootfs"]["diff_ids"]
        run("skopeo", "copy", "-q", f"docker-archive:{first}:{APP}", f"oci:{copy}:x")
    else:
        assert "manifest.json" not in members(first)
        run("skopeo", "copy", "-q", f"oci-archive:{first}:v2", f"oci:{copy}:x")
    assert umoci_tree(copy, tmp_path) == app_tree


def test_docker_archive_names_the_original_blobs(store: Store, tmp_path: Path) -> None:
    files = members(save_to(store, tmp_path / "a.tar", [APP]))
    [entry] = json.loads(files["manifest.json"])
    index = json.loads(files["index.json"])
    [desc] = index["manifests"]
    assert desc["annotations"] == {"io.containerd.image.name": "docker.io/example/app:v2", "org.opencontainers.image.ref.name": "v2"}
    manifest = json.loads(files["blobs/" + desc["digest"].replace(":", "/")])
    assert entry == {
        "Config": "blobs/sha256/" + manifest["config"]["digest"][7:],
        "RepoTags": [APP],
        "Layers": ["blobs/sha256/" + layer["digest"][7:] for layer in manifest["layers"]],
    }
    assert all(layer["mediaType"].endswith("+gzip") for layer in manifest["layers"])  # as loaded, not decompressed
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}


def test_which_images_and_tags_are_saved(store: Store, tmp_path: Path) -> None:
    app_id, base_id = store.resolve(APP), store.resolve(BASE)
    store.tag(APP, "example/app:latest")
    store.tag(APP, "other/name:v9")

    def saved(*names: str) -> tuple[list[tuple[str, list[str] | None]], list[dict[str, str]]]:
        files = members(save_to(store, tmp_path / "sel.tar", list(names)))
        entries = [(e["Config"][-64:], e["RepoTags"]) for e in json.loads(files["manifest.json"])]
        return entries, [d.get("annotations", {}) for d in json.loads(files["index.json"])["manifests"]]

    entries, annotations = saved(app_id[7:19])  # a short ID: no tags, as Docker
    assert entries == [(app_id[7:], None)] and annotations == [{}]
    entries, _ = saved("example/app")  # a bare repository: all its tags
    assert entries == [(app_id[7:], ["example/app:latest", APP])]
    entries, annotations = saved(BASE, app_id, "other/name:v9", BASE)
    assert entries == [(base_id[7:], [BASE]), (app_id[7:], ["other/name:v9"])]
    assert [a.get("org.opencontainers.image.ref.name") for a in annotations] == ["v1", "v9"]
    with pytest.raises(NotFound):
        save_to(store, tmp_path / "missing.tar", [APP, "example/none:v1"])
    assert not (tmp_path / "missing.tar").exists() and not list(tmp_path.glob(".missing.tar.*"))


def test_zstd_layers_are_saved_as_they_are(tmp_path: Path, images: dict[str, Path], app_tree: dict[str, tuple]) -> None:
    with Store(tmp_path / "store") as store:
        [image] = store.load(str(images["app-zstd"]))
        archive = save_to(store, tmp_path / "zstd.tar", [image.id])
        manifest = preferred_manifest(store, image.id)[1]
    assert all(layer.media_type.endswith("+zstd") for layer in manifest.layers)
    run("skopeo", "copy", "-q", f"docker-archive:{archive}", f"oci:{tmp_path / 'copy'}:x")
    assert umoci_tree(tmp_path / "copy", tmp_path) == app_tree


def test_save_writes_the_original_manifest_before_a_synthetic_one(tmp_path: Path, images: dict[str, Path]) -> None:
    """A classic docker-archive gives an image a made-up manifest; the OCI archive of the same image,
    loaded later, brings the one its tool wrote: that one is the image's, whatever the order."""
    with Store(tmp_path / "store") as store:
        [classic] = store.load(str(classic_docker_archive(images["app-oci"], tmp_path / "classic.tar")))
        [oci] = store.load(str(images["app-oci"]))
        assert classic.id == oci.id
        rows = store.meta.query("SELECT digest, synthetic FROM manifests WHERE image_id = ? ORDER BY rowid", oci.id)
        assert [r["synthetic"] for r in rows] == [1, 0]
        index = json.loads(members(save_to(store, tmp_path / "saved.tar", [oci.id], OCI_ARCHIVE))["index.json"])
    assert [d["digest"] for d in index["manifests"]] == [rows[1]["digest"]]


def classic_docker_archive(oci_archive: Path, out: Path) -> Path:
    """The image of an OCI archive as Docker before 25 saved it (manifest.json, uncompressed layers,
    no manifest blob), its config bytes unchanged: skopeo would rewrite the config."""
    files = members(oci_archive)
    [desc] = json.loads(files["index.json"])["manifests"]
    manifest = json.loads(files["blobs/" + desc["digest"].replace(":", "/")])
    config_name = manifest["config"]["digest"][7:] + ".json"
    entries = {config_name: files["blobs/" + manifest["config"]["digest"].replace(":", "/")]}
    for i, layer in enumerate(manifest["layers"]):
        entries[f"layer{i}/layer.tar"] = gzip.decompress(files["blobs/" + layer["digest"].replace(":", "/")])
    layer_names = [f"layer{i}/layer.tar" for i in range(len(manifest["layers"]))]
    entries["manifest.json"] = json.dumps([{"Config": config_name, "RepoTags": ["example/app:classic"], "Layers": layer_names}]).encode()
    with tarfile.open(out, "w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def test_save_skips_a_manifest_whose_blobs_are_gone(tmp_path: Path, images: dict[str, Path]) -> None:
    """One image, gzip and zstd manifests; fsck --repair removed a gzip layer blob: the zstd one is saved."""
    with Store(tmp_path / "store") as store:
        [gz] = store.load(str(images["app-oci"]))
        [zst] = store.load(str(images["app-zstd"]))
        assert gz.id == zst.id
        gzip_manifest = preferred_manifest(store, gz.id)[1]
        store.blobs.delete(gzip_manifest.layers[0].digest)
        desc, manifest = preferred_manifest(store, gz.id)
        assert all(layer.media_type.endswith("+zstd") for layer in manifest.layers)
        archive = save_to(store, tmp_path / "saved.tar", [gz.id], OCI_ARCHIVE)
    index = json.loads(members(archive)["index.json"])
    assert [d["digest"] for d in index["manifests"]] == [desc.digest]
    with Store(tmp_path / "again") as again:
        assert [i.id for i in again.load(str(archive))] == [gz.id]


def test_a_blob_that_changed_in_the_store_stops_the_save_and_leaves_no_file(store: Store, tmp_path: Path) -> None:
    """The descriptor's size is checked before a byte of the blob is written (fsck says what happened)."""
    layer = preferred_manifest(store, store.resolve(APP))[1].layers[-1]
    path = store.blobs.path(layer.digest)
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.truncate(layer.size - 1)
    with pytest.raises(CorruptArchive) as info:
        save_to(store, tmp_path / "app.tar", [APP])
    assert str(info.value) == f"blob {layer.digest}: {layer.size - 1} bytes in the store, {layer.size} in its descriptor"
    assert not (tmp_path / "app.tar").exists() and not list(tmp_path.glob(".app.tar.*"))


def test_the_tar_writer_refuses_a_source_shorter_than_its_entry() -> None:
    """A file that shrinks while it is read (a blob replaced meanwhile) must not pass as a padded entry."""
    info = tarfile.TarInfo("blob")
    info.size = 10
    with pytest.raises(CorruptArchive, match="source ended 5 bytes early"):
        TarWriter(io.BytesIO()).add(info, io.BytesIO(b"short"))


def test_cli_writes_stdout_or_file_and_refuses_a_terminal(store: Store, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "layerstore", "--root", str(store.root), "save"]
    with open(tmp_path / "stdout.tar", "wb") as out:
        subprocess.run([*cmd, APP], stdout=out, check=True)
    subprocess.run([*cmd, "-o", str(tmp_path / "file.tar"), APP], check=True)
    assert (tmp_path / "stdout.tar").read_bytes() == (tmp_path / "file.tar").read_bytes()
    oci = subprocess.run([*cmd, "--format", "oci-archive", APP], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(oci)) as tar:
        assert "index.json" in tar.getnames() and "manifest.json" not in tar.getnames()
    primary, secondary = pty.openpty()
    try:
        result = subprocess.run([*cmd, APP], check=False, stdout=secondary, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(primary)
        os.close(secondary)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "terminal" in result.stderr


def test_cli_writes_to_the_file_output_names_and_replaces_no_node(store: Store, tmp_path: Path) -> None:
    """-o names where to write, not what to replace: a device is written to (a full one
    fails in one line and stays a device), a FIFO gets the archive, and a symlink keeps
    naming the archive it points at."""
    cmd = [sys.executable, "-m", "layerstore", "--root", str(store.root), "save"]
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([*cmd, "-o", str(out / "file.tar"), APP], check=True)
    archive = (out / "file.tar").read_bytes()

    full = out / "full"
    os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # /dev/full's numbers, in a directory of the test's own
    result = subprocess.run([*cmd, "-o", str(full), APP], check=False, capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "No space left on device" in result.stderr
    assert stat.S_ISCHR(os.lstat(full).st_mode) and sorted(os.listdir(out)) == ["file.tar", "full"]

    fifo = out / "fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    subprocess.run([*cmd, "-o", str(fifo), APP], check=True, timeout=60)
    reader.join(60)
    assert received == [archive] and stat.S_ISFIFO(os.lstat(fifo).st_mode)

    (out / "link.tar").symlink_to("named.tar")
    subprocess.run([*cmd, "-o", str(out / "link.tar"), APP], check=True)
    assert os.readlink(out / "link.tar") == "named.tar" and (out / "named.tar").read_bytes() == archive
    assert sorted(os.listdir(out)) == ["fifo", "file.tar", "full", "link.tar", "named.tar"]

    for target, problem in ((out / "none" / "x.tar", f'directory "{out / "none"}" does not exist'),
                            (out / "file.tar" / "x.tar", f'"{out / "file.tar"}" is not a directory'),
                            (out, f'"{out}" is a directory')):
        result = subprocess.run([*cmd, "-o", str(target), APP], check=False, capture_output=True, text=True)
        assert result.returncode == 1 and result.stderr == f"Error: failed to save image: invalid output path: {problem}\n"
    assert sorted(os.listdir(out)) == ["fifo", "file.tar", "full", "link.tar", "named.tar"]


def test_load_of_a_dir_copy_says_what_it_is_and_stores_nothing(store: Store, tmp_path: Path,
                                                                images: dict[str, Path]) -> None:
    """skopeo's and podman's dir: format has a manifest.json too, but not docker save's."""
    copy = tmp_path / "copy"
    run("skopeo", "copy", "-q", f"docker-archive:{images['base-docker']}", f"dir:{copy}")
    root = tmp_path / "empty-store"
    result = subprocess.run([sys.executable, "-m", "layerstore", "--root", str(root), "load", "-i", str(copy)],
                            check=False, capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "'dir:' format" in result.stderr and "skopeo copy dir:PATH oci:LAYOUT:TAG" in result.stderr
    with Store(root) as empty:
        assert empty.layers.diff_ids() == [] and list(empty.blobs.digests()) == []
