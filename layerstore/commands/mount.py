"""``mount IMAGE MOUNTPOINT``: a container layer over the image, mounted with unionfs."""
from __future__ import annotations

import argparse

from layerstore.containers import SAFE_OPTIONS, Containers
from layerstore.store import Store


def register(sub: argparse._SubParsersAction, name: str = "mount") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="mount an image's rootfs with a writable container layer")
    p.add_argument("image")
    p.add_argument("mountpoint")
    p.add_argument("--name", help="container name")
    p.add_argument("--read-only", action="store_true", help="no container layer: a read-only rootfs")
    p.add_argument("--allow-setuid", action="store_true", help="honour set-id bits and device nodes (default: nosuid,nodev)")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users in, subject to modes and ACLs (default: only the mounting user; FUSE's allow_other)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, store: Store) -> int:
    options = (() if args.allow_setuid else SAFE_OPTIONS) + (("allow_other",) if args.allow_other else ())
    container = Containers(store).create_and_mount(args.image, args.mountpoint, name=args.name, read_only=args.read_only, options=options)
    print(container.name)
    return 0
