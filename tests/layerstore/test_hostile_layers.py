"""Hostile layer tars beyond path traversal: header fields, whiteouts, truncation, bombs, no root.

Traversal cases live in test_unpack's HOSTILE table; this file covers what a
layer can break without leaving its directory: numbers no kernel takes, cut
or corrupted streams at every boundary, decompression bombs against the
configured limit, and an unpack by an unprivileged user.
"""
from __future__ import annotations

import codecs
import gzip
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from layerstore.errors import CorruptArchive, InvalidReference, LayerStoreError, SizeLimitExceeded
from layerstore.unpack import DEFAULT_MAX_LAYER_SIZE, MAX_LAYER_SIZE_ENV, max_layer_size, unpack_layer
from test_unpack import ROOT, entry, gnu_sparse_header, make_tar, sha256, unpack_bytes
from users import NOBODY

# -- header fields no file can have -------------------------------------------------------

CORRUPT_FIELDS: dict[str, tuple[list[tuple[tarfile.TarInfo, bytes]], str]] = {
    "uid-too-big": ([entry("f", pax_headers={"uid": str(2**32)})], "owner"),
    "uid-chown-noop": ([entry("f", pax_headers={"uid": str(2**32 - 1)})], "owner"),  # (uid_t)-1: chown would skip
    "gid-negative": ([entry("f", pax_headers={"gid": "-1"})], "owner"),
    "uid-huge": ([entry("d", tarfile.DIRTYPE, pax_headers={"uid": "9" * 30})], "owner"),
    "size-negative": ([entry("f", data=b"abc", pax_headers={"size": "-5"})], "negative size"),
    "device-major-too-big": ([entry("c", tarfile.CHRTYPE, devmajor=4096, devminor=0)], "out of range"),
    "device-minor-too-big": ([entry("b", tarfile.BLKTYPE, devmajor=8, devminor=1 << 20)], "out of range"),
}


@pytest.mark.parametrize("entries, words", CORRUPT_FIELDS.values(), ids=CORRUPT_FIELDS.keys())
@pytest.mark.parametrize("privileged", [False, True], ids=["unprivileged", "privileged"])
def test_impossible_header_fields_are_refused(tmp_path: Path, entries: list, words: str, privileged: bool) -> None:
    """Refused whatever the privilege, so a layer unpacks (or not) the same for everyone."""
    if privileged and not ROOT:
        pytest.skip("needs root")
    with pytest.raises(CorruptArchive, match=words) as info:
        unpack_bytes(make_tar(entries), tmp_path / "dest", privileged=privileged)
    assert str(info.value).startswith("layer stream: tar: ")
    assert not (tmp_path / "dest").exists()


def test_file_bigger_than_the_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    """A sparse or lying header announces its size: no need to write up to the limit first."""
    header = entry("big", data=b"", pax_headers={"size": str(1 << 40)})
    blob = make_tar([header])
    with pytest.raises(SizeLimitExceeded, match='entry "big"'):
        unpack_bytes(blob, tmp_path / "dest", max_size=1 << 30)
    assert not (tmp_path / "dest").exists()


