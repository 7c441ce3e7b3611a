"""``manifest inspect [-v] NAME[:TAG|@DIGEST]``: a manifest or index straight from its registry.

Printed as ``docker manifest inspect`` prints it: the registry's document
indented with tabs; with ``-v`` Docker's per-image objects (``Ref``,
``Descriptor`` with the platform, ``Raw``, ``SchemaV2Manifest`` or
``OCIManifest``), an array of them for an index.
"""
from __future__ import annotations

import argparse
import sys

from layerstore import reference
from layerstore.commands.pull import add_registry_options, quiet_http_logs
from layerstore.registry.client import RegistryClient
from layerstore.registry.inspect import inspect
from layerstore.store import Store


def register(sub: argparse._SubParsersAction, name: str = "manifest") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="inspect manifests and indexes in a registry")
    manifest_sub = p.add_subparsers(dest="manifest_command", metavar="COMMAND")
    manifest_sub.required = True
    i = manifest_sub.add_parser("inspect", help="display an image manifest or index")
    i.add_argument("name", metavar="NAME[:TAG|@DIGEST]")
    i.add_argument("-v", "--verbose", action="store_true", help="per-image details: platform, raw manifest")
    i.add_argument("--insecure", action="store_true", help="allow plain HTTP to this registry")
    add_registry_options(i)
    i.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace, store: Store) -> int:
    quiet_http_logs()
    ref = reference.parse(args.name)
    insecure = [*args.insecure_registry, *([ref.domain] if args.insecure else [])]
    client = RegistryClient(ref.domain, insecure=insecure, cert_dir=args.cert_dir)
    try:
        sys.stdout.write(inspect(client, ref, args.verbose))
    finally:
        client.close()
    return 0
