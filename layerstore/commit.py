"""Commit a container: its upper directory as a new layer, and the image that adds it.

The unionfs driver writes the upper directory in overlayfs' form as root
(whiteouts as character devices 0/0, possibly hard links of one shared
inode; opaque directories by ``trusted.overlay.opaque``; renamed lower
directories by ``trusted.overlay.redirect``) and in the OCI form otherwise
(``.wh.`` files, ``user.overlay.*``). The layer tar is always in the OCI form
(image-spec ``layer.md``), written as ``Changeset`` walks the upper
directory in sorted order:

- a whiteout becomes an empty ``.wh.NAME`` file; the whiteouts of a
  directory come right after the directory, before its other entries, so a
  reader that applies entries in stream order (Docker's ``applyLayer``,
  umoci) never deletes an entry of this very layer;
- an opaque directory is the directory entry followed by ``.wh..wh..opq``;
- a redirected directory (a lower directory renamed in the container) has
  no form in a tar: it becomes an opaque directory holding its whole merged
  content, and its old path already has the whiteout the rename left there.
  The merged content is read through the union core itself
  (``unionfs.union.Union`` over the upper and the image's layer
  directories, read-only and in-process): the very resolution the mount
  uses (redirects, opaque dirs, every whiteout form), without mounting
  anything, which this package never does by itself;
- names that share an inode become tar hard links to the first name written
  (whiteouts excepted: the driver links them all to one inode);
- owner, mode, mtime (in seconds, as Go's ``archive/tar`` writes it for
  Docker) and xattrs as ``SCHILY.xattr.*`` records, except the overlay and
  unionfs bookkeeping (``trusted.overlay.*``, ``user.overlay.*``,
  ``trusted.unionfs.*``, ``user.unionfs.*``); sockets are left out.

The tar is gzip-compressed (OCI ``tar+gzip``), stored as a blob, unpacked
into its layer directory, and the new config, manifest and metadata rows go
in as ``Store._load_one`` puts a loaded image: blobs and layer first, then
every row in one transaction. As ``docker commit``, a container without
changes adds no layer, only a history entry marked ``empty_layer``.
"""
from __future__ import annotations

import datetime
import errno
import logging
import os
import stat
import tarfile
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, Self

from layerstore import changes as config_changes
from layerstore.archive import spool_dir_for
from layerstore.containers import Containers
from layerstore.digest import HashingWriter, digest_bytes
from layerstore.errors import NotFound, quote
from layerstore.export import TarWriter, compact_json
from layerstore.mediatypes import (
    DOCKER_FOREIGN_LAYER_GZIP,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_NONDISTRIBUTABLE_LAYER,
)
from layerstore.model import OCI_CONFIG, OCI_MANIFEST, Descriptor, ImageConfig
from layerstore.store import Store
from unionfs.layer import rel_join
from unionfs.markers import (
    OPAQUE_MARKER,
    OPAQUE_VALUE,
    OPAQUE_XATTRS,
    WH_PREFIX,
    WHITEOUT_XATTRS,
    is_chardev_whiteout,
    is_hidden_xattr,
)
from unionfs.union import Union

__all__ = ["Changeset", "Committed", "GzipWriter", "NewLayer", "build_layer", "child_config", "commit", "export_rootfs",
           "register_new_image", "rfc3339_now"]

log = logging.getLogger(__name__)

CREATED_BY = "layerstore commit"
REDIRECT_XATTRS = ("trusted.overlay.redirect", "user.overlay.redirect")
GZIP_LEVEL = 6  # Go's and zlib's default: most of level 9's ratio at a fraction of its time
_NS = 1_000_000_000
_NO_XATTR = (errno.ENODATA, errno.ENOTSUP, errno.EPERM)

# Docker schema 2 layer types and their OCI names: the same blobs under an OCI manifest.
_OCI_LAYER_TYPE = {
    DOCKER_LAYER: OCI_LAYER,
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    DOCKER_LAYER + ".zstd": OCI_LAYER_ZSTD,
    DOCKER_FOREIGN_LAYER_GZIP: OCI_NONDISTRIBUTABLE_LAYER + "+gzip",
}


@dataclass(frozen=True)
class NewLayer:
    diff_id: str
    size: int  # bytes of the uncompressed tar
    blob: Descriptor  # the gzip blob


