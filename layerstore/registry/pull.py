"""Pulling images from a registry into the store, as ``docker pull`` does.

For one tag or digest: fetch the manifest (every media type we accept in one
``Accept``, verified against the digest asked for or ``Docker-Content-Digest``);
from an index or manifest list pick this platform's manifest (attestations
and ``unknown/unknown`` entries skipped); fetch and verify the config; then
download the layers that are not in the store, three at a time, each one
through its resumable partial file into ``BlobStore.ingest`` (verified against
digest and size), and unpack each as soon as it is there. Only when every
layer is in place are the config and the original manifest bytes stored and
the image registered with its tag (one transaction); then the original index
bytes and the repository digest (the index's when the tag named one). A lease
keeps prune off the blobs and layers of a pull in progress; a pull that is
killed leaves unreferenced blobs, a resumable partial file, and no image.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import IO

from layerstore.digest import parse_digest
from layerstore.errors import (
    AuthError,
    CorruptArchive,
    LayerStoreError,
    NotFound,
    SizeMismatch,
    TransportError,
)
from layerstore.model import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    Descriptor,
    ImageConfig,
    Manifest,
    load_json,
)
from layerstore.reference import Reference
from layerstore.registry.client import Fetched, RegistryClient
from layerstore.registry.download import Cancelled, PartialBlob, fetch_blob
from layerstore.platforms import Platform, host, require
from layerstore.registry.progress import PullOutput, Quiet
from layerstore.store import UNPACK_WORKERS, Store
from unionfs import crashpoints

log = logging.getLogger(__name__)

DOWNLOADS = 3  # layers downloaded at once, as dockerd's max-concurrent-downloads
REFERENCE_TYPE = "vnd.docker.reference.type"  # BuildKit's attestation manifests carry it
PROGRESS_EVERY = 0.1  # seconds between two progress updates of one layer


@dataclass(frozen=True)
class PullResult:
    name: str  # the full reference, as the CLI prints it last: docker.io/library/busybox:latest
    image_id: str
    digest: str  # what the tag or digest named: the index when it was one
    updated: bool  # Docker's "Downloaded newer image" rather than "Image is up to date"


_Aborted = Cancelled  # another layer failed: this one stops at its next chunk (its partial file stays)


def is_index(fetched: Fetched) -> bool:
    if fetched.media_type in INDEX_TYPES:
        return True
    doc = load_json(fetched.data, "manifest")
    return isinstance(doc, dict) and (doc.get("mediaType") in INDEX_TYPES or "manifests" in doc)


def choose_manifest(index_data: bytes, want: Platform, subject: str) -> Descriptor:
    """This platform's entry of an index, the closest variant first; NotFound lists the ones there are."""
    doc = load_json(index_data, subject)
    entries = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise CorruptArchive(subject, "index without a manifests list")
    ranked: list[tuple[int, int, Descriptor]] = []
    unlabelled: list[Descriptor] = []
    available: list[str] = []
    for position, raw in enumerate(entries):
        desc = Descriptor.parse(raw, subject)
        if desc.annotations.get(REFERENCE_TYPE) or (desc.media_type and desc.media_type not in MANIFEST_TYPES):
            continue  # attestations, nested indexes, artifacts
        if desc.platform is None:
            unlabelled.append(desc)
            continue
        platform = Platform.from_json(desc.platform)
        if platform is None or "unknown" in (platform.os, platform.architecture):
            continue
        if str(platform) not in available:
            available.append(str(platform))
        rank = want.rank(platform)
        if rank is not None:
            ranked.append((rank, position, desc))
    if ranked:
        return min(ranked, key=lambda r: (r[0], r[1]))[2]
    if unlabelled and not available:
        return unlabelled[0]  # an index that names no platforms: its first image (checked against the config)
    listed = ", ".join(available) or "none"
    raise NotFound(subject, f"no matching manifest for {want} in the manifest list entries (it has: {listed})")


