"""The error tree: one base class, documented shape, messages that name the object first."""
from __future__ import annotations

import pytest

from layerstore import errors
from layerstore.errors import (
    AlreadyExists,
    AuthError,
    CorruptArchive,
    DigestMismatch,
    InUse,
    InvalidReference,
    LayerStoreError,
    ManifestUnknown,
    NotFound,
    RegistryError,
    SizeLimitExceeded,
    SizeMismatch,
    TransportError,
    UnsafeArchiveEntry,
    UnsupportedMediaType,
    quote,
)


def test_every_error_is_in_the_tree_and_in_the_docstring() -> None:
    classes = [getattr(errors, name) for name in errors.__all__ if name != "quote"]
    assert errors.__doc__ is not None
    for cls in classes:
        assert issubclass(cls, LayerStoreError)
        assert cls.__name__ in errors.__doc__, f"{cls.__name__} missing from the documented tree"
    for cls in (AuthError, TransportError, ManifestUnknown):
        assert issubclass(cls, RegistryError)
    assert issubclass(SizeMismatch, DigestMismatch)
    assert issubclass(InvalidReference, ValueError)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (NotFound("image busybox:latest"), "image busybox:latest: not found"),
        (AlreadyExists("tag app:1"), "tag app:1: already exists"),
        (InUse("layer sha256:ab12"), "layer sha256:ab12: in use"),
        (DigestMismatch("blob sha256:ab12", expected="sha256:ab12", actual="sha256:cd34"),
         "blob sha256:ab12: digest mismatch (computed sha256:cd34)"),
        (SizeMismatch("blob sha256:ab12", expected=10, actual=12),
         "blob sha256:ab12: size mismatch (expected 10 bytes, got 12)"),
        (UnsafeArchiveEntry("../etc/passwd", "escapes the layer root"),
         'layer entry "../etc/passwd": escapes the layer root'),
        (CorruptArchive("layer sha256:ab12", "gzip stream ends before its end marker (truncated)"),
         "layer sha256:ab12: gzip stream ends before its end marker (truncated)"),
        (SizeLimitExceeded("layer sha256:ab12", limit=100), "layer sha256:ab12: larger than the limit of 100 bytes"),
        (UnsupportedMediaType("layer", "text/plain"), 'layer: unsupported media type "text/plain"'),
        (AuthError("registry 127.0.0.1:5000"), "registry 127.0.0.1:5000: authentication failed"),
        (ManifestUnknown("image localhost/app:2"), "image localhost/app:2: manifest unknown"),
    ],
)
def test_messages_name_the_object_first(error: LayerStoreError, message: str) -> None:
    assert str(error) == message
    assert message.startswith(error.subject + ": ")


def test_unsafe_entry_keeps_its_parts() -> None:
    error = UnsafeArchiveEntry("a/../../x", "escapes the layer root", layer="layer sha256:ab")
    assert (error.entry, error.reason, error.layer) == ("a/../../x", "escapes the layer root", "layer sha256:ab")
    assert str(error) == 'layer entry "a/../../x": escapes the layer root (in layer sha256:ab)'


def test_quote_escapes_what_a_terminal_would_interpret() -> None:
    undecodable = b"\xff".decode("utf-8", "surrogateescape")
    assert quote('a"b') == '"a\\"b"'
    assert quote("new\nline\x1b[31m") == '"new\\x0aline\\x1b[31m"'
    assert quote("nul\0") == '"nul\\x00"'
    assert quote("bad" + undecodable) == '"bad\\xff"'
    assert quote("café") == '"café"'
