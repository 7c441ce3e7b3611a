"""Read-only questions about a store: listings, sizes, sharing, filters.

Each listing is read in one snapshot (one read transaction), so a load or an
``rmi`` running at the same time shows up whole or not at all. Sizes are
those of the unpacked layers (``layers.size``); a layer is shared when
another image has the same diff_id, as the store keeps one copy of it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import os
import re
import stat
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from layerstore.errors import CommandError, NoSuchImage
from layerstore.formatting import HOUR, MINUTE, SECOND, Timestamp, parse_time
from layerstore.model import chain_ids
from layerstore.store import Store

IMAGE_FILTERS = ("dangling", "label", "before", "since", "reference", "until")


@contextlib.contextmanager
def snapshot(store: Store) -> Iterator[None]:
    """One consistent view of the metadata for several queries (WAL read transaction)."""
    db = store.meta.db
    if db.in_transaction:
        yield
        return
    db.execute("BEGIN")
    try:
        yield
    finally:
        db.execute("COMMIT")


@dataclass
class ImageInfo:
    id: str
    created: Timestamp | None
    added: float
    size: int = 0
    shared_size: int = 0
    containers: int = 0
    tags: list[tuple[str, str]] = field(default_factory=list)  # (repository, tag)
    digests: dict[str, list[str]] = field(default_factory=dict)  # repository -> repo digests
    layers: list[str] = field(default_factory=list)  # diff_ids, bottom first

    @property
    def created_unix(self) -> int | None:
        return self.created.unix if self.created else None

    @property
    def unique_size(self) -> int:
        return self.size - self.shared_size

    @property
    def sort_key(self) -> tuple[float, float]:
        """Newest first sorts by this, descending: the config's ``created``, then when it was added."""
        created = self.created.unix + self.created.nanos / 1e9 if self.created else float("-inf")
        return (created, self.added)

    @property
    def dangling(self) -> bool:
        """Docker's ``dangling=true``: no tag (digest references do not count)."""
        return not self.tags

    def repo_digest_refs(self) -> list[str]:
        return [f"{repo}@{d}" for repo in sorted(self.digests) for d in self.digests[repo]]


@dataclass
class LayerInfo:
    diff_id: str
    size: int
    images: int  # images that have this diff_id
    active: bool = False  # one of them is used by a container


@dataclass
class LayerDetail:
    position: int
    diff_id: str
    blob: str
    media_type: str
    blob_size: int
    size: int
    chain_id: str
    shared_by: int


def list_images(store: Store) -> list[ImageInfo]:
    """Every image with its sizes, tags, digests and container count, newest first."""
    with snapshot(store):
        meta = store.meta
        images = {
            str(r["id"]): ImageInfo(str(r["id"]), parse_time(r["created"]), float(r["added"]))
            for r in meta.query("SELECT id, created, added FROM images")
        }
        users = _diff_id_users(store)
        sizes = {str(r["diff_id"]): int(r["size"]) for r in meta.query("SELECT diff_id, size FROM layers")}
        for r in meta.query("SELECT image_id, diff_id FROM image_layers ORDER BY image_id, position"):
            info = images.get(str(r["image_id"]))
            if info is None:
                continue
            diff_id = str(r["diff_id"])
            size = sizes.get(diff_id, 0)
            info.layers.append(diff_id)
            info.size += size
            if len(users[diff_id]) > 1:
                info.shared_size += size
        for r in meta.query("SELECT repository, tag, image_id FROM tags ORDER BY repository, tag"):
            if str(r["image_id"]) in images:
                images[str(r["image_id"])].tags.append((str(r["repository"]), str(r["tag"])))
        for r in meta.query("SELECT repository, digest, image_id FROM repo_digests ORDER BY repository, digest"):
            if str(r["image_id"]) in images:
                images[str(r["image_id"])].digests.setdefault(str(r["repository"]), []).append(str(r["digest"]))
        manifests: dict[str, list[str]] = defaultdict(list)
        for r in meta.query("SELECT digest, image_id FROM manifests WHERE synthetic = 0 ORDER BY digest"):
            manifests[str(r["image_id"])].append(str(r["digest"]))
        for info in images.values():  # a tagged repository without a recorded digest: the stored manifest's
            for repo in {repo for repo, _ in info.tags}:
                if repo not in info.digests and manifests.get(info.id):
                    info.digests[repo] = list(manifests[info.id])
        for r in meta.query("SELECT image_id, COUNT(*) AS n FROM containers GROUP BY image_id"):
            if str(r["image_id"]) in images:
                images[str(r["image_id"])].containers = int(r["n"])
    return sorted(images.values(), key=lambda i: i.sort_key, reverse=True)


