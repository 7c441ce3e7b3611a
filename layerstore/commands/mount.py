"""``mount IMAGE MOUNTPOINT``: a container layer over the image, mounted with unionfs;
``mount CONTAINER``: an unmounted container mounted again, as ``podman mount`` does."""
from __future__ import annotations

import argparse

from layerstore.containers import SAFE_OPTIONS, Containers
from layerstore.errors import CommandError, InvalidReference, NotFound
from layerstore.store import Store


def register(sub: argparse._SubParsersAction, name: str = "mount") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="mount an image's rootfs with a writable container layer")
    p.add_argument("image", metavar="IMAGE|CONTAINER")
    p.add_argument("mountpoint", nargs="?", metavar="MOUNTPOINT",
                   help="where a new container goes; without it, CONTAINER is mounted again where it was")
    p.add_argument("--name", help="container name")
    p.add_argument("--read-only", action="store_true", help="no container layer: a read-only rootfs")
    p.add_argument("--allow-setuid", action="store_true", help="honour set-id bits and device nodes (default: nosuid,nodev)")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users in, subject to modes and ACLs (default: only the mounting user; FUSE's allow_other)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, store: Store) -> int:
    options = (() if args.allow_setuid else SAFE_OPTIONS) + (("allow_other",) if args.allow_other else ())
    containers = Containers(store)
    if args.mountpoint is None:
        if args.name or args.read_only:
            raise CommandError("--name and --read-only make a new container: mount IMAGE MOUNTPOINT")
        _is_a_container(containers, store, args.image)
        container = containers.remount(args.image, options=options)
    else:
        container = containers.create_and_mount(args.image, args.mountpoint, name=args.name, read_only=args.read_only, options=options)
    print(container.name)
    return 0


def _is_a_container(containers: Containers, store: Store, text: str) -> None:
    """NotFound for a name that is no container; said plainly when it is an image."""
    try:
        containers.get(text)
    except NotFound as no_container:
        try:
            store.resolve(text)
        except (NotFound, InvalidReference):
            raise no_container from None
        raise CommandError(f"{text} is an image, not a container: a new container needs a MOUNTPOINT") from None
