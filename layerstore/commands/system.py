"""``system df [-v]``: disk usage of images, layers and containers, as ``docker system df``.

An image's SHARED SIZE is the size of its layers that another image also has
(one copy on disk), UNIQUE SIZE the rest. Images RECLAIMABLE is the size of
the layers that no image with a container uses: what removing every unused
image would free. With ``-v`` a table of layers follows the images: each
layer's size, how many images share it, and so its shared or unique size.

``--format raw`` prints Docker's ``key: value`` lines. With ``-v``, a format
other than ``table`` runs once over the whole, as Docker's does: ``.Images``,
``.Containers``, ``.Volumes`` and ``.BuildCache`` (always empty here), and
this tool's ``.Layers``; IDs are cut short only in a table.
"""
from __future__ import annotations

import argparse
import sys

from layerstore import queries
from layerstore.commands.images import NONE, RAW_DIGESTS, image_id
from layerstore.commands.images import empty_record as empty_image_record
from layerstore.commands.images import record as image_record
from layerstore.containers import Container, Containers
from layerstore.formatting import (
    RAW,
    Record,
    created_since,
    go_time_string,
    human_size,
    human_size4,
    is_table,
    prepare,
    render,
    tabwrite,
)
from layerstore.gofmt import GoStruct
from layerstore.gotemplate import Template
from layerstore.queries import ImageInfo, LayerInfo
from layerstore.store import Store

SUMMARY = "table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}\t{{.Reclaimable}}"
SUMMARY_HEADERS = {"Type": "TYPE", "TotalCount": "TOTAL", "Active": "ACTIVE", "Size": "SIZE", "Reclaimable": "RECLAIMABLE"}
IMAGES = "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}\t{{.SharedSize}}\t{{.UniqueSize}}\t{{.Containers}}"
LAYERS = "table {{.ID}}\t{{.Size}}\t{{.Images}}\t{{.SharedSize}}\t{{.UniqueSize}}"
LAYER_HEADERS = {"ID": "LAYER ID", "Size": "SIZE", "Images": "IMAGES", "SharedSize": "SHARED SIZE", "UniqueSize": "UNIQUE SIZE"}
CONTAINERS = "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.LocalVolumes}}\t{{.Size}}\t{{.RunningFor}}\t{{.Status}}\t{{.Names}}"
CONTAINER_HEADERS = {
    "ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND", "LocalVolumes": "LOCAL VOLUMES", "Size": "SIZE",
    "RunningFor": "CREATED", "Status": "STATUS", "Names": "NAMES",
}
# --format raw, as Docker's NewDiskUsageFormat spells it; with -v its image and container
# blocks (Docker's raw image format with digests, and container format with sizes), and
# this tool's layers between them as in the table. Volumes and build cache: there are none.
SUMMARY_RAW = "type: {{.Type}}\ntotal: {{.TotalCount}}\nactive: {{.Active}}\nsize: {{.Size}}\nreclaimable: {{.Reclaimable}}\n"
VERBOSE_RAW = (
    "{{range .Images}}type: Image\n" + RAW_DIGESTS + "\n{{end -}}\n"
    "{{range .Layers}}type: Layer\nlayer_id: {{.ID}}\nsize: {{.Size}}\nimages: {{.Images}}\n"
    "shared_size: {{.SharedSize}}\nunique_size: {{.UniqueSize}}\n\n{{end -}}\n"
    "{{range .Containers}}type: Container\ncontainer_id: {{.ID}}\nimage: {{.Image}}\ncommand: {{.Command}}\n"
    "created_at: {{.CreatedAt}}\nstate: {{- pad .State 1 0}}\nstatus: {{- pad .Status 1 0}}\nnames: {{.Names}}\n"
    "labels: {{- pad .Labels 1 0}}\nports: {{- pad .Ports 1 0}}\nsize: {{.Size}}\n\n{{end -}}\n"
)
VOLUMES_HEADER = "VOLUME NAME\tLINKS\tSIZE\n"
CACHE_HEADER = "CACHE ID\tCACHE TYPE\tSIZE\tCREATED\tLAST USED\tUSAGE\tSHARED\n"


