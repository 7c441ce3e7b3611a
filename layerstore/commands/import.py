"""``import [-c CHANGE]... [-m MESSAGE] [--platform P] FILE|URL|- [REPOSITORY[:TAG]]``: an image of one
layer from a filesystem tarball; prints its ID, as ``docker import`` does."""
from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import BinaryIO

from layerstore.errors import NotFound, TransportError
from layerstore.platforms import Platform
from layerstore.store import Store
from layerstore.tarimport import import_tarball, is_url, tarball_subject


def register(sub: argparse._SubParsersAction, name: str = "import") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="import the contents of a tarball to create a filesystem image")
    p.add_argument("source", metavar="FILE|URL|-")
    p.add_argument("repository", nargs="?", metavar="REPOSITORY[:TAG]")
    p.add_argument("-c", "--change", action="append", default=[],
                   help="apply a Dockerfile instruction to the image (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, "
                        "STOPSIGNAL, USER, VOLUME, WORKDIR)")
    p.add_argument("-m", "--message", help="commit message for the imported image")
    p.add_argument("--platform", help="os/arch[/variant] of the image (default: this machine's)")
    p.set_defaults(func=run)


@contextlib.contextmanager
def _opened(source: str) -> Iterator[BinaryIO]:
    if source == "-":
        yield sys.stdin.buffer
    elif is_url(source):
        import requests

        try:
            with requests.get(source, stream=True, timeout=(15, 60)) as response:
                if response.status_code != 200:
                    status = f"HTTP {response.status_code} {response.reason or ''}".strip()
                    raise TransportError(tarball_subject(source), status)
                response.raw.decode_content = True
                yield response.raw
        except requests.RequestException as exc:
            from layerstore.registry.client import describe_failure

            raise TransportError(tarball_subject(source), f"unreachable ({describe_failure(exc)})") from None
    else:
        try:
            f = open(source, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise NotFound(tarball_subject(source), "no such file") from None
        with f:
            yield f


def run(args: argparse.Namespace, store: Store) -> int:
    platform = Platform.parse(args.platform) if args.platform else None
    with _opened(args.source) as stream:
        imported = import_tarball(store, stream, source=args.source, name=args.repository, message=args.message,
                                  changes=args.change, platform=platform)
    print(imported.id)
    return 0
