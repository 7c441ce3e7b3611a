"""POSIX access ACLs, enforced by the driver where the kernel does not.

Why this exists: the mount uses ``default_permissions``, so the kernel checks
every access before a request reaches the driver, but a FUSE kernel consults
ACLs only when the filesystem negotiated ``FUSE_POSIX_ACL`` (protocol 7.26) in
its INIT reply. libfuse 2 cannot send that flag: its ``do_init`` (2.9.x,
``lib/fuse_lowlevel.c``) answers protocol 7.19 and builds the reply's flags
from a fixed list of ``FUSE_CAP_*`` bits (async read, POSIX and flock locks,
atomic O_TRUNC, export support, big writes, DONT_MASK, splice, and a few
more in later 2.9 releases); it never copies ``conn->want`` through, so there
is no bit a filesystem could set to ask for ACLs. The kernel offers the flag
(a ``-d`` log shows it in the INIT request) and the library drops it. So the
kernel checks the mode bits alone, and a user whom a ``user:NAME:---`` entry
shuts out but the "other" bits let in could read the file.

What is enforced here, on top of the kernel's mode check: the full access-ACL
algorithm of the kernel (``acl_permission_check`` and
``posix_acl_permission``: owner, named users, owning and named groups
limited by the mask, other; CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH as in
``generic_permission``), against the caller's fsuid and fsgid from the
request and its supplementary groups and capabilities from
``/proc/<pid>/status``, for every request that always reaches the driver:
open (read, write, truncate, exec), opendir, readlink, create/mkdir/mknod/
symlink/link/unlink/rmdir/rename (write and search on the parent), truncate,
chmod/chown/utimens, user.* xattrs, and search permission on every directory
above the path of each of these. The result is the kernel's mode check AND
the ACL: exactly the kernel's answer whenever the ACL is at most as
permissive as the mode bits.

What remains, and why it cannot be closed over libfuse 2:

- An ACL *more* permissive than the mode bits for some user (``user:bob:rw-``
  on a file whose "other" bits are ``---``) is not honoured: the kernel
  refuses from the mode bits before the driver is asked.
- Callers with fsuid 0 are not checked here at all: with
  CAP_DAC_OVERRIDE the kernel would let them through whatever the ACL says,
  and skipping the check spares every root request a stat per directory of
  its path. A root process that dropped CAP_DAC_OVERRIDE is held to the mode
  bits only.
- Requests the kernel answers from its own caches never reach the driver:
  ``stat``, ``access(2)`` (not sent under ``default_permissions``) and
  ``chdir`` of a name below a directory whose ACL denies search follow the
  mode bits alone.
"""
from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unionfs.union import Union

ACCESS_ACL = "system.posix_acl_access"
MAY_EXEC, MAY_WRITE, MAY_READ = 1, 2, 4
FMODE_EXEC = 0x20  # in the open flags of execve(2) and uselib(2), as the kernel passes them on

_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID = 1, 2, 3, 4
_ENTRY = struct.Struct("<HHI")


class AclFormatError(ValueError):
    """An xattr value that is not a POSIX ACL in the kernel's format."""


@dataclass(frozen=True, slots=True)
class Acl:
    """The entries of an access ACL that decide for users other than the owner."""

    users: tuple[tuple[int, int], ...]
    group_obj: int
    groups: tuple[tuple[int, int], ...]
    mask: int | None
    other: int


