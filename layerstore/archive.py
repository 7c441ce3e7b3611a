"""Reading image archives into one model.

Accepted: docker-archive tarballs (the classic ``<id>/layer.tar`` layout,
where a layer entry may be a symlink inside the tar, and the Docker 25+
layout that adds ``blobs/`` and ``index.json``), and OCI image layouts as a
directory or a tar; any tar may be gzip- or zstd-compressed. Names inside an
archive are confined to it: ``manifest.json`` cannot point outside.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import posixpath
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from layerstore.compression import NONE, decompress, read_chunks, sniff
from layerstore.digest import digest_bytes, parse_digest
from layerstore.errors import CorruptArchive, NotFound, UnsafeArchiveEntry, quote
from layerstore.model import INDEX_TYPES, MANIFEST_TYPES, OCI_MANIFEST, Descriptor, load_json

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
MAX_INDEX_DEPTH = 8


class Archive(Protocol):
    name: str

    def exists(self, member: str) -> bool: ...
    def open(self, member: str) -> IO[bytes]: ...
    def size(self, member: str) -> int: ...


def _confine(member: str, archive: str) -> str:
    """The archive-relative form of a member name, refusing names that leave the archive."""
    if "\x00" in member:
        raise UnsafeArchiveEntry(f"archive {archive} member {quote(member)}", "contains NUL")
    norm = posixpath.normpath("/" + member.lstrip("/"))
    if member.startswith("/") or ".." in member.split("/"):
        raise UnsafeArchiveEntry(f"archive {archive} member {quote(member)}", "points outside the archive")
    return norm.lstrip("/")


class TarArchive:
    """A tar opened for random access; symlinked members are followed inside the tar."""

    def __init__(self, tar: tarfile.TarFile, name: str) -> None:
        self.tar = tar
        self.name = name
        self.members: dict[str, tarfile.TarInfo] = {}
        for info in tar.getmembers():
            self.members[posixpath.normpath("/" + info.name).lstrip("/")] = info

    def _resolve(self, member: str) -> tarfile.TarInfo:
        path = _confine(member, self.name)
        for _ in range(16):
            info = self.members.get(path)
            if info is None:
                raise NotFound(f"archive {self.name} member {quote(member)}", "missing")
            if info.issym():
                path = _confine(posixpath.join(posixpath.dirname(path), info.linkname), self.name)
                continue
            if info.islnk():
                path = _confine(info.linkname, self.name)
                continue
            if not info.isfile():
                raise CorruptArchive(f"archive {self.name} member {quote(member)}", "is not a regular file")
            return info
        raise CorruptArchive(f"archive {self.name} member {quote(member)}", "too many levels of links")

    def exists(self, member: str) -> bool:
        try:
            self._resolve(member)
            return True
        except (NotFound, CorruptArchive):
            return False

    def open(self, member: str) -> IO[bytes]:
        f = self.tar.extractfile(self._resolve(member))
        assert f is not None
        return f

    def size(self, member: str) -> int:
        return self._resolve(member).size


class DirArchive:
    """An OCI layout directory; members are resolved without leaving it."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.name = str(root)

    def _path(self, member: str) -> Path:
        path = (self.root / _confine(member, self.name)).resolve()
        if self.root not in path.parents and path != self.root:
            raise UnsafeArchiveEntry(f"archive {self.name} member {quote(member)}", "points outside the archive")
        return path

    def exists(self, member: str) -> bool:
        return self._path(member).is_file()

    def open(self, member: str) -> IO[bytes]:
        try:
            return open(self._path(member), "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"archive {self.name} member {quote(member)}", "missing") from None

    def size(self, member: str) -> int:
        return self._path(member).stat().st_size


def read_member(archive: Archive, member: str, limit: int = 4 << 20) -> bytes:
    if archive.size(member) > limit:
        raise CorruptArchive(f"archive {archive.name} member {quote(member)}", f"larger than {limit} bytes")
    with archive.open(member) as f:
        return f.read()


@contextlib.contextmanager
def open_archive(source: str, spool_dir: Path) -> Iterator[Archive]:
    """Open a file, a directory or ``-`` (stdin); compressed tars are spooled decompressed."""
    if source != "-" and os.path.isdir(source):
        yield DirArchive(Path(source))
        return
    name = "stdin" if source == "-" else source
    try:
        stream: IO[bytes] = sys.stdin.buffer if source == "-" else open(source, "rb")
    except FileNotFoundError:
        raise NotFound(f"archive {source}", "no such file") from None
    with contextlib.ExitStack() as stack:
        if source != "-":
            stack.enter_context(stream)
        head = stream.peek(8)[:8] if hasattr(stream, "peek") else b""
        compression = sniff(head)
        if compression == NONE and source != "-":
            path = source
        else:
            spool = stack.enter_context(tempfile.NamedTemporaryFile(dir=spool_dir, suffix=".tar"))
            chunks = read_chunks(stream)
            for chunk in decompress(chunks, compression, f"archive {name}") if compression != NONE else chunks:
                spool.write(chunk)
            spool.flush()
            path = spool.name
        try:
            tar = stack.enter_context(tarfile.open(path, "r:"))
        except (tarfile.TarError, OSError) as exc:
            raise CorruptArchive(f"archive {name}", f"not a tar archive ({exc})") from None
        yield TarArchive(tar, name)


@dataclass
class ArchiveImage:
    """One image found in an archive, before anything is stored."""

    config: Descriptor | None  # None: classic docker-archive, digest from the member name
    config_member: str
    layer_members: list[str]
    layer_descriptors: list[Descriptor] | None  # from the original manifest, if the archive had one
    manifest: bytes | None = None
    manifest_media_type: str | None = None
    names: list[str] = field(default_factory=list)


def blob_member(digest: str) -> str:
    d = parse_digest(digest)
    return f"blobs/{d.algorithm}/{d.hex}"


def host_platform() -> tuple[str, str]:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x"}
    return "linux", arch.get(machine, machine)


def find_images(archive: Archive) -> list[ArchiveImage]:
    if archive.exists("manifest.json"):
        return _docker_archive(archive)
    if archive.exists("index.json"):
        return _oci_layout(archive)
    raise CorruptArchive(f"archive {archive.name}", "neither a docker-archive (manifest.json) nor an OCI layout (index.json)")


def _docker_archive(archive: Archive) -> list[ArchiveImage]:
    subject = f"archive {archive.name} manifest.json"
    entries = load_json(read_member(archive, "manifest.json"), subject)
    if not isinstance(entries, list) or not entries:
        raise CorruptArchive(subject, "expected a non-empty list")
    originals = _original_manifests(archive) if archive.exists("index.json") else {}
    images = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) or not isinstance(entry.get("Layers"), list):
            raise CorruptArchive(subject, "entry without Config and Layers")
        config_member = _confine(entry["Config"], archive.name)
        image = ArchiveImage(None, config_member, [_confine(str(m), archive.name) for m in entry["Layers"]], None)
        image.names = [str(t) for t in entry.get("RepoTags") or []]
        original = originals.get(config_member)
        if original is not None:  # Docker 25+: the registry manifest is in the archive too
            image.manifest, manifest = original
            image.manifest_media_type = manifest.get("mediaType") or OCI_MANIFEST
            image.config = Descriptor.parse(manifest["config"], subject)
            image.layer_descriptors = [Descriptor.parse(d, subject) for d in manifest.get("layers") or []]
        images.append(image)
    return images


