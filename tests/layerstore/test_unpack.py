"""unpack_layer on layers made by real tools, on hostile tars, and on broken streams.

Layer tars come from GNU tar and umoci where the point is compatibility, and
from Python's tarfile where the point is a precise (often hostile) entry.
Every failure must leave nothing behind and nothing changed outside.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import subprocess
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from layerstore.errors import (
    AlreadyExists,
    CorruptArchive,
    DigestMismatch,
    InvalidReference,
    SizeLimitExceeded,
    UnsafeArchiveEntry,
    UnsupportedMediaType,
)
from layerstore.unpack import UnpackResult, unpack_layer

ROOT = os.geteuid() == 0
root_only = pytest.mark.skipif(not ROOT, reason="needs root (chown, device nodes, trusted xattrs)")

OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
NS = 1_000_000_000


# -- comparing trees -------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """What a layer entry is, as far as a changeset can tell (atime and ctime are not)."""

    kind: str
    mode: int
    uid: int
    gid: int
    size: int | None
    content: str | None
    target: str | None
    rdev: tuple[int, int] | None
    mtime_ns: int | None
    xattrs: tuple[tuple[str, bytes], ...]


def snapshot(root: Path, *, mtime_ns: bool = True, mtime_s: bool = False) -> dict[str, Node]:
    """Every entry under ``root`` (root itself as "."), plus "links:" groups of hard-linked names."""
    nodes: dict[str, Node] = {}
    inodes: dict[int, list[str]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        rel = "." if path == root else str(path.relative_to(root))
        st = path.lstat()
        kind = _kind(st.st_mode)
        if kind == "file":
            inodes.setdefault(st.st_ino, []).append(rel)
        nodes[rel] = Node(
            kind=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            size=st.st_size if kind == "file" else None,
            content=hashlib.sha256(path.read_bytes()).hexdigest() if kind == "file" else None,
            target=os.readlink(path) if kind == "symlink" else None,
            rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("chr", "blk") else None,
            mtime_ns=st.st_mtime_ns if mtime_ns and kind != "symlink" else (st.st_mtime_ns // NS if mtime_s else None),
            xattrs=_xattrs(path) if kind != "symlink" else (),
        )
    for names in inodes.values():
        if len(names) > 1:
            nodes["links:" + ",".join(sorted(names))] = Node("links", 0, 0, 0, None, None, None, None, None, ())
    return nodes


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "chr"), (stat.S_ISBLK, "blk")):  # fmt: skip
        if test(mode):
            return name
    return "other"


def _xattrs(path: Path) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    # security.selinux and ACLs come from the machine, not the layer.
    keep = [n for n in names if not n.startswith(("security.selinux", "system."))]
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in keep))


def assert_same_tree(got: dict[str, Node], want: dict[str, Node]) -> None:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    differ = {k: (got[k], want[k]) for k in sorted(set(got) & set(want)) if got[k] != want[k]}
    assert not (missing or extra or differ), f"missing={missing} extra={extra} differ={differ}"


# -- making layers -----------------------------------------------------------------


def populate(root: Path) -> None:
    """A small root filesystem with every kind of entry a layer carries."""
    def write(rel: str, data: bytes, mode: int = 0o644, owner: tuple[int, int] | None = None) -> Path:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if owner and ROOT:
            os.chown(path, *owner)
        path.chmod(mode)  # after chown, which clears set-id bits
        return path

    write("etc/hosts", b"127.0.0.1 localhost\n")
    write("etc/shadow", b"root:*:19000::::::\n", 0o640, (0, 42))
    write("usr/bin/su", os.urandom(5000), 0o4755)
    write("usr/bin/wall", os.urandom(700), 0o2755, (0, 5))
    write("usr/lib/big.bin", os.urandom(3 * 1024 * 1024 + 123))  # crosses 1 MiB chunks
    write("usr/lib/empty", b"")
    write("home/user/.profile", b"export PS1='$ '\n", 0o600, (1000, 1000))
    long_dir = "usr/share/" + "d" * 90
    write(f"{long_dir}/{'f' * 120}.txt", b"a name longer than 100 bytes\n")
    write(".wh.gone", b"", 0o600)  # OCI whiteouts are plain files in the changeset
    write("etc/.wh..wh..opq", b"", 0o600)
    write("etc/locked", b"no access\n", 0o000)
    os.link(root / "usr/bin/su", root / "usr/bin/su-hardlink")
    os.link(root / f"{long_dir}/{'f' * 120}.txt", root / f"{long_dir}/{'g' * 120}.txt")
    (root / "usr/lib64").symlink_to("lib")
    (root / "etc/localtime").symlink_to("/usr/share/zoneinfo/Etc/UTC")
    (root / "usr/long-target").symlink_to("../" + "t" * 150)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    (root / "srv/empty/dir").mkdir(parents=True)
    os.mkfifo(root / "run-fifo", 0o620)
    if ROOT:
        (root / "dev").mkdir()
        os.mknod(root / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(root / "dev/loop0", stat.S_IFBLK | 0o660, os.makedev(7, 0))
        os.chown(root / "home/user", 1000, 1000)
    os.setxattr(root / "etc/hosts", "user.comment", b"kept \x00\xff bytes")
    if ROOT:
        os.setxattr(root / "usr/bin/wall", "trusted.note", b"only root sees this")
        os.setxattr(root / "usr/lib/empty", "security.capability", bytes.fromhex("0100000200200000000000000000000000000000"))
    os.utime(root / "etc/hosts", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    # Directory mtimes last: adding children changed them.
    for path in sorted((p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        os.utime(path, ns=(1_500_000_000_987_654_321, 1_500_000_000_987_654_321))


def gnu_tar(src: Path, out: Path, *options: str) -> Path:
    """A layer as GNU tar writes it: ``./``-prefixed names, numeric owners."""
    subprocess.run(["tar", "--numeric-owner", *options, "-C", str(src), "-cf", str(out), "."], check=True)
    return out


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **fields: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = 1_700_000_000
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def make_tar(entries: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return out.getvalue()


def gnu_sparse_header(name: str, realsize: int, pairs: list[tuple[int, int]], data: bytes) -> bytes:
    """An old-GNU sparse entry ('S') by hand: tarfile reads these but cannot write them."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = len(data)
    block = bytearray(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")[-512:])
    for i, (offset, length) in enumerate(pairs[:4]):
        block[386 + 24 * i : 398 + 24 * i] = b"%011o\0" % (offset & 0o77777777777)
        block[398 + 24 * i : 410 + 24 * i] = b"%011o\0" % (length & 0o77777777777)
    block[483:495] = b"%011o\0" % (realsize & 0o77777777777)
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block) + data + bytes(-len(data) % 512)


