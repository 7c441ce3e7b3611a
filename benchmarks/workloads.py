"""The benchmark workloads.

A workload is a generator run once per driver: it mounts one or more fresh
unions (fresh upper and work directories every time, because copy-up
workloads change the upper) and yields one row per measurement.  Only the
operation under test is inside the timer; mounting, cache dropping and
verification are outside it.

Everything runs in this process with plain syscalls (or common tools for
``find``/``tar``/``rm``/``mv``), so per-call Python overhead is the same for
every driver and cancels out in the ratios.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import random
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers import Driver, drop_caches, is_mounted
from fixtures import Fixtures, KiB, MiB, Scale, Stack

Row = dict

# New page cache that a cold row of one large file fills, in sizes of the file: the
# lower file's and the mount's (a FUSE mount caches what it reads apart from the
# lower file; a copy-up fills its copy's), and room to spare (back_free_memory).
COLD_FILL = 3


def migrations(task: str = "thread-self") -> int | None:
    """How often the scheduler has moved a task to another CPU (``se.nr_migrations``
    in /proc/TASK/sched; None without CONFIG_SCHED_DEBUG). A caller that waits on
    a FUSE driver's replies can be moved at every reply, each time to a CPU that
    must first be woken; a run where that happens takes up to twice as long."""
    try:
        with open(f"/proc/{task}/sched", encoding="ascii") as f:
            for line in f:
                if line.startswith("se.nr_migrations"):
                    return int(line.rpartition(":")[2])
    except (OSError, ValueError):
        pass
    return None


def _moves_since(before: int | None) -> int | None:
    """This thread's moves to another CPU since ``migrations()`` said before."""
    after = migrations()
    return None if before is None or after is None else after - before


def _mibs(nbytes: int, seconds: float) -> float:
    return round(nbytes / MiB / seconds, 1) if seconds > 0 else float("inf")


