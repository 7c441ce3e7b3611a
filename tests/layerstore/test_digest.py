"""Digests: parsing and validation, and hashing while bytes stream through."""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from layerstore.digest import (
    Digest,
    HashingReader,
    HashingWriter,
    digest_bytes,
    new_hasher,
    parse_digest,
    validate_digest,
)
from layerstore.errors import (
    DigestMismatch,
    InvalidReference,
    LayerStoreError,
    SizeMismatch,
)

SHA256_EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SHA512_EMPTY = "sha512:" + hashlib.sha512(b"").hexdigest()


@pytest.mark.parametrize("value", [SHA256_EMPTY, SHA512_EMPTY])
def test_valid_digests_parse_and_round_trip(value: str) -> None:
    digest = parse_digest(value)
    assert str(digest) == value
    assert digest.algorithm == value.partition(":")[0]
    assert Digest.parse(value) == digest
    assert validate_digest(value) == value
    assert digest.short() == value[: len(digest.algorithm) + 1 + 12]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "not of the form"),
        ("sha256", "not of the form"),
        ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "not of the form"),
        ("sha256:", "not of the form"),
        (" " + SHA256_EMPTY, "not of the form"),
        (SHA256_EMPTY + "\n", "not of the form"),
        (SHA256_EMPTY.upper(), "not of the form"),  # algorithm names are lowercase
        ("sha256:" + "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855", "lowercase hex"),
        (SHA256_EMPTY[:-1], "64 lowercase hex"),
        (SHA256_EMPTY + "0", "64 lowercase hex"),
        ("sha256:" + "g" * 64, "64 lowercase hex"),
        ("sha512:" + "0" * 64, "128 lowercase hex"),
        ("sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709", "unsupported algorithm"),
        ("md5:d41d8cd98f00b204e9800998ecf8427e", "unsupported algorithm"),
        ("sha384:" + hashlib.sha384(b"").hexdigest(), "unsupported algorithm"),
    ],
)
def test_bad_digests_are_refused(value: str, why: str) -> None:
    with pytest.raises(InvalidReference, match=why) as info:
        parse_digest(value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, LayerStoreError)
    assert str(info.value).startswith("digest ")


def test_non_string_is_refused() -> None:
    with pytest.raises(InvalidReference):
        parse_digest(b"sha256:00" * 1)  # type: ignore[arg-type]


def test_digest_bytes_and_hasher() -> None:
    assert digest_bytes(b"") == SHA256_EMPTY
    assert digest_bytes(b"", "sha512") == SHA512_EMPTY
    with pytest.raises(InvalidReference):
        new_hasher("sha1")


def test_hashing_reader_hashes_what_streams_through(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    with path.open("rb") as raw:
        reader = HashingReader(raw)
        pieces = []
        while chunk := reader.read(7_777):
            pieces.append(chunk)
    assert b"".join(pieces) == data
    assert reader.size == len(data)
    assert reader.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    reader.verify("blob x", reader.digest, len(data))


def test_hashing_reader_readinto_and_sha512() -> None:
    data = b"layer bytes" * 1000
    reader = HashingReader(io.BytesIO(data), "sha512")
    buffer = bytearray(4096)
    total = bytearray()
    while count := reader.readinto(buffer):
        total += buffer[:count]
    assert bytes(total) == data
    assert reader.digest == "sha512:" + hashlib.sha512(data).hexdigest()


def test_verify_names_the_object_first() -> None:
    reader = HashingReader(io.BytesIO(b"abc"))
    reader.read()
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DigestMismatch) as info:
        reader.verify(f"blob {wrong}", wrong)
    assert str(info.value).startswith(f"blob {wrong}: digest mismatch")
    assert info.value.expected == wrong
    assert info.value.actual == reader.digest
    with pytest.raises(SizeMismatch, match="size mismatch") as size_info:
        reader.verify("blob y", reader.digest, 4)
    assert isinstance(size_info.value, DigestMismatch)  # one except clause catches both
    with pytest.raises(InvalidReference):
        reader.verify("blob z", "sha256:nothex")
    with pytest.raises(InvalidReference, match="cannot be checked"):
        reader.verify("blob z", SHA512_EMPTY)


def test_hashing_writer_counts_partial_writes(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    path = tmp_path / "ingest"
    # An unbuffered FileIO may write fewer bytes than offered; only those count.
    with path.open("wb", buffering=0) as raw:
        writer = HashingWriter(raw)
        view = memoryview(data)
        while view:
            view = view[writer.write(view[:65_536]) :]
    assert path.read_bytes() == data
    assert writer.size == len(data)
    assert writer.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    writer.verify("ingest", writer.digest, len(data))
