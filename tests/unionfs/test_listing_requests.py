"""READDIRPLUS answers, driven through the request handlers without a mount:
which entries carry attributes and node ids for the kernel to keep."""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from requestkit import header, lookup, requests_over

from unionfs import fuseproto as fp
from unionfs import handlers
from unionfs.handlers import Requests, Timeouts
from unionfs.nodes import ROOT_ID


def listing(requests: Requests, nodeid: int) -> dict[str, int]:
    """One open of the directory, read to its end: {name: node id given with it (0: a plain entry)}."""
    fh = fp.OPEN_OUT.unpack_from(requests.opendir(header(fp.OPENDIR, nodeid), memoryview(b"")))[0]
    given: dict[str, int] = {}
    offset = 0
    while True:
        out = requests.readdirplus(header(fp.READDIRPLUS, nodeid), memoryview(fp.READ_IN.pack(fh, offset, 4096, 0)))
        if not out:
            break
        pos = 0
        while pos < len(out):
            entry_id = fp.ENTRY_OUT.unpack_from(out, pos)[0]
            pos += fp.ENTRY_OUT.size + fp.ATTR.size
            _, offset, namelen, _ = fp.DIRENT.unpack_from(out, pos)
            name = out[pos + fp.DIRENT.size:pos + fp.DIRENT.size + namelen].decode()
            pos += fp.dirent_size(name.encode(), False)
            if name not in (".", ".."):
                given[name] = entry_id
    requests.releasedir(header(fp.RELEASEDIR, nodeid), memoryview(fp.RELEASE_IN.pack(fh, 0, 0, 0)))
    return given


@pytest.fixture
def requests(tmp_path: Path) -> Iterator[Requests]:
    # more than one READDIRPLUS answer of 4 KiB holds
    with requests_over(tmp_path, {f"d/file{i:02d}": str(i).encode() for i in range(60)}) as made:
        yield made


def test_entries_described_a_moment_ago_go_plain_until_something_changes(requests: Requests) -> None:
    d = lookup(requests, ROOT_ID, "d")
    first = listing(requests, d)
    assert len(first) == 60 and all(first.values()), "a first listing gives every entry's attributes"
    again = listing(requests, d)  # what ``rm -rf`` does: the kernel asks again from the start
    assert set(again) == set(first) and not any(again.values())

    requests.nodes.forget(first["file07"], 1)  # the kernel dropped one of them
    again = listing(requests, d)
    assert [name for name, nodeid in again.items() if nodeid] == ["file07"]

    requests.unlink(header(fp.UNLINK, d), memoryview(b"file00\0"))  # a change: every entry is given again
    after = listing(requests, d)
    assert "file00" not in after and len(after) == 59 and all(after.values())


def readdirplus(requests: Requests, nodeid: int, offset: int) -> bytes:
    """One READDIRPLUS of a fresh open, from offset."""
    fh = fp.OPEN_OUT.unpack_from(requests.opendir(header(fp.OPENDIR, nodeid), memoryview(b"")))[0]
    out = requests.readdirplus(header(fp.READDIRPLUS, nodeid), memoryview(fp.READ_IN.pack(fh, offset, 4096, 0)))
    requests.releasedir(header(fp.RELEASEDIR, nodeid), memoryview(fp.RELEASE_IN.pack(fh, 0, 0, 0)))
    return out


def test_only_entries_given_from_the_start_on_count_as_described(requests: Requests) -> None:
    """Entries given from the start of the listing up to where a READDIRPLUS
    stopped count as given; one read from further on leaves a gap that is
    given again."""
    d = lookup(requests, ROOT_ID, "d")
    assert readdirplus(requests, d, 0)  # the first 4 KiB: about 20 entries
    assert readdirplus(requests, d, 1 << 62)  # cookies are hashes: some entries sort after 2**62
    given = listing(requests, d)
    plain = sorted(name for name, nodeid in given.items() if not nodeid)
    assert 10 < len(plain) < 30, plain
    assert len(given) - len(plain) > 30


def test_described_entries_expire_with_half_the_attribute_timeout(requests: Requests) -> None:
    quick = Requests(requests.union, Timeouts(attr=0.0))
    d = lookup(quick, ROOT_ID, "d")
    assert all(listing(quick, d).values())
    assert all(listing(quick, d).values()), "attributes the kernel no longer trusts are given again"

    short = Requests(requests.union, Timeouts(attr=0.2))
    d = lookup(short, ROOT_ID, "d")
    assert all(listing(short, d).values())
    time.sleep(0.15)
    assert all(listing(short, d).values())  # given again, and from now on described anew
    assert not any(listing(short, d).values())


def test_a_second_pass_reads_the_layers_again_only_after_a_change(requests: Requests, monkeypatch) -> None:
    """``rm -rf`` opens each directory twice before it removes anything: the second
    open gets the listing of the first, the layers are read again after a change."""
    passes: list[str] = []
    listed = requests.union.listed

    def counted(path: str):  # type: ignore[no-untyped-def]
        passes.append(path)
        return listed(path)

    monkeypatch.setattr(requests.union, "listed", counted)
    d = lookup(requests, ROOT_ID, "d")
    first = listing(requests, d)
    again = listing(requests, d)
    assert passes == ["/d"] and set(again) == set(first)

    requests.unlink(header(fp.UNLINK, d), memoryview(b"file00\0"))
    after = listing(requests, d)
    assert passes == ["/d", "/d"] and set(after) == set(first) - {"file00"}

    requests.union.create("/d/new", 0o644, os.O_WRONLY)  # a change made by any request counts, not only this directory's
    assert "new" in listing(requests, d) and len(passes) == 3


def test_only_the_last_few_listings_are_kept(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A listing of a large directory is large: the driver keeps the last few, for
    the second pass that follows the first, not one per directory ever listed."""
    with requests_over(tmp_path, {f"d{i:02d}/f": b"" for i in range(40)}) as requests:
        dirs = [lookup(requests, ROOT_ID, f"d{i:02d}") for i in range(40)]
        for d in dirs:
            listing(requests, d)
        kept = set(requests._listings)
    assert 0 < len(kept) < 40 and dirs[-1] in kept and dirs[0] not in kept, kept


def test_the_oldest_described_directory_goes_first(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Directories described are kept up to a bound: past it the one described
    longest ago goes, and the others stay described."""
    monkeypatch.setattr(handlers, "_DESCRIBED_DIRS", 3)
    with requests_over(tmp_path, {f"d{i}/f": b"" for i in range(5)}) as requests:
        dirs = [lookup(requests, ROOT_ID, f"d{i}") for i in range(5)]
        for d in dirs[:4]:
            assert all(listing(requests, d).values())
        assert [not any(listing(requests, d).values()) for d in dirs[1:4]] == [True, True, True]
        assert all(listing(requests, dirs[0]).values()), "the oldest went when the fourth came"
        assert all(listing(requests, dirs[4]).values())
        assert sorted(requests._described) == sorted([dirs[0], dirs[3], dirs[4]])
