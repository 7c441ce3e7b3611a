"""``manifest push``: a local manifest list to its registry, as the Docker CLI sends it.

The list goes up as the index Docker builds from its images
(``manifestlist.FromDescriptors``, see ``inspect.rebuilt_list``), under the
list's tag, so the digest it gets is the one ``docker manifest push`` gets
for the same images. Every image must name its OS and architecture, and be
on the list's registry: an index can only point at manifests of its own
repository. An image from another repository of that registry is brought
over first, as Docker brings it: its config and layers mounted
(``POST .../blobs/uploads/?mount=&from=``), then its manifest put by digest,
with its own bytes. A registry that answers a mount with an upload instead
(it does not mount, or the source is not readable with these credentials)
stops the push with that said: the blobs are on the registry, not here.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from layerstore import reference
from layerstore.digest import digest_bytes
from layerstore.errors import CorruptArchive, DigestMismatch, InvalidReference, RegistryError
from layerstore.model import Descriptor, load_json
from layerstore.reference import Reference
from layerstore.registry.client import RegistryClient
from layerstore.registry.inspect import local_list_document
from layerstore.registry.manifestlists import ImageManifest
from layerstore.registry.pull import full_name

log = logging.getLogger(__name__)


def push_list(client: RegistryClient, list_ref: Reference, images: list[ImageManifest], say: Callable[[str], None]) -> str:
    """Push the list ``images`` to ``list_ref`` (a tag on ``client``'s registry); the digest it got."""
    if list_ref.tag is None or list_ref.digest:
        raise InvalidReference(f"manifest list {list_ref}", "a manifest list is pushed to a tag, not a digest")
    subject = f"manifest list {full_name(list_ref)}"
    if not images:
        raise InvalidReference(subject, "has no images")
    for image in images:
        if not image.platform.get("os") or not image.platform.get("architecture"):
            raise InvalidReference(f"manifest {image.ref}", "must have an OS and Architecture to be pushed to a registry"
                                   " (manifest annotate --os --arch sets them)")
    data, media_type = local_list_document(full_name(list_ref), images)
    for image in images:
        source = reference.parse(image.ref, default_tag=False)
        if source.path != list_ref.path:
            _bring_over(client, image, source, list_ref)
            say(f"Pushed ref {list_ref.full_name}@{image.digest} with digest: {image.digest}")
    answered = client.put_manifest(list_ref.path, list_ref.tag, data, media_type)
    digest = digest_bytes(data)
    if answered and answered != digest:
        raise DigestMismatch(subject, expected=digest, actual=answered, problem=f"the registry stored it as {answered}")
    return digest


def _bring_over(client: RegistryClient, image: ImageManifest, source: Reference, target: Reference) -> None:
    """An image of another repository into the list's: its blobs mounted, its manifest put by digest."""
    for blob in _blobs(image):
        started = client.start_upload(target.path, mount=blob.digest, source=source.path)
        if not started.mounted:
            if started.location:
                client.cancel_upload(target.path, started.location)
            raise RegistryError(f"blob {blob.digest}", f"the registry did not mount it from {source.path} into {target.path}"
                                " (it does not mount across repositories, or these credentials cannot read the source)")
        log.info("mounted %s from %s", blob.digest, source.path)
    answered = client.put_manifest(target.path, image.digest, image.raw, image.media_type)
    if answered and answered != image.digest:
        raise DigestMismatch(f"manifest {image.ref}", expected=image.digest, actual=answered,
                             problem=f"the registry stored it as {answered}")


def _blobs(image: ImageManifest) -> list[Descriptor]:
    """The config and layers the registry must have; foreign layers (with URLs) it need not."""
    subject = f"manifest {image.ref}"
    doc = load_json(image.raw, subject)
    layers = (doc.get("layers") or []) if isinstance(doc, dict) else None
    if not isinstance(layers, list):
        raise CorruptArchive(subject, "is not an image manifest (no list of layers)")
    raw = [doc.get("config"), *layers]
    return [Descriptor.parse(item, subject) for item in raw if not (isinstance(item, dict) and item.get("urls"))]
