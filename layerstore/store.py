"""The layer store: blobs, metadata and unpacked layers behind one facade.

Data flows one way: archive (or registry) -> verified blobs -> unpacked
layers -> metadata in one transaction. Blobs and layers are written first and
metadata last, so a crash leaves at worst unreferenced blobs and layers that
``prune`` removes, never an image that points at something missing.
"""
from __future__ import annotations

import contextlib
import errno
import json
import sqlite3
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from layerstore.archive import ArchiveImage, find_images, open_archive, read_member, spool_dir_for
from layerstore.blobs import BlobStore
from layerstore.compression import sniff
from layerstore.digest import digest_bytes, parse_digest
from layerstore.errors import CorruptArchive, DigestMismatch, InUse, InvalidReference, NoSuchImage, quote
from layerstore.layers import LayerDirs, remove_tree
from layerstore.meta import Metadata
from layerstore.platforms import Platform, require
from layerstore.reserve import Reserve
from layerstore.model import DOCKER_CONFIG, DOCKER_MANIFEST, Descriptor, ImageConfig, Manifest
from layerstore.mediatypes import DOCKER_LAYER, DOCKER_LAYER_GZIP
from layerstore import reference
from unionfs import crashpoints

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
UNPACK_WORKERS = min(3, os.cpu_count() or 1)  # layers unpacked at once


def _require_writable(root: Path) -> None:
    """Every command writes to the store (SQLite's shared-memory file, leases): where it
    cannot, the command says why at once, not SQLite's "unable to open database file"."""
    if os.statvfs(root).f_flag & os.ST_RDONLY:
        raise OSError(errno.EROFS, "the store is on a read-only filesystem", str(root))
    if not os.access(root, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "the store is not writable by this user", str(root))


def default_root() -> Path:
    env = os.environ.get("LAYERSTORE_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/layerstore")
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data) / "layerstore"


@dataclass(frozen=True)
class Garbage:
    """Unreferenced layers and blobs, and paths left by interrupted work.

    ``recent`` holds the unreferenced layers and blobs written after the
    cutoff a caller asked for: they are not in ``layers`` and ``blobs``.
    """

    layers: list[str]
    blobs: list[str]
    leftovers: list[Path]
    recent: list[str] = field(default_factory=list)  # "layer sha256:...", "blob sha256:..."


@dataclass(frozen=True)
class LoadedImage:
    id: str
    names: tuple[str, ...]


