"""Birth times through the driver against kernel overlayfs.

overlayfs answers statx(STATX_BTIME) with the birth time of the real file that
the merged view shows: a lower file's until it is copied up, then the copy's;
the upper directory's for a merged one. The driver answers FUSE_STATX the same
way. Each mount of a pair has layers of its own, so each is compared with its
own real files.
"""
from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

import pytest
from difftree import Dir, File, Symlink, kernel_overlay_available, pair
from mounts import Stack

pytestmark = [
    pytest.mark.usefixtures("transport"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (kernel overlayfs)"),
    pytest.mark.skipif(os.geteuid() == 0 and not kernel_overlay_available(), reason="kernel overlayfs not available"),
]

_LIBC = ctypes.CDLL(None, use_errno=True)
_STATX_BASIC_STATS, _STATX_BTIME, _AT_SYMLINK_NOFOLLOW, _AT_EMPTY_PATH = 0x7FF, 0x800, 0x100, 0x1000
_MASK_AND_BTIME = struct.Struct("<I76xqI")  # stx_mask at 0, stx_btime at 80


def birth(path: Path | None = None, fd: int = -100) -> tuple[int, int] | None:
    """statx(2) asked for the birth time with the other attributes, as ``stat`` and
    ``ls --time=birth`` ask."""
    buf = ctypes.create_string_buffer(256)
    name, flags = (os.fsencode(path), _AT_SYMLINK_NOFOLLOW) if path is not None else (b"", _AT_EMPTY_PATH)
    if _LIBC.statx(fd, name, flags, _STATX_BASIC_STATS | _STATX_BTIME, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    mask, sec, nsec = _MASK_AND_BTIME.unpack_from(buf)
    return (sec, nsec) if mask & _STATX_BTIME else None


def real(stack: Stack, rel: str) -> Path:
    """The file that the merged view shows at rel: the topmost layer's."""
    for layer in (stack.upper, *stack.lowers):
        if os.path.lexists(layer / rel):
            return layer / rel
    raise FileNotFoundError(rel)


LOWERS = [
    Dir({"top": File(b"top\n"), "m": Dir({"upper-less": File(b"u\n")})}),
    Dir({
        "f": File(b"f\n"), "g": File(b"g\n"), "ln": Symlink("f"),
        "d": Dir({"x": File(b"x\n")}), "m": Dir({"old": File(b"o\n")}),
    }),
]


def test_birth_times_are_those_of_the_real_files_as_on_overlayfs(tmp_path: Path) -> None:
    with pair(tmp_path, LOWERS) as p:
        if birth(p.kernel.lowers[1] / "f") is None:
            pytest.skip("the lower layers' filesystem records no birth times")
        for mnt in (p.kernel.mnt, p.driver.mnt):
            (mnt / "m" / "new").write_bytes(b"n\n")  # m is merged now: its upper dir shows
            (mnt / "made").write_bytes(b"made\n")
            os.mkdir(mnt / "made-dir")
            os.symlink("made", mnt / "made-ln")
            os.chmod(mnt / "d" / "x", 0o600)  # copied up, with d
        rels = [".", "top", "f", "ln", "d", "d/x", "m", "m/old", "m/new", "made", "made-dir", "made-ln"]
        for stack in (p.kernel, p.driver):
            shown = {rel: birth(stack.mnt / rel) for rel in rels}
            assert shown == {rel: birth(real(stack, rel)) for rel in rels}, stack.mnt
            assert None not in shown.values()


def test_a_copy_up_shows_the_copys_birth_time_as_on_overlayfs(tmp_path: Path) -> None:
    """Asked for before the copy-up and again after it: the kernel keeps attributes
    for a while, and the birth time it kept is the lower file's."""
    with pair(tmp_path, LOWERS) as p:
        if birth(p.kernel.lowers[1] / "f") is None:
            pytest.skip("the lower layers' filesystem records no birth times")
        for stack in (p.kernel, p.driver):
            for rel in ("f", "g", "d"):
                assert birth(stack.mnt / rel) == birth(stack.lowers[1] / rel)
            os.chmod(stack.mnt / "f", 0o600)
            os.stat(stack.mnt / "f")  # attributes without the birth time, valid again
            with open(stack.mnt / "g", "ab") as g:
                g.write(b"more\n")
            (stack.mnt / "d" / "new").write_bytes(b"new\n")
            for rel in ("f", "g", "d"):
                assert birth(stack.mnt / rel) == birth(stack.upper / rel) != birth(stack.lowers[1] / rel), (stack.mnt, rel)


def test_a_removed_file_still_open_shows_its_birth_time(tmp_path: Path) -> None:
    with pair(tmp_path, LOWERS) as p:
        for stack in (p.kernel, p.driver):
            fd = os.open(stack.mnt / "kept", os.O_CREAT | os.O_RDWR, 0o644)
            try:
                made = birth(stack.upper / "kept")
                os.unlink(stack.mnt / "kept")
                assert birth(fd=fd) == made, stack.mnt
            finally:
                os.close(fd)
