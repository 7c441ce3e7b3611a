"""Structure-aware fuzzing of everything that reads untrusted bytes: layer tars, JSON documents, archives.

Inputs are built close to valid (real tar streams from generated entries,
real manifests and indexes) and then broken (bytes flipped, cut, compressed,
fields replaced), where the parsers have the most decisions to make. The
property is the same everywhere: a LayerStoreError or a well-formed result,
never another exception, and nothing written outside the destination.

Each test runs ``FUZZ_EXAMPLES`` examples (default: a CI-sized number,
about a minute for the file); set it higher for a long run. Crashes found
by long runs are kept as ``@example`` cases, so every run replays them.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
import zstandard
from budgets import long_run_marks, set_by_hand
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from layerstore.archive import find_images, open_archive
from layerstore.digest import digest_bytes, parse_digest
from layerstore.errors import LayerStoreError
from layerstore.model import MAX_SIZE, Descriptor, ImageConfig, Manifest, load_json
from layerstore.registry.pull import choose_manifest
from layerstore.platforms import Platform
from layerstore.unpack import unpack_layer
from test_unpack import gnu_sparse_header

EXAMPLES = set_by_hand("FUZZ_EXAMPLES")
pytestmark = long_run_marks("FUZZ_EXAMPLES", seconds_each=0.2)
FUZZ = settings(
    max_examples=EXAMPLES or 600,
    deadline=None,  # the machine is shared: no timing in the property
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    derandomize=EXAMPLES is None,  # CI: the same examples every run; long runs explore
    database=None,
)

# -- layer tars -----------------------------------------------------------------------

# Where an escape would land: the sandbox holds the canary, an empty directory and the
# destination; link targets name it by its absolute path, so it is fixed per process.
SANDBOX = Path(tempfile.gettempdir()) / f"layerstore-fuzz-{os.getpid()}"
PARTS = ["a", "b", "c", "..", ".", "", ".wh.", ".wh.a", ".wh..", ".wh..wh..opq", ".wh..wh.plnk",
         "n" * 256, "\udcff", "x\0y", "canary", "dest"]  # fmt: skip
TYPES = [tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE,
         tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.CONTTYPE, b"V", b"x", b"Z"]  # fmt: skip
PAX_KEYS = ["mtime", "atime", "uid", "gid", "size", "path", "linkpath", "uname", "SCHILY.xattr.user.k",
            "SCHILY.xattr.trusted.overlay.opaque", "SCHILY.xattr.", "SCHILY.xattr.user.\0", "LIBARCHIVE.xattr.user.k", "GNU.sparse.map",
            "GNU.sparse.size", "GNU.sparse.realsize", "GNU.sparse.major", "GNU.sparse.minor", "GNU.sparse.name",
            "GNU.sparse.offset", "GNU.sparse.numbytes"]  # fmt: skip
PAX_VALUES = st.one_of(
    st.sampled_from(["0", "-1", "1", "1e400", "nan", "99999999999999999999999", "1.5", "", "0,5,10,3", "1", "a/b",
                     "../x", "/", "4294967295", "\0", "AAAA", "!!!", "a"]),  # fmt: skip
    st.text(max_size=12),
)


def _path(parts: list[str], absolute: bool) -> str:
    return ("/" if absolute else "") + "/".join(parts)


NAMES = st.builds(_path, st.lists(st.sampled_from(PARTS), min_size=1, max_size=5), st.booleans())
LINKS = st.one_of(NAMES, st.sampled_from(["..", "../canary", "../..", "../outside", str(SANDBOX), str(SANDBOX / "canary"),
                                          str(SANDBOX / "outside")]))  # fmt: skip


@st.composite
def tar_entries(draw: st.DrawFn) -> list[tuple[tarfile.TarInfo, bytes]]:
    """A list of tar entries: names and link targets from a hostile alphabet, odd sizes and PAX records."""
    entries = []
    for _ in range(draw(st.integers(1, 8))):
        info = tarfile.TarInfo(draw(NAMES))
        info.type = draw(st.sampled_from(TYPES))
        info.linkname = draw(LINKS)
        data = draw(st.binary(max_size=1500)) if info.type in tarfile.REGULAR_TYPES else b""
        info.size = len(data)
        info.mode = draw(st.sampled_from([0o644, 0o755, 0o4755, 0o000, 0o7777]))
        info.uid = draw(st.sampled_from([0, 1000, 65534, 2**21]))
        info.mtime = draw(st.sampled_from([0, 1_700_000_000, 2**33]))
        info.devmajor, info.devminor = draw(st.sampled_from([(1, 3), (0, 0), (4095, 2**20 - 1)]))
        info.pax_headers = draw(st.dictionaries(st.sampled_from(PAX_KEYS), PAX_VALUES, max_size=3))
        entries.append((info, data))
    return entries


def build_tar(entries: list[tuple[tarfile.TarInfo, bytes]], fmt: int) -> bytes | None:
    """The tar stream tarfile writes for ``entries``, or None where tarfile refuses to write them."""
    out = io.BytesIO()
    try:
        with tarfile.open(fileobj=out, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
            for info, data in entries:
                if fmt != tarfile.PAX_FORMAT:
                    info.pax_headers = {}
                tar.addfile(info, io.BytesIO(data) if info.type in tarfile.REGULAR_TYPES else None)
    except (ValueError, UnicodeError, OverflowError):  # a name or number this format cannot hold
        return None
    return out.getvalue()


@st.composite
def layer_blobs(draw: st.DrawFn) -> bytes:
    """A real tar stream (sometimes with a hand-made sparse entry), then mutated, then maybe compressed."""
    fmt = draw(st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]))
    data = build_tar(draw(tar_entries()), fmt) or build_tar([(tarfile.TarInfo("f"), b"")], fmt)
    assert data is not None
    if draw(st.booleans()):
        pairs = draw(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 700)), max_size=4))
        sparse = gnu_sparse_header(draw(st.sampled_from(["s", "../s", "a/s"])), draw(st.integers(0, 9000)),
                                   pairs, draw(st.binary(max_size=1200)))  # fmt: skip
        data = sparse + data
    compress = draw(st.sampled_from(["none", "gzip", "zstd"]))
    before = draw(st.booleans())  # break the tar, or the compressed stream around it
    if before:
        data = mutate(draw, data)
    data = {"none": lambda b: b, "gzip": lambda b: gzip.compress(b, 1),
            "zstd": lambda b: zstandard.ZstdCompressor(level=1).compress(b)}[compress](data)  # fmt: skip
    return data if before else mutate(draw, data)


def mutate(draw: st.DrawFn, data: bytes) -> bytes:
    """Flip, overwrite, cut or extend ``data``; header fields are the likeliest targets."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        if not buf:
            break
        op = draw(st.sampled_from(["flip", "field", "cut", "cut-block", "append", "zero"]))
        at = draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[at] ^= draw(st.integers(1, 255))
        elif op == "field":  # a header field: name, mode, size, chksum, type, linkname, magic
            block = at - at % 512
            start = block + draw(st.sampled_from([0, 100, 124, 136, 148, 156, 157, 257, 345]))
            chunk = draw(st.binary(min_size=1, max_size=12))
            buf[start : start + len(chunk)] = chunk
        elif op == "cut":
            del buf[at:]
        elif op == "cut-block":
            del buf[at - at % 512 :]
        elif op == "append":
            buf += draw(st.binary(max_size=600))
        else:
            buf[at : at + 512] = bytes(min(512, len(buf) - at))
    return bytes(buf)


