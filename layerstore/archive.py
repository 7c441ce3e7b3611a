"""Reading image archives into one model.

Accepted: docker-archive tarballs (the classic ``<id>/layer.tar`` layout,
where a layer entry may be a symlink inside the tar, and the Docker 25+
layout that adds ``blobs/`` and ``index.json``), and OCI image layouts as a
directory or a tar; any tar may be gzip- or zstd-compressed. Names inside an
archive are confined to it: ``manifest.json`` cannot point outside.
"""
from __future__ import annotations

import contextlib
import io
import os
import posixpath
import stat
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from layerstore.compression import NONE, decompress, read_chunks, sniff
from layerstore.digest import digest_bytes, parse_digest
from layerstore.errors import CorruptArchive, DigestMismatch, NotFound, SizeMismatch, UnsafeArchiveEntry, quote
from layerstore.model import INDEX_TYPES, MANIFEST_TYPES, Descriptor, Manifest, load_json
from layerstore.platforms import Platform, host

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


def _link_target(member: str, target: str, archive: str) -> str:
    """Where a symlink member points, relative to its directory; ``..`` may climb, but not out.

    Docker's classic save shares a layer between images with a symlink
    ``<id>/layer.tar -> ../<other>/layer.tar``.
    """
    if "\x00" in target or target.startswith("/"):
        raise UnsafeArchiveEntry(f"archive {archive} member {quote(member)}", f"symlink to {quote(target)} points outside the archive")
    parts: list[str] = []
    for part in posixpath.join(posixpath.dirname(member), target).split("/"):
        if part == "..":
            if not parts:
                raise UnsafeArchiveEntry(f"archive {archive} member {quote(member)}", f"symlink to {quote(target)} points outside the archive")
            parts.pop()
        elif part and part != ".":
            parts.append(part)
    return "/".join(parts)


class _TarMemberReader(io.RawIOBase):
    """A member's data; tarfile's errors on a cut archive become CorruptArchive naming the member."""

    def __init__(self, raw: IO[bytes], subject: str) -> None:
        self._raw = raw
        self._subject = subject

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._raw.read(len(buffer))
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise CorruptArchive(self._subject, f"cannot be read ({exc})") from None
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


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
                path = _link_target(path, info.linkname, self.name)
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
        return io.BufferedReader(_TarMemberReader(f, f"archive {self.name} member {quote(member)}"))

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
        """Open a regular file only: a FIFO or device in a hostile layout would block or never end."""
        subject = f"archive {self.name} member {quote(member)}"
        try:
            fd = os.open(self._path(member), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(subject, "missing") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CorruptArchive(subject, "is not a regular file")
        os.set_blocking(fd, True)
        return open(fd, "rb")

    def size(self, member: str) -> int:
        try:
            st = self._path(member).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"archive {self.name} member {quote(member)}", "missing") from None
        if not stat.S_ISREG(st.st_mode):
            raise CorruptArchive(f"archive {self.name} member {quote(member)}", "is not a regular file")
        return st.st_size


def read_member(archive: Archive, member: str, limit: int = 4 << 20) -> bytes:
    if archive.size(member) > limit:
        raise CorruptArchive(f"archive {archive.name} member {quote(member)}", f"larger than {limit} bytes")
    with archive.open(member) as f:
        return f.read(limit + 1)[: limit + 1]


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
            archive = TarArchive(tar, name)  # reads every header: a cut archive shows here
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise CorruptArchive(f"archive {name}", f"not a tar archive ({exc})") from None
        yield archive


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
    platform: Platform | None = None  # as the index entry names it, if it does


def blob_member(digest: str) -> str:
    d = parse_digest(digest)
    return f"blobs/{d.algorithm}/{d.hex}"


def find_images(archive: Archive, platform: Platform | None = None) -> list[ArchiveImage]:
    """The images to load. From an index, per image name, the entry whose platform suits
    ``platform`` best (this machine's when None), as a pull chooses; an entry that names no
    platform is taken as it is. Given ``platform`` (``load --platform``), an image must also
    be for it by its config, as the Docker CLI's ``load --platform`` asks."""
    if archive.exists("version") and read_member(archive, "version", 4096).startswith(b"Directory Transport Version"):
        # containers/image's dir: transport: a manifest.json too, but one image, unnamed
        raise CorruptArchive(f"archive {archive.name}", "a copy in the 'dir:' format (skopeo copy dir:, podman save "
                             "--format docker-dir), which load does not read; copy it to an OCI layout first "
                             "(skopeo copy dir:PATH oci:LAYOUT:TAG)")
    if archive.exists("manifest.json"):
        images = _docker_archive(archive)
    elif archive.exists("index.json"):
        images = _oci_layout(archive, platform or host())
    else:
        raise CorruptArchive(f"archive {archive.name}", "neither a docker-archive (manifest.json) nor an OCI layout (index.json)")
    return images if platform is None else _for_platform(archive, images, platform)


