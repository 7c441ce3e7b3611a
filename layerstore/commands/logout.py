"""``logout [SERVER]``: forget the credentials kept for a registry (Docker Hub without a server)."""
from __future__ import annotations

import argparse
import sys

from layerstore.commands.login import server_domain
from layerstore.errors import AuthError
from layerstore.registry.auth import HUB_AUTH_KEY, DockerConfig
from layerstore.store import Store


def register(sub: argparse._SubParsersAction, name: str = "logout") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="log out from a registry")
    p.add_argument("server", nargs="?", metavar="SERVER", help="registry host[:port] (default: Docker Hub)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, store: Store) -> int:
    domain = server_domain(args.server)
    print(f"Removing login credentials for {HUB_AUTH_KEY if domain == 'docker.io' else domain}")
    try:
        DockerConfig().erase(domain)
    except AuthError as exc:  # the file forgot them: a warning, as the Docker CLI gives
        print(f"WARNING: {exc}", file=sys.stderr)
    return 0
