"""Paths of untrusted archive entries, kept inside one root directory.

The rules are umoci's and containerd ``pkg/archive``'s: clean the name
lexically first, then reach its parent one component at a time with
``O_NOFOLLOW|O_DIRECTORY`` relative to the previous directory, so that a
symbolic link planted by an earlier entry is refused instead of followed,
and never follow the last component (callers create it with ``*at`` calls
relative to the parent's fd). Nothing here goes through a path string that
the kernel would resolve from the root of the machine.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from collections import OrderedDict

from layerstore.errors import UnsafeArchiveEntry, quote

__all__ = ["ConfinedTree", "Missing", "clean_name"]

# O_PATH: only a handle for *at calls, needs no read permission on the directory.
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CACHE_SIZE = 128
# Anything clean_name would change: most names in a layer pass untouched.
_UNCLEAN = re.compile(r"^/|//|/$|(?:^|/)\.\.?(?:/|$)|\x00")


class Missing(Exception):
    """A parent directory that must already exist does not (hard-link targets)."""


def clean_name(name: str, *, layer: str | None = None) -> str:
    """The root-relative form of an entry name: "" is the root itself.

    Leading ``/`` and ``./`` and doubled slashes go (GNU tar, containerd and
    umoci all read ``/etc/x`` as ``etc/x`` under the root); ``..`` collapses
    lexically but may never climb above the root, and NUL is refused since the
    kernel would silently cut the name there.
    """
    if not _UNCLEAN.search(name):
        return name
    if "\0" in name:
        raise UnsafeArchiveEntry(name, "name contains a NUL byte", layer=layer)
    parts: list[str] = []
    for part in name.split("/"):
        if part == ".." and parts:
            parts.pop()
        elif part == "..":
            raise UnsafeArchiveEntry(name, "escapes the layer root", layer=layer)
        elif part and part != ".":
            parts.append(part)
    return "/".join(parts)


class ConfinedTree:
    """Directory fds under a root, opened component by component without following links.

    Recently used directories stay open (entries of one directory come
    together in a tar stream), so most entries cost no path walk at all.
    Directories created implicitly, as parents no entry described, are
    remembered: they carry no metadata from the layer.
    """

    def __init__(self, root_fd: int, *, layer: str | None = None) -> None:
        self.root_fd = root_fd
        self.layer = layer
        self.implicit: set[str] = set()
        self._cache: OrderedDict[str, int] = OrderedDict()

    def dir_fd(self, path: str, *, entry: str, create: bool = True) -> int:
        """Fd of directory ``path`` (root-relative, clean); valid until the next call.

        Missing directories are made (mode 0755) when ``create``, else Missing
        is raised; a symlink or non-directory on the way is UnsafeArchiveEntry.
        """
        if not path:
            return self.root_fd
        fd = self._cache.get(path)
        if fd is not None:
            self._cache.move_to_end(path)
            return fd
        done, fd = self._closest_cached(path)
        for part in path[len(done) + bool(done) :].split("/"):
            done = f"{done}/{part}" if done else part
            fd = self._open_child(fd, part, done, entry, create)
            self._remember(done, fd)
        return fd

    def forget(self, path: str) -> None:
        """Drop cached fds of ``path`` and everything below it (it was removed)."""
        prefix = path + "/"
        for key in [k for k in self._cache if k == path or k.startswith(prefix)]:
            os.close(self._cache.pop(key))
        self.implicit = {k for k in self.implicit if not (k == path or k.startswith(prefix))}

    def close(self) -> None:
        while self._cache:
            os.close(self._cache.popitem()[1])

    def _closest_cached(self, path: str) -> tuple[str, int]:
        cut = len(path)
        while True:
            cut = path.rfind("/", 0, cut)
            if cut < 0:
                return "", self.root_fd
            fd = self._cache.get(path[:cut])
            if fd is not None:
                self._cache.move_to_end(path[:cut])
                return path[:cut], fd

    def _remember(self, path: str, fd: int) -> None:
        self._cache[path] = fd
        if len(self._cache) > _CACHE_SIZE:
            os.close(self._cache.popitem(last=False)[1])

    def _open_child(self, parent_fd: int, part: str, path: str, entry: str, create: bool) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                raise Missing(path) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            self._refuse(parent_fd, part, path, entry)
        os.mkdir(part, 0o755, dir_fd=parent_fd)
        os.chmod(part, 0o755, dir_fd=parent_fd)  # whatever the umask
        self.implicit.add(path)
        return os.open(part, _DIR_FLAGS, dir_fd=parent_fd)

    def _refuse(self, parent_fd: int, part: str, path: str, entry: str) -> None:
        mode = os.stat(part, dir_fd=parent_fd, follow_symlinks=False).st_mode
        what = "a symbolic link" if stat.S_ISLNK(mode) else "not a directory"
        raise UnsafeArchiveEntry(entry, f"parent {quote(path)} is {what}", layer=self.layer)