class Store:
    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.root.mkdir(parents=True, exist_ok=True)
        _require_writable(self.root)
        self.blobs = BlobStore(self.root)
        self.layers = LayerDirs(self.root)
        self.reserve = Reserve(self.root / "reserve")
        # opening makes SQLite's shared-memory file: on a full disk, the reserve pays for it
        self.meta = self.reserve.with_room(lambda: Metadata(self.root / "meta.db"))
        (self.root / "containers").mkdir(exist_ok=True)
        self.reserve.ensure()

    def close(self) -> None:
        self.meta.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- load --------------------------------------------------------------------
    def load(self, source: str, progress: Progress | None = None, platform: Platform | None = None) -> list[LoadedImage]:
        """The images of an archive (see ``archive.find_images`` for which, and ``platform``)."""
        say = progress or (lambda _m: None)
        with open_archive(source, spool_dir_for(self.root)) as archive:
            found = find_images(archive, platform)
            with self.lease():
                return [self._load_one(archive, image, say) for image in found]

    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        """Keep prune away from unreferenced blobs and layers while this block writes them."""
        token = f"lease:{os.getpid()}:{time.monotonic_ns()}"
        with self.meta.transaction() as tx:
            tx.execute("INSERT INTO leases VALUES (?, ?, ?)", (token, os.getpid(), time.time()))
        try:
            yield
        finally:

            def end() -> None:
                with self.meta.transaction() as tx:
                    tx.execute("DELETE FROM leases WHERE key = ?", (token,))

            self.reserve.with_room(end)  # the work may have filled the disk

    @staticmethod
    def _active_lease(tx: sqlite3.Connection) -> bool:
        """Whether a live process is loading or pulling (call inside a transaction)."""
        for row in tx.execute("SELECT DISTINCT pid FROM leases").fetchall():
            pid = int(row["pid"])
            try:
                os.kill(pid, 0)
                return True
            except PermissionError:
                return True
            except ProcessLookupError:  # a load that was killed: its lease is void
                tx.execute("DELETE FROM leases WHERE pid = ?", (pid,))
        return False

    def _load_one(self, archive: object, image: ArchiveImage, say: Progress) -> LoadedImage:
        config_bytes = read_member(archive, image.config_member)  # type: ignore[arg-type]
        config_digest = digest_bytes(config_bytes)
        expected = image.config.digest if image.config else _digest_from_member(image.config_member)
        if expected is not None and expected != config_digest:
            raise DigestMismatch(f"config {image.config_member}", expected=expected, actual=config_digest)
        config = ImageConfig.parse(config_bytes, f"config {config_digest}")
        if len(config.diff_ids) != len(image.layer_members):
            raise CorruptArchive(f"image {config_digest}", f"{len(image.layer_members)} layers but {len(config.diff_ids)} diff_ids")
        staged = [self._ingest_layer(archive, image, i, diff_id, say) for i, diff_id in enumerate(config.diff_ids)]
        descriptors = self._unpack_layers(list(config.diff_ids), staged, say)
        if image.manifest is not None:
            manifest_bytes, media_type, synthetic = image.manifest, image.manifest_media_type or "", False
            Manifest.parse(manifest_bytes, "manifest")
        else:
            manifest_bytes, media_type, synthetic = _synthesize(config_digest, len(config_bytes), descriptors), DOCKER_MANIFEST, True
        self.blobs.put_bytes(config_bytes, config_digest, "config")
        manifest = self.blobs.put_bytes(manifest_bytes, None, "manifest")
        names = tuple(self.normalize_name(n) for n in image.names)
        layers = [(diff_id, size, desc) for diff_id, (desc, size) in zip(config.diff_ids, descriptors)]
        self.register(config_digest, len(config_bytes), config, manifest.digest, manifest.size, media_type, synthetic, layers, names)
        return LoadedImage(config_digest, names)

    def register(
        self,
        config_digest: str,
        config_size: int,
        config: ImageConfig,
        manifest_digest: str,
        manifest_size: int,
        media_type: str,
        synthetic: bool,
        layers: list[tuple[str, int, Descriptor]],
        names: tuple[str, ...] = (),
    ) -> None:
        """Record an image whose blobs and layers are stored: one transaction, after the data."""
        with self.meta.transaction() as tx:
            tx.execute(
                "INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?, ?, ?, ?)",
                (config_digest, config_size, config.created, config.architecture, config.os, config.variant, time.time()),
            )
            tx.execute(
                "INSERT OR IGNORE INTO manifests VALUES (?, ?, ?, ?, ?)",
                (manifest_digest, config_digest, media_type, manifest_size, int(synthetic)),
            )
            for i, (diff_id, size, desc) in enumerate(layers):
                tx.execute("INSERT OR IGNORE INTO layers VALUES (?, ?)", (diff_id, size))
                tx.execute(
                    "INSERT OR REPLACE INTO image_layers VALUES (?, ?, ?, ?, ?, ?)",
                    (config_digest, i, diff_id, desc.digest, desc.media_type, desc.size),
                )
            for name in names:
                ref = reference.parse(name)
                tx.execute("INSERT OR REPLACE INTO tags VALUES (?, ?, ?)", (ref.repository, ref.tag, config_digest))

    @staticmethod
    def normalize_name(name: str) -> str:
        """``NAME[:TAG]`` in its familiar form; a digest is refused (a tag names one image)."""
        ref = reference.parse(name)
        if ref.digest:
            raise InvalidReference(f"name {quote(name)}", "a tag cannot carry a digest")
        return str(ref)

    def _ingest_layer(self, archive: object, image: ArchiveImage, i: int, diff_id: str, say: Progress) -> tuple[Descriptor, bool]:
        """Store layer i's blob (verified); whether its diff_id still needs unpacking."""
        member = image.layer_members[i]
        desc = image.layer_descriptors[i] if image.layer_descriptors else None
        if desc is None or not self.blobs.has(desc.digest):
            with archive.open(member) as f:  # type: ignore[attr-defined]
                head = f.read(8)
                stored = self.blobs.ingest(_Prepend(head, f), desc.digest if desc else None, desc.size if desc else None, subject=f"layer {member}")
            if desc is None:
                kind = sniff(head)
                media_type = {"gzip": DOCKER_LAYER_GZIP, "zstd": DOCKER_LAYER + ".zstd"}.get(kind, DOCKER_LAYER)
                desc = Descriptor(media_type, stored.digest, stored.size)
        needed = not self.layers.has(diff_id)
        if not needed:
            say(f"{parse_digest(diff_id).hex[:12]}: Already exists")
        return desc, needed

    def _unpack_layers(self, diff_ids: list[str], staged: list[tuple[Descriptor, bool]], say: Progress) -> list[tuple[Descriptor, int]]:
        """Unpack the layers that are new, several at once where the cores allow."""
        todo = {diff_id: desc for diff_id, (desc, needed) in zip(diff_ids, staged) if needed}
        sizes: dict[str, int] = {}

        def unpack(diff_id: str, desc: Descriptor) -> int | None:
            say(f"{parse_digest(diff_id).hex[:12]}: Loading layer")
            with self.blobs.open(desc.digest) as blob:
                result = self.layers.unpack(blob, diff_id, desc.media_type)
            return result.size if result else None

        if todo:
            workers = 1 if crashpoints.armed() else min(UNPACK_WORKERS, len(todo))  # replayable crash points
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="unpack")
            try:
                futures = {diff_id: pool.submit(unpack, diff_id, desc) for diff_id, desc in todo.items()}
                for diff_id, future in futures.items():
                    size = future.result()
                    if size is not None:
                        sizes[diff_id] = size
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            pool.shutdown()
        return [(desc, sizes.get(diff_id) or self.layer_size(diff_id)) for diff_id, (desc, _) in zip(diff_ids, staged)]

    def layer_size(self, diff_id: str) -> int:
        """Bytes of an unpacked layer: as recorded, else (unpacked by another process meanwhile) counted."""
        row = self.meta.one("SELECT size FROM layers WHERE diff_id = ?", diff_id)
        if row is not None:
            return int(row["size"])
        return _tree_size(self.layers.path(diff_id))

    # -- lookups -----------------------------------------------------------------
    def resolve(self, text: str, platforms: Sequence[Platform] = ()) -> str:
        """Image ID for a name[:tag], name@digest, full or short ID; with ``platforms`` (a
        command's ``--platform``), an image for one of them (``PlatformMismatch`` otherwise)."""
        image_id = self._resolve(text)
        require(platforms, self.platform_of(image_id) if platforms else None, f"image {quote(text)}")
        return image_id

    def platform_of(self, image_id: str) -> Platform | None:
        return Platform.from_json(self.config(image_id))

    def _resolve(self, text: str) -> str:
        if text.startswith("sha256:") and len(text) == 71:
            if self.meta.one("SELECT 1 FROM images WHERE id = ?", text):
                return text
        if _looks_like_id(text):
            hexpart = text.removeprefix("sha256:")
            rows = self.meta.query("SELECT id FROM images WHERE substr(id, 8, ?) = ?", len(hexpart), hexpart)
            if len(rows) > 1:
                raise InvalidReference(f"image ID {text}", f"ambiguous: matches {len(rows)} images")
            if rows:
                return str(rows[0]["id"])
        try:
            ref = reference.parse(text)
        except InvalidReference:
            if reference.is_identifier(text):  # an image ID, as Docker reads 64 hex digits
                raise NoSuchImage(text) from None
            raise  # not a name either: said as such, as dockerd says "invalid reference format"
        if ref.digest:
            row = self.meta.one("SELECT image_id FROM repo_digests WHERE repository = ? AND digest = ?", ref.repository, ref.digest)
            row = row or self.meta.one("SELECT image_id FROM manifests WHERE digest = ?", ref.digest)
        else:
            row = self.meta.one("SELECT image_id FROM tags WHERE repository = ? AND tag = ?", ref.repository, ref.tag)
        if row is None:
            raise NoSuchImage(str(ref))
        return str(row["image_id"])

    def image_layers(self, image_id: str) -> list[str]:
        rows = self.meta.query("SELECT diff_id FROM image_layers WHERE image_id = ? ORDER BY position", image_id)
        return [str(r["diff_id"]) for r in rows]

    def tags_of(self, image_id: str) -> list[str]:
        rows = self.meta.query("SELECT repository, tag FROM tags WHERE image_id = ? ORDER BY repository, tag", image_id)
        return [f"{r['repository']}:{r['tag']}" for r in rows]

    def config(self, image_id: str) -> dict:
        return json.loads(self.blobs.read(image_id))

    def tag(self, source: str, target: str) -> None:
        image_id = self.resolve(source)
        ref = reference.parse(self.normalize_name(target))
        with self.meta.transaction() as tx:
            tx.execute("INSERT OR REPLACE INTO tags VALUES (?, ?, ?)", (ref.repository, ref.tag, image_id))


    # -- removal -----------------------------------------------------------------
    def rmi(self, text: str, force: bool = False, prune: bool = True, platforms: Sequence[Platform] = ()) -> list[tuple[str, str]]:
        """Untag, and delete the image when no tag is left: Docker's ``Untagged:``/``Deleted:`` lines.

        The name is resolved inside the transaction: an image that another
        process removed (or retagged) meanwhile is "no such image", never
        deleted twice. On a full disk it gives up the store's reserve:
        removing is how space comes back.
        """
        return self.reserve.with_room(lambda: self._rmi(text, force, prune, platforms))

    def _rmi(self, text: str, force: bool, prune: bool, platforms: Sequence[Platform]) -> list[tuple[str, str]]:
        events: list[tuple[str, str]] = []
        by_name = not _looks_like_id(text) and "@" not in text
        with self.meta.transaction() as tx:
            image_id = self.resolve(text, platforms)
            tags = self.tags_of(image_id)
            users = tx.execute("SELECT name FROM containers WHERE image_id = ?", (image_id,)).fetchall()
            if by_name and len(tags) > 1:
                ref = reference.parse(text)
                tx.execute("DELETE FROM tags WHERE repository = ? AND tag = ?", (ref.repository, ref.tag))
                return [("Untagged", str(ref))]
            if users and not force:
                raise InUse(f"image {quote(text)}", f"used by container {users[0]['name']} (remove it first, or use -f)")
            if len(tags) > 1 and not force and not by_name:
                raise InUse(f"image {quote(text)}", f"referenced in multiple repositories ({', '.join(tags)}); use -f")
            for tag in tags:
                events.append(("Untagged", tag))
            for row in tx.execute("SELECT repository, digest FROM repo_digests WHERE image_id = ?", (image_id,)).fetchall():
                events.append(("Untagged", f"{row['repository']}@{row['digest']}"))
            tx.execute("DELETE FROM tags WHERE image_id = ?", (image_id,))
            if users:  # forced: the container keeps its rootfs; the image stays, untagged
                return events
            tx.execute("DELETE FROM images WHERE id = ?", (image_id,))
            events.append(("Deleted", image_id))
        if prune:
            self.prune_unreferenced()
        return events

    def prune_unreferenced(self, keep_written_after: float | None = None) -> dict[str, int]:
        """Remove layers and blobs that no image references, and leftovers of interrupted work.

        ``keep_written_after`` (a Unix time) keeps the layers and blobs
        written after it. On a full disk it gives up the store's reserve:
        removing is how space comes back.
        """
        return self.reserve.with_room(lambda: self._prune_unreferenced(keep_written_after))

    def _prune_unreferenced(self, keep_written_after: float | None) -> dict[str, int]:
        """See prune_unreferenced.

        Runs inside one write transaction, so no load or pull can start
        (take its lease) half-way; while one is running, nothing is removed.
        Partial downloads (``*.partial``) stay: a later pull resumes them.
        """
        removed = {"layers": 0, "blobs": 0, "leftovers": 0}
        with self.meta.transaction() as tx:
            garbage = self.garbage(tx, keep_written_after)
            if garbage is None:
                log.info("a load or pull is in progress: unreferenced layers and blobs are kept")
                return removed
            for diff_id in garbage.layers:
                self.layers.remove(diff_id)
                removed["layers"] += 1
            for digest in garbage.blobs:
                self.blobs.delete(digest)
                removed["blobs"] += 1
            for path in garbage.leftovers:
                remove_tree(path)
                crashpoints.point("prune.leftover")
                removed["leftovers"] += 1
        return removed

    def garbage(self, tx: sqlite3.Connection, keep_written_after: float | None = None) -> Garbage | None:
        """What no image references and what interrupted work left; None while a load or pull runs.

        Call inside a write transaction: it also forgets layer rows that no
        image has and leases of processes that are gone. Unreferenced layers
        and blobs written after ``keep_written_after`` go to ``recent``.
        """
        tx.execute("DELETE FROM layers WHERE diff_id NOT IN (SELECT diff_id FROM image_layers)")
        if self._active_lease(tx):
            return None
        live_layers = {r[0] for r in tx.execute("SELECT diff_id FROM layers")}
        live_blobs = {
            r[0]
            for r in tx.execute(
                "SELECT blob FROM image_layers UNION SELECT digest FROM manifests "
                "UNION SELECT id FROM images UNION SELECT digest FROM repo_digests"
            )
        }
        live_blobs |= self._manifest_blobs([r[0] for r in tx.execute("SELECT digest FROM manifests")])
        leftovers = [p for p in self.blobs.stale_ingests() if not p.name.endswith(".partial")]
        leftovers += self.layers.stale_staging() + self.layers.orphan_inventories() + list((self.root / "tmp").glob("*"))
        layers = [d for d in self.layers.diff_ids() if d not in live_layers]
        blobs = [d for d in self.blobs.digests() if d not in live_blobs]
        recent: list[str] = []
        if keep_written_after is not None:
            new_layers = {d for d in layers if _written_at(self.layers.inventory_path(d)) > keep_written_after}
            new_blobs = {d for d in blobs if _written_at(self.blobs.path(d)) > keep_written_after}
            recent = [f"layer {d}" for d in layers if d in new_layers] + [f"blob {d}" for d in blobs if d in new_blobs]
            layers = [d for d in layers if d not in new_layers]
            blobs = [d for d in blobs if d not in new_blobs]
        return Garbage(layers=layers, blobs=blobs, leftovers=leftovers, recent=recent)

    def _manifest_blobs(self, manifests: list[str]) -> set[str]:
        """Blobs named by stored manifests: they stay, a save writes them back."""
        out: set[str] = set()
        for digest in manifests:
            try:
                manifest = Manifest.parse(self.blobs.read(digest), "manifest")
            except Exception:  # noqa: BLE001 - a broken manifest protects nothing
                continue
            out.add(manifest.config.digest)
            out.update(layer.digest for layer in manifest.layers)
        return out