class Puller:
    """Pulls into ``store`` from the registry ``client`` talks to, reporting to ``output``."""

    def __init__(
        self,
        store: Store,
        client: RegistryClient,
        output: PullOutput | None = None,
        platform: Platform | None = None,
        *,
        explicit_platform: bool = False,
        downloads: int = DOWNLOADS,
    ) -> None:
        self.store = store
        self.client = client
        self.out = output or Quiet()
        self.platform = platform or host()
        self.explicit_platform = explicit_platform
        self.downloads = downloads

    # -- references ----------------------------------------------------------------------
    def pull(self, ref: Reference) -> PullResult:
        """One tag or digest (a reference without either means ``latest``)."""
        ref = ref.with_default_tag()
        if ref.digest:
            ref = Reference(ref.domain, ref.path, None, ref.digest)
        with self.store.lease():
            return self._pull(ref)

    def pull_all_tags(self, ref: Reference) -> tuple[list[PullResult], list[tuple[str, LayerStoreError]]]:
        """Every tag of the repository, in the registry's order (``pull -a``), and the tags that failed.

        As dockerd does, a tag that cannot be pulled (no image for this
        platform, a broken manifest) does not stop the others; when none
        could be pulled the first error is raised. Credentials refused or a
        registry gone stop everything.
        """
        repo = Reference(ref.domain, ref.path)
        tags = self.client.tags(ref.path)
        if not tags:
            raise NotFound(f"repository {repo.repository}", "has no tags")
        results: list[PullResult] = []
        failed: list[tuple[str, LayerStoreError]] = []
        with self.store.lease():
            for tag in tags:
                try:
                    results.append(self._pull(Reference(ref.domain, ref.path, tag)))
                except (AuthError, TransportError):
                    raise
                except LayerStoreError as exc:
                    failed.append((tag, exc))
        if not results:
            raise failed[0][1]
        return results, failed

    def _pull(self, ref: Reference) -> PullResult:
        name = ref.digest or ref.tag or ""
        shown = str(ref)
        top = self.client.manifest(ref.path, name)
        # After the manifest, as dockerd's pullTag: a tag the registry lacks prints only its error.
        self.out.status(name, f"Pulling from {ref.path}")
        index: Fetched | None = None
        manifest = top
        check = self.explicit_platform  # a lone manifest is what it is, unless --platform named one
        if is_index(top):
            index = top
            entry = choose_manifest(top.data, self.platform, f"image {shown}")
            check = entry.platform is None  # an entry without a platform: its config must say
            manifest = self.client.manifest(ref.path, entry.digest)
            if len(manifest.data) != entry.size:
                raise SizeMismatch(f"manifest {entry.digest}", expected=entry.size, actual=len(manifest.data))
        previous = self._previous(ref, top.digest)
        image_id = self._pull_manifest(ref, manifest, check)
        self._record(ref, top, index, image_id)
        self.out.status("", f"Digest: {top.digest}")
        return PullResult(full_name(ref), image_id, top.digest, previous != image_id)

    def _previous(self, ref: Reference, digest: str) -> str | None:
        """The image the tag (or repository digest) named before this pull."""
        if ref.digest:
            row = self.store.meta.one("SELECT image_id FROM repo_digests WHERE repository = ? AND digest = ?", ref.repository, digest)
        else:
            row = self.store.meta.one("SELECT image_id FROM tags WHERE repository = ? AND tag = ?", ref.repository, ref.tag)
        return str(row["image_id"]) if row else None

    # -- one image -------------------------------------------------------------------------
    def _pull_manifest(self, ref: Reference, fetched: Fetched, check_platform: bool) -> str:
        """Layers, config and manifest of one image into the store; its image ID."""
        subject = f"manifest {fetched.digest}"
        manifest = Manifest.parse(fetched.data, subject, fetched.media_type or None)
        config_bytes = self._config(ref.path, manifest.config)
        config = ImageConfig.parse(config_bytes, f"config {manifest.config.digest}")
        if len(config.diff_ids) != len(manifest.layers):
            raise CorruptArchive(subject, f"{len(manifest.layers)} layers but {len(config.diff_ids)} diff_ids in the config")
        if check_platform:
            self._check_platform(ref, config)
        image_id = manifest.config.digest
        sizes = {} if self._complete(image_id, fetched.digest, manifest, config) else self._layers(ref.path, manifest, config)
        rows = [(diff_id, sizes.get(diff_id) or self.store.layer_size(diff_id), desc) for desc, diff_id in zip(manifest.layers, config.diff_ids)]
        blobs = self.store.blobs
        blobs.put_bytes(config_bytes, manifest.config.digest, "config")
        blobs.put_bytes(fetched.data, fetched.digest, "manifest")
        names = () if ref.digest else (str(ref),)
        self.store.register(image_id, len(config_bytes), config, fetched.digest, len(fetched.data), manifest.media_type, False, rows, names)
        return image_id

    def _config(self, path: str, desc: Descriptor) -> bytes:
        """The config blob: from the store when it has it (verified when it was stored), else fetched."""
        if self.store.blobs.has(desc.digest):
            data = self.store.blobs.read(desc.digest)
            if len(data) == desc.size:
                return data
        return self.client.blob_bytes(path, desc.digest, desc.size)

    def _check_platform(self, ref: Reference, config: ImageConfig) -> None:
        """The config's platform must be the one asked for (Docker 20.10+ checks ``--platform`` so)."""
        actual = Platform.of(config.os or "linux", config.architecture or "unknown", config.variant or "")
        require([self.platform], actual, f"image {ref}")

    def _complete(self, image_id: str, manifest_digest: str, manifest: Manifest, config: ImageConfig) -> bool:
        """The store has this very manifest and everything it names: nothing to download (Docker skips the layers)."""
        if self.store.meta.one("SELECT 1 FROM manifests WHERE digest = ? AND image_id = ?", manifest_digest, image_id) is None:
            return False
        return all(
            self.store.blobs.has(desc.digest) and self.store.layers.has(diff_id)
            for desc, diff_id in zip(manifest.layers, config.diff_ids)
        )

    def _record(self, ref: Reference, top: Fetched, index: Fetched | None, image_id: str) -> None:
        if index is not None:
            self.store.blobs.put_bytes(index.data, index.digest, "index")
        with self.store.meta.transaction() as tx:
            tx.execute("INSERT OR REPLACE INTO repo_digests VALUES (?, ?, ?)", (ref.repository, top.digest, image_id))

    # -- layers ----------------------------------------------------------------------------
    def _layers(self, path: str, manifest: Manifest, config: ImageConfig) -> dict[str, int]:
        """Download and unpack what is missing; the uncompressed size of each layer unpacked here."""
        jobs: list[tuple[Descriptor, str]] = []
        seen: set[str] = set()
        for desc, diff_id in zip(manifest.layers, config.diff_ids):
            if desc.digest in seen:
                continue
            seen.add(desc.digest)
            if self.store.blobs.has(desc.digest) and self.store.layers.has(diff_id):
                self.out.layer(_short(desc.digest), "Already exists")
                continue
            self.out.layer(_short(desc.digest), "Pulling fs layer")
            if len(jobs) >= self.downloads:
                self.out.layer(_short(desc.digest), "Waiting")
            jobs.append((desc, diff_id))
        if not jobs:
            return {}
        return _LayerJobs(self, path, jobs).run()


