"""The paths a cache holds, as a tree: what lies below a directory, found at once.

A rename of a directory must forget every cached path below its old and its
new name. Scanning all the keys for the prefix costs about 50 ns a key: 10 ms
with the resolver's 200,000 paths kept, under its lock, for each side of the
rename, where the rename itself takes 2 ms. Here each path's parent knows
it, so the paths below a directory are found in the time it takes to remove
them. A parent that the cache does not hold itself is kept as a link while
something below it is held.

Not thread-safe: the caches change under their owner's lock.
"""
from __future__ import annotations

from collections.abc import Container
from typing import TypeVar

V = TypeVar("V")
_MISSING = object()


class PathTree:
    def __init__(self, root: str, members: Container[str]) -> None:
        """root: the path that has no parent ("/" for merged paths, "." for
        relative ones); members: what the cache holds (links are not members)."""
        self._root = root
        self._members = members
        self._below: dict[str, set[str]] = {}  # path -> the members and links one level below it; never empty

    def add(self, path: str) -> None:
        """path became a member (or was one already)."""
        root, tree = self._root, self._below
        while path != root:
            parent = path.rpartition("/")[0] or root
            below = tree.get(parent)
            if below is not None:
                below.add(path)
                return  # the parent is linked already
            tree[parent] = {path}
            path = parent

    def discard(self, path: str) -> None:
        """path is no longer a member. What is below it stays; with nothing below,
        its parent forgets it, and so on up while a parent is left with nothing
        below and is no member itself."""
        root, tree = self._root, self._below
        if path in tree:
            return
        while path != root:
            parent = path.rpartition("/")[0] or root
            below = tree.get(parent)
            if below is None:
                return
            below.discard(path)
            if below:
                return
            del tree[parent]
            if parent in self._members:
                return
            path = parent

    def take_below(self, path: str) -> list[str]:
        """Take what is below path out of the tree: the paths taken (links among
        them; a member of the cache may be any of them, and nothing else below path)."""
        below = self._below.pop(path, None)
        if not below:
            return []
        taken = list(below)
        i = 0
        while i < len(taken):
            more = self._below.pop(taken[i], None)
            if more:
                taken.extend(more)
            i += 1
        if path not in self._members:
            self.discard(path)
        return taken

    def clear(self) -> None:
        self._below.clear()


class PathCache(dict[str, V]):
    """Values kept by merged path, at most ``bound`` of them (then all are let go
    and found again on demand), whose entries below a directory go in one step.
    Reads are a dict's, without a lock; changes go through ``keep`` and the
    ``drop`` methods, under the owner's lock."""

    def __init__(self, bound: int) -> None:
        super().__init__()
        self._bound = bound
        self._tree = PathTree("/", self)

    def keep(self, path: str, value: V) -> None:
        if path not in self:
            if len(self) >= self._bound:
                self.drop_all()
            self._tree.add(path)
        self[path] = value

    def drop(self, path: str) -> None:
        if self.pop(path, _MISSING) is not _MISSING:
            self._tree.discard(path)

    def drop_tree(self, path: str) -> None:
        """path and everything below it."""
        self.drop(path)
        for key in self._tree.take_below(path):
            self.pop(key, None)

    def drop_all(self) -> None:
        self.clear()
        self._tree.clear()
