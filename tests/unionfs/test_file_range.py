"""A READ's answer (fp.FileRange) read into the transport's reply buffer."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from unionfs import fuseproto as fp


def test_a_read_fills_the_buffer_and_stops_short_at_the_end(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"0123456789")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        buffer = memoryview(bytearray(16))
        assert bytes(fp.FileRange(fd, 2, 4).read_into(buffer)) == b"2345"
        assert bytes(fp.FileRange(fd, 8, 8).read_into(buffer)) == b"89"
    finally:
        os.close(fd)


def test_a_read_larger_than_the_buffer_is_an_error_not_a_short_answer(tmp_path: Path) -> None:
    """The kernel takes a short answer for the end of the file."""
    (tmp_path / "f").write_bytes(b"x" * 64)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as exc:
            fp.FileRange(fd, 0, 32).read_into(memoryview(bytearray(16)))
        assert exc.value.errno == errno.EIO
    finally:
        os.close(fd)
