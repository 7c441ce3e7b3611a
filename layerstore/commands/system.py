"""``system df [-v]``: disk usage of images, layers and containers, as ``docker system df``.

An image's SHARED SIZE is the size of its layers that another image also has
(one copy on disk), UNIQUE SIZE the rest. Images RECLAIMABLE is the size of
the layers that no image with a container uses: what removing every unused
image would free. With ``-v`` a table of layers follows the images: each
layer's size, how many images share it, and so its shared or unique size.
"""
from __future__ import annotations

import argparse
import sys

from layerstore import queries
from layerstore.commands.images import image_id
from layerstore.containers import Containers
from layerstore.errors import CommandError
from layerstore.formatting import Record, created_since, human_size, human_size4, image_created_since, render, tabwrite
from layerstore.store import Store

SUMMARY = "table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}\t{{.Reclaimable}}"
SUMMARY_HEADERS = {"Type": "TYPE", "TotalCount": "TOTAL", "Active": "ACTIVE", "Size": "SIZE", "Reclaimable": "RECLAIMABLE"}
IMAGES = "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}\t{{.SharedSize}}\t{{.UniqueSize}}\t{{.Containers}}"
IMAGE_HEADERS = {
    "Repository": "REPOSITORY", "Tag": "TAG", "ID": "IMAGE ID", "CreatedSince": "CREATED", "Size": "SIZE",
    "SharedSize": "SHARED SIZE", "UniqueSize": "UNIQUE SIZE", "Containers": "CONTAINERS",
}
LAYERS = "table {{.ID}}\t{{.Size}}\t{{.Images}}\t{{.SharedSize}}\t{{.UniqueSize}}"
LAYER_HEADERS = {"ID": "LAYER ID", "Size": "SIZE", "Images": "IMAGES", "SharedSize": "SHARED SIZE", "UniqueSize": "UNIQUE SIZE"}
CONTAINERS = "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.LocalVolumes}}\t{{.Size}}\t{{.RunningFor}}\t{{.Status}}\t{{.Names}}"
CONTAINER_HEADERS = {
    "ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND", "LocalVolumes": "LOCAL VOLUMES", "Size": "SIZE",
    "RunningFor": "CREATED", "Status": "STATUS", "Names": "NAMES",
}
VOLUMES_HEADER = "VOLUME NAME\tLINKS\tSIZE\n"
CACHE_HEADER = "CACHE ID\tCACHE TYPE\tSIZE\tCREATED\tLAST USED\tUSAGE\tSHARED\n"


def register(sub: argparse._SubParsersAction, name: str = "system") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="store-wide commands (system df)")
    system_sub = p.add_subparsers(dest="system_command", metavar="COMMAND")
    system_sub.required = True
    df = system_sub.add_parser("df", help="show disk usage")
    df.add_argument("-v", "--verbose", action="store_true", help="per image, layer and container")
    df.add_argument("--format", default="", help="'table', 'table TEMPLATE', 'json' or a Go template")
    df.set_defaults(func=run_df)


def _reclaimable(reclaimable: int, total: int) -> str:
    if total > 0:
        return f"{human_size4(reclaimable)} ({reclaimable * 100 // total}%)"
    return human_size4(reclaimable)


def _empty(headers: dict[str, str], kind: str) -> Record:
    return Record(kind, {k: "" for k in headers}, headers)


def run_df(args: argparse.Namespace, store: Store) -> int:
    if args.verbose and args.format and args.format != "table":
        raise CommandError("--format and --verbose cannot be combined")
    with queries.snapshot(store):
        images = queries.list_images(store)
        layers = queries.list_layers(store)
        known = Containers(store)
        containers = known.all()
    sizes = {c.id: queries.tree_size(known.paths(c.id)[0]) for c in containers}
    mounted = {c.id: c.mounted for c in containers}

    layers_total = sum(layer.size for layer in layers)
    layers_free = sum(layer.size for layer in layers if not layer.active)
    containers_total = sum(sizes.values())
    containers_free = sum(size for cid, size in sizes.items() if not mounted[cid])
    summary = [
        ("Images", len(images), sum(1 for i in images if i.containers), human_size4(layers_total), _reclaimable(layers_free, layers_total)),
        ("Containers", len(containers), sum(mounted.values()), human_size4(containers_total), _reclaimable(containers_free, containers_total)),
        ("Local Volumes", 0, 0, human_size4(0), human_size4(0)),
        ("Build Cache", 0, 0, human_size4(0), human_size4(0)),
    ]
    if not args.verbose:
        fmt = args.format or "table"
        fmt = SUMMARY if fmt == "table" else fmt
        records = [Record("diskUsage", dict(zip(SUMMARY_HEADERS, (t, str(n), str(a), s, r))), SUMMARY_HEADERS) for t, n, a, s, r in summary]
        sys.stdout.write(render(fmt, records, _empty(SUMMARY_HEADERS, "diskUsage")))
        return 0

    out = sys.stdout
    out.write("Images space usage:\n\n")
    image_rows = []
    for info in images:
        repo, tag = info.tags[0] if info.tags else ("<none>", "<none>")  # the first tag only, as Docker
        image_rows.append(Record("image", {
            "Repository": repo,
            "Tag": tag,
            "ID": image_id(info.id, False),
            "CreatedSince": image_created_since(info.created_unix),
            "Size": human_size(info.size),
            "SharedSize": human_size4(info.shared_size),
            "UniqueSize": human_size4(info.unique_size),
            "Containers": str(info.containers),
        }, IMAGE_HEADERS))
    out.write(render(IMAGES, image_rows, _empty(IMAGE_HEADERS, "image")))

    out.write("\nLayers space usage:\n\n")
    layer_rows = [
        Record("layer", {
            "ID": image_id(layer.diff_id, False),
            "Size": human_size4(layer.size),
            "Images": str(layer.images),
            "SharedSize": human_size4(layer.size if layer.images > 1 else 0),
            "UniqueSize": human_size4(layer.size if layer.images <= 1 else 0),
        }, LAYER_HEADERS)
        for layer in layers
    ]
    out.write(render(LAYERS, layer_rows, _empty(LAYER_HEADERS, "layer")))

    out.write("\nContainers space usage:\n\n")
    container_rows = []
    for c in containers:
        container_rows.append(Record("container", {
            "ID": c.id[:12],
            "Image": known.image_of(c),
            "Command": '""',
            "LocalVolumes": "0",
            "Size": human_size(sizes[c.id]),
            "RunningFor": created_since(c.created),
            "Status": ("mounted" if mounted[c.id] else "unmounted") + (" (read-only)" if c.read_only else ""),
            "Names": c.name,
        }, CONTAINER_HEADERS))
    out.write(render(CONTAINERS, container_rows, _empty(CONTAINER_HEADERS, "container")))

    out.write("\nLocal Volumes space usage:\n\n")
    out.write(tabwrite(VOLUMES_HEADER))
    out.write(f"\nBuild cache usage: {human_size4(0)}\n\n")
    out.write(tabwrite(CACHE_HEADER))
    return 0
