"""``manifest inspect``: a manifest or index, from its registry or a local list, printed byte for byte as the Docker CLI prints it.

Plain, for a manifest: the original bytes indented with tabs (Go's
``json.Indent``), so the keys, their order and every value are the
registry's. Plain, for an index: the list Docker rebuilds from its entries
(``manifestlist.FromDescriptors``: media type, size, digest and platform of
each entry, annotations left out, indented by three spaces). Verbose (``-v``): for
each image an object ``{Ref, Descriptor, Raw, SchemaV2Manifest|OCIManifest}``
(Docker's ``types.ImageManifest``), ``Raw`` the manifest bytes in base64, the
descriptor with the image's platform (from the index entry, or from the
config for a lone manifest); a JSON array of them for an index.

A local list (``manifestlists``) is shown as the index ``manifest push``
would send (the same rebuilt list), or with ``-v`` as its images are kept.
The same objects are what ``manifest create`` keeps of each image.
"""
from __future__ import annotations

import json
from typing import Any

from layerstore import reference
from layerstore.errors import InvalidReference
from layerstore.model import DOCKER_LIST, MANIFEST_TYPES, OCI_INDEX, OCI_MANIFEST, Descriptor, load_json
from layerstore.reference import Reference
from layerstore.registry import gojson
from layerstore.registry.client import Fetched, RegistryClient
from layerstore.registry.manifestlists import PLATFORM_KEYS, ImageManifest, descriptor
from layerstore.registry.pull import full_name, is_index


def inspect(client: RegistryClient, ref: Reference, verbose: bool = False) -> str:
    """The text ``docker manifest inspect [-v] REF`` prints for a registry's document, final newline included."""
    ref = ref.with_default_tag()
    top = client.manifest(ref.path, ref.digest or ref.tag or "latest")
    if not is_index(top):
        if not verbose:
            return gojson.indent(top.data.decode("utf-8", "surrogateescape")) + "\n"
        return gojson.indent(image_manifest(client, ref, top).to_json()) + "\n"
    doc = load_json(top.data, f"index {top.digest}")
    entries = [(Descriptor.parse(raw, f"index {top.digest}"), raw.get("platform")) for raw in doc.get("manifests") or []]
    entries = [(e, p) for e, p in entries if not e.media_type or e.media_type in MANIFEST_TYPES]
    if not verbose:
        return rebuilt_list(entries)[0].decode() + "\n"
    items = []
    for entry, platform in entries:
        fetched = client.manifest(ref.path, entry.digest)
        media_type = entry.media_type or _media_type(fetched)
        desc = descriptor(media_type, entry.digest, entry.size, platform)
        named = Reference(ref.domain, ref.path, None if ref.digest else ref.tag)  # Go's WithDigest drops a digest
        items.append(ImageManifest(f"{full_name(named)}@{entry.digest}", desc, fetched.data).to_json())
    return gojson.indent("[" + ",".join(items) + "]") + "\n"


def image_manifest(client: RegistryClient, ref: Reference, fetched: Fetched | None = None) -> ImageManifest:
    """An image as ``manifest create`` takes it into a list: its manifest (an index is refused,
    as Docker refuses it), the platform its config names."""
    ref = ref.with_default_tag()
    if fetched is None:
        fetched = client.manifest(ref.path, ref.digest or ref.tag or "latest")
    if is_index(fetched):
        raise InvalidReference(f"manifest for {ref}", "is a manifest list; name one of its images by digest")
    media_type = _media_type(fetched)
    desc = descriptor(media_type, fetched.digest, len(fetched.data), _config_platform(client, ref, fetched))
    return ImageManifest(full_name(ref), desc, fetched.data)


def show_local_list(list_ref: str, images: list[ImageManifest], verbose: bool = False) -> str:
    """``manifest inspect`` of a list made here: the list ``manifest push`` would send, or with
    ``-v`` each image as kept. Refused, as Docker refuses it, when an image is on another registry."""
    if verbose:
        return gojson.indent("[" + ",".join(image.to_json() for image in images) + "]") + "\n"
    return local_list_document(list_ref, images)[0].decode() + "\n"


def show_local_image(image: ImageManifest, verbose: bool = False) -> str:
    """``manifest inspect LIST IMAGE``: one image of a list made here. Docker prints the manifest
    as its list file holds it, compacted (a trailing newline of the registry's bytes is gone)."""
    text = image.to_json() if verbose else gojson.compact(image.raw.decode("utf-8", "surrogateescape"))
    return gojson.indent(text) + "\n"


def local_list_document(list_ref: str, images: list[ImageManifest]) -> tuple[bytes, str]:
    """The index a local list becomes on its registry, and its media type."""
    domain = reference.parse(list_ref).domain
    entries = []
    for image in images:
        source = reference.parse(image.ref, default_tag=False).domain
        if source != domain:
            raise InvalidReference(f"manifest list {list_ref}", "cannot use source images from a different registry than"
                                   f" the target image: {source} != {domain}")
        entry = Descriptor(image.media_type, image.digest, int(image.descriptor["size"]))
        entries.append((entry, image.platform))
    return rebuilt_list(entries)


def rebuilt_list(entries: list[tuple[Descriptor, Any]]) -> tuple[bytes, str]:
    """The list Docker rebuilds from an index's entries (``manifestlist.FromDescriptors``):
    an OCI index when the first entry is an OCI manifest, else a Docker manifest list; each
    entry's media type, size, digest and platform only; indented by three spaces. Also its media type."""
    kind = OCI_INDEX if entries and entries[0][0].media_type == OCI_MANIFEST else DOCKER_LIST
    manifests = []
    for entry, platform in entries:
        item: dict[str, Any] = {"mediaType": entry.media_type, "size": entry.size, "digest": entry.digest}
        plat = platform if isinstance(platform, dict) else {}
        item["platform"] = {"architecture": plat.get("architecture", ""), "os": plat.get("os", "")}
        for key in ("os.version", "os.features", "variant", "features"):
            if plat.get(key):
                item["platform"][key] = plat[key]
        manifests.append(item)
    text = json.dumps({"schemaVersion": 2, "mediaType": kind, "manifests": manifests}, indent=3, ensure_ascii=False)
    return _go_escape(text).encode(), kind


def _go_escape(text: str) -> str:
    """Go's encoder escapes <, > and & in strings (they cannot occur outside them in this text)."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _media_type(fetched: Fetched) -> str:
    doc = load_json(fetched.data, f"manifest {fetched.digest}")
    return str(doc.get("mediaType") or fetched.media_type or OCI_MANIFEST)


def _config_platform(client: RegistryClient, ref: Reference, fetched: Fetched) -> dict[str, Any] | None:
    doc = load_json(fetched.data, f"manifest {fetched.digest}")
    config = Descriptor.parse(doc.get("config"), f"manifest {fetched.digest}")
    data = client.blob_bytes(ref.path, config.digest, config.size)
    cfg = load_json(data, f"config {config.digest}")
    if not isinstance(cfg, dict):
        return None
    return {k: cfg[k] for k in PLATFORM_KEYS if cfg.get(k)}
