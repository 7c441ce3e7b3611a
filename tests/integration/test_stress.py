"""Many workers on one mount for a bounded time: no lost write, no deadlock,
no leaked descriptor, bounded memory.

Eight worker threads create, write (also through shared mappings), append,
truncate, rename, unlink, set extended attributes, read and list in the same
few directories, over lower files (copy-up races) and on shared files. Each
worker uses names of its own (``wK-``), so its model of what it made is exact
and every read is checked against it at once; shared files are checked by
invariants: an O_APPEND log whose size is the sum of all appends with every
record intact, files where each worker writes its own region, one name that
all workers rename onto. Each worker also keeps pairs of hard links in two
directories (``tK-``), appended to, written into or truncated through one
name and read at once through the other, while another thread makes the
kernel drop its cached names and inodes every second: the kernel then forgets
directories and files and looks them up again, its FORGETs racing the new
LOOKUPs. At the end the whole tree is checked against the models through the
mount, after a remount, and through kernel overlayfs over the same upper.

It runs twice: with requests read from ``/dev/fuse`` and through the per-CPU
io_uring queues, where each CPU's workers take only that CPU's requests.

``STRESS_SECONDS`` sets the running time (default 30 per transport; hunt
races with longer runs); ``STRESS_SEED`` the seed (each worker's operations
follow from it, though their interleaving does not).
"""
from __future__ import annotations

import collections
import mmap
import os
import random
import stat
import threading
import time
import traceback
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
from difftree import CachesDropped, layer_state
from mounts import Stack, driver_pid, fuse_mount, kernel_mount

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts and kernel overlayfs need root")

SECONDS = float(os.environ.get("STRESS_SECONDS", "30"))
SEED = int(os.environ.get("STRESS_SEED", "1"))
WORKERS = 8
DIRS = ("d0", "d1", "d2")
LOWER_FILES = 4  # per worker, in the lower layer
MAX_FILES = 40  # per worker: the tree stops growing, so the driver's memory should too
RACE_FILES = ("race/r0", "race/r1")
REGION = 4096  # each worker's part of a race file
LOG = "shared/log"
LOG_HEADER = b"log kept by the lower layer\n"
TARGET = "shared/target"
DEADLOCK_GRACE = 120.0  # beyond the running time, a worker that has not finished is stuck
WARMUP = min(10.0, SECONDS / 4)
# After warm-up, with the tree no longer growing: about 1 MiB of noise was seen; a
# leak of 100 bytes per operation exceeds the limit in 45 s, one of 10 bytes in 10 minutes.
RSS_GROWTH_LIMIT_KB = 8 * 1024
DROP_EVERY = 1.0  # seconds between two drops of the kernel's cached names and inodes
XATTR = "user.stress"


def lower_content(worker: int, index: int) -> bytes:
    return f"lower file {index} of worker {worker}\n".encode() * (index * 300 + 1)


def build(base: Path) -> Stack:
    stack = Stack.make(base)
    top, bottom = stack.lowers
    for d in DIRS:
        (bottom / d / "sub").mkdir(parents=True)
        (bottom / d / "sub/keep").write_text(d)
    for k in range(WORKERS):
        for i in range(LOWER_FILES):
            layer = top if i % 2 else bottom
            (layer / DIRS[(k + i) % 3]).mkdir(exist_ok=True)
            (layer / DIRS[(k + i) % 3] / f"w{k}-lower{i}").write_bytes(lower_content(k, i))
        ldir = bottom / DIRS[k % 3] / f"w{k}-ldir"
        ldir.mkdir()
        for i in range(3):
            (ldir / f"f{i}").write_bytes(lower_content(k, i))
    (bottom / "race").mkdir()
    for name in RACE_FILES:
        (bottom / name).write_bytes(bytes(REGION * WORKERS))
    (bottom / "shared").mkdir()
    (bottom / LOG).write_bytes(LOG_HEADER)
    (bottom / TARGET).write_bytes(target_record(-1, 0))
    return stack


def target_record(worker: int, n: int) -> bytes:
    body = f"target from worker {worker} number {n} ".encode() * 20
    return body + f"{zlib.crc32(body):08x}\n".encode()


