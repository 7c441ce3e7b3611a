"""Unpack one layer stream into a directory that holds exactly that layer's changeset.

``unpack_layer`` reads a layer blob (gzip, zstd or plain tar) as a stream,
computes its diff_id (the digest of the uncompressed tar, OCI image-spec
config.md) on the way, and writes every entry under ``dest_dir``. OCI
whiteouts (``.wh.NAME``, ``.wh..wh..opq``) are kept as the plain empty files
they are in the tar, so the directory stays an exact, root-free copy of the
changeset that can be turned back into the same tar; applying whiteouts is
the union filesystem's job, not the unpacker's.

``dest_dir`` is a staging directory: on any error everything the call made
is removed again, and on success the caller renames the directory into its
place under the layer's diff_id, so a half-unpacked layer is never visible.

Safety follows umoci and containerd ``pkg/archive`` (see ``confined``).
Python's ``tarfile`` extraction filters are not used: the ``data`` filter
refuses device nodes and setuid bits, which image layers legitimately carry.

Hostile entries are refused with UnsafeArchiveEntry (names that leave the
layer, are longer than the kernel takes, or abuse whiteout names) or
CorruptArchive (header fields no file can have). Duplicate entries are not an
error: the later one wins, as in Docker, containerd and GNU tar. A layer
larger than ``max_size`` uncompressed bytes (default: $LAYERSTORE_MAX_LAYER_SIZE,
else 64 GiB) stops with SizeLimitExceeded as soon as the limit is passed.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import io
import math
import itertools
import logging
import os
import re
import shutil
import stat
import tarfile
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from layerstore import compression
from layerstore.confined import ConfinedTree, Missing, clean_name
from layerstore.digest import DigestCounter, HashingReader, parse_digest
from layerstore.errors import (
    AlreadyExists,
    CorruptArchive,
    DigestMismatch,
    LayerStoreError,
    SizeLimitExceeded,
    UnsafeArchiveEntry,
    quote,
)
from layerstore.layertar import BadTar, LayerTarFile
from layerstore.mediatypes import layer_compression
from layerstore.prefetch import Prefetch
from unionfs import crashpoints

__all__ = ["DEFAULT_MAX_LAYER_SIZE", "MAX_LAYER_SIZE_ENV", "SkippedEntry", "UnpackResult", "max_layer_size", "unpack_layer"]

log = logging.getLogger(__name__)

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NS = 1_000_000_000
_MAX_NS = (1 << 63) - 1  # what an int64 nanosecond count (Go's time.UnixNano) can hold
NAME_MAX = 255  # bytes in one path component (Linux)
PATH_MAX = 4096  # bytes in a path, its terminating NUL included (Linux)
_MAX_ID = (1 << 32) - 2  # uid_t/gid_t; (uid_t)-1 means "leave unchanged" to chown
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_AUFS_META = ".wh..wh."  # aufs bookkeeping (.wh..wh.plnk, .wh..wh.orph): Docker skips it

MAX_LAYER_SIZE_ENV = "LAYERSTORE_MAX_LAYER_SIZE"
DEFAULT_MAX_LAYER_SIZE = 64 << 30
_SIZE = re.compile(r"(\d+(?:\.\d+)?) ?([kmgtp]?)(?:i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def max_layer_size() -> int:
    """The limit on a layer's uncompressed bytes: $LAYERSTORE_MAX_LAYER_SIZE, else 64 GiB.

    The value takes Docker's size syntax (``--shm-size``, ``--memory``):
    bytes, or a number with ``k``, ``m``, ``g``, ``t`` or ``p`` (binary units,
    ``64g`` = ``64GiB``). A limit guards against decompression bombs; a layer
    as big as the limit is still accepted.
    """
    value = os.environ.get(MAX_LAYER_SIZE_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_LAYER_SIZE
    match = _SIZE.fullmatch(value)
    if match is None or float(match[1]) * _UNITS[match[2].lower()] < 1:
        raise LayerStoreError(f"environment variable {MAX_LAYER_SIZE_ENV}", f"not a size: {quote(value)} (e.g. 64g, 512m)")
    return int(float(match[1]) * _UNITS[match[2].lower()])


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class SkippedEntry:
    """An entry, or part of one, that could not be recreated (devices without root)."""

    name: str
    reason: str


@dataclass(frozen=True)
class UnpackResult:
    """What one unpack wrote and read.

    ``size`` counts the uncompressed tar stream, trailing padding included;
    ``compressed_digest``/``compressed_size`` are of the bytes read from the
    stream (equal to the diff_id and size for an uncompressed layer).
    ``implicit_dirs`` are parents that no entry described: made with mode
    0755, they carry no metadata from the layer.
    """

    diff_id: str
    size: int
    compression: str
    compressed_digest: str
    compressed_size: int
    entries: int
    skipped: tuple[SkippedEntry, ...] = ()
    implicit_dirs: tuple[str, ...] = ()


def unpack_layer(
    stream: _Readable,
    dest_dir: str | os.PathLike[str],
    *,
    media_type: str | None = None,
    expected_diff_id: str | None = None,
    privileged: bool | None = None,
    max_size: int | None = None,
    implicit_xattr: str | None = None,
) -> UnpackResult:
    """Unpack the layer read from ``stream`` into the staging directory ``dest_dir``.

    ``dest_dir`` must be missing or empty. ``media_type`` must be a known
    layer type if given, but the compression is decided by the stream's
    magic bytes, as containerd does. ``privileged`` (default: running as
    root) enables chown and device nodes; without it devices are skipped
    and listed in the result. ``max_size`` limits uncompressed bytes
    (default: ``max_layer_size()``). ``implicit_xattr``: an xattr set (to
    ``1``) on each implicit directory before the directories take their modes:
    a user, unlike root, cannot reach one below a directory of mode 0 after.
    Raises DigestMismatch, CorruptArchive, UnsafeArchiveEntry,
    SizeLimitExceeded, AlreadyExists; nothing is left behind on error.
    """
    expected = str(parse_digest(expected_diff_id)) if expected_diff_id is not None else None
    announced = layer_compression(media_type) if media_type is not None else None
    limit = max_layer_size() if max_size is None else max_size
    subject = _subject(stream, expected)
    dest = os.fspath(dest_dir)
    created = _claim(dest)
    try:
        unpacker = _Unpacker(
            subject,
            privileged=os.geteuid() == 0 if privileged is None else privileged,
            max_size=limit,
            algorithm=expected.partition(":")[0] if expected else "sha256",
            implicit_xattr=implicit_xattr,
        )
        return unpacker.run(stream, dest, announced, expected)
    except BaseException:
        _discard(dest, created)
        raise


class _Unpacker:
    """One unpack: the stream pipeline, the tar reader and the entry writer."""

    def __init__(self, subject: str, *, privileged: bool, max_size: int, algorithm: str,
                 implicit_xattr: str | None = None) -> None:
        self.subject = subject
        self.privileged = privileged
        self.max_size = max_size
        self.algorithm = algorithm
        self.implicit_xattr = implicit_xattr

    def run(self, stream: _Readable, dest: str, announced: str | None, expected: str | None) -> UnpackResult:
        raw = HashingReader(stream, self.algorithm)
        kind, tar_chunks, diff = self._pipeline(raw, announced)
        root_fd = os.open(dest, _DIR_FLAGS & ~os.O_NOFOLLOW)
        tree = ConfinedTree(root_fd, layer=self.subject)
        try:
            with Prefetch(tar_chunks) as prefetched:
                source = _Source(prefetched, self.subject)
                writer = _EntryWriter(tree, source, privileged=self.privileged, layer=self.subject, max_size=self.max_size)
                entries = self._extract_all(source, writer)
                source.drain()  # trailing padding is part of the diff_id
            if expected is not None and diff.digest != expected:
                raise DigestMismatch(self.subject, expected=expected, actual=diff.digest)
            if self.implicit_xattr is not None:
                writer.mark(tree.implicit, self.implicit_xattr)
            writer.finish()
        finally:
            tree.close()
            os.close(root_fd)
        log.debug("%s: %d entries, %d bytes uncompressed", self.subject, entries, diff.size)
        return UnpackResult(
            diff_id=diff.digest,
            size=diff.size,
            compression=kind,
            compressed_digest=raw.digest,
            compressed_size=raw.size,
            entries=entries,
            skipped=tuple(writer.skipped),
            implicit_dirs=tuple(sorted(tree.implicit)),
        )

    def _pipeline(self, raw: HashingReader, announced: str | None) -> tuple[str, Iterator[bytes], DigestCounter]:
        """Compression, the uncompressed chunks, and the counter that becomes the diff_id."""
        head = _read_head(raw)
        kind = compression.sniff(head)
        if announced is not None and announced != kind:
            log.warning("%s: media type announces %s, content is %s; going by content", self.subject, announced, kind)
        chunks = itertools.chain([head], compression.read_chunks(raw))
        diff = raw if kind == compression.NONE else DigestCounter(self.algorithm)
        return kind, self._measured(compression.decompress(chunks, kind, self.subject), diff, kind), diff

    def _measured(self, chunks: Iterable[bytes], diff: DigestCounter, kind: str) -> Iterator[bytes]:
        """Hash the uncompressed stream (unless it is the raw one, hashed already) and cap its size."""
        hashed_already = kind == compression.NONE
        for chunk in chunks:
            if not hashed_already:
                diff.update(chunk)
            if diff.size > self.max_size:
                raise SizeLimitExceeded(self.subject, limit=self.max_size)
            yield chunk

    def _extract_all(self, source: _Source, writer: _EntryWriter) -> int:
        try:
            tar = LayerTarFile(source)
        except _TAR_ERRORS as exc:
            raise self._corrupt(exc) from None
        count = 0
        while True:
            try:
                info = tar.next()
            except _TAR_ERRORS as exc:
                raise self._corrupt(exc) from None
            if info is None:
                return count
            try:
                writer.write(info, tar.offset)
            except OSError as exc:  # ENAMETOOLONG, ENOSPC...: say which entry
                exc.add_note(f"{self.subject}: while writing entry {quote(info.name)}")
                raise
            count += 1
            crashpoints.point("unpack.entry")

    def _corrupt(self, error: Exception) -> CorruptArchive:
        """tarfile's format errors as CorruptArchive naming the layer."""
        return CorruptArchive(self.subject, f"tar: {error}")