def _original_manifests(archive: Archive) -> dict[str, tuple[bytes, dict[str, Any]]]:
    """Manifests reachable from index.json, by the member name of their config."""
    out = {}
    for _, raw, _names in _walk_index(archive):
        doc = json.loads(raw)
        out[blob_member(doc["config"]["digest"])] = (raw, doc)
    return out


def _walk_index(archive: Archive) -> Iterator[tuple[Descriptor, bytes, list[str]]]:
    subject = f"archive {archive.name} index.json"
    index = load_json(read_member(archive, "index.json"), subject)
    seen: set[str] = set()
    yield from _walk(archive, index, subject, seen, 0)


def _walk(archive: Archive, index: Any, subject: str, seen: set[str], depth: int) -> Iterator[tuple[Descriptor, bytes, list[str]]]:
    if depth > MAX_INDEX_DEPTH:
        raise CorruptArchive(subject, "indexes nested too deep")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise CorruptArchive(subject, "no manifests list")
    for raw_desc in index["manifests"]:
        desc = Descriptor.parse(raw_desc, subject)
        if desc.digest in seen:
            raise CorruptArchive(subject, f"{desc.digest} refers to itself")
        raw = read_member(archive, blob_member(desc.digest))
        if digest_bytes(raw, parse_digest(desc.digest).algorithm) != desc.digest or len(raw) != desc.size:
            raise CorruptArchive(f"manifest {desc.digest}", "content does not match its descriptor")
        doc = load_json(raw, f"manifest {desc.digest}")
        kind = doc.get("mediaType") or desc.media_type
        if kind in INDEX_TYPES or "manifests" in doc:
            yield from _walk(archive, doc, f"index {desc.digest}", seen | {desc.digest}, depth + 1)
        elif kind in MANIFEST_TYPES or "config" in doc:
            names = [n for n in (desc.annotations.get(CONTAINERD_NAME), desc.annotations.get(REF_NAME)) if n]
            if desc.platform and not _platform_matches(desc.platform):
                continue
            yield desc, raw, names[:1]


def _platform_matches(plat: dict[str, Any]) -> bool:
    os_name, arch = host_platform()
    return plat.get("os") in (None, os_name) and plat.get("architecture") in (None, arch)


def _oci_layout(archive: Archive) -> list[ArchiveImage]:
    images = []
    for desc, raw, names in _walk_index(archive):
        doc = json.loads(raw)
        subject = f"manifest {desc.digest}"
        config = Descriptor.parse(doc.get("config"), subject)
        layers = [Descriptor.parse(d, subject) for d in doc.get("layers") or []]
        media_type = doc.get("mediaType") or desc.media_type or OCI_MANIFEST
        image = ArchiveImage(config, blob_member(config.digest), [blob_member(d.digest) for d in layers], layers, raw, media_type, names)
        images.append(image)
    if not images:
        raise CorruptArchive(f"archive {archive.name}", "no image for this platform ({}/{})".format(*host_platform()))
    return images


def spool_dir_for(root: Path) -> Path:
    path = root / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


__all__ = ["Archive", "ArchiveImage", "find_images", "open_archive", "read_member", "spool_dir_for"]