@dataclass(frozen=True)
class Committed:
    id: str
    manifest: str
    layer: NewLayer | None  # None: nothing changed, no layer added
    names: tuple[str, ...]


# -- the changeset ------------------------------------------------------------------------


def _xattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _NO_XATTR:
            return None
        raise


def _xattrs(path: str) -> dict[str, str]:
    """PAX records for the xattrs a layer may carry; values keep their bytes through surrogateescape."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _NO_XATTR:
            return {}
        raise
    out = {}
    for name in sorted(names):
        if is_hidden_xattr(name):
            continue
        value = _xattr(path, name)
        if value is not None:
            out["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
    return out


def _is_whiteout(path: str, st: os.stat_result) -> bool:
    if is_chardev_whiteout(st.st_mode, st.st_rdev):
        return True
    return stat.S_ISREG(st.st_mode) and st.st_size == 0 and any(_xattr(path, n) is not None for n in WHITEOUT_XATTRS)


def _is_opaque(path: str) -> bool:
    return any(_xattr(path, n) == OPAQUE_VALUE for n in OPAQUE_XATTRS) or os.path.lexists(os.path.join(path, OPAQUE_MARKER))


def _is_redirected(path: str) -> bool:
    return any(_xattr(path, n) is not None for n in REDIRECT_XATTRS)


_TYPES = {
    stat.S_IFREG: tarfile.REGTYPE,
    stat.S_IFDIR: tarfile.DIRTYPE,
    stat.S_IFLNK: tarfile.SYMTYPE,
    stat.S_IFCHR: tarfile.CHRTYPE,
    stat.S_IFBLK: tarfile.BLKTYPE,
    stat.S_IFIFO: tarfile.FIFOTYPE,
}


def _header(name: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = _TYPES[stat.S_IFMT(st.st_mode)]
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = st.st_mtime_ns // _NS
    if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    return info


def _marker(name: str, st: os.stat_result, mode: int) -> tarfile.TarInfo:
    """A ``.wh.`` entry: an empty regular file with the owner and time of what it stands for."""
    info = tarfile.TarInfo(name)
    info.mode = mode
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = st.st_mtime_ns // _NS
    return info


class Changeset:
    """Writes the changes of one upper directory over its image's layers as layer tar entries."""

    def __init__(self, upper: str, lowers: Sequence[str]) -> None:
        self.upper = os.path.abspath(upper)
        self.lowers = list(lowers)  # top first
        self._links: dict[tuple[int, int], str] = {}
        self._union: Union | None = None

    def close(self) -> None:
        if self._union is not None:
            self._union.close()
            self._union = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, tar: TarWriter) -> None:
        self._tar = tar
        self._upper_dir(".")

    def write_merged(self, tar: TarWriter) -> None:
        """The whole merged tree rather than the changes: ``export``."""
        self._tar = tar
        self._merged_dir(".")

    # -- the upper directory as it is ---------------------------------------------------
    def _upper_dir(self, rel: str) -> None:
        whiteouts: dict[str, os.stat_result] = {}
        others: list[tuple[str, os.stat_result]] = []
        for name in sorted(os.listdir(os.path.join(self.upper, rel))):
            if name == OPAQUE_MARKER:
                continue  # written with its directory
            path = os.path.join(self.upper, rel, name)
            st = os.lstat(path)
            if name.startswith(WH_PREFIX):
                whiteouts[name] = st
            elif _is_whiteout(path, st):
                whiteouts[WH_PREFIX + name] = st
            else:
                others.append((name, st))
        # The OCI form leaves .wh.NAME beside a NAME made again. In a tar that
        # pair breaks readers that turn the whiteout into a char device and
        # then replace it with the directory (Docker's overlay2, containerd):
        # the lower directory would show through again. A new non-directory
        # hides what is below by itself, a new directory by being opaque.
        replaced = {WH_PREFIX + name for name, _ in others} & whiteouts.keys()
        for name in sorted(whiteouts.keys() - replaced):
            self._tar.add(_marker(rel_join(rel, name), whiteouts[name], 0o600))
        for name, st in others:
            child = rel_join(rel, name)
            path = os.path.join(self.upper, child)
            if not stat.S_ISDIR(st.st_mode):
                self._entry(child, path, st)
            elif _is_redirected(path):
                self._dir(child, path, st, opaque=True)
                self._merged_dir(child)
            else:
                self._dir(child, path, st, opaque=WH_PREFIX + name in replaced or _is_opaque(path))
                self._upper_dir(child)

    # -- a renamed directory: its merged content ----------------------------------------
    def _merged(self) -> Union:
        if self._union is None:
            self._union = Union([self.upper, *self.lowers])
        return self._union

    def _merged_dir(self, rel: str) -> None:
        union = self._merged()
        node = union.node("/" if rel == "." else "/" + rel)
        for name, index, prel, _ino, _bits in sorted(union.listing(node)):
            path = os.path.join(union.layers[index].root, rel_join(prel, name))
            st = os.lstat(path)
            child = rel_join(rel, name)
            if stat.S_ISDIR(st.st_mode):
                self._dir(child, path, st, opaque=False)  # its opaque parent hides all below
                self._merged_dir(child)
            else:
                self._entry(child, path, st)

    # -- entries ----------------------------------------------------------------------
    def _dir(self, name: str, path: str, st: os.stat_result, opaque: bool) -> None:
        info = _header(name, st)
        info.pax_headers = _xattrs(path)
        self._tar.add(info)
        if opaque:
            self._tar.add(_marker(rel_join(name, OPAQUE_MARKER), st, stat.S_IMODE(st.st_mode) & 0o777))

    def _entry(self, name: str, path: str, st: os.stat_result) -> None:
        if stat.S_ISSOCK(st.st_mode):
            log.info("%s: a socket has no place in a layer; left out", quote(name))
            return
        info = _header(name, st)
        if st.st_nlink > 1:
            first = self._links.setdefault((st.st_dev, st.st_ino), name)
            if first != name:
                info.type, info.linkname = tarfile.LNKTYPE, first
                self._tar.add(info)
                return
        info.pax_headers = _xattrs(path)
        if info.type == tarfile.SYMTYPE:
            info.linkname = os.readlink(path)
        if info.type != tarfile.REGTYPE:
            self._tar.add(info)
            return
        info.size = st.st_size
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            self._tar.add(info, f)


