"""``search``: Docker's search API (``/v1/search``), or a registry's catalog where it has none.

A term names its registry as Docker's ``splitReposSearchTerm`` reads it:
``myreg:5000/app`` searches ``myreg:5000`` for ``app``, anything without a
host part searches Docker Hub. Docker Hub, and registries that keep Docker's
search API (``GET /v1/search?q=TERM&n=LIMIT``, which the Docker daemon asks
any registry for), answer with names, descriptions, stars and flags. The
distribution API has no search: where a registry answers 404 there, its
catalog is listed and its repositories whose name holds the term are the
results (no description, no stars). A registry that offers neither says so
in one line.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

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
    try:
        return search_api(client, term, limit)
    except (NotFound, ManifestUnknown):  # a distribution registry: no search API
        return catalog(client, term)


def hub(client: RegistryClient, term: str, limit: int) -> list[SearchResult]:
    """Docker Hub's ``/v1/search?q=TERM&n=LIMIT``."""
    try:
        response = client.session.get(HUB_SEARCH, params={"q": term, "n": str(limit)}, timeout=client.timeout)
    except requests.RequestException as exc:
        raise TransportError("registry docker.io", f"unreachable (search: {describe_failure(exc)})") from None
    with response:
        client.check(response, "search on docker.io")
        return _results(response, "search on docker.io")


def search_api(client: RegistryClient, term: str, limit: int) -> list[SearchResult]:
    """The registry's own ``/v1/search``, asked as the Docker daemon asks it (``X-Docker-Token``)."""
    subject = f"search on {client.domain}"
    query = urlencode({"q": term, "n": str(limit)})
    response = client.request("GET", f"/v1/search?{query}", scope=None, headers={"X-Docker-Token": "true"})
    with response:
        client.check(response, subject)
        return _results(response, subject)


def _results(response: requests.Response, subject: str) -> list[SearchResult]:
    """The ``results`` of a search answer (``name``, ``description``, ``star_count``, ``is_official``,
    ``is_automated``; Docker Hub's newer ``repo_name`` and ``short_description`` too)."""
    try:
        results = response.json().get("results") or []
        return [
            SearchResult(
                str(r.get("name") or r.get("repo_name") or ""),
                str(r.get("description") or r.get("short_description") or ""),
                int(r.get("star_count") or 0),
                bool(r.get("is_official")),
                bool(r.get("is_automated")),
            )
            for r in results if isinstance(r, dict)
        ]
    except (ValueError, TypeError, AttributeError):
        raise RegistryError(subject, "malformed answer") from None


def catalog(client: RegistryClient, term: str) -> list[SearchResult]:
    """Repositories of the registry's catalog whose name contains ``term``."""
    try:
        names = client.catalog()
    except (NotFound, ManifestUnknown):
        raise RegistryError(
            f"registry {client.domain}", "offers no search (neither Docker's search API, /v1/search, nor /v2/_catalog)"
        ) from None
    needle = term.lower()
    return [SearchResult(f"{client.domain}/{name}") for name in names if needle in name.lower()]
