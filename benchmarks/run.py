#!/usr/bin/env python3
"""Benchmark unionfs against kernel overlayfs and fuse-overlayfs, side by side.

Every workload is run for every selected driver in the same invocation, on
the same lower-layer fixtures, each time on a fresh upper/work directory.
One JSON object per measurement goes to stdout; progress and the final
Markdown table (seconds per driver, plus unionfs/kernel and
unionfs/fuse-overlayfs ratios) go to stderr, or to ``--table PATH``.

Needs root: kernel overlay mounts, 0/0 whiteout devices, trusted.* xattrs
and dropping the page cache all require it.

    python3 benchmarks/run.py --quick
    python3 benchmarks/run.py --only copyup-large,seqread --large-size 4G
    python3 benchmarks/run.py --quick --driver-cmd fuse-overlayfs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pace  # noqa: E402
from drivers import (  # noqa: E402
    DRIVER_NAMES, REPO_ROOT, Driver, MountError, drop_caches, fs_type, make_drivers, mounts_under, spread_new_dirs,
)
from fixtures import Fixtures, Scale, log, parse_size  # noqa: E402
from workloads import WORKLOADS, Ctx, Workload, select  # noqa: E402

RATIO_BASES = ("kernel", "fuse-overlayfs")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="scaled-down smoke run (64 MiB large file, 500 small files, ...)")
    p.add_argument("--scale", type=float, help="multiply every fixture size and count by this factor")
    p.add_argument("--large-size", help="size of the large copy-up/read file, e.g. 1G, 64M (overrides --scale/--quick)")
    p.add_argument("--only", help="comma-separated workloads (or row names) to run; see --list")
    p.add_argument("--skip", help="comma-separated workloads to leave out")
    p.add_argument("--drivers", default=",".join(DRIVER_NAMES), help=f"comma-separated subset of {','.join(DRIVER_NAMES)}")
    p.add_argument("--driver-cmd", help="command for the unionfs slot (default: python3 -m unionfs); it gets '-o OPTS MNT'")
    p.add_argument("--driver-umount-cmd", help="unmount command for the unionfs slot; it gets 'MNT' (default: python3 -m unionfs umount, or fusermount3 -u for a custom --driver-cmd)")
    p.add_argument("--extra-opts", action="append", default=[], metavar="DRIVER=OPTS",
                   help="extra mount options for one driver, e.g. kernel=redirect_dir=on (repeatable)")
    p.add_argument("--workdir", help="parent directory for fixtures and uppers (default: the temp dir, unless it is tmpfs)")
    p.add_argument("--keep", action="store_true", help="keep the fixture directory afterwards")
    p.add_argument("--repeat", type=int, default=1, help="run each workload N times per driver; the table shows medians")
    p.add_argument("--timeout", type=float, help="seconds per workload and driver before the mount is aborted (default 1800, 300 with --quick)")
    p.add_argument("--keep-trying", action="store_true", help="keep mounting a driver after it failed to mount once")
    p.add_argument("--table", nargs="?", const="-", metavar="PATH", help="write the Markdown table to PATH ('-' or no value: stdout) instead of stderr")
    p.add_argument("--list", action="store_true", help="list workloads and exit")
    return p.parse_args(argv)


def choose_workdir(arg: str | None, prefix: str = "unionfs-bench-") -> Path:
    """A fresh directory on a disk filesystem: tmpfs would flatter every contender."""
    if arg:
        base = Path(arg).resolve()
        base.mkdir(parents=True, exist_ok=True)
    else:
        base = Path(tempfile.gettempdir())
        if fs_type(base) in ("tmpfs", "ramfs"):
            fallback = Path("/var/tmp")
            if fallback.is_dir() and fs_type(fallback) not in ("tmpfs", "ramfs"):
                log(f"{base} is tmpfs; using {fallback} instead")
                base = fallback
            else:
                raise SystemExit(f"{base} is tmpfs; pass --workdir on a disk-backed filesystem")
    kind = fs_type(base)
    if kind in ("tmpfs", "ramfs", "overlay") or kind.startswith("fuse"):
        log(f"warning: {base} is on {kind}; numbers will not be representative (and overlay may refuse it)")
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def rotated(drivers: list[Driver], by: int) -> list[Driver]:
    """The drivers in the order of one repetition: each starts it in turn.

    A run leaves memory and caches behind that the next one pays for or
    profits from (see ``workloads.cold_caches``); in a fixed order, each driver
    would always follow the same one.
    """
    by %= max(1, len(drivers))
    return drivers[by:] + drivers[:by]


def source_version(package: str = "unionfs") -> str:
    """Which source was measured: commit, and whether the package had edits."""
    git = ["git", "-C", str(REPO_ROOT)]
    head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return "source tree without a commit"
    dirty = subprocess.run(git + ["status", "--porcelain", "--", package], capture_output=True, text=True).stdout
    return f"commit {head.stdout.strip()}" + (f" with uncommitted changes in {package}/" if dirty.strip() else "")


def interpreter() -> str:
    """The Python that runs the driver (this one: see drivers.py), and how its core
    is linked. A build with ``--enable-shared`` keeps the core in a libpython,
    which calls its own functions through the PLT; Debian links it into the
    executable and builds it with profile-guided optimization. The rows made of
    requests move with that (HISTORY.md, "which Python runs the driver")."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    shared = re.search(r"/(libpython[\w.]*\.so[\w.]*)$", maps, re.MULTILINE)
    where = f"its core in {shared.group(1)}" if shared else "its core in the executable"
    return f"unionfs runs under {platform.python_implementation()} {platform.python_version()}, {where}"


