"""Layer blob downloads that survive interruption: ``ingest/<hex>.partial`` and HTTP ``Range``.

Bytes go to a partial file named after the blob's digest as they arrive;
``BlobStore.adopt`` hashes them as they pass, checks size and digest, and only
then renames the partial file itself into place as the blob. A pull that is
killed, or a connection that drops, leaves the partial file; the next attempt
hashes what the file holds and asks the registry for the rest with
``Range: bytes=N-``. A 206 answer must say it starts at N (``Content-Range``);
a registry that ignores Range answers 200 with the whole blob, and then the
download starts over from byte 0 (or, after a reconnect within one download,
skips the N bytes it already has).

An exclusive ``flock`` on the partial file makes one process the downloader
of a blob: a second pull of the same image waits for the lock and then finds
the blob in the store (the file it waited on has become the blob, or was
removed: it takes the lock again on a new file, and finds the blob). Unpacking
the layer once is the layer store's own lock's work.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
from collections.abc import Callable

import requests
import urllib3

from layerstore.blobs import BlobStore, Stored
from layerstore.digest import parse_digest
from layerstore.errors import DigestMismatch, TransportError
from layerstore.model import Descriptor
from layerstore.registry.client import RegistryClient, describe_failure
from unionfs import crashpoints

log = logging.getLogger(__name__)

CHUNK = 1 << 20
NET_READ = 128 << 10  # a read cut short by a dropped connection loses at most this much
RECONNECTS = 5  # a dropped connection is resumed this many times within one download
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
Progress = Callable[[int], None]  # bytes of the blob that are here


class PartialBlob:
    """The partial file of one blob, locked by this process while it is in use."""

    def __init__(self, blobs: BlobStore, digest: str) -> None:
        self.blobs = blobs
        self.digest = digest
        self.path = blobs.ingest_dir / f"{parse_digest(digest).hex}.partial"
        self.fd = -1
        self.adopted = False  # the file became the blob: it is not ours to empty or remove

    def acquire(self, cancelled: Callable[[], bool] = lambda: False) -> PartialBlob:
        """Open (or create) and lock the partial file; waits while another process holds it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                _lock(fd, cancelled)
                mine = os.fstat(fd)
                now = os.stat(self.path)
            except FileNotFoundError:  # removed by the holder we waited for: take the next file
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            if (mine.st_dev, mine.st_ino) != (now.st_dev, now.st_ino):
                os.close(fd)
                continue
            self.fd = fd
            return self

    @property
    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def reset(self) -> None:
        if not self.adopted:
            os.ftruncate(self.fd, 0)

    def release(self, *, remove: bool) -> None:
        """Unlock; ``remove`` deletes the file first (while the lock still keeps others out)."""
        if self.fd < 0:
            return
        try:
            if remove and not self.adopted:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
        finally:
            os.close(self.fd)
            self.fd = -1


def fetch_blob(client: RegistryClient, path: str, desc: Descriptor, partial: PartialBlob, progress: Progress) -> Stored:
    """Download ``desc`` into the store through its locked partial file, resuming what is there.

    The partial file itself becomes the blob once it verifies (one rename, no
    copy), so a pull needs the blob's size on disk, not twice that.

    A digest or size mismatch after a resumed start is retried once from byte
    0 (the old bytes may be what was wrong); a mismatch of a whole fresh
    download empties the partial file and raises: nothing of the blob is kept.
    """
    for attempt in (1, 2):
        resumed = partial.size > 0
        source = ResumingReader(client, path, desc, partial.fd, progress)
        try:
            stored = partial.blobs.adopt(source, partial.fd, partial.path, desc.digest, desc.size, subject="blob")
            partial.adopted = True  # waiters holding the old path find it gone, and the blob there
            return stored
        except DigestMismatch:
            partial.reset()
            if not resumed or attempt == 2:
                raise
            log.info("blob %s: resumed bytes did not verify; downloading it again from the start", desc.digest)
        finally:
            source.close()
    raise AssertionError("unreachable")


