"""``pull NAME[:TAG|@DIGEST]``: download an image from a registry, with ``docker pull``'s output.

Progress goes to stdout as Docker prints it (one line per layer update when
stdout is not a terminal, progress bars when it is), then ``Digest:``,
``Status:`` and the full reference; with ``-q`` only the reference.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from layerstore import reference
from layerstore.errors import CommandError
from layerstore.reference import Reference
from layerstore.registry.client import RegistryClient
from layerstore.platforms import Platform
from layerstore.registry.progress import Display, PullOutput, Quiet
from layerstore.registry.pull import Puller, full_name
from layerstore.store import Store
from layerstore.usage import GO_BOOLS


def add_registry_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
        help="HTTPS without certificate checks, then plain HTTP if TLS fails, for this registry"
             " (also $LAYERSTORE_INSECURE_REGISTRIES; localhost is always plain HTTP)",
    )
    p.add_argument(
        "--cert-dir", metavar="DIR",
        help="the registry's CA certificates (*.crt) and client certificate (NAME.cert, NAME.key), as podman's option"
             " (default: its certs.d directory)",
    )


def refuse_content_trust(args: argparse.Namespace) -> None:
    """``DOCKER_CONTENT_TRUST=1`` or ``--disable-content-trust=false`` asks the Docker CLI to verify
    Notary signatures, which this tool cannot: refused rather than ignored. As the Docker CLI reads
    the variable, any value but Go's spellings of false asks for it."""
    if args.disable_content_trust is False:
        raise CommandError("content trust (--disable-content-trust=false) is not supported: image signatures cannot be"
                           " verified here")
    setting = os.environ.get("DOCKER_CONTENT_TRUST", "")
    if setting and GO_BOOLS.get(setting, True) and args.disable_content_trust is None:
        raise CommandError("content trust (DOCKER_CONTENT_TRUST) is not supported: image signatures cannot be verified"
                           " here; unset it or pass --disable-content-trust")


def add_content_trust_option(p: argparse.ArgumentParser) -> None:
    """Docker's flag, on by default; None when not given, so that the variable decides."""
    p.add_argument("--disable-content-trust", action="store_true", default=None, help=argparse.SUPPRESS)


def quiet_http_logs() -> None:
    """urllib3 logs each retry as a warning; the error that ends a command is the one line to show."""
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("urllib3").setLevel(logging.ERROR)


def register(sub: argparse._SubParsersAction, name: str = "pull") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="download an image from a registry")
    p.add_argument("name", metavar="NAME[:TAG|@DIGEST]")
    p.add_argument("-a", "--all-tags", action="store_true", help="download all tagged images in the repository")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress verbose output")
    p.add_argument("--platform", default=os.environ.get("DOCKER_DEFAULT_PLATFORM") or None,
                   help="os/arch[/variant] to pull from a multi-platform image (default: this machine's)")
    add_content_trust_option(p)
    add_registry_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, store: Store) -> int:
    refuse_content_trust(args)
    quiet_http_logs()
    ref = reference.parse(args.name, default_tag=False)
    if args.all_tags and (ref.tag or ref.digest):
        raise CommandError("tag can't be used with --all-tags/-a")
    if not args.all_tags and not ref.tag and not ref.digest:
        ref = ref.with_default_tag()
        if not args.quiet:
            print(f"Using default tag: {ref.tag}", flush=True)
    platform = Platform.parse(args.platform) if args.platform else None
    output: PullOutput = Quiet() if args.quiet else Display(sys.stdout)
    client = RegistryClient(ref.domain, insecure=args.insecure_registry, cert_dir=args.cert_dir)
    try:
        puller = Puller(store, client, output, platform, explicit_platform=platform is not None)
        if args.all_tags:
            results, failed = puller.pull_all_tags(ref)
            for tag, error in failed:  # dockerd logs these and goes on with the other tags
                print(f"Error pulling {Reference(ref.domain, ref.path, tag)}: {error}", file=sys.stderr, flush=True)
            updated = any(r.updated for r in results)
            shown, name = Reference(ref.domain, ref.path).repository, full_name(Reference(ref.domain, ref.path))
        else:
            result = puller.pull(ref)
            updated, name = result.updated, result.name
            shown = str(Reference(ref.domain, ref.path, None, ref.digest) if ref.digest else ref)
    finally:
        client.close()
    what = "Downloaded newer image" if updated else "Image is up to date"
    output.status("", f"Status: {what} for {shown}")
    print(name, flush=True)
    return 0