def environment(workdir: Path, drivers: list[Driver]) -> list[str]:
    """Facts that change the numbers, printed with the table."""
    lines = [f"kernel {platform.release()}, {os.cpu_count()} CPUs, workdir on {fs_type(workdir)}"]
    params = Path("/sys/module/overlay/parameters")
    if params.is_dir():
        vals = []
        for name in ("redirect_dir", "metacopy", "index", "xino_auto"):
            try:
                vals.append(f"{name}={(params / name).read_text().strip()}")
            except OSError:
                pass
        lines.append("overlay module defaults: " + " ".join(vals))
    try:  # on: the kernel offers FUSE over io_uring, and unionfs uses it unless given io_uring=off
        lines.append("fuse module enable_uring=" + Path("/sys/module/fuse/parameters/enable_uring").read_text().strip())
    except OSError:
        pass
    if any(d.name == "fuse-overlayfs" for d in drivers) and shutil.which("fuse-overlayfs"):
        out = subprocess.run(["fuse-overlayfs", "--version"], capture_output=True, text=True).stdout
        found = [ln.strip() for ln in out.splitlines() if ln.startswith("fuse-overlayfs")]
        lines.append(found[0] if found else "fuse-overlayfs (version unknown)")
    for d in drivers:
        if d.name == "unionfs" and not d.note:
            lines.append(f"unionfs: {source_version()}")
            lines.append(interpreter())
        if d.note:
            lines.append(f"unionfs slot runs: {d.note}")
        if d.extra_opts:
            lines.append(f"{d.name} extra options: {d.extra_opts}")
    return lines


