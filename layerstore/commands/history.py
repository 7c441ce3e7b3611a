"""``history IMAGE``: the config's history, newest first, as ``docker history`` prints it.

The top row carries the image ID; the others show ``<missing>``, as Docker
does for pulled or loaded images (their build steps are not images here).
A layer that the history does not account for gets a row of its own.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from layerstore import queries
from layerstore.commands.images import image_id
from layerstore.formatting import Record, ellipsis, go_rfc3339, human_size, parse_time, render, step_created_since
from layerstore.platforms import from_flags
from layerstore.store import Store

TABLE = "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"
TABLE_NON_HUMAN = "table {{.ID}}\t{{.CreatedAt}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"
QUIET = "{{.ID}}"
HEADERS = {"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "CreatedBy": "CREATED BY", "Size": "SIZE", "Comment": "COMMENT"}
MISSING = "<missing>"


def register(sub: argparse._SubParsersAction, name: str = "history") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="show the history of an image")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--format", default="", help="'table', 'table TEMPLATE', 'json' or a Go template")
    p.add_argument("-H", "--human", action="store_true", default=True,
                   help="sizes and dates in human readable form (default true; -H=false for bytes and RFC 3339)")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("-q", "--quiet", action="store_true", help="only image IDs")
    p.add_argument("--platform", metavar="os[/arch[/variant]]",
                   help="the image must be for this platform (an image here holds one)")
    p.set_defaults(func=run)


@dataclass
class Step:
    created: int | None
    created_by: str
    comment: str
    size: int


def steps(store: Store, image: str) -> list[Step]:
    """History entries bottom first, each non-empty one with the size of the layer it made."""
    config = store.config(image)
    history = config.get("history") if isinstance(config, dict) else None
    layers = queries.image_layer_details(store, image)
    out: list[Step] = []
    n = 0
    for entry in history if isinstance(history, list) else []:
        if not isinstance(entry, dict):
            continue
        stamp = parse_time(entry.get("created"))
        size = 0
        if not entry.get("empty_layer"):
            size = layers[n].size if n < len(layers) else 0
            n += 1
        out.append(Step(stamp.unix if stamp else None, str(entry.get("created_by") or ""), str(entry.get("comment") or ""), size))
    if n < len(layers):  # layers the history does not describe
        stamp = parse_time(config.get("created")) if isinstance(config, dict) else None
        out.extend(Step(stamp.unix if stamp else None, "", "", layer.size) for layer in layers[n:])
    return out


def run(args: argparse.Namespace, store: Store) -> int:
    human: bool = args.human
    image = store.resolve(args.image, from_flags(args.platform))
    fmt = args.format
    if not fmt or fmt == "table":
        fmt = QUIET if args.quiet else TABLE if human else TABLE_NON_HUMAN
    records = []
    for i, step in enumerate(reversed(steps(store, image))):
        created_by = step.created_by.replace("\t", " ")
        records.append(
            Record(
                "history",
                {
                    "ID": image_id(image, args.no_trunc) if i == 0 else MISSING,
                    "CreatedSince": step_created_since(step.created) if human else go_rfc3339(step.created),
                    "CreatedAt": go_rfc3339(step.created),
                    "CreatedBy": created_by if args.no_trunc else ellipsis(created_by, 45),
                    "Size": human_size(step.size) if human else str(step.size),
                    "Comment": step.comment,
                },
                HEADERS,
            )
        )
    header = Record("history", {k: "" for k in HEADERS}, HEADERS)
    sys.stdout.write(render(fmt, records, header))
    return 0