def _sandbox_state(sandbox: Path) -> list[tuple[str, bytes, int]]:
    return [(p.name, p.read_bytes() if p.is_file() else b"", p.lstat().st_nlink) for p in sorted(sandbox.iterdir())]


@pytest.fixture(scope="module")
def sandbox() -> Any:
    SANDBOX.mkdir()
    yield SANDBOX
    _force_remove(SANDBOX)


def check_unpack(sandbox: Path, blob: bytes, privileged: bool) -> None:
    """The property: success or a LayerStoreError, and the sandbox around the destination untouched."""
    for child in list(sandbox.iterdir()):
        if child.is_dir() and not child.is_symlink():
            _force_remove(child)
        else:
            child.unlink()
    (sandbox / "canary").write_bytes(b"canary")
    (sandbox / "outside").mkdir()
    before = _sandbox_state(sandbox)
    dest = sandbox / "dest"
    try:
        unpack_layer(io.BytesIO(blob), dest, privileged=privileged, max_size=1 << 24)
    except LayerStoreError as exc:
        event(f"refused: {type(exc).__name__}")
        assert not dest.exists(), "a failed unpack left its destination behind"
    else:
        event("unpacked")
        _force_remove(dest)
    assert _sandbox_state(sandbox) == before
    assert list((sandbox / "outside").iterdir()) == []


