"""fuse-overlayfs's ID options: ``uidmapping``, ``gidmapping``, ``squash_to_root``,
``squash_to_uid``, ``squash_to_gid``.

The layers keep the IDs they have on disk; the mount shows them mapped, and
the IDs that come in (the caller's, for a new entry; a chown's) are mapped
back before they reach the disk. A copy-up copies the disk's IDs as they
are. ``uidmapping=HOST:SHOWN:COUNT[:HOST2:SHOWN2:COUNT2...]`` shows a disk
ID in ``HOST..HOST+COUNT-1`` as the same offset from ``SHOWN``; an ID that
no range covers becomes the kernel's overflow ID (65534) either way. The
squash options replace only the IDs shown. This is what fuse-overlayfs
does (its ``find_mapping``), so that a storage it serves this way can be
mounted by this driver with the same options.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IdRange:
    host: int  # first ID on disk
    shown: int  # the ID the mount shows for it
    count: int


def parse_ranges(key: str, text: str) -> tuple[IdRange, ...]:
    """``HOST:SHOWN:COUNT`` triples joined by colons."""
    parts = text.split(":")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if not numbers or len(numbers) % 3 or any(n < 0 or n > 0xFFFFFFFE for n in numbers):
        raise ValueError(f"{key}={text}: expected ID:MAPPED-ID:COUNT[:ID2:MAPPED-ID2:COUNT2...]")
    return tuple(IdRange(*numbers[i:i + 3]) for i in range(0, len(numbers), 3))


def _overflow(kind: str) -> int:
    try:
        with open(f"/proc/sys/kernel/overflow{kind}", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 65534


@dataclass(frozen=True)
class IdMap:
    uids: tuple[IdRange, ...] = ()
    gids: tuple[IdRange, ...] = ()
    squash_uid: int | None = None
    squash_gid: int | None = None
    overflow_uid: int = 65534
    overflow_gid: int = 65534

    @classmethod
    def with_kernel_overflow(cls, **fields: object) -> IdMap:
        return cls(overflow_uid=_overflow("uid"), overflow_gid=_overflow("gid"), **fields)  # type: ignore[arg-type]

    @property
    def identity(self) -> bool:
        return not (self.uids or self.gids) and self.squash_uid is None and self.squash_gid is None

    def uid_shown(self, uid: int) -> int:
        if self.squash_uid is not None:
            return self.squash_uid
        return _translate(self.uids, uid, self.overflow_uid, to_disk=False)

    def gid_shown(self, gid: int) -> int:
        if self.squash_gid is not None:
            return self.squash_gid
        return _translate(self.gids, gid, self.overflow_gid, to_disk=False)

    def uid_on_disk(self, uid: int) -> int:
        return _translate(self.uids, uid, self.overflow_uid, to_disk=True)

    def gid_on_disk(self, gid: int) -> int:
        return _translate(self.gids, gid, self.overflow_gid, to_disk=True)

    def shown(self, attrs: dict[str, int]) -> dict[str, int]:
        """Attributes as the mount shows them."""
        return {**attrs, "st_uid": self.uid_shown(attrs["st_uid"]), "st_gid": self.gid_shown(attrs["st_gid"])}


def _translate(ranges: tuple[IdRange, ...], value: int, overflow: int, to_disk: bool) -> int:
    if not ranges:
        return value
    for r in ranges:
        start, other = (r.shown, r.host) if to_disk else (r.host, r.shown)
        if start <= value < start + r.count:
            return other + value - start
    return overflow
