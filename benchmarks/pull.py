#!/usr/bin/env python3
"""Benchmark ``layerstore pull`` against ``skopeo copy`` + ``umoci unpack`` from a local registry.

The image is the one ``load.py`` builds (a debootstrap rootfs split into four
layers with umoci, gzip layers), pushed with skopeo into Debian's
``docker-registry`` started on 127.0.0.1 and a free port (plain HTTP, storage
in the work directory). Then, side by side, with the page cache dropped before
every run (the registry's blob files too):

- ``pull``: ``python3 -m layerstore --root FRESH pull -q 127.0.0.1:PORT/bench:latest``
  into a new store each time: the whole pull, layers unpacked and ready to mount;
- ``skopeo+umoci``: ``skopeo copy --src-tls-verify=false docker://127.0.0.1:PORT/bench:latest
  oci:DIR:bench``, then ``umoci unpack --image DIR:bench BUNDLE``;
- ``unpack`` (reference, no network): the store's layer unpacker alone on the
  same gzip layer files, as in ``load.py``; next to the ``skopeo`` download
  time it shows whether ``pull`` overlaps downloading and unpacking.

Each contender is a subprocess; wall time, CPU time (user + system, of the
client only: the registry's CPU is not counted) and peak RSS (GNU time) are
measured as in ``load.py``. One JSON object per measurement goes to stdout;
progress goes to stderr, and the Markdown table to stderr (or ``--table PATH``).
Needs root (drop_caches, debootstrap, ownership).

    python3 benchmarks/pull.py --quick
    python3 benchmarks/pull.py --repeat 3 --table pull.md > pull.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drivers import REPO_ROOT, drop_caches, fs_type  # noqa: E402
from fixtures import log  # noqa: E402
from load import (  # noqa: E402
    GNU_TIME,
    TAG,
    Failed,
    Image,
    base_rootfs,
    build_image,
    clean_up,
    contender_cmds,
    count_entries,
    exit_on_signals,
    fmt_num,
    layers_table,
    measure,
    pick,
    rmtree,
    run,
    version,
)
from run import choose_workdir, source_version, write_table  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "tests"))
from dockerregistry import REGISTRY_BIN, DockerRegistry  # noqa: E402

CONTENDERS = ("pull", "skopeo+umoci", "unpack")
REPO_TAG = "bench:latest"
DEFAULT_CACHE = "/var/cache/layerstore-bench"


# -- the contenders ------------------------------------------------------------------


def pull_cmds(name: str, img: Image, host: str, out: Path) -> list[list[str]]:
    ref = f"{host}/{REPO_TAG}"
    if name == "pull":
        return [[sys.executable, "-m", "layerstore", "--root", str(out / "store"), "pull", "-q", ref]]
    if name == "skopeo+umoci":
        return [
            ["skopeo", "--insecure-policy", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{out / 'oci'}:{TAG}"],
            ["umoci", "unpack", "--image", f"{out / 'oci'}:{TAG}", str(out / "bundle")],
        ]
    if name == "unpack":
        return contender_cmds("unpack", img, "oci-archive", out)[0]
    raise ValueError(name)


def output_entries(name: str, out: Path) -> int:
    """Entries written: all layer directories (pull, unpack) or the merged rootfs (umoci)."""
    if name == "skopeo+umoci":
        return count_entries(out / "bundle/rootfs")
    layers = out / "store/layers/sha256" if name == "pull" else out
    return sum(count_entries(d) for d in layers.iterdir() if d.is_dir())


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, img: Image, registry: DockerRegistry) -> None:
        self.args = args
        self.workdir = workdir
        self.img = img
        self.registry = registry
        self.results: list[dict] = []
        self.can_drop = True
        self.env = dict(os.environ, TMPDIR=str(workdir / "tmp"), PYTHONPATH=str(REPO_ROOT))
        (workdir / "tmp").mkdir(exist_ok=True)
        self.gz_bytes = sum(layer.gz_bytes for layer in img.layers)

    def emit(self, row: dict) -> None:
        self.results.append(row)
        print(json.dumps(row), flush=True)
        if row.get("seconds") is None:
            shown = f"error: {str(row.get('error'))[:300]}"
        else:
            shown = (f"{row['seconds']:.2f}s wall, {row['cpu_seconds']:.2f}s cpu, "
                     f"{row['max_rss_mib']:.0f} MiB rss, {row['mb_per_s']:.0f} MB/s")
            if "skopeo_seconds" in row:
                shown += f" (skopeo {row['skopeo_seconds']:.2f}s + umoci {row['umoci_seconds']:.2f}s)"
        log(f"  rep {row['rep']} {row['contender']:<13} {shown}")

    def one(self, name: str, rep: int) -> None:
        out = self.workdir / "out"
        rmtree(out)
        out.mkdir()
        cmds = pull_cmds(name, self.img, self.registry.host, out)
        row: dict = {"image": self.img.name, "contender": name, "cache": "cold", "seconds": None, "rep": rep}
        if not drop_caches():
            self.can_drop = False
        row["loadavg"] = round(os.getloadavg()[0], 2)
        try:
            fields, use = measure(cmds, self.workdir / "stderr.log", self.env, self.img.tar_bytes)
        except Failed as e:
            row["error"] = str(e)
            self.emit(row)
            rmtree(out)
            return
        row.update(fields)
        row.update({
            "gz_bytes": self.gz_bytes,
            "gz_mb_per_s": round(self.gz_bytes / 1e6 / use.seconds, 1),
            "entries": output_entries(name, out),
        })
        if name == "skopeo+umoci":
            row["skopeo_seconds"], row["umoci_seconds"] = (round(s, 4) for s in use.steps)
        self.emit(row)
        rmtree(out)

    def run(self, contenders: list[str]) -> None:
        for rep in range(1, self.args.repeat + 1):
            for name in contenders:
                self.one(name, rep)


# -- the table -----------------------------------------------------------------------


def table(results: list[dict], img: Image | None, notes: list[str]) -> str:
    cells: dict[str, list[dict]] = {}
    for r in results:
        cells.setdefault(r["contender"], []).append(r)

    def med(name: str, field_: str) -> float | None:
        vals = [r[field_] for r in cells.get(name, []) if r.get("seconds") is not None and r.get(field_) is not None]
        return statistics.median(vals) if vals else None

    def best(name: str) -> float | None:
        vals = [r["seconds"] for r in cells.get(name, []) if r.get("seconds") is not None]
        return min(vals) if vals else None

    head = ["contender", "wall s", "best wall s", "wall+sync s", "CPU s", "peak RSS MiB", "MB/s (tar)",
            "MB/s (gzip)", "entries"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "|".join(["---:"] * (len(head) - 1)) + "|"]
    for name in cells:
        if med(name, "seconds") is None:
            lines.append("| " + " | ".join([name, "error"] + [""] * (len(head) - 2)) + " |")
            continue
        wall = fmt_num(med(name, "seconds"))
        if name == "skopeo+umoci":
            wall += f" ({fmt_num(med(name, 'skopeo_seconds'))} + {fmt_num(med(name, 'umoci_seconds'))})"
        lines.append("| " + " | ".join([
            name, wall, fmt_num(best(name)), fmt_num(med(name, "seconds_with_sync")),
            fmt_num(med(name, "cpu_seconds")), f"{med(name, 'max_rss_mib'):.0f}",
            f"{med(name, 'mb_per_s'):.0f}", f"{med(name, 'gz_mb_per_s'):.0f}", str(int(med(name, "entries"))),
        ]) + " |")

    def ratio(a: str, b: str, f: str) -> str:
        x, y = med(a, f), med(b, f)
        return f"{x / y:.2f}" if x is not None and y else ""

    def best_ratio(a: str, b: str) -> str:
        x, y = best(a), best(b)
        return f"{x / y:.2f}" if x is not None and y else ""

    out = "\n".join(lines)
    pairs = [(a, b) for a, b in (("pull", "skopeo+umoci"), ("pull", "unpack")) if a in cells and b in cells]
    if pairs:
        rl = ["| ratio | wall | best wall | wall+sync | CPU |", "|---|---:|---:|---:|---:|"]
        for a, b in pairs:
            rl.append(f"| {a} / {b} | {ratio(a, b, 'seconds')} | {best_ratio(a, b)} | "
                      f"{ratio(a, b, 'seconds_with_sync')} | {ratio(a, b, 'cpu_seconds')} |")
        out += "\n\nRatios (above 1: pull is slower):\n\n" + "\n".join(rl)
    overlap = []
    pull_s, unpack_s, dl_s = med("pull", "seconds"), med("unpack", "seconds"), med("skopeo+umoci", "skopeo_seconds")
    if pull_s is not None and unpack_s is not None and dl_s is not None:
        hidden = dl_s + unpack_s - pull_s
        seq = (f"download alone (`skopeo copy`) {fmt_num(dl_s)} s + unpack alone {fmt_num(unpack_s)} s = "
               f"{fmt_num(dl_s + unpack_s)} s in sequence, against {fmt_num(pull_s)} s for pull: ")
        if hidden >= dl_s:
            seq += (f"the whole download is hidden, and pull took {fmt_num(unpack_s - pull_s)} s less than the "
                    "unpack alone (which unpacks the layers one after another; pull unpacks several at once)")
        elif hidden > 0:
            seq += f"{fmt_num(hidden)} s of the download ({hidden / dl_s * 100:.0f}%) overlapped"
        else:
            seq += f"no overlap visible ({fmt_num(-hidden)} s more than the sequence)"
        overlap.append(seq)
    loads = [r[k] for r in results for k in ("loadavg", "loadavg_after") if r.get(k) is not None]
    if loads:
        notes = notes + [f"1-minute load average around the runs: {min(loads):.1f} to {max(loads):.1f} "
                         f"(median {statistics.median(loads):.1f}) on {os.cpu_count()} CPUs"]
    if img is not None:
        out += "\n\nImage:\n\n" + layers_table([img], named=False)
    if overlap:
        out += "\n\nOverlap:\n\n" + "\n".join(f"- {o}" for o in overlap)
    if notes:
        out += "\n\n" + "\n".join(f"- {n}" for n in notes)
    errors = [f"- {r['contender']} (rep {r['rep']}): {' '.join(str(r['error']).split())[:400]}"
              for r in results if r.get("error")]
    if errors:
        out += "\n\nErrors:\n" + "\n".join(errors)
    return out + "\n"


# -- main ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small synthetic rootfs instead of debootstrap (seconds, no network)")
    p.add_argument("--cache", default=DEFAULT_CACHE,
                   help=f"directory that keeps the debootstrap rootfs between runs (default: {DEFAULT_CACHE}; "
                        "'' = none: made in the work directory and removed)")
    p.add_argument("--suite", default="bookworm", help="Debian suite for debootstrap (default: bookworm)")
    p.add_argument("--mirror", help="Debian mirror (default: the first deb source for the suite in /etc/apt)")
    p.add_argument("--repeat", type=int, default=3, help="runs per contender (default 3); the table shows medians")
    p.add_argument("--only", help=f"comma-separated contenders (default: {','.join(CONTENDERS)})")
    p.add_argument("--workdir", help="parent directory for the image, registry and outputs (default: the temp dir, unless it is tmpfs)")
    p.add_argument("--keep", action="store_true", help="keep the work directory afterwards (the registry is stopped anyway)")
    p.add_argument("--table", nargs="?", const="-", metavar="PATH", help="write the Markdown table to PATH ('-': stdout) instead of stderr")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: ownership, device nodes, drop_caches and debootstrap need it")
    for tool in ("skopeo", "umoci", REGISTRY_BIN):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found")
    contenders = pick(args.only or ",".join(CONTENDERS), CONTENDERS, "contender")
    exit_on_signals()

    workdir = choose_workdir(args.workdir, prefix="layerstore-pull-bench-")
    cache = Path(args.cache).resolve() if args.cache else None
    log(f"work directory {workdir}")
    registry: DockerRegistry | None = None
    bench: Bench | None = None
    img: Image | None = None
    notes: list[str] = []
    t0 = time.monotonic()
    try:
        base, made, recipe = base_rootfs(args, cache, workdir)
        build = workdir / "build"
        build.mkdir()
        img = build_image("1x", base, build, [""], recipe)
        if args.quick or cache is None:
            rmtree(base)
        # build_image leaves the oci-archive extracted: an OCI layout with the tag in its index
        layout = build / "inputs-1x-oci"
        registry = DockerRegistry.start(workdir / "registry", workdir / "registry" / "storage", log_level="warn")
        log(f"docker-registry on {registry.host}; pushing the image")
        run("skopeo", "--insecure-policy", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:{TAG}",
            f"docker://{registry.host}/{REPO_TAG}", env=dict(os.environ, TMPDIR=str(build)))
        notes = [
            f"image: {made}, 4 layers built with umoci (as benchmarks/load.py), gzip layers, "
            f"{img.tar_bytes / 1e6:.0f} MB as tar, {sum(x.gz_bytes for x in img.layers) / 1e6:.0f} MB gzip; "
            "pushed with `skopeo copy --dest-tls-verify=false oci:LAYOUT:bench docker://127.0.0.1:PORT/bench:latest`",
            f"registry: docker-registry {version([REGISTRY_BIN, '--version']).split()[-1]}, plain HTTP on 127.0.0.1, filesystem storage in the "
            "work directory; its CPU time is not counted in any row",
            f"kernel {platform.release()}, {os.cpu_count()} CPUs, work directory on {fs_type(workdir)}",
            f"python {platform.python_version()}, layerstore {source_version('layerstore')}",
            f"{version(['skopeo', '--version'])}; {version(['umoci', '--version'])}",
            f"{args.repeat} run(s) per contender" + (" (median)" if args.repeat > 1 else "")
            + "; caches dropped (`sync; echo 3 > drop_caches`) before every run, the registry's blob files included",
            "pull = a fresh store each run (download, verify, unpack, register); skopeo+umoci = `skopeo copy` "
            "into a new OCI layout, then `umoci unpack` into a bundle (time shown as skopeo + umoci); "
            "unpack = the store's unpacker alone on the same gzip layer files, no network",
            "MB/s = layer bytes (10^6, uncompressed tar or gzip) / wall seconds; wall+sync adds a `sync` run right "
            "after the contender exits",
            "entries = what the contender wrote: all layer directories for pull and unpack, the merged rootfs for umoci",
        ]
        if GNU_TIME is None:
            notes.append("no GNU time: peak RSS from wait4, an upper bound (a child starts from this process's RSS)")
        for n in notes:
            log(n)
        bench = Bench(args, workdir, img, registry)
        bench.run(contenders)
        if not bench.can_drop:
            notes.append("could not drop caches: the runs are not cold")
    finally:
        if registry is not None:
            registry.stop()
        clean_up(workdir, args.keep, t0)
        if bench is not None and bench.results:
            write_table(table(bench.results, img, notes), args.table)
    return 1 if bench is None or any(r.get("error") for r in bench.results) else 0


if __name__ == "__main__":
    sys.exit(main())