class _LayerJobs:
    """Downloads (three at a time) feeding unpacks (as many as the cores allow), stopped together on failure."""

    def __init__(self, puller: Puller, path: str, jobs: list[tuple[Descriptor, str]]) -> None:
        self.puller = puller
        self.store = puller.store
        self.out = puller.out
        self.path = path
        self.jobs = jobs
        self.abort = threading.Event()
        self.sizes: dict[str, int] = {}
        self.unpacks: list[tuple[Future[None], PartialBlob]] = []
        self._lock = threading.Lock()

    def run(self) -> dict[str, int]:
        # one of each while a crash point is armed: the N-th point is the same step on every run
        one = crashpoints.armed()
        downloads = ThreadPoolExecutor(max_workers=1 if one else min(self.puller.downloads, len(self.jobs)), thread_name_prefix="download")
        self.unpacker = ThreadPoolExecutor(max_workers=1 if one else max(1, min(UNPACK_WORKERS, len(self.jobs))), thread_name_prefix="unpack")
        try:
            _first_error(downloads.submit(self._download, desc, diff_id) for desc, diff_id in self.jobs)
            with self._lock:
                unpacks = [future for future, _ in self.unpacks]
            _first_error(unpacks)
        except BaseException:
            self.abort.set()
            raise
        finally:
            downloads.shutdown(wait=True, cancel_futures=True)
            with self._lock:
                self.unpacker.shutdown(wait=True, cancel_futures=True)
            for future, partial in self.unpacks:
                if future.cancelled():
                    partial.release(remove=True)
        return self.sizes

    def _download(self, desc: Descriptor, diff_id: str) -> None:
        short = _short(desc.digest)
        if self.abort.is_set():
            raise _Aborted(short)
        partial = PartialBlob(self.store.blobs, desc.digest).acquire(self.abort.is_set)
        handed_on = False
        try:
            if not self.store.blobs.has(desc.digest):
                fetch_blob(self.puller.client, self.path, desc, partial, self._progress(short, "Downloading", desc.size))
                self.out.layer(short, "Verifying Checksum")
            self.out.layer(short, "Download complete")
            partial.reset()  # the blob is stored: the lock is all the file is still for
            with self._lock:
                if self.abort.is_set():
                    raise _Aborted(short)
                self.unpacks.append((self.unpacker.submit(self._unpack, desc, diff_id, partial), partial))
            handed_on = True
        finally:
            if not handed_on:
                partial.release(remove=partial.size == 0)

    def _unpack(self, desc: Descriptor, diff_id: str, partial: PartialBlob) -> None:
        """Unpack a stored blob, holding its partial file's lock so no other pull unpacks it too."""
        short = _short(desc.digest)
        try:
            if self.abort.is_set():
                raise _Aborted(short)
            if not self.store.layers.has(diff_id):
                with self.store.blobs.open(desc.digest) as blob:
                    reader = _Counting(blob, self._progress(short, "Extracting", desc.size))
                    result = self.store.layers.unpack(reader, diff_id, desc.media_type)
                if result is not None:
                    self.sizes[diff_id] = result.size
            self.out.layer(short, "Pull complete")
        finally:
            partial.release(remove=True)

    def _progress(self, short: str, action: str, total: int) -> Callable[[int], None]:
        """A byte counter's callback: updates at most every PROGRESS_EVERY seconds; stops the job on abort."""
        last = [0.0]

        def update(current: int) -> None:
            if self.abort.is_set():
                raise _Aborted(short)
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY or current >= total:
                last[0] = now
                self.out.layer(short, action, current, total)

        return update


def _first_error(futures: Iterable[Future[None]]) -> None:
    """Wait for all, or raise as soon as one fails (its error, not a sibling's _Aborted)."""
    done, _ = wait(list(futures), return_when=FIRST_EXCEPTION)
    errors = [f.exception() for f in done if f.exception() is not None]
    for error in sorted(errors, key=lambda e: isinstance(e, _Aborted)):
        raise error  # type: ignore[misc]


class _Counting:
    """A reader that reports how many bytes went through it."""

    def __init__(self, raw: IO[bytes], progress: Callable[[int], None]) -> None:
        self.raw = raw
        self.progress = progress
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        self.progress(self.count)
        return data


def _short(digest: str) -> str:
    return parse_digest(digest).hex[:12]


def full_name(ref: Reference) -> str:
    """``docker.io/library/busybox:latest``: what ``docker pull`` prints last."""
    if ref.digest:
        return f"{ref.full_name}@{ref.digest}"
    if ref.tag:
        return f"{ref.full_name}:{ref.tag}"
    return ref.full_name


__all__ = ["PullResult", "Puller", "choose_manifest", "full_name", "is_index"]
