"""Lower-layer fixtures for the union filesystem benchmarks.

Every fixture is a stack of lower layers built once per run and shared by
all drivers.  Lower layers are never written through a union mount (all
writes go to a per-mount upper directory), so sharing them keeps the
comparison fair -- identical bytes on the same filesystem -- and avoids
rebuilding gigabytes of data for every driver.

Whiteouts and opaque directories use the *kernel* overlayfs encoding
(character device 0/0, ``trusted.overlay.opaque=y``): that is the one form
understood by all three drivers, whereas OCI ``.wh.`` files are not
interpreted by kernel overlayfs.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import stat
import sys
import sysconfig
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

OPAQUE_XATTR = "trusted.overlay.opaque"


def log(msg: str) -> None:
    """Progress goes to stderr so stdout stays pure JSON lines."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """Parse ``1G``, ``64M``, ``512k`` or plain bytes (binary units)."""
    text = text.strip()
    units = {"k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}
    suffix = text[-1:].lower()
    if suffix == "b" and len(text) > 1 and text[-2].lower() in units:
        text, suffix = text[:-1], text[-2].lower()
    if suffix in units:
        return int(float(text[:-1]) * units[suffix])
    return int(text)


@dataclass(frozen=True)
class Scale:
    """Sizes and counts of every fixture; the defaults are the full suite."""

    large_size: int = 1 * GiB
    random_file_size: int = 256 * MiB
    random_reads: int = 20_000
    small_files: int = 5_000
    tree_entries: int = 20_000
    missing_lookups: int = 20_000
    create_files: int = 5_000
    create_size: int = 4 * KiB
    unlink_files: int = 5_000
    rmtree_entries: int = 3_000
    rename_files: int = 500
    walked_entries: int = 100_000
    write_size: int = 256 * MiB
    write_chunk: int = 1 * MiB
    read_chunk: int = 128 * KiB
    tar_bytes: int = 64 * MiB
    parallel_cycles: int = 4_000

    @classmethod
    def quick(cls) -> "Scale":
        """Small enough that the whole suite runs in a minute or two."""
        return cls(
            large_size=64 * MiB,
            random_file_size=32 * MiB,
            random_reads=2_000,
            small_files=500,
            tree_entries=2_000,
            missing_lookups=2_000,
            create_files=500,
            unlink_files=500,
            rmtree_entries=300,
            rename_files=200,
            walked_entries=2_000,
            write_size=32 * MiB,
            tar_bytes=8 * MiB,
            parallel_cycles=400,
        )

    def scaled(self, factor: float) -> "Scale":
        """Multiply every size and count (not chunk sizes) by ``factor``."""
        fixed = {"create_size", "write_chunk", "read_chunk"}
        changes = {}
        for f in dataclasses.fields(self):
            if f.name in fixed:
                continue
            value = max(1, int(getattr(self, f.name) * factor))
            if f.name.endswith("_size"):
                # Keep sizes multiples of the I/O chunk so reads/writes are whole.
                value = max(self.write_chunk, value - value % self.write_chunk)
            changes[f.name] = value
        return dataclasses.replace(self, **changes)


@dataclass
class Stack:
    """A set of lower layers, ordered top first as in ``lowerdir=TOP:...:BOTTOM``."""

    lowers: list[Path]
    info: dict = field(default_factory=dict)


def _write_big(path: Path, size: int) -> None:
    """Write non-sparse, non-repeating data so copy-up really copies bytes."""
    block = bytearray(os.urandom(MiB))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        written = 0
        n = 0
        while written < size:
            block[:8] = n.to_bytes(8, "little")
            chunk = min(MiB, size - written)
            os.write(fd, memoryview(block)[:chunk])
            written += chunk
            n += 1
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_small(path: Path, payload: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, payload)
    finally:
        os.close(fd)


def whiteout(path: Path) -> None:
    """Kernel-style whiteout: a 0/0 character device."""
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def make_opaque(path: Path) -> None:
    os.setxattr(path, OPAQUE_XATTR, b"y")


class Fixtures:
    """Lazily built, cached fixtures under one root directory."""

    def __init__(self, root: Path, scale: Scale) -> None:
        self.root = root
        self.scale = scale
        self._cache: dict[str, object] = {}
        root.mkdir(parents=True, exist_ok=True)

    def _cached(self, key: str, build: Callable[[Path], object]) -> object:
        if key not in self._cache:
            where = self.root / key
            where.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            log(f"building fixture {key} ...")
            self._cache[key] = build(where)
            os.sync()
            log(f"fixture {key} ready in {time.perf_counter() - t0:.1f}s")
        return self._cache[key]

    # -- large files --------------------------------------------------------

    def large(self) -> Stack:
        """Two large lower files: one for write copy-up, one for chmod copy-up."""

        def build(where: Path) -> Stack:
            layer = where / "l0"
            layer.mkdir()
            (layer / "data").mkdir()
            for name in ("big_a", "big_b"):
                _write_big(layer / "data" / name, self.scale.large_size)
            return Stack([layer], {"files": ["data/big_a", "data/big_b"], "size": self.scale.large_size})

        return self._cached("large", build)  # type: ignore[return-value]

    def random_file(self) -> Stack:
        def build(where: Path) -> Stack:
            layer = where / "l0"
            layer.mkdir()
            _write_big(layer / "rand.bin", self.scale.random_file_size)
            return Stack([layer], {"file": "rand.bin", "size": self.scale.random_file_size})

        return self._cached("random", build)  # type: ignore[return-value]

    # -- many small files ---------------------------------------------------

    def small_files(self) -> Stack:
        """Small lower files in directories of 100, for per-file copy-up."""

        def build(where: Path) -> Stack:
            layer = where / "l0"
            names = []
            payload = b"s" * KiB
            for i in range(self.scale.small_files):
                d = layer / f"s{i // 100:03d}"
                if i % 100 == 0:
                    d.mkdir(parents=True)
                _write_small(d / f"f{i:05d}", payload)
                names.append(f"s{i // 100:03d}/f{i:05d}")
            return Stack([layer], {"files": names})

        return self._cached("small", build)  # type: ignore[return-value]

    def tree(self) -> Stack:
        """About ``tree_entries`` entries over three layers.

        Each directory ``dNNNNN`` exists in two of the three layers, so
        every directory is a merge.  The upper instance shadows some names,
        whites out some lower names, and every 7th one is opaque; some
        directories that exist only below are whited out whole in the top
        layer.  ``common`` exists in all three layers (used for lookups).
        """

        def build(where: Path) -> Stack:
            layers = [where / f"l{i}" for i in range(3)]  # l0 = bottom
            for layer in layers:
                layer.mkdir()
            nfiles = 10
            ndirs = max(6, self.scale.tree_entries // 30)
            whiteouts = opaque = 0
            for d in range(ndirs):
                name = f"d{d:05d}"
                present = [lv for lv in range(3) if d % 3 != lv]
                for pos, lv in enumerate(present):
                    base = layers[lv] / name
                    base.mkdir()
                    for j in range(nfiles):
                        fname = f"f{j}" if j < nfiles // 2 else f"l{lv}_{j}"
                        _write_small(base / fname, b"%d %d %d\n" % (lv, d, j))
                    os.symlink("f0", base / "link")
                    (base / "sub").mkdir()
                    for j in range(2):
                        _write_small(base / "sub" / f"g{lv}_{j}", b"g\n")
                    if pos == 1:  # upper of the two instances
                        below = present[0]
                        if d % 7 == 0:
                            make_opaque(base)
                            opaque += 1
                        else:
                            for j in range(nfiles // 2, nfiles, 4):
                                whiteout(base / f"l{below}_{j}")
                                whiteouts += 1
                # Dirs in l0+l1 only: hide every 5th one entirely from the top layer.
                if present == [0, 1] and d % 5 == 0:
                    whiteout(layers[2] / name)
                    whiteouts += 1
            for lv, layer in enumerate(layers):
                common = layer / "common"
                common.mkdir()
                for j in range(20):
                    _write_small(common / f"c{lv}_{j}", b"c\n")
                os.symlink("common", layer / f"top_link{lv}")
            return Stack(
                list(reversed(layers)),
                {"dirs": ndirs, "whiteouts": whiteouts, "opaque": opaque, "common": "common"},
            )

        return self._cached("tree", build)  # type: ignore[return-value]

    def unlink(self) -> Stack:
        """``victims/`` split over two layers, so unlink whites out both."""

        def build(where: Path) -> Stack:
            top, bottom = where / "l1", where / "l0"
            names = []
            n = self.scale.unlink_files
            for layer in (top, bottom):
                (layer / "victims").mkdir(parents=True)
            for i in range(n):
                layer = bottom if i < n // 2 else top
                _write_small(layer / "victims" / f"v{i:05d}", b"v" * 512)
                names.append(f"victims/v{i:05d}")
            return Stack([top, bottom], {"files": names})

        return self._cached("unlink", build)  # type: ignore[return-value]

    def rmtree(self) -> Stack:
        """``victim/`` subtree of ~``rmtree_entries`` entries over two layers."""

        def build(where: Path) -> Stack:
            top, bottom = where / "l1", where / "l0"
            per_dir = 12  # 10 files + 1 symlink + the dir itself
            # A third of the dirs exist in both layers: 4/3 instances per dir.
            ndirs = max(3, self.scale.rmtree_entries * 3 // (per_dir * 4))
            entries = 0
            for d in range(ndirs):
                layers = [bottom] if d % 3 == 0 else [top] if d % 3 == 1 else [bottom, top]
                for layer in layers:
                    base = layer / "victim" / f"r{d // 20:03d}" / f"r{d:05d}"
                    base.mkdir(parents=True, exist_ok=True)
                    tag = layer.name
                    for j in range(10):
                        _write_small(base / f"{tag}_{j}", b"r" * 256)
                    os.symlink(f"{tag}_0", base / f"{tag}_link")
                    entries += per_dir
            return Stack([top, bottom], {"entries": entries, "dir": "victim"})

        return self._cached("rmtree", build)  # type: ignore[return-value]

    def rename(self) -> Stack:
        def build(where: Path) -> Stack:
            layer = where / "l0"
            src = layer / "src"
            src.mkdir(parents=True)
            payload = b"m" * (4 * KiB)
            for i in range(self.scale.rename_files):
                _write_small(src / f"m{i:05d}", payload)
            walked = max(1, self.scale.walked_entries // 101)  # directories of 100 empty files
            for d in range(walked):
                (layer / "walked" / f"d{d:05d}").mkdir(parents=True)
                for i in range(100):
                    _write_small(layer / "walked" / f"d{d:05d}" / f"f{i:02d}", b"")
            return Stack([layer], {"dir": "src", "files": self.scale.rename_files, "walked": walked * 101 + 1})

        return self._cached("rename", build)  # type: ignore[return-value]

    def base(self) -> Stack:
        """A nearly empty lower, for workloads that only create new data."""

        def build(where: Path) -> Stack:
            layer = where / "l0"
            (layer / "base").mkdir(parents=True)
            _write_small(layer / "base" / "README", b"base layer\n")
            return Stack([layer])

        return self._cached("base", build)  # type: ignore[return-value]

    # -- source tarball -----------------------------------------------------

    def source_tar(self) -> tuple[Path, dict]:
        """A tarball of a real source tree (~``tar_bytes``), made once."""

        def build(where: Path) -> tuple[Path, dict]:
            out = where / "source.tar"
            roots = sorted(glob.glob("/usr/lib/python3*")) + [
                sysconfig.get_paths()["stdlib"],
                "/usr/share/doc",
                "/usr/share",
            ]
            budget = self.scale.tar_bytes
            total = files = 0
            seen: set[str] = set()
            with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
                for root in roots:
                    if total >= budget or not os.path.isdir(root):
                        continue
                    real = os.path.realpath(root)
                    if real in seen:
                        continue
                    seen.add(real)
                    arc_root = "src" + str(len(seen))
                    for dirpath, dirnames, filenames in os.walk(root):
                        dirnames.sort()
                        rel = os.path.relpath(dirpath, root)
                        arc_dir = os.path.normpath(os.path.join(arc_root, rel))
                        try:
                            tar.add(dirpath, arcname=arc_dir, recursive=False)
                        except OSError:
                            continue
                        for name in sorted(filenames):
                            path = os.path.join(dirpath, name)
                            try:
                                st = os.lstat(path)
                                if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                                    continue
                                tar.add(path, arcname=os.path.join(arc_dir, name), recursive=False)
                            except OSError:
                                continue
                            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
                            files += 1
                            if total >= budget:
                                break
                        if total >= budget:
                            break
            if files == 0:
                raise RuntimeError("no source tree found to build the tarball from")
            return out, {"tar_bytes": out.stat().st_size, "tar_files": files}

        return self._cached("tar", build)  # type: ignore[return-value]