def _diff_id_users(store: Store) -> dict[str, set[str]]:
    users: dict[str, set[str]] = defaultdict(set)
    for r in store.meta.query("SELECT DISTINCT diff_id, image_id FROM image_layers"):
        users[str(r["diff_id"])].add(str(r["image_id"]))
    return users


def list_layers(store: Store) -> list[LayerInfo]:
    """Every layer the metadata knows, with how many images share it; largest first."""
    with snapshot(store):
        active_images = {str(r["image_id"]) for r in store.meta.query("SELECT DISTINCT image_id FROM containers")}
        users = _diff_id_users(store)
        out = [
            LayerInfo(str(r["diff_id"]), int(r["size"]), len(users[str(r["diff_id"])]), bool(users[str(r["diff_id"])] & active_images))
            for r in store.meta.query("SELECT diff_id, size FROM layers")
        ]
    return sorted(out, key=lambda layer: (-layer.size, layer.diff_id))


def image_layer_details(store: Store, image_id: str) -> list[LayerDetail]:
    """The layers of one image, bottom first, with blob, sizes, ChainID and sharing count."""
    with snapshot(store):
        rows = store.meta.query(
            """SELECT il.position, il.diff_id, il.blob, il.media_type, il.blob_size, COALESCE(l.size, 0) AS size,
                      (SELECT COUNT(DISTINCT o.image_id) FROM image_layers o WHERE o.diff_id = il.diff_id) AS shared_by
               FROM image_layers il LEFT JOIN layers l ON l.diff_id = il.diff_id
               WHERE il.image_id = ? ORDER BY il.position""",
            image_id,
        )
    chains = chain_ids([str(r["diff_id"]) for r in rows])
    return [
        LayerDetail(int(r["position"]), str(r["diff_id"]), str(r["blob"]), str(r["media_type"]), int(r["blob_size"]), int(r["size"]), chain, int(r["shared_by"]))
        for r, chain in zip(rows, chains)
    ]


def labels(store: Store, image_id: str) -> dict[str, str]:
    """``config.Labels`` of an image's config (empty when it has none)."""
    try:
        doc = store.config(image_id)
    except (OSError, ValueError):
        return {}
    cfg = doc.get("config") if isinstance(doc, dict) else None
    found = cfg.get("Labels") if isinstance(cfg, dict) else None
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


# -- filters ----------------------------------------------------------------------


def parse_filters(values: list[str] | None, allowed: tuple[str, ...]) -> dict[str, list[str]]:
    """``-f key=value`` flags into {key: [values]}; Docker's wording for bad ones."""
    out: dict[str, list[str]] = {}
    for text in values or []:
        key, sep, value = text.partition("=")
        key = key.strip().lower()
        if not sep:
            raise CommandError("bad format of filter (expected name=value)")
        if key not in allowed:
            raise CommandError(f"invalid filter '{key}'")
        out.setdefault(key, []).append(value)
    for value in out.get("dangling", []):
        if value.lower() not in ("true", "false", "1", "0"):
            raise CommandError(f"invalid filter 'dangling={value}'")
    return out


def dangling_wanted(filters: dict[str, list[str]]) -> bool | None:
    values = filters.get("dangling")
    if not values:
        return None
    return values[-1].lower() in ("true", "1")


