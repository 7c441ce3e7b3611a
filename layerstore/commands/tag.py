"""``tag SOURCE TARGET``."""
from __future__ import annotations

import argparse

from layerstore.store import Store


def register(sub: argparse._SubParsersAction, name: str = "tag") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="create a tag TARGET that refers to SOURCE")
    p.add_argument("source")
    p.add_argument("target")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, store: Store) -> int:
    store.tag(args.source, args.target)
    return 0
