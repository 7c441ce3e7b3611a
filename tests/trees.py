"""A directory tree as data, for comparing what two ways of making it made."""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any


def tree(root: Path | str) -> dict[str, tuple[Any, ...]]:
    """type, mode, owner, size, content hash, link target of every entry under root."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            extra: str = ""
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    extra = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(path)
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                        st.st_size if stat.S_ISREG(st.st_mode) else 0, extra)
    return out


def link_groups(root: Path | str) -> list[tuple[str, ...]]:
    """Names of regular files that share an inode."""
    by_ino: dict[int, list[str]] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                by_ino.setdefault(st.st_ino, []).append(os.path.relpath(path, root))
    return sorted(tuple(sorted(names)) for names in by_ino.values() if len(names) > 1)
