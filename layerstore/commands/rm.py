"""``rm CONTAINER...``: remove containers and their layers."""
from __future__ import annotations

import argparse
import sys

from layerstore.containers import Containers
from layerstore.errors import LayerStoreError
from layerstore.store import Store


def register(sub: argparse._SubParsersAction, name: str = "rm") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="remove containers")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.add_argument("-f", "--force", action="store_true", help="unmount first if mounted")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, store: Store) -> int:
    status = 0
    for text in args.containers:
        try:
            print(Containers(store).remove(text, force=args.force).name)
        except LayerStoreError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            status = 1
    return status
