"""Immutable and append-only entries (``chattr +i``, ``+a``), kept as overlayfs keeps them.

overlayfs takes an entry's protection from its real inode and, for an upper
entry, from the ``overlay.protattr`` xattr ("a", "i"): a copy-up, and chattr
through the mount, record it there and keep it off the real inode, where an
immutable directory could take no copied-up child and an immutable file no
private xattr (ovl_set_protattr, ovl_copy_fileattr). The VFS then refuses to
change such an inode (EPERM). Over FUSE the kernel never learns these flags,
so the driver refuses the same changes itself: ``Union`` says which, per
operation; how protection is read and written is here.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Callable

from unionfs import syscalls
from unionfs.layer import Layer
from unionfs.resolve import Node, Resolver

IMMUTABLE = 0x10  # FS_IMMUTABLE_FL, and STATX_ATTR_IMMUTABLE
APPEND = 0x20  # FS_APPEND_FL, and STATX_ATTR_APPEND
BOTH = IMMUTABLE | APPEND
_XFLAGS = ((IMMUTABLE, 0x8), (APPEND, 0x10))  # FS_XFLAG_IMMUTABLE, FS_XFLAG_APPEND (struct fsxattr)
_LETTERS = ((APPEND, b"a"), (IMMUTABLE, b"i"))  # the order overlayfs writes them in


def encode(bits: int) -> bytes:
    return b"".join(letter for bit, letter in _LETTERS if bits & bit)


def decode(value: bytes | None) -> int:
    """The protection an ``overlay.protattr`` value records; a value with any other
    letter counts for nothing, as overlayfs ignores it (ovl_check_protattr)."""
    bits = 0
    for letter in value or b"":
        found = next((bit for bit, known in _LETTERS if known[0] == letter), None)
        if found is None:
            return 0
        bits |= found
    return bits


def _xflags(bits: int) -> int:
    return sum(xflag for bit, xflag in _XFLAGS if bits & bit)


def with_protection(cmd: int, value: bytes, bits: int) -> bytes:
    """A real inode's file attributes (FS_IOC_GETFLAGS's int, FS_IOC_FSGETXATTR's
    struct fsxattr, whose first field is fsx_xflags) with bits added, as
    overlayfs shows an upper entry's (ovl_fileattr_prot_flags)."""
    field = int.from_bytes(value[:4], "little")
    field |= bits if cmd == syscalls.FS_IOC_GETFLAGS else _xflags(bits)
    return field.to_bytes(4, "little") + value[4:]


def split(cmd: int, value: bytes) -> tuple[int, bytes]:
    """(the protection that FS_IOC_SETFLAGS's or FS_IOC_FSSETXATTR's value asks for,
    the value without it): the part recorded in the xattr, the part for the real inode."""
    field = int.from_bytes(value[:4], "little")
    if cmd == syscalls.FS_IOC_SETFLAGS:
        bits, field = field & BOTH, field & ~BOTH
    else:
        bits = sum(bit for bit, xflag in _XFLAGS if field & xflag)
        field &= ~_xflags(BOTH)
    return bits, field.to_bytes(4, "little") + value[4:]


class Protections:
    """The protection of merged entries: an upper entry's from its xattr (the host
    enforces the real inode's own flags on it), a lower entry's from its inode."""

    def __init__(self, layers: list[Layer], resolver: Resolver, xattr: str) -> None:
        self.layers = layers
        self.resolver = resolver
        self.xattr = xattr

    def of(self, node: Node) -> int:
        """node's protection, kept with the resolver's node (a directory's is asked
        at every removal in it)."""
        return self.resolver.protection(node, self.read)

    def read(self, node: Node) -> int:
        """node's protection as its layer has it now (an entry about to go is asked once)."""
        layer = self.layers[node.layer]
        if self.resolver.is_upper(node.layer):
            return decode(layer.getxattr(node.rel or ".", self.xattr))
        return syscalls.statx_attributes(layer.fd, node.rel) & BOTH

    def of_fd(self, fd: int) -> int:
        """The protection of a file open in the upper layer."""
        try:
            return decode(os.getxattr(fd, self.xattr))
        except OSError as exc:
            if exc.errno in (errno.ENODATA, errno.EOPNOTSUPP):
                return 0
            raise

    def refuse(self, node: Node, path: str, bits: int) -> None:
        """EPERM if node has any protection of bits, as the VFS answers."""
        if self.of(node) & bits:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM), path)

    def refuse_removal(self, parent: Node, node: Node, path: str) -> None:
        """EPERM if node may not leave parent: either is immutable or append-only (may_delete)."""
        if self.of(parent) or self.read(node):
            raise OSError(errno.EPERM, os.strerror(errno.EPERM), path)

    def record(self, layer: Layer, rel: str, bits: int, had: int) -> None:
        """Write bits as rel's protection (none: remove the record it had). An upper
        layer without xattrs cannot hold it: EPERM, as overlayfs answers then. What
        was kept goes once the record is written: an answer read before stays unkept."""
        self._record(lambda value: layer.setxattr(rel, self.xattr, value),
                     lambda: layer.removexattr(rel, self.xattr), bits, had, rel)

    def record_fd(self, fd: int, bits: int, had: int) -> None:
        """record, on a file open in the upper layer (one whose names are gone)."""
        self._record(lambda value: os.setxattr(fd, self.xattr, value),
                     lambda: os.removexattr(fd, self.xattr), bits, had, f"fd {fd}")

    def _record(self, write: Callable[[bytes], None], remove: Callable[[], None], bits: int, had: int,
                where: str) -> None:
        try:
            if bits:
                write(encode(bits))
            elif had:
                remove()
        except OSError as exc:
            if exc.errno == errno.EOPNOTSUPP:
                raise OSError(errno.EPERM, "the upper layer cannot record immutable or append-only (no xattrs)",
                              where) from None
            if exc.errno != errno.ENODATA:
                raise
        finally:
            self.resolver.forget_protections()
