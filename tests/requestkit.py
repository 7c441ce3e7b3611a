"""Driving the FUSE request handlers in-process, without a mount: the
requests as the kernel sends them, the answers as it reads them."""
from __future__ import annotations

from unionfs import fuseproto as fp
from unionfs.handlers import Requests


def header(opcode: int, nodeid: int) -> tuple:
    """A fuse_in_header (len, opcode, unique, nodeid, uid, gid, pid, ...) from root."""
    return (0, opcode, 1, nodeid, 0, 0, 0, 0, 0)


def lookup(requests: Requests, parent: int, name: str) -> int:
    return fp.ENTRY_OUT.unpack_from(requests.lookup(header(fp.LOOKUP, parent), memoryview(name.encode() + b"\0")))[0]
