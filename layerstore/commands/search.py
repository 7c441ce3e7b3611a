"""``search TERM``: repositories from Docker's search API (Docker Hub's, or a registry's), or a registry's catalog, as ``docker search``.

``--limit`` (1 to 100, 25 by default), ``-f is-official=``, ``-f is-automated=``
and ``-f stars=N`` filter as the Docker daemon does; ``--format`` takes the
placeholders ``.Name .Description .StarCount .IsOfficial .IsAutomated``.
"""
from __future__ import annotations

import argparse
import sys

from layerstore import queries
from layerstore.commands.pull import add_registry_options, quiet_http_logs
from layerstore.errors import CommandError
from layerstore.formatting import Record, ellipsis, render
from layerstore.registry.client import RegistryClient
from layerstore.registry.search import DEFAULT_LIMIT, SearchResult, search, split_term
from layerstore.store import Store

TABLE = "table {{.Name}}\t{{.Description}}\t{{.StarCount}}\t{{.IsOfficial}}"
HEADERS = {"Name": "NAME", "Description": "DESCRIPTION", "StarCount": "STARS", "IsOfficial": "OFFICIAL", "IsAutomated": "AUTOMATED"}
FILTERS = ("is-automated", "is-official", "stars")


def register(sub: argparse._SubParsersAction, name: str = "search") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="search Docker Hub (or a registry's catalog) for images")
    p.add_argument("term", metavar="TERM", help="a name to look for; HOST[:PORT]/TERM searches that registry")
    p.add_argument("-f", "--filter", action="append", metavar="FILTER", help="is-official=BOOL, is-automated=BOOL, stars=N")
    p.add_argument("--format", default="", help="'table', 'table TEMPLATE', 'json' or a Go template")
    p.add_argument("--limit", type=int, default=0, help=f"max number of search results (default {DEFAULT_LIMIT})")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    add_registry_options(p)
    p.set_defaults(func=run)


def _bool_filter(filters: dict[str, list[str]], key: str) -> bool | None:
    """Docker's ``GetBoolOrDefault``: true/1 or false/0, anything else is an invalid filter."""
    values = [v.lower() for v in filters.get(key, [])]
    if not values:
        return None
    if "true" in values or "1" in values:
        return True
    if "false" in values or "0" in values:
        return False
    raise CommandError(f"invalid filter '{key}={','.join(filters[key])}'")


def _min_stars(filters: dict[str, list[str]]) -> int | None:
    if "stars" not in filters:
        return None
    best = 0
    for value in filters["stars"]:
        try:
            best = max(best, int(value))
        except ValueError:
            raise CommandError(f"invalid filter 'stars={value}'") from None
    return best


def select(results: list[SearchResult], filters: dict[str, list[str]], limit: int) -> list[SearchResult]:
    official, automated, stars = _bool_filter(filters, "is-official"), _bool_filter(filters, "is-automated"), _min_stars(filters)
    if automated:  # deprecated on Docker Hub: filtering for true finds nothing, as Docker says
        return []
    out = [
        r for r in results
        if (automated is None or r.is_automated == automated)
        and (official is None or r.is_official == official)
        and (stars is None or r.star_count >= stars)
    ]
    return out[:limit]


def record(result: SearchResult, trunc: bool) -> Record:
    description = result.description.replace("\n", " ").replace("\r", " ")
    if trunc:
        description = ellipsis(description, 45)
    return Record(
        "search",
        {
            "Name": result.name,
            "Description": description,
            "StarCount": str(result.star_count),
            "IsOfficial": "[OK]" if result.is_official else "",
            "IsAutomated": "",  # Docker reports it false always since Docker Hub's automated builds went
        },
        HEADERS,
        # the search context's MarshalJSON (--format json, {{json .}}) says true and false
        in_json={"IsOfficial": "true" if result.is_official else "false", "IsAutomated": "false"},
    )


def run(args: argparse.Namespace, store: Store) -> int:
    quiet_http_logs()
    limit = args.limit or DEFAULT_LIMIT
    if not 1 <= limit <= 100:
        raise CommandError(f"limit {limit} is outside the range of [1, 100]")
    filters = queries.parse_filters(args.filter, FILTERS)
    domain, term = split_term(args.term)
    client = RegistryClient(domain, insecure=args.insecure_registry, cert_dir=args.cert_dir)
    try:
        results = select(search(client, term, limit), filters, limit)
    finally:
        client.close()
    fmt = args.format if args.format and args.format != "table" else TABLE
    empty = Record("search", {k: "" for k in HEADERS}, HEADERS)
    sys.stdout.write(render(fmt, [record(r, not args.no_trunc) for r in results], empty))
    return 0