def valid_target(data: bytes) -> bool:
    body, _, tail = data.rpartition(b" ")
    return data.endswith(b"\n") and tail[:-1] == f"{zlib.crc32(body + b' '):08x}".encode()


def log_record(worker: int, seq: int, rng: random.Random) -> bytes:
    payload = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 300)))
    body = f"{worker:02d} {seq:08d} {payload}"
    return f"{body} {zlib.crc32(body.encode()):08x}\n".encode()


def written(old: bytes, offset: int, chunk: bytes) -> bytes:
    """A file's content after chunk is written at offset (a hole of zeros before it, if past the end)."""
    padded = old + bytes(max(0, offset - len(old)))
    return padded[:offset] + chunk + padded[offset + len(chunk):]


def truncated(old: bytes, length: int) -> bytes:
    return old[:length] + bytes(max(0, length - len(old)))


def pwrite(path: Path, chunk: bytes, offset: int, sync: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, chunk, offset)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Model:
    """What one worker made: its files (path -> content) and its directories."""

    files: dict[str, bytes] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    race: dict[str, bytes] = field(default_factory=dict)  # race file -> content of this worker's region
    appended: list[int] = field(default_factory=list)  # sizes of this worker's log records, by seq
    targets: int = 0  # records this worker renamed onto TARGET
    twins: dict[tuple[str, str], bytes] = field(default_factory=dict)  # two names of one file -> its content
    xattrs: dict[str, bytes] = field(default_factory=dict)  # own file -> value of XATTR on it


