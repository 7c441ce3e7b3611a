"""Mount options in the syntax of ``mount -t overlay`` and fuse-overlayfs.

``lowerdir=TOP:...:BOTTOM,upperdir=U,workdir=W`` (or ``lowerdir+=TOP,
lowerdir+=...``, one layer each) plus this driver's own options and the
generic mount flags that mount(8) and mount.fuse pass along.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from unionfs.idmap import IdMap, parse_ranges
from unionfs.markers import WhiteoutForm

# Generic mount flags that libfuse 2 turns into MS_* flags.
FUSE_MOUNT_FLAGS = {"rw", "ro", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "sync", "async", "atime", "noatime", "dirsync"}
# Flags that mount(8), fstab and mount.fuse pass and that mean nothing here.
IGNORED = {"defaults", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail", "relatime", "norelatime",
           "strictatime", "nodiratime", "diratime", "lazytime", "nolazytime", "loop", "silent", "loud"}
# overlayfs options that this driver accepts for drop-in use; its behaviour is fixed.
OVERLAY_COMPAT = {"redirect_dir", "index", "xino", "metacopy", "nfs_export", "uuid", "verity"}
# fuse-overlayfs's tuning, KEY=N: how it serves requests, which this driver does its own way.
FUSE_OVERLAYFS_TUNING = {"threaded", "fast_ino", "writeback"}
# fuse-overlayfs's KEY=N options whose 0 this driver shares and whose other values it lacks.
FUSE_OVERLAYFS_OFF = {
    "noxattrs": "a mount without extended attributes",
    "xattr_permissions": "owners and modes kept in xattrs",
}


class OptionError(ValueError):
    """A mount option that is unknown or malformed."""


@dataclass(frozen=True)
class MountOptions:
    lowerdirs: tuple[str, ...]
    upperdir: str | None = None
    workdir: str | None = None
    whiteout: WhiteoutForm | None = None  # None: overlay form as root or with userxattr, OCI form otherwise
    volatile: bool = False  # sync nothing in the upper layer
    userxattr: bool = False  # overlayfs's records in user.overlay.*, not trusted.overlay.*
    allow_other: bool = False
    allow_root: bool = False
    # How long the kernel may trust a name lookup (found or missing) and the
    # attributes. Both change only through this mount (lower layers are
    # read-only by the overlayfs contract), and the kernel updates its own
    # cache for the entries a request names. What a change does to other
    # entries (a copy-up makes the directories above merged, gives one name of
    # a lower hard link an inode of its own) the native engine tells the
    # kernel. Through fusepy it cannot, so attributes stay short there.
    timeout: float = 60.0
    attr_timeout: float | None = None  # None: timeout with the native engine, 1 s with fusepy
    mount_flags: tuple[str, ...] = field(default=())
    # native: this driver's own FUSE protocol code; fusepy: libfuse 2's path API through fusepy.
    engine: str = "native"
    # FUSE over io_uring (native engine): auto when the kernel offers it, on to insist, off for /dev/fuse alone.
    io_uring: str = "auto"
    ids: IdMap = IdMap()  # fuse-overlayfs's uidmapping, gidmapping and squash_to_* (native engine)
    static_nlink: bool = False  # fuse-overlayfs's: every directory's link count is 1
    acl: bool = True  # False (fuse-overlayfs's noacl): POSIX ACLs are kept, but only the mode bits decide

    @property
    def attr_seconds(self) -> float:
        if self.attr_timeout is not None:
            return self.attr_timeout
        return self.timeout if self.engine == "native" else 1.0

    @property
    def read_only(self) -> bool:
        return self.upperdir is None or "ro" in self.mount_flags


def _split_escaped(text: str, separator: str) -> list[str]:
    """text split at each separator that no backslash escapes, escapes kept: a backslash
    escapes the character after it, a backslash too (overlayfs's ovl_next_opt, and
    its split of lowerdir)."""
    parts, start, i = [], 0, 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == separator:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def unescape(text: str) -> str:
    """Each backslash taken for the character after it (overlayfs's ovl_unescape, and
    libfuse's option parser)."""
    return re.sub(r"\\(.?)", r"\1", text, flags=re.DOTALL)


def split_options(text: str) -> list[str]:
    """Split on commas that are not escaped with a backslash; each option's value is
    unescaped as its key says (parse)."""
    return [part for part in _split_escaped(text, ",") if part]


_DATA_ONLY = "data-only lower layers are not supported (they hold the data of metacopy files, which this driver refuses)"


def split_lowerdir(text: str) -> tuple[str, ...]:
    """``A:B:C`` with ``\\:`` for a colon inside a name (``\\,`` for a comma, ``\\\\`` for a
    backslash), as overlayfs reads it."""
    parts = [unescape(part) for part in _split_escaped(text, ":")]
    if not all(parts):
        if all(parts[0:1] + parts[-1:]):  # overlayfs's A:B::DATA
            raise OptionError(f"lowerdir={text}: {_DATA_ONLY}")
        raise OptionError(f"lowerdir={text}: empty layer path")
    return tuple(parts)


def parse(option_strings: list[str]) -> MountOptions:
    values: dict[str, object] = {}
    flags: list[str] = []
    ids: dict[str, object] = {}
    listed = False  # lowerdir= was given: lowerdir+ may not follow it
    for text in option_strings:
        for item in split_options(text):
            key, eq, raw = item.partition("=")
            value = unescape(raw)
            if key == "lowerdir":  # replaces the layers given before, lowerdir+ ones too, as on overlayfs
                values["lowerdirs"] = split_lowerdir(raw)
                listed = True
            elif key == "lowerdir+":  # overlayfs since Linux 6.8: one layer, appended below, taken as it is
                if listed:
                    raise OptionError(f"{item}: lowerdir+ cannot follow lowerdir")
                if not raw:
                    raise OptionError("lowerdir+: empty path")
                values["lowerdirs"] = (*values.get("lowerdirs", ()), raw)  # type: ignore[misc]
            elif key == "datadir+":
                raise OptionError(f"{item}: {_DATA_ONLY}")
            elif key in ("upperdir", "workdir"):
                if not value:
                    raise OptionError(f"{key}: empty path")
                values[key] = value
            elif key == "whiteout":
                if value not in ("overlay", "oci", "auto"):
                    raise OptionError(f"whiteout={value}: expected overlay, oci or auto")
                values["whiteout"] = None if value == "auto" else WhiteoutForm(value)
            elif key == "engine":
                if value not in ("native", "fusepy"):
                    raise OptionError(f"engine={value}: expected native or fusepy")
                values["engine"] = value
            elif key == "io_uring":
                if value not in ("auto", "on", "off"):
                    raise OptionError(f"io_uring={value}: expected auto, on or off")
                values["io_uring"] = value
            elif key in ("volatile", "userxattr") and not eq:
                values[key] = True
            elif key == "fsync":  # fuse-overlayfs's spelling: fsync=0 syncs nothing, as volatile
                if value not in ("0", "1"):
                    raise OptionError(f"fsync={value}: expected 0 or 1")
                values["volatile"] = value == "0" or bool(values.get("volatile"))
            elif key == "default_permissions" and not eq:
                continue  # always: the kernel checks modes and ACLs
            elif key in ("allow_other", "allow_root") and not eq:
                values[key] = True
            elif key in ("timeout", "attr_timeout"):
                try:
                    values[key] = float(value)
                except ValueError:
                    raise OptionError(f"{key}={value}: not a number") from None
            elif key in ("uidmapping", "gidmapping"):
                try:
                    ids[key] = parse_ranges(key, value)
                except ValueError as exc:
                    raise OptionError(str(exc)) from None
            elif key in ("squash_to_uid", "squash_to_gid"):
                if not value.isdigit() or int(value) > 0xFFFFFFFE:
                    raise OptionError(f"{key}={value}: expected a numeric ID")
                ids[key] = int(value)
            elif key == "squash_to_root" and not eq:
                ids[key] = 0
            elif key == "static_nlink" and not eq:
                values["static_nlink"] = True
            elif key == "noacl" and not eq:
                values["acl"] = False
            elif key in FUSE_OVERLAYFS_TUNING or key in FUSE_OVERLAYFS_OFF:
                if not value.isdigit():
                    raise OptionError(f"{item}: expected a number")
                if key in FUSE_OVERLAYFS_OFF and int(value):
                    raise OptionError(f"{item}: not supported ({FUSE_OVERLAYFS_OFF[key]})")
            elif key == "plugins":
                raise OptionError(f"{item}: fuse-overlayfs's layer plugins are not supported")
            elif key in FUSE_MOUNT_FLAGS and not eq:
                flags.append(key)
            elif key in IGNORED or key in OVERLAY_COMPAT or key.startswith(("x-", "comment")):
                continue
            else:
                raise OptionError(f"unknown option: {item}")
    if "lowerdirs" not in values:
        raise OptionError("missing lowerdir=")
    if ("upperdir" in values) != ("workdir" in values):
        raise OptionError("upperdir and workdir must be given together")
    values["mount_flags"] = tuple(flags)
    if ids:
        if values.get("engine") == "fusepy":
            raise OptionError(f"{', '.join(sorted(ids))}: not with engine=fusepy")
        root = ids.get("squash_to_root")  # squash_to_uid and squash_to_gid take precedence, as in fuse-overlayfs
        values["ids"] = IdMap.with_kernel_overflow(
            uids=ids.get("uidmapping", ()), gids=ids.get("gidmapping", ()),
            squash_uid=ids.get("squash_to_uid", root), squash_gid=ids.get("squash_to_gid", root))
    return MountOptions(**values)  # type: ignore[arg-type]
