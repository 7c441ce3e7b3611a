"""``inspect IMAGE...``: a JSON array as ``docker image inspect`` prints it, plus the store's ``Layers``.

``Layers`` lists each layer bottom first: its blob (Digest, MediaType,
CompressedSize), its unpacked Size, DiffID, ChainID, and SharedBy, the number
of images in the store that have the same diff_id (the store keeps one copy).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from layerstore import queries
from layerstore.errors import LayerStoreError, NotFound, PlatformMismatch
from layerstore.formatting import parse_time
from layerstore.gofmt import NilMap, NilSlice, StringMap, Struct, go_json
from layerstore.gotemplate import Template
from layerstore.platforms import from_flags
from layerstore.store import Store

ZERO_TIME = "0001-01-01T00:00:00Z"


def register(sub: argparse._SubParsersAction, name: str = "inspect") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="detailed information on images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-f", "--format", default="", help="a Go template, or 'json'")
    p.add_argument("--type", choices=("image",), help="only images are inspected here")
    p.add_argument("-s", "--size", action="store_true", help="accepted for Docker compatibility: sizes are always shown")
    p.add_argument("--platform", metavar="os[/arch[/variant]]",
                   help="the image must be for this platform (an image here holds one)")
    p.set_defaults(func=run)


def inspect_image(store: Store, image_id: str) -> Struct:
    config = store.config(image_id)
    if not isinstance(config, dict):
        config = {}
    info = queries.details_for_inspect(store, image_id)
    layers: list[queries.LayerDetail] = info["layers"]
    created = parse_time(config.get("created"))
    diff_ids = [layer.diff_id for layer in layers]
    out = Struct()
    out["Id"] = image_id
    out["RepoTags"] = info["tags"]
    out["RepoDigests"] = info["repo_digests"]
    out["Parent"] = ""
    out["Comment"] = str(config.get("comment") or "")
    out["Created"] = created.rfc3339nano() if created else ""
    out["DockerVersion"] = str(config.get("docker_version") or "")
    out["Author"] = str(config.get("author") or "")
    out["Config"] = _config(config.get("config"))
    out["Architecture"] = str(config.get("architecture") or "")
    if config.get("variant"):
        out["Variant"] = str(config["variant"])
    out["Os"] = str(config.get("os") or "")
    if config.get("os.version"):
        out["OsVersion"] = str(config["os.version"])
    out["Size"] = sum(layer.size for layer in layers)
    graph: dict[str, str] = {}
    if layers:
        paths = [str(store.layers.path(d)) for d in reversed(diff_ids)]  # top first
        if len(paths) > 1:
            graph["LowerDir"] = ":".join(paths[1:])
        graph["UpperDir"] = paths[0]
    out["GraphDriver"] = Struct(Data=graph, Name="unionfs")
    rootfs = Struct(Type="layers")
    if diff_ids:
        rootfs["Layers"] = diff_ids
    out["RootFS"] = rootfs
    out["Metadata"] = Struct(LastTagTime=ZERO_TIME)
    out["Layers"] = [
        Struct(
            Digest=layer.blob,
            MediaType=layer.media_type,
            CompressedSize=layer.blob_size,
            Size=layer.size,
            DiffID=layer.diff_id,
            ChainID=layer.chain_id,
            SharedBy=layer.shared_by,
        )
        for layer in layers
    ]
    out.omitted = {"Variant": "", "OsVersion": ""}
    return out


def _config(cfg: Any) -> Struct | None:
    """The image's config as Docker's typed one reads in a template: the fields an image
    leaves out are zero (``{{json .Config.Env}}`` is null, ``{{.Config.User}}`` empty),
    and a label that is not there is "" (``{{index .Config.Labels "x"}}``)."""
    if not isinstance(cfg, dict):
        return None
    out = Struct(cfg)
    if isinstance(cfg.get("Labels"), dict):
        out["Labels"] = StringMap(cfg["Labels"])
    out.omitted = {
        "User": "", "ExposedPorts": NilMap(), "Env": NilSlice(), "Entrypoint": NilSlice(), "Cmd": NilSlice(),
        "Volumes": NilMap(), "WorkingDir": "", "Labels": NilMap(), "StopSignal": "", "ArgsEscaped": False,
        "Healthcheck": None, "OnBuild": NilSlice(), "Shell": NilSlice(),
    }
    return out


def run(args: argparse.Namespace, store: Store) -> int:
    found: list[Any] = []
    errors: list[str] = []
    platforms = from_flags(args.platform)
    # ``docker inspect`` looks for any kind of object and names the one it did not
    # find as given; ``docker image inspect`` (or ``--type image``) passes the
    # daemon's words on, the name with its tag (``No such image: nope:latest``).
    any_object = args.command == "inspect" and args.type is None
    for text in args.images:
        try:
            found.append(inspect_image(store, store.resolve(text, platforms)))
        except PlatformMismatch as exc:
            errors.append(str(exc))
        except NotFound as exc:
            errors.append(f"No such object: {text}" if any_object else str(exc))
        except LayerStoreError as exc:  # an ambiguous short ID, say: the others are still shown
            errors.append(str(exc))
    fmt = args.format
    if fmt and fmt.strip() != "json":
        tmpl = Template(fmt, missing_key_error=True)  # no table or escape handling here, as in Docker
        sys.stdout.write("".join(tmpl.execute(item) + "\n" for item in found))
    else:
        sys.stdout.write(go_json(found, escape_html=True, indent=4) + "\n")
    sys.stdout.flush()
    for message in errors:
        print(f"Error: {message}", file=sys.stderr)
    return 1 if errors else 0
