"""Shared fixtures: never leave a mount behind, whatever a test did."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import mounts  # noqa: E402
from mounts import force_unmount, mounts_under  # noqa: E402

from unionfs import uring  # noqa: E402

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (kernel overlayfs, device nodes, trusted xattrs)")


@pytest.fixture(autouse=True)
def _no_leftover_mounts(tmp_path: Path) -> Iterator[None]:
    yield
    for point in sorted(mounts_under(tmp_path), key=len, reverse=True):
        force_unmount(point)


@pytest.fixture(scope="session", autouse=True)
def _kernel_io_uring_off() -> Iterator[None]:
    """Mounts made without ``fuse_mount`` (the command line, the layer store) read /dev/fuse:
    the driver takes the io_uring queues by default where the kernel offers them, and the
    tests that want the queues ask for them (``transport``, ``kernel_io_uring``). Not held:
    another test run's own switch may take over meanwhile (see ``kernel_io_uring_switch``)."""
    if os.geteuid() != 0 or not Path(uring.SYSFS_ENABLE).exists():
        yield
        return
    with mounts.kernel_io_uring_switch("N", hold=False):
        yield


@pytest.fixture
def kernel_io_uring() -> Iterator[None]:
    """The kernel offers FUSE over io_uring to the connections made meanwhile, and
    ``fuse_mount`` lets the driver take it (io_uring=auto)."""
    if not Path(uring.SYSFS_ENABLE).exists():
        pytest.skip("this kernel has no FUSE over io_uring")
    with mounts.kernel_io_uring_switch("Y"):
        mounts.TRANSPORT = ()
        try:
            yield
        finally:
            mounts.TRANSPORT = mounts.DEFAULT_TRANSPORT


@pytest.fixture(params=["dev", "io_uring"])
def transport(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a test once with requests read from /dev/fuse and once through the per-CPU rings."""
    if request.param == "io_uring":
        request.getfixturevalue("kernel_io_uring")
    mounts.TRANSPORT = ("io_uring=on",) if request.param == "io_uring" else ("io_uring=off",)
    try:
        yield request.param
    finally:
        mounts.TRANSPORT = mounts.DEFAULT_TRANSPORT
