"""``prune`` / ``image prune``: remove dangling images (``-a``: every image no container uses).

Dangling means no tag, no repo digest and no container, as Docker's prune
reads it. The output is Docker's: ``Deleted Images:``, ``untagged:`` and
``deleted:`` lines, and ``Total reclaimed space:`` (the unpacked size of the
layers that no image has any more). Without ``-f`` it asks on a terminal;
with no terminal to ask on, it refuses.
"""
from __future__ import annotations

import argparse
import sys

from layerstore import queries
from layerstore.errors import CommandError, LayerStoreError, NotFound
from layerstore.formatting import human_size4
from layerstore.store import Store

DANGLING_WARNING = "WARNING! This will remove all dangling images.\nAre you sure you want to continue?"
ALL_WARNING = "WARNING! This will remove all images without at least one container associated to them.\nAre you sure you want to continue?"
PRUNE_FILTERS = ("until", "label", "label!")


def register(sub: argparse._SubParsersAction, name: str = "prune") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="remove unused images")
    p.add_argument("-a", "--all", action="store_true", help="remove all unused images, not just dangling ones")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    p.add_argument("--filter", action="append", metavar="FILTER", help="until=TIME, label=KEY[=VALUE], label!=KEY[=VALUE]")
    p.set_defaults(func=run)


def confirm(message: str) -> bool:
    """Docker's ``PromptForConfirmation``: ``[y/N]``, only y or Y is yes."""
    sys.stdout.write(message + " [y/N] ")
    sys.stdout.flush()
    answer = sys.stdin.readline().strip()
    return answer.lower() == "y"


def candidates(store: Store, remove_all: bool, filters: dict[str, list[str]]) -> list[queries.ImageInfo]:
    until = [queries.parse_until(v) for v in filters.get("until", [])]
    out = []
    for info in queries.list_images(store):
        if info.containers:
            continue
        if not remove_all and (info.tags or info.digests):
            continue
        if until and (info.created is None or any(not info.created.unix < u for u in until)):
            continue
        if filters.get("label") or filters.get("label!"):
            have = queries.labels(store, info.id)
            if filters.get("label") and not queries.labels_match(have, filters["label"]):
                continue
            if any(queries.labels_match(have, [item]) for item in filters.get("label!", [])):
                continue
        out.append(info)
    return list(reversed(out))  # oldest first


def run(args: argparse.Namespace, store: Store) -> int:
    filters = queries.parse_filters(args.filter, PRUNE_FILTERS)
    if not args.force:
        if sys.stdin is None or not sys.stdin.isatty():
            raise CommandError("prune asks for confirmation on a terminal; use -f to prune without one")
        if not confirm(ALL_WARNING if args.all else DANGLING_WARNING):
            return 0
    before = {layer.diff_id: layer.size for layer in queries.list_layers(store) if layer.images}
    events: list[tuple[str, str]] = []
    status = 0
    for info in candidates(store, args.all, filters):
        try:
            for repo, tag in info.tags[:-1]:  # by name while other tags remain: only untags
                events.extend(store.rmi(f"{repo}:{tag}", prune=False))
            events.extend(store.rmi(info.id, prune=False))
        except NotFound:  # removed meanwhile by another process: what prune wanted
            continue
        except LayerStoreError as exc:  # changed meanwhile (a new container, say): keep it
            print(f"Error: {exc}", file=sys.stderr)
            status = 1
    store.prune_unreferenced()
    after = {layer.diff_id for layer in queries.list_layers(store) if layer.images}
    reclaimed = sum(size for diff_id, size in before.items() if diff_id not in after)
    if events:
        lines = "".join(f"{event.lower()}: {subject}\n" for event, subject in events)
        print("Deleted Images:\n" + lines)
    print(f"Total reclaimed space: {human_size4(reclaimed)}")
    return status
