"""``docker import``: a filesystem tarball becomes an image of one layer.

The tarball (plain, gzip, bzip2, xz or zstd, told apart by its first bytes as
Docker's ``DecompressStream`` does) comes from a file, stdin or an HTTP(S) URL.
Its uncompressed tar is the layer: its digest is the diff_id, and the blob
kept is that tar gzipped, as ``commit`` keeps its layers. The layer is
unpacked with the same checks as a pulled one, so a tarball that is not a tar,
or that names a path outside the rootfs, is refused and nothing is kept. The
config is Docker's for an import (moby's ``ImportImage``): the platform, the
time, the ``-c`` changes over an empty container config, and a history of one
entry whose comment is the message, ``Imported from SOURCE`` by default
(``-`` for a file or stdin, as the Docker CLI sends both). Errors name the
source as the user gave it.
"""
from __future__ import annotations

import bz2
import lzma
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from layerstore import changes as config_changes
from layerstore.archive import spool_dir_for
from layerstore.commit import GzipWriter, NewLayer, register_new_image, rfc3339_now
from layerstore.compression import GZIP, NONE, ZSTD, decompress, read_chunks, sniff
from layerstore.digest import HashingWriter
from layerstore.errors import CorruptArchive, LayerStoreError, quote
from layerstore.mediatypes import OCI_LAYER_GZIP
from layerstore.export import compact_json
from layerstore.model import Descriptor
from layerstore.platforms import Platform, host
from layerstore.store import Store

_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"


@dataclass(frozen=True)
class Imported:
    id: str
    layer: NewLayer
    names: tuple[str, ...]


def _chunks(stream: BinaryIO, subject: str) -> Iterator[bytes]:
    """The uncompressed bytes of stream, whatever of Docker's compressions it is in."""
    head = stream.read(6)
    rest = read_chunks(stream)

    def raw() -> Iterator[bytes]:
        if head:
            yield head
        yield from rest

    if head.startswith(_BZIP2_MAGIC) or head.startswith(_XZ_MAGIC):
        new: Any = bz2.BZ2Decompressor if head.startswith(_BZIP2_MAGIC) else lzma.LZMADecompressor
        inflater = new()
        try:
            for data in raw():
                while data:
                    if inflater.eof:  # streams one after the other (pbzip2, xz -T): the next one
                        inflater = new()
                    yield inflater.decompress(data)
                    data = inflater.unused_data if inflater.eof else b""
        except (OSError, EOFError, lzma.LZMAError) as exc:
            raise CorruptArchive(subject, f"not a valid compressed stream ({exc})") from None
        if not inflater.eof:
            raise CorruptArchive(subject, "the compressed stream ends early")
        return
    kind = sniff(head)
    yield from decompress(raw(), kind if kind in (GZIP, ZSTD) else NONE, subject)


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def tarball_subject(source: str) -> str:
    """What an error names: the file, URL or ``-`` (stdin) the user gave."""
    return f"tarball {source if is_url(source) or source == '-' else quote(source)}"


def import_tarball(store: Store, stream: BinaryIO, *, source: str, name: str | None = None, message: str | None = None,
                   changes: Sequence[str] = (), platform: Platform | None = None) -> Imported:
    """A new image of one layer, the tarball read from stream (source: the file, URL or ``-`` it came
    from); tagged name if given."""
    tag = store.normalize_name(name) if name else None
    config_part = config_changes.apply({}, list(changes))  # before any work: a bad change loses nothing
    subject = tarball_subject(source)
    with store.lease(), tempfile.TemporaryFile(dir=spool_dir_for(store.root)) as spool:
        blob = HashingWriter(spool)
        gz = GzipWriter(blob)
        diff = HashingWriter(gz)
        for data in _chunks(stream, subject):
            diff.write(data)
        gz.close()
        spool.flush()
        if not store.layers.has(diff.digest):  # unpacked first: a tarball refused leaves no blob behind
            spool.seek(0)
            try:
                store.layers.unpack(spool, diff.digest, OCI_LAYER_GZIP)
            except LayerStoreError as exc:
                raise CorruptArchive(subject, exc.problem) from None
        spool.seek(0)
        stored = store.blobs.ingest(spool, blob.digest, blob.size, subject="layer")
        layer = NewLayer(diff.digest, diff.size, Descriptor(OCI_LAYER_GZIP, stored.digest, stored.size))
        here = platform or host()
        created = rfc3339_now()
        # the Docker CLI sends a file as it sends stdin, so the daemon names both "-"
        comment = message or f"Imported from {source if is_url(source) else '-'}"
        doc: dict[str, Any] = {"architecture": here.architecture, "os": here.os}
        if here.variant:
            doc["variant"] = here.variant
        doc.update({
            "created": created, "comment": comment, "config": config_part,
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
            "history": [{"created": created, "comment": comment}],
        })
        image_id, _ = register_new_image(store, compact_json(doc), [(layer.diff_id, layer.size, layer.blob)],
                                         (tag,) if tag else ())
    return Imported(image_id, layer, (tag,) if tag else ())
