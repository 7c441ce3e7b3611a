"""tarfile subclasses for layer streams: strict about corruption, quick on plain headers.

tarfile does all the format work (PAX and GNU long names, sparse maps,
base-256 numbers); these subclasses change three things:

- Strictness. After the first member, tarfile reads a bad checksum, a short
  header or the end of the data as the end of the archive. For a layer that
  is truncation or corruption, and it raises BadTar. Only a zero block ends.
- Speed. ``frombuf`` parses every header field through small helpers and
  sums the checksum over a 504-int tuple, about 12 µs a header, as much as
  GNU tar spends on a whole entry. The fast path here parses ordinary octal
  ustar/GNU headers in a few µs and hands anything unusual (sparse,
  base-256, a checksum that only matches signed) to tarfile unchanged.
- Streaming. ``LayerTarFile.next`` keeps no list of members and only ever
  skips forward, so it reads a forward-only stream of any length.
"""
from __future__ import annotations

import struct
import tarfile
import zlib
from typing import Any, Self

__all__ = ["BadTar", "LayerTarFile", "LayerTarInfo"]

# tarfile's header errors, undocumented (and so missing from typeshed).
_EOFHeaderError: type[Exception] = tarfile.EOFHeaderError  # type: ignore[attr-defined]
_EmptyHeaderError: type[Exception] = tarfile.EmptyHeaderError  # type: ignore[attr-defined]
_TruncatedHeaderError: type[Exception] = tarfile.TruncatedHeaderError  # type: ignore[attr-defined]

# name mode uid gid size mtime chksum type linkname magic+version uname gname devmajor devminor prefix
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s")
_SPACES_SUM = 8 * 0x20  # the checksum field counts as eight spaces
# Entry types whose header stands alone: no PAX, GNU long-name or sparse records follow.
_PLAIN_TYPES = frozenset(
    (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
     tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE)
)  # fmt: skip


class BadTar(Exception):
    """A header error that tarfile would otherwise take for the end of the archive."""


class LayerTarInfo(tarfile.TarInfo):
    """TarInfo with a strict end of archive and a fast path for plain headers."""

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> Self:
        try:
            return cls._fromtarfile(archive)
        except _EOFHeaderError:
            raise
        except _EmptyHeaderError:
            if archive.offset == 0:
                raise BadTar("empty stream") from None
            raise BadTar("ends without an end-of-archive marker (truncated)") from None
        except _TruncatedHeaderError:
            raise BadTar("ends inside a header (truncated)") from None
        except tarfile.HeaderError as exc:
            raise BadTar(f"bad header at byte {archive.offset}: {exc}") from None

    @classmethod
    def _fromtarfile(cls, archive: tarfile.TarFile) -> Self:
        """tarfile's fromtarfile, with its _proc_builtin inlined for the plain types."""
        buf = archive.fileobj.read(tarfile.BLOCKSIZE)
        obj = cls.frombuf(buf, archive.encoding, archive.errors)
        obj.offset = archive.fileobj.tell() - tarfile.BLOCKSIZE
        if obj.type not in _PLAIN_TYPES or archive.pax_headers:
            return obj._proc_member(archive)  # type: ignore[attr-defined,no-any-return]
        obj.offset_data = obj.offset + tarfile.BLOCKSIZE
        archive.offset = obj.offset_data
        if obj.type in tarfile.REGULAR_TYPES:
            archive.offset += -(-obj.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        return obj

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        try:
            obj = cls._fast_frombuf(bytes(buf), encoding, errors)
        except (ValueError, IndexError, struct.error):
            obj = None
        return obj if obj is not None else super().frombuf(buf, encoding, errors)

    @classmethod
    def _fast_frombuf(cls, buf: bytes, encoding: str, errors: str) -> Self | None:
        """The same TarInfo as tarfile.TarInfo.frombuf, or None to let tarfile decide."""
        if len(buf) != tarfile.BLOCKSIZE or buf[156:157] == tarfile.GNUTYPE_SPARSE:
            return None
        (name, mode, uid, gid, size, mtime, chksum, kind, linkname, _magic,
         uname, gname, devmajor, devminor, prefix) = _HEADER.unpack_from(buf)  # fmt: skip
        if (mode[0] | uid[0] | gid[0] | size[0] | mtime[0] | devmajor[0] | devminor[0]) & 0x80:
            return None  # base-256 numbers (large ids and sizes): tarfile's nti
        # adler32's low half is 1 + the byte sum mod 65521; a 256-byte half sums
        # to at most 65280, so each half's sum comes out exact.
        total = (zlib.adler32(buf[:256]) & 0xFFFF) + (zlib.adler32(buf[256:]) & 0xFFFF) - 2
        checksum = _octal(chksum)
        if total == 0 or checksum != total - sum(buf[148:156]) + _SPACES_SUM:
            return None  # a zero block, or a checksum for tarfile to judge (signed sums)
        obj = cls()
        obj.name = name.partition(b"\0")[0].decode(encoding, errors)
        obj.mode = _octal(mode)
        obj.uid = _octal(uid)
        obj.gid = _octal(gid)
        obj.size = _octal(size)
        obj.mtime = _octal(mtime)
        obj.chksum = checksum
        obj.type = kind
        obj.linkname = linkname.partition(b"\0")[0].decode(encoding, errors)
        obj.uname = uname.partition(b"\0")[0].decode(encoding, errors)
        obj.gname = gname.partition(b"\0")[0].decode(encoding, errors)
        obj.devmajor = _octal(devmajor)
        obj.devminor = _octal(devminor)
        if kind == tarfile.AREGTYPE and obj.name.endswith("/"):
            obj.type = tarfile.DIRTYPE  # old V7 tar: a directory is a file with a trailing slash
        if obj.type == tarfile.DIRTYPE:
            obj.name = obj.name.rstrip("/")
        text_prefix = prefix.partition(b"\0")[0]
        if text_prefix and kind not in tarfile.GNU_TYPES:
            obj.name = text_prefix.decode(encoding, errors) + "/" + obj.name
        return obj


def _octal(field: bytes) -> int:
    """An octal field as tarfile's nti reads it; ValueError (so tarfile decides) on anything odd."""
    return int(field.rstrip(b"\0 ") or b"0", 8)


class LayerTarFile(tarfile.TarFile):
    """A TarFile over a forward-only stream that yields members and keeps none of them.

    Open it with ``mode="r"`` on a file object whose ``seek`` moves forward
    only; the caller reads (or not) each member's data before the next call.
    """

    firstmember: tarfile.TarInfo | None  # set by TarFile.__init__, undeclared in typeshed

    def __init__(self, fileobj: tarfile._Fileobj, **kwargs: Any) -> None:
        kwargs.setdefault("tarinfo", LayerTarInfo)
        super().__init__(fileobj=fileobj, mode="r", **kwargs)

    def next(self) -> tarfile.TarInfo | None:
        if self.firstmember is not None:  # read by __init__
            member, self.firstmember = self.firstmember, None
            return member
        if self.fileobj.tell() != self.offset:
            self.fileobj.seek(self.offset)  # past the rest of the data and its padding
        try:
            return self.tarinfo.fromtarfile(self)
        except _EOFHeaderError:
            return None
