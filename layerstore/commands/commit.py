"""``commit CONTAINER [REPOSITORY[:TAG]]``: a new image from a container's changes; prints its ID."""
from __future__ import annotations

import argparse

from layerstore.commit import commit
from layerstore.store import Store


def register(sub: argparse._SubParsersAction, name: str = "commit") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="create a new image from a container's changes")
    p.add_argument("container")
    p.add_argument("repository", nargs="?", metavar="REPOSITORY[:TAG]")
    p.add_argument("-m", "--message", help="commit message")
    p.add_argument("-a", "--author", help='author (e.g. "Jane Doe <jane@example.com>")')
    p.add_argument("-c", "--change", action="append", default=[],
                   help="apply a Dockerfile instruction to the image (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, "
                        "STOPSIGNAL, USER, VOLUME, WORKDIR)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, store: Store) -> int:
    result = commit(store, args.container, args.repository, message=args.message, author=args.author,
                    changes=args.change)
    print(result.id)
    return 0
