"""``save IMAGE... [-o FILE] [--format docker-archive|oci-archive]``: images as a tar archive."""
from __future__ import annotations

import argparse
import os
import sys

from layerstore.export import DOCKER_ARCHIVE, FORMATS, save
from layerstore.errors import CommandError
from layerstore.platforms import Platform
from layerstore.store import Store


def register(sub: argparse._SubParsersAction, name: str = "save") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="save images to a tar archive (stdout by default)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.add_argument("--format", choices=FORMATS, default=DOCKER_ARCHIVE, help="archive format (default: %(default)s)")
    p.add_argument("--platform", metavar="os[/arch[/variant]]",
                   help="each image must be for this platform (an image here holds one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, store: Store) -> int:
    platform = Platform.parse(args.platform) if args.platform else None
    check_output(args.output)
    save(store, args.images, args.output, sys.stdout.buffer, args.format, platform)
    return 0


def check_output(path: str | None, failed: str = "failed to save image") -> None:
    """Where an archive goes, checked before any work, in Docker's words: stdout unless it
    is a terminal, else -o as ``ValidateOutputPath`` checks it."""
    if path is None:
        if sys.stdout.isatty():
            raise CommandError("cowardly refusing to save to a terminal. Use the -o flag or redirect")
        return
    parent = os.path.dirname(path)
    if parent and not os.path.exists(parent):
        raise CommandError(f'{failed}: invalid output path: directory "{parent}" does not exist')
    if parent and not os.path.isdir(parent):
        raise CommandError(f'{failed}: invalid output path: "{parent}" is not a directory')
    if os.path.isdir(path):
        raise CommandError(f'{failed}: invalid output path: "{path}" is a directory')
