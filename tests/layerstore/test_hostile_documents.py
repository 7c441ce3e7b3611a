"""Hostile manifests, indexes, configs and archives: refused with a LayerStoreError, nothing stored.

Parsers are fed documents one field away from valid; ``load`` is fed
docker-archives and OCI layouts (directory and tar) whose JSON lies about
sizes, names members outside the archive, nests or repeats indexes, or
holds members that are not files. After every refusal the store holds no
image, blob or layer, and a canary next to the archive is unchanged.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from layerstore.errors import (
    CorruptArchive,
    DigestMismatch,
    LayerStoreError,
    NotFound,
    SizeMismatch,
    UnsafeArchiveEntry,
    UnsupportedMediaType,
)
from layerstore.model import MAX_DOCUMENT, ImageConfig, Manifest, load_json
from layerstore.store import Store
from test_unpack import entry, make_tar

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
HEX = "a" * 64


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": "sha256:" + HEX, "size": 10},
        "layers": [{"mediaType": OCI_TAR, "digest": "sha256:" + HEX, "size": 10}],
    }
    for key, value in changes.items():
        target, _, field = key.rpartition("__")
        holder = doc
        for part in filter(None, target.split("__")):
            holder = holder[int(part)] if isinstance(holder, list) else holder[part]
        holder[field] = value
    return doc


# -- manifests ------------------------------------------------------------------------------

BAD_MANIFESTS: dict[str, tuple[bytes, type[LayerStoreError]]] = {
    "not-json": (b"{not json", CorruptArchive),
    "empty": (b"", CorruptArchive),
    "not-utf8": (b'{"a": "\xff"}', CorruptArchive),
    "a-list": (b"[]", CorruptArchive),
    "nan-size": (json.dumps(manifest_doc()).replace('"size": 10', '"size": NaN', 1).encode(), CorruptArchive),
    "infinite-size": (json.dumps(manifest_doc()).replace('"size": 10', '"size": Infinity', 1).encode(), CorruptArchive),
    "lone-surrogate": (json.dumps(manifest_doc(config__mediaType="\ud800")).encode(), CorruptArchive),
    "nested-too-deep": (b'{"config": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", CorruptArchive),
    "too-big": (b'{"x": "' + b"a" * MAX_DOCUMENT + b'"}', CorruptArchive),
    "schema-1": (json.dumps(manifest_doc(schemaVersion=1, mediaType=None)).encode(), CorruptArchive),
    "schema-true": (json.dumps(manifest_doc(schemaVersion=True)).encode(), CorruptArchive),
    "index-media-type": (json.dumps(manifest_doc(mediaType=OCI_INDEX)).encode(), UnsupportedMediaType),
    "unknown-media-type": (json.dumps(manifest_doc(mediaType="text/html")).encode(), UnsupportedMediaType),
    "media-type-not-string": (json.dumps(manifest_doc(mediaType=["x"])).encode(), CorruptArchive),
    "helm-config": (json.dumps(manifest_doc(config__mediaType="application/vnd.cncf.helm.config.v1+json")).encode(), UnsupportedMediaType),
    "unknown-layer-type": (json.dumps(manifest_doc(layers__0__mediaType="application/x-evil")).encode(), UnsupportedMediaType),
    "no-config": (json.dumps(manifest_doc(config=None)).encode(), CorruptArchive),
    "layers-not-list": (json.dumps(manifest_doc(layers=5)).encode(), CorruptArchive),
    "layers-a-string": (json.dumps(manifest_doc(layers="abc")).encode(), CorruptArchive),
    "size-bool": (json.dumps(manifest_doc(config__size=True)).encode(), CorruptArchive),
    "size-string": (json.dumps(manifest_doc(config__size="10")).encode(), CorruptArchive),
    "size-float": (json.dumps(manifest_doc(config__size=10.5)).encode(), CorruptArchive),
    "size-negative": (json.dumps(manifest_doc(layers__0__size=-1)).encode(), CorruptArchive),
    "size-over-int64": (json.dumps(manifest_doc(layers__0__size=2**63)).encode(), CorruptArchive),
    "digest-md5": (json.dumps(manifest_doc(config__digest="md5:" + "0" * 32)).encode(), CorruptArchive),
    "digest-unknown-algorithm": (json.dumps(manifest_doc(config__digest="blake3:" + HEX)).encode(), CorruptArchive),
    "digest-uppercase": (json.dumps(manifest_doc(config__digest="sha256:" + HEX.upper())).encode(), CorruptArchive),
    "digest-short": (json.dumps(manifest_doc(config__digest="sha256:" + HEX[:63])).encode(), CorruptArchive),
    "digest-long": (json.dumps(manifest_doc(config__digest="sha256:" + HEX + "a")).encode(), CorruptArchive),
    "digest-non-hex": (json.dumps(manifest_doc(config__digest="sha256:" + "g" * 64)).encode(), CorruptArchive),
    "digest-sha512-wrong-length": (json.dumps(manifest_doc(config__digest="sha512:" + HEX)).encode(), CorruptArchive),
    "digest-not-string": (json.dumps(manifest_doc(config__digest=12)).encode(), CorruptArchive),
    "annotations-list": (json.dumps(manifest_doc(config__annotations=[1, 2])).encode(), CorruptArchive),
    "annotations-non-string": (json.dumps(manifest_doc(config__annotations={"k": 1})).encode(), CorruptArchive),
    "platform-string": (json.dumps(manifest_doc(config__platform="linux")).encode(), CorruptArchive),
}  # fmt: skip


@pytest.mark.parametrize("data, error", BAD_MANIFESTS.values(), ids=BAD_MANIFESTS.keys())
def test_bad_manifests_are_refused(data: bytes, error: type[LayerStoreError]) -> None:
    with pytest.raises(error) as info:
        Manifest.parse(data, "manifest sha256:" + HEX)
    assert type(info.value) is error
    assert str(info.value).startswith("manifest sha256:" + HEX)
    assert "\n" not in str(info.value)


def test_sha512_digests_and_the_size_limit_are_accepted() -> None:
    doc = manifest_doc(config__digest="sha512:" + "b" * 128)
    assert Manifest.parse(json.dumps(doc).encode(), "m").config.digest == "sha512:" + "b" * 128
    padded = json.dumps(manifest_doc()).encode()
    padded += b" " * (MAX_DOCUMENT - len(padded))
    assert len(Manifest.parse(padded, "m").layers) == 1  # exactly at the limit
    with pytest.raises(CorruptArchive, match="larger than"):
        load_json(padded + b" ", "m")


BAD_CONFIGS: dict[str, dict[str, Any]] = {
    "rootfs-list": {"rootfs": []},
    "rootfs-type": {"rootfs": {"type": "tarball", "diff_ids": []}},
    "diff-ids-int": {"rootfs": {"type": "layers", "diff_ids": 5}},
    "diff-ids-a-string": {"rootfs": {"type": "layers", "diff_ids": "sha256:" + HEX}},
    "diff-id-md5": {"rootfs": {"type": "layers", "diff_ids": ["md5:" + "0" * 32]}},
    "diff-id-not-string": {"rootfs": {"type": "layers", "diff_ids": [1]}},
    "created-object": {"created": {}},
    "architecture-list": {"architecture": ["amd64"]},
    "os-number": {"os": 1},
    "variant-bool": {"variant": True},
}


@pytest.mark.parametrize("doc", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_configs_are_refused(doc: dict[str, Any]) -> None:
    with pytest.raises(CorruptArchive, match="^config sha256:"):
        ImageConfig.parse(json.dumps(doc).encode(), "config sha256:" + HEX)


# -- archives through load -----------------------------------------------------------------------

LAYER = make_tar([entry("etc/hostname", data=b"box\n")])
CONFIG = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha256(LAYER)]}}).encode()


class Layout:
    """An OCI layout (or Docker 25 archive) as member name -> bytes, with helpers to add blobs."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}'}

    def blob(self, data: bytes | dict[str, Any] | list[Any]) -> dict[str, Any]:
        raw = data if isinstance(data, bytes) else json.dumps(data).encode()
        self.files[f"blobs/sha256/{sha256(raw)[7:]}"] = raw
        return {"digest": sha256(raw), "size": len(raw)}

    def image(self, *, layer_size: int | None = None, config_size: int | None = None) -> dict[str, Any]:
        layer = {"mediaType": OCI_TAR, **self.blob(LAYER)}
        config = {"mediaType": OCI_CONFIG, **self.blob(CONFIG)}
        if layer_size is not None:
            layer["size"] = layer_size
        if config_size is not None:
            config["size"] = config_size
        return {"mediaType": OCI_MANIFEST, **self.blob({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]})}

    def index(self, manifests: list[dict[str, Any]]) -> Layout:
        self.files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": manifests}).encode()
        return self


