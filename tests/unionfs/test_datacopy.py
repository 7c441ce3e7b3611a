"""A large copy-up streams through a bounded window of the page cache (unionfs.datacopy).

In-process copy-ups on the real filesystem, with the window's piece made
small so that a few MiB cover several pieces. What is in the page cache is
read with util-linux's ``fincore``, not with the driver's own ``cachestat``.

The kernel may reclaim a page of the file at any moment on its own (some
hosts page cold memory out proactively, as a DAMON ``pageout`` scheme does),
and a test that pages stay cached then fails with the driver having dropped
nothing; or, where a whole piece went before the copy began, the driver
rightly takes the piece for one the copy brings in, and drops it. Such a
test runs again in a fresh directory, up to three times: a driver that
drops what it should keep fails every run.
"""
from __future__ import annotations

import errno
import filecmp
import functools
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from extents import data_extents, write_sparse
from storecheck import small_fs

from unionfs import datacopy, syscalls
from unionfs.union import Union

MiB = 1 << 20
PIECE = 2 * MiB  # no smaller than the page cache's largest folio
# (offset, length) of the data in the lower file; the rest is holes
EXTENTS = [(0, 17 * MiB), (24 * MiB, 13 * MiB)]
SIZE = 40 * MiB  # ends in a hole


def _kernel_tells_what_is_cached() -> bool:
    fd = os.open(__file__, os.O_RDONLY)
    try:
        return syscalls.cached_pages(fd, 0, 1) is not None
    finally:
        os.close(fd)


# without cachestat (Linux 6.5) no source page is known to be the copy's own, and none is dropped
needs_cachestat = pytest.mark.skipif(not _kernel_tells_what_is_cached(), reason="needs cachestat(2), Linux 6.5")


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datacopy, "PIECE", PIECE)


