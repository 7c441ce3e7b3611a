"""The ACL rules of unionfs.permissions on ACLs that the kernel itself encoded (no FUSE)."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from unionfs.permissions import (
    FMODE_EXEC,
    MAY_EXEC,
    MAY_READ,
    MAY_WRITE,
    AclFormatError,
    Requester,
    acl_allows,
    open_want,
    parse_acl,
)

_ANY = 0xFFFFFFFF


def encoded(*entries: tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


@pytest.fixture
def acl_file(tmp_path: Path) -> Path:
    """A file whose ACL the filesystem accepted and hands back in its own encoding."""
    path = tmp_path / "f"
    path.write_text("x")
    try:
        os.setxattr(path, "system.posix_acl_access", encoded(
            (0x01, 6, _ANY), (0x02, 0, 1000), (0x02, 6, 1001), (0x04, 4, _ANY), (0x08, 0, 2000), (0x10, 6, _ANY), (0x20, 4, _ANY)))
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs here: {exc}")
    return path


def test_parse_and_decide_like_the_kernel(acl_file: Path) -> None:
    acl = parse_acl(os.getxattr(acl_file, "system.posix_acl_access"))
    st = os.stat(acl_file)
    assert acl.users == ((1000, 0), (1001, 6)) and acl.groups == ((2000, 0),) and acl.mask == 6
    assert not acl_allows(acl, st, Requester(1000, 1000, 0, frozenset()), MAY_READ)  # named user ---
    assert acl_allows(acl, st, Requester(1001, 1001, 0, frozenset()), MAY_READ | MAY_WRITE)
    assert not acl_allows(acl, st, Requester(1002, 1002, 0, frozenset({2000})), MAY_READ)  # named group ---
    assert acl_allows(acl, st, Requester(1002, 1002, 0, frozenset({3000})), MAY_READ)  # other r--
    assert not acl_allows(acl, st, Requester(1002, 1002, 0, frozenset({3000})), MAY_WRITE)
    assert not acl_allows(acl, st, Requester(1002, 0, 0, frozenset()), MAY_WRITE)  # group::r-- in the owning group


@pytest.mark.parametrize("value", [b"", b"\x02\x00\x00\x00\x01", encoded((0x01, 6, _ANY)), b"\x01\x00\x00\x00",
                                   encoded((0x01, 6, _ANY), (0x02, 0, 5), (0x04, 4, _ANY), (0x20, 4, _ANY))])
def test_malformed_acls_are_refused(value: bytes) -> None:
    with pytest.raises(AclFormatError):
        parse_acl(value)


def test_open_wants() -> None:
    assert open_want(os.O_RDONLY) == MAY_READ
    assert open_want(os.O_WRONLY | os.O_APPEND) == MAY_WRITE
    assert open_want(os.O_RDONLY | os.O_TRUNC) == MAY_READ | MAY_WRITE
    assert open_want(os.O_RDONLY | FMODE_EXEC | os.O_LARGEFILE) == MAY_EXEC


def test_requester_reads_groups_and_capabilities_of_the_process() -> None:
    me = Requester(os.getuid(), os.getgid(), os.getpid())
    extra = set(os.getgroups()) - {os.getgid()}
    assert all(me.in_group(g) for g in extra)
    assert me.capable(1) == (os.geteuid() == 0)  # CAP_DAC_OVERRIDE: root's, in this namespace
    gone = Requester(1000, 1000, 0)
    assert not gone.in_group(0) and not gone.capable(1)