def _nested(layout: Layout, depth: int) -> dict[str, Any]:
    desc = layout.image()
    for _ in range(depth):
        desc = {"mediaType": OCI_INDEX, **layout.blob({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc]})}
    return desc


def _lying_index_names_itself(layout: Layout) -> Layout:
    """An index blob that lists its own digest: stored under that digest, its bytes hash to another."""
    fake = "sha256:" + "1" * 64
    template = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{"mediaType": OCI_INDEX, "digest": fake, "size": 999}]})
    raw = template.replace("999", str(len(template))).encode()  # its own size: three digits either way
    assert len(raw) == len(template)
    layout.files[f"blobs/sha256/{'1' * 64}"] = raw
    return layout.index([{"mediaType": OCI_INDEX, "digest": fake, "size": len(raw)}])


def _docker_archive(manifest: Any, members: dict[str, bytes] | None = None) -> Layout:
    layout = Layout()
    layout.files = {"manifest.json": json.dumps(manifest).encode(), "c.json": CONFIG, "layer.tar": LAYER, **(members or {})}
    return layout


LAYOUTS: dict[str, tuple[Any, type[LayerStoreError]]] = {
    # descriptors that lie about sizes: bigger and smaller than the blob
    "manifest-size-bigger": (lambda l: l.index([{**l.image(), "size": 10_000}]), SizeMismatch),
    "manifest-size-smaller": (lambda l: l.index([{**l.image(), "size": 10}]), SizeMismatch),
    "layer-size-bigger": (lambda l: l.index([l.image(layer_size=len(LAYER) + 1)]), SizeMismatch),
    "layer-size-smaller": (lambda l: l.index([l.image(layer_size=len(LAYER) - 512)]), SizeMismatch),
    "config-size-lies": (lambda l: l.index([l.image(config_size=len(CONFIG) + 7)]), SizeMismatch),
    "manifest-digest-lies": (lambda l: l.index([{**l.image(), "digest": "sha256:" + "2" * 64}]), NotFound),
    "manifest-content-swapped": (lambda l: _swap(l), DigestMismatch),
    "config-content-swapped": (lambda l: _swap_config(l), DigestMismatch),
    "docker-config-not-its-name": (lambda l: _docker_archive([{"Config": f"{sha256(CONFIG)[7:]}.json", "Layers": ["layer.tar"]}],
        {f"{sha256(CONFIG)[7:]}.json": CONFIG.replace(b"amd64", b"arm64")}), DigestMismatch),
    # digests
    "digest-md5": (lambda l: l.index([{**l.image(), "digest": "md5:" + "0" * 32}]), CorruptArchive),
    "digest-uppercase": (lambda l: l.index([{**l.image(), "digest": "sha256:" + HEX.upper()}]), CorruptArchive),
    # indexes: loops, depth, garbage
    "index-names-itself": (_lying_index_names_itself, DigestMismatch),
    "index-too-deep": (lambda l: l.index([_nested(l, 9)]), CorruptArchive),
    "index-json-a-list": (lambda l: _with(l, "index.json", b"[]"), CorruptArchive),
    "index-manifests-not-list": (lambda l: _with(l, "index.json", b'{"manifests": {}}'), CorruptArchive),
    "index-malformed": (lambda l: _with(l, "index.json", b'{"manifests": ['), CorruptArchive),
    "index-huge": (lambda l: _with(l, "index.json", b'{"manifests": [], "x": "' + b"a" * (4 << 20) + b'"}'), CorruptArchive),
    "manifest-is-a-list": (lambda l: l.index([{"mediaType": OCI_MANIFEST, **l.blob([1, 2])}]), CorruptArchive),
    "manifest-layers-not-list": (lambda l: l.index([{"mediaType": OCI_MANIFEST, **l.blob(
        {"schemaVersion": 2, "config": {"mediaType": OCI_CONFIG, **l.blob(CONFIG)}, "layers": 7})}]), CorruptArchive),
    "config-not-an-image": (lambda l: l.index([{"mediaType": OCI_MANIFEST, **l.blob(
        {"schemaVersion": 2, "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", **l.blob(CONFIG)},
         "layers": []})}]), UnsupportedMediaType),
    "missing-blob": (lambda l: _drop_layer(l), NotFound),
    # docker-archive manifest.json pointing outside the archive
    "config-dotdot": (lambda l: _docker_archive([{"Config": "../outside.json", "Layers": []}]), UnsafeArchiveEntry),
    "config-absolute": (lambda l: _docker_archive([{"Config": "/etc/passwd", "Layers": []}]), UnsafeArchiveEntry),
    "layer-dotdot": (lambda l: _docker_archive([{"Config": "c.json", "Layers": ["../../layer.tar"]}]), UnsafeArchiveEntry),
    "layer-inner-dotdot": (lambda l: _docker_archive([{"Config": "c.json", "Layers": ["x/../../layer.tar"]}]), UnsafeArchiveEntry),
    "layer-nul": (lambda l: _docker_archive([{"Config": "c.json", "Layers": ["layer.tar\u0000x"]}]), UnsafeArchiveEntry),
    "layers-not-strings": (lambda l: _docker_archive([{"Config": "c.json", "Layers": [5]}]), CorruptArchive),
    "repotags-a-string": (lambda l: _docker_archive([{"Config": "c.json", "Layers": ["layer.tar"], "RepoTags": "x:1"}]), CorruptArchive),
    "manifest-json-object": (lambda l: _docker_archive({"Config": "c.json"}), CorruptArchive),
    "manifest-json-empty-list": (lambda l: _docker_archive([]), CorruptArchive),
    "layer-count-differs": (lambda l: _docker_archive([{"Config": "c.json", "Layers": []}]), CorruptArchive),
}  # fmt: skip


