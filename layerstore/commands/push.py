"""``push NAME[:TAG]``: upload an image to a registry, with ``docker push``'s output.

Progress goes to stdout as Docker prints it (a line per layer update when
stdout is not a terminal, progress bars when it is), then ``<tag>: digest:
<digest> size: <bytes>`` for each tag pushed; with ``-q`` only the reference.
``-a`` pushes every tag the store has of the repository.
"""
from __future__ import annotations

import argparse
import sys

from layerstore import reference
from layerstore.commands.pull import add_content_trust_option, add_registry_options, quiet_http_logs, refuse_content_trust
from layerstore.errors import CommandError
from layerstore.platforms import from_flags
from layerstore.reference import Reference
from layerstore.registry.client import RegistryClient
from layerstore.registry.progress import Display, PullOutput, Quiet
from layerstore.registry.pull import full_name
from layerstore.registry.push import Pusher
from layerstore.store import Store


def register(sub: argparse._SubParsersAction, name: str = "push") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="upload an image to a registry")
    p.add_argument("name", metavar="NAME[:TAG]")
    p.add_argument("-a", "--all-tags", action="store_true", help="push all tags of the repository")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress verbose output")
    p.add_argument("--platform", metavar="os[/arch[/variant]]",
                   help="the image must be for this platform (an image here holds one)")
    add_content_trust_option(p)
    add_registry_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, store: Store) -> int:
    refuse_content_trust(args)
    quiet_http_logs()
    ref = reference.parse(args.name, default_tag=False)
    if ref.digest:
        raise CommandError("cannot push a digest reference")
    if args.all_tags and ref.tag:
        raise CommandError("tag can't be used with --all-tags/-a")
    if not args.all_tags and not ref.tag:
        ref = ref.with_default_tag()
        if not args.quiet:
            print(f"Using default tag: {ref.tag}", flush=True)
    if args.platform:
        if args.all_tags:
            raise CommandError("--platform can't be used with --all-tags/-a")
        store.resolve(str(ref), from_flags(args.platform))
    output: PullOutput = Quiet() if args.quiet else Display(sys.stdout)
    client = RegistryClient(ref.domain, insecure=args.insecure_registry, cert_dir=args.cert_dir)
    try:
        pusher = Pusher(store, client, output)
        if args.all_tags:
            pusher.push_all_tags(ref)
            name = full_name(Reference(ref.domain, ref.path))
        else:
            name = pusher.push(ref).name
    finally:
        client.close()
    if args.quiet:
        print(name, flush=True)
    return 0