def test_a_sparse_map_longer_than_its_data_is_refused(tmp_path: Path) -> None:
    """The map's lengths are bytes of this entry: reading more would take the next header as data."""
    sparse = gnu_sparse_header("s", 8192, [(0, 4096)], b"x" * 512)
    after = make_tar([entry("after", data=b"the next entry")])
    with pytest.raises(CorruptArchive, match='sparse map of "s" exceeds its data'):
        unpack_bytes(sparse + after, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_broken_times_become_the_epoch_and_odd_xattrs_are_skipped(tmp_path: Path) -> None:
    """Docker's Chtimes puts unrepresentable times at the epoch; an xattr record no kernel takes is skipped."""
    tar_bytes = make_tar([
        entry("inf", pax_headers={"mtime": "1e400"}),
        entry("nan", pax_headers={"mtime": "nan"}),
        entry("far", pax_headers={"mtime": "9" * 40, "atime": "9" * 40}),
        entry("x", pax_headers={"SCHILY.xattr.user.a\0b": "v", "LIBARCHIVE.xattr.user.c": "a", "SCHILY.xattr.user.ok": "1"}),
    ])  # fmt: skip
    result = unpack_bytes(tar_bytes, tmp_path / "dest")
    for name in ("inf", "nan", "far"):
        assert (tmp_path / "dest" / name).stat().st_mtime_ns == 0
    assert os.listxattr(tmp_path / "dest/x") == ["user.ok"]
    assert sorted(s.reason for s in result.skipped) == ['xattr "user.a\\x00b": malformed PAX record',
                                                        'xattr "user.c": malformed PAX record']  # fmt: skip


def test_aufs_metadata_is_skipped_as_docker_does(tmp_path: Path) -> None:
    tar_bytes = make_tar([
        entry(".wh..wh.plnk", tarfile.DIRTYPE),
        entry(".wh..wh.plnk/123.456", data=b"aufs hard link store"),
        entry(".wh..wh.aufs", data=b""),
        entry("etc/.wh..wh..opq"),  # the opaque marker is not aufs metadata
        entry("etc/.wh.hosts", tarfile.LNKTYPE, linkname="etc/.wh..wh..opq"),  # a hard link to a marker is one too
    ])  # fmt: skip
    result = unpack_bytes(tar_bytes, tmp_path / "dest")
    assert sorted(os.listdir(tmp_path / "dest")) == ["etc"]
    assert sorted(os.listdir(tmp_path / "dest/etc")) == [".wh..wh..opq", ".wh.hosts"]
    assert [s.name for s in result.skipped] == [".wh..wh.plnk", ".wh..wh.plnk/123.456", ".wh..wh.aufs"]


# -- truncation and checksums at every boundary ------------------------------------------------


def _layered_tar() -> bytes:
    """Every kind of header block in one stream: PAX records, GNU long names, data, an empty file."""
    pax = make_tar([
        entry("dir", tarfile.DIRTYPE),
        entry("dir/" + "p" * 150, data=os.urandom(700), pax_headers={"mtime": "1.5"}),
        entry("dir/empty"),
        entry("dir/link", tarfile.SYMTYPE, linkname="t" * 120),
    ])  # fmt: skip
    gnu = make_tar([entry("g/" + "l" * 120, data=os.urandom(1300))], tarfile.GNU_FORMAT)
    end = len(pax) - 1024
    while pax[end - 512 : end] == bytes(512):  # tarfile pads to a record: find the real end marker
        end -= 512
    return pax[:end] + gnu


LAYERED = _layered_tar()


def _members_end(data: bytes) -> int:
    """Offset of the end-of-archive marker."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
    return last.offset_data + -(-last.size // 512) * 512


def test_truncation_at_every_block_boundary_and_inside_each_block(tmp_path: Path) -> None:
    """Any cut before the end-of-archive marker is an error: a short layer must not pass for a small one."""
    end = _members_end(LAYERED)
    cuts = sorted({c for block in range(0, end + 1024, 512) for c in (block, block + 1, block + 100, block + 511)} - {0})
    refused = 0
    for cut in cuts:
        dest = tmp_path / f"cut{cut}"
        if cut >= end + 512:  # one zero block: tarfile and Go's archive/tar take it as the end
            unpack_bytes(LAYERED[:cut], dest)
            continue
        with pytest.raises(CorruptArchive, match="truncated|end-of-archive|inside a"):
            unpack_bytes(LAYERED[:cut], dest)
        assert not dest.exists(), cut
        refused += 1
    assert refused > 40


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_compressed_stream_cut_anywhere_is_refused(tmp_path: Path, kind: str) -> None:
    blob = gzip.compress(LAYERED) if kind == "gzip" else zstandard.ZstdCompressor(write_checksum=True).compress(LAYERED)
    for cut in sorted({*range(1, len(blob), max(1, len(blob) // 40)), len(blob) - 1}):
        with pytest.raises(CorruptArchive):
            unpack_bytes(blob[:cut], tmp_path / "dest")
        assert not (tmp_path / "dest").exists()


def test_bad_checksum_in_every_header_block(tmp_path: Path) -> None:
    """A flipped byte in any header (PAX, GNU long name, ustar) is corruption, not the end of the layer."""
    headers = []
    with tarfile.open(fileobj=io.BytesIO(LAYERED)) as tar:
        for info in tar.getmembers():
            headers += sorted({info.offset, info.offset_data - 512})
    assert len(headers) >= 8
    for offset in headers:
        broken = bytearray(LAYERED)
        broken[offset + 140] ^= 0x01  # inside the mtime field: only the checksum can tell
        with pytest.raises(CorruptArchive, match="bad header|checksum|invalid") as info:
            unpack_bytes(bytes(broken), tmp_path / "dest")
        assert not (tmp_path / "dest").exists(), (offset, info.value)


@pytest.mark.parametrize(
    "diff_id",
    ["md5:" + "0" * 32, "sha256:" + "A" * 64, "sha256:" + "0" * 63, "sha256:" + "g" * 64, "sha256:" + "0" * 64 + "\n", "sha256"],
)
def test_malformed_diff_ids_are_refused_before_anything(tmp_path: Path, diff_id: str) -> None:
    with pytest.raises(InvalidReference):
        unpack_bytes(LAYERED, tmp_path / "dest", expected_diff_id=diff_id)
    assert not (tmp_path / "dest").exists()


def test_sha512_diff_id_is_checked_with_sha512(tmp_path: Path) -> None:
    import hashlib

    good = "sha512:" + hashlib.sha512(LAYERED).hexdigest()
    assert unpack_bytes(LAYERED, tmp_path / "ok", expected_diff_id=good).diff_id == good
    wrong = "sha512:" + "0" * 128
    with pytest.raises(LayerStoreError, match="digest mismatch"):
        unpack_bytes(LAYERED, tmp_path / "bad", expected_diff_id=wrong)
    assert not (tmp_path / "bad").exists()


# -- decompression bombs and the configured limit -----------------------------------------------


class CountingReader:
    """A real file read through, counting how far the unpacker got."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb")
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self.read_bytes += len(data)
        return data