def _with(layout: Layout, name: str, data: bytes) -> Layout:
    layout.image()
    layout.files[name] = data
    return layout


def _swap(layout: Layout) -> Layout:
    """The index names one manifest; the file under that name holds another of the same size."""
    first = layout.image()
    path = f"blobs/sha256/{first['digest'][7:]}"
    data = layout.files[path]
    layout.files[path] = data.replace(b'"schemaVersion": 2', b'"schemaVersion":  2')[: len(data)]
    return layout.index([first])


def _swap_config(layout: Layout) -> Layout:
    """The manifest names one config; the file under that name holds another of the same size."""
    desc = layout.image()
    layout.files[f"blobs/sha256/{sha256(CONFIG)[7:]}"] = CONFIG.replace(b"amd64", b"arm64")
    return layout.index([desc])


def _drop_layer(layout: Layout) -> Layout:
    layout.index([layout.image()])
    del layout.files[f"blobs/sha256/{sha256(LAYER)[7:]}"]
    return layout


def _write(layout: Layout, path: Path, as_dir: bool) -> Path:
    if as_dir:
        for name, data in layout.files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
        return path
    with tarfile.open(path, "w") as tar:
        for name, data in layout.files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _store_is_empty(store: Store) -> None:
    assert store.meta.query("SELECT * FROM images") == []
    assert list(store.blobs.digests()) == [] and store.layers.diff_ids() == []
    assert os.listdir(store.blobs.ingest_dir) == [] and os.listdir(store.layers.staging) == []


