"""Path resolution across layers: which layer answers for a merged path.

overlayfs.rst "Directories": the topmost entry wins, directories merge down to
the first opaque one, a non-directory hides everything below it, and a
whiteout hides the name in the layers below its own. A redirect (the
``overlay.redirect`` xattr on a directory, written when a directory with lower
parts is renamed) points the lower layers at another path: an absolute one
from their root, or a relative one, the old name, in the parent's own lower
directories (which the parent's redirect may have moved).

Results are plain values, testable without FUSE. Listings of lower
directories are read once (lower layers never change) and resolved nodes are
cached until one of the driver's own operations changes them: every change
calls ``invalidate`` after it is on disk.
"""
from __future__ import annotations

import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass

from unionfs import markers
from unionfs.layer import DirInfo, Layer, rel_join
from unionfs.pathtree import PathCache
from unionfs.uppernames import UpperNames

_WHITEOUT, _DIR, _OTHER = "w", "d", "o"
_MAX_NODES = 200_000  # resolved paths kept; a plain bound, refilled on demand
_MAX_LOWER_NAMES = 500_000  # names of lower directories kept (about 170 bytes each); the first read go first


def _valid_redirect(redirect: str) -> bool:
    """A name (relative: the directory's old name in the same parent) or a path
    from the root of the layers below (absolute), as overlayfs reads them."""
    names = redirect[1:].split("/") if redirect.startswith("/") else [redirect]
    return all(n and n not in (".", "..") for n in names)


@dataclass(frozen=True, slots=True)
class Node:
    """A merged entry: the layers that hold it, top first, as (index, rel path)."""

    path: str
    is_dir: bool
    layers: tuple[tuple[int, str], ...]
    meta: int = 0  # position in layers of the entry whose attributes show

    @property
    def layer(self) -> int:
        return self.layers[0][0]

    @property
    def rel(self) -> str:
        return self.layers[0][1]

    @property
    def attr_source(self) -> tuple[int, str]:
        return self.layers[self.meta]

    @property
    def merged(self) -> bool:
        return len(self.layers) > 1


def _names(info: DirInfo | None) -> int:
    """What a lower directory read counts against _MAX_LOWER_NAMES."""
    return 1 + (len(info.entries) if info is not None else 0)


def split(path: str) -> tuple[str, str]:
    """'/a/b' -> ('/a', 'b'); '/a' -> ('/', 'a')."""
    head, _, name = path.rpartition("/")
    return head or "/", name


def to_rel(path: str) -> str:
    return path[1:] or "."


