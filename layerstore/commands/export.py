"""``export [-o FILE] CONTAINER``: a container's filesystem as one tar archive, as ``docker export`` writes it."""
from __future__ import annotations

import argparse
import sys

from layerstore.commands.save import check_output
from layerstore.commit import export_rootfs
from layerstore.export import output_file
from layerstore.store import Store


def register(sub: argparse._SubParsersAction, name: str = "export") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="export a container's filesystem as a tar archive (stdout by default)")
    p.add_argument("container")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, store: Store) -> int:
    check_output(args.output, "failed to export container")
    with output_file(args.output, sys.stdout.buffer) as out:
        export_rootfs(store, args.container, out)
    return 0