def _for_platform(archive: Archive, images: list[ArchiveImage], wanted: Platform) -> list[ArchiveImage]:
    """The images for ``wanted``: by the platform their index entry names, else by their config."""
    kept, others = [], []
    for image in images:
        actual = image.platform
        if actual is None:
            actual = Platform.from_json(load_json(read_member(archive, image.config_member), f"config {image.config_member}"))
        if actual is not None and wanted.rank(actual) is not None:
            kept.append(image)
        else:
            others.append(str(actual or "none named"))
    if not kept:
        raise NotFound(f"archive {archive.name}", f"no image for platform {wanted} (it has {', '.join(dict.fromkeys(others))})")
    return kept


def _docker_archive(archive: Archive) -> list[ArchiveImage]:
    subject = f"archive {archive.name} manifest.json"
    entries = load_json(read_member(archive, "manifest.json"), subject)
    if not isinstance(entries, list) or not entries:
        raise CorruptArchive(subject, "expected a non-empty list")
    originals = _original_manifests(archive) if archive.exists("index.json") else {}
    images = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) or not _strings(entry.get("Layers")):
            raise CorruptArchive(subject, "entry without Config and a list of Layers")
        tags = entry.get("RepoTags") or []
        if not _strings(tags):
            raise CorruptArchive(subject, "RepoTags is not a list of names")
        config_member = _confine(entry["Config"], archive.name)
        image = ArchiveImage(None, config_member, [_confine(m, archive.name) for m in entry["Layers"]], None)
        image.names = list(tags)
        original = originals.get(config_member)
        if original is not None:  # Docker 25+: the registry manifest is in the archive too
            image.manifest, manifest = original
            image.manifest_media_type = manifest.media_type
            image.config = manifest.config
            image.layer_descriptors = list(manifest.layers)
            if len(manifest.layers) != len(image.layer_members):
                raise CorruptArchive(subject, f"{len(image.layer_members)} Layers but the manifest has {len(manifest.layers)}")
            _check_sizes(archive, image)
        images.append(image)
    return images


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_sizes(archive: Archive, image: ArchiveImage) -> None:
    """Descriptor sizes against the members they describe, before anything is stored."""
    assert image.config is not None and image.layer_descriptors is not None
    pairs = [(image.config, image.config_member), *zip(image.layer_descriptors, image.layer_members)]
    for desc, member in pairs:
        actual = archive.size(member)
        if actual != desc.size:
            raise SizeMismatch(f"blob {desc.digest}", expected=desc.size, actual=actual)


def _original_manifests(archive: Archive) -> dict[str, tuple[bytes, Manifest]]:
    """Manifests reachable from index.json, whatever their platform, by the member name of their config."""
    out = {}
    for _, raw, manifest, _names in _walk_index(archive, None, []):
        out[blob_member(manifest.config.digest)] = (raw, manifest)
    return out


Found = tuple[Descriptor, bytes, Manifest, list[str]]


def _walk_index(archive: Archive, wanted: Platform | None, others: list[str]) -> Iterator[Found]:
    """Manifests reachable from index.json: for ``wanted`` (see ``_chosen``), or all of them;
    the platforms passed over go to ``others``."""
    subject = f"archive {archive.name} index.json"
    index = load_json(read_member(archive, "index.json"), subject)
    yield from _walk(archive, index, subject, (), {}, 0, wanted, others, [])


