"""stress-ng's file system and I/O stressors on the driver, all at once, each checking its own results.

stress-ng comes from another project and calls the kernel in ways these
tests do not: locks of every kind, leases, dnotify and inotify watches,
file handles, asynchronous I/O, io_uring, splice and sendfile, mappings
synced and not and their pages remapped, writes in reverse order, a file
size limit, 10,000 directories at a time. Each stressor fails on a
result it did not expect (``--verify`` checks the data it reads back), and
the ``io`` stressor calls ``syncfs``, which reports a writeback error kept
anywhere on the mount. It found faults that no test had: the driver
answered ``ESTALE`` to the times the kernel writes back for a file unlinked
once closed (or unlinked meanwhile by another process), and the next
``syncfs`` failed with it; ``SEEK_DATA`` and ``SEEK_HOLE`` missed data not
yet written back (see ``test_holes``); ``lsattr``'s ioctl by descriptor on a
file whose names were gone was ``ESTALE`` (see ``test_nameless_files``);
and on a full upper layer a writer was never told (see ``test_full_upper``).

Where a process is killed in the middle of a call after which the kernel
writes back the file's times (an unlink, a rename, ``fallocate``), the
kernel drops that request before the driver reads it and keeps ``EINTR``
for the next ``syncfs``: FUSE's own, as on fuse-overlayfs with its
writeback cache (see the README). ``fpunch`` kills its processes so every
time and is left out; among the others it happens now and then, when
processes are killed at the end of the run, and that failure of ``io`` is
taken (stress-ng prints it, and does not always count it against ``io``).
The same run passes on kernel overlayfs.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from mounts import Stack, fuse_mount

from unionfs import syscalls

pytestmark = [
    pytest.mark.usefixtures("transport"),
    pytest.mark.skipif(not shutil.which("stress-ng"), reason="needs stress-ng"),
]

STRESSORS = (
    "access chdir chmod chown copy-file dentry dir dirdeep dirmany dnotify dup fallocate fcntl filename flock "
    "fstat getdent handle hdd inode-flags inotify io iomix link locka lockf lockofd mknod open rename seek "
    "symlink sync-file touch utime xattr lease mmap msync msyncmany remap readahead aio aiol io-uring revio "
    "sendfile splice file-ioctl fsize"
).split()
SECONDS = 5
KILLED_MEANWHILE = "io: syncfs failed, errno=4 (Interrupted system call)"


def test_stress_ng_file_system_stressors_find_no_fault(tmp_path: Path) -> None:
    stack = Stack.make(tmp_path, nlower=1)
    (stack.lowers[0] / "lower-file").write_bytes(b"in the lower layer\n")
    with fuse_mount(stack) as mnt:
        args = [arg for name in STRESSORS for arg in (f"--{name}", "1")]
        # In the mount, with a relative temp path: the io-uring stressor's statx takes its
        # file's name relative to the working directory (ENOENT elsewhere, on overlayfs too).
        run = subprocess.run(["stress-ng", *args, "--timeout", str(SECONDS), "--verify", "--temp-path", "."],
                             cwd=mnt, capture_output=True, text=True, timeout=120 + 10 * SECONDS)
        out = run.stdout + run.stderr
        fails = [line for line in out.splitlines() if " fail: " in line]
        kernels_own = [line for line in fails if line.endswith(KILLED_MEANWHILE)]
        failed = set(re.findall(r"\((\S+)\) terminated with an error", out))
        assert [line for line in fails if line not in kernels_own] == [], out[-4000:]
        # That line does not always make stress-ng count io as failed.
        assert failed <= ({"io"} if kernels_own else set()), out[-4000:]
        assert run.returncode == (2 if failed else 0), out[-4000:]
        fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            syscalls.syncfs(fd)  # nothing kept since the io stressor's last
        except InterruptedError:
            pass  # the kernel's own, as above
        finally:
            os.close(fd)
        assert sorted(os.listdir(mnt)) == ["lower-file"]
    assert os.listdir(stack.upper) == []  # each stressor removed what it made, and no whiteout was needed
