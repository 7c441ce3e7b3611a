#!/usr/bin/env python3
"""Benchmark ``layerstore load`` against skopeo + umoci and against GNU tar.

One run builds a realistic multi-layer image (a debootstrap rootfs split into
four layers, with whiteouts and an apt-like layer of many small files) with
umoci, exports it with skopeo as a docker-archive (plain tar layers) and an
oci-archive (gzip layers), and then times, side by side on the same files:

- ``load``: ``python3 -m layerstore --root STORE load -i ARCHIVE`` into a new store;
- ``skopeo+umoci``: ``skopeo copy docker-archive:ARCHIVE oci:DIR:bench`` (or
  ``oci-archive:``), then ``umoci unpack --image DIR:bench BUNDLE``;
- ``tar -x``: every layer tar extracted by GNU tar into its own directory
  (``tar -xf``, or ``tar -xzf`` for the gzip layers);
- ``unpack``: the store's layer unpacker alone (``layerstore.unpack.unpack_layer``
  with the diff_id checked) on the same layer files, each into its own directory.

Each contender is a subprocess; wall time, CPU time (user + system) and peak
RSS come from ``wait4``. The page cache is dropped before every cold run.
The same is done for an image twice the size (every layer's content also
under ``/x2``), to see whether memory stays flat as images grow.

One JSON object per measurement goes to stdout; progress and the Markdown
table go to stderr (or ``--table PATH``). Needs root (chown, device nodes,
drop_caches, debootstrap).

    python3 benchmarks/load.py --quick
    python3 benchmarks/load.py --cache ~/.cache/layerstore-bench --warm
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drivers import REPO_ROOT, drop_caches, fs_type, mounts_under  # noqa: E402  (shared with the filesystem benchmarks)
from fixtures import log  # noqa: E402
from run import choose_workdir, source_version, write_table  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
TAG = "bench"
CONTENDERS = ("load", "skopeo+umoci", "tar -x", "unpack")
INPUTS = ("docker-archive", "oci-archive")


# -- the machine ------------------------------------------------------------------


def version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return ((out.stdout or out.stderr).strip().splitlines() or ["?"])[0]


def rmtree(path: Path) -> None:
    """Remove a tree, refusing to recurse into a mount."""
    if not path.exists() and not path.is_symlink():
        return
    left = mounts_under(path)
    for point in sorted(left, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
    if mounts_under(path):
        raise RuntimeError(f"mounts still present under {path}")
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True)


# -- running a contender ---------------------------------------------------------

_RUNNING: list[subprocess.Popen] = []


class Failed(Exception):
    pass


@dataclass
class Usage:
    seconds: float = 0.0
    user: float = 0.0
    system: float = 0.0
    max_rss_kib: int = 0
    steps: list[float] = field(default_factory=list)


def gnu_time() -> str | None:
    """GNU time, which reports the peak RSS of the command alone."""
    path = shutil.which("time", path="/usr/bin:/bin")
    return path if path and "GNU" in version([path, "--version"]) else None


GNU_TIME = gnu_time()


def run_measured(cmds: list[list[str]], errlog: Path, env: dict[str, str] | None = None) -> Usage:
    """Run ``cmds`` one after the other; wall time of all, CPU summed, the largest peak RSS.

    CPU time comes from ``wait4``, which counts the child and the children it
    waited for (gzip under ``tar -z``). Peak RSS comes from GNU time: a child
    forked from this (larger) Python process keeps the parent's RSS as its
    starting ``ru_maxrss`` across exec, so ``wait4`` alone overstates small
    commands such as tar.
    """
    use = Usage()
    rss_file = errlog.with_suffix(".rss")
    start = time.perf_counter()
    for cmd in cmds:
        t0 = time.perf_counter()
        argv = [GNU_TIME, "-q", "-f", "%M", "-o", str(rss_file), *cmd] if GNU_TIME else cmd
        with open(errlog, "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _RUNNING.append(proc)
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            _RUNNING.remove(proc)
        proc.returncode = os.waitstatus_to_exitcode(status)
        use.steps.append(time.perf_counter() - t0)
        use.user += ru.ru_utime
        use.system += ru.ru_stime
        rss = ru.ru_maxrss
        if GNU_TIME:
            try:
                rss = int(rss_file.read_text().split()[-1])
            except (OSError, ValueError, IndexError):
                pass
        use.max_rss_kib = max(use.max_rss_kib, rss)
        if proc.returncode != 0:
            tail = errlog.read_text(errors="replace").strip()[-1500:]
            raise Failed(f"{Path(cmd[0]).name} exited {proc.returncode}: {tail}")
    use.seconds = time.perf_counter() - start
    return use


def clean_up(workdir: Path, keep: bool, t0: float) -> None:
    """End of a run, whatever happened: no contender left running, no mount left, the work directory gone (or kept)."""
    for proc in list(_RUNNING):
        proc.kill()
    for point in sorted(mounts_under(workdir), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
    if keep:
        log(f"kept {workdir}")
    else:
        rmtree(workdir)
    log(f"total {time.monotonic() - t0:.1f}s")


def pick(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    """A comma-separated choice from ``allowed``; anything else ends the run with a message."""
    chosen = [c.strip() for c in text.split(",") if c.strip()]
    for c in chosen:
        if c not in allowed:
            raise SystemExit(f"unknown {what} {c!r}; choose from {', '.join(allowed)}")
    return chosen


def exit_on_signals() -> None:
    """SIGTERM and SIGHUP end the run through ``finally`` blocks, so nothing is left mounted or running."""

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)


def measure(cmds: list[list[str]], errlog: Path, env: dict[str, str] | None, tar_bytes: int) -> tuple[dict, Usage]:
    """Run one contender: wall and CPU time, peak memory, throughput, and the sync it left."""
    use = run_measured(cmds, errlog, env)
    loadavg_after = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    os.sync()
    sync_s = time.perf_counter() - t0
    return {
        "seconds": round(use.seconds, 4),
        "cpu_seconds": round(use.user + use.system, 4),
        "user_seconds": round(use.user, 4),
        "sys_seconds": round(use.system, 4),
        "max_rss_mib": round(use.max_rss_kib / 1024, 1),
        "tar_bytes": tar_bytes,
        "mb_per_s": round(tar_bytes / 1e6 / use.seconds, 1),
        "sync_seconds": round(sync_s, 4),
        "seconds_with_sync": round(use.seconds + sync_s, 4),
        "loadavg_after": loadavg_after,
    }, use


def run(*cmd: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """An untimed helper command; its stderr is shown if it fails."""
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {out.returncode}: {out.stderr.strip()[-2000:]}")
    return out.stdout


def count_entries(path: Path) -> int:
    n = 0
    for _dirpath, dirnames, filenames in os.walk(path):
        n += len(dirnames) + len(filenames)
    return n


def read_all(paths: list[Path]) -> None:
    """Pull files into the page cache (for the warm runs)."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(4 * MiB):
                pass


