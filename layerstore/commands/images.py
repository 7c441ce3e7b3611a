"""``images [REPOSITORY[:TAG]]``: one row per repository and tag, newest first, as ``docker images``."""
from __future__ import annotations

import argparse
import sys

from layerstore import queries
from layerstore.errors import LayerStoreError
from layerstore.formatting import (
    RAW,
    Record,
    go_time_string,
    human_size,
    human_size4,
    image_created_since,
    is_table,
    render,
)
from layerstore.queries import ImageInfo
from layerstore.registry.auth import DockerConfig, config_path
from layerstore.store import Store

# An image without a date has an empty CreatedSince, which the default tables show as N/A.
_CREATED = "{{if .CreatedSince }}{{.CreatedSince}}{{else}}N/A{{end}}"
TABLE = "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t" + _CREATED + "\t{{.Size}}"
TABLE_DIGESTS = "table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t" + _CREATED + "\t{{.Size}}"
QUIET = "{{.ID}}"
# --format raw, as Docker's NewImageFormat spells it (one blank line ends each image).
_RAW_HEAD = "repository: {{ .Repository }}\ntag: {{.Tag}}\n"
_RAW_TAIL = "image_id: {{.ID}}\ncreated_at: {{.CreatedAt}}\nvirtual_size: {{.Size}}\n"
RAW_FORMAT = _RAW_HEAD + _RAW_TAIL
RAW_DIGESTS = _RAW_HEAD + "digest: {{.Digest}}\n" + _RAW_TAIL
RAW_QUIET = "image_id: {{.ID}}"
HEADERS = {
    "ID": "IMAGE ID",
    "Repository": "REPOSITORY",
    "Tag": "TAG",
    "Digest": "DIGEST",
    "CreatedSince": "CREATED",
    "CreatedAt": "CREATED AT",
    "Size": "SIZE",
    "Containers": "CONTAINERS",
    "VirtualSize": "SIZE",
    "SharedSize": "SHARED SIZE",
    "UniqueSize": "UNIQUE SIZE",
}
NONE = "<none>"


def register(sub: argparse._SubParsersAction, name: str = "images") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="list images")
    p.add_argument("repository", nargs="?", metavar="REPOSITORY[:TAG]", help="only this repository (a reference pattern)")
    p.add_argument("-a", "--all", action="store_true", help="show all images (the store keeps no intermediate images: the same list)")
    p.add_argument("--digests", action="store_true", help="show digests")
    p.add_argument("-f", "--filter", action="append", metavar="FILTER",
                   help="dangling=true|false, before=IMAGE, since=IMAGE, reference=PATTERN, label=KEY[=VALUE], until=TIME")
    p.add_argument("--format", default="", help="'table', 'table TEMPLATE', 'json', 'raw' or a Go template")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("-q", "--quiet", action="store_true", help="only image IDs (each once)")
    p.set_defaults(func=run)


def image_id(full: str, no_trunc: bool) -> str:
    """Docker's ``stringid.TruncateID`` unless --no-trunc."""
    if no_trunc:
        return full
    return full.partition(":")[2][:12] if ":" in full else full[:12]


def record(info: ImageInfo, repo: str, tag: str, digest: str, no_trunc: bool) -> Record:
    unix = info.created_unix
    return Record(
        "image",
        {
            "Containers": str(info.containers),
            "CreatedAt": go_time_string(unix),
            "CreatedSince": image_created_since(unix),
            "Digest": digest,
            "ID": image_id(info.id, no_trunc),
            "Repository": repo,
            "SharedSize": human_size4(info.shared_size),
            "Size": human_size(info.size),
            "Tag": tag,
            "UniqueSize": human_size4(info.unique_size),
            "VirtualSize": human_size4(info.size),
        },
        HEADERS,
    )


def empty_record() -> Record:
    return Record("image", {k: "" for k in HEADERS}, HEADERS)


def rows(info: ImageInfo, show_digests: bool, no_trunc: bool) -> list[Record]:
    """Docker's ``imageFormatTaggedAndDigest``: tag rows (times digests), then digest-only repositories."""
    if not info.tags and not info.digests:
        return [record(info, NONE, NONE, NONE, no_trunc)]
    out: list[Record] = []
    tagged = {repo for repo, _ in info.tags}
    for repo, tag in info.tags:
        digests = info.digests.get(repo, []) if show_digests else []
        for digest in digests or [NONE]:
            out.append(record(info, repo, tag, digest, no_trunc))
    for repo in sorted(set(info.digests) - tagged):
        if show_digests:
            out.extend(record(info, repo, NONE, d, no_trunc) for d in info.digests[repo])
        else:
            out.append(record(info, repo, NONE, "", no_trunc))
    return out


def configured_format() -> str:
    """``imagesFormat`` from the Docker CLI's ``config.json``, the format ``docker images``
    uses when none is given (and not ``-q``). A file it cannot read is a warning, as the
    Docker CLI gives, and the default table is used."""
    path = config_path()
    try:
        value = DockerConfig(path).doc.get("imagesFormat")
    except LayerStoreError as exc:
        problem = exc.problem
    except OSError as exc:
        problem = exc.strerror or str(exc)
    else:
        return value if isinstance(value, str) else ""
    print(f"WARNING: Error loading config file: {path}: {problem}", file=sys.stderr)
    return ""


def run(args: argparse.Namespace, store: Store) -> int:
    filters = queries.parse_filters(args.filter, queries.IMAGE_FILTERS)
    if args.repository:
        filters.setdefault("reference", []).append(args.repository)
    images = queries.filter_images(store, queries.list_images(store), filters)
    fmt = args.format or ("" if args.quiet else configured_format()) or "table"
    if fmt == "table":
        fmt = QUIET if args.quiet else TABLE_DIGESTS if args.digests else TABLE
    elif fmt == RAW:
        fmt = RAW_QUIET if args.quiet else RAW_DIGESTS if args.digests else RAW_FORMAT
    elif is_table(fmt) and args.digests and "{{.Digest}}" not in fmt:
        fmt += "\t{{.Digest}}"
    show_digests = args.digests or "{{.Digest}}" in fmt  # Docker's needDigest: that spelling only
    records = [r for info in images for r in rows(info, show_digests, args.no_trunc)]
    if fmt in (QUIET, RAW_QUIET):  # IDs once each, so that `rmi $(images -q)` names every image once
        unique: dict[str, Record] = {}
        for r in records:
            unique.setdefault(r.fields["ID"], r)
        records = list(unique.values())
    sys.stdout.write(render(fmt, records, empty_record()))
    return 0