def cached(path: Path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return int(out.strip())


def sparse_file(path: Path) -> None:
    """The lower file, written out and out of the page cache."""
    write_sparse(path, SIZE, EXTENTS, drop_cache=True)
    assert cached(path) == 0


RECLAIM_ATTEMPTS = 3


def despite_reclaim(test: Callable[[Path], None]) -> Callable[[Path], None]:
    """Run a test that pages stay cached until one run passes (see the module's doc)."""
    @functools.wraps(test)
    def run(tmp_path: Path) -> None:
        for attempt in range(1, RECLAIM_ATTEMPTS + 1):
            base = tmp_path / f"attempt-{attempt}"
            base.mkdir()
            try:
                return test(base)
            except AssertionError:
                if attempt == RECLAIM_ATTEMPTS:
                    raise
    return run


def union(base: Path, durable: bool = True) -> tuple[Union, Path, Path]:
    lower, upper, work = base / "lower", base / "upper", base / "work"
    for d in (lower, upper, work):
        d.mkdir(exist_ok=True)
    return Union([str(lower)], str(upper), str(work), durable=durable), lower, upper


@needs_cachestat
def test_a_durable_copy_leaves_a_few_pieces_cached_and_the_source_as_it_found_it(tmp_path: Path) -> None:
    u, lower, upper = union(tmp_path)
    sparse_file(lower / "big")
    u.chmod("/big", 0o600)
    copy = upper / "big"
    # written out behind the copy and dropped: at most the pieces still on their way
    assert cached(copy) <= (datacopy._BEHIND + 1) * PIECE
    assert cached(lower / "big") == 0  # the copy brought it in, the copy took it out
    assert data_extents(copy) == EXTENTS
    assert os.stat(copy).st_size == SIZE
    assert filecmp.cmp(copy, lower / "big", shallow=False)


@despite_reclaim
def test_a_source_that_was_cached_stays_cached(tmp_path: Path) -> None:
    u, lower, upper = union(tmp_path)
    sparse_file(lower / "big")
    (lower / "big").read_bytes()
    before = cached(lower / "big")
    assert before >= sum(length for _, length in EXTENTS)
    u.chmod("/big", 0o600)
    assert cached(lower / "big") == before
    assert filecmp.cmp(upper / "big", lower / "big", shallow=False)


@needs_cachestat
@despite_reclaim
def test_of_a_partly_cached_source_only_the_pieces_the_copy_read_in_are_dropped(tmp_path: Path) -> None:
    u, lower, upper = union(tmp_path)
    sparse_file(lower / "big")
    offset, length = EXTENTS[1]
    with open(lower / "big", "rb") as f:  # the second extent is in use elsewhere
        f.seek(offset)
        f.read(length)
    before = cached(lower / "big")
    assert before >= length
    u.chmod("/big", 0o600)
    assert cached(lower / "big") == before  # the first extent's pages went, the second's stayed
    assert filecmp.cmp(upper / "big", lower / "big", shallow=False)


@needs_cachestat
@despite_reclaim
def test_a_volatile_copy_drops_only_the_source_pages_it_read(tmp_path: Path) -> None:
    u, lower, upper = union(tmp_path, durable=False)
    sparse_file(lower / "big")
    fd, _ = u.open("/big", os.O_WRONLY)
    os.close(fd)
    assert cached(lower / "big") == 0
    # nothing written out early: the copy's pages are all still in the cache
    assert cached(upper / "big") == sum(length for _, length in EXTENTS)
    assert data_extents(upper / "big") == EXTENTS
    assert filecmp.cmp(upper / "big", lower / "big", shallow=False)


def test_a_copy_that_fills_the_disk_fails_and_leaves_nothing(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    sparse_file(lower / "big")
    with small_fs(tmp_path / "small", 24 * MiB) as fs:
        upper, work = fs / "upper", fs / "work"
        upper.mkdir()
        work.mkdir()
        u = Union([str(lower)], str(upper), str(work))
        free = os.statvfs(fs).f_bfree
        with pytest.raises(OSError) as exc:
            u.chmod("/big", 0o600)
        assert exc.value.errno == errno.ENOSPC
        assert not (upper / "big").exists()
        assert os.listdir(work / "work") == []
        assert os.statvfs(fs).f_bfree == free  # the partial copy is gone, its space free again
        assert u.getattr("/big")["st_mode"] & 0o777 == 0o644  # the lower file, as it was


def test_a_copy_from_another_filesystem_goes_through_the_window_too(tmp_path: Path) -> None:
    """copy_file_range refuses to cross filesystems (EXDEV): sendfile moves the data."""
    with small_fs(tmp_path / "tmpfs", 64 * MiB) as fs:
        lower = fs / "lower"
        lower.mkdir()
        fd = os.open(lower / "big", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, SIZE)
            for offset, length in EXTENTS:
                os.pwrite(fd, os.urandom(length), offset)
        finally:
            os.close(fd)
        upper, work = tmp_path / "upper", tmp_path / "work"
        upper.mkdir()
        work.mkdir()
        u = Union([str(lower)], str(upper), str(work))
        u.chmod("/big", 0o600)
        assert cached(upper / "big") <= (datacopy._BEHIND + 1) * PIECE
        assert data_extents(upper / "big") == EXTENTS
        assert filecmp.cmp(upper / "big", lower / "big", shallow=False)



def test_a_copy_told_to_stop_gives_up_between_pieces_and_leaves_nothing(tmp_path: Path) -> None:
    """What a copy-up does for a caller that is being killed (see unionfs.interrupts)."""
    u, lower, upper = union(tmp_path)
    sparse_file(lower / "big")
    assert u.copyup is not None
    asked: list[int] = []
    u.copyup.stop = lambda: asked.append(len(asked)) or len(asked) == 3
    with pytest.raises(OSError) as exc:
        u.chmod("/big", 0o600)
    assert exc.value.errno == errno.EINTR
    assert len(asked) == 3  # once after each piece, the copy given up after the third
    assert not (upper / "big").exists()
    assert os.listdir(tmp_path / "work" / "work") == []
    u.copyup.stop = lambda: False
    u.chmod("/big", 0o600)
    assert filecmp.cmp(upper / "big", lower / "big", shallow=False)


def test_a_copy_of_fewer_than_four_pieces_is_not_asked_to_stop(tmp_path: Path) -> None:
    u, lower, upper = union(tmp_path)
    (lower / "small").write_bytes(os.urandom(3 * PIECE))
    assert u.copyup is not None
    u.copyup.stop = lambda: True
    u.chmod("/small", 0o600)
    assert filecmp.cmp(upper / "small", lower / "small", shallow=False)
