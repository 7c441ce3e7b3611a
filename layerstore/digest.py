"""OCI content digests: parse and check them, and hash bytes as they stream.

A digest is ``algorithm ":" encoded`` (OCI image-spec descriptor.md). The
store accepts the two registered algorithms, ``sha256`` (64 lowercase hex
digits) and ``sha512`` (128); anything else is refused with
``InvalidReference`` rather than guessed at, because a digest we cannot
verify is no better than no digest.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Protocol

from layerstore.errors import DigestMismatch, InvalidReference, SizeMismatch, quote

__all__ = [
    "ALGORITHMS",
    "Digest",
    "DigestCounter",
    "HashingReader",
    "HashingWriter",
    "digest_bytes",
    "new_hasher",
    "parse_digest",
    "validate_digest",
]

#: Supported algorithm -> length of its lowercase hex encoding.
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}

# The descriptor grammar; checked first so that a well-formed digest of an
# unknown algorithm is told apart from garbage in the message.
_GRAMMAR = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_HEX = re.compile(r"[0-9a-f]+")


class _Hash(Protocol):
    def update(self, data: Any, /) -> None: ...
    def hexdigest(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Digest:
    """A validated digest; ``str()`` gives the canonical ``algorithm:hex`` form."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, value: str) -> Digest:
        return parse_digest(value)

    def short(self) -> str:
        """The 12-hex-digit form people read in listings (``sha256:ab12cd34ef56``)."""
        return f"{self.algorithm}:{self.hex[:12]}"

    def hasher(self) -> _Hash:
        return new_hasher(self.algorithm)


def parse_digest(value: str) -> Digest:
    """Parse ``value``, raising InvalidReference if it is malformed or of an unknown algorithm."""
    if not isinstance(value, str) or not _GRAMMAR.fullmatch(value):
        raise InvalidReference(f"digest {quote(str(value))}", "not of the form algorithm:hex")
    algorithm, _, encoded = value.partition(":")
    length = ALGORITHMS.get(algorithm)
    if length is None:
        raise InvalidReference(f"digest {quote(value)}", f"unsupported algorithm {quote(algorithm)}")
    if len(encoded) != length or not _HEX.fullmatch(encoded):
        raise InvalidReference(f"digest {quote(value)}", f"{algorithm} needs {length} lowercase hex digits")
    return Digest(algorithm, encoded)


def validate_digest(value: str) -> str:
    """Return ``value`` unchanged if it is a valid digest, else raise InvalidReference."""
    parse_digest(value)
    return value


def new_hasher(algorithm: str = "sha256") -> _Hash:
    """A hashlib object for a supported algorithm."""
    if algorithm not in ALGORITHMS:
        raise InvalidReference(f"algorithm {quote(algorithm)}", "unsupported digest algorithm")
    return hashlib.new(algorithm)


def digest_bytes(data: bytes, algorithm: str = "sha256") -> str:
    """Digest of an in-memory value (manifests, configs: small by nature)."""
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return f"{algorithm}:{hasher.hexdigest()}"


class DigestCounter:
    """A running digest and byte count of bytes fed in order (the base of the reader and writer)."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self._hasher = new_hasher(algorithm)
        self.size = 0

    def update(self, data: Any) -> None:
        self._hasher.update(data)
        self.size += len(data)

    @property
    def digest(self) -> str:
        """Digest of the bytes seen so far (a snapshot: more bytes may follow)."""
        return f"{self.algorithm}:{self._hasher.hexdigest()}"

    def verify(self, subject: str, expected_digest: str | Digest, expected_size: int | None = None) -> None:
        """Raise SizeMismatch or DigestMismatch naming ``subject`` unless the bytes seen match."""
        if expected_size is not None and expected_size != self.size:
            raise SizeMismatch(subject, expected=expected_size, actual=self.size)
        expected = str(expected_digest)
        parse_digest(expected)
        if expected.partition(":")[0] != self.algorithm:
            raise InvalidReference(f"digest {quote(expected)}", f"cannot be checked against a {self.algorithm} hash")
        actual = self.digest
        if actual != expected:
            raise DigestMismatch(subject, expected=expected, actual=actual)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Writable(Protocol):
    def write(self, data: Any, /) -> int | None: ...


class HashingReader(DigestCounter):
    """Wrap a binary reader; every byte read is hashed and counted on its way through."""

    def __init__(self, raw: _Readable, algorithm: str = "sha256") -> None:
        super().__init__(algorithm)
        self._raw = raw

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        self.update(data)
        return data

    def readinto(self, buffer: Any, /) -> int:
        view = memoryview(buffer).cast("B")
        data = self._raw.read(len(view))
        view[: len(data)] = data
        self.update(data)
        return len(data)

    def readable(self) -> bool:
        return True


class HashingWriter(DigestCounter):
    """Wrap a binary writer; every byte written is hashed and counted (ingest files)."""

    def __init__(self, raw: _Writable, algorithm: str = "sha256") -> None:
        super().__init__(algorithm)
        self._raw = raw

    def write(self, data: Any, /) -> int:
        view = memoryview(data).cast("B")
        written = self._raw.write(view)
        # A raw (unbuffered) writer may take fewer bytes; hash only those.
        count = len(view) if written is None else written
        self.update(view[:count])
        return count

    def writable(self) -> bool:
        return True