def unpack_bytes(data: bytes, dest: Path, **kwargs: object) -> UnpackResult:
    return unpack_layer(io.BytesIO(data), dest, **kwargs)  # type: ignore[arg-type]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- layers from real tools ----------------------------------------------------------


def test_gnu_tar_layer_unpacks_to_the_same_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    populate(src)
    layer = gnu_tar(src, tmp_path / "layer.tar", "--format=gnu")
    result = unpack_layer(layer.open("rb"), tmp_path / "dest", media_type=OCI_TAR)
    # GNU format keeps whole seconds and no xattrs.
    want = {k: _no_xattrs(v) for k, v in snapshot(src, mtime_ns=False, mtime_s=True).items()}
    assert_same_tree(snapshot(tmp_path / "dest", mtime_ns=False, mtime_s=True), want)
    assert result.diff_id == sha256(layer.read_bytes())
    assert result.size == layer.stat().st_size
    assert result.compression == "none" and result.compressed_digest == result.diff_id
    with tarfile.open(layer) as tar:
        assert result.entries == len(tar.getmembers())
    assert result.skipped == () and result.implicit_dirs == ()


def test_pax_tar_keeps_nanosecond_times_and_xattrs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    populate(src)
    layer = gnu_tar(src, tmp_path / "layer.tar", "--format=pax", "--xattrs", "--xattrs-include=*")
    unpack_layer(layer.open("rb"), tmp_path / "dest", expected_diff_id=sha256(layer.read_bytes()))
    assert_same_tree(snapshot(tmp_path / "dest"), snapshot(src))
    hosts = tmp_path / "dest/etc/hosts"
    assert hosts.stat().st_mtime_ns == 1_600_000_000_123_456_789
    assert os.getxattr(hosts, "user.comment") == b"kept \x00\xff bytes"