class Runner:
    def __init__(self, args: argparse.Namespace, scale: Scale, workdir: Path, drivers: list[Driver]) -> None:
        self.args = args
        self.scale = scale
        self.workdir = workdir
        self.drivers = drivers
        self.fx = Fixtures(workdir / "fixtures", scale)
        self.scratch = workdir / "scratch"
        self.scratch.mkdir()
        self.spread = spread_new_dirs(self.scratch)  # each run's upper in inodes nobody just freed
        self.can_drop = drop_caches()
        self.timeout = args.timeout or (300.0 if args.quick else 1800.0)
        self.results: list[dict] = []

    def emit(self, row: dict, driver: str, rep: int) -> None:
        out = {"workload": row["workload"], "driver": driver, "seconds": row.get("seconds")}
        out.update({k: v for k, v in row.items() if k not in out})
        if self.args.repeat > 1:
            out["rep"] = rep
        note = next((d.note for d in self.drivers if d.name == driver and d.note), None)
        if note:
            out["driver_cmd"] = note
        self.results.append(out)
        print(json.dumps(out), flush=True)
        shown = f"{out['seconds']:.3f}s" if out["seconds"] is not None else f"({str(out.get('error', 'no time'))[:300]})"
        log(f"  {out['workload']:<22} {driver:<15} {shown}")

    def run(self, workloads: list[Workload]) -> None:
        for wl in workloads:
            log(f"== {wl.name}: {wl.doc}")
            try:
                wl.fixture(self.fx)
            except Exception as e:  # a broken fixture only loses this workload
                for d in self.drivers:
                    for r in wl.rows:
                        self.emit({"workload": r, "seconds": None, "error": f"fixture: {e}"}, d.name, 0)
                continue
            for rep in range(1, self.args.repeat + 1):
                if wl.reference is not None:
                    self.reference(wl, rep)
                for d in rotated(self.drivers, rep - 1):
                    self.one(wl, d, rep)

    def pace(self, when: str) -> str:
        """The host's pace now (see pace.py), for the table's notes; a JSON line too."""
        try:
            stack = self.fx.rmtree()
            times = pace.measure(stack.lowers, self.scratch / f"pace-{when}", stack.info["dir"])
        except Exception as e:  # the rows matter more than the pace
            log(f"host pace {when} the rows: failed: {type(e).__name__}: {e}")
            return f"failed ({type(e).__name__})"
        median = statistics.median(times)
        print(json.dumps({"workload": "pace", "driver": "in-process", "seconds": round(median / 1e3, 6),
                          "when": when, "ms": [round(t, 1) for t in times]}), flush=True)
        log(f"host pace {when} the rows: {median:.0f} ms")
        return f"{median:.0f} ms"

    def reference(self, wl: Workload, rep: int) -> None:
        try:
            for row in wl.reference(self.scratch, self.fx):
                self.emit(row, "reference", rep)
        except Exception as e:
            for r in wl.ref_rows:
                self.emit({"workload": r, "seconds": None, "error": f"{type(e).__name__}: {e}"}, "reference", rep)

    def one(self, wl: Workload, d: Driver, rep: int) -> None:
        """One workload on one driver, under a watchdog; failures become error rows."""
        if d.disabled:
            for r in wl.rows:
                self.emit({"workload": r, "seconds": None, "error": d.disabled}, d.name, rep)
            return
        scratch = self.scratch / f"{wl.name}-{d.name}-{rep}"
        scratch.mkdir()
        ctx = Ctx(d, scratch, self.scale)
        fired = threading.Event()

        def watchdog() -> None:
            fired.set()
            log(f"{wl.name}/{d.name}: no result after {self.timeout:.0f}s, aborting")
            ctx.abort()

        timer = threading.Timer(self.timeout, watchdog)
        timer.daemon = True
        done: set[str] = set()
        timer.start()
        try:
            for row in wl.run(ctx, self.fx):
                self.emit(row, d.name, rep)
                done.add(row["workload"])
        except Exception as e:
            msg = f"timeout after {self.timeout:.0f}s ({type(e).__name__}: {e})" if fired.is_set() else f"{type(e).__name__}: {e}"
            if isinstance(e, MountError) and not self.args.keep_trying:
                d.disabled = f"skipped: {d.name} failed to mount earlier"
            for r in wl.rows:
                if r not in done:
                    self.emit({"workload": r, "seconds": None, "error": msg[:2000]}, d.name, rep)
        finally:
            timer.cancel()
            if not mounts_under(scratch):
                shutil.rmtree(scratch, ignore_errors=True)

    def cleanup(self) -> list[str]:
        """Remove everything we created, but never recurse into a live mount."""
        left = mounts_under(self.workdir)
        for point in sorted(left, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        left = mounts_under(self.workdir)
        if left:
            log(f"mounts still present, not removing {self.workdir}: {left}")
            return left
        if self.args.keep:
            log(f"kept {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return []


def write_table(text: str, dest: str | None) -> None:
    """The Markdown table to a file, to stdout with ``-``, else to stderr (stdout holds the JSON lines)."""
    if dest and dest != "-":
        Path(dest).write_text(text)
        log(f"table written to {dest}")
    elif dest == "-":
        sys.stdout.write("\n" + text)
    else:
        sys.stderr.write("\n" + text)


def fmt(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 0.1:
        return f"{v:.2f}"
    return f"{v:.4f}"


def caller_moves(results: list[dict], drivers: list[str]) -> list[str]:
    """For rows that count them: how often the scheduler moved the caller to
    another CPU, run by run. On a VM each move wakes a halted CPU, and a run
    where the caller moves at most replies takes up to twice as long."""
    notes = []
    for workload in dict.fromkeys(r["workload"] for r in results if r.get("caller_migrations") is not None):
        parts = []
        for d in drivers:
            counts = [str(r["caller_migrations"]) for r in results
                      if r["workload"] == workload and r["driver"] == d and r.get("caller_migrations") is not None]
            if counts:
                parts.append(f"{d} {', '.join(counts)}")
        notes.append(f"{workload}, times the caller moved to another CPU, run by run: {'; '.join(parts)}")
    return notes


def table(results: list[dict], drivers: list[str], notes: list[str]) -> str:
    """Median seconds per row and driver, plus unionfs ratios."""
    order: list[str] = []
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        if r["workload"] not in order:
            order.append(r["workload"])
        cells.setdefault((r["workload"], r["driver"]), []).append(r)
    has_ref = any(r["driver"] == "reference" for r in results)
    cols = list(drivers) + (["reference"] if has_ref else [])
    ratios = [b for b in RATIO_BASES if "unionfs" in drivers and b in drivers]

    def median(w: str, d: str) -> float | None:
        vals = [r["seconds"] for r in cells.get((w, d), []) if r["seconds"] is not None and not r.get("error")]
        return statistics.median(vals) if vals else None

    def cell(w: str, d: str) -> str:
        rows = cells.get((w, d))
        if not rows:
            return ""
        m = median(w, d)
        if m is not None:
            return fmt(m)
        if any(r.get("refused") for r in rows):
            return f"refused ({rows[0].get('error', '')})"
        return "error"

    head = ["workload"] + [f"{c} (s)" for c in cols] + [f"unionfs/{b}" for b in ratios]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for w in order:
        row = [w] + [cell(w, c) for c in cols]
        for b in ratios:
            u, base = median(w, "unionfs"), median(w, b)
            row.append(f"{u / base:.2f}" if u is not None and base else "")
        lines.append("| " + " | ".join(row) + " |")
    errors = []
    skipped: dict[str, int] = {}
    for r in results:
        if r.get("refused") or not r.get("error"):
            continue
        if str(r["error"]).startswith("skipped:"):
            skipped[r["driver"]] = skipped.get(r["driver"], 0) + 1
        else:
            errors.append(f"- {r['workload']} / {r['driver']}: {' '.join(str(r['error']).split())[:400]}")
    for name, n in skipped.items():
        errors.append(f"- {name}: {n} more rows skipped after it failed to mount (--keep-trying to retry)")
    entries = {}
    for r in results:
        if "entries" in r and r["workload"].startswith("find"):
            entries.setdefault(r["driver"], r["entries"])
    if len(set(entries.values())) > 1:
        errors.append(f"- find: drivers disagree on visible entries: {entries}")
    out = "\n".join(lines)
    notes = notes + caller_moves(results, cols)
    if notes:
        out += "\n\n" + "\n".join(f"- {n}" for n in notes)
    if errors:
        out += "\n\nErrors:\n" + "\n".join(dict.fromkeys(errors))
    return out + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for w in WORKLOADS:
            print(f"{w.name:<16} rows: {', '.join(w.ref_rows + w.rows):<55} {w.doc}")
        return 0
    if os.geteuid() != 0:
        raise SystemExit("run as root: kernel overlay mounts, whiteout devices and drop_caches need it")
    scale = Scale.quick() if args.quick else Scale()
    if args.scale:
        scale = scale.scaled(args.scale)
    if args.large_size:
        scale = dataclasses.replace(scale, large_size=parse_size(args.large_size))
    workloads = select(args.only)
    if args.skip:
        skipped = select(args.skip)
        workloads = [w for w in workloads if w not in skipped]
    names = [n.strip() for n in args.drivers.split(",") if n.strip()]
    extra = {}
    for item in args.extra_opts:
        name, _, opts = item.partition("=")
        extra[name] = opts
    drivers = make_drivers(
        names,
        shlex.split(args.driver_cmd) if args.driver_cmd else None,
        shlex.split(args.driver_umount_cmd) if args.driver_umount_cmd else None,
        extra,
    )

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    workdir = choose_workdir(args.workdir)
    notes = environment(workdir, drivers)
    notes.insert(0, "scale: " + ("quick" if args.quick else "full") + (f" x{args.scale}" if args.scale else "")
                 + f", large file {scale.large_size // (1 << 20)} MiB, {args.repeat} run(s) per cell"
                 + (" (median)" if args.repeat > 1 else ""))
    for line in notes:
        log(line)
    log(f"fixtures and uppers under {workdir}")
    runner = Runner(args, scale, workdir, drivers)
    if not runner.can_drop:
        notes.append("could not drop caches: cold rows are not cold")
    if runner.spread:
        notes.append("each run's upper and work dirs in a block group of their own (ext4 TOPDIR flag on their parent)")
    t0 = time.monotonic()
    left: list[str] = []
    paced = any(d.name == "unionfs" for d in drivers)
    try:
        before = runner.pace("before") if paced else ""
        runner.run(workloads)
        if paced:
            notes.append(f"host pace, this checkout's Union removing the rm-rf fixture's tree in-process with no FUSE "
                         f"(median of {pace.REPEAT}; see pace.py): {before} before the rows, "
                         f"{runner.pace('after')} after")
    finally:
        left = runner.cleanup()
        log(f"total {time.monotonic() - t0:.1f}s")
        write_table(table(runner.results, [d.name for d in drivers], notes), args.table)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
