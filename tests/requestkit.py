"""Driving the FUSE request handlers in-process, without a mount: the
requests as the kernel sends them, the answers as it reads them."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from unionfs import fuseproto as fp
from unionfs.handlers import Requests, Timeouts
from unionfs.union import Union


@contextlib.contextmanager
def requests_over(tmp_path: Path, files: dict[str, bytes]) -> Iterator[Requests]:
    """Requests on a union of one lower layer holding files (relative path -> data)
    under an empty upper layer; closed afterwards, so that no union of one test (its
    descriptors, its copy-ups' publishing thread) is still at work in the next."""
    lower, upper, work = (tmp_path / name for name in ("lower", "upper", "work"))
    for d in (lower, upper, work):
        d.mkdir()
    for rel, data in files.items():
        (lower / rel).parent.mkdir(parents=True, exist_ok=True)
        (lower / rel).write_bytes(data)
    requests = Requests(Union([str(lower)], str(upper), str(work)), Timeouts())
    try:
        yield requests
    finally:
        requests.close()


def header(opcode: int, nodeid: int) -> tuple:
    """A fuse_in_header (len, opcode, unique, nodeid, uid, gid, pid, ...) from root."""
    return (0, opcode, 1, nodeid, 0, 0, 0, 0, 0)


def lookup(requests: Requests, parent: int, name: str) -> int:
    return fp.ENTRY_OUT.unpack_from(requests.lookup(header(fp.LOOKUP, parent), memoryview(name.encode() + b"\0")))[0]
