"""The names in upper directories that this driver made: known without asking.

Looking a lower entry up in a merged directory asks the upper layer for the
name, and where a lower layer has it, for its ``.wh.`` marker too: two
lookups that almost always miss, and a miss in a large directory costs
several microseconds. A directory that this driver made itself (by a
copy-up or a mkdir) started empty, and every name that appeared in it since
came from one of the driver's changes, each of which calls
``Resolver.invalidate`` once it is on disk. So the names it may hold are the
names changed in it since: any other name is known to be absent, and so is
that name's marker, which is only written with a change of the name. The
upper layer changes only through the mount (overlayfs.rst, "Changes to
underlying filesystems"). A name removed or renamed away with no whiteout
left in its place (nothing of it below) is absent again, and is let go: a
directory where temporary files come and go, or are written and renamed into
place, keeps only the names it holds.

Not thread-safe by itself: the resolver calls every change under its lock.
``absent`` reads without it: a set's membership test is atomic, and a name
being changed at that moment may be seen either way, as by any lookup that
races with a change.
"""
from __future__ import annotations

from unionfs.pathtree import PathTree

# Directories and names kept in all; beyond it all are forgotten and asked of the disk
# again. About 100 bytes each: a mount that makes names that stay for hours (a build's
# outputs, a cache) holds some 3 MB of them, not one per name ever made.
MAX_ENTRIES = 32_768


class UpperNames:
    def __init__(self) -> None:
        self._changed: dict[str, set[str]] = {}  # upper rel of a made directory -> names changed in it since
        self._count = 0  # directories and names in _changed
        self._tree = PathTree(".", self._changed)  # what of _changed is below a directory

    def absent(self, rel: str, name: str) -> bool:
        """Known: the upper directory rel holds neither name nor its marker."""
        changed = self._changed.get(rel)
        return changed is not None and name not in changed

    def expect_empty(self, rel: str) -> None:
        """An empty directory that the driver built is about to appear at rel: called
        before it does, so that no change in it can come before its record."""
        self._drop(rel)
        self._changed[rel] = set()
        self._tree.add(rel)
        self._counted()

    def forget(self, rel: str) -> None:
        """The directory did not appear at rel after all."""
        self._drop(rel)

    def changed(self, rel: str, subtree: bool, made_dir: bool, gone: bool = False) -> None:
        """The upper entry rel changed (see ``Resolver.invalidate``); made_dir: it is the
        directory whose ``expect_empty`` came just before; gone: it was removed and
        left neither an entry nor a marker at rel."""
        head, _, name = rel.rpartition("/")
        names = self._changed.get(head or ".")
        if names is not None:
            if gone:
                if name in names:
                    names.discard(name)
                    self._count -= 1
            elif name not in names:
                names.add(name)
                self._counted()
        if not made_dir:
            self._drop(rel)  # whatever is at rel now is not known to have started empty
        if subtree:
            for key in self._tree.take_below(rel):
                self._drop(key)

    def renamed(self, old: str, new: str, subtree: bool, gone: bool, exchange: bool = False) -> None:
        """``changed`` of both names of a rename in the upper layer; subtree: a
        directory moved, and the names known in it and below hold at new (a rename
        changes no name in it); exchange: the entry at new went to old."""
        # Each side's records taken out once: what is left to change is the names alone.
        mine, theirs = (self._take(old), self._take(new)) if subtree else ([], [])
        moved = [(new + rel[len(old):], names) for rel, names in mine]
        if exchange:
            moved += [(old + rel[len(new):], names) for rel, names in theirs]
        self.changed(old, False, False, gone)
        self.changed(new, False, False)
        for rel, names in moved:
            self._changed[rel] = names
            self._tree.add(rel)
        self._counted(sum(len(names) + 1 for _, names in moved))

    def _take(self, rel: str) -> list[tuple[str, set[str]]]:
        """Take out the directory rel and those below it."""
        keys = [rel, *self._tree.take_below(rel)]
        taken = [(key, self._changed[key]) for key in keys if key in self._changed]
        for key, _ in taken:
            self._drop(key)
        return taken

    def _counted(self, added: int = 1) -> None:
        self._count += added
        if self._count > MAX_ENTRIES:
            self._changed.clear()
            self._tree.clear()
            self._count = 0

    def _drop(self, rel: str) -> None:
        names = self._changed.pop(rel, None)
        if names is not None:
            self._count -= len(names) + 1
            self._tree.discard(rel)