# -- the base tree -----------------------------------------------------------------


def find_mirror(suite: str) -> str:
    """The first ``deb`` URI for ``suite`` in the apt sources (one-line and deb822 formats)."""
    files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
    for path in files:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split("#", 1)[0].split()
            if words[:1] != ["deb"]:
                continue
            words = words[1:]
            if words and words[0].startswith("["):
                while words and not words[0].endswith("]"):
                    words.pop(0)
                words = words[1:]
            if len(words) >= 2 and words[1] == suite:
                return words[0]
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for para in text.split("\n\n"):
            fields: dict[str, str] = {}
            for line in para.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
                uris = fields.get("uris", "").split()
                if uris:
                    return uris[0]
    raise SystemExit(f"no 'deb' source for {suite} in /etc/apt/sources.list(.d); pass --mirror")


def debootstrap_rootfs(cache: Path | None, workdir: Path, suite: str, mirror: str | None) -> tuple[Path, str]:
    """A minbase rootfs, from ``cache`` if a complete one is there, else made (and kept there)."""
    name = f"debootstrap-{suite}-minbase"
    home = cache if cache is not None else workdir
    home.mkdir(parents=True, exist_ok=True)
    final = home / name
    stamp = home / f"{name}.json"
    if final.is_dir() and stamp.is_file():
        info = json.loads(stamp.read_text())
        log(f"using cached rootfs {final} ({info.get('command', '')})")
        return final, info.get("command", "")
    if shutil.which("debootstrap") is None:
        raise SystemExit("debootstrap not found: apt-get install debootstrap (or use --quick)")
    mirror = mirror or find_mirror(suite)
    partial = Path(tempfile.mkdtemp(prefix=f".{name}-partial-", dir=home))
    partial.chmod(0o755)  # mkdtemp's 0700 would become the image's root directory mode
    command = f"debootstrap --variant=minbase {suite} DIR {mirror}"
    log(f"running {command} (a few minutes)")
    logfile = workdir / "debootstrap.log"
    try:
        with open(logfile, "wb") as out:
            proc = subprocess.Popen(["debootstrap", "--variant=minbase", suite, str(partial), mirror],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
            _RUNNING.append(proc)
            try:
                rc = proc.wait()
            finally:
                _RUNNING.remove(proc)
        if rc != 0:
            tail = logfile.read_text(errors="replace").strip().splitlines()[-15:]
            raise SystemExit("debootstrap failed:\n" + "\n".join(tail))
        # apt's downloaded .debs are not part of a base image
        for deb in (partial / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        rmtree(final)
        os.rename(partial, final)
        stamp.write_text(json.dumps({"command": command, "made": time.strftime("%Y-%m-%d")}) + "\n")
    finally:
        rmtree(partial)  # also unmounts a /proc or /sys a failed debootstrap left inside
    return final, command


class Content:
    """Deterministic file contents: text-like (compresses ~3x) and binary-like (~1.5x)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        words = ["".join(self.rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(self.rng.randint(2, 10)))
                 for _ in range(3000)]
        lines, size = [], 0
        while size < 2 * MiB:
            line = " ".join(self.rng.choice(words) for _ in range(self.rng.randint(3, 14)))
            lines.append(line)
            size += len(line) + 1
        self.pool = ("\n".join(lines) + "\n").encode()

    def text(self, n: int) -> bytes:
        out = []
        while n > 0:
            take = min(n, len(self.pool) // 2)
            start = self.rng.randrange(0, len(self.pool) - take)
            out.append(self.pool[start : start + take])
            n -= take
        return b"".join(out)

    def binary(self, n: int) -> bytes:
        half = n // 2
        return self.rng.randbytes(half) + self.text(n - half)

    def size(self, lo: int, hi: int) -> int:
        return int(min(hi, lo * (hi / lo) ** self.rng.random()))  # log-uniform


def write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def synthetic_rootfs(root: Path) -> Path:
    """A small rootfs-shaped tree (~15 MB, ~1,500 entries) for ``--quick``: no network needed."""
    c = Content(1)
    root.mkdir(parents=True)
    for d in ("usr/bin", "usr/sbin", "usr/lib/x86_64-linux-gnu", "etc", "var/lib/dpkg/info", "var/cache/apt",
              "var/log", "tmp", "root", "dev", "proc", "sys"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")):
        os.symlink(target, root / link)
    for i in range(30):
        write(root / f"usr/bin/tool{i}", c.binary(c.size(8 * KiB, 400 * KiB)), 0o755)
    os.chmod(root / "usr/bin/tool0", 0o4755)
    for i in range(10):
        os.link(root / f"usr/bin/tool{i}", root / f"usr/bin/alias{i}")
        os.symlink(f"tool{i + 10}", root / f"usr/bin/link{i}")
    for i in range(100):
        write(root / f"usr/lib/x86_64-linux-gnu/lib{i}.so.1", c.binary(c.size(4 * KiB, 200 * KiB)))
    for i in range(80):
        write(root / f"etc/conf{i % 8}.d/file{i}.conf", c.text(c.size(100, 4 * KiB)))
    for pkg in range(60):
        for j in range(6):
            write(root / f"usr/share/doc/pkg{pkg}/doc{j}.txt", c.text(c.size(200, 16 * KiB)))
        write(root / f"var/lib/dpkg/info/pkg{pkg}.list", c.text(c.size(100, 2 * KiB)))
    for lang in range(20):
        for j in range(8):
            write(root / f"usr/share/locale/l{lang}/LC_MESSAGES/pkg{j}.mo", c.binary(c.size(1 * KiB, 40 * KiB)))
    for i in range(150):
        write(root / f"usr/share/misc/data{i // 30}/item{i}", c.text(c.size(100, 12 * KiB)))
    write(root / "var/lib/dpkg/status", c.text(600 * KiB))
    write(root / "var/cache/apt/pkgcache.bin", c.binary(2 * MiB))
    write(root / "var/log/dpkg.log", c.text(200 * KiB))
    write(root / "etc/ld.so.cache", c.binary(30 * KiB))
    return root


# -- the image ---------------------------------------------------------------------


@dataclass
class Recipe:
    """How large the added layers are."""

    opt_binary: int  # incompressible-ish file added by layer 3
    opt_files: int
    apt_files: int  # small files of the apt-like layer 4
    apt_lists: int  # size of each of three apt list files


FULL = Recipe(opt_binary=16 * MiB, opt_files=200, apt_files=4000, apt_lists=3 * MiB)
QUICK = Recipe(opt_binary=1 * MiB, opt_files=40, apt_files=400, apt_lists=128 * KiB)


def layer_changes(base: Path, stash: Path, prefixes: list[str], recipe: Recipe) -> list[tuple[str, Callable[[Path], None]]]:
    """The four layer changes, applied to every prefix ("" and, for the 2x image, "x2")."""

    def base_minus_share(rootfs: Path) -> None:
        for p in prefixes:
            dest = rootfs / p
            dest.mkdir(exist_ok=True)
            run("cp", "-a", f"{base}/.", f"{dest}/")
            share = dest / "usr/share"
            if share.exists():
                (stash / (p or "root")).mkdir(parents=True)
                os.rename(share, stash / (p or "root") / "share")

    def add_share(rootfs: Path) -> None:
        for p in prefixes:
            held = stash / (p or "root") / "share"
            if held.exists():
                os.rename(held, rootfs / p / "usr/share")

    def trim_docs(rootfs: Path) -> None:
        c = Content(3)
        for p in prefixes:
            r = rootfs / p
            for gone in ("usr/share/doc", "usr/share/locale"):
                rmtree(r / gone)
            write(r / "opt/app/bin/app", c.binary(recipe.opt_binary), 0o755)
            for i in range(recipe.opt_files):
                write(r / f"opt/app/etc/conf{i % 10}/setting{i}.yaml", c.text(c.size(100, 8 * KiB)))
            if not (r / "usr/bin/app").exists():
                os.symlink("/opt/app/bin/app", r / "usr/bin/app")
            write(r / "etc/motd", b"benchmark image\n")

    def apt_like(rootfs: Path) -> None:
        c = Content(4)
        for p in prefixes:
            r = rootfs / p
            names = []
            for i in range(recipe.apt_files):
                rel = f"usr/lib/python3/dist-packages/benchpkg/mod{i % 150}/part{i}.py"
                write(r / rel, c.text(c.size(200, 24 * KiB)))
                names.append("/" + rel)
            info = r / "var/lib/dpkg/info"
            write(info / "benchpkg.list", ("\n".join(names) + "\n").encode())
            write(info / "benchpkg.md5sums", c.text(len(names) * 60))
            status = r / "var/lib/dpkg/status"
            old = status.read_bytes() if status.exists() else b""
            write(status, old + b"\nPackage: benchpkg\nStatus: install ok installed\nVersion: 1.0\n")
            for i in range(3):
                write(r / f"var/lib/apt/lists/deb.example_dists_{i}_Packages", c.text(recipe.apt_lists))
            for gone in ("var/cache/apt/pkgcache.bin", "var/cache/apt/srcpkgcache.bin", "var/cache/debconf/templates.dat-old"):
                if (r / gone).exists():
                    (r / gone).unlink()
            log_file = r / "var/log/dpkg.log"
            old = log_file.read_bytes() if log_file.exists() else b""
            write(log_file, old + c.text(8 * KiB))
            write(r / "etc/ld.so.cache", c.binary(40 * KiB))

    return [
        ("rootfs without /usr/share", base_minus_share),
        ("/usr/share", add_share),
        ("remove /usr/share/doc and /usr/share/locale, add /opt/app", trim_docs),
        ("apt-like: many small files, modified dpkg status", apt_like),
    ]


@dataclass
class Layer:
    diff_id: str
    tar: Path  # uncompressed layer, from the docker-archive
    gz: Path  # gzip layer, from the oci-archive
    tar_bytes: int
    gz_bytes: int
    entries: int
    whiteouts: int
    what: str


@dataclass
class Image:
    name: str  # "1x", "2x"
    docker: Path
    oci: Path
    layers: list[Layer]

    @property
    def tar_bytes(self) -> int:
        return sum(layer.tar_bytes for layer in self.layers)


def base_rootfs(args: argparse.Namespace, cache: Path | None, workdir: Path) -> tuple[Path, str, Recipe]:
    """The tree images are built from, how it was made, and the recipe for the layers on it."""
    if args.quick:
        return synthetic_rootfs(workdir / "rootfs"), "synthetic tree (--quick)", QUICK
    base, made = debootstrap_rootfs(cache, workdir, args.suite, args.mirror)
    return base, made, FULL


def build_image(name: str, base: Path, work: Path, prefixes: list[str], recipe: Recipe) -> Image:
    """Build with umoci (one repack per layer), export with skopeo, and lay the layers out as files."""
    layout, bundle, stash = work / f"layout-{name}", work / f"bundle-{name}", work / f"stash-{name}"
    log(f"building the {name} image with umoci")
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:{TAG}")
    run("umoci", "config", "--image", f"{layout}:{TAG}", "--config.cmd", "/bin/sh", "--no-history")
    run("umoci", "unpack", "--image", f"{layout}:{TAG}", str(bundle))
    changes = layer_changes(base, stash, prefixes, recipe)
    for what, change in changes:
        change(bundle / "rootfs")
        run("umoci", "repack", "--refresh-bundle", "--history.created_by", what, "--image", f"{layout}:{TAG}", str(bundle))
    rmtree(bundle)
    rmtree(stash)
    docker, oci = work / f"image-{name}.docker.tar", work / f"image-{name}.oci.tar"
    env = dict(os.environ, TMPDIR=str(work))
    run("skopeo", "--insecure-policy", "copy", "-q", f"oci:{layout}:{TAG}", f"docker-archive:{docker}:bench/rootfs:{name}", env=env)
    run("skopeo", "--insecure-policy", "copy", "-q", f"oci:{layout}:{TAG}", f"oci-archive:{oci}:{TAG}", env=env)
    rmtree(layout)
    # The layer files that tar -x and the bare unpacker read: taken out of the two archives.
    dx, ox = work / f"inputs-{name}-docker", work / f"inputs-{name}-oci"
    dx.mkdir()
    ox.mkdir()
    run("tar", "-xf", str(docker), "-C", str(dx))
    run("tar", "-xf", str(oci), "-C", str(ox))
    entry = json.loads((dx / "manifest.json").read_text())[0]
    config = json.loads((dx / entry["Config"]).read_text())
    diff_ids = config["rootfs"]["diff_ids"]
    index = json.loads((ox / "index.json").read_text())
    mdesc = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((ox / "blobs/sha256" / mdesc).read_text())
    layers = []
    for i, (member, diff_id, desc) in enumerate(zip(entry["Layers"], diff_ids, manifest["layers"])):
        tar_path = dx / member
        gz_path = ox / "blobs" / desc["digest"].replace(":", "/")
        entries = whiteouts = 0
        with tarfile.open(tar_path, "r:") as t:
            for info in t:
                entries += 1
                whiteouts += os.path.basename(info.name.rstrip("/")).startswith(".wh.")
        layers.append(Layer(diff_id, tar_path, gz_path, tar_path.stat().st_size, gz_path.stat().st_size,
                            entries, whiteouts, changes[i][0]))
    img = Image(name, docker, oci, layers)
    log(f"{name} image: {len(layers)} layers, {img.tar_bytes / 1e6:.1f} MB as tar, "
        f"{sum(x.gz_bytes for x in layers) / 1e6:.1f} MB gzip, {sum(x.entries for x in layers)} entries")
    return img


# -- the contenders ----------------------------------------------------------------


def contender_cmds(name: str, img: Image, fmt: str, out: Path) -> tuple[list[list[str]], list[Path]]:
    """The command lines of one contender, and the files it reads (to warm them)."""
    py = sys.executable
    if name == "load":
        archive = img.docker if fmt == "docker-archive" else img.oci
        cmd = [py, "-m", "layerstore", "--root", str(out / "store"), "load", "-q", "-i", str(archive)]
        return [cmd], [archive]
    if name == "skopeo+umoci":
        src = f"docker-archive:{img.docker}" if fmt == "docker-archive" else f"oci-archive:{img.oci}:{TAG}"
        archive = img.docker if fmt == "docker-archive" else img.oci
        return [
            ["skopeo", "--insecure-policy", "copy", "-q", src, f"oci:{out / 'oci'}:{TAG}"],
            ["umoci", "unpack", "--image", f"{out / 'oci'}:{TAG}", str(out / "bundle")],
        ], [archive]
    files = [layer.tar if fmt == "docker-archive" else layer.gz for layer in img.layers]
    if name == "tar -x":
        flag = "-xf" if fmt == "docker-archive" else "-xzf"
        return [["tar", flag, str(f), "-C", str(out / str(i))] for i, f in enumerate(files)], files
    if name == "unpack":
        cmd = [py, str(Path(__file__).resolve()), "--unpack-helper", str(out)]
        for f, layer in zip(files, img.layers):
            cmd += [str(f), layer.diff_id]
        return [cmd], files
    raise ValueError(name)


def output_entries(name: str, out: Path) -> int:
    """Entries written: summed over the layer directories, or the merged rootfs for umoci."""
    if name == "skopeo+umoci":
        return count_entries(out / "bundle/rootfs")
    layers = out / "store/layers/sha256" if name == "load" else out
    return sum(count_entries(d) for d in layers.iterdir())


def unpack_helper(argv: list[str]) -> int:
    """``--unpack-helper DEST LAYER DIFF_ID [LAYER DIFF_ID ...]``: the store's unpacker alone."""
    sys.path.insert(0, str(REPO_ROOT))
    from layerstore.unpack import unpack_layer

    dest = Path(argv[0])
    dest.mkdir(parents=True, exist_ok=True)
    pairs = list(zip(argv[1::2], argv[2::2]))
    for i, (path, diff_id) in enumerate(pairs):
        with open(path, "rb") as f:
            unpack_layer(f, dest / str(i), expected_diff_id=diff_id)
    return 0


# -- the run -----------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.results: list[dict] = []
        self.can_drop = True
        self.env = dict(os.environ, TMPDIR=str(workdir / "tmp"), PYTHONPATH=str(REPO_ROOT))
        (workdir / "tmp").mkdir()

    def emit(self, row: dict) -> None:
        self.results.append(row)
        print(json.dumps(row), flush=True)
        if row.get("seconds") is None:
            shown = f"error: {str(row.get('error'))[:300]}"
        else:
            shown = (f"{row['seconds']:.2f}s wall, {row['cpu_seconds']:.2f}s cpu, "
                     f"{row['max_rss_mib']:.0f} MiB rss, {row['mb_per_s']:.0f} MB/s")
        log(f"  {row['image']:<3} {row['input']:<15} {row['cache']:<5} {row['contender']:<13} {shown}")

    def one(self, img: Image, fmt: str, name: str, cache: str, rep: int) -> None:
        out = self.workdir / "out"
        rmtree(out)
        out.mkdir()
        cmds, reads = contender_cmds(name, img, fmt, out)
        if name == "tar -x":
            for i in range(len(img.layers)):
                (out / str(i)).mkdir()
        row = {"image": img.name, "input": fmt, "contender": name, "cache": cache, "seconds": None}
        # Every run starts from dropped caches, warm ones too (then the inputs
        # are read back in): extracting right after a tree of the same size was
        # written and deleted took several times the system time of a run made
        # after a drop, whichever tool ran, which says more about the previous
        # run than about the one measured.
        if not drop_caches():
            self.can_drop = False
        if cache == "warm":
            read_all(reads)
        row["loadavg"] = round(os.getloadavg()[0], 2)  # other work on the machine skews wall times
        try:
            fields, use = measure(cmds, self.workdir / "stderr.log", self.env, img.tar_bytes)
            row.update(fields)
        except Failed as e:
            row["error"] = str(e)
            row["rep"] = rep
            self.emit(row)
            rmtree(out)
            return
        row.update({
            "entries": output_entries(name, out),
            "rep": rep,
        })
        if name == "skopeo+umoci":
            row["skopeo_seconds"], row["umoci_seconds"] = (round(s, 4) for s in use.steps)
        self.emit(row)
        rmtree(out)

    def run(self, images: list[Image], contenders: list[str], inputs: list[str]) -> None:
        caches = ["cold", "warm"] if self.args.warm else ["cold"]
        for img in images:
            for fmt in inputs:
                log(f"== {img.name} image, {fmt}")
                for rep in range(1, self.args.repeat + 1):
                    for name in contenders:
                        for cache in caches:
                            self.one(img, fmt, name, cache, rep)


# -- the table ---------------------------------------------------------------------


def fmt_num(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def layers_table(images: list[Image], named: bool) -> str:
    """What each layer of the benchmark's images holds (with the image's name where there are several)."""
    first = ["image"] if named else []
    lines = ["| " + " | ".join(first + ["layer", "what", "tar MB", "gzip MB", "entries", "whiteouts"]) + " |",
             "|" + "---|" * len(first) + "---:|---|---:|---:|---:|---:|"]
    for img in images:
        for i, layer in enumerate(img.layers, 1):
            cells = [img.name] * named + [str(i), layer.what, f"{layer.tar_bytes / 1e6:.1f}", f"{layer.gz_bytes / 1e6:.1f}",
                                          str(layer.entries), str(layer.whiteouts)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(results: list[dict], images: list[Image], notes: list[str]) -> str:
    cells: dict[tuple, list[dict]] = {}
    order: list[tuple] = []
    for r in results:
        key = (r["image"], r["input"], r["cache"], r["contender"])
        if key not in cells:
            order.append(key)
        cells.setdefault(key, []).append(r)

    def med(key: tuple, field_: str) -> float | None:
        vals = [r[field_] for r in cells.get(key, []) if r.get("seconds") is not None and r.get(field_) is not None]
        return statistics.median(vals) if vals else None

    def best(key: tuple) -> float | None:
        vals = [r["seconds"] for r in cells.get(key, []) if r.get("seconds") is not None]
        return min(vals) if vals else None

    repeated = any(len(v) > 1 for v in cells.values())
    sizes = {img.name: img.tar_bytes for img in images}
    head = ["image", "input", "cache", "contender", "wall s"] + (["best wall s"] if repeated else []) + [
        "wall+sync s", "CPU s", "peak RSS MiB", "MB/s", "entries"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(head) - 4)) + "|"]
    for key in order:
        image, fmt, cache, name = key
        label = f"{image} ({sizes[image] / 1e6:.0f} MB)"
        if med(key, "seconds") is None:
            lines.append("| " + " | ".join([label, fmt, cache, name, "error"] + [""] * (len(head) - 5)) + " |")
            continue
        extra = ""
        if name == "skopeo+umoci":
            extra = f" ({fmt_num(med(key, 'skopeo_seconds'))} + {fmt_num(med(key, 'umoci_seconds'))})"
        lines.append("| " + " | ".join([
            label, fmt, cache, name, fmt_num(med(key, "seconds")) + extra,
        ] + ([fmt_num(best(key))] if repeated else []) + [
            fmt_num(med(key, "seconds_with_sync")),
            fmt_num(med(key, "cpu_seconds")), f"{med(key, 'max_rss_mib'):.0f}",
            f"{med(key, 'mb_per_s'):.0f}", str(int(med(key, "entries"))),
        ]) + " |")

    # ratios: above 1 means the layerstore side is slower
    groups = list(dict.fromkeys(k[:3] for k in order))
    rlines = ["| image | input | cache | load / skopeo+umoci wall | with sync | CPU "
              "| unpack / tar -x wall | with sync | CPU |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for g in groups:
        def ratio(a: str, b: str, f: str) -> str:
            x, y = med(g + (a,), f), med(g + (b,), f)
            return f"{x / y:.2f}" if x is not None and y else ""
        rlines.append("| " + " | ".join([g[0], g[1], g[2]] + [
            ratio(a, b, f) for a, b in (("load", "skopeo+umoci"), ("unpack", "tar -x"))
            for f in ("seconds", "seconds_with_sync", "cpu_seconds")]) + " |")
    loads = [r[k] for r in results for k in ("loadavg", "loadavg_after") if r.get(k) is not None]
    if loads:
        notes = notes + [f"1-minute load average around the runs: {min(loads):.1f} to {max(loads):.1f} "
                         f"(median {statistics.median(loads):.1f}) on {os.cpu_count()} CPUs"]

    mem = []
    names = [img.name for img in images]
    for fmt in INPUTS:
        for name in CONTENDERS:
            vals = [med((n, fmt, "cold", name), "max_rss_mib") for n in names]
            if len(vals) > 1 and all(v is not None for v in vals):
                shown = ", ".join(f"{n} {v:.0f} MiB" for n, v in zip(names, vals))
                mem.append(f"- peak RSS, {name}, {fmt} (cold): {shown} ({vals[-1] / vals[0]:.2f}x)")


    errors = [f"- {r['image']} {r['input']} {r['contender']} ({r['cache']}): {' '.join(str(r['error']).split())[:400]}"
              for r in results if r.get("error")]
    out = "\n".join(lines) + "\n\nRatios (above 1: the layerstore side is slower):\n\n" + "\n".join(rlines)
    if mem:
        out += "\n\nMemory against image size:\n\n" + "\n".join(mem)
    out += "\n\nImages:\n\n" + layers_table(images, named=True)
    if notes:
        out += "\n\n" + "\n".join(f"- {n}" for n in notes)
    if errors:
        out += "\n\nErrors:\n" + "\n".join(errors)
    return out + "\n"


# -- main --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small synthetic rootfs instead of debootstrap (seconds, no network)")
    p.add_argument("--cache", help="directory that keeps the debootstrap rootfs between runs")
    p.add_argument("--suite", default="bookworm", help="Debian suite for debootstrap (default: bookworm)")
    p.add_argument("--mirror", help="Debian mirror (default: the first deb source for the suite in /etc/apt)")
    p.add_argument("--warm", action="store_true", help="also run every contender with its input in the page cache")
    p.add_argument("--repeat", type=int, default=1, help="runs per cell; the table shows medians")
    p.add_argument("--only", help=f"comma-separated contenders (default: {','.join(CONTENDERS)})")
    p.add_argument("--inputs", default=",".join(INPUTS), help=f"comma-separated subset of {','.join(INPUTS)}")
    p.add_argument("--no-2x", dest="double", action="store_false", help="skip the image of twice the size")
    p.add_argument("--workdir", help="parent directory for images and outputs (default: the temp dir, unless it is tmpfs)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (images) afterwards")
    p.add_argument("--table", nargs="?", const="-", metavar="PATH", help="write the Markdown table to PATH ('-': stdout) instead of stderr")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--unpack-helper"]:
        return unpack_helper(argv[1:])
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: ownership, device nodes, drop_caches and debootstrap need it")
    for tool in ("skopeo", "umoci", "tar"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found")
    contenders = pick(args.only or ",".join(CONTENDERS), CONTENDERS, "contender")
    inputs = pick(args.inputs, INPUTS, "input")
    exit_on_signals()

    workdir = choose_workdir(args.workdir, prefix="layerstore-load-bench-")
    cache = Path(args.cache).resolve() if args.cache else None
    log(f"work directory {workdir}")
    bench = Bench(args, workdir)
    images: list[Image] = []
    notes: list[str] = []
    t0 = time.monotonic()
    try:
        base, made, recipe = base_rootfs(args, cache, workdir)
        build = workdir / "build"
        build.mkdir()
        images.append(build_image("1x", base, build, [""], recipe))
        if args.double:
            images.append(build_image("2x", base, build, ["", "x2"], recipe))
        if not args.quick and cache is None:
            rmtree(base)  # made in the work directory: not needed any more
        notes = [
            f"base: {made}; 1x = 4 layers built with umoci, 2x = the same with every layer's content also under /x2",
            f"kernel {platform.release()}, {os.cpu_count()} CPUs, work directory on {fs_type(workdir)}",
            f"python {platform.python_version()}, layerstore {source_version('layerstore')}",
            f"{version(['skopeo', '--version'])}; {version(['umoci', '--version'])}; {version(['tar', '--version'])}; "
            f"{version(['gzip', '--version'])}",
            f"{args.repeat} run(s) per cell" + (" (median)" if args.repeat > 1 else "")
            + "; cold = caches dropped (`sync; echo 3 > drop_caches`) before the run, warm = the same, then the "
            "inputs read back into the page cache",
            "MB/s = uncompressed layer tar bytes (10^6) / wall seconds; wall+sync adds a `sync` run right after the "
            "contender exits (load fsyncs its blobs and commits each layer, tar and umoci leave their writes to the kernel)",
            "entries = what the contender wrote: all layer directories for load, unpack and tar -x; the merged "
            "rootfs for umoci",
        ]
        if GNU_TIME is None:
            notes.append("no GNU time: peak RSS from wait4, an upper bound (a child starts from this process's RSS)")
        for n in notes:
            log(n)
        bench.run(images, contenders, inputs)
        if not bench.can_drop:
            notes.append("could not drop caches: cold rows are not cold")
    finally:
        clean_up(workdir, args.keep, t0)
        if bench.results:
            write_table(table(bench.results, images, notes), args.table)
    return 1 if any(r.get("error") for r in bench.results) else 0


if __name__ == "__main__":
    sys.exit(main())