def _bomb(tmp_path: Path, kind: str) -> Path:
    """A small valid tar followed by zeros (padding after the end marker, which counts), as many
    identical compressed members or frames: 16 GiB for gzip, 256 GiB for zstd (which packs tighter),
    so both files span several read chunks. No header announces the size."""
    head = make_tar([entry("f", data=b"x")])
    piece = bytes(64 << 20)
    if kind == "gzip":
        first, unit = gzip.compress(head, 9), gzip.compress(piece, 9)
    else:
        cctx = zstandard.ZstdCompressor(level=3)
        first, unit = cctx.compress(head), cctx.compress(piece)
    path = tmp_path / f"bomb.{kind}"
    with path.open("wb") as out:
        out.write(first)
        for _ in range((16 << 30 if kind == "gzip" else 256 << 30) // len(piece)):
            out.write(unit)
    return path


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_limit_from_the_environment_stops_a_bomb_early(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = _bomb(tmp_path, kind)
    monkeypatch.setenv(MAX_LAYER_SIZE_ENV, "8m")
    reader = CountingReader(bomb)
    with pytest.raises(SizeLimitExceeded, match="limit of 8388608 bytes"):
        unpack_layer(reader, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    # Gigabytes were on offer; the unpacker stopped after a few prefetched chunks.
    assert reader.read_bytes < bomb.stat().st_size // 4


@pytest.mark.parametrize(
    "value, limit",
    [("", DEFAULT_MAX_LAYER_SIZE), ("1048576", 1 << 20), ("64g", 64 << 30), ("512MiB", 512 << 20), ("1.5k", 1536),
     ("2 GB", 2 << 30), ("1t", 1 << 40)],
)  # fmt: skip
def test_limit_takes_dockers_size_syntax(monkeypatch: pytest.MonkeyPatch, value: str, limit: int) -> None:
    monkeypatch.setenv(MAX_LAYER_SIZE_ENV, value)
    assert max_layer_size() == limit


@pytest.mark.parametrize("value", ["lots", "-5", "0", "12q", "1e9", "0.1"])
def test_a_bad_limit_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(MAX_LAYER_SIZE_ENV, value)
    with pytest.raises(LayerStoreError, match=f"^environment variable {MAX_LAYER_SIZE_ENV}: not a size") as info:
        unpack_bytes(LAYERED, tmp_path / "dest")
    assert type(info.value) is LayerStoreError
    assert not (tmp_path / "dest").exists()


def test_default_limit_is_64_gib() -> None:
    assert DEFAULT_MAX_LAYER_SIZE == 64 << 30


# -- an unprivileged unpack ----------------------------------------------------------------------


def _unpack_as_nobody(tar_bytes: bytes, dest_parent: int) -> dict[str, object]:
    """Fork, drop to uid/gid 65534 for good, unpack into a directory nobody owns; the child's report as JSON."""
    codecs.lookup("ascii")  # load what the child needs while it may still read the interpreter's files
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            dest = f"/proc/self/fd/{dest_parent}/dest"  # the parent path may not be searchable by nobody
            try:
                result = unpack_layer(io.BytesIO(tar_bytes), dest)
                report: dict[str, object] = {"skipped": [[s.name, s.reason] for s in result.skipped]}
            except LayerStoreError as exc:
                report = {"error": str(exc)}
            os.write(write_end, json.dumps(report).encode())
            code = 0
        except BaseException as exc:  # noqa: BLE001 - the parent shows it
            os.write(write_end, repr(exc).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, data
    return json.loads(data)  # type: ignore[no-any-return]


@pytest.mark.skipif(not ROOT, reason="needs root to drop to another user")
def test_devices_and_setid_files_unpacked_by_nobody(tmp_path: Path) -> None:
    """Without root: devices skipped (not refused), owners ignored, set-id bits only ever for nobody itself."""
    owned = tmp_path / "nobody"
    owned.mkdir()
    os.chown(owned, NOBODY, NOBODY)
    canary = tmp_path / "canary"
    canary.write_bytes(b"canary")
    tar_bytes = make_tar([
        entry("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o666),
        entry("dev/mem", tarfile.CHRTYPE, devmajor=1, devminor=1, mode=0o666),
        entry("dev/mem-link", tarfile.LNKTYPE, linkname="dev/mem"),
        entry("bin/su", data=b"\x7fELF", mode=0o4755, uid=0, gid=0),
        entry("bin/wall", data=b"\x7fELF", mode=0o2755, uid=0, gid=5),
        entry("etc/secret", data=b"x", mode=0o600, uid=0),
        entry("x", data=b"y", pax_headers={"SCHILY.xattr.trusted.t": "v", "SCHILY.xattr.security.capability": "c"}),
    ])  # fmt: skip
    fd = os.open(owned, os.O_RDONLY | os.O_DIRECTORY)
    try:
        report = _unpack_as_nobody(tar_bytes, fd)
    finally:
        os.close(fd)
    assert "error" not in report, report
    skipped = [(name, reason.split(":")[0]) for name, reason in report["skipped"]]  # type: ignore[union-attr]
    assert sorted(skipped) == [("dev/mem", "device node needs root"), ("dev/mem-link", 'hard link to skipped entry "dev/mem"'),
                               ("dev/sda", "device node needs root"), ("x", 'xattr "security.capability"'),
                               ("x", 'xattr "trusted.t"')]  # fmt: skip
    dest = owned / "dest"
    assert sorted(os.listdir(dest / "dev")) == []
    for path in dest.rglob("*"):
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), path
        assert not stat.S_ISCHR(st.st_mode) and not stat.S_ISBLK(st.st_mode)
    # Set-id bits stay, but for nobody's own ids (checked above): they give nobody nothing it did not have.
    assert stat.S_IMODE((dest / "bin/su").stat().st_mode) == 0o4755
    assert stat.S_IMODE((dest / "bin/wall").stat().st_mode) == 0o2755
    assert canary.read_bytes() == b"canary"


@pytest.mark.skipif(not ROOT, reason="needs root to drop to another user")
def test_traversal_refused_for_nobody_too(tmp_path: Path) -> None:
    owned = tmp_path / "nobody"
    owned.mkdir()
    os.chown(owned, NOBODY, NOBODY)
    os.chmod(tmp_path, 0o777)  # nobody could write here: only the unpacker's rules keep it out
    canary = tmp_path / "canary"
    canary.write_bytes(b"canary")
    os.chmod(canary, 0o666)
    fd = os.open(owned, os.O_RDONLY | os.O_DIRECTORY)
    try:
        report = _unpack_as_nobody(make_tar([entry("s", tarfile.SYMTYPE, linkname=str(tmp_path)),
                                             entry("s/canary", data=b"pwned")]), fd)  # fmt: skip
    finally:
        os.close(fd)
    assert "parent \"s\" is a symbolic link" in str(report["error"])
    assert canary.read_bytes() == b"canary" and os.listdir(owned) == []


def test_cli_prints_a_refused_layer_in_one_line(tmp_path: Path) -> None:
    """The CLI path: a hostile layer in an OCI layout is one line on stderr, exit 1, no traceback."""
    layer = make_tar([entry("../canary", data=b"pwned")])
    layout = tmp_path / "layout"
    _oci_layout(layout, layer)
    result = subprocess.run([sys.executable, "-m", "layerstore", "--root", str(tmp_path / "store"), "load", "-i", str(layout)],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert lines == ['Error: layer entry "../canary": escapes the layer root (in layer ' + sha256(layer) + ")"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "canary").exists()


def _oci_layout(root: Path, layer: bytes) -> None:
    def blob(data: bytes) -> dict[str, object]:
        path = root / "blobs/sha256" / sha256(data)[7:]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return {"digest": sha256(data), "size": len(data)}

    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(layer)}]}).encode()  # fmt: skip
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **blob(manifest)}]}
    (root / "index.json").write_text(json.dumps(index))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