def parse_acl(value: bytes) -> Acl:
    """``system.posix_acl_access`` as the kernel stores it: a version, then (tag, perm, id) entries."""
    if len(value) < 4 or (len(value) - 4) % _ENTRY.size or struct.unpack_from("<I", value)[0] != _ACL_VERSION:
        raise AclFormatError("not a version 2 POSIX ACL")
    users: list[tuple[int, int]] = []
    groups: list[tuple[int, int]] = []
    group_obj = other = -1
    mask: int | None = None
    for tag, perm, ident in _ENTRY.iter_unpack(value[4:]):
        perm &= 7
        if tag == _USER:
            users.append((ident, perm))
        elif tag == _GROUP:
            groups.append((ident, perm))
        elif tag == _GROUP_OBJ:
            group_obj = perm
        elif tag == _MASK:
            mask = perm
        elif tag == _OTHER:
            other = perm
        elif tag != _USER_OBJ:
            raise AclFormatError(f"unknown ACL tag {tag:#x}")
    if group_obj < 0 or other < 0 or ((users or groups) and mask is None):
        raise AclFormatError("ACL without its required entries")
    return Acl(tuple(users), group_obj, tuple(groups), mask, other)


@dataclass(slots=True)
class Requester:
    """Who sent a request: fsuid and fsgid from the request, the rest read when first needed."""

    uid: int
    gid: int
    pid: int
    _groups: frozenset[int] | None = field(default=None, repr=False)
    _caps: int | None = field(default=None, repr=False)

    def _load(self) -> None:
        groups: frozenset[int] = frozenset()
        caps = 0
        try:
            if self.pid <= 0:
                raise ProcessLookupError(self.pid)
            with open(f"/proc/{self.pid}/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    if key == "Groups":
                        groups = frozenset(int(g) for g in rest.split())
                    elif key == "CapEff":
                        caps = int(rest.strip(), 16)
            if caps and os.stat(f"/proc/{self.pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino:
                caps = 0  # capabilities of another user namespace are not honoured here
        except (OSError, ValueError):
            # The caller is gone, or is in a PID namespace we cannot see into:
            # decide with no supplementary groups and no capabilities.
            groups, caps = frozenset(), 0
        self._groups, self._caps = groups, caps

    def in_group(self, gid: int) -> bool:
        if gid == self.gid:
            return True
        if self._groups is None:
            self._load()
        assert self._groups is not None
        return gid in self._groups

    def capable(self, cap: int) -> bool:
        if self._caps is None:
            self._load()
        assert self._caps is not None
        return bool(self._caps >> cap & 1)


def acl_allows(acl: Acl, st: os.stat_result, who: Requester, want: int) -> bool:
    """The kernel's posix_acl_permission for a caller that does not own the entry."""
    mask = 7 if acl.mask is None else acl.mask
    for uid, perm in acl.users:
        if uid == who.uid:
            return perm & mask & want == want
    found = False
    for gid, perm in ((st.st_gid, acl.group_obj), *acl.groups):
        if who.in_group(gid):
            if perm & mask & want == want:
                return True
            found = True
    if found:
        return False
    return acl.other & want == want


def capability_overrides(st: os.stat_result, who: Requester, want: int) -> bool:
    """generic_permission's capability rules, applied after the ACL said no."""
    if stat.S_ISDIR(st.st_mode):
        if not want & MAY_WRITE and who.capable(CAP_DAC_READ_SEARCH):
            return True
        return who.capable(CAP_DAC_OVERRIDE)
    if want == MAY_READ and who.capable(CAP_DAC_READ_SEARCH):
        return True
    if not want & MAY_EXEC or st.st_mode & 0o111:
        return who.capable(CAP_DAC_OVERRIDE)
    return False


def open_want(flags: int) -> int:
    """The access an open asks for, as the kernel's may_open counts it."""
    if flags & FMODE_EXEC:
        return MAY_EXEC
    want = (MAY_READ, MAY_WRITE, MAY_READ | MAY_WRITE, MAY_READ | MAY_WRITE)[flags & os.O_ACCMODE]
    if flags & os.O_TRUNC:
        want |= MAY_WRITE
    return want


def _ancestors(path: str) -> list[str]:
    """'/a/b/c' -> ['/', '/a', '/a/b']."""
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[:i]) for i in range(len(parts))]


