"""Containers: a writable layer over an image's layers, mounted with unionfs.

The store never mounts by itself in its core: a container is described as a
``MountSpec`` (lower layer directories top first, upper, work, options) and
handed to ``unionfs.mount``. ``nosuid`` and ``nodev`` are the default, so
set-id files and device nodes inside an image give nobody a way in.
"""
from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from layerstore import store as store_mod
from layerstore.errors import AlreadyExists, InUse, InvalidReference, NoSuchContainer, NoSuchImage, NotFound, quote
from layerstore.layers import remove_tree
from unionfs.markers import OPAQUE_MARKER, WH_PREFIX, is_chardev_whiteout
from unionfs.mount import MountSpec, is_mounted, mount, settle, unanswered, unmount

log = logging.getLogger(__name__)

SAFE_OPTIONS = ("nosuid", "nodev")


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    image_id: str
    mountpoint: str | None
    read_only: bool
    created: float
    image: str | None = None  # the image as named at creation; None in stores made before it was kept

    @property
    def mounted(self) -> bool:
        return bool(self.mountpoint) and is_mounted(self.mountpoint)  # type: ignore[arg-type]


class Containers:
    def __init__(self, store: store_mod.Store) -> None:
        self.store = store
        self.dir = store.root / "containers"

    def _row(self, row: object) -> Container:
        r = row  # sqlite3.Row
        return Container(r["id"], r["name"], r["image_id"], r["mountpoint"], bool(r["read_only"]), r["created"], r["image"])  # type: ignore[index]

    def all(self) -> list[Container]:
        return [self._row(r) for r in self.store.meta.query("SELECT * FROM containers ORDER BY created DESC")]

    def get(self, text: str) -> Container:
        """By name, ID (or prefix) or mount point."""
        meta = self.store.meta
        row = meta.one("SELECT * FROM containers WHERE name = ? OR id = ?", text, text)
        if row is None and os.path.isabs(text):
            row = meta.one("SELECT * FROM containers WHERE mountpoint = ?", os.path.realpath(text))
        if row is None and len(text) >= 3:
            rows = meta.query("SELECT * FROM containers WHERE substr(id, 1, ?) = ?", len(text), text)
            if len(rows) > 1:
                raise NotFound(f"container {quote(text)}", f"ambiguous: matches {len(rows)} containers")
            row = rows[0] if rows else None
        if row is None:
            raise NoSuchContainer(text)
        return self._row(row)

    def image_of(self, c: Container) -> str:
        """The image as ``docker ps`` shows it: as it was named when the container was made,
        or its short ID once that name means another image (retagged, untagged)."""
        if c.image is not None:
            try:
                if self.store.resolve(c.image) == c.image_id:
                    return c.image
            except (NotFound, InvalidReference):
                pass
        elif tags := self.store.tags_of(c.image_id):
            return tags[0]
        return c.image_id.removeprefix("sha256:")[:12]

    def paths(self, container_id: str) -> tuple[Path, Path]:
        base = self.dir / container_id
        return base / "upper", base / "work"

    def spec(self, c: Container, options: tuple[str, ...] = SAFE_OPTIONS) -> MountSpec:
        lowers = tuple(str(self.store.layers.path(d)) for d in reversed(self.store.image_layers(c.image_id)))
        if not lowers:
            empty = self.dir / c.id / "empty"
            empty.mkdir(parents=True, exist_ok=True)
            lowers = (str(empty),)
        if c.read_only:
            return MountSpec(lowers, options=options)
        upper, work = self.paths(c.id)
        return MountSpec(lowers, str(upper), str(work), options)

    def create_and_mount(
        self, image: str, mountpoint: str, *, name: str | None = None, read_only: bool = False, options: tuple[str, ...] = SAFE_OPTIONS
    ) -> Container:
        image_id = self.store.resolve(image)
        mountpoint = os.path.realpath(mountpoint)
        _require_directory(mountpoint)
        if is_mounted(mountpoint):
            raise InUse(f"mount point {mountpoint}", "already a mount point")
        cid = secrets.token_hex(32)
        name = name or f"c-{cid[:12]}"
        upper, work = self.paths(cid)
        with self.store.meta.transaction() as tx:
            if tx.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone() is None:  # removed meanwhile
                raise NoSuchImage(image)
            if tx.execute("SELECT 1 FROM containers WHERE name = ?", (name,)).fetchone():
                raise AlreadyExists(f"container name {quote(name)}", "already in use")
            tx.execute("INSERT INTO containers (id, name, image_id, mountpoint, read_only, created, image) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (cid, name, image_id, mountpoint, int(read_only), time.time(), image))
        try:
            upper.mkdir(parents=True)
            work.mkdir()
            c = self.get(cid)
            mount(self.spec(c, options), mountpoint)
            return c
        except BaseException:
            with self.store.meta.transaction() as tx:
                tx.execute("DELETE FROM containers WHERE id = ?", (cid,))
            remove_tree(self.dir / cid)
            raise

    def remount(self, text: str, options: tuple[str, ...] = SAFE_OPTIONS) -> Container:
        """Mount an unmounted container again, on its mount point: after ``umount``, after
        its driver died (unmounted first), after a reboot. Its layer is as it was left."""
        c = self.get(text)
        if c.mounted:
            raise InUse(f"container {c.name}", f"already mounted on {c.mountpoint}")
        target = c.mountpoint or ""
        _require_directory(target)
        mount(self.spec(c, options), target)
        return c

    def umount(self, text: str) -> Container:
        c = self.get(text)
        if not c.mountpoint or not is_mounted(c.mountpoint):
            raise NotFound(f"container {c.name}", "not mounted")
        self._unmount(c.mountpoint)
        return c

    @staticmethod
    def _unmount(mountpoint: str) -> None:
        if not unmount(mountpoint):
            log.warning("%s", unanswered(mountpoint))

    def remove(self, text: str, force: bool = False) -> Container:
        c = self.get(text)
        if c.mounted:
            if not force:
                raise InUse(f"container {c.name}", f"mounted on {c.mountpoint} (umount it first, or use -f)")
            self._unmount(c.mountpoint)  # type: ignore[arg-type]
        with self.store.meta.transaction() as tx:
            tx.execute("DELETE FROM containers WHERE id = ?", (c.id,))
        remove_tree(self.dir / c.id)
        return c

    @staticmethod
    def settle(c: Container) -> None:
        """Before the upper directory of a mounted container is read: copy-ups the
        driver still has pending go into place first."""
        if c.mounted and not settle(c.mountpoint):  # type: ignore[arg-type]
            raise InUse(f"container {c.name}", f"its driver on {c.mountpoint} does not answer")

    def diff(self, text: str) -> list[tuple[str, str]]:
        """``docker diff``: (A|C|D, path) for the container layer, sorted by path."""
        c = self.get(text)
        if c.read_only:
            return []
        self.settle(c)
        upper, _ = self.paths(c.id)
        lowers = [self.store.layers.path(d) for d in reversed(self.store.image_layers(c.image_id))]
        changes: list[tuple[str, str]] = []
        for dirpath, dirnames, filenames in os.walk(upper):
            rel_dir = os.path.relpath(dirpath, upper)
            for name in sorted(dirnames + filenames):
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                if name == OPAQUE_MARKER:
                    continue
                if name.startswith(WH_PREFIX):
                    changes.append(("D", "/" + (rel[: -len(name)] + name[len(WH_PREFIX):])))
                elif is_chardev_whiteout(st.st_mode, st.st_rdev):
                    changes.append(("D", "/" + rel))
                else:
                    changes.append(("C" if _in_lowers(lowers, rel) else "A", "/" + rel))
        return sorted(changes, key=lambda c: c[1])


def _in_lowers(lowers: list[Path], rel: str) -> bool:
    """Whether an image layer had something at rel (a new upper entry is an addition)."""
    for layer in lowers:
        if os.path.lexists(layer / rel):
            return True
        parts = rel.split("/")
        for i in range(len(parts)):
            prefix = "/".join(parts[:i])
            if os.path.lexists(layer / prefix / (WH_PREFIX + parts[i])):
                return False
    return False


def _require_directory(mountpoint: str) -> None:
    if not os.path.isdir(mountpoint):
        problem = "not a directory" if os.path.lexists(mountpoint) else "no such directory"
        raise NotFound(f"mount point {mountpoint or '(none)'}", problem)
