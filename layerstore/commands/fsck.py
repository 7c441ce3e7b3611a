"""``fsck [--repair] [--max DURATION]``: check the store; exit 0 clean, 1 all repaired, 4 problems left."""
from __future__ import annotations

import argparse
import sys

from layerstore import fsck
from layerstore.errors import CommandError
from layerstore.queries import parse_duration
from layerstore.store import Store


def register(sub: argparse._SubParsersAction, name: str = "fsck") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="check blobs, layers and metadata; --repair what cannot be trusted")
    p.add_argument("--repair", action="store_true", help="remove what is wrong, unpack layers again from good blobs")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the problems")
    p.add_argument("-m", "--max", metavar="DURATION",
                   help="layers and blobs that no image uses are problems once older than this (default 24h; 0: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, store: Store) -> int:
    tty = sys.stderr.isatty() and not args.quiet

    def progress(message: str) -> None:
        if tty:
            sys.stderr.write(f"\r\033[K{message}")
            sys.stderr.flush()

    max_age = fsck.MAX_AGE if args.max is None else parse_duration(args.max)
    if max_age is None:
        raise CommandError(f"invalid --max {args.max!r}: not a duration (for example 24h, 90m, 0)")
    report = fsck.check(store, repair=args.repair, progress=progress, max_age=max_age)
    if tty:
        sys.stderr.write("\r\033[K")
    for finding in report.findings:
        print(finding)
    if report.busy:
        print("a load or pull is running: its work in progress was not judged", file=sys.stderr)
    if not args.quiet or report.findings:
        print(report.summary())
    return report.exit_code
