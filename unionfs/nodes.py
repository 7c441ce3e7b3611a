"""Node ids: the kernel's handles for names, mapped to the Union's paths.

The kernel names every entry it caches by a node id that the driver hands
out in LOOKUP (and CREATE, MKDIR, READDIRPLUS ...) and takes back with
FORGET once the kernel has dropped it as often as it was given. An id
stands for one name, as in libfuse's path API, except for hard links in the
upper layer: all names of one upper file share an id (``identity``), so
that the kernel holds one inode for them, with one page cache and one link
count. Two ids for one file would each cache its pages, and a write through
one name would not show through the other. (Hard links in a lower layer
keep an id per name: a copy-up breaks them apart, as on overlayfs without
``index``.) A name's id moves with a rename; an id whose names were all
removed stays valid for FORGET, but has no path any more.

A path is only good while no rename, removal or creation changes what it
names. Requests that change names run one at a time (``change``), and so do
those that change an entry (``exclusive``); requests that only read check a
sequence number around their work and start again if a change overlapped
(``stable``), so that attributes of one file never reach the kernel under
the node id of another.
"""
from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

ROOT_ID = 1


Identity = tuple[int, int]  # (st_dev, st_ino) of a file in the upper layer


# What the kernel holds of a node's birth time. It keeps the one a STATX answered with the
# other attributes, and refreshes it only by another STATX: a GETATTR, a SETATTR or an entry
# makes the attributes valid again with the birth time it had.
BIRTH_UNKNOWN, BIRTH_HELD, BIRTH_STALE = 0, 1, 2


class _Node:
    __slots__ = ("birth", "held", "identity", "kept", "links", "lookups", "name", "parent", "remains", "was_in")

    def __init__(self, parent: int, name: str) -> None:
        self.parent = parent  # 0: detached (its names were removed or replaced)
        self.name = name  # with parent: the name its path goes through
        self.links: list[tuple[int, str]] | None = None  # its other names (hard links in the upper layer)
        self.identity: Identity | None = None
        self.lookups = 0
        # (fd, layer index) of a file a rename replaced, or of a removed directory's real one
        self.held: tuple[int, int] | None = None
        # (layer index, path there) of a removed lower file, which stays where it is:
        # opened into held only when a process holding it by O_PATH asks for it
        self.kept: tuple[int, str] | None = None
        self.birth = BIRTH_UNKNOWN
        self.remains: dict[str, int] | None = None  # the attributes of a removed directory
        self.was_in = 0  # detached: the directory its last name was in


def _nothing_kept(index: int, rel: str) -> int:
    raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))


class _Change:
    """NodeTable.change's context: a class, not a generator, for the cost of
    every UNLINK, CREATE and RENAME (a third of a microsecond against one)."""

    __slots__ = ("table",)

    def __init__(self, table: NodeTable) -> None:
        self.table = table

    def __enter__(self) -> None:
        self.table._changing.acquire()
        self.table._seq += 1

    def __exit__(self, *exc: object) -> None:
        self.table._seq += 1
        self.table._changing.release()


