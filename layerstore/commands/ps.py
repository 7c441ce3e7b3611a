"""``ps``: containers with their image, mount point and state."""
from __future__ import annotations

import argparse

from layerstore.containers import Containers
from layerstore.store import Store


def register(sub: argparse._SubParsersAction, name: str = "ps") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="list containers")
    # Docker's habit: a container here is a layer, mounted or not, and every one is listed.
    p.add_argument("-a", "--all", action="store_true", help="every container (always: unmounted ones too)")
    p.add_argument("-q", "--quiet", action="store_true", help="only IDs")
    p.add_argument("--no-trunc", action="store_true", help="full IDs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, store: Store) -> int:
    rows: list[tuple[str, ...]] = []
    containers = Containers(store)
    for c in containers.all():
        cid = c.id if args.no_trunc else c.id[:12]
        if args.quiet:
            print(cid)
            continue
        image = containers.image_of(c)
        state = "mounted" if c.mounted else "unmounted"
        rows.append((cid, image, c.mountpoint or "", state + (" (read-only)" if c.read_only else ""), c.name))
    if not args.quiet:
        print_table(("CONTAINER ID", "IMAGE", "MOUNTPOINT", "STATE", "NAMES"), rows)
    return 0


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Columns padded as Docker's tabwriter does (3 spaces)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("   ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
