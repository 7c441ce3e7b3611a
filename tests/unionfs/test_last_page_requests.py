"""The last page of a file copied up for writing, handed to the kernel with the
OPEN (NOTIFY_STORE), driven through the handlers without a mount.

With the writeback cache the kernel fills a page before it writes part of it:
the first append to a file just copied up would wait for a READ of its last
page. The driver stores that page in the kernel's cache before it answers the
OPEN, but only when no other open of the node could have a page of it dirty or
being read."""
from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from requestkit import header, lookup, requests_over

from unionfs import fuseproto as fp
from unionfs.handlers import Requests, Timeouts
from unionfs.nodes import ROOT_ID
from unionfs.union import Union

PAGE = mmap.PAGESIZE
FILES = {
    "short": bytes(range(100)),
    "long": bytes(i % 251 for i in range(2 * PAGE + 17)),
    "page": b"p" * PAGE,
    "empty": b"",
}
APPEND = os.O_WRONLY | os.O_APPEND


@pytest.fixture
def requests(tmp_path: Path) -> Iterator[Requests]:
    with requests_over(tmp_path, FILES) as made:
        yield made


def stores_on_open(requests: Requests, name: str, flags: int) -> tuple[int, list[tuple[int, bytes]]]:
    """(node id, the pages stored in the kernel's cache) for an OPEN of name with flags."""
    sent: list[tuple[int, bytes]] = []
    requests.notify = lambda code, payload: sent.append((code, payload)) if code == fp.NOTIFY_STORE else None
    nodeid = lookup(requests, ROOT_ID, name)
    requests.open(header(fp.OPEN, nodeid), memoryview(fp.OPEN_IN.pack(flags, 0)))
    return nodeid, sent


def store(nodeid: int, offset: int, data: bytes) -> tuple[int, bytes]:
    return fp.NOTIFY_STORE, fp.NOTIFY_STORE_OUT.pack(nodeid, offset, len(data), 0) + data


@pytest.mark.parametrize("flags", [APPEND, os.O_RDWR], ids=["append", "read-write"])
def test_a_copy_up_for_writing_hands_over_the_page_its_data_ends_in(requests: Requests, flags: int) -> None:
    nodeid, sent = stores_on_open(requests, "short", flags)
    assert sent == [store(nodeid, 0, FILES["short"])]
    nodeid, sent = stores_on_open(requests, "long", flags)
    assert sent == [store(nodeid, 2 * PAGE, FILES["long"][2 * PAGE:])]


@pytest.mark.parametrize("name", ["page", "empty"])
def test_data_that_ends_on_a_page_boundary_needs_no_page(requests: Requests, name: str) -> None:
    _, sent = stores_on_open(requests, name, APPEND)
    assert sent == []


def test_a_file_already_copied_up_gets_nothing(requests: Requests) -> None:
    _, first = stores_on_open(requests, "short", APPEND)
    assert len(first) == 1
    _, again = stores_on_open(requests, "short", APPEND)
    assert again == [], "the kernel may hold dirty pages of an upper file"


def test_a_truncating_open_gets_nothing(requests: Requests) -> None:
    _, sent = stores_on_open(requests, "short", os.O_WRONLY | os.O_TRUNC)
    assert sent == []


def test_a_node_open_elsewhere_gets_nothing(requests: Requests) -> None:
    nodeid = lookup(requests, ROOT_ID, "short")
    requests.open(header(fp.OPEN, nodeid), memoryview(fp.OPEN_IN.pack(os.O_RDONLY, 0)))
    _, sent = stores_on_open(requests, "short", APPEND)
    assert sent == [], "a reader's pages may be locked for a READ that only the driver can answer"


def test_without_the_writeback_cache_nothing_is_sent(tmp_path: Path) -> None:
    lower, upper, work = (tmp_path / name for name in ("lower", "upper", "work"))
    for d in (lower, upper, work):
        d.mkdir()
    (lower / "short").write_bytes(FILES["short"])
    plain = Requests(Union([str(lower)], str(upper), str(work)), Timeouts(), writeback=False)
    _, sent = stores_on_open(plain, "short", APPEND)
    assert sent == []