@pytest.mark.parametrize("build, error", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("as_dir", [True, False], ids=["dir", "tar"])
def test_hostile_archives_are_refused_and_nothing_stored(tmp_path: Path, build: Any, error: type, as_dir: bool) -> None:
    canary = tmp_path / "canary"
    canary.write_bytes(b"canary")
    layout = build(Layout())
    source = _write(layout, tmp_path / ("layout" if as_dir else "image.tar"), as_dir)
    with Store(tmp_path / "store") as store:
        with pytest.raises(error) as info:
            store.load(str(source))
        assert "\n" not in str(info.value)
        _store_is_empty(store)
    assert canary.read_bytes() == b"canary"


def test_a_dag_of_indexes_is_walked_once(tmp_path: Path) -> None:
    """20,000 mentions of one index, which mentions one image 20,000 times: linear work, one image."""
    layout = Layout()
    image = layout.image()
    inner = {"mediaType": OCI_INDEX, **layout.blob({"schemaVersion": 2, "manifests": [image] * 20_000})}
    middle = {"mediaType": OCI_INDEX, **layout.blob({"schemaVersion": 2, "manifests": [inner] * 20_000})}
    layout.index([middle] * 20_000)
    with Store(tmp_path / "store") as store:
        loaded = store.load(str(_write(layout, tmp_path / "layout", True)))
        assert len(loaded) == 1 and len(store.layers.diff_ids()) == 1


def test_fifo_and_symlinked_members_of_a_layout_dir(tmp_path: Path) -> None:
    """A FIFO would block a reader forever; a symlink out of the layout would read another file."""
    layout = Layout().index([])
    layout.index([layout.image()])
    source = _write(layout, tmp_path / "layout", True)
    layer = source / "blobs/sha256" / sha256(LAYER)[7:]
    layer.unlink()
    os.mkfifo(layer)
    with Store(tmp_path / "store") as store:
        with pytest.raises(CorruptArchive, match="not a regular file"):
            store.load(str(source))
        layer.unlink()
        (tmp_path / "outside").write_bytes(LAYER)
        layer.symlink_to(tmp_path / "outside")
        with pytest.raises(UnsafeArchiveEntry, match="points outside the archive"):
            store.load(str(source))
        _store_is_empty(store)


def test_truncated_archive_is_corrupt(tmp_path: Path) -> None:
    """Cut anywhere before its last member's data ends. (Without only the end marker, every member is
    whole and checked by digest: tarfile, like Go's archive/tar, reads that.)"""
    layout = Layout()
    layout.index([layout.image()])
    data = _write(layout, tmp_path / "image.tar", False).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
    with Store(tmp_path / "store") as store:
        for cut in range(100, last.offset_data + last.size, 300):
            (tmp_path / "cut.tar").write_bytes(data[:cut])
            with pytest.raises(LayerStoreError):
                store.load(str(tmp_path / "cut.tar"))
        _store_is_empty(store)


def test_shared_layer_symlinks_of_a_classic_docker_save_load(tmp_path: Path) -> None:
    """docker save writes a layer shared by two images once and links the other: ../<id>/layer.tar."""
    config_name = sha256(CONFIG)[7:] + ".json"
    files = {"manifest.json": json.dumps([
        {"Config": config_name, "RepoTags": ["one:v1"], "Layers": ["aaa/layer.tar"]},
        {"Config": config_name, "RepoTags": ["two:v1"], "Layers": ["bbb/layer.tar"]},
    ]).encode(), config_name: CONFIG, "aaa/layer.tar": LAYER}  # fmt: skip
    path = tmp_path / "save.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("bbb/layer.tar")
        link.type, link.linkname = tarfile.SYMTYPE, "../aaa/layer.tar"
        tar.addfile(link)
        escape = tarfile.TarInfo("ccc/layer.tar")
        escape.type, escape.linkname = tarfile.SYMTYPE, "../../aaa/layer.tar"
        tar.addfile(escape)
    with Store(tmp_path / "store") as store:
        assert [image.names for image in store.load(str(path))] == [("one:v1",), ("two:v1",)]
    bad = json.loads(files["manifest.json"])
    bad[1]["Layers"] = ["ccc/layer.tar"]
    with tarfile.open(path, "a") as tar:
        info = tarfile.TarInfo("manifest.json")
        data = json.dumps(bad).encode()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with Store(tmp_path / "store2") as store:
        with pytest.raises(UnsafeArchiveEntry, match="points outside the archive"):
            store.load(str(path))


def test_cli_prints_one_line_for_a_lying_layout(tmp_path: Path) -> None:
    layout = Layout()
    layout.index([layout.image(layer_size=len(LAYER) + 1)])
    source = _write(layout, tmp_path / "layout", True)
    result = subprocess.run([sys.executable, "-m", "layerstore", "--root", str(tmp_path / "store"), "load", "-i", str(source)],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == f"Error: blob {sha256(LAYER)}: size mismatch (expected {len(LAYER) + 1} bytes, got {len(LAYER)})\n"
