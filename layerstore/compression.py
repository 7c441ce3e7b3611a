"""Streaming decompression of layer blobs: gzip, zstd or none, told apart by magic bytes.

Every function here is an iterator over chunks, so a layer is never held in
memory whole, and output per step is bounded so a small compressed input
cannot balloon into gigabytes before the caller's size limit sees it.
Truncation is an error at this level: a gzip member or zstd frame that never
reaches its end marker raises CorruptArchive, because a tar reader alone can
mistake a stream cut at a header boundary for a short but valid archive.
"""
from __future__ import annotations

import zlib
from collections.abc import Generator, Iterable, Iterator
from typing import Any, Protocol

import zstandard

from layerstore.errors import CorruptArchive

__all__ = ["CHUNK", "GZIP", "NONE", "ZSTD", "decompress", "read_chunks", "sniff"]

CHUNK = 1 << 20
NONE, GZIP, ZSTD = "none", "gzip", "zstd"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_SKIPPABLE = range(0x184D2A50, 0x184D2A60)  # little-endian magic of skippable frames
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip wrapper; zlib checks the CRC32 and length trailer
# zstandard's decompressobj has no output cap, and an RLE block turns 4 input
# bytes into 128 KiB: feeding 2 KiB at a time bounds one call to 64 MiB.
_ZSTD_SLICE = 2048


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def sniff(head: bytes) -> str:
    """Compression of a stream from its first bytes (the way containerd decides, not by name)."""
    if head.startswith(_GZIP_MAGIC):
        return GZIP
    if head.startswith(_ZSTD_MAGIC):
        return ZSTD
    return NONE


def read_chunks(stream: _Readable, size: int = CHUNK) -> Iterator[bytes]:
    """Read ``stream`` to its end in chunks of up to ``size`` bytes."""
    while True:
        data = stream.read(size)
        if not data:
            return
        yield data


def decompress(chunks: Iterable[bytes], compression: str, subject: str) -> Iterator[bytes]:
    """Decompressed chunks of a ``compression`` stream; CorruptArchive names ``subject``."""
    if compression == GZIP:
        return _gunzip(chunks, subject)
    if compression == ZSTD:
        return _unzstd(chunks, subject)
    if compression == NONE:
        return iter(chunks)
    raise ValueError(f"unknown compression {compression!r}")


def _gunzip(chunks: Iterable[bytes], subject: str) -> Iterator[bytes]:
    """Inflate every gzip member (multi-member files are legal); allow zero padding after the last."""
    member: Any = None  # the current member's decompressor, None between members
    padding = started = False
    for data in chunks:
        while data:
            if padding or (member is None and data[0] == 0):
                # Tape-era writers pad the file with zero blocks; gzip(1) accepts that.
                padding = True
                if data.count(0) != len(data):
                    raise CorruptArchive(subject, "trailing garbage after the gzip stream")
                break
            if member is None:
                if started and data[0] != _GZIP_MAGIC[0]:
                    raise CorruptArchive(subject, "trailing garbage after the gzip stream")
                member, started = zlib.decompressobj(_GZIP_WBITS), True
            data = yield from _inflate(member, data, subject)
            if member.eof:
                member = None
    if member is not None:
        raise CorruptArchive(subject, "gzip stream ends before its end marker (truncated)")


def _inflate(member: Any, data: bytes, subject: str) -> Generator[bytes, None, bytes]:
    """Feed ``data`` to one gzip member, at most CHUNK output per step; return unused input."""
    while True:
        try:
            out = member.decompress(data, CHUNK)
        except zlib.error as exc:
            raise CorruptArchive(subject, f"gzip: {exc}") from None
        if out:
            yield out
        if member.eof:
            return bytes(member.unused_data)
        data = member.unconsumed_tail
        # All input taken and the output not full: nothing is left pending in zlib.
        if not data and len(out) < CHUNK:
            return b""


def _unzstd(chunks: Iterable[bytes], subject: str) -> Iterator[bytes]:
    """Decode zstd frames one after another, refusing a last frame that is cut short."""
    dctx = zstandard.ZstdDecompressor()
    frame: Any = None
    started = False
    pending: list[bytes] = []
    pending_size = 0
    for data in chunks:
        view = memoryview(data)
        for start in range(0, len(view), _ZSTD_SLICE):
            piece: Any = view[start : start + _ZSTD_SLICE]
            while piece:
                if frame is None:
                    if started and len(piece) >= 4 and not _is_zstd_frame(piece):
                        raise CorruptArchive(subject, "trailing garbage after the zstd stream")
                    frame, started = dctx.decompressobj(), True
                try:
                    out = frame.decompress(piece)
                except zstandard.ZstdError as exc:
                    raise CorruptArchive(subject, f"zstd: {exc}") from None
                piece = b""
                if frame.eof:  # a new frame (or garbage, which the next frame refuses) follows
                    piece = frame.unused_data
                    frame = None
                if out:
                    pending.append(out)
                    pending_size += len(out)
            if pending_size >= CHUNK:
                yield b"".join(pending)
                pending, pending_size = [], 0
    if pending:
        yield b"".join(pending)
    if frame is not None:
        raise CorruptArchive(subject, "zstd stream ends inside a frame (truncated)")


def _is_zstd_frame(data: Any) -> bool:
    magic = bytes(data[:4])
    return magic == _ZSTD_MAGIC or int.from_bytes(magic, "little") in _ZSTD_SKIPPABLE