def go_path_match(pattern: str, name: str) -> bool:
    """Go's ``path.Match``: ``*`` and ``?`` stop at ``/``, ``[...]``/``[^...]`` classes, ``\\`` escapes."""
    return _glob_regex(pattern).fullmatch(name) is not None


@functools.lru_cache(maxsize=64)  # a filter's pattern is matched against every image, twice each
def _glob_regex(pattern: str) -> re.Pattern[str]:
    def bad() -> CommandError:
        return CommandError(f"invalid reference filter {pattern!r}: syntax error in pattern")

    def escaped(j: int) -> tuple[str, int]:
        """Go's getEsc: one class character (``\\`` escapes), never ``-`` or ``]``, never the last."""
        if j >= len(pattern) or pattern[j] in "-]":
            raise bad()
        if pattern[j] == "\\":
            j += 1
            if j >= len(pattern):
                raise bad()
        if j + 1 >= len(pattern):
            raise bad()
        return pattern[j], j + 1

    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            i += 1
            if i >= len(pattern):
                raise bad()
            out.append(re.escape(pattern[i]))
        elif c == "[":
            j = i + 1
            negated = j < len(pattern) and pattern[j] == "^"
            j += negated
            ranges: list[tuple[str, str]] = []
            while not (ranges and j < len(pattern) and pattern[j] == "]"):
                lo, j = escaped(j)
                hi = lo
                if pattern[j] == "-":
                    hi, j = escaped(j + 1)
                ranges.append((lo, hi))
            i = j
            wanted = "".join(f"{re.escape(lo)}-{re.escape(hi)}" for lo, hi in ranges if lo <= hi)
            # a range backwards matches nothing in Go, and is an error to Python's re
            out.append(f"[{'^' if negated else ''}{wanted}]" if wanted else "." if negated else "(?!)")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def reference_matches(pattern: str, repository: str, tag: str | None = None, digest: str | None = None) -> bool:
    """Docker's ``reference.FamiliarMatch``: the familiar ``name:tag`` (or ``name@digest``), then the name.

    A pattern without wildcards that names the same repository in full
    (``docker.io/library/busybox:latest``) matches too.
    """
    full = f"{repository}:{tag}" if tag is not None else f"{repository}@{digest}" if digest else repository
    if go_path_match(pattern, full) or go_path_match(pattern, repository):
        return True
    if any(c in pattern for c in "*?[\\"):
        return False
    from layerstore import reference
    from layerstore.errors import InvalidReference

    try:
        ref = reference.parse(pattern, default_tag=False)
    except InvalidReference:
        return False
    if ref.repository != repository:
        return False
    if ref.digest:
        return ref.digest == digest
    return ref.tag is None or ref.tag == tag