class GzipWriter:
    """A gzip stream with no name and mtime 0 in its header: the same changes give the same blob."""

    def __init__(self, out: HashingWriter) -> None:
        self.out = out
        self._z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def write(self, data: Any, /) -> int:
        self.out.write(self._z.compress(data))
        return len(data)

    def close(self) -> None:
        self.out.write(self._z.flush())


def build_layer(store: Store, upper: str, lowers: Sequence[str]) -> NewLayer | None:
    """The gzip layer blob of an upper directory, in the blob store and unpacked; None when empty."""
    with tempfile.TemporaryFile(dir=spool_dir_for(store.root)) as spool:
        blob = HashingWriter(spool)
        gz = GzipWriter(blob)
        diff = HashingWriter(gz)
        tar = TarWriter(diff)
        with Changeset(upper, lowers) as changes:
            changes.write(tar)
        tar.close()
        gz.close()
        if tar.count == 0:
            return None
        spool.flush()
        spool.seek(0)
        stored = store.blobs.ingest(spool, blob.digest, blob.size, subject="layer")
    layer = NewLayer(diff.digest, diff.size, Descriptor(OCI_LAYER_GZIP, stored.digest, stored.size))
    if not store.layers.has(layer.diff_id):
        with store.blobs.open(stored.digest) as f:
            store.layers.unpack(f, layer.diff_id, OCI_LAYER_GZIP)
    return layer


# -- the image ------------------------------------------------------------------------------


