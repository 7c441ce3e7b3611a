"""Image references as Docker reads them: ``NAME[:TAG][@DIGEST]``.

Grammar from the distribution spec (``reference/regexp.go``): a name is
path components of lowercase alphanumerics with separators, optionally under
a registry host (``host.tld``, ``host:port`` or ``localhost``). Bare names
live on Docker Hub (``docker.io``), single-component ones under ``library/``;
listings show the familiar form (``busybox``, ``myreg:5000/app``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from layerstore.digest import parse_digest
from layerstore.errors import InvalidReference, quote

DEFAULT_DOMAIN = "docker.io"
DEFAULT_TAG = "latest"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_DOMAIN = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*(?::[0-9]+)?|\[[0-9a-fA-F:]+\](?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
MAX_NAME = 255


@dataclass(frozen=True)
class Reference:
    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        """The familiar repository name, as ``docker images`` shows it."""
        if self.domain == DEFAULT_DOMAIN:
            return self.path.removeprefix("library/") if self.path.count("/") == 1 else self.path
        return f"{self.domain}/{self.path}"

    @property
    def full_name(self) -> str:
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        out = self.repository
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    def with_default_tag(self) -> Reference:
        if self.tag is None and self.digest is None:
            return Reference(self.domain, self.path, DEFAULT_TAG)
        return self


def parse(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise a reference; InvalidReference says what is wrong."""
    subject = f"reference {quote(text)}"
    if not text or text != text.strip():
        raise InvalidReference(subject, "empty or surrounded by spaces")
    rest, _, digest = text.partition("@")
    if digest:
        try:
            digest = str(parse_digest(digest))
        except ValueError as exc:
            raise InvalidReference(subject, f"bad digest ({exc})") from None
    name, tag = rest, None
    last = rest.rfind(":")
    if last > rest.rfind("/"):
        name, tag = rest[:last], rest[last + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidReference(subject, f"invalid tag {quote(tag)}")
    domain, path = split_domain(name, subject)
    if not _NAME.fullmatch(path):
        raise InvalidReference(subject, "invalid repository name (lowercase letters, digits and separators only)")
    if len(f"{domain}/{path}") > MAX_NAME:
        raise InvalidReference(subject, f"repository name longer than {MAX_NAME} characters")
    ref = Reference(domain, path, tag, digest or None)
    return ref.with_default_tag() if default_tag else ref


def split_domain(name: str, subject: str) -> tuple[str, str]:
    first, sep, remainder = name.partition("/")
    if sep and (("." in first or ":" in first or first == "localhost") or first != first.lower()):
        if not _DOMAIN.fullmatch(first):
            raise InvalidReference(subject, f"invalid registry host {quote(first)}")
        return first, remainder
    if first == "index.docker.io":
        return DEFAULT_DOMAIN, remainder
    return DEFAULT_DOMAIN, name if "/" in name else f"library/{name}"