# time.ParseDuration's units, in nanoseconds (the micro sign and the Greek mu both spell micro)
_UNITS = {"ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000, "s": SECOND, "m": MINUTE, "h": HOUR}
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")
_NANOS_LIMIT = 1 << 63
_UNIX_TIME = re.compile(r"\+?[0-9]+(?:\.[0-9]+)?")


def go_duration(text: str) -> int | None:
    """Go's ``time.ParseDuration`` in nanoseconds (``1h30m``, ``-1.5s``, ``0``), None where Go
    refuses it, overflow included; each unit's fraction is rounded down as Go rounds it."""
    rest = text[1:] if text[:1] in ("-", "+") else text
    negative = text[:1] == "-"
    if rest == "0":
        return 0
    if not rest:
        return None
    total = 0
    while rest:
        part = _DURATION_PART.match(rest)
        assert part is not None  # every group may be empty
        whole, fraction, unit = part.group(1), part.group(2), part.group(3)
        if not whole and not fraction:  # also "." alone: a number needs a digit
            return None
        nanos = _UNITS.get(unit)
        if nanos is None:
            return None
        value = int(whole or "0")
        if value > _NANOS_LIMIT // nanos:
            return None
        value *= nanos
        kept, scale = 0, 1.0
        for digit in fraction or "":  # leadingFraction: the digits up to where they would overflow
            if kept > (_NANOS_LIMIT - 1) // 10 or kept * 10 + int(digit) > _NANOS_LIMIT:
                break
            kept, scale = kept * 10 + int(digit), scale * 10
        if kept:
            value += int(float(kept) * (float(nanos) / scale))
            if value > _NANOS_LIMIT:
                return None
        total += value
        if total > _NANOS_LIMIT:
            return None
        rest = rest[part.end():]
    if negative:
        return -total
    return total if total < _NANOS_LIMIT else None


def parse_duration(text: str) -> float | None:
    """A Go duration in seconds; None if text is not one."""
    nanos = go_duration(text)
    return None if nanos is None else nanos / 1e9


# The fields of the layouts Docker's until= is read with (GetTimestamp): a date, then an hour,
# minutes, seconds and a fraction as the layout has them, then a zone where it has one
_WHEN = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
    r"(?:T(?P<hour>[0-9]{1,2})(?::(?P<minute>[0-9]{2})(?::(?P<second>[0-9]{2})(?:[.,](?P<fraction>[0-9]+))?)?)?)?"
    r"(?P<zone>Z|[+-][0-9]{2}:[0-9]{2})?"
)
_LAYOUT_FIELDS = ("hour", "minute", "second")


def go_layout_time(value: str, fields: int, zoned: bool, nanos_field: bool = False) -> float | None:
    """``time.Parse`` (``ParseInLocation`` with the local zone where not ``zoned``) of the layouts
    ``2006-01-02`` and ``2006-01-02T15[:04[:05[.999999999]]]``, each with ``Z07:00`` where zoned;
    fields counts the layout's hour, minutes and seconds. A fraction of a second may follow the
    seconds either way, of at most 9 digits where the layout has them (``nanos_field``).
    The Unix time, or None where Go refuses."""
    m = _WHEN.fullmatch(value)
    if m is None or (m["zone"] is not None) != zoned or (nanos_field and len(m["fraction"] or "") > 9):
        return None
    if any((m[name] is not None) != (i < fields) for i, name in enumerate(_LAYOUT_FIELDS)):
        return None
    year, month, day = int(m["year"]), int(m["month"]), int(m["day"])
    hour, minute, second = (int(m[name] or 0) for name in _LAYOUT_FIELDS)
    if not (1 <= month <= 12 and hour < 24 and minute < 60 and second < 60 and year >= 1):
        return None
    try:
        wall = _dt.datetime(year, month, day, hour, minute, second)
    except ValueError:  # the day is out of its month's range
        return None
    nanos = int((m["fraction"] or "0")[:9].ljust(9, "0"))
    if not zoned:
        return wall.timestamp() + nanos / 1e9
    offset = 0
    if m["zone"] != "Z":
        offset = (int(m["zone"][1:3]) * 60 + int(m["zone"][4:6])) * (-60 if m["zone"][0] == "-" else 60)
    return wall.replace(tzinfo=_dt.UTC).timestamp() - offset + nanos / 1e9


def parse_until(value: str, now: float | None = None) -> float:
    """Docker's ``until=`` (GetTimestamp): a Go duration before now; else a date and time, whose
    layout the value's punctuation picks, in its own zone or the local one; else a Unix time.
    The value is taken as given, spaces and all, as Docker takes it."""
    now = time.time() if now is None else now
    duration = parse_duration(value)
    if duration is not None and value != "0":  # a bare 0 is the Unix epoch
        return now - duration
    zoned = any(c in value for c in "zZ+") or value.count("-") == 3
    if "." in value:
        fields = 3
    elif "T" in value:
        colons = value.count(":") - (1 if zoned and not any(c in value for c in "zZ") and ":" in value else 0)
        fields = min(colons, 2) + 1
    else:
        fields = 0
    when = go_layout_time(value, fields, zoned, nanos_field="." in value)
    if when is not None:
        return when
    if "-" not in value and _UNIX_TIME.fullmatch(value):  # seconds[.fraction]: no 1e9, no nan
        return float(value)
    raise CommandError(f"invalid filter 'until={value}': not a duration, Unix time or date")