def _walk(
    archive: Archive, index: Any, subject: str, ancestors: tuple[str, ...], read: dict[Any, Any], depth: int,
    wanted: Platform | None, others: list[str], inherited: list[str],
) -> Iterator[Found]:
    """Manifests below ``index``. Each blob is read and checked once, and each nested index
    walked once per name it is given, so a DAG of indexes naming one blob many times costs
    time in proportion to its entries times its names, not exponential.
    An entry without a name of its own takes the name of the index it is in (``inherited``): a
    multi-platform image is named once, on its index."""
    if depth > MAX_INDEX_DEPTH:
        raise CorruptArchive(subject, f"indexes nested more than {MAX_INDEX_DEPTH} deep")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise CorruptArchive(subject, "no manifests list")
    descs = [Descriptor.parse(raw_desc, subject) for raw_desc in index["manifests"]]
    chosen = _chosen(descs, wanted, others, inherited)
    for position, desc in enumerate(descs):
        if desc.digest in ancestors:
            raise CorruptArchive(subject, f"{desc.digest} refers to itself")
        seen = desc.digest in read
        raw, doc = read[desc.digest] if seen else _read_checked(archive, desc)
        read[desc.digest] = (raw, doc)
        kind = doc.get("mediaType") or desc.media_type
        if kind in INDEX_TYPES or "manifests" in doc:
            names = _names(desc) or inherited
            if ("walked", desc.digest, tuple(names)) not in read:  # a second mention under the same name brings nothing new
                read[("walked", desc.digest, tuple(names))] = True
                yield from _walk(archive, doc, f"index {desc.digest}", (*ancestors, desc.digest), read, depth + 1,
                                 wanted, others, names)
        elif kind in MANIFEST_TYPES or "config" in doc:
            names = _names(desc) or inherited
            if position not in chosen:
                continue
            if ("yielded", desc.digest, tuple(names[:1])) in read:
                continue  # the same image under the same name again: nothing to load twice
            read[("yielded", desc.digest, tuple(names[:1]))] = True
            parsed = read.get(("parsed", desc.digest)) or Manifest.parse(raw, f"manifest {desc.digest}", desc.media_type or None)
            read[("parsed", desc.digest)] = parsed
            yield desc, raw, parsed, names[:1]


def _read_checked(archive: Archive, desc: Descriptor) -> tuple[bytes, dict[str, Any]]:
    """The blob a descriptor names, checked against its size and digest, as a JSON object."""
    member = blob_member(desc.digest)
    size = archive.size(member)
    if size != desc.size:
        raise SizeMismatch(f"manifest {desc.digest}", expected=desc.size, actual=size)
    raw = read_member(archive, member)
    actual = digest_bytes(raw, parse_digest(desc.digest).algorithm)
    if actual != desc.digest:
        raise DigestMismatch(f"manifest {desc.digest}", expected=desc.digest, actual=actual)
    doc = load_json(raw, f"manifest {desc.digest}")
    if not isinstance(doc, dict):
        raise CorruptArchive(f"manifest {desc.digest}", "not an object")
    return raw, doc


def _names(desc: Descriptor) -> list[str]:
    """The image name an index entry gives, containerd's annotation first."""
    return [n for n in (desc.annotations.get(CONTAINERD_NAME), desc.annotations.get(REF_NAME)) if n][:1]


def _chosen(descs: list[Descriptor], wanted: Platform | None, others: list[str], inherited: list[str]) -> set[int]:
    """Positions of the entries of one index to load: per image name, the entry whose platform
    suits ``wanted`` best (the first of equals); every entry that names no platform; with no
    ``wanted``, all. Attestations (``unknown/unknown``) suit no platform."""
    best: dict[tuple[str, ...], tuple[int, int]] = {}
    chosen = set()
    for position, desc in enumerate(descs):
        platform = Platform.from_json(desc.platform) if desc.media_type not in INDEX_TYPES else None
        if wanted is None or platform is None:
            chosen.add(position)
            continue
        rank = wanted.rank(platform)
        if rank is None:
            if "unknown" not in (platform.os, platform.architecture):
                others.append(str(platform))
            continue
        name = tuple(_names(desc) or inherited)
        if name not in best or rank < best[name][0]:
            best[name] = (rank, position)
    return chosen | {position for _, position in best.values()}


def _oci_layout(archive: Archive, wanted: Platform) -> list[ArchiveImage]:
    images = []
    others: list[str] = []
    for desc, raw, manifest, names in _walk_index(archive, wanted, others):
        config, layers = manifest.config, list(manifest.layers)
        image = ArchiveImage(config, blob_member(config.digest), [blob_member(d.digest) for d in layers], layers, raw,
                             manifest.media_type, names, Platform.from_json(desc.platform))
        _check_sizes(archive, image)
        images.append(image)
    if not images:
        found = f" (it has {', '.join(dict.fromkeys(others))})" if others else ""
        raise NotFound(f"archive {archive.name}", f"no image for platform {wanted}{found}")
    return images


def spool_dir_for(root: Path) -> Path:
    path = root / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


__all__ = ["Archive", "ArchiveImage", "find_images", "open_archive", "read_member", "spool_dir_for"]
