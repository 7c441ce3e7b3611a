"""``manifest create|annotate|inspect|push|rm``: Docker's manifest lists, daemonless.

``create LIST IMAGE...`` gathers images' manifests from their registry into
a local list (``$DOCKER_CONFIG/manifests``, shared with the Docker CLI, see
``registry.manifestlists``), each with the platform its config names;
``annotate`` changes that platform; ``push`` sends the list to its registry
as an index; ``rm`` forgets it. ``inspect NAME`` shows a local list of that
name if there is one, else the registry's manifest or index, printed as
``docker manifest inspect`` prints it: the registry's document indented
with tabs; with ``-v`` Docker's per-image objects (``Ref``, ``Descriptor``
with the platform, ``Raw``, ``SchemaV2Manifest`` or ``OCIManifest``), an
array of them for a list. ``inspect LIST IMAGE`` shows one image of a local list.
"""
from __future__ import annotations

import argparse
import sys

from layerstore import reference
from layerstore.commands.pull import add_registry_options, quiet_http_logs
from layerstore.errors import AlreadyExists, InvalidReference, LayerStoreError, NotFound
from layerstore.reference import Reference
from layerstore.registry.client import RegistryClient
from layerstore.registry.inspect import image_manifest, inspect, show_local_image, show_local_list
from layerstore.registry.listpush import push_list
from layerstore.registry.manifestlists import ImageManifest, ManifestLists
from layerstore.platforms import KNOWN_ARCH, KNOWN_OS
from layerstore.registry.pull import full_name
from layerstore.store import Store


def register(sub: argparse._SubParsersAction, name: str = "manifest") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="manage manifest lists and inspect manifests (create, annotate, inspect, push, rm)")
    manifest_sub = p.add_subparsers(dest="manifest_command", metavar="COMMAND")
    manifest_sub.required = True

    c = manifest_sub.add_parser("create", help="create a local manifest list for annotating and pushing to a registry")
    c.add_argument("list", metavar="MANIFEST_LIST")
    c.add_argument("images", nargs="+", metavar="MANIFEST")
    c.add_argument("-a", "--amend", action="store_true", help="amend an existing manifest list")
    c.add_argument("--insecure", action="store_true", help="allow communication with an insecure registry")
    add_registry_options(c)
    c.set_defaults(func=run_create)

    a = manifest_sub.add_parser("annotate", help="add platform information to an image of a local manifest list")
    a.add_argument("list", metavar="MANIFEST_LIST")
    a.add_argument("image", metavar="MANIFEST")
    a.add_argument("--os", default="", help="set operating system")
    a.add_argument("--arch", default="", help="set architecture")
    a.add_argument("--os-version", default="", help="set operating system version")
    a.add_argument("--os-features", action="append", default=[], metavar="FEATURE[,FEATURE...]",
                   help="add operating system features")
    a.add_argument("--variant", default="", help="set architecture variant")
    a.set_defaults(func=run_annotate)

    i = manifest_sub.add_parser("inspect", help="display an image manifest, or manifest list",
                                usage="layerstore manifest inspect [OPTIONS] [MANIFEST_LIST] MANIFEST")
    i.add_argument("name", metavar="NAME", help="a list or image, or a local list when an image of it follows")
    i.add_argument("image", nargs="?", metavar="MANIFEST", help="an image of the local list NAME")
    i.add_argument("-v", "--verbose", action="store_true", help="per-image details: platform, raw manifest")
    i.add_argument("--insecure", action="store_true", help="allow communication with an insecure registry")
    add_registry_options(i)
    i.set_defaults(func=run_inspect)

    u = manifest_sub.add_parser("push", help="push a manifest list to a repository")
    u.add_argument("list", metavar="MANIFEST_LIST")
    u.add_argument("-p", "--purge", action="store_true", help="remove the local manifest list after push")
    u.add_argument("--insecure", action="store_true", help="allow push to an insecure registry")
    add_registry_options(u)
    u.set_defaults(func=run_push)

    r = manifest_sub.add_parser("rm", help="delete one or more manifest lists from local storage")
    r.add_argument("lists", nargs="+", metavar="MANIFEST_LIST")
    r.set_defaults(func=run_rm)


