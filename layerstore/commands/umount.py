"""``umount CONTAINER|MOUNTPOINT``: unmount; the container and its layer stay."""
from __future__ import annotations

import argparse

from layerstore.containers import Containers
from layerstore.store import Store


def register(sub: argparse._SubParsersAction, name: str = "umount") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="unmount a container's rootfs")
    p.add_argument("container", metavar="CONTAINER|MOUNTPOINT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, store: Store) -> int:
    Containers(store).umount(args.container)
    return 0