def _force_remove(path: Path) -> None:
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, 0o700)
    shutil.rmtree(path)


@FUZZ
@given(blob=layer_blobs(), privileged=st.booleans())
def test_fuzz_unpack(sandbox: Path, blob: bytes, privileged: bool) -> None:
    check_unpack(sandbox, blob, privileged)


# -- JSON documents -------------------------------------------------------------------

HEX = "a" * 64
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20) | st.sampled_from(["sha256:" + HEX, "sha512:" + "b" * 128, "md5:" + "c" * 32,
                                             "sha256:" + HEX.upper(), "sha256:abc", "", "layers"]),  # fmt: skip
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


def descriptor(media_type: str, size: int = 10) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": "sha256:" + HEX, "size": size}


SEEDS: list[dict[str, Any]] = [
    {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
     "config": descriptor("application/vnd.oci.image.config.v1+json"),
     "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip"), descriptor("application/vnd.oci.image.layer.v1.tar")]},
    {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
     "manifests": [{**descriptor("application/vnd.oci.image.manifest.v1+json"),
                    "platform": {"os": "linux", "architecture": "amd64"}, "annotations": {"k": "v"}}]},
    {"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
     "rootfs": {"type": "layers", "diff_ids": ["sha256:" + HEX]}, "config": {"Env": ["A=b"]}},
]  # fmt: skip


@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    """A valid manifest, index or config with a few fields replaced, dropped or added; sometimes byte-broken."""
    doc = json.loads(json.dumps(draw(st.sampled_from(SEEDS))))
    for _ in range(draw(st.integers(0, 4))):
        containers = list(_containers(doc))
        target = draw(st.sampled_from(containers))
        op = draw(st.sampled_from(["replace", "drop", "add"]))
        if isinstance(target, dict) and target:
            key = draw(st.sampled_from(sorted(target)))
            if op == "drop":
                del target[key]
            else:
                target[key if op == "replace" else draw(st.text(max_size=8))] = draw(JSON_VALUES)
        elif isinstance(target, list):
            if target and op != "add":
                target[draw(st.integers(0, len(target) - 1))] = draw(JSON_VALUES)
            else:
                target.append(draw(JSON_VALUES))
    text = json.dumps(doc).encode()
    choice = draw(st.sampled_from(["as-is", "as-is", "bytes", "nan", "surrogate", "deep"]))
    if choice == "bytes":
        text = mutate(draw, text)
    elif choice == "nan":
        text = text.replace(b"10", b"NaN", 1)
    elif choice == "surrogate":
        text = text.replace(b'"v"', b'"\\ud800"').replace(b'"linux"', b'"\\udfff"')
    elif choice == "deep":
        text = text.replace(b'"amd64"', b"[" * 5000 + b"]" * 5000, 1)
    return text


