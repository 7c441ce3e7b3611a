"""Local manifest lists, kept where and as the Docker CLI keeps them.

``manifest create`` gathers image manifests from a registry into a list
that lives on this machine until ``manifest push`` sends it. The Docker CLI
keeps such a list in ``$DOCKER_CONFIG/manifests`` (``~/.docker/manifests``):
a directory per list, a file per image, each name the full reference with
``:`` written ``-`` and ``/`` written ``_``, each file one compact JSON
object, Docker's ``types.ImageManifest``::

    {"Ref": "host:5000/app:amd64",
     "Descriptor": {"mediaType": ..., "digest": ..., "size": ..., "platform": {...}},
     "Raw": "<the manifest's bytes, base64>",
     "OCIManifest" or "SchemaV2Manifest": <the manifest>}

This module keeps them in the same place and form, so that a list made by
either tool can be annotated, inspected and pushed by the other. An image
is read from ``Raw``, so its bytes (and digest) stay the registry's. The
images of a list are in the order of their file names, as Docker lists them.

Unlike the Docker CLI, which writes each image as it fetches it, a new
list is written whole or not at all: it is built in a directory of its own
and renamed into place.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerstore.blobs import fsync_dir
from layerstore.digest import digest_bytes
from layerstore.errors import AlreadyExists, CorruptArchive, NotFound, quote
from layerstore.export import output_file
from layerstore.model import DOCKER_MANIFEST
from layerstore.registry import gojson
from layerstore.registry.auth import config_dir

PLATFORM_KEYS = ("architecture", "os", "os.version", "os.features", "variant")  # Go's field order


def filesafe(reference: str) -> str:
    """Docker's ``makeFilesafeName``."""
    return reference.replace(":", "-").replace("/", "_")


def descriptor(media_type: str, digest: str, size: int, platform: Any) -> dict[str, Any]:
    """An ``ocispec.Descriptor`` as Docker fills it for an image of a list, in Go's field order."""
    out: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if isinstance(platform, dict) and any(platform.get(k) for k in PLATFORM_KEYS):
        out["platform"] = {k: platform[k] for k in PLATFORM_KEYS if platform.get(k)}
    return out


@dataclass(frozen=True)
class ImageManifest:
    """One image of a list (Docker's ``types.ImageManifest``): where it came from, its
    descriptor with the platform the list gives it, and the manifest's own bytes."""

    ref: str
    descriptor: dict[str, Any]
    raw: bytes

    @property
    def digest(self) -> str:
        return str(self.descriptor["digest"])

    @property
    def media_type(self) -> str:
        return str(self.descriptor.get("mediaType") or "")

    @property
    def platform(self) -> dict[str, Any]:
        platform = self.descriptor.get("platform")
        return dict(platform) if isinstance(platform, dict) else {}

    def with_platform(self, platform: dict[str, Any]) -> ImageManifest:
        desc = descriptor(self.media_type, self.digest, int(self.descriptor["size"]), platform)
        return ImageManifest(self.ref, desc, self.raw)

    def to_json(self) -> str:
        """Compact, as Docker's ``json.Marshal`` writes it; the manifest is its own bytes, compacted."""
        key = "SchemaV2Manifest" if self.media_type == DOCKER_MANIFEST else "OCIManifest"
        head = json.dumps({"Ref": self.ref, "Descriptor": self.descriptor, "Raw": base64.b64encode(self.raw).decode()},
                          separators=(",", ":"), ensure_ascii=False)
        head = gojson.compact(head)  # Go escapes <, > and & in strings
        return head[:-1] + f',"{key}":' + gojson.compact(self.raw.decode("utf-8", "surrogateescape")) + "}"

    @classmethod
    def parse(cls, data: bytes, subject: str) -> ImageManifest:
        """An image file as either tool wrote it; its ``Raw`` must hash to its descriptor's digest."""
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptArchive(subject, f"not JSON ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("Ref"), str) or not isinstance(doc.get("Descriptor"), dict):
            raise CorruptArchive(subject, "not a manifest list entry (no Ref and Descriptor)")
        desc = doc["Descriptor"]
        if not isinstance(desc.get("digest"), str) or not isinstance(desc.get("size"), int):
            raise CorruptArchive(subject, "its descriptor has no digest or size")
        if not isinstance(doc.get("Raw"), str) or not doc["Raw"]:
            raise CorruptArchive(subject, "no raw manifest (written by an older Docker CLI: create the list again)")
        try:
            raw = base64.b64decode(doc["Raw"], validate=True)
        except (binascii.Error, ValueError):
            raise CorruptArchive(subject, "its raw manifest is not base64") from None
        algorithm = desc["digest"].partition(":")[0]
        try:
            actual = digest_bytes(raw, algorithm)
        except ValueError:
            raise CorruptArchive(subject, f"unsupported digest {quote(desc['digest'])}") from None
        if actual != desc["digest"]:
            raise CorruptArchive(subject, f"its raw manifest is {actual}, not {desc['digest']}")
        return cls(doc["Ref"], desc, raw)


class ManifestLists:
    """The lists under ``root`` (default ``$DOCKER_CONFIG/manifests``)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or config_dir() / "manifests"

    def _dir(self, list_ref: str) -> Path:
        return self.root / filesafe(list_ref)

    def exists(self, list_ref: str) -> bool:
        return self._dir(list_ref).is_dir()

    def _existing(self, list_ref: str) -> Path:
        directory = self._dir(list_ref)
        if not directory.is_dir():
            raise NotFound(f"manifest list {list_ref}", "no such local manifest list (manifest create makes one)")
        return directory

    def get(self, list_ref: str, ref: str) -> ImageManifest:
        path = self._existing(list_ref) / filesafe(ref)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"manifest {ref}", f"not in the local manifest list {list_ref}") from None
        return ImageManifest.parse(data, f"manifest list {list_ref}: {path.name}")

    def images(self, list_ref: str) -> list[ImageManifest]:
        """The images of a list, in the order of their file names, as Docker lists them."""
        directory = self._existing(list_ref)
        names = sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
        return [ImageManifest.parse((directory / n).read_bytes(), f"manifest list {list_ref}: {n}") for n in names]

    def create(self, list_ref: str, images: list[ImageManifest]) -> None:
        """A new list, all of it or nothing: built aside, then renamed into place."""
        final = self._dir(list_ref)
        self.root.mkdir(parents=True, exist_ok=True)
        building = self.root / f".{final.name}.{secrets.token_hex(4)}.new"
        building.mkdir()
        try:
            for image in images:
                _write(building / filesafe(image.ref), image.to_json().encode())
            fsync_dir(building)
            try:
                os.rename(building, final)  # fails if a list of that name appeared meanwhile
            except OSError as exc:
                if final.exists():
                    raise AlreadyExists(f"manifest list {list_ref}", "made meanwhile by another command") from None
                raise exc
            fsync_dir(self.root)
        finally:
            shutil.rmtree(building, ignore_errors=True)

    def save(self, list_ref: str, image: ImageManifest) -> None:
        """Add or replace one image of an existing list."""
        directory = self._existing(list_ref)
        _write(directory / filesafe(image.ref), image.to_json().encode())
        fsync_dir(directory)

    def remove(self, list_ref: str) -> None:
        directory = self._existing(list_ref)
        doomed = self.root / f".{directory.name}.{secrets.token_hex(4)}.old"
        os.rename(directory, doomed)  # gone at once for every reader, then deleted
        shutil.rmtree(doomed, ignore_errors=True)


def _write(path: Path, data: bytes) -> None:
    """A whole file or none (written aside, synced, renamed over)."""
    with output_file(str(path)) as f:
        f.write(data)
