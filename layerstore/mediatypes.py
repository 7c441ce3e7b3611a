"""Layer media types of the OCI image spec and Docker's schema 2, and their compression.

Importers normalise Docker's names to OCI descriptors at the boundary, but a
layer blob is still unpacked by whichever name its manifest used.
"""
from __future__ import annotations

from layerstore.errors import UnsupportedMediaType

__all__ = ["LAYER_COMPRESSION", "OCI_LAYER", "OCI_LAYER_GZIP", "OCI_LAYER_ZSTD", "layer_compression"]

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
OCI_NONDISTRIBUTABLE_LAYER = "application/vnd.oci.image.layer.nondistributable.v1.tar"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = DOCKER_LAYER + ".gzip"
DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

#: Layer media type -> compression it announces ("none", "gzip" or "zstd").
LAYER_COMPRESSION: dict[str, str] = {
    OCI_LAYER: "none",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    # Deprecated in image-spec 1.1 but still found in old images.
    OCI_NONDISTRIBUTABLE_LAYER: "none",
    OCI_NONDISTRIBUTABLE_LAYER + "+gzip": "gzip",
    OCI_NONDISTRIBUTABLE_LAYER + "+zstd": "zstd",
    DOCKER_LAYER: "none",
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_FOREIGN_LAYER_GZIP: "gzip",
    DOCKER_LAYER + ".zstd": "zstd",
}


def layer_compression(media_type: str) -> str:
    """Compression announced by a layer media type; UnsupportedMediaType for anything else."""
    try:
        return LAYER_COMPRESSION[media_type]
    except KeyError:
        raise UnsupportedMediaType("layer", media_type) from None
