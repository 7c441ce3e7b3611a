"""The inventory of an unpacked layer: what each of its entries was when it was unpacked.

A layer directory is trusted because it was renamed into place only after
its diff_id checked out; the inventory keeps that trust checkable later.
Written at unpack time, before the rename, it lists every entry with its
type, mode, owner, size, mtime, link target or device number, an xxhash of
its xattrs and of a file's content. ``fsck`` walks the directory again and
compares: a file changed, added or lost since shows up by name.

Stored as zstd-compressed JSON lines, one entry a line, sorted by path, in
``layers/.inventory/<algorithm>/<hex>``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash
import zstandard

from unionfs import crashpoints

VERSION = 2  # 1 recorded no directory's xattrs (read from the /proc link, not the directory)
UNKNOWN = "?"  # xattrs not recorded: a directory's in a version 1 inventory
CHUNK = 1 << 20
_EMPTY = xxhash.xxh3_128(b"").hexdigest()


@dataclass(frozen=True)
class Entry:
    path: str  # relative, "." for the layer's root
    kind: str  # "dir", "file", "symlink", "char", "block", "fifo", "socket"
    mode: int  # permission bits with set-id and sticky
    uid: int
    gid: int
    size: int
    mtime_ns: int
    target: str  # symlink target, "major:minor" of a device, else ""
    xattrs: str  # xxh3 of the sorted names and values, "" when none
    content: str  # xxh3-128 of a regular file's bytes, else ""

    def describe_difference(self, other: Entry) -> str:
        """The first field that differs, said the way a person compares two ls lines."""
        for field in ("kind", "mode", "uid", "gid", "size", "target", "content", "xattrs", "mtime_ns"):
            a, b = getattr(self, field), getattr(other, field)
            if a != b:
                if field == "mode":
                    return f"mode {a:o} recorded, {b:o} on disk"
                if field == "content":
                    return "content changed"
                if field == "xattrs":
                    return "xattrs changed"
                return f"{field} {a} recorded, {b} on disk"
        return ""


_KINDS = {
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "file",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def scan(root: Path | str) -> Iterator[Entry]:
    """Every entry under root, the root itself first, in sorted path order; hard links hashed once."""
    hashed: dict[tuple[int, int], str] = {}
    st = os.stat(root, follow_symlinks=False)
    with _readable(None, os.fspath(root), st, 0o500):
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            yield from _scan_dir(root_fd, ".", st, hashed)
        finally:
            os.close(root_fd)


def _scan_dir(fd: int, rel: str, st: os.stat_result, hashed: dict[tuple[int, int], str]) -> Iterator[Entry]:
    yield _entry(rel, st, fd, None, hashed)
    for name in sorted(os.listdir(fd)):
        child_rel = name if rel == "." else f"{rel}/{name}"
        child = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISDIR(child.st_mode):
            with _readable(fd, name, child, 0o500):
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                try:
                    yield from _scan_dir(sub, child_rel, child, hashed)
                finally:
                    os.close(sub)
        else:
            with _readable(fd, name, child, 0o400 if stat.S_ISREG(child.st_mode) else 0):
                entry = _entry(child_rel, child, fd, name, hashed)
            yield entry


@contextlib.contextmanager
def _readable(dir_fd: int | None, name: str, st: os.stat_result, bits: int) -> Iterator[None]:
    """Owner permission bits added to an entry's mode while it is read, where its mode
    alone would keep its owner out: a user, unlike root, unpacks layers as itself, and
    layers hold files and directories of mode 0 (a distribution's /etc/shadow). The
    mode recorded is the one found before."""
    mode = stat.S_IMODE(st.st_mode)
    uid = os.geteuid()
    if uid == 0 or st.st_uid != uid or mode & bits == bits:
        yield
        return
    os.chmod(name, mode | bits, dir_fd=dir_fd)  # found by lstat as a file or directory, in a tree of ours
    try:
        yield
    finally:
        os.chmod(name, mode, dir_fd=dir_fd)


def _entry(rel: str, st: os.stat_result, fd: int, name: str | None, hashed: dict[tuple[int, int], str]) -> Entry:
    """One entry; ``name`` relative to the directory ``fd``, or None for the directory ``fd`` itself."""
    kind = _KINDS.get(stat.S_IFMT(st.st_mode), "unknown")
    target = content = ""
    if kind == "symlink" and name is not None:
        target = os.readlink(name, dir_fd=fd)
    elif kind in ("char", "block"):
        target = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    elif kind == "file" and name is not None:
        key = (st.st_dev, st.st_ino)
        if key not in hashed:
            hashed[key] = _hash_file(fd, name) if st.st_size else _EMPTY  # whiteouts: nothing to read
        content = hashed[key]
    return Entry(
        path=rel,
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size if kind in ("file", "symlink") else 0,
        mtime_ns=st.st_mtime_ns,
        target=target,
        xattrs=_hash_xattrs(fd, name),
        content=content,
    )


def _hash_file(dir_fd: int, name: str) -> str:
    h = xxhash.xxh3_128()
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        while chunk := os.read(fd, CHUNK):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def _hash_xattrs(fd: int, name: str | None) -> str:
    """Of the entry name in the directory fd, or of that directory itself (name None)."""
    # xattr calls take a path or a descriptor; /proc/self/fd keeps a path relative to the
    # open directory, and its last component is not followed (the /proc link itself would be)
    target: int | str = fd if name is None else f"/proc/self/fd/{fd}/{name}"
    try:
        names = sorted(os.listxattr(target, follow_symlinks=False) if name else os.listxattr(target))
    except OSError:
        return ""
    if not names:
        return ""
    h = xxhash.xxh3_64()
    for key in names:
        h.update(key.encode() + b"\0")
        h.update((os.getxattr(target, key, follow_symlinks=False) if name else os.getxattr(target, key)) + b"\0")
    return h.hexdigest()


def encode(entries: Iterator[Entry] | list[Entry]) -> bytes:
    lines = [json.dumps({"inventory": VERSION})]
    lines += [json.dumps([e.path, e.kind, e.mode, e.uid, e.gid, e.size, e.mtime_ns, e.target, e.xattrs, e.content]) for e in entries]
    return zstandard.ZstdCompressor(level=3).compress(("\n".join(lines) + "\n").encode())


def decode(data: bytes) -> list[Entry]:
    """The recorded entries; ValueError when the file is not an inventory this code wrote."""
    text = zstandard.ZstdDecompressor().decompressobj().decompress(data).decode()
    lines = text.splitlines()
    header = json.loads(lines[0]) if lines else None
    version = header.get("inventory") if isinstance(header, dict) else None
    if version not in (1, VERSION):
        raise ValueError("not an inventory of a known version")
    entries = [Entry(*json.loads(line)) for line in lines[1:]]
    if version == 1:
        entries = [dataclasses.replace(e, xattrs=UNKNOWN) if e.kind == "dir" else e for e in entries]
    return entries


def write(path: Path, layer_dir: Path) -> None:
    """Record layer_dir's inventory at path, durably, before the layer becomes visible."""
    data = encode(list(scan(layer_dir)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        crashpoints.point("inventory.written")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def compare(recorded: list[Entry], layer_dir: Path) -> list[str]:
    """What differs between the inventory and the directory now: one line a path."""
    on_disk = {e.path: e for e in scan(layer_dir)}
    problems: list[str] = []
    for entry in recorded:
        now = on_disk.pop(entry.path, None)
        if now is None:
            problems.append(f"{entry.path}: missing")
            continue
        if entry.xattrs == UNKNOWN:
            now = dataclasses.replace(now, xattrs=UNKNOWN)
        if now != entry:
            problems.append(f"{entry.path}: {entry.describe_difference(now)}")
    problems.extend(f"{path}: not in the inventory" for path in sorted(on_disk))
    return problems
