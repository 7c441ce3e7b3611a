"""Requests on a node whose names are all gone, driven through the handlers
without a mount. With the writeback cache the kernel writes back the times
of each file it unlinks at once: a SETATTR of mtime and ctime, once per file
that ``rm -rf`` removes, whose error it keeps for the next ``syncfs``."""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from requestkit import header, lookup, requests_over

from unionfs import fuseproto as fp
from unionfs.handlers import Requests
from unionfs.nodes import ROOT_ID

WRITTEN_BACK = 1_700_000_000  # the mtime the kernel kept, in seconds


@pytest.fixture
def requests(tmp_path: Path) -> Iterator[Requests]:
    with requests_over(tmp_path, {"f": b"lower data"}) as made:
        (tmp_path / "upper" / "u").write_bytes(b"upper data")  # as if made through the mount
        yield made


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def unlink(requests: Requests, name: str) -> None:
    requests.unlink(header(fp.UNLINK, ROOT_ID), memoryview(name.encode() + b"\0"))


def open_file(requests: Requests, nodeid: int, flags: int) -> int:
    return fp.OPEN_OUT.unpack_from(requests.open(header(fp.OPEN, nodeid), memoryview(fp.OPEN_IN.pack(flags, 0))))[0]


def setattr(requests: Requests, nodeid: int, valid: int, fh: int = 0, mode: int = 0) -> tuple:
    """A SETATTR as the kernel sends it; the fuse_attr of the answer."""
    body = fp.SETATTR_IN.pack(valid, 0, fh, 0, 0, 0, WRITTEN_BACK, WRITTEN_BACK, 0, 0, 0, mode, 0, 0, 0, 0)
    return fp.ATTR.unpack_from(requests.setattr(header(fp.SETATTR, nodeid), memoryview(body)), fp.ATTR_OUT.size)


def getattr_(requests: Requests, nodeid: int) -> tuple:
    out = requests.getattr(header(fp.GETATTR, nodeid), memoryview(fp.GETATTR_IN.pack(0, 0, 0)))
    return fp.ATTR.unpack_from(out, fp.ATTR_OUT.size)


TIMES = fp.FATTR_MTIME | fp.FATTR_CTIME  # what fuse_flush_times sends