class Worker(threading.Thread):
    """One worker: random operations on its own names and on the shared files."""

    def __init__(self, k: int, mnt: Path, deadline: float) -> None:
        super().__init__(name=f"worker-{k}", daemon=True)
        self.k, self.mnt, self.deadline = k, mnt, deadline
        self.rng = random.Random(SEED * 1000 + k)
        self.model = Model()
        for i in range(LOWER_FILES):
            self.model.files[f"{DIRS[(k + i) % 3]}/w{k}-lower{i}"] = lower_content(k, i)
        ldir = f"{DIRS[k % 3]}/w{k}-ldir"
        self.model.dirs.add(ldir)
        for i in range(3):
            self.model.files[f"{ldir}/f{i}"] = lower_content(k, i)
        for name in RACE_FILES:
            self.model.race[name] = bytes(REGION)
        self.counts: collections.Counter[str] = collections.Counter()
        self.current = "starting"
        self.error: str | None = None
        self.serial = 0
        self.history: dict[str, list[str]] = {}  # rel -> what this worker did to it, for a failure's message

    # -- helpers ---------------------------------------------------------------------
    def p(self, rel: str) -> Path:
        return self.mnt / rel

    def new_name(self, what: str) -> str:
        self.serial += 1
        parent = self.rng.choice([*DIRS, *sorted(self.model.dirs)])
        return f"{parent}/w{self.k}-{what}{self.serial}"

    def data(self) -> bytes:
        size = self.rng.choice((0, 1, 100, 4096, 5000, 70000)) if self.rng.random() < 0.3 else self.rng.randint(0, 3000)
        return self.rng.randbytes(size)

    def own_file(self) -> str | None:
        return self.rng.choice(sorted(self.model.files)) if self.model.files else None

    def moved(self, rel: str, dest: str) -> None:
        """The model's metadata of rel now belongs to dest (whose own is gone)."""
        if rel in self.model.xattrs:
            self.model.xattrs[dest] = self.model.xattrs.pop(rel)
        else:
            self.model.xattrs.pop(dest, None)

    def expect(self, rel: str, got: bytes) -> None:
        want = self.model.files[rel]
        if got != want:
            raise AssertionError(f"{rel}: read {len(got)} bytes, the model has {len(want)} (first difference at "
                                 f"{next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))})")

    # -- operations -------------------------------------------------------------------
    def op_create(self) -> bool:
        if len(self.model.files) >= MAX_FILES:
            return False
        rel, content = self.new_name("f"), self.data()
        self.p(rel).write_bytes(content)
        self.model.files[rel] = content
        return True

    def op_write(self) -> bool:
        rel = self.own_file()
        if rel is None:
            return False
        old = self.model.files[rel]
        offset = self.rng.randint(0, len(old) + 100)
        chunk = self.rng.randbytes(self.rng.randint(1, 9000))
        pwrite(self.p(rel), chunk, offset, sync=self.rng.random() < 0.1)
        self.model.files[rel] = written(old, offset, chunk)
        return True

    def op_append(self) -> bool:
        rel = self.own_file()
        if rel is None:
            return False
        chunk = self.rng.randbytes(self.rng.randint(1, 2000))
        with open(self.p(rel), "ab") as f:
            f.write(chunk)
        self.model.files[rel] += chunk
        return True

    def op_truncate(self) -> bool:
        rel = self.own_file()
        if rel is None:
            return False
        old = self.model.files[rel]
        length = self.rng.randint(0, len(old) + 3000)
        if self.rng.random() < 0.5:
            os.truncate(self.p(rel), length)
        else:
            fd = os.open(self.p(rel), os.O_WRONLY)
            try:
                os.ftruncate(fd, length)
            finally:
                os.close(fd)
        self.model.files[rel] = truncated(old, length)
        return True

    def op_rename(self) -> bool:
        rel = self.own_file()
        if rel is None:
            return False
        others = [f for f in self.model.files if f != rel]
        dest = self.rng.choice(others) if others and self.rng.random() < 0.3 else self.new_name("r")
        self.history.setdefault(rel, []).append(f"renamed to {dest}")
        self.history.setdefault(dest, []).append(f"renamed from {rel}")
        os.rename(self.p(rel), self.p(dest))
        self.model.files[dest] = self.model.files.pop(rel)
        self.moved(rel, dest)
        return True

    def op_unlink(self) -> bool:
        rel = self.own_file()
        if rel is None or len(self.model.files) < 6:
            return False
        self.history.setdefault(rel, []).append("unlinked")
        os.unlink(self.p(rel))
        del self.model.files[rel]
        self.model.xattrs.pop(rel, None)
        return True

    def op_read(self) -> bool:
        rel = self.own_file()
        if rel is not None:
            self.expect(rel, self.p(rel).read_bytes())
        return True

    def op_list(self) -> bool:
        parent = self.rng.choice([*DIRS, *sorted(self.model.dirs)])
        names = os.listdir(self.p(parent))
        if len(names) != len(set(names)):
            raise AssertionError(f"{parent}: duplicate names in one listing")
        mine = {f"{parent}/{n}" for n in names if n.startswith(f"w{self.k}-") or parent in self.model.dirs}
        want = {f for f in (*self.model.files, *self.model.dirs) if f.rpartition("/")[0] == parent}
        if mine != want:
            raise AssertionError(f"{parent}: listed, not in the model: {sorted(mine - want)}; "
                                 f"in the model, not listed: {sorted(want - mine)}; " + self.explain(parent, mine ^ want))
        return True

    def explain(self, parent: str, names: set[str]) -> str:
        """Where a name the listing got wrong is: in the upper directory or not, in
        a second listing or not, and what this worker did with it."""
        upper = self.mnt.parent / "upper"
        again = set(os.listdir(self.p(parent)))
        out = []
        for rel in sorted(names):
            out.append(f"{rel}: in the upper {os.path.lexists(upper / rel)}, listed again "
                       f"{rel.rpartition('/')[2] in again}, history {self.history.get(rel, [])}")
        return " | ".join(out)

    def op_mkdir(self) -> bool:
        if len(self.model.dirs) >= 4:
            return False
        rel = f"{self.rng.choice(DIRS)}/w{self.k}-dir{self.serial}"
        self.serial += 1
        os.mkdir(self.p(rel))
        self.model.dirs.add(rel)
        return True

    def op_rename_dir(self) -> bool:
        if not self.model.dirs:
            return False
        rel = self.rng.choice(sorted(self.model.dirs))
        dest = f"{self.rng.choice(DIRS)}/w{self.k}-moved{self.serial}"
        self.serial += 1
        os.rename(self.p(rel), self.p(dest))
        self.model.dirs.remove(rel)
        self.model.dirs.add(dest)
        for f in [f for f in self.model.files if f.startswith(rel + "/")]:
            self.model.files[dest + f[len(rel):]] = self.model.files.pop(f)
            self.moved(f, dest + f[len(rel):])
        return True

    def op_rmdir(self) -> bool:
        for rel in sorted(self.model.dirs):
            inside = [f for f in self.model.files if f.startswith(rel + "/")]
            if len(inside) <= 2:
                for f in inside:
                    os.unlink(self.p(f))
                    del self.model.files[f]
                    self.model.xattrs.pop(f, None)
                os.rmdir(self.p(rel))
                self.model.dirs.remove(rel)
                return True
        return False

    def op_mmap_write(self) -> bool:
        """Stores through a shared mapping: written back by the kernel, not by write(2)."""
        rel = self.own_file()
        if rel is None or not self.model.files[rel]:
            return False
        old = self.model.files[rel]
        offset = self.rng.randrange(len(old))
        chunk = self.rng.randbytes(self.rng.randint(1, min(len(old) - offset, 6000)))
        fd = os.open(self.p(rel), os.O_RDWR)
        try:
            with mmap.mmap(fd, len(old)) as m:
                m[offset:offset + len(chunk)] = chunk
                if self.rng.random() < 0.3:
                    m.flush()
        finally:
            os.close(fd)
        self.model.files[rel] = written(old, offset, chunk)
        return True

    def op_xattr(self) -> bool:
        """An extended attribute set (a copy-up for a lower file) and read back at once."""
        rel = self.own_file()
        if rel is None:
            return False
        value = self.rng.randbytes(self.rng.randint(1, 200))
        os.setxattr(self.p(rel), XATTR, value)
        self.model.xattrs[rel] = value
        got = os.getxattr(self.p(rel), XATTR)
        if got != value or XATTR not in os.listxattr(self.p(rel)):
            raise AssertionError(f"{rel}: {XATTR} read back as {len(got)} bytes, set {len(value)}")
        return True

    def op_race_write(self) -> bool:
        name = self.rng.choice(RACE_FILES)
        chunk = self.rng.randbytes(REGION)
        pwrite(self.p(name), chunk, self.k * REGION)
        self.model.race[name] = chunk
        return True

    def op_race_read(self) -> bool:
        name = self.rng.choice(RACE_FILES)
        fd = os.open(self.p(name), os.O_RDONLY)
        try:
            got = os.pread(fd, REGION, self.k * REGION)
        finally:
            os.close(fd)
        if got != self.model.race[name]:
            raise AssertionError(f"{name}: region of worker {self.k} is not what it wrote last")
        return True

    def op_log_append(self) -> bool:
        record = log_record(self.k, len(self.model.appended), self.rng)
        fd = os.open(self.p(LOG), os.O_WRONLY | os.O_APPEND)
        try:
            written = os.write(fd, record)
        finally:
            os.close(fd)
        if written != len(record):
            raise AssertionError(f"{LOG}: short append of {written} of {len(record)} bytes")
        self.model.appended.append(len(record))
        return True

    def op_log_read(self) -> bool:
        check_log(self.p(LOG).read_bytes(), None)
        return True

    def op_target_rename(self) -> bool:
        rel = f"shared/w{self.k}-t{self.serial}"
        self.serial += 1
        self.p(rel).write_bytes(target_record(self.k, self.model.targets))
        os.rename(self.p(rel), self.p(TARGET))
        self.model.targets += 1
        return True

    def op_target_read(self) -> bool:
        try:
            data = self.p(TARGET).read_bytes()
        except FileNotFoundError:
            # never seen on kernel overlayfs or this driver (test_open_racing_rename_over_finds_a_file
            # fails on it); counted here, so that the workers' check stays on torn records
            self.counts["target_read_enoent"] += 1
            return False
        if not valid_target(data):
            raise AssertionError(f"{TARGET}: a reader saw a torn or mixed record ({len(data)} bytes)")
        return True

    def op_twin_link(self) -> bool:
        """A file and a hard link to it in another directory (names t<k>-, outside the
        files the listings check)."""
        if len(self.model.twins) >= 2:
            return False
        self.serial += 1
        first, second = self.rng.sample(DIRS, 2)
        names = (f"{first}/t{self.k}-a{self.serial}", f"{second}/t{self.k}-b{self.serial}")
        content = self.data()
        self.p(names[0]).write_bytes(content)
        os.link(self.p(names[0]), self.p(names[1]))
        self.model.twins[names] = content
        return True

    def op_twin_append(self) -> bool:
        """Appended through one name, read at once through the other."""
        if not self.model.twins:
            return False
        names = self.rng.choice(sorted(self.model.twins))
        by, other = self.rng.sample(names, 2)
        chunk = self.rng.randbytes(self.rng.randint(1, 3000))
        with open(self.p(by), "ab") as f:
            f.write(chunk)
        self.model.twins[names] += chunk
        got = self.p(other).read_bytes()
        if got != self.model.twins[names]:
            raise AssertionError(f"{other}: {len(got)} bytes after an append through {by}, the model has "
                                 f"{len(self.model.twins[names])}")
        return True

    def op_twin_change(self) -> bool:
        """Written into or truncated through one name, read at once through the other."""
        if not self.model.twins:
            return False
        names = self.rng.choice(sorted(self.model.twins))
        by, other = self.rng.sample(names, 2)
        old = self.model.twins[names]
        if self.rng.random() < 0.5:
            length = self.rng.randint(0, len(old) + 3000)
            os.truncate(self.p(by), length)
            self.model.twins[names] = truncated(old, length)
            what = f"a truncate to {length}"
        else:
            offset = self.rng.randint(0, len(old) + 100)
            chunk = self.rng.randbytes(self.rng.randint(1, 5000))
            pwrite(self.p(by), chunk, offset)
            self.model.twins[names] = written(old, offset, chunk)
            what = f"a write of {len(chunk)} at {offset}"
        got = self.p(other).read_bytes()
        if got != self.model.twins[names]:
            raise AssertionError(f"{other}: {len(got)} bytes after {what} through {by}, the model has "
                                 f"{len(self.model.twins[names])}")
        return True

    def op_twin_unlink(self) -> bool:
        if len(self.model.twins) < 2:
            return False
        names = self.rng.choice(sorted(self.model.twins))
        for rel in self.rng.sample(names, 2):
            os.unlink(self.p(rel))
        del self.model.twins[names]
        return True

    OPS: ClassVar[dict[str, int]] = {  # operation -> weight
        "create": 8, "write": 10, "append": 8, "truncate": 4, "rename": 6, "unlink": 5, "read": 10, "list": 4,
        "mkdir": 1, "rename_dir": 1, "rmdir": 1, "race_write": 4, "race_read": 2, "log_append": 6, "log_read": 1,
        "target_rename": 3, "target_read": 3, "twin_link": 1, "twin_append": 4, "twin_change": 3, "twin_unlink": 1,
        "mmap_write": 4, "xattr": 2,
    }

    def run(self) -> None:
        kinds, weights = list(self.OPS), list(self.OPS.values())
        try:
            while time.monotonic() < self.deadline:
                kind = self.rng.choices(kinds, weights)[0]
                self.current = kind
                if getattr(self, "op_" + kind)():  # False: nothing to do
                    self.counts[kind] += 1
            self.current = "finished"
        except BaseException as exc:  # noqa: BLE001 - any failure is the test's result
            self.error = f"worker {self.k}, operation {self.current}: {exc!r}\n{traceback.format_exc()}"
            self.current = "failed"


