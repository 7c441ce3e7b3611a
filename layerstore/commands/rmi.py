"""``rmi IMAGE...``: untag and delete, printing Docker's ``Untagged:``/``Deleted:`` lines."""
from __future__ import annotations

import argparse
import sys

from layerstore.errors import LayerStoreError
from layerstore.platforms import from_flags
from layerstore.store import Store


def register(sub: argparse._SubParsersAction, name: str = "rmi") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="remove one or more images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-f", "--force", action="store_true", help="force removal")
    p.add_argument("--no-prune", action="store_true", help="do not delete untagged parents (layers stay)")
    p.add_argument("--platform", action="append", default=[], metavar="os[/arch[/variant]]",
                   help="remove only an image for one of these platforms (repeated, or comma-separated)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, store: Store) -> int:
    status = 0
    platforms = from_flags(args.platform)
    for image in args.images:
        try:
            for event, subject in store.rmi(image, force=args.force, prune=not args.no_prune, platforms=platforms):
                print(f"{event}: {subject}")
        except LayerStoreError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            status = 1
    return status