def child_path(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


class Resolver:
    """Resolves merged paths; layer 0 is the upper layer when ``writable``."""

    def __init__(self, layers: list[Layer], writable: bool) -> None:
        self.layers = layers
        self.writable = writable
        self._lower_dirs: dict[tuple[int, str], DirInfo | None] = {}  # in the order they were read
        self._lower_names = 0  # directories and their names in _lower_dirs
        self._lower_lock = threading.Lock()
        self.impure_layers: set[int] = set()  # lower layers where a directory read so far is overlay.impure
        self._nodes: PathCache[Node] = PathCache(_MAX_NODES)
        # path -> (its node, the node's immutable and append-only bits): asked of
        # the parent at every removal in it, and dropped with the node
        self._protections: PathCache[tuple[Node, int]] = PathCache(_MAX_NODES)
        self.upper_names = UpperNames()
        self._gen = 0
        self._lock = threading.Lock()
        # Waits until nothing at a path or below it is a pending copy-up (see publish).
        self.settle: Callable[[str], None] | None = None

    # -- caches ------------------------------------------------------------------
    def invalidate(self, path: str, subtree: bool = False, made_dir: bool = False, gone: bool = False) -> int:
        """Forget what path resolved to (and everything below it with subtree);
        made_dir: path is the directory that ``expect_empty`` announced; gone: path
        was removed from the upper layer and left no whiteout there. Returns the
        generation this change started, for ``remember`` of what the change made."""
        with self._lock:
            if self.writable:
                self.upper_names.changed(to_rel(path), subtree, made_dir, gone)
            return self._forget(path, subtree)

    def renamed(self, old: str, new: str, subtree: bool, gone: bool, exchange: bool = False) -> None:
        """``invalidate`` of both names of a rename (or of an exchange), in one step: a
        directory that the driver made takes the names it knows along to its new place."""
        with self._lock:
            if self.writable:
                self.upper_names.renamed(to_rel(old), to_rel(new), subtree, gone, exchange)
            self._forget(old, subtree)
            self._forget(new, subtree)

    def _forget(self, path: str, subtree: bool) -> int:
        self._gen += 1
        if subtree:
            self._nodes.drop_tree(path)
            self._protections.drop_tree(path)
        else:
            self._nodes.drop(path)
            if path in self._protections:  # mostly not: kept for directories removed from
                self._protections.drop(path)
        return self._gen

    def expect_empty(self, rel: str) -> None:
        """An empty directory that the driver built is about to appear at rel in the
        upper layer (see ``uppernames``); ``invalidate`` with made_dir follows, or
        ``not_made`` if it does not appear."""
        with self._lock:
            self.upper_names.expect_empty(rel)

    def not_made(self, rel: str) -> None:
        with self._lock:
            self.upper_names.forget(rel)

    def protection(self, node: Node, read: Callable[[Node], int]) -> int:
        """read(node), kept until the node changes: protection changes only with the
        node (a copy-up keeps it) or by chattr, which calls ``forget_protections``."""
        kept = self._protections.get(node.path)
        if kept is not None and (kept[0] is node or kept[0] == node):  # mostly the very node kept
            return kept[1]
        gen = self._gen
        bits = read(node)
        with self._lock:
            if gen == self._gen:
                self._protections.keep(node.path, (node, bits))
        return bits

    def forget_protections(self) -> None:
        """After a chattr: other names of the same inode show its new protection too."""
        with self._lock:
            self._gen += 1
            self._protections.drop_all()

    @property
    def generation(self) -> int:
        return self._gen

    def _store(self, node: Node, gen: int) -> None:
        with self._lock:
            if gen == self._gen:
                self._nodes.keep(node.path, node)

    def remember(self, node: Node, gen: int) -> None:
        """Keep a node found another way (a listing), if nothing changed since gen."""
        self._store(node, gen)

    def is_upper(self, index: int) -> bool:
        return self.writable and index == 0

    def lower_dir(self, index: int, rel: str) -> DirInfo | None:
        key = (index, rel)
        try:
            return self._lower_dirs[key]
        except KeyError:
            pass
        try:
            info: DirInfo | None = self.layers[index].scan(rel)
        except (NotADirectoryError, FileNotFoundError):
            info = None
        if info is not None and info.impure:
            self.impure_layers.add(index)
        self._keep_lower(key, info)
        return info

    def _keep_lower(self, key: tuple[int, str], info: DirInfo | None) -> None:
        """Lower directories never change, but a walk of a large image would keep every
        name of it for as long as the mount lives: beyond the bound, those read first
        are let go (the one just read stays, however large) and read again if asked for."""
        with self._lower_lock:
            if key in self._lower_dirs:
                return  # another request read it meanwhile
            self._lower_dirs[key] = info
            self._lower_names += _names(info)
            while self._lower_names > _MAX_LOWER_NAMES and len(self._lower_dirs) > 1:
                self._lower_names -= _names(self._lower_dirs.pop(next(iter(self._lower_dirs))))

    # -- one layer ---------------------------------------------------------------
    def _entry(self, index: int, prel: str, name: str, layers: tuple[tuple[int, str], ...]) -> tuple[str | None, bool]:
        """(kind of name in this layer's dir prel, whether it hides the layers below);
        layers: the merged directory's, whose lower ones a ``.wh.`` marker could hide."""
        if self.is_upper(index):
            if self.upper_names.absent(prel, name):
                return None, False  # nor its marker, which comes only with a change of the name
            layer = self.layers[index]
            rel = rel_join(prel, name)
            st = layer.lstat(rel)
            if st is None:
                if not self._named_below(layers, name):
                    return None, False  # a marker would hide nothing: not looked for
                kind = None
            elif stat.S_ISDIR(st.st_mode):
                kind = _DIR
            elif layer.is_whiteout(rel, st):
                return _WHITEOUT, True
            else:
                return _OTHER, True
            return kind, layer.marker_exists(rel_join(prel, markers.WH_PREFIX + name))
        info = self.lower_dir(index, prel)
        if info is None:
            return None, False
        entry = info.entries.get(name)
        hides = name in info.hides
        if entry is None:
            return (_WHITEOUT if hides else None), hides
        return (_DIR if entry.is_dir else _OTHER), hides

    def _named_below(self, layers: tuple[tuple[int, str], ...], name: str) -> bool:
        """Whether a lower directory of a merged one has an entry called name. A name
        absent from the upper and from these (a new file, a missing name) is then
        absent from the union whatever the upper holds: its ``.wh.`` probe, a
        lookup that misses in a directory the upper may fill with whiteouts, is spared."""
        for index, prel in layers:
            if not self.is_upper(index):
                info = self.lower_dir(index, prel)
                if info is not None and name in info.entries:
                    return True
        return False

    def _dir_meta(self, index: int, rel: str) -> tuple[bool, str | None]:
        if self.is_upper(index):
            return self.layers[index].dir_meta(rel)
        info = self.lower_dir(index, rel)
        return (info.opaque, info.redirect) if info else (False, None)

    # -- merged ------------------------------------------------------------------
    def root(self, start: int = 0) -> Node | None:
        """The merged root of layers[start:]. A layer's root hides the layers below
        only by the OCI marker, as applying that layer would: overlayfs ignores
        overlay.opaque on the roots of its layers, the upper's as well."""
        layers: list[tuple[int, str]] = []
        for index in range(start, len(self.layers)):
            layers.append((index, "."))
            if self.layers[index].exists(markers.OPAQUE_MARKER):
                break
        return Node("/", True, tuple(layers), self._meta(layers)) if layers else None

    def _meta(self, layers: list[tuple[int, str]]) -> int:
        """The first layer whose directory was described by its layer, not made as a parent."""
        for position, (index, rel) in enumerate(layers):
            if self.is_upper(index):
                return position
            info = self.lower_dir(index, rel)
            if info is None or not info.implicit:
                return position
        return 0

    def child(self, parent: Node, name: str) -> Node | None:
        """Look name up in a merged directory."""
        path = child_path(parent.path, name)
        if name.startswith(markers.WH_PREFIX):
            return None
        dirs: list[tuple[int, str]] = []
        below = name  # the name in the layers below: a relative redirect changes it
        for index, prel in parent.layers:
            kind, hides = self._entry(index, prel, below, parent.layers)
            if kind == _WHITEOUT:
                break
            rel = rel_join(prel, below)
            if kind == _OTHER:
                if dirs:
                    break
                return Node(path, False, ((index, rel),))
            if kind == _DIR:
                dirs.append((index, rel))
                opaque, redirect = self._dir_meta(index, rel)
                if opaque:
                    break
                # A .wh. marker beside a directory of its own layer hides what was at the
                # name below, as if the directory were opaque (as applying an OCI layer
                # does). In the upper, where this driver writes the OCI form, a marker
                # beside a redirected directory is what a rename onto a removed name
                # left: the redirect names where the directory's lower parts are.
                if hides and (redirect is None or not self.is_upper(index)):
                    break
                if redirect is None:
                    continue
                if not _valid_redirect(redirect):
                    break  # overlayfs fails the lookup; here the layers below are left out
                if not redirect.startswith("/"):
                    below = redirect  # looked up in the parent's own lower directories
                    continue
                target = self.resolve(redirect, index + 1)
                if target is not None and target.is_dir:
                    dirs.extend(target.layers)
                break
            elif hides:
                break
        return Node(path, True, tuple(dirs), self._meta(dirs)) if dirs else None

    def resolve(self, path: str, start: int = 0, settle: bool = True) -> Node | None:
        """The node of a merged path over layers[start:], or None; with settle, once
        no copy-up at path or below it is pending."""
        cacheable = start == 0
        if settle and cacheable and self.settle is not None:
            self.settle(path)
        if cacheable:
            node = self._nodes.get(path)
            if node is not None:
                return node
        gen = self._gen
        names: list[str] = []
        current = path
        found: Node | None = None
        while current != "/":
            current, name = split(current)
            names.append(name)
            if cacheable and (found := self._nodes.get(current)) is not None:
                break
        else:
            found = self.root(start)
            if found is not None and cacheable:
                self._store(found, gen)
        node = found
        for name in reversed(names):
            if node is None or not node.is_dir:
                return None
            if not name:
                continue
            node = self.child(node, name)
            if node is not None and cacheable:
                self._store(node, gen)
        return node

    def lower_only(self, node: Node) -> Node | None:
        """The same directory with the upper layer left out."""
        layers = tuple(entry for entry in node.layers if not self.is_upper(entry[0]))
        return Node(node.path, True, layers, self._meta(list(layers))) if layers else None

    def lower_positive(self, parent: Node, name: str) -> bool:
        """Whether a lower layer shows name: removing it from the upper needs a whiteout."""
        lower = self.lower_only(parent)
        return lower is not None and self.child(lower, name) is not None