def check_log(data: bytes, models: list[Model] | None) -> None:
    """Every record intact; with the models, exactly the records appended and nothing else."""
    if not data.startswith(LOG_HEADER):
        raise AssertionError(f"{LOG}: the lower header is gone")
    seen: dict[int, list[int]] = collections.defaultdict(list)
    lines = data[len(LOG_HEADER):].splitlines(keepends=True)
    if models is None and lines and not lines[-1].endswith(b"\n"):
        # Read while others append: Linux raises a file's size page by page as an
        # append copies in, so a read may end inside a record (plain ext4 does it too).
        lines.pop()
    for line in lines:
        body, _, crc = line.rstrip(b"\n").rpartition(b" ")
        if not line.endswith(b"\n") or crc != f"{zlib.crc32(body):08x}".encode():
            raise AssertionError(f"{LOG}: a torn or interleaved record: {line[:80]!r}")
        worker, seq = (int(x) for x in body.split(b" ")[:2])
        seen[worker].append(seq)
    for worker, seqs in seen.items():
        if seqs != sorted(seqs):
            raise AssertionError(f"{LOG}: records of worker {worker} out of order")
    if models is not None:
        expected = len(LOG_HEADER) + sum(sum(m.appended) for m in models)
        if len(data) != expected:
            raise AssertionError(f"{LOG}: {len(data)} bytes, the appends add up to {expected}")
        for k, m in enumerate(models):
            if seen.get(k, []) != list(range(len(m.appended))):
                raise AssertionError(f"{LOG}: worker {k} appended {len(m.appended)} records, the log has {len(seen.get(k, []))}")