class AccessControl:
    """The ACL checks of one union; every method raises EACCES (or EPERM) or returns."""

    def __init__(self, union: Union, enabled: bool = True) -> None:
        """enabled: False for a mount whose ACLs the mode bits overrule (noacl)."""
        self.union = union
        self.enabled = enabled
        try:
            with open("/proc/sys/fs/protected_hardlinks", encoding="ascii") as f:
                self.protected_hardlinks = f.read().strip() == "1"
        except OSError:
            self.protected_hardlinks = False

    def _lookup(self, path: str) -> tuple[os.stat_result, int, str] | None:
        node = self.union.resolver.resolve(path)
        if node is None:
            return None
        index, rel = node.attr_source
        st = self.union.layers[index].lstat(rel)
        return None if st is None else (st, index, rel)

    def allowed(self, who: Requester, path: str, want: int) -> bool:
        """Whether the entry's access ACL grants want (entries without one: True)."""
        if who.uid == 0 or not self.enabled:
            return True  # root: taken to hold CAP_DAC_OVERRIDE (see the module's docstring)
        found = self._lookup(path)
        if found is None:
            return True  # the operation itself answers ENOENT
        st, index, rel = found
        # The owner class and entries without group bits go by the mode
        # alone in the kernel too (acl_permission_check), and symlinks have no ACL.
        if who.uid == st.st_uid or not st.st_mode & 0o070 or stat.S_ISLNK(st.st_mode):
            return True
        value = self.union.layers[index].getxattr(rel, ACCESS_ACL)
        if value is None:
            return True
        try:
            acl = parse_acl(value)
        except AclFormatError:
            raise OSError(errno.EIO, "unreadable access ACL", path) from None
        return acl_allows(acl, st, who, want) or capability_overrides(st, who, want)

    def entry(self, who: Requester, path: str, want: int) -> None:
        if want and not self.allowed(who, path, want):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)

    def walk(self, who: Requester, path: str, parent_want: int = MAY_EXEC) -> None:
        """Search permission on every directory above path; parent_want on its parent."""
        dirs = _ancestors(path)
        for position, directory in enumerate(dirs):
            self.entry(who, directory, parent_want if position == len(dirs) - 1 else MAY_EXEC)

    def open(self, who: Requester, path: str, flags: int) -> None:
        self.walk(who, path)
        self.entry(who, path, open_want(flags))

    def in_dir(self, who: Requester, path: str) -> None:
        """Creating or removing path: write and search permission on its directory."""
        self.walk(who, path, MAY_WRITE | MAY_EXEC)

    def rename(self, who: Requester, old: str, new: str) -> None:
        self.in_dir(who, old)
        self.in_dir(who, new)
        found = self._lookup(old)
        if found is not None and stat.S_ISDIR(found[0].st_mode) and old.rpartition("/")[0] != new.rpartition("/")[0]:
            self.entry(who, old, MAY_WRITE)  # its ".." changes (vfs_rename)

    def link(self, who: Requester, existing: str, new: str) -> None:
        self.walk(who, existing)
        self.in_dir(who, new)
        if not self.protected_hardlinks:
            return
        # may_linkat: a file one does not own may only be linked if one may read and
        # write it (and it is a plain file without set-id bits: the kernel saw to that).
        if not self.allowed(who, existing, MAY_READ | MAY_WRITE) and not who.capable(CAP_FOWNER):
            raise OSError(errno.EPERM, os.strerror(errno.EPERM), existing)

    def touch(self, who: Requester, path: str) -> None:
        """utimes to "now" by a non-owner needs write permission (may_setattr)."""
        self.walk(who, path)
        if not self.allowed(who, path, MAY_WRITE) and not who.capable(CAP_FOWNER):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)

    def xattr(self, who: Requester, path: str, name: str, want: int) -> None:
        """user.* xattrs need read or write permission on the entry; other namespaces the kernel rules."""
        self.walk(who, path)
        if name.startswith("user."):
            self.entry(who, path, want)