def _named(text: str) -> tuple[Reference, str]:
    """A reference with Docker's default tag, and its full form (the name a local list goes by)."""
    ref = reference.parse(text)
    return ref, full_name(ref)


def _list_name(text: str) -> tuple[Reference, str]:
    ref, full = _named(text)
    if ref.digest:
        raise InvalidReference(f"manifest list {text}", "a manifest list is named by a tag, not a digest")
    return ref, full


class _Clients(dict[str, RegistryClient]):
    """One client per registry, made when first asked for (``--insecure`` is for each of them)."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.args = args

    def __missing__(self, domain: str) -> RegistryClient:
        insecure = [*self.args.insecure_registry, *([domain] if self.args.insecure else [])]
        client = self[domain] = RegistryClient(domain, insecure=insecure, cert_dir=self.args.cert_dir)
        return client

    def __enter__(self) -> _Clients:
        quiet_http_logs()
        return self

    def __exit__(self, *exc: object) -> None:
        for client in self.values():
            client.close()


def run_create(args: argparse.Namespace, store: Store) -> int:
    _, list_full = _list_name(args.list)
    lists = ManifestLists()
    amending = lists.exists(list_full)
    if amending and not args.amend:
        raise AlreadyExists(f"manifest list {list_full}", "exists already; refusing to amend it without --amend")
    images: list[ImageManifest] = []
    with _Clients(args) as clients:
        for text in args.images:
            ref, full = _named(text)
            kept = _kept(lists, list_full, full) if amending else None
            images.append(kept or image_manifest(clients[ref.domain], ref))
    if amending:
        for image in images:
            lists.save(list_full, image)
    else:
        lists.create(list_full, images)
    print(f"Created manifest list {list_full}")
    return 0


def _kept(lists: ManifestLists, list_full: str, full: str) -> ImageManifest | None:
    """An image the list has already (as annotated), which amending keeps as Docker keeps it."""
    try:
        return lists.get(list_full, full)
    except NotFound:
        return None


def run_annotate(args: argparse.Namespace, store: Store) -> int:
    _, list_full = _list_name(args.list)
    _, image_full = _named(args.image)
    lists = ManifestLists()
    image = lists.get(list_full, image_full)
    platform = image.platform
    for key, value in (("os", args.os), ("architecture", args.arch), ("os.version", args.os_version), ("variant", args.variant)):
        if value:
            platform[key] = value
    features = list(platform.get("os.features") or [])
    for feature in (f for given in args.os_features for f in given.split(",")):
        if feature and feature not in features:
            features.append(feature)
    if features:
        platform["os.features"] = features
    os_name, arch = platform.get("os", ""), platform.get("architecture", "")
    if os_name not in KNOWN_OS or arch not in KNOWN_ARCH:
        raise InvalidReference(f"manifest {image_full}", f"unsupported os/arch combination: {os_name}/{arch}")
    lists.save(list_full, image.with_platform(platform))
    return 0


def run_inspect(args: argparse.Namespace, store: Store) -> int:
    lists = ManifestLists()
    if args.image is not None:
        _, list_full = _list_name(args.name)
        _, image_full = _named(args.image)
        sys.stdout.write(show_local_image(lists.get(list_full, image_full), args.verbose))
        return 0
    ref, full = _named(args.name)
    if not ref.digest and lists.exists(full):
        sys.stdout.write(show_local_list(full, lists.images(full), args.verbose))
        return 0
    with _Clients(args) as clients:
        sys.stdout.write(inspect(clients[ref.domain], ref, args.verbose))
    return 0


def run_push(args: argparse.Namespace, store: Store) -> int:
    ref, list_full = _list_name(args.list)
    lists = ManifestLists()
    images = lists.images(list_full)
    with _Clients(args) as clients:
        digest = push_list(clients[ref.domain], ref, images, print)
    print(digest)
    if args.purge:
        lists.remove(list_full)
    return 0


def run_rm(args: argparse.Namespace, store: Store) -> int:
    lists = ManifestLists()
    status = 0
    for text in args.lists:
        try:
            lists.remove(_list_name(text)[1])
        except LayerStoreError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            status = 1
    return status