def _containers(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        yield value
        for child in value.values() if isinstance(value, dict) else value:
            yield from _containers(child)


def _well_formed(desc: Descriptor) -> None:
    parse_digest(desc.digest)
    assert isinstance(desc.media_type, str) and 0 <= desc.size <= MAX_SIZE
    assert all(isinstance(v, str) for v in desc.annotations.values())
    assert desc.platform is None or isinstance(desc.platform, dict)


@FUZZ
@given(data=near_valid())
@example(data=b'{"config": {"digest": "sha256:' + HEX.encode() + b'", "size": 1e400}}')
def test_fuzz_documents(data: bytes) -> None:
    """Every parser of manifests, configs and indexes: a well-formed value or a LayerStoreError."""
    try:
        manifest = Manifest.parse(data, "manifest")
    except LayerStoreError:
        pass
    else:
        for desc in (manifest.config, *manifest.layers):
            _well_formed(desc)
    try:
        config = ImageConfig.parse(data, "config")
    except LayerStoreError:
        pass
    else:
        for value in (config.created, config.variant):
            assert value is None or isinstance(value, str)
        assert isinstance(config.architecture, str) and isinstance(config.os, str)
        for diff_id in config.diff_ids:
            parse_digest(diff_id)
    try:
        _well_formed(choose_manifest(data, Platform.of("linux", "amd64", ""), "index"))
    except LayerStoreError:
        pass
    try:
        json.dumps(load_json(data, "document"), ensure_ascii=False).encode()
    except LayerStoreError:
        pass


# -- archives -----------------------------------------------------------------------------


def _blob(files: dict[str, bytes], doc: Any) -> dict[str, Any]:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    digest = digest_bytes(raw)
    files[f"blobs/sha256/{digest[7:]}"] = raw
    return {"digest": digest, "size": len(raw)}


@st.composite
def archives(draw: st.DrawFn) -> dict[str, bytes]:
    """The members of an OCI layout or docker-archive, built valid and then broken."""
    files: dict[str, bytes] = {}
    layer = _blob(files, b"\0" * 1024)
    config = _blob(files, {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}})
    manifest_doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}]}  # fmt: skip
    manifest = _blob(files, manifest_doc)
    files["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
    entry = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
             "annotations": {"org.opencontainers.image.ref.name": "v1"}}  # fmt: skip
    index: dict[str, Any] = {"schemaVersion": 2, "manifests": [entry]}
    if draw(st.booleans()):  # nest the manifest in an index, sometimes many levels deep
        for _ in range(draw(st.integers(1, 12))):
            index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
                                                        **_blob(files, index)}]}  # fmt: skip
    files["index.json"] = json.dumps(index).encode()
    if draw(st.booleans()):
        files["manifest.json"] = json.dumps([{"Config": f"blobs/sha256/{config['digest'][7:]}", "RepoTags": ["x:v1"],
                                              "Layers": [f"blobs/sha256/{layer['digest'][7:]}"]}]).encode()  # fmt: skip
    victim = draw(st.sampled_from(sorted(files)))
    how = draw(st.sampled_from(["json", "bytes", "rename", "drop", "none"]))
    if how == "json" and files[victim].startswith((b"{", b"[")):
        doc = json.loads(files[victim])
        for target in list(_containers(doc))[:1] + [draw(st.sampled_from(list(_containers(doc))))]:
            if isinstance(target, dict) and target:
                target[draw(st.sampled_from(sorted(target)))] = draw(
                    JSON_VALUES | st.sampled_from(["../x", "/etc/passwd", "blobs/../../x", "a\0b"]))
        files[victim] = json.dumps(doc).encode()
    elif how == "bytes":
        files[victim] = mutate(draw, files[victim])
    elif how == "rename":
        files[draw(st.sampled_from(["../evil", "/abs", "blobs/sha256/" + "0" * 64, "manifest.json"]))] = files.pop(victim)
    elif how == "drop":
        del files[victim]
    return files


def _write_tar(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _write_dir(path: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        target = path / name.lstrip("/").replace("..", "dotdot")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


@FUZZ
@given(files=archives(), as_dir=st.booleans(), cut=st.none() | st.integers(0, 20000))
def test_fuzz_archives(files: dict[str, bytes], as_dir: bool, cut: int | None) -> None:
    """find_images on a broken layout or docker-archive: images whose members stay inside, or a LayerStoreError."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        root = Path(tmp)
        source = root / ("layout" if as_dir else "image.tar")
        if as_dir:
            source.mkdir()
            _write_dir(source, files)
        else:
            _write_tar(source, files)
            if cut is not None:
                source.write_bytes(source.read_bytes()[:cut])
        try:
            with open_archive(str(source), root) as archive:
                for image in find_images(archive):
                    for member in (image.config_member, *image.layer_members):
                        assert not member.startswith("/") and ".." not in member.split("/")
                        archive.open(member).close()
                event("images found")
        except LayerStoreError as exc:
            event(f"refused: {type(exc).__name__}")
