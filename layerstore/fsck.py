"""Check a store against itself: blobs against their digests, layers against
their inventories, metadata against the files, and leftovers of interrupted work.

Repair removes what cannot be trusted, so that the next ``pull`` or ``load``
fetches it again, and rebuilds what it can from what is still good: a layer
whose directory went wrong is unpacked again from its verified blob. It
never guesses: an image whose config or layer blob is lost stays listed and
is reported as needing a pull or load.

Exit codes follow e2fsck's: 0 clean, 1 problems found and all repaired,
4 problems left (every problem, without ``--repair``).

Layers and blobs that no image uses are problems only once they are older
than ``max_age`` (a day by default, as ``podman system check --max``): a
pull or load that failed or was stopped part-way leaves the ones it had
verified, and the next attempt uses them instead of fetching them again.
``prune`` removes them whatever their age.
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from layerstore import inventory
from layerstore.containers import Containers
from layerstore.digest import DigestCounter, parse_digest
from layerstore.errors import LayerStoreError
from layerstore.layers import remove_tree
from layerstore.store import Store

CLEAN, REPAIRED, LEFT = 0, 1, 4
CHUNK = 1 << 20
MAX_AGE = 24 * 3600.0  # seconds; podman's default for unreferenced layers


@dataclass
class Finding:
    subject: str  # "blob sha256:...", "layer sha256:...", "image ...", a leftover path
    problem: str
    repaired: str = ""  # what repair did; empty while it stands

    def __str__(self) -> str:
        return f"{self.subject}: {self.problem}" + (f" ({self.repaired})" if self.repaired else "")


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    blobs: int = 0
    layers: int = 0
    entries: int = 0
    images: int = 0
    busy: bool = False  # a load or pull ran: leftovers were not judged
    kept: list[str] = field(default_factory=list)  # unreferenced, younger than max_age: not problems

    @property
    def exit_code(self) -> int:
        if not self.findings:
            return CLEAN
        return REPAIRED if all(f.repaired for f in self.findings) else LEFT

    def summary(self) -> str:
        checked = f"{self.blobs} blobs, {self.layers} layers ({self.entries} entries), {self.images} images"
        kept = f"; {len(self.kept)} recent layers and blobs that no image uses kept (prune removes them)" if self.kept else ""
        if not self.findings:
            return f"checked {checked}: clean{kept}"
        fixed = sum(1 for f in self.findings if f.repaired)
        return f"checked {checked}: {len(self.findings)} problems, {fixed} repaired{kept}"


def check(
    store: Store, repair: bool = False, progress: Callable[[str], None] | None = None, max_age: float = MAX_AGE
) -> Report:
    return _Checker(store, repair, progress or (lambda _m: None), max_age).run()


class _Checker:
    def __init__(self, store: Store, repair: bool, say: Callable[[str], None], max_age: float) -> None:
        self.store = store
        self.repair = repair
        self.say = say
        self.max_age = max_age
        self.report = Report()
        self.good_blobs: set[str] = set()

    def add(self, subject: str, problem: str) -> Finding:
        finding = Finding(subject, problem)
        self.report.findings.append(finding)
        return finding

    def run(self) -> Report:
        if not self._metadata():
            return self.report  # nothing below can be judged against a broken database
        self._blobs()
        self._layers()
        self._images()
        self._containers()
        self._leftovers()
        return self.report

    # -- the database --------------------------------------------------------------
    def _metadata(self) -> bool:
        db = self.store.meta.db
        try:
            problems = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"]
            problems += [f"{r[0]} row {r[1]} names a missing {r[2]}" for r in db.execute("PRAGMA foreign_key_check").fetchall()]
        except sqlite3.DatabaseError as exc:
            problems = [str(exc)]
        for problem in problems:
            self.add("metadata", f"{problem} (restore meta.db from a backup, or remove the store)")
        return not problems

    # -- blobs ---------------------------------------------------------------------
    def _blobs(self) -> None:
        digests = list(self.store.blobs.digests())
        for n, digest in enumerate(digests, 1):
            self.say(f"checking blob {n}/{len(digests)}")
            self.report.blobs += 1
            try:
                parse_digest(digest)
            except LayerStoreError:
                finding = self.add(f"blob {digest}", "not a digest name")
                if self.repair:
                    remove_tree(self.store.blobs.dir / digest.replace(":", "/", 1))
                    finding.repaired = "removed"
                continue
            actual = _digest_of(self.store, digest)
            if actual == digest:
                self.good_blobs.add(digest)
                continue
            finding = self.add(f"blob {digest}", f"content has digest {actual}" if actual else "unreadable")
            if self.repair:
                self.store.blobs.delete(digest)
                finding.repaired = "removed; a pull or load fetches it again"

    # -- layers --------------------------------------------------------------------
    def _layers(self) -> None:
        layers = self.store.layers
        diff_ids = layers.diff_ids()
        for n, diff_id in enumerate(diff_ids, 1):
            self.say(f"checking layer {n}/{len(diff_ids)}")
            self.report.layers += 1
            problems = self._layer_problems(diff_id)
            if not problems:
                continue
            more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
            finding = self.add(f"layer {diff_id}", "; ".join(problems[:3]) + more)
            users = self._mounted_users(diff_id)
            if self.repair and users:
                # a running mount reads this very directory: swapping it would pull it from under it
                finding.problem += f" (used by mounted container {users[0]}: unmount it and repair again)"
            elif self.repair:
                layers.remove(diff_id)
                finding.repaired = "removed"
                if self._unpack_again(diff_id):
                    finding.repaired = "unpacked again from its blob"

    def _mounted_users(self, diff_id: str) -> list[str]:
        return [c.name for c in Containers(self.store).all() if c.mounted and diff_id in self.store.image_layers(c.image_id)]

    def _layer_problems(self, diff_id: str) -> list[str]:
        layers = self.store.layers
        try:
            recorded = inventory.decode(layers.inventory_path(diff_id).read_bytes())
        except FileNotFoundError:
            return ["no inventory: its files cannot be checked"]
        except (ValueError, LayerStoreError, OSError) as exc:
            return [f"unreadable inventory ({exc})"]
        except Exception as exc:  # noqa: BLE001 - zstd and JSON errors: the file is damaged
            return [f"unreadable inventory ({type(exc).__name__})"]
        self.report.entries += len(recorded)
        try:
            return inventory.compare(recorded, layers.path(diff_id))
        except OSError as exc:
            return [f"unreadable ({exc.strerror})"]

    def _unpack_again(self, diff_id: str) -> bool:
        """Rebuild a layer from a verified blob of it, if the store has one."""
        rows = self.store.meta.query("SELECT DISTINCT blob, media_type FROM image_layers WHERE diff_id = ?", diff_id)
        for row in rows:
            if row["blob"] in self.good_blobs:
                try:
                    with self.store.blobs.open(row["blob"]) as blob:
                        self.store.layers.unpack(blob, diff_id, row["media_type"])
                    return True
                except (LayerStoreError, OSError):
                    continue
        return False

    # -- images ----------------------------------------------------------------------
    def _images(self) -> None:
        meta = self.store.meta
        for image in meta.query("SELECT id FROM images ORDER BY id"):
            self.report.images += 1
            image_id = str(image["id"])
            subject = f"image {image_id}"
            if image_id not in self.good_blobs:
                self.add(subject, "its config blob is missing: pull or load the image again")
            for row in meta.query("SELECT digest FROM manifests WHERE image_id = ?", image_id):
                if row["digest"] not in self.good_blobs:
                    self.add(subject, f"manifest {row['digest']} is missing: pull or load the image again")
            for row in meta.query("SELECT position, diff_id, blob FROM image_layers WHERE image_id = ? ORDER BY position", image_id):
                diff_id = str(row["diff_id"])
                if not self.store.layers.has(diff_id):
                    finding = self.add(subject, f"layer {row['position']} ({diff_id}) is missing")
                    if self.repair and self._unpack_again(diff_id):
                        finding.repaired = "unpacked again from its blob"
                    elif self.repair:
                        finding.problem += ": pull or load the image again"
                if row["blob"] not in self.good_blobs:
                    self.add(subject, f"blob {row['blob']} of layer {row['position']} is missing: pull or load the image again")

    # -- containers ------------------------------------------------------------------
    def _containers(self) -> None:
        """Rows against directories: a create or rm killed half-way leaves one without the other."""
        containers = Containers(self.store)
        known = set()
        for c in containers.all():
            known.add(c.id)
            if c.read_only:
                continue
            upper, work = containers.paths(c.id)
            missing = [p.name for p in (upper, work) if not p.is_dir()]
            if missing:
                finding = self.add(f"container {c.name}", f"its {' and '.join(missing)} director{'ies' if len(missing) > 1 else 'y'} missing")
                if self.repair:
                    upper.mkdir(parents=True, exist_ok=True)
                    work.mkdir(exist_ok=True)
                    finding.repaired = "made again, empty"
        if not containers.dir.is_dir():
            return
        for entry in sorted(containers.dir.iterdir()):
            if entry.name not in known:
                finding = self.add(f"containers/{entry.name}", "no container has it")
                if self.repair:
                    remove_tree(entry)
                    finding.repaired = "removed"

    # -- leftovers -------------------------------------------------------------------
    def _leftovers(self) -> None:
        store = self.store
        cutoff = time.time() - self.max_age
        with store.meta.transaction(keep=self.repair) as tx:  # without repair: judge, change nothing
            stale_leases = tx.execute("SELECT COUNT(*) FROM leases").fetchone()[0]
            garbage = store.garbage(tx, keep_written_after=cutoff)
            stale_leases -= tx.execute("SELECT COUNT(*) FROM leases").fetchone()[0]
        if garbage is None:
            self.report.busy = True
            return
        found = [self.add(f"lease of process {n}", "the process is gone") for n in range(stale_leases)]
        self.report.kept = garbage.recent
        found += [self.add(f"layer {d}", "no image uses it") for d in garbage.layers]
        found += [self.add(f"blob {d}", "no image uses it") for d in garbage.blobs]
        root = str(store.root) + "/"
        found += [self.add(str(p).removeprefix(root), "left by interrupted work") for p in garbage.leftovers]
        if self.repair and found:
            store.prune_unreferenced(keep_written_after=cutoff)
            for finding in found:
                finding.repaired = "removed"


def _digest_of(store: Store, digest: str) -> str | None:
    try:
        with store.blobs.open(digest) as f:
            counter = DigestCounter(parse_digest(digest).algorithm)
            while chunk := f.read(CHUNK):
                counter.update(chunk)
            return counter.digest
    except (LayerStoreError, OSError):
        return None
