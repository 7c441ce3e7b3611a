"""``diff CONTAINER``: ``A``/``C``/``D`` lines as ``docker diff`` prints them."""
from __future__ import annotations

import argparse

from layerstore.containers import Containers
from layerstore.store import Store


def register(sub: argparse._SubParsersAction, name: str = "diff") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="changes in a container's layer")
    p.add_argument("container")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, store: Store) -> int:
    for kind, path in Containers(store).diff(args.container):
        print(f"{kind} {path}")
    return 0