def _no_xattrs(node: Node) -> Node:
    return Node(**{**node.__dict__, "xattrs": ()})


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_sparse_file_keeps_its_holes(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with (src / "sparse").open("wb") as f:
        f.seek(1 << 20)
        f.write(b"A" * 5000)
        f.seek(6 << 20)
        f.write(b"B" * 100)
        f.truncate(9 << 20)
    layer = gnu_tar(src, tmp_path / "layer.tar", f"--format={fmt}", "--sparse")
    assert layer.stat().st_size < 1 << 20  # the holes are not in the archive
    unpack_layer(layer.open("rb"), tmp_path / "dest")
    out = tmp_path / "dest/sparse"
    assert out.read_bytes() == (src / "sparse").read_bytes()
    assert out.stat().st_size == 9 << 20
    assert out.stat().st_blocks * 512 < 1 << 20  # holes, not 9 MiB of zeros


@pytest.mark.parametrize("kind", ["gzip", "zstd", "none"])
def test_compressed_layers_share_one_diff_id(tmp_path: Path, kind: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    populate(src)
    tar_bytes = gnu_tar(src, tmp_path / "layer.tar", "--format=pax").read_bytes()
    blob = {"gzip": lambda b: gzip.compress(b, 6), "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
            "none": lambda b: b}[kind](tar_bytes)  # fmt: skip
    media = {"gzip": OCI_GZIP, "zstd": OCI_ZSTD, "none": OCI_TAR}[kind]
    result = unpack_bytes(blob, tmp_path / "dest", media_type=media, expected_diff_id=sha256(tar_bytes))
    assert result.compression == kind
    assert (result.diff_id, result.size) == (sha256(tar_bytes), len(tar_bytes))
    assert (result.compressed_digest, result.compressed_size) == (sha256(blob), len(blob))
    # Without --xattrs GNU tar stores none.
    assert_same_tree(snapshot(tmp_path / "dest"), {k: _no_xattrs(v) for k, v in snapshot(src).items()})


def test_multi_member_gzip_and_multi_frame_zstd(tmp_path: Path) -> None:
    tar_bytes = make_tar([entry("a", data=b"x" * 100_000), entry("b", data=b"y" * 3000)])
    half = len(tar_bytes) // 3
    members = gzip.compress(tar_bytes[:half]) + gzip.compress(tar_bytes[half:]) + b"\0" * 512  # zero padding is fine
    frames = zstandard.ZstdCompressor().compress(tar_bytes[:half]) + zstandard.ZstdCompressor().compress(tar_bytes[half:])
    for i, blob in enumerate([members, frames]):
        result = unpack_bytes(blob, tmp_path / f"d{i}", expected_diff_id=sha256(tar_bytes))
        assert (tmp_path / f"d{i}/a").read_bytes() == b"x" * 100_000
        assert result.compressed_digest == sha256(blob)


def test_streaming_from_a_pipe_with_short_reads(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    populate(src)
    layer = gnu_tar(src, tmp_path / "layer.tar", "--format=pax", "--xattrs", "--xattrs-include=*")
    with subprocess.Popen(["gzip", "-c", str(layer)], stdout=subprocess.PIPE) as gz:
        assert gz.stdout is not None
        result = unpack_layer(gz.stdout, tmp_path / "dest", media_type=OCI_GZIP)
    assert result.diff_id == sha256(layer.read_bytes())
    assert_same_tree(snapshot(tmp_path / "dest"), snapshot(src))


class Trickle:
    """A real file read a few bytes at a time, as a slow network stream delivers it."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = io.BytesIO(data)
        self._step = step

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, self._step) if size >= 0 else self._step)


def test_headers_split_across_reads(tmp_path: Path) -> None:
    entries = [entry(f"dir{i % 3}/f{i}", data=os.urandom(i * 37)) for i in range(60)]
    tar_bytes = make_tar(entries, tarfile.GNU_FORMAT)
    result = unpack_layer(Trickle(tar_bytes, 333), tmp_path / "dest", expected_diff_id=sha256(tar_bytes))
    assert result.entries == 60
    for info, data in entries:
        assert (tmp_path / "dest" / info.name).read_bytes() == data
    assert result.implicit_dirs == ("dir0", "dir1", "dir2")


# -- umoci ---------------------------------------------------------------------------


def umoci(*args: str | Path) -> None:
    subprocess.run(["umoci", *(str(a) for a in args)], check=True, capture_output=True)


def oci_layers(layout: Path, tag: str) -> list[tuple[Path, str, str]]:
    """(blob path, media type, diff_id) of each layer of ``tag``, read from the layout's blobs."""
    def blob(digest: str) -> Path:
        algorithm, _, hexpart = digest.partition(":")
        return layout / "blobs" / algorithm / hexpart

    index = json.loads((layout / "index.json").read_text())
    [descriptor] = [m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag]
    manifest = json.loads(blob(descriptor["digest"]).read_text())
    config = json.loads(blob(manifest["config"]["digest"]).read_text())
    return [
        (blob(layer["digest"]), layer["mediaType"], diff_id)
        for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True)
    ]


def apply_changesets(layers: list[tuple[Path, UnpackResult]], target: Path) -> None:
    """OCI "Applying Changesets": whiteouts remove from lower layers, then entries are copied over.

    Parents a layer only implied keep the metadata they have below, as they
    do when a tool applies the layer onto a full root filesystem.
    """
    target.mkdir()
    for layer, result in layers:
        below = {d: (target / d).stat() for d in result.implicit_dirs if (target / d).is_dir()}
        markers = sorted(p for p in layer.rglob(".wh.*"))
        for marker in markers:
            place = target / marker.parent.relative_to(layer)
            doomed = list(place.iterdir()) if marker.name == ".wh..wh..opq" else [place / marker.name[4:]]
            for path in doomed:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.exists() or path.is_symlink():
                    path.unlink()
        subprocess.run(["cp", "-a", "--remove-destination", f"{layer}/.", str(target)], check=True)
        for marker in markers:
            (target / marker.relative_to(layer)).unlink()
            st = marker.parent.stat()  # unlinking touched the directory; it is this layer's
            os.utime(target / marker.parent.relative_to(layer), ns=(st.st_atime_ns, st.st_mtime_ns))
        for name, st in sorted(below.items(), reverse=True):
            os.chown(target / name, st.st_uid, st.st_gid)
            os.chmod(target / name, stat.S_IMODE(st.st_mode))
            os.utime(target / name, ns=(st.st_atime_ns, st.st_mtime_ns))


@dataclass(frozen=True)
class UmociImage:
    layout: Path
    want: dict[str, Path]  # tag -> the root filesystem umoci unpacks for it


@pytest.fixture(scope="module")
def umoci_image(tmp_path_factory: pytest.TempPathFactory) -> UmociImage:
    """An OCI layout built by umoci: tag "one" (a full root), tag "two" (one more layer, with whiteouts)."""
    if shutil.which("umoci") is None:
        pytest.skip("needs umoci (apt-get install umoci)")
    tmp = tmp_path_factory.mktemp("umoci")
    layout, rootless = tmp / "image", [] if ROOT else ["--rootless"]
    umoci("init", "--layout", layout)
    umoci("new", "--image", f"{layout}:base")
    umoci("unpack", *rootless, "--image", f"{layout}:base", tmp / "b1")
    populate(tmp / "b1/rootfs")
    for marker in (tmp / "b1/rootfs").rglob(".wh.*"):
        marker.unlink()  # umoci would read them as whiteouts; the second layer makes real ones
    umoci("repack", "--image", f"{layout}:one", tmp / "b1")
    umoci("unpack", *rootless, "--image", f"{layout}:one", tmp / "b2")
    rootfs = tmp / "b2/rootfs"
    (rootfs / "etc/hosts").unlink()  # -> a whiteout
    shutil.rmtree(rootfs / "srv")  # -> a whiteout for a directory
    (rootfs / "etc/motd").write_text("second layer\n")
    (rootfs / "usr/bin/su").chmod(0o755)  # a metadata-only change copies the file up
    umoci("repack", "--image", f"{layout}:two", tmp / "b2")
    for tag in ("one", "two"):
        umoci("unpack", *rootless, "--image", f"{layout}:{tag}", tmp / f"want-{tag}")
    return UmociImage(layout, {tag: tmp / f"want-{tag}/rootfs" for tag in ("one", "two")})


def unpack_image(layout: Path, tag: str, into: Path) -> list[tuple[Path, UnpackResult]]:
    """Unpack every layer of ``tag`` into its own directory, checked against the config's diff_ids."""
    unpacked = []
    into.mkdir(exist_ok=True)
    for i, (blob, media_type, diff_id) in enumerate(oci_layers(layout, tag)):
        with blob.open("rb") as stream:
            result = unpack_layer(stream, into / f"layer{i}", media_type=media_type, expected_diff_id=diff_id)
        assert result.diff_id == diff_id and result.compressed_digest == f"sha256:{blob.name}"
        unpacked.append((into / f"layer{i}", result))
    return unpacked


def test_umoci_layers_match_umoci_unpack(tmp_path: Path, umoci_image: UmociImage) -> None:
    unpacked = unpack_image(umoci_image.layout, "two", tmp_path)
    assert [r.compression for _, r in unpacked] == ["gzip", "gzip"]
    # A one-layer image's root filesystem is its layer's changeset.
    assert_same_tree(snapshot(unpacked[0][0]), snapshot(umoci_image.want["one"]))
    # The second keeps its whiteouts as empty files...
    for whiteout in ("etc/.wh.hosts", ".wh.srv"):
        st = (unpacked[1][0] / whiteout).lstat()
        assert stat.S_ISREG(st.st_mode) and st.st_size == 0
    assert not (unpacked[1][0] / "usr/lib/big.bin").exists()  # ...and only what changed
    assert "usr/bin" in unpacked[1][1].implicit_dirs  # umoci writes no entries for unchanged parents
    # ...and applied in order the two give what umoci unpacks.
    apply_changesets(unpacked, tmp_path / "merged")
    assert_same_tree(snapshot(tmp_path / "merged"), snapshot(umoci_image.want["two"]))


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo (apt-get install skopeo)")
def test_skopeo_zstd_copy_has_the_same_diff_ids_and_tree(tmp_path: Path, umoci_image: UmociImage) -> None:
    """containers/image recompresses the layers with zstd: same diff_ids, same changesets."""
    zstd_layout = tmp_path / "zstd-image"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-compress-format", "zstd",
                    f"oci:{umoci_image.layout}:two", f"oci:{zstd_layout}:two"], check=True)  # fmt: skip
    gzip_layers = oci_layers(umoci_image.layout, "two")
    zstd_layers = oci_layers(zstd_layout, "two")
    assert [media for _, media, _ in zstd_layers] == [OCI_ZSTD, OCI_ZSTD]
    assert [diff for *_, diff in zstd_layers] == [diff for *_, diff in gzip_layers]
    unpacked = unpack_image(zstd_layout, "two", tmp_path / "from-zstd")
    assert [r.compression for _, r in unpacked] == ["zstd", "zstd"]
    assert_same_tree(snapshot(unpacked[0][0]), snapshot(umoci_image.want["one"]))
    apply_changesets(unpacked, tmp_path / "merged")
    assert_same_tree(snapshot(tmp_path / "merged"), snapshot(umoci_image.want["two"]))


