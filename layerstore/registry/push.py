"""Pushing images to a registry, as ``docker push`` does.

For one tag: the image's original manifest, as ``save`` chooses it (one that
came with the image before one made here for a classic docker-archive, and
only one whose blobs are all in the store), goes up with the bytes it has, so
its digest on the registry is the digest it has here. Before it, every blob it
names that the repository lacks (``HEAD`` first): five layers at a time, as
dockerd's max-concurrent-uploads, then the config.

A missing blob is mounted from another repository of the same registry when
the store knows one that has it: the repository digests recorded by pulls and
pushes, then the tags, of images with that blob on that registry host
(``POST .../blobs/uploads/?mount=<digest>&from=<repository>``, the token asked
for ``pull`` on the source too). A registry that does not mount answers with
an upload of its own, which the blob then goes to. Otherwise the blob is uploaded:
in one ``PUT`` up to ``CHUNK_SIZE`` bytes, above it in ``PATCH`` chunks with
``Content-Range``, each answer's ``Location`` (relative or not) naming where
the next request goes. The registry must answer the manifest with its digest;
the repository digest is then recorded, as a pull records it.

Output is Docker's: ``The push refers to repository [...]``, a line per layer
(named by its blob digest, as pull names it) going ``Preparing``, ``Waiting``,
``Pushing`` (a progress bar, on a terminal only), then ``Pushed``, ``Layer
already exists`` or ``Mounted from <repository>``, and ``<tag>: digest: ...
size: N`` for each tag.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import IO

from layerstore import reference
from layerstore.digest import digest_bytes, parse_digest
from layerstore.errors import (
    CorruptArchive,
    DigestMismatch,
    InvalidReference,
    LayerStoreError,
    NotFound,
    RegistryError,
    TransportError,
    quote,
)
from layerstore.export import preferred_manifest
from layerstore.model import INDEX_TYPES, Descriptor, Manifest, load_json
from layerstore.reference import Reference
from layerstore.registry.client import RegistryClient, UploadStart, push_scope
from layerstore.registry.download import Cancelled
from layerstore.registry.progress import PullOutput, Quiet
from layerstore.registry.pull import full_name
from layerstore.store import Store

log = logging.getLogger(__name__)

UPLOADS = 5  # layers uploaded at once, as dockerd's max-concurrent-uploads
CHUNK_SIZE = 16 << 20  # blobs up to this size go up in one PUT, larger ones in PATCH chunks of it
MOUNT_ATTEMPTS = 3  # source repositories tried for one blob, as dockerd tries
PROGRESS_EVERY = 0.1  # seconds between two progress updates of one layer
READ_SIZE = 1 << 20

__all__ = ["CHUNK_SIZE", "PushResult", "Pusher"]


@dataclass(frozen=True)
class PushResult:
    name: str  # the full reference, as ``push -q`` prints it: 127.0.0.1:5000/app:v1
    image_id: str
    digest: str  # of the manifest, on the registry as in the store
    size: int  # of the manifest


class Pusher:
    """Pushes from ``store`` to the registry ``client`` talks to, reporting to ``output``."""

    def __init__(
        self,
        store: Store,
        client: RegistryClient,
        output: PullOutput | None = None,
        *,
        uploads: int = UPLOADS,
        chunk_size: int | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.out = output or Quiet()
        self.uploads = max(1, uploads)
        self.chunk_size = max(1, chunk_size or CHUNK_SIZE)
        self._present: set[tuple[str, str]] = set()  # (repository path, blob) the registry has
        self._sources: dict[str, list[str]] | None = None
        self._authorized: set[str] = set()

    # -- references ----------------------------------------------------------------------
    def push(self, ref: Reference) -> PushResult:
        """One tag (a reference without one means ``latest``)."""
        ref = self._check(ref).with_default_tag()
        self._refers_to(ref)
        row = self.store.meta.one("SELECT image_id FROM tags WHERE repository = ? AND tag = ?", ref.repository, ref.tag)
        if row is None:
            if self.store.meta.one("SELECT 1 FROM tags WHERE repository = ?", ref.repository) is None:
                raise self._no_tags(ref)
            raise NotFound(f"image {quote(str(ref))}", "no such tag", said=f"tag does not exist: {ref}")
        with self.store.lease():
            self._authorize(ref.path)
            return self._push_tag(ref, str(row["image_id"]))

    def push_all_tags(self, ref: Reference) -> list[PushResult]:
        """Every tag the store has of the repository, in order (``push -a``); the first failure stops it."""
        repo = Reference(self._check(ref).domain, ref.path)
        self._refers_to(repo)
        rows = self.store.meta.query("SELECT tag, image_id FROM tags WHERE repository = ? ORDER BY tag", repo.repository)
        if not rows:
            raise self._no_tags(repo)
        with self.store.lease():
            self._authorize(repo.path)
            return [self._push_tag(Reference(repo.domain, repo.path, str(r["tag"])), str(r["image_id"])) for r in rows]

    @staticmethod
    def _no_tags(ref: Reference) -> NotFound:
        """Docker's words when the store has no tag at all of the repository."""
        return NotFound(f"repository {ref.repository}", "no tags to push",
                        said=f"An image does not exist locally with the tag: {ref.repository}")

    def _check(self, ref: Reference) -> Reference:
        if ref.digest:
            raise InvalidReference(f"reference {ref}", "cannot push a digest reference")
        if ref.domain != self.client.domain:
            raise InvalidReference(f"reference {ref}", f"not on registry {self.client.domain}")
        return ref

    def _refers_to(self, ref: Reference) -> None:
        self.out.status("", f"The push refers to repository [{ref.full_name}]")  # first, as Docker says it

    def _authorize(self, path: str) -> None:
        """``GET /v2/`` in the push scope: learns the registry's challenge, gets the token every
        request of this push uses, and fails before any upload when the credentials do not do."""
        if path in self._authorized:
            return
        response = self.client.request("GET", "/v2/", scope=push_scope(path))
        with response:
            self.client.check(response, f"registry {self.client.domain}")
        self._authorized.add(path)

    # -- one image -------------------------------------------------------------------------
    def _push_tag(self, ref: Reference, image_id: str) -> PushResult:
        assert ref.tag is not None
        try:
            desc, manifest = preferred_manifest(self.store, image_id)
        except NotFound:
            raise NotFound(f"image {ref}", "no manifest with all its blobs in the store (pull or load it again)") from None
        data = self.store.blobs.read(desc.digest)
        self._layers(ref.path, manifest)
        self._blob(ref.path, manifest.config, None)
        answered = self.client.put_manifest(ref.path, ref.tag, data, desc.media_type or manifest.media_type)
        if answered:
            try:
                algorithm = parse_digest(answered).algorithm
            except InvalidReference:
                raise RegistryError(f"manifest for {ref}", f"the registry answered with a malformed digest {answered!r}") from None
            if digest_bytes(data, algorithm) != answered:
                raise DigestMismatch(f"manifest for {ref}", expected=desc.digest, actual=answered,
                                     problem=f"the registry stored it as {answered}")
        with self.store.meta.transaction() as tx:
            tx.execute("INSERT OR REPLACE INTO repo_digests VALUES (?, ?, ?)", (ref.repository, desc.digest, image_id))
        self.out.status("", f"{ref.tag}: digest: {desc.digest} size: {len(data)}")
        return PushResult(full_name(ref), image_id, desc.digest, len(data))

    def _layers(self, path: str, manifest: Manifest) -> None:
        """The layer blobs the repository lacks, top layer first as dockerd lists them, several at once."""
        jobs: list[Descriptor] = []
        for desc in reversed(manifest.layers):
            if desc.digest not in {j.digest for j in jobs}:
                self.out.layer(_short(desc.digest), "Preparing")
                jobs.append(desc)
        for desc in jobs[self.uploads:]:
            self.out.layer(_short(desc.digest), "Waiting")
        if self._sources is None:  # here, before the threads that read it
            self._sources = self._known_sources()
        abort = threading.Event()
        pool = ThreadPoolExecutor(max_workers=min(self.uploads, len(jobs)) or 1, thread_name_prefix="upload")
        try:
            _first_error([pool.submit(self._layer, path, desc, abort) for desc in jobs])
        except BaseException:
            abort.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _layer(self, path: str, desc: Descriptor, abort: threading.Event) -> None:
        short = _short(desc.digest)
        if abort.is_set():
            raise Cancelled(short)
        self.out.layer(short, self._blob(path, desc, abort, short))

    def _blob(self, path: str, desc: Descriptor, abort: threading.Event | None, short: str | None = None) -> str:
        """Make sure the repository has a blob; what happened, as the layer's last line says it."""
        if (path, desc.digest) in self._present or self.client.blob_exists(path, desc.digest, push_scope(path)):
            self._present.add((path, desc.digest))
            return "Layer already exists"
        start: UploadStart | None = None
        sources = self.sources(desc.digest, path) if short is not None else []  # a config goes up as dockerd sends it
        for i, source in enumerate(sources):
            try:
                started = self.client.start_upload(path, mount=desc.digest, source=source)
            except TransportError:
                raise
            except RegistryError as exc:  # no pull access to the source, a registry that refuses mounts
                log.info("mounting %s from %s: %s", desc.digest, source, exc)
                continue
            if started.mounted:
                self._present.add((path, desc.digest))
                return f"Mounted from {source}"
            if i + 1 < len(sources) and started.location:
                self.client.cancel_upload(path, started.location)  # another source may have it
            else:
                start = started  # the registry opened an upload instead: the blob goes there
        self._upload(path, desc, start, abort, short)
        self._present.add((path, desc.digest))
        return "Pushed"

    def _upload(self, path: str, desc: Descriptor, start: UploadStart | None, abort: threading.Event | None, short: str | None) -> None:
        size = self.store.blobs.size(desc.digest)
        if size != desc.size:
            raise CorruptArchive(f"blob {desc.digest}", f"{size} bytes in the store, {desc.size} in its descriptor")
        if start is None or start.location is None:
            start = self.client.start_upload(path)
        assert start.location is not None
        chunk = max(self.chunk_size, start.min_chunk)
        progress = _Progress(self.out, short, size, abort)
        with self.store.blobs.open(desc.digest) as blob:
            if size <= chunk:
                self.client.finish_upload(path, start.location, desc.digest, lambda: _Slice(blob, desc.digest, 0, size, progress))
                return
            location = start.location
            for offset in range(0, size, chunk):
                length = min(chunk, size - offset)
                body = functools.partial(_Slice, blob, desc.digest, offset, length, progress)
                location = self.client.upload_chunk(path, location, body, offset, length)
            self.client.finish_upload(path, location, desc.digest)

    # -- where a blob can be mounted from ------------------------------------------------------
    def sources(self, digest: str, path: str) -> list[str]:
        """Repositories of this registry other than ``path`` that the store knows to have the blob,
        the ones pulled from or pushed to first, then tags; at most MOUNT_ATTEMPTS."""
        if self._sources is None:
            self._sources = self._known_sources()
        return [p for p in self._sources.get(digest, []) if p != path][:MOUNT_ATTEMPTS]

    def _known_sources(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        image_blobs: dict[str, set[str]] = {}

        def of_image(image_id: str) -> set[str]:
            if image_id not in image_blobs:
                rows = self.store.meta.query("SELECT blob FROM image_layers WHERE image_id = ?", image_id)
                found = {str(r["blob"]) for r in rows}
                for row in self.store.meta.query("SELECT digest FROM manifests WHERE image_id = ?", image_id):
                    found |= self._manifest_blobs(str(row["digest"])) or set()
                image_blobs[image_id] = found
            return image_blobs[image_id]

        def here(repository: str) -> str | None:
            """The repository's path when it is on this registry."""
            try:
                ref = reference.parse(repository, default_tag=False)
            except InvalidReference:
                return None
            return ref.path if ref.domain == self.client.domain else None

        def add(path: str, blobs: Iterable[str]) -> None:
            for blob in blobs:
                paths = out.setdefault(blob, [])
                if path not in paths:
                    paths.append(path)

        for row in self.store.meta.query("SELECT repository, digest, image_id FROM repo_digests ORDER BY rowid"):
            path = here(str(row["repository"]))
            if path is not None:
                # the manifest the repository digest names, when it is one: exactly its blobs
                named = self._manifest_blobs(str(row["digest"]))
                add(path, named if named is not None else of_image(str(row["image_id"])))
        for row in self.store.meta.query("SELECT repository, image_id FROM tags ORDER BY rowid"):
            path = here(str(row["repository"]))
            if path is not None:
                add(path, of_image(str(row["image_id"])))
        return out

    def _manifest_blobs(self, digest: str) -> set[str] | None:
        """The layer blobs of a stored manifest; None for an index or a blob the store lacks."""
        try:
            data = self.store.blobs.read(digest)
            doc = load_json(data, f"manifest {digest}")
            if not isinstance(doc, dict) or doc.get("mediaType") in INDEX_TYPES or "manifests" in doc:
                return None
            return {d.digest for d in Manifest.parse(data, f"manifest {digest}").layers}
        except (LayerStoreError, OSError):
            return None


class _Progress:
    """Bytes of one blob sent so far: ``Pushing`` updates at most every PROGRESS_EVERY seconds; stops on abort."""

    def __init__(self, out: PullOutput, short: str | None, total: int, abort: threading.Event | None) -> None:
        self.out = out
        self.short = short
        self.total = total
        self.abort = abort
        self.last = 0.0

    def __call__(self, current: int) -> None:
        if self.abort is not None and self.abort.is_set():
            raise Cancelled(self.short or "upload")
        now = time.monotonic()
        if self.short is not None and (now - self.last >= PROGRESS_EVERY or current >= self.total):
            self.last = now
            self.out.layer(self.short, "Pushing", current, self.total)


class _Slice:
    """``length`` bytes of a blob from ``offset``, as a request body: ``read`` and ``len``
    (requests sends a Content-Length), read with ``pread`` so a retry starts over cleanly."""

    def __init__(self, blob: IO[bytes], digest: str, offset: int, length: int, progress: Callable[[int], None]) -> None:
        self.fd = blob.fileno()
        self.digest = digest
        self.offset = offset
        self.length = length
        self.sent = 0
        self.progress = progress

    def __len__(self) -> int:
        return self.length - self.sent

    def read(self, size: int = -1, /) -> bytes:
        left = self.length - self.sent
        if left <= 0:
            return b""
        want = left if size is None or size < 0 else min(size, left)
        data = os.pread(self.fd, min(want, READ_SIZE), self.offset + self.sent)
        if not data:
            raise CorruptArchive(f"blob {self.digest}", f"ended at byte {self.offset + self.sent} while it was sent (changed in the store?)")
        self.sent += len(data)
        self.progress(self.offset + self.sent)
        return data


def _first_error(futures: Iterable[Future[None]]) -> None:
    """Wait for all, or raise as soon as one fails (its error, not a sibling's Cancelled)."""
    done, _ = wait(list(futures), return_when=FIRST_EXCEPTION)
    errors = [f.exception() for f in done if f.exception() is not None]
    for error in sorted(errors, key=lambda e: isinstance(e, Cancelled)):
        raise error  # type: ignore[misc]


def _short(digest: str) -> str:
    return parse_digest(digest).hex[:12]

