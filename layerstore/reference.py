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
LEGACY_DOMAIN = "index.docker.io"
DEFAULT_TAG = "latest"
MAX_NAME = 255
# The grammar of the reference package (regexp.go), ASCII only as Go's classes are
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_HOST_PART}(?:\.{_HOST_PART})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_REFERENCE = re.compile(
    rf"(?:(?P<domain>{_HOST})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?"
)
_IDENTIFIER = re.compile(r"[a-f0-9]{64}")
INVALID_FORMAT = "invalid reference format"


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


def is_identifier(text: str) -> bool:
    """64 lowercase hex digits: an image ID, never a name, as Docker reads them."""
    return _IDENTIFIER.fullmatch(text) is not None


def parse(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise a reference as the Docker CLI does (``ParseNormalizedNamed``);
    InvalidReference says what is wrong, in the reference package's words."""
    subject = f"reference {quote(text)}"
    if is_identifier(text):
        raise InvalidReference(subject, f"invalid repository name ({text}), cannot specify 64-byte hexadecimal strings")
    domain, remainder = split_domain(text)
    remote = remainder.partition(":")[0]
    if remote.lower() != remote:
        raise InvalidReference(subject, f"{INVALID_FORMAT}: repository name ({remote}) must be lowercase")
    whole = f"{domain}/{remainder}"
    match = _REFERENCE.fullmatch(whole)
    if match is None:
        lowered = whole.lower()
        uppercase = lowered != whole and _REFERENCE.fullmatch(lowered)
        raise InvalidReference(subject, "repository name must be lowercase" if uppercase else INVALID_FORMAT)
    path = match["path"]
    if len(path) > MAX_NAME:
        raise InvalidReference(subject, f"repository name must not be more than {MAX_NAME} characters")
    digest = match["digest"]
    if digest:
        try:
            digest = str(parse_digest(digest))
        except InvalidReference as exc:
            raise InvalidReference(subject, str(exc)) from None
    if match["domain"] != domain:  # "a_b.c/x": Docker takes the whole as a path with no registry at all
        raise InvalidReference(subject, f"{INVALID_FORMAT}: invalid registry host {quote(domain)}")
    ref = Reference(domain, path, match["tag"], digest)
    return ref.with_default_tag() if default_tag else ref


def split_domain(name: str) -> tuple[str, str]:
    """The registry and the rest, as ``splitDockerDomain``: the first component is a registry
    when it has a dot or a port, is ``localhost`` or has capitals; Docker Hub's
    single-component names go under ``library/``."""
    first, sep, rest = name.partition("/")
    if not sep:
        return DEFAULT_DOMAIN, f"library/{name}"
    if first == LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    elif first == "localhost" or "." in first or ":" in first or first.lower() != first:
        domain = first
    else:
        domain, rest = DEFAULT_DOMAIN, name
    if domain == DEFAULT_DOMAIN and "/" not in rest:
        rest = f"library/{rest}"
    return domain, rest