def test_times_of_a_removed_upper_file_nobody_has_open_are_taken_without_a_path(
        requests: Requests, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing of the file is left to set them on or to answer from, and the kernel keeps an
    error of this request against the whole mount, for the next syncfs(2) to report
    (tests/integration/test_nameless_files): taken, the answer a regular file without a
    name and with the times sent, valid for this request only."""
    nodeid = lookup(requests, ROOT_ID, "u")
    unlink(requests, "u")
    walks: list[int] = []
    path = requests.nodes.path
    monkeypatch.setattr(requests.nodes, "path", lambda n: walks.append(n) or path(n))
    reply = requests.setattr(header(fp.SETATTR, nodeid), memoryview(fp.SETATTR_IN.pack(
        TIMES, 0, 0, 0, 0, 0, WRITTEN_BACK, WRITTEN_BACK, 0, 0, 0, 0, 0, 0, 0, 0)))
    attr = fp.ATTR.unpack_from(reply, fp.ATTR_OUT.size)
    assert (attr[4], stat.S_IFMT(attr[9]), attr[10]) == (WRITTEN_BACK, stat.S_IFREG, 0)  # mtime, type, nlink
    assert fp.ATTR_OUT.unpack_from(reply)[:2] == (0, 0)
    assert walks == [], "a node known to have no name needs no walk to its path"


def test_times_of_a_file_another_process_unlinks_meanwhile_are_taken(requests: Requests) -> None:
    """The times are set by the file's path, and then the file is gone before the answer
    is made (its last name unlinked by another process, the kernel's FUSE code sending
    that UNLINK meanwhile): answered as above, not ESTALE."""
    nodeid = lookup(requests, ROOT_ID, "u")
    getattr_by_path = requests.union.getattr
    raced: list[str] = []

    def unlinked_first(path: str) -> dict[str, int]:
        if not raced:
            raced.append(path)
            unlink(requests, "u")
        return getattr_by_path(path)
    requests.union.getattr = unlinked_first  # type: ignore[method-assign]
    attr = setattr(requests, nodeid, TIMES)
    assert raced == ["/u"] and not os.path.lexists(os.path.join(requests.union.upper.root, "u"))
    assert (attr[4], stat.S_IFMT(attr[9]), attr[10]) == (WRITTEN_BACK, stat.S_IFREG, 0)
    with pytest.raises(OSError) as caught:  # a change beyond the times is not taken so
        setattr(requests, nodeid, fp.FATTR_MODE, mode=0o600)
    assert caught.value.errno == errno.ESTALE


def test_times_of_a_removed_lower_file_nobody_has_open_answer_from_the_lower_file(requests: Requests) -> None:
    """The lower file stays in its layer: its own attributes (its link count too, which
    overlayfs shows), with nothing opened for them, once per file that rm -rf removes."""
    nodeid = lookup(requests, ROOT_ID, "f")
    before = getattr_(requests, nodeid)
    fds = _open_fds()
    unlink(requests, "f")
    assert setattr(requests, nodeid, TIMES) == before
    assert _open_fds() == fds


def test_a_removed_file_still_open_answers_with_its_descriptors_attributes(requests: Requests) -> None:
    nodeid = lookup(requests, ROOT_ID, "f")
    before = getattr_(requests, nodeid)
    open_file(requests, nodeid, os.O_RDONLY)  # no FATTR_FH: the kernel passes only a writable one
    unlink(requests, "f")
    attr = setattr(requests, nodeid, TIMES)
    assert attr == before, "the lower file's attributes, by its descriptor; nothing written to it"


def test_times_written_back_through_a_writable_open_land_on_the_file(requests: Requests) -> None:
    nodeid = lookup(requests, ROOT_ID, "f")
    fh = open_file(requests, nodeid, os.O_RDWR)  # copied up
    unlink(requests, "f")
    attr = setattr(requests, nodeid, TIMES | fp.FATTR_FH, fh=fh)
    assert attr[4] == WRITTEN_BACK  # mtime, set through the fd
    assert attr[10] == 0  # nlink: the upper copy has no name left
    assert os.fstat(fh).st_mtime == WRITTEN_BACK


def test_a_mode_change_on_a_removed_lower_file_is_refused(requests: Requests) -> None:
    """A lower file open only for reading would need a copy-up, which has no name
    to go to: EEXIST, as overlayfs's attempt fails (tests/integration/test_nameless_files)."""
    nodeid = lookup(requests, ROOT_ID, "f")
    fh = open_file(requests, nodeid, os.O_RDONLY)
    unlink(requests, "f")
    with pytest.raises(OSError) as caught:
        setattr(requests, nodeid, fp.FATTR_MODE, mode=0o600)
    assert caught.value.errno == errno.EEXIST
    assert os.fstat(fh).st_mode & 0o777 != 0o600


@pytest.mark.parametrize(("name", "code"), [("u", errno.ESTALE), ("f", errno.EEXIST)])
def test_a_mode_change_on_a_removed_file_open_by_nothing(requests: Requests, name: str, code: int) -> None:
    """An upper file is gone (ESTALE); a lower one stays, and would need a copy-up to
    change, which overlayfs fails with EEXIST (a process may hold it by O_PATH)."""
    nodeid = lookup(requests, ROOT_ID, name)
    unlink(requests, name)
    with pytest.raises(OSError) as caught:
        setattr(requests, nodeid, fp.FATTR_MODE, mode=0o600)
    assert caught.value.errno == code


def test_a_mode_change_on_a_removed_file_open_in_the_upper_layer_lands_on_it(requests: Requests) -> None:
    """fchmod sends no descriptor: the driver finds the one the file is open by."""
    nodeid = lookup(requests, ROOT_ID, "f")
    fh = open_file(requests, nodeid, os.O_RDWR)  # copied up
    unlink(requests, "f")
    attr = setattr(requests, nodeid, fp.FATTR_MODE, mode=0o600)
    assert attr[9] & 0o7777 == 0o600  # mode
    assert os.fstat(fh).st_mode & 0o7777 == 0o600


def test_a_lower_file_renamed_over_is_kept_without_a_descriptor_until_asked_for(requests: Requests) -> None:
    """A rename over a lower file the kernel knows keeps it reachable for opens on their
    way to it (and O_PATH holders) by where it stays, as an unlink does: nothing is
    opened until a call needs it."""
    nodeid = lookup(requests, ROOT_ID, "f")
    before = getattr_(requests, nodeid)
    fds = _open_fds()
    requests.rename(header(fp.RENAME, ROOT_ID), memoryview(fp.RENAME_IN.pack(ROOT_ID) + b"u\0f\0"))
    assert _open_fds() == fds
    assert getattr_(requests, nodeid) == before
    fh = open_file(requests, nodeid, os.O_RDONLY)
    assert os.pread(fh, 20, 0) == b"lower data"
