"""Shared fixtures: never leave a mount behind, whatever a test did."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from mounts import force_unmount, mounts_under  # noqa: E402

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (kernel overlayfs, device nodes, trusted xattrs)")


@pytest.fixture(autouse=True)
def _no_leftover_mounts(tmp_path: Path) -> Iterator[None]:
    yield
    for point in sorted(mounts_under(tmp_path), key=len, reverse=True):
        force_unmount(point)