class NodeTable:
    def __init__(self) -> None:
        self._nodes: dict[int, _Node] = {ROOT_ID: _Node(0, "")}
        self._ids: dict[tuple[int, str], int] = {}
        self._by_identity: dict[Identity, int] = {}  # upper files with more than one name
        self._next = ROOT_ID + 1  # never reused, so the generation can stay 0
        self._lock = threading.Lock()
        self._seq = 0  # odd while a change is under way
        self._changing = threading.Lock()
        self._change = _Change(self)
        self.births_given = False  # whether any STATX was answered: until then no birth time is stale
        # gives back a node's held fd once the node is gone (Union.release_held); not under the lock
        self.release_held: Callable[[int, int], None] = lambda fd, index: os.close(fd)
        # an O_PATH fd on a kept lower file (Union.open_path); under the lock
        self.open_kept: Callable[[int, str], int] = _nothing_kept

    def change(self) -> _Change:
        """Around a request that changes which entry a path names."""
        return self._change

    def exclusive(self) -> threading.Lock:
        """Around a request that changes an entry by its path: no name moves meanwhile."""
        return self._changing

    def stable(self, work: Callable[[int], T], undo: Callable[[T], None] | None = None) -> T:
        """work(seq), run again until no change overlapped it; undo cleans up a discarded result."""
        while True:
            seq = self._seq
            if seq & 1:
                with self._changing:  # wait for it rather than spin
                    pass
                continue
            try:
                result = work(seq)
            except OSError:
                if self._seq == seq:
                    raise
                continue  # perhaps an error only because a name moved meanwhile
            if self._seq == seq:
                return result
            if undo is not None:
                undo(result)

    def path(self, nodeid: int) -> str:
        """The merged path of a node; ENOENT once its name is gone."""
        if nodeid == ROOT_ID:
            return "/"
        with self._lock:
            node = self._nodes.get(nodeid)
            if node is not None and node.parent:
                found = self._path_in(node.parent, node.name)
                if found is None and node.links:
                    found = self._path_by_another_name(nodeid, node)
                if found is not None:
                    return found
        # A node whose name is gone: ESTALE makes the kernel look the name up
        # again (an open racing a rename then finds the new file, not nothing).
        code = errno.ESTALE if nodeid in self._nodes else errno.ENOENT
        raise OSError(code, os.strerror(code))

    def _path_in(self, parent: int, name: str) -> str | None:
        """The path of name in the directory node parent; None if a directory on the
        way was removed, or forgotten by the kernel."""
        parts = [name]
        while parent != ROOT_ID:
            node = self._nodes.get(parent)
            if node is None or not node.parent:
                return None
            parts.append(node.name)
            parent = node.parent
        return "/" + "/".join(reversed(parts))

    def _live_links(self, nodeid: int, node: _Node) -> list[tuple[int, str]]:
        """The node's other names but those in directories the kernel forgot, which
        go: a file that stays known while one of its directories is forgotten and
        looked up again, time after time, would gather a name each time."""
        live = []
        for link in node.links or ():
            if link[0] in self._nodes:
                live.append(link)
            elif self._ids.get(link) == nodeid:
                del self._ids[link]
        return live

    def _path_by_another_name(self, nodeid: int, node: _Node) -> str | None:
        """The path of a file with names in several directories whose first name leads
        through a directory the kernel forgot: the kernel keeps one inode for all the
        names, and drops one name's directory once none of its entries is cached,
        while the others keep the inode. A name that works becomes the first; the
        dead one goes (node ids are never given again)."""
        assert node.links is not None
        for i, (parent, name) in enumerate(node.links):
            found = self._path_in(parent, name)
            if found is not None:
                dead = (node.parent, node.name)
                if self._ids.get(dead) == nodeid:
                    del self._ids[dead]
                node.parent, node.name = node.links.pop(i)
                return found
        return None

    def detached(self, nodeid: int) -> bool:
        """Whether nodeid's names were all removed (or replaced); False for an unknown id."""
        node = self._nodes.get(nodeid)  # one dict lookup and one attribute: atomic under the GIL
        return node is not None and node.parent == 0 and nodeid != ROOT_ID

    def child_path(self, parent: int, name: str) -> str:
        base = self.path(parent)
        return base + name if base == "/" else base + "/" + name

    def looked_up(self, parent: int, name: str, seq: int | None = None, identity: Identity | None = None) -> int:
        """The id for parent/name, counted once more as known to the kernel.

        identity: the upper file that parent/name is a hard link of; a name of
        a file that already has an id gets that id. With seq: 0 instead if a
        change began since seq was read.
        """
        key = (parent, name)
        with self._lock:
            if seq is not None and seq != self._seq:
                return 0
            nodeid = self._ids.get(key)
            if nodeid is None and identity is not None:
                nodeid = self._by_identity.get(identity)
                if nodeid is not None:
                    node = self._nodes[nodeid]
                    node.links = [*self._live_links(nodeid, node), key]
                    self._ids[key] = nodeid
            if nodeid is None:
                nodeid = self._next
                self._next += 1
                self._nodes[nodeid] = _Node(parent, name)
                self._ids[key] = nodeid
                if identity is not None:
                    self._identify(nodeid, identity)
            self._nodes[nodeid].lookups += 1
            return nodeid

    def peek(self, parent: int, name: str, identity: Identity | None = None) -> int:
        """The id that looked_up would give parent/name now, uncounted; 0 for a new one."""
        with self._lock:
            nodeid = self._ids.get((parent, name))
            if nodeid is None and identity is not None:
                nodeid = self._by_identity.get(identity)
            return nodeid or 0

    def unnamed(self) -> int:
        """A new id for a file with no name yet (O_TMPFILE), known once to the kernel."""
        with self._lock:
            nodeid = self._next
            self._next += 1
            node = self._nodes[nodeid] = _Node(0, "")
            node.lookups = 1
            return nodeid

    def named(self, nodeid: int, parent: int, name: str) -> None:
        """An unnamed node's file got the name parent/name (LINK of an O_TMPFILE file):
        the name takes the node's id, so that the kernel keeps one inode for both."""
        with self._lock:
            node = self._nodes.get(nodeid)
            if node is not None and not node.parent and (parent, name) not in self._ids:
                node.parent, node.name = parent, name
                self._ids[(parent, name)] = nodeid

    def identify(self, nodeid: int, identity: Identity) -> None:
        """nodeid names the upper file identity, which is getting another name (LINK).

        Another node that holds identity is one the kernel can reach by no name: the
        table cannot always see that (its last names the kernel knew were removed while
        another one led through a directory the kernel had forgotten), and the kernel
        keeps such a node until its FORGET. Its file is gone, and the upper layer gave
        its inode number again, or it is this file, which the kernel looked up anew."""
        with self._lock:
            node = self._nodes.get(nodeid)
            if node is None or not node.parent:
                return
            previous = self._by_identity.get(identity)
            if previous is not None and previous != nodeid:
                self._unidentify(previous, self._nodes[previous])
            self._identify(nodeid, identity)

    def _identify(self, nodeid: int, identity: Identity) -> None:
        self._nodes[nodeid].identity = identity
        self._by_identity[identity] = nodeid

    def forget(self, nodeid: int, count: int) -> None:
        with self._lock:
            node = self._nodes.get(nodeid)
            if node is None or nodeid == ROOT_ID:
                return
            node.lookups -= count
            if node.lookups > 0:
                return
            del self._nodes[nodeid]
            if node.parent:
                for key in [(node.parent, node.name), *(node.links or ())]:
                    if self._ids.get(key) == nodeid:
                        del self._ids[key]
            self._unidentify(nodeid, node)
        if node.held:
            self.release_held(*node.held)

    def removed(self, parent: int, name: str, remains: dict[str, int] | None = None,
                held: tuple[int, int] | None = None, kept: tuple[int, str] | None = None) -> int | None:
        """parent/name was unlinked: its id (if any, returned) keeps living without a path.
        remains and held: for a removed directory, the attributes it shows and the
        (fd, layer index) of its real directory, for a process still in it or holding it
        open (Union.rmdir_holding); held is given back at once if the kernel knows no such node.
        kept: where a removed lower file stays (Union.unlink), for a process that holds it
        without an open, which the driver never sees (O_PATH)."""
        with self._lock:
            nodeid = self._detach((parent, name))
            node = self._nodes.get(nodeid) if nodeid is not None else None
            if node is not None and node.parent == 0:
                node.remains = remains
                node.kept = kept
                node.held, held = held, node.held
        if held is not None:
            self.release_held(*held)
        return nodeid

    def left_a_removed_dir(self, nodeid: int) -> bool:
        """Whether the directory that a node's last name was removed from is removed too
        (the kernel keeps a removed entry's directory known while it holds the entry).
        Without the lock, as ``detached``: asked from within ``with_held``."""
        node = self._nodes.get(nodeid)
        was_in = node.was_in if node is not None and not node.parent else 0
        directory = self._nodes.get(was_in) if was_in and was_in != ROOT_ID else None
        return directory is not None and directory.parent == 0

    def remains(self, nodeid: int) -> dict[str, int] | None:
        node = self._nodes.get(nodeid)
        return node.remains if node is not None else None

    def kept(self, nodeid: int) -> tuple[int, str] | None:
        """Where the node's removed lower file stays (see removed), if it is one."""
        node = self._nodes.get(nodeid)
        return node.kept if node is not None else None

    def held_layer(self, nodeid: int) -> int | None:
        """The layer index of what a node whose names are gone is answered from (with_held),
        without opening it; None if nothing."""
        node = self._nodes.get(nodeid)
        if node is None:
            return None
        held, kept = node.held, node.kept
        return held[1] if held is not None else kept[0] if kept is not None else None

    def find(self, path: str) -> int:
        """The id the kernel knows for a merged path, else 0."""
        nodeid = ROOT_ID
        with self._lock:
            for name in filter(None, path.split("/")):
                nodeid = self._ids.get((nodeid, name), 0)
                if not nodeid:
                    return 0
        return nodeid

    def birth_time_given(self, nodeid: int) -> None:
        """A STATX answered for the node: the kernel holds its real file's birth time."""
        self.births_given = True
        with self._lock:
            node = self._nodes.get(nodeid)
            if node is not None:
                node.birth = BIRTH_HELD

    def birth_time_replaced(self, path: str) -> tuple[int, bool]:
        """A copy-up gave the entry at path a real file of its own: the id of its node (0
        if the kernel knows none), and whether the kernel holds the birth time of the
        file before (stale from now on)."""
        nodeid = self.find(path)
        with self._lock:
            node = self._nodes.get(nodeid)
            if node is None or node.birth != BIRTH_HELD:
                return nodeid, False
            node.birth = BIRTH_STALE
        return nodeid, True

    def birth_time_stale(self, nodeid: int) -> bool:
        node = self._nodes.get(nodeid)
        return node is not None and node.birth == BIRTH_STALE

    def known(self, parent: int, name: str) -> int:
        """The id of parent/name if the kernel knows one, else 0."""
        with self._lock:
            return self._ids.get((parent, name), 0)

    def with_held(self, nodeid: int, use: Callable[[int, int], T]) -> T | None:
        """use(fd, layer index) on the file a rename took from this node, on the real
        directory of a removed one, or on a removed lower file kept (opened now, once);
        None if there is none.

        Under the table's lock, so that a FORGET cannot close the fd meanwhile.
        """
        with self._lock:
            node = self._nodes.get(nodeid)
            if node is None:
                return None
            if node.held is None and node.kept is not None:
                try:
                    node.held = (self.open_kept(*node.kept), node.kept[0])
                except OSError:
                    return None
            return use(*node.held) if node.held is not None else None

    def close_held(self) -> None:
        """Give back the fds of files renames took and of removed directories (at the
        end: no requests are on their way any more)."""
        with self._lock:
            held = [node.held for node in self._nodes.values() if node.held is not None]
            for node in self._nodes.values():
                node.held = None
        for fd, index in held:
            self.release_held(fd, index)

    def with_all_held(self, use: Callable[[list[tuple[int, int]]], T]) -> T:
        """use((fd, layer index) of every file a rename took and every removed directory
        kept), under the table's lock."""
        with self._lock:
            return use([node.held for node in self._nodes.values() if node.held is not None])

    def renamed(self, parent: int, name: str, new_parent: int, new_name: str,
                held: tuple[int, int] | None = None, remains: dict[str, int] | None = None,
                kept: tuple[int, str] | None = None) -> int | None:
        """A rename; held, or kept for a lower file, keeps the entry it replaced reachable
        for opens already on their way (as removed's), and remains are the attributes a
        directory replaced shows. Returns the id of the node it replaced, if the kernel
        knows one."""
        with self._lock:
            nodeid = self._ids.pop((parent, name), None)
            replaced = self._detach((new_parent, new_name))
            self._keep(replaced, held, remains, kept)
            if nodeid is not None:
                self._rename_link(nodeid, (parent, name), (new_parent, new_name))
                self._ids[(new_parent, new_name)] = nodeid
            return replaced

    def exchanged(self, parent: int, name: str, other_parent: int, other_name: str) -> None:
        with self._lock:
            first = self._ids.pop((parent, name), None)
            second = self._ids.pop((other_parent, other_name), None)
            moves = ((first, (parent, name), (other_parent, other_name)),
                     (second, (other_parent, other_name), (parent, name)))
            for nodeid, old, new in moves:
                if nodeid is not None:
                    self._rename_link(nodeid, old, new)
            for nodeid, _, new in moves:
                if nodeid is not None:
                    self._ids[new] = nodeid

    def _rename_link(self, nodeid: int, old: tuple[int, str], new: tuple[int, str]) -> None:
        node = self._nodes[nodeid]
        if (node.parent, node.name) == old:
            node.parent, node.name = new
        elif node.links and old in node.links:
            node.links[node.links.index(old)] = new

    def _keep(self, nodeid: int | None, held: tuple[int, int] | None, remains: dict[str, int] | None,
              kept: tuple[int, str] | None) -> None:
        """Give the node the fd that keeps its entry reachable (given back with the node),
        or where its lower file stays."""
        node = self._nodes.get(nodeid) if nodeid is not None else None
        if node is not None and node.parent == 0:
            node.kept = kept
        if held is None:
            return
        if node is None:
            self.release_held(*held)
            return
        if node.held is not None:  # one file by another of its names: the newer fd will do
            self.release_held(*node.held)
        node.held = held
        if node.parent == 0 and remains is not None:
            node.remains = remains

    def _detach(self, key: tuple[int, str]) -> int | None:
        """key names nothing any more; its node keeps its other names, if it has any."""
        nodeid = self._ids.pop(key, None)
        if nodeid is None:
            return None
        node = self._nodes[nodeid]
        if node.links and key in node.links:
            node.links.remove(key)
        elif node.links:
            node.parent, node.name = node.links.pop()
        else:
            node.parent, node.was_in = 0, key[0]
            # the file may be gone, and its inode number given to a new one
            self._unidentify(nodeid, node)
        return nodeid

    def _unidentify(self, nodeid: int, node: _Node) -> None:
        if node.identity is not None and self._by_identity.get(node.identity) == nodeid:
            del self._by_identity[node.identity]
        node.identity = None