class ResumingReader:
    """A blob's bytes for ``BlobStore.ingest``: the partial file's, then the network's.

    Bytes from the network are appended to the partial file before they are
    handed on, so whatever ingest has seen is on disk for the next attempt.
    """

    def __init__(self, client: RegistryClient, path: str, desc: Descriptor, fd: int, progress: Progress) -> None:
        self.client = client
        self.path = path
        self.desc = desc
        self.fd = fd
        self.progress = progress
        self.have = os.fstat(fd).st_size  # bytes in the partial file
        self.pos = 0  # bytes handed to the reader so far
        self.response: requests.Response | None = None
        self.skip = 0  # bytes of a 200 answer to drop (a reconnect the server would not resume)
        self.left = -1  # bytes the current answer still owes (Content-Length), -1 when unknown
        if self.have > desc.size:
            os.ftruncate(fd, 0)
            self.have = 0
        if self.have < desc.size:
            self._connect(first=True)
        self.progress(self.have)

    def read(self, size: int = -1, /) -> bytes:
        size = CHUNK if size is None or size < 0 else min(size, CHUNK)
        if self.pos < self.have:
            data = os.pread(self.fd, min(size, self.have - self.pos), self.pos)
            self.pos += len(data)
            return data
        if self.have >= self.desc.size:
            return b""  # all here; ingest checks size and digest
        data = self._network(min(size, NET_READ))
        if data:
            _pwrite_all(self.fd, data, self.have)
            crashpoints.point("download.chunk")
            self.have += len(data)
            self.pos += len(data)
            self.progress(self.have)
        return data

    def close(self) -> None:
        if self.response is not None:
            self.response.close()
            self.response = None

    def _connect(self, first: bool = False) -> None:
        response = self.client.open_blob(self.path, self.desc.digest, self.have)
        if self.have and response.status_code == 206:
            m = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            total_ok = m is not None and m.group(3) in ("*", str(self.desc.size))
            if m and int(m.group(1)) == self.have and total_ok:
                log.info("blob %s: resuming at byte %d", self.desc.digest, self.have)
                self._accept(response)
                return
            log.info("blob %s: unusable Content-Range %r; starting over", self.desc.digest, response.headers.get("Content-Range"))
            response.close()
            response = self.client.open_blob(self.path, self.desc.digest, 0)
        if response.status_code != 200:
            response.close()
            raise TransportError(f"blob {self.desc.digest}", f"unexpected HTTP {response.status_code} to a blob request")
        if first or self.pos == 0:
            os.ftruncate(self.fd, 0)  # the whole blob again: start the file over
            self.have = self.pos = 0
        else:
            self.skip = self.have  # the reader has those bytes already
        self._accept(response)

    def _accept(self, response: requests.Response) -> None:
        self.response = response
        try:
            encoded = response.headers.get("Content-Encoding", "identity") != "identity"
            self.left = -1 if encoded else int(response.headers.get("Content-Length", "-1"))
        except ValueError:
            self.left = -1  # unknown: the end of the stream is the end

    def _network(self, size: int) -> bytes:
        failures = 0
        while True:
            try:
                if self.response is None:
                    self._connect()
                assert self.response is not None
                data = self._read(size)
                while self.skip and data:
                    cut = min(self.skip, len(data))
                    data, self.skip = data[cut:], self.skip - cut
                    if not data:
                        data = self._read(size)
                return data
            except (urllib3.exceptions.HTTPError, requests.RequestException, TransportError, OSError) as exc:
                self.close()
                failures += 1
                reason = describe_failure(exc) if not isinstance(exc, TransportError) else exc.problem
                if failures > RECONNECTS:
                    raise TransportError(f"blob {self.desc.digest}", f"download failed at byte {self.have} ({reason})") from None
                log.info("blob %s: connection lost at byte %d (%s); resuming", self.desc.digest, self.have, reason)
                time.sleep(min(0.2 * 2 ** (failures - 1), 5.0))

    def _read(self, size: int) -> bytes:
        """A read of the answer body; an end before its Content-Length is a lost connection
        (urllib3 1.26 does not enforce the length itself)."""
        assert self.response is not None
        data = bytes(self.response.raw.read(size, decode_content=True))
        if data:
            self.left -= len(data)
        elif self.left > 0:
            raise TransportError(f"blob {self.desc.digest}", f"answer ended {self.left} bytes early")
        return data


def _lock(fd: int, cancelled: Callable[[], bool]) -> None:
    """flock, polled so that a cancelled pull does not wait for another process's download."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if cancelled():
                raise Cancelled(f"lock of {fd}") from None
            time.sleep(0.05)


class Cancelled(Exception):
    """The pull stopped while this download waited for a lock."""


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


__all__ = ["PartialBlob", "ResumingReader", "fetch_blob"]
