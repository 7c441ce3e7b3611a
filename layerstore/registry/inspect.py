"""``manifest inspect``: a manifest or index from its registry, printed byte for byte as the Docker CLI prints it.

Plain, for a manifest: the original bytes indented with tabs (Go's
``json.Indent``), so the keys, their order and every value are the
registry's. Plain, for an index: the list Docker rebuilds from its entries
(``manifestlist.FromDescriptors``: media type, size, digest and platform of
each entry, annotations left out, indented by three spaces). Verbose (``-v``): for
each image an object ``{Ref, Descriptor, Raw, SchemaV2Manifest|OCIManifest}``
(Docker's ``types.ImageManifest``), ``Raw`` the manifest bytes in base64, the
descriptor with the image's platform (from the index entry, or from the
config for a lone manifest); a JSON array of them for an index.
"""
from __future__ import annotations

import base64
import json
from typing import Any

from layerstore.model import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    load_json,
)
from layerstore.reference import Reference
from layerstore.registry import gojson
from layerstore.registry.client import Fetched, RegistryClient
from layerstore.registry.pull import full_name, is_index


def inspect(client: RegistryClient, ref: Reference, verbose: bool = False) -> str:
    """The text ``docker manifest inspect [-v] REF`` prints, final newline included."""
    ref = ref.with_default_tag()
    top = client.manifest(ref.path, ref.digest or ref.tag or "latest")
    if not is_index(top):
        if not verbose:
            return gojson.indent(top.data.decode("utf-8", "surrogateescape")) + "\n"
        platform = _config_platform(client, ref, top)
        media_type = _media_type(top)
        desc = _descriptor(media_type, top.digest, len(top.data), platform)
        return gojson.indent(_image_manifest(full_name(ref), desc, top, media_type)) + "\n"
    doc = load_json(top.data, f"index {top.digest}")
    entries = [(Descriptor.parse(raw, f"index {top.digest}"), raw.get("platform")) for raw in doc.get("manifests") or []]
    entries = [(e, p) for e, p in entries if not e.media_type or e.media_type in MANIFEST_TYPES]
    if not verbose:
        return rebuilt_list(entries) + "\n"
    items = []
    for entry, platform in entries:
        fetched = client.manifest(ref.path, entry.digest)
        media_type = entry.media_type or _media_type(fetched)
        desc = _descriptor(media_type, entry.digest, entry.size, platform)
        named = Reference(ref.domain, ref.path, None if ref.digest else ref.tag)  # Go's WithDigest drops a digest
        items.append(_image_manifest(f"{full_name(named)}@{entry.digest}", desc, fetched, media_type))
    return gojson.indent("[" + ",".join(items) + "]") + "\n"


def rebuilt_list(entries: list[tuple[Descriptor, Any]]) -> str:
    """The list Docker rebuilds from an index's entries (``manifestlist.FromDescriptors``):
    an OCI index when the first entry is an OCI manifest, else a Docker manifest list; each
    entry's media type, size, digest and platform only; indented by three spaces."""
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
    return _go_escape(text)


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
    return {k: v for k, v in (("architecture", cfg.get("architecture")), ("os", cfg.get("os")),
                              ("os.version", cfg.get("os.version")), ("os.features", cfg.get("os.features")),
                              ("variant", cfg.get("variant"))) if v}


def _descriptor(media_type: str, digest: str, size: int, platform: Any) -> dict[str, Any]:
    """An ``ocispec.Descriptor`` as Docker fills it (no annotations), in Go's field order."""
    out: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if isinstance(platform, dict) and platform:
        order = ("architecture", "os", "os.version", "os.features", "variant")
        out["platform"] = {k: platform[k] for k in order if platform.get(k)}
    return out


def _image_manifest(ref: str, desc: dict[str, Any], fetched: Fetched, media_type: str) -> str:
    """One ``types.ImageManifest`` as compact JSON; the manifest itself is its original bytes, compacted."""
    key = "SchemaV2Manifest" if media_type == DOCKER_MANIFEST else "OCIManifest"
    head = json.dumps({"Ref": ref, "Descriptor": desc, "Raw": base64.b64encode(fetched.data).decode()}, separators=(",", ":"), ensure_ascii=False)
    head = gojson.compact(head)  # Go escapes <, > and & in strings
    return head[:-1] + f',"{key}":' + gojson.compact(fetched.data.decode("utf-8", "surrogateescape")) + "}"