# -- entries and metadata -----------------------------------------------------------


def test_whiteouts_stay_files_and_hard_links_share_an_inode(tmp_path: Path) -> None:
    tar_bytes = make_tar([
        entry("etc", tarfile.DIRTYPE),
        entry(".wh.gone", mode=0o600, uid=1000, gid=1001),
        entry("etc/.wh..wh..opq", mode=0o644),
        entry("etc/.wh.also", tarfile.LNKTYPE, linkname=".wh.gone"),  # a link to a marker: a real file
        entry("etc/data", data=b"payload", mode=0o640),
        entry("etc/data-link", tarfile.LNKTYPE, linkname="./etc/data"),
    ])  # fmt: skip
    unpack_bytes(tar_bytes, tmp_path / "dest")
    dest = tmp_path / "dest"
    gone = (dest / ".wh.gone").lstat()
    assert stat.S_ISREG(gone.st_mode) and gone.st_size == 0 and stat.S_IMODE(gone.st_mode) == 0o600
    if ROOT:
        assert (gone.st_uid, gone.st_gid) == (1000, 1001)
    assert (dest / "etc/.wh..wh..opq").is_file()
    assert (dest / "etc/.wh.also").stat().st_ino == gone.st_ino
    assert (dest / "etc/data-link").stat().st_ino == (dest / "etc/data").stat().st_ino
    assert (dest / "etc/data").stat().st_nlink == 2