class _Prepend:
    """A reader that gives back bytes already read from the head of a stream."""

    def __init__(self, head: bytes, rest: object) -> None:
        self._head = head
        self._rest = rest

    def read(self, size: int = -1, /) -> bytes:
        if self._head:
            out, self._head = self._head, b""
            if size < 0:
                return out + self._rest.read()  # type: ignore[attr-defined]
            return out + self._rest.read(max(0, size - len(out)))  # type: ignore[attr-defined]
        return self._rest.read(size)  # type: ignore[attr-defined]


def _written_at(path: Path) -> float:
    """When the store wrote a blob or a layer's inventory (both are written once); 0 if unknown."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _looks_like_id(text: str) -> bool:
    hexpart = text.removeprefix("sha256:")
    return 0 < len(hexpart) <= 64 and all(c in "0123456789abcdef" for c in hexpart)


def _digest_from_member(member: str) -> str | None:
    """Classic archives name the config after its digest: ``<hex>.json``."""
    name = os.path.basename(member).removesuffix(".json")
    hexpart = name.removeprefix("sha256:")
    if reference.is_identifier(hexpart):
        return "sha256:" + hexpart
    return None


def _synthesize(config_digest: str, config_size: int, layers: list[tuple[Descriptor, int]]) -> bytes:
    """A schema 2 manifest for an archive that had none (classic docker-archive)."""
    doc = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": config_size, "digest": config_digest},
        "layers": [{"mediaType": d.media_type, "size": d.size, "digest": d.digest} for d, _ in layers],
    }
    return json.dumps(doc, indent=3).encode()


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total
