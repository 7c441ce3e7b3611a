"""``load``: images from a docker-archive or OCI archive (file, directory or stdin)."""
from __future__ import annotations

import argparse
import sys

from layerstore.platforms import Platform
from layerstore.store import Store


def register(sub: argparse._SubParsersAction, name: str = "load") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="load images from a tar archive or OCI layout")
    p.add_argument("-i", "--input", default="-", help="archive file or OCI layout directory (default: stdin)")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress the load output")
    p.add_argument("--platform", metavar="os[/arch[/variant]]",
                   help="only the images for this platform (default: from an index, this machine's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, store: Store) -> int:
    if args.input == "-" and sys.stdin.isatty():
        print("Error: requested load from stdin, but stdin is empty", file=sys.stderr)
        return 1
    platform = Platform.parse(args.platform) if args.platform else None
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    for image in store.load(args.input, progress, platform):
        if image.names:
            for name in image.names:
                print(f"Loaded image: {name}")
        else:
            print(f"Loaded image ID: {image.id}")
    return 0
