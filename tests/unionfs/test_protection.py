"""How immutable and append-only are read and recorded (no mount): the
``overlay.protattr`` values overlayfs writes, the file attributes lsattr and
chattr pass, and the inode's own flags as statx reports them."""
from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

import pytest

from unionfs import protection, syscalls
from unionfs.layer import Layer
from unionfs.protection import APPEND, BOTH, IMMUTABLE, Protections
from unionfs.resolve import Node, Resolver

XFLAG_IMMUTABLE, XFLAG_APPEND, XFLAG_NOATIME = 0x8, 0x10, 0x40


@pytest.mark.parametrize(("bits", "value"), [(0, b""), (APPEND, b"a"), (IMMUTABLE, b"i"), (BOTH, b"ai")])
def test_the_record_is_overlayfs_s(bits: int, value: bytes) -> None:
    assert protection.encode(bits) == value
    assert protection.decode(value) == bits


def test_a_record_with_a_letter_it_does_not_know_counts_for_nothing() -> None:
    """As ovl_check_protattr: an incompatible record is ignored whole, not in part."""
    assert protection.decode(b"ia") == BOTH
    assert protection.decode(b"ix") == 0
    assert protection.decode(None) == 0


def test_flags_and_xflags_split_into_record_and_inode() -> None:
    flags = (IMMUTABLE | syscalls.FS_NOATIME_FL).to_bytes(4, "little")
    bits, rest = protection.split(syscalls.FS_IOC_SETFLAGS, flags)
    assert (bits, int.from_bytes(rest, "little")) == (IMMUTABLE, syscalls.FS_NOATIME_FL)
    fsx = struct.pack("<IIIII8x", XFLAG_APPEND | XFLAG_NOATIME, 4096, 0, 7, 0)
    bits, rest = protection.split(syscalls.FS_IOC_FSSETXATTR, fsx)
    assert bits == APPEND
    assert struct.unpack("<IIIII8x", rest) == (XFLAG_NOATIME, 4096, 0, 7, 0)  # the other fields as they were


def test_an_upper_entry_shows_its_record_with_its_inode_s_flags() -> None:
    flags = syscalls.FS_NOATIME_FL.to_bytes(4, "little")
    assert protection.with_protection(syscalls.FS_IOC_GETFLAGS, flags, APPEND) == (
        (APPEND | syscalls.FS_NOATIME_FL).to_bytes(4, "little"))
    fsx = struct.pack("<IIIII8x", XFLAG_NOATIME, 0, 3, 0, 0)
    shown = protection.with_protection(syscalls.FS_IOC_FSGETXATTR, fsx, BOTH)
    assert struct.unpack("<IIIII8x", shown) == (XFLAG_NOATIME | XFLAG_IMMUTABLE | XFLAG_APPEND, 0, 3, 0, 0)


def _set_flags(path: Path, flags: int) -> None:
    """Immutable and append-only as flags says; the inode's other flags as they are."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        had = syscalls.inode_flags(fd)
        assert had is not None
        fcntl.ioctl(fd, syscalls.FS_IOC_SETFLAGS, struct.pack("<q", had & ~BOTH | flags))
    finally:
        os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="chattr +i and +a need CAP_LINUX_IMMUTABLE")
def test_a_lower_entry_s_protection_is_its_inode_s_and_an_upper_one_s_its_record(tmp_path: Path) -> None:
    upper, lower = tmp_path / "upper", tmp_path / "lower"
    for d in (upper, lower):
        d.mkdir()
        (d / "f").write_bytes(b"f")
        (d / "d").mkdir()
    layers = [Layer(str(upper), 0, lower=False), Layer(str(lower), 1, lower=True)]
    protections = Protections(layers, Resolver(layers, True), "trusted.overlay.protattr")
    try:
        _set_flags(lower / "f", APPEND)
        _set_flags(lower / "d", IMMUTABLE)
        _set_flags(upper / "f", APPEND)  # the host refuses changes to it by itself: not counted
        assert protections.of(Node("/f", False, ((1, "f"),))) == APPEND
        assert protections.of(Node("/d", True, ((1, "d"),))) == IMMUTABLE
        assert protections.of(Node("/f", False, ((0, "f"),))) == 0
        protections.record(layers[0], "d", BOTH, 0)
        assert os.getxattr(upper / "d", "trusted.overlay.protattr") == b"ai"
        assert protections.of(Node("/d", True, ((0, "d"), (1, "d")))) == BOTH
        fd = os.open(upper / "d", os.O_RDONLY)
        try:
            assert protections.of_fd(fd) == BOTH
        finally:
            os.close(fd)
        protections.record(layers[0], "d", 0, BOTH)
        with pytest.raises(OSError) as exc:
            os.getxattr(upper / "d", "trusted.overlay.protattr")
        assert exc.value.errno == errno.ENODATA
        protections.record(layers[0], "d", 0, BOTH)  # removing what is gone already: nothing to do
        with pytest.raises(OSError) as refused:
            protections.refuse(Node("/f", False, ((1, "f"),)), "/f", BOTH)
        assert refused.value.errno == errno.EPERM
    finally:
        for path in (lower / "f", lower / "d", upper / "f"):
            _set_flags(path, 0)
        for layer in layers:
            layer.close()