def register(sub: argparse._SubParsersAction, name: str = "system") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="store-wide commands (system df)")
    system_sub = p.add_subparsers(dest="system_command", metavar="COMMAND")
    system_sub.required = True
    df = system_sub.add_parser("df", help="show disk usage")
    df.add_argument("-v", "--verbose", action="store_true", help="per image, layer and container")
    df.add_argument("--format", default="", help="'table', 'table TEMPLATE', 'json', 'raw' or a Go template")
    df.set_defaults(func=run_df)


def _reclaimable(reclaimable: int, total: int) -> str:
    if total > 0:
        return f"{human_size4(reclaimable)} ({reclaimable * 100 // total}%)"
    return human_size4(reclaimable)


def _empty(headers: dict[str, str], kind: str) -> Record:
    return Record(kind, {k: "" for k in headers}, headers)


def _image_record(info: ImageInfo, trunc: bool) -> Record:
    repo, tag = info.tags[0] if info.tags else (NONE, NONE)  # the first tag only, as Docker
    return image_record(info, repo, tag, "", not trunc)


def _layer_record(layer: LayerInfo, trunc: bool) -> Record:
    shared = layer.images > 1
    return Record("layer", {
        "ID": image_id(layer.diff_id, not trunc),
        "Size": human_size4(layer.size),
        "Images": str(layer.images),
        "SharedSize": human_size4(layer.size if shared else 0),
        "UniqueSize": human_size4(0 if shared else layer.size),
    }, LAYER_HEADERS)


def _container_record(c: Container, known: Containers, size: int, mounted: bool, trunc: bool) -> Record:
    state = "mounted" if mounted else "unmounted"
    return Record("container", {
        "ID": c.id[:12] if trunc else c.id,
        "Image": known.image_of(c),
        "Command": '""',
        "CreatedAt": go_time_string(c.created),
        "RunningFor": created_since(c.created),
        "State": state,
        "Status": state + (" (read-only)" if c.read_only else ""),
        "Size": human_size(size),
        "Names": c.name,
        "Labels": "",
        "Mounts": "",
        "LocalVolumes": "0",
        "Networks": "",
        "Ports": "",
    }, CONTAINER_HEADERS)


def run_df(args: argparse.Namespace, store: Store) -> int:
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
        fmt = {"table": SUMMARY, RAW: SUMMARY_RAW}.get(fmt, fmt)
        records = [Record("diskUsage", dict(zip(SUMMARY_HEADERS, (t, str(n), str(a), s, r))), SUMMARY_HEADERS) for t, n, a, s, r in summary]
        sys.stdout.write(render(fmt, records, _empty(SUMMARY_HEADERS, "diskUsage")))
        return 0

    trunc = not args.format or is_table(args.format)  # as Docker: IDs cut short in tables only
    usage = GoStruct("*formatter.diskUsageContext", {
        "Images": [_image_record(info, trunc) for info in images],
        "Containers": [_container_record(c, known, sizes[c.id], mounted[c.id], trunc) for c in containers],
        "Volumes": [],
        "BuildCache": [],
        "Layers": [_layer_record(layer, trunc) for layer in layers],  # this tool's own, after Docker's four
    })
    if args.format and args.format != "table":
        # Docker runs the template once over the whole and adds no newline of its own.
        sys.stdout.write(Template(prepare(VERBOSE_RAW if args.format == RAW else args.format)).execute(usage))
        return 0
    out = sys.stdout
    out.write("Images space usage:\n\n")
    out.write(render(IMAGES, usage.fields["Images"], empty_image_record()))
    out.write("\nLayers space usage:\n\n")
    out.write(render(LAYERS, usage.fields["Layers"], _empty(LAYER_HEADERS, "layer")))
    out.write("\nContainers space usage:\n\n")
    out.write(render(CONTAINERS, usage.fields["Containers"], _empty(CONTAINER_HEADERS, "container")))
    out.write("\nLocal Volumes space usage:\n\n")
    out.write(tabwrite(VOLUMES_HEADER))
    out.write(f"\nBuild cache usage: {human_size4(0)}\n\n")
    out.write(tabwrite(CACHE_HEADER))
    return 0
