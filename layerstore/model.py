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
from layerstore.errors import CorruptArchive, InvalidReference, UnsupportedMediaType
from layerstore.mediatypes import LAYER_COMPRESSION

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
CONFIG_TYPES = ("", OCI_CONFIG, DOCKER_CONFIG)  # "": old writers left the config's media type out
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MAX_DOCUMENT = 4 << 20  # manifests and configs larger than this are refused
MAX_SIZE = (1 << 63) - 1  # descriptor sizes are int64 (and sqlite integers)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict, compare=False)
    platform: dict[str, Any] | None = field(default=None, compare=False)

    @classmethod
    def parse(cls, data: Any, subject: str) -> Descriptor:
        """A descriptor from untrusted JSON: every field of the type the spec gives it, or CorruptArchive."""
        if not isinstance(data, dict):
            raise CorruptArchive(subject, "descriptor is not an object")
        digest, size, media_type = data.get("digest"), data.get("size"), data.get("mediaType", "")
        if not isinstance(digest, str):
            raise CorruptArchive(subject, "descriptor without a digest string")
        try:
            digest = str(parse_digest(digest))
        except InvalidReference as exc:
            raise CorruptArchive(subject, f"bad descriptor ({exc})") from None
        # bool is an int in Python, not in JSON; a size must fit the int64 the spec names.
        if not isinstance(size, int) or isinstance(size, bool):
            raise CorruptArchive(subject, f"descriptor {digest} without an integer size")
        if not 0 <= size <= MAX_SIZE:
            raise CorruptArchive(subject, f"descriptor {digest} has a size out of range ({size})")
        if not isinstance(media_type, str):
            raise CorruptArchive(subject, f"descriptor {digest} has a media type that is not a string")
        annotations = _or_default(data.get("annotations"), {})
        if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
            raise CorruptArchive(subject, f"descriptor {digest} has annotations that are not strings")
        platform = data.get("platform")
        if platform is not None and not isinstance(platform, dict):
            raise CorruptArchive(subject, f"descriptor {digest} has a platform that is not an object")
        return cls(media_type, digest, size, dict(annotations), platform)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = self.annotations
        if self.platform:
            out["platform"] = self.platform
        return out


def load_json(data: bytes, subject: str) -> Any:
    """Parse an untrusted JSON document: CorruptArchive for anything json or sqlite would choke on later."""
    if len(data) > MAX_DOCUMENT:
        raise CorruptArchive(subject, f"document of {len(data)} bytes is larger than {MAX_DOCUMENT}")
    try:
        doc = json.loads(data, parse_constant=_no_constant)
        if b"\\u" in data:
            # An escaped lone surrogate ("\\ud800") decodes to a str that no UTF-8
            # encoder (sqlite, a terminal) accepts; Go would have replaced it.
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise CorruptArchive(subject, "malformed JSON (nested too deep)") from None
    except UnicodeEncodeError:
        raise CorruptArchive(subject, "malformed JSON (a string holds a lone UTF-16 surrogate)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptArchive(subject, f"malformed JSON ({exc})") from None
    return doc


def _no_constant(name: str) -> Any:
    """NaN and Infinity are Python's extension, not JSON."""
    raise ValueError(f"{name} is not JSON")


def _or_default(value: Any, default: Any) -> Any:
    """A missing (null) field is its empty default; an empty string or 0 stays, to be refused by type."""
    return default if value is None else value


def _optional_str(doc: dict[str, Any], key: str, subject: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise CorruptArchive(subject, f"{key} is not a string")
    return value


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
        version = doc.get("schemaVersion", 2)
        if version != 2 or isinstance(version, bool):
            raise CorruptArchive(subject, f"schemaVersion {json.dumps(version)[:20]} is not supported (only 2)")
        kind = _optional_str(doc, "mediaType", subject) or media_type or OCI_MANIFEST
        if kind not in MANIFEST_TYPES:
            raise UnsupportedMediaType(subject, str(kind))
        config = Descriptor.parse(doc.get("config"), subject)
        if config.media_type not in CONFIG_TYPES:
            raise UnsupportedMediaType(f"{subject} config {config.digest}", config.media_type)
        raw_layers = _or_default(doc.get("layers"), [])
        if not isinstance(raw_layers, list):
            raise CorruptArchive(subject, "layers is not a list")
        layers = tuple(Descriptor.parse(layer, subject) for layer in raw_layers)
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
        rootfs = _or_default(doc.get("rootfs"), {})
        if not isinstance(rootfs, dict):
            raise CorruptArchive(subject, "rootfs is not an object")
        if rootfs.get("type", "layers") != "layers":
            raise CorruptArchive(subject, "rootfs type is not \"layers\"")
        raw_ids = _or_default(rootfs.get("diff_ids"), [])
        if not isinstance(raw_ids, list) or not all(isinstance(d, str) for d in raw_ids):
            raise CorruptArchive(subject, "rootfs.diff_ids is not a list of strings")
        try:
            diff_ids = tuple(str(parse_digest(d)) for d in raw_ids)
        except InvalidReference as exc:
            raise CorruptArchive(subject, f"bad diff_id ({exc})") from None
        return cls(
            diff_ids,
            _optional_str(doc, "created", subject),
            _optional_str(doc, "architecture", subject) or "",
            _optional_str(doc, "os", subject) or "",
            _optional_str(doc, "variant", subject),
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