def rfc3339_now() -> str:
    ns = time.time_ns()
    stamp = datetime.datetime.fromtimestamp(ns // _NS, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ns % _NS:09d}Z"


def child_config(parent: dict[str, Any], diff_id: str | None, *, created: str, message: str | None = None,
                 author: str | None = None, changes: Sequence[str] = ()) -> bytes:
    """The parent's config with the new layer and its history entry (Docker's ``NewChildImage``),
    and the Dockerfile instructions of ``commit -c`` applied to its container config."""
    config = dict(parent)
    if changes:
        config["config"] = config_changes.apply(dict(config.get("config") or {}), list(changes))
    rootfs = dict(config.get("rootfs") or {})
    rootfs["type"] = "layers"
    rootfs["diff_ids"] = [*(rootfs.get("diff_ids") or []), *([diff_id] if diff_id else [])]
    config["rootfs"] = rootfs
    entry: dict[str, Any] = {"created": created, "created_by": CREATED_BY}
    if author:
        entry["author"] = author
    if message:
        entry["comment"] = message
    if diff_id is None:
        entry["empty_layer"] = True
    config["history"] = [*(config.get("history") or []), entry]
    config["created"] = created
    if author:
        config["author"] = author
    else:
        config.pop("author", None)
    # They describe the container the parent was built in, not this one.
    config.pop("container", None)
    config.pop("container_config", None)
    return compact_json(config)


def _oci_manifest(config: Descriptor, layers: Sequence[Descriptor]) -> bytes:
    return compact_json({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    })


def register_new_image(store: Store, config_bytes: bytes, layers: list[tuple[str, int, Descriptor]],
                       names: tuple[str, ...]) -> tuple[str, str]:
    """An image the store made itself (``commit``, ``import``), whose layers are stored: its
    config and an OCI manifest as blobs, then the image; (image ID, manifest digest). Under
    the caller's lease."""
    config_digest = digest_bytes(config_bytes)
    config = ImageConfig.parse(config_bytes, f"config {config_digest}")
    manifest_bytes = _oci_manifest(Descriptor(OCI_CONFIG, config_digest, len(config_bytes)), [d for _, _, d in layers])
    store.blobs.put_bytes(config_bytes, config_digest, "config")
    manifest = store.blobs.put_bytes(manifest_bytes, None, "manifest")
    store.register(config_digest, len(config_bytes), config, manifest.digest, manifest.size, OCI_MANIFEST, False,
                   layers, names)
    return config_digest, manifest.digest


def export_rootfs(store: Store, container: str, out: IO[bytes]) -> int:
    """``docker export``: the container's filesystem as it shows it, as one tar; the entries
    written. Copy-ups still in flight are published first, as for ``commit``."""
    containers = Containers(store)
    c = containers.get(container)
    containers.settle(c)
    spec = containers.spec(c)
    layers = [*([spec.upperdir] if spec.upperdir else []), *spec.lowerdirs]
    tar = TarWriter(out)
    with Changeset(layers[0], layers[1:]) as changes:
        changes.write_merged(tar)
    tar.close()
    return tar.count


def commit(store: Store, container: str, name: str | None = None, *, message: str | None = None,
           author: str | None = None, changes: Sequence[str] = ()) -> Committed:
    """A new image: the container's image plus a layer of the container's changes, tagged ``name``."""
    tag = store.normalize_name(name) if name else None
    config_changes.apply({}, list(changes))  # a change that cannot apply is refused before any work
    containers = Containers(store)
    c = containers.get(container)
    if c.read_only:
        raise NotFound(f"container {c.name}", "read-only: it has no layer to commit")
    containers.settle(c)
    upper, _ = containers.paths(c.id)
    rows = store.meta.query(
        "SELECT il.diff_id, il.blob, il.media_type, il.blob_size, l.size FROM image_layers il "
        "JOIN layers l ON l.diff_id = il.diff_id WHERE il.image_id = ? ORDER BY il.position",
        c.image_id,
    )
    layers = [(str(r["diff_id"]), int(r["size"]), Descriptor(_OCI_LAYER_TYPE.get(r["media_type"], r["media_type"]), r["blob"], int(r["blob_size"]))) for r in rows]
    lowers = [str(store.layers.path(diff_id)) for diff_id, _, _ in reversed(layers)]
    parent = store.config(c.image_id)
    with store.lease():  # prune keeps the new blobs and layer until the rows below refer to them
        new = build_layer(store, str(upper), lowers)
        if new is not None:
            layers.append((new.diff_id, new.size, new.blob))
        config_bytes = child_config(parent, new.diff_id if new else None, created=rfc3339_now(), message=message,
                                    author=author, changes=changes)
        image_id, manifest = register_new_image(store, config_bytes, layers, (tag,) if tag else ())
    return Committed(image_id, manifest, new, (tag,) if tag else ())