def check_tree(root: Path, models: list[Model], where: str) -> None:
    """The final tree against every worker's model and the shared invariants."""
    for k, m in enumerate(models):
        for rel, want in m.files.items():
            got = (root / rel).read_bytes()
            assert got == want, f"{where}: worker {k}'s {rel}: {len(got)} bytes, the model has {len(want)}"
        for rel, value in m.xattrs.items():
            assert os.getxattr(root / rel, XATTR) == value, f"{where}: worker {k}'s {rel}: {XATTR} not the last set"
        for rel in m.dirs:
            assert stat.S_ISDIR(os.lstat(root / rel).st_mode), f"{where}: worker {k}'s directory {rel}"
        found = set()
        for parent in (*DIRS, "shared", *m.dirs):
            for name in os.listdir(root / parent):
                if name.startswith(f"w{k}-") or parent in m.dirs:
                    found.add(f"{parent}/{name}")
        want_names = set(m.files) | m.dirs
        assert found == want_names, f"{where}: worker {k}: names unlike the model: {sorted(found ^ want_names)[:10]}"
        for names, want in m.twins.items():
            for rel in names:
                got = (root / rel).read_bytes()
                assert got == want, f"{where}: worker {k}'s {rel}: {len(got)} bytes, the model has {len(want)}"
            assert os.lstat(root / names[0]).st_ino == os.lstat(root / names[1]).st_ino, f"{where}: {names} not one file"
        for name in RACE_FILES:
            with open(root / name, "rb") as f:
                f.seek(k * REGION)
                assert f.read(REGION) == m.race[name], f"{where}: {name}: worker {k}'s region lost its last write"
    for name in RACE_FILES:
        assert os.path.getsize(root / name) == REGION * WORKERS, f"{where}: {name} changed size"
    check_log((root / LOG).read_bytes(), models)
    target = (root / TARGET).read_bytes()
    assert valid_target(target), f"{where}: {TARGET} is torn"
    if any(m.targets for m in models):
        assert not target.startswith(b"target from worker -1 "), f"{where}: {TARGET} still the lower one"
    for d in DIRS:
        assert (root / d / "sub/keep").read_text() == d, f"{where}: {d}/sub/keep"


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    """The driver's resident memory of its own (RssAnon). The io_uring queues' buffers
    are shared memory (RssShmem) that larger requests fill page by page, up to their
    size (a MiB each): bounded, and sooner reached while the kernel looks names up
    again after each drop of its caches."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise LookupError("no RssAnon")


def idle_fd_count(pid: int, wait: float = 10.0) -> int:
    """The descriptors of an idle driver: a listing just closed may not have been released yet."""
    end = time.monotonic() + wait
    count = fd_count(pid)
    while time.monotonic() < end:
        time.sleep(0.3)
        now = fd_count(pid)
        if now == count:
            break
        count = now
    return count


def settled_fd_count(pid: int, baseline: int, wait: float = 10.0) -> int:
    """The kernel sends RELEASE after close() returns: give it a moment to arrive."""
    end = time.monotonic() + wait
    count = fd_count(pid)
    while count > baseline and time.monotonic() < end:
        time.sleep(0.1)
        count = fd_count(pid)
    return count


@pytest.mark.timeout(SECONDS + DEADLOCK_GRACE + 300)
def test_workers_lose_nothing_and_leak_nothing(tmp_path: Path, transport: str) -> None:
    stack = build(tmp_path)
    lowers_built = [layer_state(lower) for lower in stack.lowers]
    with fuse_mount(stack) as mnt:
        pid = driver_pid(mnt)
        os.listdir(mnt)
        fds_before = idle_fd_count(pid)
        start = time.monotonic()
        workers = [Worker(k, mnt, start + SECONDS) for k in range(WORKERS)]
        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1.0):
                samples.append((time.monotonic() - start, rss_kb(pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        samples.append((0.0, rss_kb(pid)))
        sampler.start()
        with CachesDropped(DROP_EVERY) as drops:
            for w in workers:
                w.start()
            for w in workers:
                w.join(timeout=max(0.0, start + SECONDS + DEADLOCK_GRACE - time.monotonic()))
        stop.set()
        sampler.join()
        stuck = [f"worker {w.k} in {w.current}" for w in workers if w.is_alive()]
        if stuck:
            os.kill(pid, 9)  # aborts the FUSE connection, so the stuck syscalls return
            pytest.fail(f"deadlock: {', '.join(stuck)} still running {DEADLOCK_GRACE:.0f} s after the end")
        errors = [w.error for w in workers if w.error]
        assert not errors, errors[0]
        duration = time.monotonic() - start
        counts: collections.Counter[str] = sum((w.counts for w in workers), collections.Counter())
        fds_after = settled_fd_count(pid, fds_before)
        models = [w.model for w in workers]
        check_tree(mnt, models, "through the mount")
        print(f"\n{WORKERS} workers, {duration:.0f} s, {sum(counts.values())} operations: "
              + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f"; caches dropped {drops.count} times")
        print(f"driver fds: {fds_before} before, {fds_after} after")
        rss = [kb for _, kb in samples]
        print(f"driver RssAnon (KiB): start {rss[0]}, max {max(rss)}, end {rss[-1]}")
        print("RSS samples (s, KiB): " + " ".join(f"{t:.0f}:{kb}" for t, kb in samples))
        assert fds_after == fds_before, f"the driver holds {fds_after - fds_before} more descriptors with every file closed"
        warm = [kb for t, kb in samples if t >= WARMUP]
        if warm:
            growth = max(warm) - warm[0]
            assert growth < RSS_GROWTH_LIMIT_KB, f"driver RssAnon grew by {growth} KiB after warm-up (limit {RSS_GROWTH_LIMIT_KB})"
    assert [layer_state(lower) for lower in stack.lowers] == lowers_built, "the driver changed a lower layer"
    with fuse_mount(stack) as mnt:
        check_tree(mnt, models, "after remount")
    with kernel_mount(stack, "redirect_dir=on") as mnt:
        check_tree(mnt, models, "through kernel overlayfs")


def count_failed_opens(mnt: Path, seconds: float) -> tuple[int, int]:
    """Two threads rename new files onto one name while two open it: (opens, ENOENTs)."""
    end = time.monotonic() + seconds
    counts = collections.Counter[str]()

    def rename(k: int) -> None:
        n = 0
        while time.monotonic() < end:
            src = mnt / f"src{k}-{n}"
            src.write_bytes(target_record(k, n))
            os.rename(src, mnt / "target")
            n += 1

    def read() -> None:
        while time.monotonic() < end and not counts["ENOENT"]:
            try:
                data = (mnt / "target").read_bytes()
            except FileNotFoundError:
                counts["ENOENT"] += 1
                continue
            counts["opens"] += 1
            assert valid_target(data)

    threads = [threading.Thread(target=rename, args=(k,)) for k in range(2)] + [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts["opens"], counts["ENOENT"]


@pytest.mark.parametrize("mount", [
    pytest.param(kernel_mount, id="kernel-overlayfs"),
    pytest.param(fuse_mount, id="unionfs"),
])
def test_open_racing_rename_over_finds_a_file(tmp_path: Path, mount: Callable[[Stack], AbstractContextManager[Path]]) -> None:
    """rename(2) replaces its target atomically: an open of that name finds the
    old file or the new one, never nothing (the atomic-replace idiom of config
    files and package managers relies on it)."""
    stack = Stack.make(tmp_path)
    (stack.lowers[1] / "target").write_bytes(target_record(-1, 0))
    with mount(stack) as mnt:
        opens, missing = count_failed_opens(mnt, 3.0)
    assert opens > 0
    assert missing == 0, f"{missing} opens of a name being replaced by rename found nothing"
