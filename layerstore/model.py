"""Images as the OCI image spec describes them: index, manifest, config.

Importers normalise at the boundary: Docker's schema 2 manifest and media
types are read into the same values as OCI's, while the original bytes stay
in the blob store untouched (a digest covers bytes, not meaning).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from layerstore.digest import parse_digest
from layerstore.errors import CorruptArchive, UnsupportedMediaType
from layerstore.mediatypes import LAYER_COMPRESSION

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MAX_DOCUMENT = 4 << 20  # manifests and configs larger than this are refused


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict, compare=False)
    platform: dict[str, Any] | None = field(default=None, compare=False)

    @classmethod
    def parse(cls, data: Any, subject: str) -> Descriptor:
        if not isinstance(data, dict):
            raise CorruptArchive(subject, "descriptor is not an object")
        try:
            digest = str(parse_digest(str(data["digest"])))
            size = int(data["size"])
            media_type = str(data.get("mediaType", ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptArchive(subject, f"bad descriptor ({exc})") from None
        if size < 0:
            raise CorruptArchive(subject, "negative size in descriptor")
        return cls(media_type, digest, size, dict(data.get("annotations") or {}), data.get("platform"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = self.annotations
        if self.platform:
            out["platform"] = self.platform
        return out


def load_json(data: bytes, subject: str) -> Any:
    if len(data) > MAX_DOCUMENT:
        raise CorruptArchive(subject, f"document of {len(data)} bytes is larger than {MAX_DOCUMENT}")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptArchive(subject, f"malformed JSON ({exc})") from None


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @classmethod
    def parse(cls, data: bytes, subject: str, media_type: str | None = None) -> Manifest:
        doc = load_json(data, subject)
        if not isinstance(doc, dict):
            raise CorruptArchive(subject, "manifest is not an object")
        kind = doc.get("mediaType") or media_type or OCI_MANIFEST
        if kind not in MANIFEST_TYPES:
            raise UnsupportedMediaType(subject, str(kind))
        config = Descriptor.parse(doc.get("config"), subject)
        layers = tuple(Descriptor.parse(layer, subject) for layer in doc.get("layers") or [])
        for layer in layers:
            if layer.media_type not in LAYER_COMPRESSION:
                raise UnsupportedMediaType(f"{subject} layer {layer.digest}", layer.media_type)
        return cls(str(kind), config, layers)


@dataclass(frozen=True)
class ImageConfig:
    diff_ids: tuple[str, ...]
    created: str | None
    architecture: str
    os: str
    variant: str | None
    raw: dict[str, Any]

    @classmethod
    def parse(cls, data: bytes, subject: str) -> ImageConfig:
        doc = load_json(data, subject)
        if not isinstance(doc, dict):
            raise CorruptArchive(subject, "config is not an object")
        rootfs = doc.get("rootfs") or {}
        try:
            diff_ids = tuple(str(parse_digest(str(d))) for d in rootfs.get("diff_ids") or [])
        except ValueError as exc:
            raise CorruptArchive(subject, f"bad diff_id ({exc})") from None
        return cls(
            diff_ids,
            doc.get("created"),
            str(doc.get("architecture") or ""),
            str(doc.get("os") or ""),
            doc.get("variant"),
            doc,
        )


def chain_ids(diff_ids: tuple[str, ...] | list[str]) -> list[str]:
    """OCI ChainIDs: the identity of a layer together with everything under it."""
    import hashlib

    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out
