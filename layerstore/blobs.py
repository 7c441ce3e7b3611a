"""Content-addressed blobs: ``blobs/sha256/<hex>``, written through ``ingest/``.

Bytes are hashed while they are written to an ingest file; only a file whose
size and digest match what was announced is fsynced, renamed into place and
made read-only, so a blob that exists is a blob that is right. Writing a blob
that is already there is deduplication, not an error.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from layerstore.digest import DigestCounter, HashingWriter, parse_digest
from layerstore.errors import NotFound
from unionfs import crashpoints

CHUNK = 1 << 20


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Stored:
    """A blob in the store; ``existed`` when it was there before this write."""

    digest: str
    size: int
    existed: bool = False


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "blobs"
        self.ingest_dir = root / "ingest"
        for algorithm in ("sha256", "sha512"):
            (self.dir / algorithm).mkdir(parents=True, exist_ok=True)
        self.ingest_dir.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        d = parse_digest(digest)
        return self.dir / d.algorithm / d.hex

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {digest}", "not in the store") from None

    def open(self, digest: str) -> IO[bytes]:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest}", "not in the store") from None

    def read(self, digest: str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def digests(self) -> Iterator[str]:
        for algorithm_dir in self.dir.iterdir():
            for entry in algorithm_dir.iterdir():
                yield f"{algorithm_dir.name}:{entry.name}"

    def delete(self, digest: str) -> None:
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            pass
        crashpoints.point("blob.deleted")

    def put_bytes(self, data: bytes, expected: str | None = None, subject: str = "blob") -> Stored:
        import io

        return self.ingest(io.BytesIO(data), expected, len(data), subject=subject)

    def ingest(
        self, stream: _Readable, expected: str | None = None, size: int | None = None, *, subject: str = "blob"
    ) -> Stored:
        """Write a blob from stream, checked against expected digest and size when given."""
        if expected is not None and self.has(expected):
            return Stored(expected, self.size(expected), existed=True)
        algorithm = parse_digest(expected).algorithm if expected else "sha256"
        tmp = self.ingest_dir / f"{secrets.token_hex(8)}.part"
        try:
            with open(tmp, "xb") as raw:
                writer = HashingWriter(raw, algorithm)
                while chunk := stream.read(CHUNK):
                    writer.write(chunk)
                    crashpoints.point("blob.write")
                raw.flush()
                writer.verify(f"{subject} {expected}" if expected else subject, expected or writer.digest, size)
                os.fsync(raw.fileno())
            crashpoints.point("blob.synced")
            return Stored(writer.digest, writer.size, self._publish(tmp, writer.digest))
        finally:
            tmp.unlink(missing_ok=True)

    def adopt(self, stream: _Readable, fd: int, path: Path, expected: str, size: int, *, subject: str = "blob") -> Stored:
        """Make the file at ``path`` (open as ``fd``) the blob, without a copy.

        ``stream`` yields the file's whole content, writing to it what is not
        there yet (a download); the bytes are hashed as they pass, and only a
        file whose digest and size match is fsynced, made read-only and
        renamed into place: one rename, so there is never a moment with a
        half-checked blob in view, nor one with the file under two names.
        """
        counter = DigestCounter(parse_digest(expected).algorithm)
        while chunk := stream.read(CHUNK):
            counter.update(chunk)
        counter.verify(f"{subject} {expected}", expected, size)
        os.fsync(fd)
        crashpoints.point("blob.synced")
        existed = self._publish(path, expected)
        fsync_dir(path.parent)
        return Stored(expected, counter.size, existed)

    def _publish(self, path: Path, digest: str) -> bool:
        """Put a verified, synced file in place as the blob: read-only, one rename.

        Whether the blob was there already (then this was deduplication)."""
        final = self.path(digest)
        existed = final.exists()
        os.chmod(path, 0o444)
        os.replace(path, final)
        crashpoints.point("blob.renamed")
        fsync_dir(final.parent)
        return existed

    def stale_ingests(self) -> list[Path]:
        return list(self.ingest_dir.iterdir())