def filter_images(store: Store, images: list[ImageInfo], filters: dict[str, list[str]]) -> list[ImageInfo]:
    """Docker's image list filters. References that do not match a ``reference`` filter are dropped from the rows."""
    dangling = dangling_wanted(filters)
    by_id = {i.id: i for i in images}
    before = [b for v in filters.get("before", []) if (b := _bound(store, by_id, v)) is not None]
    since = [b for v in filters.get("since", []) if (b := _bound(store, by_id, v)) is not None]
    until = [parse_until(v) for v in filters.get("until", [])]
    label_filters = filters.get("label", [])
    patterns = filters.get("reference", [])
    out: list[ImageInfo] = []
    for info in images:
        if dangling is True and not info.dangling:
            continue
        if dangling is False and info.dangling and not info.digests:
            continue
        created = _created(info)
        if before and (created is None or any(not created < b for b in before)):
            continue
        if since and (created is None or any(not created > b for b in since)):
            continue
        if until and (info.created is None or any(not info.created.unix + info.created.nanos / 1e9 < u for u in until)):
            continue
        if label_filters and not labels_match(labels(store, info.id), label_filters):
            continue
        if patterns:
            tags = [(r, t) for r, t in info.tags if any(reference_matches(p, r, tag=t) for p in patterns)]
            kept_repos = {r for r, _ in tags}  # a matched tag keeps its repository's digests for --digests
            digests = {
                r: kept
                for r, ds in info.digests.items()
                if (kept := ds if r in kept_repos else [d for d in ds if any(reference_matches(p, r, digest=d) for p in patterns)])
            }
            if not tags and not digests:
                continue
            info = ImageInfo(info.id, info.created, info.added, info.size, info.shared_size, info.containers, tags, digests, info.layers)
        out.append(info)
    return out


def _created(info: ImageInfo) -> tuple[int, int] | None:
    return (info.created.unix, info.created.nanos) if info.created else None


def _bound(store: Store, by_id: dict[str, ImageInfo], text: str) -> tuple[int, int] | None:
    """The created time of a ``before=``/``since=`` image, as dockerd compares them: by the
    config's time alone (images created at the same instant are neither before nor since
    each other), and no bound at all from an image whose config has none."""
    image_id = store.resolve(text)
    info = by_id.get(image_id)
    if info is None:
        raise NoSuchImage(text)
    return _created(info)


def labels_match(have: dict[str, str], wanted: list[str]) -> bool:
    """Every ``label=KEY`` or ``label=KEY=VALUE`` must hold (``label!=`` is not a Docker image filter)."""
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in have:
            return False
        if sep and have[key] != value:
            return False
    return True


def details_for_inspect(store: Store, image_id: str) -> dict[str, Any]:
    """Tags, repo digests and layers of one image, read in one snapshot."""
    with snapshot(store):
        meta = store.meta
        tags = store.tags_of(image_id)
        layers = image_layer_details(store, image_id)
        digests: dict[str, list[str]] = {}
        for r in meta.query("SELECT repository, digest FROM repo_digests WHERE image_id = ? ORDER BY repository, digest", image_id):
            digests.setdefault(str(r["repository"]), []).append(str(r["digest"]))
        manifests = [str(r["digest"]) for r in meta.query("SELECT digest FROM manifests WHERE image_id = ? AND synthetic = 0 ORDER BY digest", image_id)]
    for repo in {t.rpartition(":")[0] for t in tags}:
        if repo not in digests and manifests:
            digests[repo] = list(manifests)
    refs = [f"{repo}@{d}" for repo in sorted(digests) for d in digests[repo]]
    return {"tags": tags, "layers": layers, "repo_digests": refs}


def tree_size(path: os.PathLike[str] | str) -> int:
    """Bytes of the regular files under a directory (a container's layer), links not followed."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total