def _ops(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


def _secs(t: float) -> float:
    return round(t, 6)


class Ctx:
    """Per (workload, driver) state: fresh mounts, subprocesses, cache control."""

    def __init__(self, driver: Driver, scratch: Path, scale: Scale) -> None:
        self.driver = driver
        self.scratch = scratch
        self.scale = scale
        self.current: Path | None = None
        self.upper: Path | None = None
        self.procs: list[subprocess.Popen] = []
        self.aborted = False
        self.tool_migrations: int | None = None  # of the last tool run without a stdout pipe
        self._n = 0
        self._lock = threading.Lock()

    def fresh_dirs(self) -> tuple[Path, Path, Path, Path]:
        """New (base, upper, work, mnt): no mount ever sees another's upper."""
        self._n += 1
        base = self.scratch / f"m{self._n}"
        upper, work, mnt = base / "upper", base / "work", base / "mnt"
        for d in (upper, work, mnt):
            d.mkdir(parents=True)
        return base, upper, work, mnt

    @contextmanager
    def mount(self, stack: Stack, warm: tuple[Path, ...] = ()) -> Iterator[Path]:
        """A fresh union of ``stack``; always unmounted on the way out."""
        self.settle(stack, warm)
        base, upper, work, mnt = self.fresh_dirs()
        self.driver.mount(stack.lowers, upper, work, mnt)
        self.current = mnt
        self.upper = upper
        try:
            yield mnt
        finally:
            self.current = None
            try:
                self.driver.unmount(mnt)
            finally:
                if not is_mounted(mnt):
                    shutil.rmtree(base, ignore_errors=True)

    def spawn(self, cmd: list[str] | str, **popen: Any) -> subprocess.Popen:
        """Start a process tracked so the watchdog can kill it; ``untrack`` it once reaped."""
        with self._lock:
            if self.aborted:
                raise TimeoutError("workload timed out")
            p = subprocess.Popen(cmd, **popen)
            self.procs.append(p)
        return p

    def untrack(self, *procs: subprocess.Popen) -> None:
        with self._lock:
            self.procs[:] = [p for p in self.procs if p not in procs]

    def run(self, cmd: list[str] | str, shell: bool = False, stdout=subprocess.DEVNULL) -> tuple[int, bytes, bytes]:
        """Run a tool, tracked so the watchdog can kill it."""
        p = self.spawn(cmd, shell=shell, executable="/bin/bash" if shell else None,
                       stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE)
        try:
            if stdout == subprocess.PIPE:
                out, err = p.communicate()
            else:  # one pipe: read it to its end, then look at the exited tool before reaping it
                assert p.stderr is not None
                with p.stderr:
                    out, err = b"", p.stderr.read()
                os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
                self.tool_migrations = migrations(str(p.pid))
                p.wait()
        finally:
            self.untrack(p)
        return p.returncode, out or b"", err or b""

    def check(self, cmd: list[str] | str, shell: bool = False, stdout=subprocess.DEVNULL) -> bytes:
        rc, out, err = self.run(cmd, shell=shell, stdout=stdout)
        if rc != 0:
            raise RuntimeError(f"{cmd if isinstance(cmd, str) else ' '.join(cmd)} exited {rc}: {err.decode(errors='replace').strip()[-500:]}")
        return out

    def settle(self, stack: Stack, warm: tuple[Path, ...] = ()) -> None:
        """The same start for every driver: caches dropped, then the lower layers
        (names, attributes, files up to 1 MiB) and ``warm`` read back in.

        Without it a driver pays for the one measured before it: ext4 passes
        over inodes freed in the last ~30 s whose inode-table blocks are still
        cached (``recently_deleted``), and removing the previous mount's upper
        frees thousands of them. Measured here: creating 3,000 files took
        0.63 ms each after such a removal, 0.03 ms after dropping caches.
        """
        cold_caches()
        for layer in stack.lowers:
            _read_tree(layer)
        for path in warm:
            _read_file(path)

    def abort(self) -> None:
        """Watchdog: kill our tools and unwedge the FUSE mount."""
        with self._lock:
            self.aborted = True
            for p in self.procs:
                p.kill()
        if self.current is not None:
            self.driver.abort(self.current)


@dataclass
class Workload:
    name: str
    rows: tuple[str, ...]
    fixture: Callable[[Fixtures], object]
    run: Callable[[Ctx, Fixtures], Iterator[Row]]
    reference: Callable[[Path, Fixtures], Iterator[Row]] | None = None
    ref_rows: tuple[str, ...] = ()
    doc: str = ""


def _allocated(path: Path) -> int | None:
    try:
        return os.lstat(path).st_blocks * 512
    except OSError:
        return None


def _read_file(path: Path | str) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(MiB):
            pass


def _read_tree(root: Path | str) -> None:
    """Into the caches: every entry's name and inode, and the data of small files."""
    for entry in os.scandir(root):
        st = entry.stat(follow_symlinks=False)
        if entry.is_dir(follow_symlinks=False):
            _read_tree(entry.path)
        elif entry.is_file(follow_symlinks=False) and st.st_size <= MiB:
            _read_file(entry.path)


def _timed_sync() -> float:
    t0 = time.perf_counter()
    os.sync()
    return _secs(time.perf_counter() - t0)


# -- copy-up of a large file -------------------------------------------------


def copyup_large(ctx: Ctx, fx: Fixtures) -> Iterator[Row]:
    stack = fx.large()
    big_a, big_b = stack.info["files"]
    with ctx.mount(stack) as mnt:
        upper = ctx.upper
        assert upper is not None
        cold_caches(large_file=stack.info["size"])
        t0 = time.perf_counter()
        fd = os.open(mnt / big_a, os.O_WRONLY)
        os.pwrite(fd, b"X", 0)
        os.close(fd)
        t = time.perf_counter() - t0
        sync_s = _timed_sync()
        size = os.stat(mnt / big_a).st_size
        yield {
            "workload": "copyup-large-write",
            "seconds": _secs(t),
            "bytes": stack.info["size"],
            "mib_per_s": _mibs(stack.info["size"], t),
            "sync_seconds": sync_s,
            "seconds_with_sync": _secs(t + sync_s),
            "size_ok": size == stack.info["size"],
            "upper_allocated": _allocated(upper / big_a),
        }
        cold_caches(large_file=stack.info["size"])
        t0 = time.perf_counter()
        os.chmod(mnt / big_b, 0o600)
        t = time.perf_counter() - t0
        sync_s = _timed_sync()
        yield {
            "workload": "copyup-large-chmod",
            "seconds": _secs(t),
            "bytes": stack.info["size"],
            "sync_seconds": sync_s,
            "seconds_with_sync": _secs(t + sync_s),
            "mode_ok": (os.stat(mnt / big_b).st_mode & 0o777) == 0o600,
            "upper_allocated": _allocated(upper / big_b),
        }


def cold_caches(large_file: int = 0) -> None:
    """Flush dirty data, drop page/dentry/inode caches, then compact free memory (needs root);
    then, for a row that fills page cache with a file of ``large_file`` bytes, back the
    free memory it will fill (``back_free_memory``).

    Compacting gives every driver's cold read the same free memory to fill.
    Without it, where the pages freed by the run before happen to lie decides
    how scattered the new page cache is, and a warm read of it follows: a warm
    1 GiB read through fuse-overlayfs took 0.096 s (median of 4) when run after
    fuse-overlayfs and 0.110 s when run after unionfs; with compaction, 0.101 s
    after either. Compacting takes about 10 ms.
    """
    if drop_caches():
        with contextlib.suppress(OSError), open("/proc/sys/vm/compact_memory", "w") as f:
            f.write("1")  # OSError: a kernel without CONFIG_COMPACTION
        back_free_memory(large_file)


def back_free_memory(file_size: int) -> None:
    """Touch COLD_FILL times ``file_size`` bytes of new memory and free them again, so that
    the page cache a cold row of that file fills next comes from memory its host has
    backed (at most half of what is available).

    A VM that reports its free memory to the host (virtio_balloon's free page
    reporting) gets it taken back some 2 s after it was freed, and each page of it
    handed out again costs a fault in the host. On a 2-CPU VM, writing a byte to each
    page of 1 GiB of new memory took 0.8 s six times in eight and 2.1 to 2.4 s twice,
    at random; a FUSE driver's cold read of a
    1 GiB file fills 2 GiB of page cache (the lower file's and the mount's), so
    with the lower file already cached both FUSE drivers' reads took 0.5 s or
    1.3 to 2.0 s by the host's turn alone, and 0.48 to 0.70 s once this ran first.
    """
    size = min(COLD_FILL * file_size, _mem_available() // 2)
    if size >= mmap.PAGESIZE and hasattr(mmap, "MAP_POPULATE"):
        mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE).close()


def _mem_available() -> int:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * KiB
    return 0


def copy_file_range_reference(scratch: Path, fx: Fixtures) -> Iterator[Row]:
    """The floor for a data copy-up: an in-kernel copy on the same filesystem."""
    stack = fx.large()
    src = stack.lowers[0] / stack.info["files"][0]
    dst = scratch / "copy_file_range.out"
    cold_caches(stack.info["size"])
    try:
        t0 = time.perf_counter()
        fin = os.open(src, os.O_RDONLY)
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            remaining = os.fstat(fin).st_size
            while remaining > 0:
                n = os.copy_file_range(fin, fout, remaining)
                if n == 0:
                    break
                remaining -= n
            t_copy = time.perf_counter() - t0
            os.fsync(fout)
            t_total = time.perf_counter() - t0
        finally:
            os.close(fin)
            os.close(fout)
        yield {
            "workload": "copy-file-range",
            "seconds": _secs(t_copy),
            "fsync_seconds": _secs(t_total - t_copy),
            "bytes": stack.info["size"],
            "mib_per_s": _mibs(stack.info["size"], t_copy),
        }
    finally:
        dst.unlink(missing_ok=True)


# -- copy-up of many small files ---------------------------------------------


def copyup_small(ctx: Ctx, fx: Fixtures) -> Iterator[Row]:
    stack = fx.small_files()
    names = stack.info["files"]
    with ctx.mount(stack) as mnt:
        os.sync()
        moved = migrations()
        t0 = time.perf_counter()
        for name in names:
            fd = os.open(mnt / name, os.O_WRONLY | os.O_APPEND)
            os.write(fd, b"+")
            os.close(fd)
        t = time.perf_counter() - t0
        yield {
            "workload": "copyup-small",
            "seconds": _secs(t),
            "files": len(names),
            "ops_per_s": _ops(len(names), t),
            "caller_migrations": _moves_since(moved),
            "sync_seconds": _timed_sync(),
        }


# -- reads --------------------------------------------------------------------


def _read_all(path: Path, chunk: int) -> int:
    buf = bytearray(chunk)
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            total += n
    return total


def seqread(ctx: Ctx, fx: Fixtures) -> Iterator[Row]:
    """Cold: fresh mount + dropped caches.  Warm: a second read (new open)."""
    stack = fx.large()
    name = stack.info["files"][0]
    chunk = ctx.scale.read_chunk
    with ctx.mount(stack) as mnt:
        cold_caches(large_file=stack.info["size"])
        for label in ("seqread-cold", "seqread-warm"):
            t0 = time.perf_counter()
            n = _read_all(mnt / name, chunk)
            t = time.perf_counter() - t0
            yield {
                "workload": label,
                "seconds": _secs(t),
                "bytes": n,
                "mib_per_s": _mibs(n, t),
                "size_ok": n == stack.info["size"],
            }


def randread(ctx: Ctx, fx: Fixtures) -> Iterator[Row]:
    """Warm 4 KiB preads at fixed pseudo-random offsets (same seed for all)."""
    stack = fx.random_file()
    path_rel, size = stack.info["file"], stack.info["size"]
    rng = random.Random(4096)
    offsets = [rng.randrange(size // (4 * KiB)) * 4 * KiB for _ in range(ctx.scale.random_reads)]
    with ctx.mount(stack) as mnt:
        _read_all(mnt / path_rel, ctx.scale.read_chunk)  # warm-up
        fd = os.open(mnt / path_rel, os.O_RDONLY)
        try:
            t0 = time.perf_counter()
            short = 0
            for off in offsets:
                if len(os.pread(fd, 4 * KiB, off)) != 4 * KiB:
                    short += 1
            t = time.perf_counter() - t0
        finally:
            os.close(fd)
        yield {
            "workload": "randread-warm",
            "seconds": _secs(t),
            "reads": len(offsets),
            "ops_per_s": _ops(len(offsets), t),
            "short_reads": short,
        }


# -- metadata walks -----------------------------------------------------------


def find_walk(ctx: Ctx, fx: Fixtures) -> Iterator[Row]:
    stack = fx.tree()
    with ctx.mount(stack) as mnt:
        cold_caches()
        rows = []
        for label in ("find-cold", "find-warm"):
            t0 = time.perf_counter()
            ctx.check(["find", str(mnt), "-ls"])
            rows.append({"workload": label, "seconds": _secs(time.perf_counter() - t0),
                         "caller_migrations": ctx.tool_migrations})
        # Untimed: the number of visible entries must agree across drivers.
        entries = ctx.check(["find", str(mnt)], stdout=subprocess.PIPE).count(b"\n")
        for row in rows:
            row["entries"] = entries
            yield row


def lookup_missing(ctx: Ctx, fx: Fixtures) -> Iterator[Row]:
    """stat() of names present in no layer, in a dir present in all layers."""
    stack = fx.tree()
    n = ctx.scale.missing_lookups
    with ctx.mount(stack) as mnt:
        d = mnt / stack.info["common"]
        os.listdir(d)  # warm the directory itself
        for i in range(100):
            try:
                os.stat(d / f"warmup-{i}")
            except FileNotFoundError:
                pass
        names = [str(d / f"missing-{i:06d}") for i in range(n)]
        for label in ("lookup-missing", "lookup-missing-repeat"):
            found = 0
            moved = migrations()
            t0 = time.perf_counter()
            for name in names:
                try:
                    os.stat(name)
                    found += 1
                except FileNotFoundError:
                    pass
            t = time.perf_counter() - t0
            row = {"workload": label, "seconds": _secs(t), "lookups": n, "ops_per_s": _ops(n, t),
                   "caller_migrations": _moves_since(moved)}
            if found:
                row["error"] = f"{found} missing names were found"
            yield row


# -- namespace changes --------------------------------------------------------


def create_small(ctx: Ctx, fx: Fixtures) -> Iterator[Row]:
    n, size = ctx.scale.create_files, ctx.scale.create_size
    payload = b"c" * size
    with ctx.mount(fx.base()) as mnt:
        os.sync()
        moved = migrations()
        t0 = time.perf_counter()
        d = mnt / "created"
        os.mkdir(d)
        for i in range(n):
            fd = os.open(d / f"c{i:05d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, payload)
            os.close(fd)
        t = time.perf_counter() - t0
        yield {
            "workload": "create-small",
            "seconds": _secs(t),
            "files": n,
            "ops_per_s": _ops(n, t),
            "caller_migrations": _moves_since(moved),
            "sync_seconds": _timed_sync(),
        }


def unlink_files(ctx: Ctx, fx: Fixtures) -> Iterator[Row]:
    stack = fx.unlink()
    names = stack.info["files"]
    with ctx.mount(stack) as mnt:
        os.sync()
        moved = migrations()
        t0 = time.perf_counter()
        for name in names:
            os.unlink(mnt / name)
        t = time.perf_counter() - t0
        moved = _moves_since(moved)
        left = len(os.listdir(mnt / "victims"))
        row = {"workload": "unlink", "seconds": _secs(t), "files": len(names), "ops_per_s": _ops(len(names), t),
               "caller_migrations": moved}
        if left:
            row["error"] = f"{left} entries still visible"
        yield row


def rm_rf(ctx: Ctx, fx: Fixtures) -> Iterator[Row]:
    stack = fx.rmtree()
    with ctx.mount(stack) as mnt:
        os.sync()
        target = mnt / stack.info["dir"]
        t0 = time.perf_counter()
        ctx.check(["rm", "-rf", str(target)])
        t = time.perf_counter() - t0
        row = {"workload": "rm-rf", "seconds": _secs(t), "entries": stack.info["entries"],
               "caller_migrations": ctx.tool_migrations}
        if os.path.lexists(target):
            row["error"] = "target still exists"
        yield row


def _rename_once(ctx: Ctx, stack: Stack, workload: str, walk: bool) -> Row:
    """rename(2) of the lower dir on a fresh mount, after a walk of the whole mount
    (untimed) with walk: what the driver keeps of what it has seen must not make
    a rename cost more."""
    nfiles = stack.info["files"]
    with ctx.mount(stack) as mnt:
        src, dst = mnt / stack.info["dir"], mnt / "renamed"
        info: Row = {"workload": workload, "files": nfiles}
        if walk:
            ctx.check(["find", str(mnt), "-ls"])
            info["walked"] = stack.info["walked"]
        os.sync()
        t0 = time.perf_counter()
        try:
            os.rename(src, dst)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            return {**info, "seconds": None, "refused": True, "error": "EXDEV"}
        row = {**info, "seconds": _secs(time.perf_counter() - t0), "refused": False}
        if os.path.lexists(src) or len(os.listdir(dst)) != nfiles:
            row["error"] = "rename result incomplete"
        return row


def rename_dir(ctx: Ctx, fx: Fixtures) -> Iterator[Row]:
    """rename(2) of a lower dir; EXDEV is a legitimate answer, reported as refused."""
    stack = fx.rename()
    nfiles = stack.info["files"]
    yield _rename_once(ctx, stack, "rename-dir", walk=False)
    yield _rename_once(ctx, stack, "rename-dir-walked", walk=True)
    # mv on a fresh union: a rename where allowed, copy+delete after EXDEV.
    with ctx.mount(stack) as mnt:
        src, dst = mnt / stack.info["dir"], mnt / "moved"
        os.sync()
        t0 = time.perf_counter()
        ctx.check(["mv", str(src), str(dst)])
        t = time.perf_counter() - t0
        row = {"workload": "rename-dir-mv", "seconds": _secs(t), "files": nfiles}
        if os.path.lexists(src) or len(os.listdir(dst)) != nfiles:
            row["error"] = "mv result incomplete"
        yield row


# -- bulk data ----------------------------------------------------------------


def write_new(ctx: Ctx, fx: Fixtures) -> Iterator[Row]:
    size, chunk = ctx.scale.write_size, ctx.scale.write_chunk
    block = os.urandom(chunk)
    with ctx.mount(fx.base()) as mnt:
        os.sync()
        t0 = time.perf_counter()
        fd = os.open(mnt / "new.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for _ in range(size // chunk):
                os.write(fd, block)
            t_write = time.perf_counter() - t0
            os.fsync(fd)
        finally:
            os.close(fd)
        t = time.perf_counter() - t0
        yield {
            "workload": "write-new",
            "seconds": _secs(t),
            "write_seconds": _secs(t_write),
            "fsync_seconds": _secs(t - t_write),
            "bytes": size,
            "mib_per_s": _mibs(size, t),
            "size_ok": os.stat(mnt / "new.bin").st_size == size,
        }


def untar_tar(ctx: Ctx, fx: Fixtures) -> Iterator[Row]:
    """Extract a real source tree into the union, then archive it back out.

    GNU tar skips reading file data when writing to /dev/null, so the
    archive goes through a pipe to ``wc -c``.
    """
    tarball, info = fx.source_tar()
    with ctx.mount(fx.base(), warm=(tarball,)) as mnt:
        dest = mnt / "untar"
        os.mkdir(dest)
        os.sync()
        t0 = time.perf_counter()
        ctx.check(["tar", "-xf", str(tarball), "-C", str(dest)])
        t = time.perf_counter() - t0
        t_untar = t
        yield {"workload": "untar", "seconds": _secs(t), **info, "mib_per_s": _mibs(info["tar_bytes"], t), "sync_seconds": _timed_sync()}
        t0 = time.perf_counter()
        out = ctx.check(
            f"set -o pipefail; tar -cf - -C {shlex.quote(str(dest))} . | wc -c", shell=True, stdout=subprocess.PIPE
        )
        t = time.perf_counter() - t0
        nbytes = int(out.strip() or 0)
        yield {"workload": "tar", "seconds": _secs(t), "bytes": nbytes, "mib_per_s": _mibs(nbytes, t)}
        # the workload is the two in a row; the sync between them is not counted
        yield {"workload": "untar+tar", "seconds": _secs(t_untar + t)}


# -- callers at once -----------------------------------------------------------

# One caller's share of the parallel rows: a file-server mix (create, write, stat,
# read, rename, unlink of a 4 KiB file), started by a byte on stdin so that every
# caller is running before the clock starts.
_PARALLEL_CALLER = """
import os, sys
d, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
payload = b"p" * size
os.mkdir(d)
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.buffer.read(1)
for i in range(n):
    path = f"{d}/f{i}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, payload)
    os.close(fd)
    os.stat(path)
    fd = os.open(path, os.O_RDONLY)
    if len(os.read(fd, 2 * size)) != size:
        sys.exit(f"{path}: short read")
    os.close(fd)
    os.rename(path, path + ".done")
    os.unlink(path + ".done")
"""
PARALLEL_CALLERS = (1, 2, 8)


def _callers_at_once(ctx: Ctx, root: Path, callers: int, cycles: int, size: int) -> float:
    """Seconds from the start signal until the last of ``callers`` processes has
    made its share of ``cycles``, each in a directory of its own."""
    procs: list[subprocess.Popen] = []
    try:
        for i in range(callers):
            procs.append(ctx.spawn([sys.executable, "-S", "-c", _PARALLEL_CALLER, str(root / f"caller{i}"),
                                    str(cycles // callers), str(size)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        for p in procs:
            assert p.stdout is not None and p.stderr is not None
            if p.stdout.readline() != b"ready\n":
                raise RuntimeError(f"a caller did not start: {p.stderr.read().decode(errors='replace')[-500:]}")
        t0 = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"g")
            p.stdin.close()
        for p in procs:
            p.wait()
        t = time.perf_counter() - t0
        for p in procs:
            if p.returncode != 0:
                assert p.stderr is not None
                raise RuntimeError(f"a caller exited {p.returncode}: {p.stderr.read().decode(errors='replace')[-500:]}")
        return t
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None and not stream.closed:
                    stream.close()
        ctx.untrack(*procs)


def parallel(ctx: Ctx, fx: Fixtures) -> Iterator[Row]:
    """The same work from one caller and from several at once: over io_uring each
    CPU's requests have workers of their own, and a second caller can cost more
    than it brings (see HISTORY)."""
    cycles, size = ctx.scale.parallel_cycles, ctx.scale.create_size
    for callers in PARALLEL_CALLERS:
        with ctx.mount(fx.base()) as mnt:
            os.sync()
            t = _callers_at_once(ctx, mnt, callers, cycles, size)
            left = [f"caller{i}" for i in range(callers) if os.listdir(mnt / f"caller{i}")]
            done = cycles // callers * callers
            row = {"workload": f"parallel-{callers}", "seconds": _secs(t), "callers": callers, "cycles": done,
                   "ops_per_s": _ops(done, t)}
            if left:
                row["error"] = f"files left in {', '.join(left)}"
            yield row


# -- mount itself -------------------------------------------------------------


def mount_umount(ctx: Ctx, fx: Fixtures) -> Iterator[Row]:
    """Time to mount the three-layer tree (until visible) and to unmount it."""
    stack = fx.tree()
    ctx.settle(stack)
    base, upper, work, mnt = ctx.fresh_dirs()
    t_mount = ctx.driver.mount(stack.lowers, upper, work, mnt)
    ctx.current = mnt
    try:
        os.listdir(mnt)
    finally:
        ctx.current = None
        t_umount = ctx.driver.unmount(mnt)
    shutil.rmtree(base, ignore_errors=True)
    yield {"workload": "mount", "seconds": _secs(t_mount)}
    yield {"workload": "umount", "seconds": _secs(t_umount)}


WORKLOADS: list[Workload] = [
    Workload("mount", ("mount", "umount"), lambda fx: fx.tree(), mount_umount,
             doc="mount a 3-layer tree until visible; unmount"),
    Workload("copyup-large", ("copyup-large-write", "copyup-large-chmod"),
             lambda fx: fx.large(), copyup_large, copy_file_range_reference, ("copy-file-range",),
             doc="1-byte write at offset 0 / chmod of a large lower file (cold cache)"),
    Workload("copyup-small", ("copyup-small",), lambda fx: fx.small_files(), copyup_small,
             doc="append one byte to each of many small lower files"),
    Workload("seqread", ("seqread-cold", "seqread-warm"), lambda fx: fx.large(), seqread,
             doc="sequential 128 KiB reads of a large lower file"),
    Workload("randread", ("randread-warm",), lambda fx: fx.random_file(), randread,
             doc="4 KiB preads at random offsets, page cache warm"),
    Workload("find", ("find-cold", "find-warm"), lambda fx: fx.tree(), find_walk,
             doc="find MNT -ls over a 3-layer tree with whiteouts and opaque dirs"),
    Workload("lookup-missing", ("lookup-missing", "lookup-missing-repeat"), lambda fx: fx.tree(), lookup_missing,
             doc="stat() of absent names in a dir present in all layers"),
    Workload("create", ("create-small",), lambda fx: fx.base(), create_small,
             doc="create many 4 KiB files in a new directory"),
    Workload("unlink", ("unlink",), lambda fx: fx.unlink(), unlink_files,
             doc="unlink lower files (whiteouts)"),
    Workload("rmtree", ("rm-rf",), lambda fx: fx.rmtree(), rm_rf,
             doc="rm -rf of a lower subtree spread over two layers"),
    Workload("rename-dir", ("rename-dir", "rename-dir-walked", "rename-dir-mv"), lambda fx: fx.rename(), rename_dir,
             doc="rename(2) of a lower dir (EXDEV = refused), the same after a walk of the mount, and mv of it"),
    Workload("write-new", ("write-new",), lambda fx: fx.base(), write_new,
             doc="write a new file with 1 MiB writes, then fsync"),
    Workload("tar", ("untar", "tar", "untar+tar"), lambda fx: fx.source_tar(), untar_tar,
             doc="tar -xf a source tree into the union, then tar -cf it to a pipe"),
    Workload("parallel", tuple(f"parallel-{n}" for n in PARALLEL_CALLERS), lambda fx: fx.base(), parallel,
             doc="the same cycles of create, write, stat, read, rename and unlink of a 4 KiB file, "
                 "made by 1, 2 and 8 processes at once"),
]


def select(spec: str | None) -> list[Workload]:
    """``--only`` accepts workload names or the row names they produce."""
    if not spec:
        return list(WORKLOADS)
    wanted = {s.strip() for s in spec.split(",") if s.strip()}
    chosen = [w for w in WORKLOADS if w.name in wanted or wanted & set(w.rows + w.ref_rows)]
    known = {w.name for w in WORKLOADS} | {r for w in WORKLOADS for r in w.rows + w.ref_rows}
    unknown = wanted - known
    if unknown:
        raise SystemExit(f"unknown workload(s): {', '.join(sorted(unknown))}; see --list")
    return chosen
