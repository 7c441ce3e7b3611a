"""Every error the layer store raises on purpose, in one tree.

Catch ``LayerStoreError`` to handle them all; each message names the object
first and the problem second (``blob sha256:ab12…: digest mismatch``), so a
command line can print ``str(error)`` as its one line.

    LayerStoreError
    ├── NotFound                 no such blob, image, tag or layer
    │   ├── PlatformMismatch     ... for the platform asked for (the image is for another)
    │   ├── NoSuchImage          an image name or ID the store does not know
    │   └── NoSuchContainer      a container name, ID or mount point it does not know
    ├── AlreadyExists            the name or directory is taken
    ├── InvalidReference         malformed digest or reference (also a ValueError)
    ├── DigestMismatch           content does not hash to the digest it claims
    │   └── SizeMismatch         ... or does not have the size it claims
    ├── UnsafeArchiveEntry       a layer entry would land outside its layer
    ├── CorruptArchive           truncated or malformed tar/gzip/zstd stream
    ├── SizeLimitExceeded        a stream grew past the caller's limit (bombs)
    ├── UnsupportedMediaType     a media type the store cannot handle
    ├── InUse                    still referenced (by a tag, a mount, a pull)
    ├── CommandError             a bad flag value or template, in Docker's words
    └── RegistryError            talking to a registry failed
        ├── AuthError            credentials missing or refused
        ├── TransportError       connection, TLS or HTTP protocol failure
        └── ManifestUnknown      the registry has no such manifest

A few keep Docker's words instead (``No such image: busybox:latest``,
``No such container: web``), as scripts look for those: ``said``.

Operating-system failures that say nothing about the data (disk full,
permission denied on the store itself) stay ``OSError``.
"""
from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "AuthError",
    "CommandError",
    "CorruptArchive",
    "DigestMismatch",
    "InUse",
    "InvalidReference",
    "LayerStoreError",
    "ManifestUnknown",
    "NoSuchContainer",
    "NoSuchImage",
    "NotFound",
    "PlatformMismatch",
    "RegistryError",
    "SizeLimitExceeded",
    "SizeMismatch",
    "TransportError",
    "UnsafeArchiveEntry",
    "UnsupportedMediaType",
    "quote",
]


def quote(name: str) -> str:
    """Double-quote a file or entry name with control and undecodable bytes escaped.

    Entry names come from untrusted archives: a raw newline or escape sequence
    must not reach a terminal or a log line unescaped.
    """
    out = []
    for ch in name:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, kept by surrogateescape
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif ch in '"\\':
            out.append("\\" + ch)
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


class LayerStoreError(Exception):
    """Base of the tree: ``subject`` is the object, ``problem`` what is wrong with it."""

    default_problem = "error"

    def __init__(self, subject: str, problem: str | None = None, *, said: str | None = None) -> None:
        """said: the message in other words than the tree's, Docker's where scripts look for them."""
        self.subject = subject
        self.problem = problem if problem is not None else self.default_problem
        super().__init__(said or f"{self.subject}: {self.problem}")


class NotFound(LayerStoreError):
    """The named blob, image, tag or layer does not exist."""

    default_problem = "not found"


class PlatformMismatch(NotFound):
    """The named image exists, but for another platform than ``--platform`` names."""


class _NoSuch(NotFound):
    kind = "object"

    def __init__(self, name: str) -> None:
        super().__init__(f"{self.kind} {quote(name)}", f"no such {self.kind}", said=f"No such {self.kind}: {quote(name)[1:-1]}")
        self.name = name


class NoSuchImage(_NoSuch):
    """``name``: the reference as Docker shows it (``busybox:latest``), or an ID as given."""

    kind = "image"


class NoSuchContainer(_NoSuch):
    kind = "container"


class AlreadyExists(LayerStoreError):
    """The name or directory is already taken (deduplication is not this error)."""

    default_problem = "already exists"


class CommandError(LayerStoreError):
    """A bad flag value or template, worded as Docker words it (one line, exit 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "", said=message)


class InvalidReference(LayerStoreError, ValueError):
    """A digest or image reference is malformed; a ValueError too, as it is bad input."""

    default_problem = "invalid reference"


class DigestMismatch(LayerStoreError):
    """Content does not hash to the digest its descriptor or caller expected."""

    def __init__(self, subject: str, *, expected: str, actual: str, problem: str | None = None) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(subject, problem or f"digest mismatch (computed {actual})")


class SizeMismatch(DigestMismatch):
    """Content length differs from the descriptor's size, which is part of its identity."""

    def __init__(self, subject: str, *, expected: int, actual: int) -> None:
        super().__init__(
            subject,
            expected=str(expected),
            actual=str(actual),
            problem=f"size mismatch (expected {expected} bytes, got {actual})",
        )
        self.expected_size = expected
        self.actual_size = actual


class UnsafeArchiveEntry(LayerStoreError):
    """A layer entry would escape its layer directory or write through a link."""

    def __init__(self, entry: str, reason: str, *, layer: str | None = None) -> None:
        self.entry = entry
        self.reason = reason
        self.layer = layer
        problem = reason if layer is None else f"{reason} (in {layer})"
        super().__init__(f"layer entry {quote(entry)}", problem)


class CorruptArchive(LayerStoreError):
    """A layer stream is truncated or malformed (tar, gzip or zstd level)."""

    default_problem = "corrupt archive"


class SizeLimitExceeded(LayerStoreError):
    """A stream grew past the caller's limit: a decompression bomb or a wrong descriptor."""

    def __init__(self, subject: str, *, limit: int) -> None:
        self.limit = limit
        super().__init__(subject, f"larger than the limit of {limit} bytes")


class UnsupportedMediaType(LayerStoreError):
    """A manifest, config or layer media type the store does not handle."""

    def __init__(self, subject: str, media_type: str) -> None:
        self.media_type = media_type
        super().__init__(subject, f"unsupported media type {quote(media_type)}")


class InUse(LayerStoreError):
    """The object is still referenced by a tag, a mount or an in-flight pull."""

    default_problem = "in use"


class RegistryError(LayerStoreError):
    """Base of the errors met while talking to a registry."""

    default_problem = "registry error"


class AuthError(RegistryError):
    """The registry wants credentials, or refused the ones given."""

    default_problem = "authentication failed"


class TransportError(RegistryError):
    """Connection, TLS or HTTP protocol failure talking to the registry."""

    default_problem = "transport error"


class ManifestUnknown(RegistryError):
    """The registry has no manifest under that tag or digest (MANIFEST_UNKNOWN)."""

    default_problem = "manifest unknown"
