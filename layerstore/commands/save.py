"""``save IMAGE... [-o FILE] [--format docker-archive|oci-archive]``: images as a tar archive."""
from __future__ import annotations

import argparse
import sys

from layerstore.export import DOCKER_ARCHIVE, FORMATS, save
from layerstore.store import Store


def register(sub: argparse._SubParsersAction, name: str = "save") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="save images to a tar archive (stdout by default)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.add_argument("--format", choices=FORMATS, default=DOCKER_ARCHIVE, help="archive format (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, store: Store) -> int:
    if args.output is None and sys.stdout.isatty():
        print("Error: cowardly refusing to save to a terminal. Use the -o flag or redirect", file=sys.stderr)
        return 1
    save(store, args.images, args.output, sys.stdout.buffer, args.format)
    return 0
