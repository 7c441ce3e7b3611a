"""``search``: Docker Hub's search API for ``docker.io``, the ``/v2/_catalog`` of any other registry.

A term names its registry as Docker's ``splitReposSearchTerm`` reads it:
``myreg:5000/app`` searches ``myreg:5000`` for ``app``, anything without a
host part searches Docker Hub. The distribution API has no search, so for
other registries the catalog is listed and its repositories whose name holds
the term are the results (no description, no stars). A registry that offers
neither says so in one line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from layerstore.errors import ManifestUnknown, NotFound, RegistryError, TransportError
from layerstore.reference import DEFAULT_DOMAIN
from layerstore.registry.client import RegistryClient, describe_failure

HUB_SEARCH = "https://index.docker.io/v1/search"
DEFAULT_LIMIT = 25


@dataclass(frozen=True)
class SearchResult:
    name: str
    description: str = ""
    star_count: int = 0
    is_official: bool = False
    is_automated: bool = False


def split_term(term: str) -> tuple[str, str]:
    """``(registry, term)``: the host part when the first component looks like one."""
    first, sep, rest = term.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if first in ("docker.io", "index.docker.io", "registry-1.docker.io"):
            return DEFAULT_DOMAIN, rest
        return first, rest
    return DEFAULT_DOMAIN, term


def search(client: RegistryClient, term: str, limit: int = DEFAULT_LIMIT) -> list[SearchResult]:
    """Results for ``term`` (already without its host part) from the registry ``client`` talks to."""
    if client.domain == DEFAULT_DOMAIN:
        return hub(client, term, limit)
    return catalog(client, term)


def hub(client: RegistryClient, term: str, limit: int) -> list[SearchResult]:
    """Docker Hub's ``/v1/search?q=TERM&n=LIMIT``."""
    try:
        response = client.session.get(HUB_SEARCH, params={"q": term, "n": str(limit)}, timeout=client.timeout)
    except requests.RequestException as exc:
        raise TransportError("registry docker.io", f"unreachable (search: {describe_failure(exc)})") from None
    with response:
        client.check(response, "search on docker.io")
        try:
            results = response.json().get("results") or []
        except (ValueError, AttributeError):
            raise RegistryError("search on docker.io", "malformed answer") from None
    return [_hub_result(r) for r in results if isinstance(r, dict)]


def _hub_result(r: dict[str, Any]) -> SearchResult:
    return SearchResult(
        str(r.get("name") or r.get("repo_name") or ""),
        str(r.get("description") or r.get("short_description") or ""),
        int(r.get("star_count") or 0),
        bool(r.get("is_official")),
        bool(r.get("is_automated")),
    )


def catalog(client: RegistryClient, term: str) -> list[SearchResult]:
    """Repositories of the registry's catalog whose name contains ``term``."""
    try:
        names = client.catalog()
    except (NotFound, ManifestUnknown):
        raise RegistryError(
            f"registry {client.domain}", "offers no search (neither Docker Hub's search API nor /v2/_catalog)"
        ) from None
    needle = term.lower()
    return [SearchResult(f"{client.domain}/{name}") for name in names if needle in name.lower()]