# What tarfile raises on a malformed header: its own errors, and
# ValueError/OverflowError from number fields it does not check.
_TAR_ERRORS = (BadTar, tarfile.TarError, ValueError, OverflowError)


class _Source:
    """The uncompressed tar stream as a forward-only file for tarfile, and a copier of file data.

    tarfile's own stream mode (``r|``) re-slices its whole buffer on every
    512-byte header read; this keeps one chunk and an index into it, and
    copies file data to the target fd straight from the chunk.
    """

    def __init__(self, chunks: Iterator[bytes], subject: str) -> None:
        self._chunks = chunks
        self._subject = subject
        self._buf = b""
        self._view = memoryview(self._buf)
        self._pos = 0
        self._base = 0  # stream offset of self._buf[0]

    def tell(self) -> int:
        return self._base + self._pos

    def read(self, size: int = -1, /) -> bytes:
        end = self._pos + size
        if 0 <= size and end <= len(self._buf):
            data = self._buf[self._pos : end]
            self._pos = end
            return data
        return self._read_across(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        target = offset if whence == io.SEEK_SET else self.tell() + offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < self.tell():
            raise io.UnsupportedOperation("a layer stream only seeks forward")
        self._skip(target - self.tell())
        return self.tell()

    def write(self, data: bytes, /) -> int:
        raise io.UnsupportedOperation("read-only")

    def close(self) -> None:
        pass

    def copy_to(self, fd: int, size: int) -> None:
        """Write the next ``size`` bytes of the stream to ``fd``."""
        while size:
            if self._pos == len(self._buf) and not self._advance():
                raise CorruptArchive(self._subject, "tar: unexpected end of data inside a file (truncated)")
            count = min(size, len(self._buf) - self._pos)
            view = self._view[self._pos : self._pos + count]
            done = os.write(fd, view)
            while done < count:
                done += os.write(fd, view[done:])
            self._pos += count
            size -= count

    def drain(self) -> None:
        """Read to the end, so every trailing byte is hashed and the stream checks are made."""
        while self._advance():
            pass

    def _advance(self) -> bool:
        """Move to the next non-empty chunk; False at the end of the stream."""
        for chunk in self._chunks:
            if chunk:
                self._base += len(self._buf)
                self._buf, self._view, self._pos = chunk, memoryview(chunk), 0
                return True
        self._base += len(self._buf)
        self._buf, self._view, self._pos = b"", memoryview(b""), 0
        return False

    def _read_across(self, size: int) -> bytes:
        parts = [self._buf[self._pos :]]
        have = len(parts[0])
        self._pos = len(self._buf)
        while (size < 0 or have < size) and self._advance():
            take = len(self._buf) if size < 0 else min(size - have, len(self._buf))
            parts.append(self._buf[:take])
            self._pos = take
            have += take
        return b"".join(parts)

    def _skip(self, size: int) -> None:
        while size:
            if self._pos == len(self._buf) and not self._advance():
                return  # like a file: seeking past the end is allowed, the next read is short
            count = min(size, len(self._buf) - self._pos)
            self._pos += count
            size -= count


class _EntryWriter:
    """Writes tar entries under a ConfinedTree, one small method per entry type."""

    def __init__(self, tree: ConfinedTree, source: _Source, *, privileged: bool, layer: str, max_size: int) -> None:
        self.tree = tree
        self.max_size = max_size
        self.source = source
        self.privileged = privileged
        self.layer = layer
        self.skipped: list[SkippedEntry] = []
        self.skipped_names: set[str] = set()
        # Directory mode and times are set last, deepest first: creating
        # children changes a directory's mtime, and a read-only mode would
        # stop an unprivileged unpack from creating them.
        self.dirs: dict[str, tuple[int, int, int]] = {}
        # Two syscalls a file saved where they change nothing: a new file is
        # already ours (unless the root is setgid: then it takes the root's
        # group), and open() gives it exactly its mode when the umask clears
        # none of its bits and no default ACL steps in.
        root = os.fstat(tree.root_fd)
        self.owner = None if root.st_mode & stat.S_ISGID else (os.geteuid(), os.getegid())
        self.umask = None if _has_default_acl(tree.root_fd) else _umask()

    def write(self, info: tarfile.TarInfo, data_end: int) -> None:
        name = clean_name(info.name, layer=self.layer)
        if _AUFS_META in name and _is_aufs_meta(name):
            self._skip(name, "aufs metadata, not part of the image")
            return
        self._check(info, name)
        if self.skipped_names:
            self.skipped_names.discard(name)  # a later entry may make what an earlier one could not
        handler = _HANDLERS.get(info.type, _EntryWriter._unknown)
        handler(self, info, name, data_end)

    def finish(self) -> None:
        """Apply the deferred directory modes and times, deepest first."""
        for name in sorted(self.dirs, key=_deepest_first):
            mode, atime, mtime = self.dirs[name]
            if not name:
                self._dir_stat(self.tree.root_fd, mode, atime, mtime)
                continue
            with self._made_dir(name) as fd:
                self._dir_stat(fd, mode, atime, mtime)

    def mark(self, names: Iterable[str], xattr: str) -> None:
        """Set xattr on these directories, through fds: before ``finish``, while every
        directory still has the mode 0700 that lets its owner through."""
        for name in sorted(names):
            with self._made_dir(name) as fd:
                os.setxattr(fd, xattr, b"1")

    @contextlib.contextmanager
    def _made_dir(self, name: str) -> Iterator[int]:
        """An fd on a directory this unpack made, reached inside the tree."""
        parent, _, base = name.rpartition("/")
        fd = os.open(base, _DIR_FLAGS, dir_fd=self.tree.dir_fd(parent, entry=name, create=False))
        try:
            yield fd
        finally:
            os.close(fd)

    def _check(self, info: tarfile.TarInfo, name: str) -> None:
        """Refuse what no file system takes or what the union would misread, before anything is made."""
        _check_path(info.name, name, self.layer)
        base = name.rpartition("/")[2]
        if _WHITEOUT in name:
            self._check_whiteouts(info, name, base)
        if not (0 <= info.uid <= _MAX_ID and 0 <= info.gid <= _MAX_ID):
            raise CorruptArchive(self.layer, f"tar: entry {quote(info.name)} has owner {info.uid}:{info.gid}, out of range")
        if info.size < 0:
            raise CorruptArchive(self.layer, f"tar: entry {quote(info.name)} has a negative size")
        if info.size > self.max_size:
            raise SizeLimitExceeded(f"{self.layer} entry {quote(info.name)}", limit=self.max_size)
        if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE) and not (
            0 <= info.devmajor < 1 << 12 and 0 <= info.devminor < 1 << 20
        ):
            raise CorruptArchive(self.layer, f"tar: device {quote(info.name)} has a number out of range")
        if info.type == tarfile.SYMTYPE:
            if not info.linkname:
                raise UnsafeArchiveEntry(info.name, "symbolic link with an empty target", layer=self.layer)
            if len(os.fsencode(info.linkname)) >= PATH_MAX:
                raise UnsafeArchiveEntry(info.name, f"symbolic link target longer than PATH_MAX ({PATH_MAX})", layer=self.layer)

    def _check_whiteouts(self, info: tarfile.TarInfo, name: str, base: str) -> None:
        """``.wh.`` names are markers for the union: only as plain files, and only for a real name."""
        parent = name.rpartition("/")[0]
        if any(part.startswith(_WHITEOUT) for part in parent.split("/")):
            raise UnsafeArchiveEntry(info.name, "a whiteout cannot be a directory with entries below it", layer=self.layer)
        if not base.startswith(_WHITEOUT):
            return
        marker = "opaque marker" if base == _OPAQUE else "whiteout"
        if base != _OPAQUE and base[len(_WHITEOUT) :] in ("", ".", ".."):
            raise UnsafeArchiveEntry(info.name, f"whiteout for {quote(base[len(_WHITEOUT):])}, not a name", layer=self.layer)
        if info.type not in _WHITEOUT_TYPES:
            raise UnsafeArchiveEntry(info.name, f"{marker} must be a regular file", layer=self.layer)

    # -- one method per entry type ------------------------------------------

    def _file(self, info: tarfile.TarInfo, name: str, data_end: int) -> None:
        parent_fd, base = self._parent(info, name)
        mode = info.mode & 0o7777
        # a user, unlike root, sets user.* xattrs only on a file it may write: a file
        # read-only to its owner that may carry some (PAX records) takes its mode after them
        exact = self.umask is not None and not mode & (self.umask | 0o7000) and bool(mode & 0o200 or not info.pax_headers)
        try:
            fd = os.open(base, _FILE_FLAGS, mode if exact else 0o600, dir_fd=parent_fd)
        except FileExistsError:
            self._remove(parent_fd, base, name)
            fd = os.open(base, _FILE_FLAGS, mode if exact else 0o600, dir_fd=parent_fd)
        try:
            self._fill(fd, info, data_end)
            # chown clears setuid/setgid and file capabilities, so it goes
            # before the xattrs and the mode; data before all of them, since
            # writing would clear capabilities again.
            if self.privileged and (info.uid, info.gid) != self.owner:
                os.chown(fd, info.uid, info.gid)
            if info.pax_headers:
                self._set_xattrs(fd, info, name)
            if not exact:
                os.chmod(fd, mode)
            os.utime(fd, ns=_times(info))
        finally:
            os.close(fd)

    def _dir(self, info: tarfile.TarInfo, name: str, data_end: int) -> None:
        if not name:  # "./": the layer's own root directory
            if self.privileged:
                os.chown(self.tree.root_fd, info.uid, info.gid)
            self._set_xattrs(self.tree.root_fd, info, name)
        else:
            parent_fd, base = self._parent(info, name)
            try:
                os.mkdir(base, 0o700, dir_fd=parent_fd)
            except FileExistsError:
                # A directory over a directory merges (later metadata wins).
                if not stat.S_ISDIR(os.stat(base, dir_fd=parent_fd, follow_symlinks=False).st_mode):
                    self._remove(parent_fd, base, name)
                    os.mkdir(base, 0o700, dir_fd=parent_fd)
            self.tree.implicit.discard(name)
            self._set_owner_at(parent_fd, base, info, name)
        self.dirs[name] = (info.mode & 0o7777, *_times(info))

    def _symlink(self, info: tarfile.TarInfo, name: str, data_end: int) -> None:
        if "\0" in info.linkname:
            raise UnsafeArchiveEntry(info.name, "link target contains a NUL byte", layer=self.layer)
        parent_fd, base = self._parent(info, name)
        self._create(parent_fd, base, name, lambda: os.symlink(info.linkname, base, dir_fd=parent_fd))
        self._set_owner_at(parent_fd, base, info, name)
        os.utime(base, ns=_times(info), dir_fd=parent_fd, follow_symlinks=False)

    def _hardlink(self, info: tarfile.TarInfo, name: str, data_end: int) -> None:
        target = self._link_target(info)
        if target == name:
            return  # a link to itself: the file is already there
        if target in self.skipped_names:
            self._skip(name, f"hard link to skipped entry {quote(target)}")
            return
        target_parent, _, target_base = target.rpartition("/")
        try:
            # dup: resolving the link's own parent may push this fd out of the cache
            source_fd = os.dup(self.tree.dir_fd(target_parent, entry=info.name, create=False))
        except Missing:
            raise self._not_earlier(info) from None
        try:
            parent_fd, base = self._parent(info, name)
            self._create(parent_fd, base, name, lambda: self._link(info, source_fd, target_base, parent_fd, base))
        finally:
            os.close(source_fd)

    def _fifo(self, info: tarfile.TarInfo, name: str, data_end: int) -> None:
        parent_fd, base = self._parent(info, name)
        self._create(parent_fd, base, name, lambda: os.mkfifo(base, 0o600, dir_fd=parent_fd))
        self._set_meta_at(parent_fd, base, info, name)

    def _device(self, info: tarfile.TarInfo, name: str, data_end: int) -> None:
        parent_fd, base = self._parent(info, name)
        kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK
        device = os.makedev(info.devmajor, info.devminor)
        if not self.privileged:
            self._skip_at(parent_fd, base, name, "device node needs root")
            return
        try:
            self._create(parent_fd, base, name, lambda: os.mknod(base, kind | 0o600, device, dir_fd=parent_fd))
        except PermissionError:  # e.g. a user namespace without CAP_MKNOD
            self._skip_at(parent_fd, base, name, "device node not permitted here")
            return
        self._set_meta_at(parent_fd, base, info, name)

    def _unknown(self, info: tarfile.TarInfo, name: str, data_end: int) -> None:
        # tarfile skips the data; GNU volume labels and the like have no file to make.
        self._skip(name, f"unsupported tar entry type {info.type!r}")

    # -- helpers --------------------------------------------------------------

    def _parent(self, info: tarfile.TarInfo, name: str) -> tuple[int, str]:
        """Fd of the entry's parent directory (made if missing) and the entry's last component."""
        if not name:
            raise UnsafeArchiveEntry(info.name, "would replace the layer root", layer=self.layer)
        parent, _, base = name.rpartition("/")
        return self.tree.dir_fd(parent, entry=info.name), base

    def _create(self, parent_fd: int, base: str, name: str, make: Callable[[], object]) -> None:
        """Make a new entry; an existing one is removed first (the later entry wins, as in Docker)."""
        try:
            make()
        except FileExistsError:
            self._remove(parent_fd, base, name)
            make()

    def _remove(self, parent_fd: int, base: str, name: str) -> None:
        """Remove what is at ``base`` without following it; a directory goes with its contents."""
        if stat.S_ISDIR(os.stat(base, dir_fd=parent_fd, follow_symlinks=False).st_mode):
            shutil.rmtree(base, dir_fd=parent_fd)  # fd-based: never follows links inside
            self.tree.forget(name)
            prefix = name + "/"
            self.dirs = {k: v for k, v in self.dirs.items() if k != name and not k.startswith(prefix)}
        else:
            os.unlink(base, dir_fd=parent_fd)

    def _link_target(self, info: tarfile.TarInfo) -> str:
        try:
            target = clean_name(info.linkname, layer=self.layer)
        except UnsafeArchiveEntry as exc:
            raise UnsafeArchiveEntry(
                info.name, f"hard link target {quote(info.linkname)}: {exc.reason}", layer=self.layer
            ) from None
        if not target:
            raise UnsafeArchiveEntry(info.name, "hard link to the layer root", layer=self.layer)
        _check_path(info.name, target, self.layer)
        return target

    def _link(self, info: tarfile.TarInfo, source_fd: int, source: str, parent_fd: int, base: str) -> None:
        """linkat without AT_SYMLINK_FOLLOW: a link to a symlink links the symlink, like tar."""
        try:
            os.link(source, base, src_dir_fd=source_fd, dst_dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise self._not_earlier(info) from None
        except PermissionError:
            if stat.S_ISDIR(os.stat(source, dir_fd=source_fd, follow_symlinks=False).st_mode):
                raise UnsafeArchiveEntry(info.name, "hard link to a directory", layer=self.layer) from None
            raise

    def _not_earlier(self, info: tarfile.TarInfo) -> UnsafeArchiveEntry:
        return UnsafeArchiveEntry(
            info.name, f"hard link target {quote(info.linkname)} is not an earlier entry of this layer", layer=self.layer
        )

    def _fill(self, fd: int, info: tarfile.TarInfo, data_end: int) -> None:
        """Copy the entry's data; a size the file system cannot hold is the layer's fault, not the disk's."""
        try:
            self._fill_data(fd, info, data_end)
        except OSError as exc:
            if exc.errno not in (errno.EFBIG, errno.EINVAL, errno.EOVERFLOW):
                raise
            raise CorruptArchive(self.layer, f"tar: file {quote(info.name)} of {info.size} bytes: {exc.strerror}") from None

    def _fill_data(self, fd: int, info: tarfile.TarInfo, data_end: int) -> None:
        """Copy the entry's data; sparse entries get their holes back by seeking over them."""
        if self.source.tell() != info.offset_data:
            self.source.seek(info.offset_data)
        sparse: list[tuple[int, int]] | None = info.sparse  # type: ignore[assignment]
        if sparse is None:
            self.source.copy_to(fd, info.size)
            return
        if sum(length for _, length in sparse) > data_end - info.offset_data:
            raise CorruptArchive(self.layer, f"tar: sparse map of {quote(info.name)} exceeds its data")
        for offset, length in sparse:
            if offset < 0 or length < 0 or offset + length > info.size:
                raise CorruptArchive(self.layer, f"tar: sparse map of {quote(info.name)} exceeds the file size")
            if length:
                os.lseek(fd, offset, os.SEEK_SET)
                self.source.copy_to(fd, length)
        os.ftruncate(fd, info.size)

    def _set_owner_at(self, parent_fd: int, base: str, info: tarfile.TarInfo, name: str) -> None:
        """Owner (numeric ids, as the OCI spec asks) and xattrs of a non-regular entry."""
        if self.privileged and (info.uid, info.gid) != self.owner:
            os.chown(base, info.uid, info.gid, dir_fd=parent_fd, follow_symlinks=False)
        if info.pax_headers:
            # No fd-based l*xattr for a symlink or fifo: go through the parent's fd.
            self._set_xattrs(f"/proc/self/fd/{parent_fd}/{base}", info, name, follow=False)

    def _set_meta_at(self, parent_fd: int, base: str, info: tarfile.TarInfo, name: str) -> None:
        self._set_owner_at(parent_fd, base, info, name)
        os.chmod(base, info.mode & 0o7777, dir_fd=parent_fd)  # just made by us: not a symlink
        os.utime(base, ns=_times(info), dir_fd=parent_fd, follow_symlinks=False)

    def _set_xattrs(self, target: int | str, info: tarfile.TarInfo, name: str, follow: bool = True) -> None:
        for key, value in _xattrs(info):
            if key.startswith(_UNION_XATTRS):
                # The union reads these in layer dirs (opaque, redirect, implicit):
                # an image may only express whiteouts the OCI way, with .wh. entries.
                self._skip(name, f"xattr {key}: reserved for the union", whole=False)
                continue
            if value is None or "\0" in key:
                self._skip(name, f"xattr {quote(key)}: malformed PAX record", whole=False)
                continue
            if key == "system.posix_acl_default":
                self.umask = None  # new files below may now get modes from the ACL
            try:
                os.setxattr(target, key, value, follow_symlinks=follow)
            except OSError as exc:  # trusted.* without root, a filesystem without xattrs
                self._skip(name, f"xattr {quote(key)}: {exc.strerror}", whole=False)

    def _dir_stat(self, fd: int, mode: int, atime: int, mtime: int) -> None:
        os.chmod(fd, mode)
        os.utime(fd, ns=(atime, mtime))

    def _skip_at(self, parent_fd: int, base: str, name: str, reason: str) -> None:
        """Skip an entry we cannot make, but still remove what it replaces (the later entry wins)."""
        try:
            self._remove(parent_fd, base, name)
        except FileNotFoundError:
            pass
        self._skip(name, reason)

    def _skip(self, name: str, reason: str, *, whole: bool = True) -> None:
        """Record what could not be made; ``whole``: the entry itself is missing (links to it follow)."""
        log.warning("%s: skipping %s %s: %s", self.layer, "entry" if whole else "part of", quote(name), reason)
        self.skipped.append(SkippedEntry(name, reason))
        if whole:
            self.skipped_names.add(name)


_Handler = Callable[[_EntryWriter, tarfile.TarInfo, str, int], None]
_HANDLERS: dict[bytes, _Handler] = {
    tarfile.REGTYPE: _EntryWriter._file,
    tarfile.AREGTYPE: _EntryWriter._file,
    tarfile.CONTTYPE: _EntryWriter._file,
    tarfile.GNUTYPE_SPARSE: _EntryWriter._file,
    tarfile.DIRTYPE: _EntryWriter._dir,
    tarfile.SYMTYPE: _EntryWriter._symlink,
    tarfile.LNKTYPE: _EntryWriter._hardlink,
    tarfile.FIFOTYPE: _EntryWriter._fifo,
    tarfile.CHRTYPE: _EntryWriter._device,
    tarfile.BLKTYPE: _EntryWriter._device,
}


_UNION_XATTRS = ("trusted.overlay.", "user.overlay.", "trusted.unionfs.", "user.unionfs.")
# A hard link to a whiteout is a whiteout too (the existing test keeps it so).
_WHITEOUT_TYPES = frozenset((tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.LNKTYPE))


def _xattrs(info: tarfile.TarInfo) -> Iterator[tuple[str, bytes | None]]:
    """Extended attributes from PAX records: GNU tar's SCHILY.xattr and bsdtar's LIBARCHIVE.xattr.

    A value that cannot be decoded comes out as None, for the caller to skip.
    """
    for key, value in info.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            # tarfile decoded the raw value with surrogateescape; this restores the bytes.
            yield key[13:], value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            try:
                yield urllib.parse.unquote(key[17:]), base64.b64decode(value + "===")
            except (binascii.Error, ValueError):
                yield urllib.parse.unquote(key[17:]), None


def _times(info: tarfile.TarInfo) -> tuple[int, int]:
    """(atime, mtime) in nanoseconds: PAX records keep sub-second digits that a float loses.

    A time that no int64 nanosecond count holds (or "nan", "1e400" in a PAX
    record) becomes the epoch, as Docker's Chtimes does for out-of-range times.
    """
    seconds = info.mtime
    mtime = _clamp(int(seconds) * _NS) if math.isfinite(seconds) else 0
    headers = info.pax_headers
    if not headers:
        return mtime, mtime
    mtime = _pax_ns(headers.get("mtime"), mtime)
    return _pax_ns(headers.get("atime"), mtime), mtime


def _pax_ns(value: str | None, default: int) -> int:
    if not value:
        return default
    negative = value.startswith("-")
    whole, _, fraction = value.lstrip("-").partition(".")
    if len(whole) > 20 or not (whole + fraction).isdigit():
        return default if len(whole) <= 20 else 0
    ns = int(whole or "0") * _NS + int((fraction + "000000000")[:9])
    return _clamp(-ns if negative else ns)


def _clamp(ns: int) -> int:
    return ns if -_MAX_NS <= ns <= _MAX_NS else 0


def _check_path(entry: str, name: str, layer: str) -> None:
    """Names the kernel would refuse with ENAMETOOLONG, refused up front and naming the entry."""
    raw = os.fsencode(name)
    if len(raw) <= NAME_MAX:
        return
    if len(raw) >= PATH_MAX:
        raise UnsafeArchiveEntry(entry, f"name of {len(raw)} bytes is longer than PATH_MAX ({PATH_MAX})", layer=layer)
    longest = max(len(part) for part in raw.split(b"/"))
    if longest > NAME_MAX:
        raise UnsafeArchiveEntry(entry, f"a name component of {longest} bytes is longer than NAME_MAX ({NAME_MAX})", layer=layer)


def _is_aufs_meta(name: str) -> bool:
    """aufs's own files and directories (``.wh..wh.plnk/...``), which moby skips; not the opaque marker."""
    return any(part.startswith(_AUFS_META) and part != _OPAQUE for part in name.split("/"))


def _umask() -> int | None:
    """The process umask, read without setting it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return None


def _has_default_acl(fd: int) -> bool:
    try:
        return "system.posix_acl_default" in os.listxattr(fd)
    except OSError:
        return True  # cannot tell: assume the worst


def _deepest_first(name: str) -> tuple[int, str]:
    # Sorting siblings together keeps their parent in the ConfinedTree cache.
    return (-(name.count("/") + 1) if name else 1, name)


def _read_head(raw: _Readable) -> bytes:
    """At least the 4 magic bytes (unless the stream is shorter): pipes return short reads."""
    head = raw.read(compression.CHUNK)
    while 0 < len(head) < 4:
        more = raw.read(compression.CHUNK)
        if not more:
            break
        head += more
    return head


def _subject(stream: object, expected: str | None) -> str:
    if expected is not None:
        return f"layer {expected}"
    name = getattr(stream, "name", None)
    return f"layer {quote(name)}" if isinstance(name, str) else "layer stream"


def _claim(dest: str) -> bool:
    """Make the staging directory, or accept an empty one; True if we made it."""
    try:
        os.mkdir(dest, 0o755)
    except FileExistsError:
        if not os.path.isdir(dest) or os.listdir(dest):
            raise AlreadyExists(f"staging directory {quote(dest)}", "exists and is not an empty directory") from None
        return False
    os.chmod(dest, 0o755)
    return True


def _discard(dest: str, created: bool) -> None:
    """Remove everything an unpack made: the directory itself if it made it, else its contents."""
    if created:
        _force_rmtree(dest)
        return
    for name in os.listdir(dest):
        path = os.path.join(dest, name)
        if os.path.isdir(path) and not os.path.islink(path):
            _force_rmtree(path)
        else:
            os.unlink(path)


def _force_rmtree(path: str) -> None:
    """rmtree that also gets through directories an unprivileged unpack made read-only."""

    def retry(func: Callable[..., Any], failed: str, exc_info: Any) -> None:
        os.chmod(os.path.dirname(failed), 0o700)  # a real directory: rmtree walked into it
        if func in (os.unlink, os.rmdir):
            func(failed)
        else:  # could not open or list a directory (rmtree checked it is not a link)
            os.chmod(failed, 0o700)
            shutil.rmtree(failed)

    try:
        shutil.rmtree(path, onerror=retry)
    except OSError as exc:
        log.error("could not remove %s after a failed unpack: %s", quote(path), exc)