@root_only
def test_devices_owners_and_setid_bits_as_root(tmp_path: Path) -> None:
    tar_bytes = make_tar([
        entry("dev", tarfile.DIRTYPE),
        entry("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
        entry("dev/loop0", tarfile.BLKTYPE, devmajor=7, devminor=0, mode=0o660, gid=6),
        entry("dev/fifo", tarfile.FIFOTYPE, mode=0o620, uid=7, gid=8),
        entry("bin/su", data=b"\x7fELF", mode=0o4755, uid=0, gid=0),
        entry("bin/agent", data=b"\x7fELF", mode=0o6711, uid=1000, gid=1000),
        entry("tmp", tarfile.DIRTYPE, mode=0o1777),
        entry("shared", tarfile.DIRTYPE, mode=0o2775, gid=100),
        entry("home/big", data=b"ids beyond 7 octal digits", uid=3_000_000_000, gid=2_500_000_000),
    ], tarfile.GNU_FORMAT)  # fmt: skip  (GNU format: base-256 for the large ids)
    result = unpack_bytes(tar_bytes, tmp_path / "dest")
    dest = tmp_path / "dest"
    null = (dest / "dev/null").lstat()
    assert stat.S_ISCHR(null.st_mode) and (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    loop = (dest / "dev/loop0").lstat()
    assert stat.S_ISBLK(loop.st_mode) and loop.st_rdev == os.makedev(7, 0) and loop.st_gid == 6
    fifo = (dest / "dev/fifo").lstat()
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o620 and (fifo.st_uid, fifo.st_gid) == (7, 8)
    assert stat.S_IMODE((dest / "bin/su").stat().st_mode) == 0o4755
    agent = (dest / "bin/agent").stat()
    assert stat.S_IMODE(agent.st_mode) == 0o6711 and (agent.st_uid, agent.st_gid) == (1000, 1000)
    assert stat.S_IMODE((dest / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((dest / "shared").stat().st_mode) == 0o2775
    big = (dest / "home/big").stat()
    assert (big.st_uid, big.st_gid) == (3_000_000_000, 2_500_000_000)
    assert result.skipped == ()
    assert result.implicit_dirs == ("bin", "home")


def test_unprivileged_unpack_skips_devices_and_owners(tmp_path: Path) -> None:
    tar_bytes = make_tar([
        entry("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3),
        entry("dev/null-link", tarfile.LNKTYPE, linkname="dev/null"),  # skipped with its target
        entry("dev/fifo", tarfile.FIFOTYPE),
        entry("ro", tarfile.DIRTYPE, mode=0o555),
        entry("ro/inside", data=b"made before the directory became read-only", uid=4242),
        entry("ro/sub", tarfile.DIRTYPE, mode=0o500),
        entry("ro/sub/deeper", data=b"x"),
    ])  # fmt: skip
    result = unpack_bytes(tar_bytes, tmp_path / "dest", privileged=False)
    dest = tmp_path / "dest"
    assert not (dest / "dev/null").exists()
    assert [s.name for s in result.skipped] == ["dev/null", "dev/null-link"] and "root" in result.skipped[0].reason
    assert stat.S_ISFIFO((dest / "dev/fifo").lstat().st_mode)
    assert (dest / "ro/inside").stat().st_uid == os.geteuid()
    assert stat.S_IMODE((dest / "ro").stat().st_mode) == 0o555
    assert stat.S_IMODE((dest / "ro/sub").stat().st_mode) == 0o500
    assert (dest / "ro/sub/deeper").read_bytes() == b"x"
    for path in (dest / "ro", dest / "ro/sub"):  # let pytest clean up as any user
        path.chmod(0o755)


def test_a_skipped_device_replaced_by_a_file_takes_hard_links_again(tmp_path: Path) -> None:
    """A link follows its target's fate: skipped with a skipped device, made once a later entry made the name."""
    tar_bytes = make_tar([
        entry("dev/x", tarfile.CHRTYPE, devmajor=1, devminor=3),
        entry("dev/x-link", tarfile.LNKTYPE, linkname="dev/x"),
        entry("dev/x", data=b"a file where the device was"),
        entry("dev/x-link-again", tarfile.LNKTYPE, linkname="dev/x"),
    ])  # fmt: skip
    result = unpack_bytes(tar_bytes, tmp_path / "dest", privileged=False)
    dest = tmp_path / "dest"
    assert [s.name for s in result.skipped] == ["dev/x", "dev/x-link"]
    assert not (dest / "dev/x-link").exists()
    assert (dest / "dev/x-link-again").read_bytes() == b"a file where the device was"
    assert (dest / "dev/x").stat().st_nlink == 2


def test_mtimes_xattrs_and_directory_times_after_children(tmp_path: Path) -> None:
    capability = bytes.fromhex("0100000200200000000000000000000000000000")
    xattrs = {"SCHILY.xattr.user.bin": b"\x00\xff\xfe raw".decode("utf-8", "surrogateescape")}
    if ROOT:
        xattrs |= {"SCHILY.xattr.trusted.t": "v", "SCHILY.xattr.security.capability":
                   capability.decode("utf-8", "surrogateescape")}  # fmt: skip
    tar_bytes = make_tar([
        entry("d", tarfile.DIRTYPE, pax_headers={"mtime": "1000000000.000000001"}),
        entry("d/file", data=b"abc", pax_headers={"mtime": "1234567890.987654321", **xattrs}, uid=0),
        entry("d/link", tarfile.SYMTYPE, linkname="file", pax_headers={"mtime": "1111111111.5"}),
        entry("old", data=b"", mtime=-86400),  # before 1970: base-256 in GNU, a PAX record here
    ])  # fmt: skip
    unpack_bytes(tar_bytes, tmp_path / "dest")
    dest = tmp_path / "dest"
    assert (dest / "d").stat().st_mtime_ns == 1_000_000_000 * NS + 1
    assert (dest / "d/file").stat().st_mtime_ns == 1_234_567_890_987_654_321
    assert (dest / "d/link").lstat().st_mtime_ns == 1_111_111_111_500_000_000
    assert (dest / "old").stat().st_mtime_ns == -86400 * NS
    assert os.getxattr(dest / "d/file", "user.bin") == b"\x00\xff\xfe raw"
    if ROOT:
        assert os.getxattr(dest / "d/file", "trusted.t") == b"v"
        assert os.getxattr(dest / "d/file", "security.capability") == capability


def test_later_entries_win(tmp_path: Path) -> None:
    tar_bytes = make_tar([
        entry("f", data=b"first"),
        entry("f", data=b"second", mode=0o600),
        entry("d", tarfile.DIRTYPE, mode=0o700),
        entry("d/child", data=b"kept"),
        entry("d", tarfile.DIRTYPE, mode=0o751),  # a directory over a directory merges
        entry("x", tarfile.DIRTYPE),
        entry("x/gone", data=b"lost with x"),
        entry("x", data=b"a file replaces the directory"),
        entry("y", data=b"a directory replaces the file"),
        entry("y", tarfile.DIRTYPE),
        entry("h", data=b"old inode"),
        entry("h2", tarfile.LNKTYPE, linkname="h"),
        entry("h", data=b"new inode"),  # the link keeps the old file, as in Docker
        entry("s", tarfile.SYMTYPE, linkname="f"),
        entry("s", tarfile.SYMTYPE, linkname="d"),
    ])  # fmt: skip
    unpack_bytes(tar_bytes, tmp_path / "dest")
    dest = tmp_path / "dest"
    assert (dest / "f").read_bytes() == b"second" and stat.S_IMODE((dest / "f").stat().st_mode) == 0o600
    assert (dest / "d/child").read_bytes() == b"kept" and stat.S_IMODE((dest / "d").stat().st_mode) == 0o751
    assert (dest / "x").read_bytes() == b"a file replaces the directory"
    assert (dest / "y").is_dir() and not (dest / "y").is_symlink()
    assert (dest / "h").read_bytes() == b"new inode" and (dest / "h2").read_bytes() == b"old inode"
    assert os.readlink(dest / "s") == "d"


def test_a_file_named_twice_to_gnu_tar_is_kept(tmp_path: Path) -> None:
    """GNU tar writes a name given twice as a hard link to itself: the file is already there."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"once")
    subprocess.run(["tar", "-C", str(src), "-cf", str(tmp_path / "layer.tar"), "f", "f"], check=True)
    with tarfile.open(tmp_path / "layer.tar") as tar:
        assert [(m.name, m.islnk(), m.linkname) for m in tar] == [("f", False, ""), ("f", True, "f")]
    unpack_bytes((tmp_path / "layer.tar").read_bytes(), tmp_path / "dest")
    assert (tmp_path / "dest/f").read_bytes() == b"once" and (tmp_path / "dest/f").stat().st_nlink == 1


@root_only
def test_filesystem_errors_name_the_entry(tmp_path: Path) -> None:
    """A full disk says nothing about the layer: it stays an OSError, noted with the entry it hit."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        with pytest.raises(OSError) as info:
            unpack_bytes(make_tar([entry("ok", data=b"ok"), entry("dir/big", data=os.urandom(1 << 20))]), small / "dest")
        assert info.value.errno == errno.ENOSPC
        assert any('entry "dir/big"' in note for note in info.value.__notes__)
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_layer_root_entry_sets_the_root_metadata(tmp_path: Path) -> None:
    tar_bytes = make_tar([entry("./", tarfile.DIRTYPE, mode=0o751, mtime=1_400_000_000), entry("./a", data=b"a")])
    unpack_bytes(tar_bytes, tmp_path / "dest")
    root = (tmp_path / "dest").stat()
    assert stat.S_IMODE(root.st_mode) == 0o751 and root.st_mtime == 1_400_000_000


def test_names_are_cleaned_not_refused(tmp_path: Path) -> None:
    """Leading "/" and "./", "//" and inner ".." are read as GNU tar, containerd and umoci read them."""
    tar_bytes = make_tar([
        entry("/abs/path", data=b"under the root"),
        entry("./a//b/./c", data=b"c"),
        entry("a/../top", data=b"top"),
        entry("abs-link", tarfile.LNKTYPE, linkname="/abs/path"),
        entry("evil", tarfile.SYMTYPE, linkname="/"),  # a symlink may point anywhere; it is not followed
    ])  # fmt: skip
    unpack_bytes(tar_bytes, tmp_path / "dest")
    dest = tmp_path / "dest"
    assert (dest / "abs/path").read_bytes() == b"under the root"
    assert (dest / "a/b/c").read_bytes() == b"c"
    assert (dest / "top").read_bytes() == b"top"
    assert (dest / "abs-link").stat().st_ino == (dest / "abs/path").stat().st_ino
    assert os.readlink(dest / "evil") == "/"


# -- hostile layers -----------------------------------------------------------------

Entries = list[tuple[tarfile.TarInfo, bytes]]
Case = Callable[[Path], tuple[Entries, str]]


def _hostile() -> dict[str, Case]:
    """Layers given the directory that holds the canary and dest, each with the entry to refuse."""
    def rel(o: Path) -> str:
        return str(o / "canary").lstrip("/")

    sym, lnk, dir_ = tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE
    return {
        "dotdot": lambda o: ([entry("../canary", data=b"pwned")], "../canary"),
        "nested-dotdot": lambda o: ([entry("a/../../canary", data=b"pwned")], "a/../../canary"),
        "bare-dotdot-dir": lambda o: ([entry("..", dir_, mode=0o777)], ".."),
        "symlink-to-slash": lambda o: (
            [entry("evil", sym, linkname="/"), entry(f"evil/{rel(o)}", data=b"pwned")], f"evil/{rel(o)}"),
        "symlink-to-outside": lambda o: (
            [entry("evil", sym, linkname=str(o)), entry("evil/canary", data=b"pwned")], "evil/canary"),
        "symlink-to-dotdot": lambda o: (
            [entry("up", sym, linkname=".."), entry("up/canary", data=b"pwned")], "up/canary"),
        "symlink-chain": lambda o: (
            [entry("a", sym, linkname="b"), entry("b", sym, linkname=str(o)), entry("a/canary", data=b"pwned")],
            "a/canary"),
        "dir-replaced-by-symlink": lambda o: (
            [entry("d", dir_), entry("d/ok", data=b"fine"), entry("d", sym, linkname=str(o)),
             entry("d/canary", data=b"pwned")], "d/canary"),
        "symlink-as-parent-of-dir": lambda o: (
            [entry("evil", sym, linkname=str(o)), entry("evil/sub", dir_)], "evil/sub"),
        "hardlink-dotdot": lambda o: ([entry("h", lnk, linkname="../canary")], "h"),
        "hardlink-far-outside": lambda o: ([entry("h", lnk, linkname="../../outside")], "h"),
        "hardlink-etc-passwd": lambda o: ([entry("h", lnk, linkname="/etc/passwd")], "h"),
        "hardlink-through-symlink": lambda o: (
            [entry("evil", sym, linkname=str(o)), entry("h", lnk, linkname="evil/canary")], "h"),
        "hardlink-to-dir": lambda o: ([entry("d", dir_), entry("h", lnk, linkname="d")], "h"),
        "file-as-parent": lambda o: ([entry("f", data=b"a file"), entry("f/x", data=b"x")], "f/x"),
        "file-over-root": lambda o: ([entry("./", data=b"not a directory")], "./"),
        "nul-in-name": lambda o: (
            [entry("x", data=b"pwned", pax_headers={"path": "ok\0../../canary"})], "ok\0../../canary"),
        "nul-in-symlink-target": lambda o: ([entry("s", sym, pax_headers={"linkpath": "/\0x"})], "s"),
        # Traversal in the other forms: absolute with "..", ".." after a symlink, links through links inside.
        "absolute-dotdot": lambda o: ([entry("/../canary", data=b"pwned")], "/../canary"),
        "dotdot-behind-a-symlink": lambda o: (
            [entry("d", sym, linkname="."), entry("d/../../canary", data=b"pwned")], "d/../../canary"),
        "symlink-climbing-inside": lambda o: (
            [entry("a", dir_), entry("s", sym, linkname="a/../.."), entry("s/canary", data=b"pwned")], "s/canary"),
        "symlink-to-own-dir-as-parent": lambda o: (
            [entry("a", dir_), entry("s", sym, linkname="a"), entry("s/f", data=b"x")], "s/f"),
        "hardlink-through-symlink-inside": lambda o: (
            [entry("a", dir_), entry("a/f", data=b"x"), entry("s", sym, linkname="a"),
             entry("h", lnk, linkname="s/f")], "h"),
        "hardlink-nul-target": lambda o: ([entry("f", data=b"x"), entry("h", lnk, pax_headers={"linkpath": "f\0../x"})], "h"),
        "hardlink-dotdot-after-clean": lambda o: ([entry("h", lnk, linkname="a/../../canary")], "h"),
        "dir-replaced-by-symlink-then-dir": lambda o: (
            [entry("d", dir_), entry("d", sym, linkname=str(o)), entry("d/sub", dir_, mode=0o777)], "d/sub"),
        "symlink-over-root": lambda o: ([entry(".", sym, linkname=str(o))], "."),
        # Names the kernel would refuse (NAME_MAX 255, PATH_MAX 4096), refused before anything is made.
        "component-too-long": lambda o: ([entry("a/" + "n" * 256, data=b"x")], "a/" + "n" * 256),
        "component-too-long-in-bytes": lambda o: ([entry("\u00e9" * 128, data=b"x")], "\u00e9" * 128),
        "path-too-long": lambda o: ([entry("/".join(["d" * 250] * 17), data=b"x")], "/".join(["d" * 250] * 17)),
        "hardlink-target-too-long": lambda o: ([entry("h", lnk, linkname="n" * 300)], "h"),
        "symlink-target-too-long": lambda o: ([entry("s", sym, linkname="t" * 4096)], "s"),
        "symlink-empty-target": lambda o: ([entry("s", sym, linkname="")], "s"),
        # Whiteouts are markers for the union: only plain files, only for a real name.
        "whiteout-empty-name": lambda o: ([entry(".wh.")], ".wh."),
        "whiteout-for-dot": lambda o: ([entry("a/.wh..")], "a/.wh.."),
        "whiteout-for-dotdot": lambda o: ([entry("a/.wh...")], "a/.wh..."),
        "opaque-marker-as-dir": lambda o: ([entry("a/.wh..wh..opq", dir_)], "a/.wh..wh..opq"),
        "opaque-marker-as-symlink": lambda o: ([entry(".wh..wh..opq", sym, linkname=str(o))], ".wh..wh..opq"),
        "opaque-marker-as-fifo": lambda o: ([entry(".wh..wh..opq", tarfile.FIFOTYPE)], ".wh..wh..opq"),
        "opaque-marker-as-parent": lambda o: ([entry(".wh..wh..opq/x", data=b"x")], ".wh..wh..opq/x"),
        "whiteout-as-dir": lambda o: ([entry(".wh.etc", dir_)], ".wh.etc"),
        "whiteout-as-symlink": lambda o: ([entry(".wh.etc", sym, linkname=str(o))], ".wh.etc"),
        "whiteout-as-parent": lambda o: ([entry(".wh.etc/passwd", data=b"x")], ".wh.etc/passwd"),
    }  # fmt: skip


HOSTILE = _hostile()


@pytest.mark.parametrize("case", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("dest_exists", [False, True], ids=["new-dest", "empty-dest"])
def test_hostile_entries_are_refused(tmp_path: Path, case: Case, dest_exists: bool) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    canary = outside / "canary"
    canary.write_bytes(b"canary")
    dest = outside / "dest"
    if dest_exists:
        dest.mkdir()
    entries, offender = case(outside)
    with pytest.raises(UnsafeArchiveEntry) as info:
        unpack_bytes(make_tar(entries), dest)
    assert info.value.entry == offender
    assert str(info.value).startswith("layer entry ")
    assert canary.read_bytes() == b"canary" and canary.stat().st_nlink == 1
    assert sorted(p.name for p in outside.iterdir()) == (["canary", "dest"] if dest_exists else ["canary"])
    if dest_exists:
        assert list(dest.iterdir()) == []


def test_refusal_early_in_a_big_stream_stops_the_reader(tmp_path: Path) -> None:
    before = threading.active_count()
    big = make_tar([entry("../canary", data=b"pwned")] + [entry(f"f{i}", data=bytes(1 << 20)) for i in range(40)])
    with pytest.raises(UnsafeArchiveEntry):
        unpack_bytes(big, tmp_path / "dest")
    assert threading.active_count() == before  # the prefetch thread was stopped and joined
    assert not (tmp_path / "dest").exists()


def test_replacing_a_symlink_never_writes_through_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    canary = outside / "canary"
    canary.write_bytes(b"canary")
    tar_bytes = make_tar([
        entry("s", tarfile.SYMTYPE, linkname=str(canary)),
        entry("s", data=b"a file replaces the link"),
        entry("t", tarfile.SYMTYPE, linkname=str(outside)),
        entry("t", tarfile.DIRTYPE, mode=0o700),
        entry("u", tarfile.SYMTYPE, linkname=str(canary)),
        entry("u", tarfile.FIFOTYPE),
    ])  # fmt: skip
    unpack_bytes(tar_bytes, tmp_path / "dest")
    assert (tmp_path / "dest/s").read_bytes() == b"a file replaces the link"
    assert (tmp_path / "dest/t").is_dir() and not (tmp_path / "dest/t").is_symlink()
    assert stat.S_ISFIFO((tmp_path / "dest/u").lstat().st_mode)
    assert canary.read_bytes() == b"canary" and stat.S_IMODE(outside.stat().st_mode) != 0o700


def test_a_hard_link_to_a_symlink_links_the_symlink_never_its_target(tmp_path: Path) -> None:
    """GNU tar records a second name of a symlink as a hard link to it; linking what the
    symlink points at would put a file of the host (here the canary) into the layer."""
    outside = tmp_path / "outside"
    outside.mkdir()
    canary = outside / "canary"
    canary.write_bytes(b"canary")
    src = tmp_path / "src"
    src.mkdir()
    (src / "s").symlink_to(canary)
    os.link(src / "s", src / "h", follow_symlinks=False)
    subprocess.run(["tar", "-C", str(src), "-cf", str(tmp_path / "layer.tar"), "s", "h"], check=True)
    with tarfile.open(tmp_path / "layer.tar") as tar:
        assert tar.getmember("h").islnk()  # the tool wrote what this test is about
    dest = tmp_path / "dest"
    unpack_bytes((tmp_path / "layer.tar").read_bytes(), dest)
    assert (dest / "h").is_symlink() and os.readlink(dest / "h") == str(canary)
    assert (dest / "h").lstat().st_ino == (dest / "s").lstat().st_ino
    assert canary.stat().st_nlink == 1


# -- broken streams ----------------------------------------------------------------


def _good_tar() -> bytes:
    return make_tar([entry("dir", tarfile.DIRTYPE)] + [entry(f"dir/f{i}", data=os.urandom(3000)) for i in range(40)])


GOOD = _good_tar()
GZ = gzip.compress(GOOD)
ZST = zstandard.ZstdCompressor().compress(GOOD)
ZST_CHECKED = zstandard.ZstdCompressor(write_checksum=True).compress(GOOD)
_FIRST_MEMBER_END = 2 * 512 + 3072  # ustar (no PAX records needed): dir header, file header, padded data


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1 :]


BROKEN: list[tuple[str, bytes, type[Exception], str]] = [
    ("empty", b"", CorruptArchive, "empty"),
    ("tar-cut-in-data", GOOD[: 2 * 512 + 1500], CorruptArchive, "inside a file"),
    ("tar-cut-in-padding", GOOD[: 2 * 512 + 3000], CorruptArchive, "truncated"),
    ("tar-cut-at-member", GOOD[:_FIRST_MEMBER_END], CorruptArchive, "end-of-archive"),
    ("tar-cut-in-header", GOOD[: _FIRST_MEMBER_END + 100], CorruptArchive, "inside a header"),
    ("tar-bad-checksum", _flip(GOOD, _FIRST_MEMBER_END + 10), CorruptArchive, "bad header"),
    ("gzip-cut", GZ[: len(GZ) // 2], CorruptArchive, "gzip"),
    ("gzip-cut-trailer", GZ[:-4], CorruptArchive, "gzip"),
    ("gzip-bad-crc", _flip(GZ, len(GZ) - 6), CorruptArchive, "gzip"),
    ("gzip-trailing-garbage", GZ + b"garbage", CorruptArchive, "garbage after the gzip"),
    ("zstd-cut", ZST[: len(ZST) // 2], CorruptArchive, "zstd"),
    ("zstd-cut-end", ZST[:-3], CorruptArchive, "zstd"),
    ("zstd-trailing-garbage", ZST + b"garbage!", CorruptArchive, "garbage after the zstd"),
    ("zstd-bad-checksum", _flip(ZST_CHECKED, len(ZST_CHECKED) - 2), CorruptArchive, "zstd"),
]


@pytest.mark.parametrize(("blob", "error", "words"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_streams_leave_nothing(tmp_path: Path, blob: bytes, error: type[Exception], words: str) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(error, match=words) as info:
        unpack_bytes(blob, dest)
    assert str(info.value).startswith("layer stream: ")
    assert not dest.exists()
    dest.mkdir()
    with pytest.raises(error):
        unpack_bytes(blob, dest)
    assert list(dest.iterdir()) == []


def test_wrong_diff_id_leaves_nothing(tmp_path: Path) -> None:
    wrong = "sha256:" + "0" * 64
    for blob in (GOOD, GZ, ZST):
        with pytest.raises(DigestMismatch) as info:
            unpack_bytes(blob, tmp_path / "dest", expected_diff_id=wrong)
        assert str(info.value) == f"layer {wrong}: digest mismatch (computed {sha256(GOOD)})"
        assert not (tmp_path / "dest").exists()


def test_trailing_bytes_count_in_the_diff_id(tmp_path: Path) -> None:
    padded = GOOD + b"\0" * 10240 + b"trailing junk after the end of archive"
    result = unpack_bytes(gzip.compress(padded), tmp_path / "dest", expected_diff_id=sha256(padded))
    assert result.size == len(padded)


def test_size_limit_stops_a_decompression_bomb(tmp_path: Path) -> None:
    bomb_tar = make_tar([entry("zeros", data=bytes(64 * 1024 * 1024))])
    for blob in (gzip.compress(bomb_tar, 9), zstandard.ZstdCompressor(level=3).compress(bomb_tar)):
        assert len(blob) < 1024 * 1024
        with pytest.raises(SizeLimitExceeded, match="limit of 8388608 bytes"):
            unpack_bytes(blob, tmp_path / "dest", max_size=8 * 1024 * 1024)
        assert not (tmp_path / "dest").exists()
    unpack_bytes(bomb_tar, tmp_path / "dest", max_size=len(bomb_tar))  # exactly at the limit is fine


def test_arguments_are_checked_before_anything_is_made(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedMediaType, match="text/plain"):
        unpack_bytes(GOOD, tmp_path / "a", media_type="text/plain")
    with pytest.raises(InvalidReference):
        unpack_bytes(GOOD, tmp_path / "a", expected_diff_id="sha256:abc")
    assert not (tmp_path / "a").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("someone else's")
    with pytest.raises(AlreadyExists):
        unpack_bytes(GOOD, busy)
    assert (busy / "file").read_text() == "someone else's"


def test_content_decides_compression_over_media_type(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="layerstore.unpack"):
        result = unpack_bytes(GZ, tmp_path / "dest", media_type=OCI_TAR, expected_diff_id=sha256(GOOD))
    assert result.compression == "gzip"
    assert "going by content" in caplog.text


def test_union_xattrs_in_a_layer_are_not_written(tmp_path: Path) -> None:
    """An image may not make a directory opaque or redirect it by xattr: only .wh. entries count."""
    reserved = {f"SCHILY.xattr.{k}": "y" for k in ("trusted.overlay.opaque", "user.overlay.opaque", "user.unionfs.implicit")}
    tar_bytes = make_tar([entry("d", tarfile.DIRTYPE, pax_headers={**reserved, "SCHILY.xattr.user.ok": "1"})])
    result = unpack_bytes(tar_bytes, tmp_path / "dest")
    names = os.listxattr(tmp_path / "dest/d")
    assert names == ["user.ok"]
    assert sum("reserved for the union" in s.reason for s in result.skipped) == 3
