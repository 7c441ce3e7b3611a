"""Writing images out: ``docker save`` and OCI archive tars of the original blobs.

Nothing is re-serialised: the manifest, config and layer blobs go into the
archive with the bytes the store verified when they came in, so
``save -> load -> save`` gives the same blobs, the same image ID and the
same manifest digest.

Both formats share one layout, the one Docker 25+ writes and every loader of
this project reads (``archive.py``):

- ``blobs/<alg>/<hex>``: every manifest, config and layer blob;
- ``oci-layout`` and ``index.json``: an OCI image layout whose index points
  at the original manifests, one descriptor per tag, named by
  ``io.containerd.image.name`` (the full reference) and
  ``org.opencontainers.image.ref.name`` (the tag, as Docker and containerd
  write it);
- docker-archive only: ``manifest.json`` with ``Config``, ``RepoTags`` and
  ``Layers`` as paths of blobs.

``manifest.json`` names the layer blobs as they are stored, usually gzip (or
zstd) compressed, never a decompressed copy: Docker's loader, containerd's
importer and containers/image (skopeo, podman) decompress a compressed layer
entry and check its diff_id against the config, and Docker itself writes
compressed layer blobs there when it keeps images in containerd. An
uncompressed copy would need a second manifest with other digests, so the
original one could not be in ``index.json``.

The tar is deterministic: entries sorted by name, mtime 0, owner 0:0, no
user or group names, and it ends with the two zero blocks of POSIX without
``tarfile``'s padding to a 10 KiB record.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from layerstore import reference
from layerstore.archive import CONTAINERD_NAME, REF_NAME, blob_member
from layerstore.digest import parse_digest
from layerstore.errors import CorruptArchive, InvalidReference, NotFound, quote
from layerstore.model import OCI_INDEX, Descriptor, Manifest
from layerstore.platforms import Platform, require
from layerstore.store import Store

__all__ = ["DOCKER_ARCHIVE", "FORMATS", "OCI_ARCHIVE", "SavedImage", "TarWriter", "preferred_manifest", "save", "select", "write_archive"]

DOCKER_ARCHIVE = "docker-archive"
OCI_ARCHIVE = "oci-archive"
FORMATS = (DOCKER_ARCHIVE, OCI_ARCHIVE)
OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
CHUNK = 1 << 20


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Writable(Protocol):
    def write(self, data: Any, /) -> int | None: ...


# -- the tar writer -------------------------------------------------------------------


class TarWriter:
    """A forward-only tar stream in PAX format, header by header.

    ``tarfile.TarFile`` pads the end of an archive to a 10 KiB record; this
    writes only the two zero blocks POSIX asks for (as Go's ``archive/tar``
    does), so an empty layer is the same 1024 bytes Docker writes.
    """

    def __init__(self, out: _Writable) -> None:
        self.out = out
        self.count = 0  # entries written
        self.size = 0  # bytes written

    def _write(self, data: bytes | memoryview) -> None:
        self.out.write(data)
        self.size += len(data)

    def add(self, info: tarfile.TarInfo, data: _Readable | None = None) -> None:
        """One entry; a regular file's ``info.size`` bytes are read from ``data``."""
        # PAX records carry what ustar cannot: long or non-ASCII names, large ids and sizes, xattrs.
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        self.count += 1
        if info.type not in tarfile.REGULAR_TYPES or not info.size:
            return
        if data is None:
            raise ValueError(f"tar entry {info.name!r}: data missing")
        left = info.size
        while left:
            chunk = data.read(min(left, CHUNK))
            if not chunk:
                raise CorruptArchive(f"tar entry {quote(info.name)}", f"source ended {left} bytes early (changed while read?)")
            self._write(chunk)
            left -= len(chunk)
        self._write(bytes(-info.size % tarfile.BLOCKSIZE))

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> None:
        info = _plain_info(name, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.add(info, io.BytesIO(data))

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        self.add(_plain_info(name, tarfile.DIRTYPE, mode))

    def close(self) -> None:
        self._write(bytes(2 * tarfile.BLOCKSIZE))


def _plain_info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


# -- choosing what to save -------------------------------------------------------------


@dataclass(frozen=True)
class SavedImage:
    """One image to write: its original manifest and the tags it is saved under."""

    id: str
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    tags: tuple[str, ...]  # familiar ``repository:tag``, as RepoTags shows them

    def blobs(self) -> list[Descriptor]:
        return [self.manifest, self.config, *self.layers]


def preferred_manifest(store: Store, image_id: str) -> tuple[Descriptor, Manifest]:
    """The manifest to write for an image: an original before a synthetic one, then the first stored,
    and only one whose layer blobs are all in the store."""
    rows = store.meta.query("SELECT digest, media_type, size FROM manifests WHERE image_id = ? ORDER BY synthetic, rowid", image_id)
    for row in rows:
        digest = str(row["digest"])
        if not store.blobs.has(digest):
            continue
        manifest = Manifest.parse(store.blobs.read(digest), f"manifest {digest}")
        if manifest.config.digest == image_id and all(store.blobs.has(d.digest) for d in manifest.layers):
            return Descriptor(str(row["media_type"]) or manifest.media_type, digest, int(row["size"])), manifest
    raise NotFound(f"image {image_id}", "no manifest with all its blobs in the store")


def select(store: Store, names: Sequence[str], platform: Platform | None = None) -> list[SavedImage]:
    """Images for ``docker save NAME...``, in the order first named.

    As Docker: ``repo:tag`` saves that tag; a bare ``repo`` every tag of the
    repository; an ID (full or short) or ``repo@digest`` saves the image
    without tags. With ``platform`` (``save --platform``), each image must be
    for it: an image holds one platform here, so one that is not is refused.
    """
    chosen: dict[str, list[str]] = {}
    for text in names:
        for image_id, tag in _lookup(store, text):
            if platform is not None and image_id not in chosen:  # one config read per image, however many tags
                require([platform], store.platform_of(image_id), f"image {quote(text)}")
            tags = chosen.setdefault(image_id, [])
            if tag is not None and tag not in tags:
                tags.append(tag)
    out = []
    for image_id, tags in chosen.items():
        desc, manifest = preferred_manifest(store, image_id)
        out.append(SavedImage(image_id, desc, manifest.config, manifest.layers, tuple(tags)))
    return out


def _lookup(store: Store, text: str) -> list[tuple[str, str | None]]:
    if text.startswith("sha256:") or reference.is_identifier(text):
        return [(store.resolve(text), None)]
    try:
        ref = reference.parse(text, default_tag=False)
    except InvalidReference:
        return [(store.resolve(text), None)]  # a short ID, or NotFound
    if ref.digest:
        return [(store.resolve(text), None)]
    if ref.tag is None:
        rows = store.meta.query("SELECT tag, image_id FROM tags WHERE repository = ? ORDER BY tag", ref.repository)
        if rows:
            return [(str(r["image_id"]), f"{ref.repository}:{r['tag']}") for r in rows]
        return [(store.resolve(text), None)]  # a short ID, or NotFound
    return [(store.resolve(text), str(ref))]


# -- writing ---------------------------------------------------------------------------


def compact_json(doc: Any) -> bytes:
    """JSON as the store writes its own documents: no spaces, UTF-8 as it is."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def index_json(images: Sequence[SavedImage]) -> bytes:
    """The OCI index: a descriptor per tag (per image when it has none)."""
    manifests = []
    for image in images:
        for tag in image.tags or (None,):
            annotations = {}
            if tag is not None:
                ref = reference.parse(tag)
                annotations = {CONTAINERD_NAME: f"{ref.full_name}:{ref.tag}", REF_NAME: str(ref.tag)}
            manifests.append(Descriptor(image.manifest.media_type, image.manifest.digest, image.manifest.size, annotations).to_json())
    return compact_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})


def manifest_json(images: Sequence[SavedImage]) -> bytes:
    """docker-archive's manifest.json: ``RepoTags`` is null for an image saved by ID, as Docker writes it."""
    entries = [
        {"Config": blob_member(image.config.digest), "RepoTags": list(image.tags) or None, "Layers": [blob_member(d.digest) for d in image.layers]}
        for image in images
    ]
    return compact_json(entries)


def write_archive(store: Store, images: Sequence[SavedImage], out: _Writable, fmt: str = DOCKER_ARCHIVE) -> None:
    """Write the archive of ``images`` to ``out`` (any writable stream: a pipe is fine)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown archive format {fmt!r}")
    blobs: dict[str, Descriptor] = {}
    for image in images:
        for desc in image.blobs():
            blobs.setdefault(desc.digest, desc)
    files: dict[str, bytes | Descriptor] = {blob_member(d): desc for d, desc in blobs.items()}
    files["index.json"] = index_json(images)
    files["oci-layout"] = OCI_LAYOUT
    if fmt == DOCKER_ARCHIVE:
        files["manifest.json"] = manifest_json(images)
    dirs = {"blobs"} | {f"blobs/{parse_digest(d).algorithm}" for d in blobs}
    tar = TarWriter(out)
    for name in sorted(dirs | set(files)):
        content = files.get(name)
        if content is None:
            tar.add_dir(name)
        elif isinstance(content, bytes):
            tar.add_bytes(name, content)
        else:
            _add_blob(store, tar, name, content)
    tar.close()


def _add_blob(store: Store, tar: TarWriter, name: str, desc: Descriptor) -> None:
    with store.blobs.open(desc.digest) as f:
        size = os.fstat(f.fileno()).st_size
        if size != desc.size:
            raise CorruptArchive(f"blob {desc.digest}", f"{size} bytes in the store, {desc.size} in its descriptor")
        info = _plain_info(name, tarfile.REGTYPE, 0o644)
        info.size = size
        tar.add(info, f)


@contextlib.contextmanager
def output_file(path: str | None, stdout: IO[bytes] | None = None) -> Iterator[IO[bytes]]:
    """stdout; or a temp file beside the file ``path`` names, renamed over it once whole
    (no half archive is left), through symlinks, which stay; or, where ``path`` is a
    device, a FIFO or a socket (``/dev/stdout`` into a pipe), that file itself: a rename
    would replace the node instead of writing to it."""
    if path is None:
        assert stdout is not None, "no path: the output goes to stdout"
        yield stdout
        stdout.flush()
        return
    if not _regular_or_missing(path):
        with open(path, "wb") as f:
            yield f
        return
    target = Path(os.path.realpath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _regular_or_missing(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save(store: Store, names: Sequence[str], output: str | None, stdout: IO[bytes], fmt: str = DOCKER_ARCHIVE,
         platform: Platform | None = None) -> list[SavedImage]:
    """Select ``names`` (for ``platform``) and write their archive to ``output`` (a path) or ``stdout``."""
    with store.lease():  # a concurrent rmi + prune keeps the blobs being written
        images = select(store, names, platform)
        with output_file(output, stdout) as out:
            write_archive(store, images, out, fmt)
    return images
