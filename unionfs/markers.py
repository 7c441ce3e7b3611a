"""Whiteouts and opaque markers: every form that is read, the form that is written.

Read in every layer (overlayfs.rst "whiteouts and opaque directories", OCI
image-spec layer.md "Whiteouts"):
  - a character device 0/0 named NAME (overlayfs);
  - an empty regular file NAME with the xattr ``overlay.whiteout`` (overlayfs
    xattr whiteouts, in the trusted. or user. namespace); a listing leaves them
    out where the directory says it holds them, by ``overlay.opaque`` = ``x``
    (or ``overlay.whiteouts``, the mark of the first kernels that read them), as
    overlayfs does;
  - a file ``.wh.NAME`` (OCI);
  - an opaque directory: xattr ``overlay.opaque`` = ``y`` or a ``.wh..wh..opq`` entry.
A marker hides entries of the layers below it, never entries of its own layer.
"""
from __future__ import annotations

import enum
import stat

WH_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
OPAQUE_VALUE = b"y"
XWHITEOUTS_VALUE = b"x"  # overlay.opaque of a directory that is not opaque but holds xattr whiteouts
WHITEOUT_XATTRS = ("trusted.overlay.whiteout", "user.overlay.whiteout")
# the first kernels' mark of a directory that holds xattr whiteouts, before overlay.opaque=x
WHITEOUTS_XATTRS = ("trusted.overlay.whiteouts", "user.overlay.whiteouts")
REDIRECT_XATTRS = ("trusted.overlay.redirect", "user.overlay.redirect")
# A metacopy file: its metadata, its data left in a lower layer (overlayfs with metacopy=on).
METACOPY_XATTRS = ("trusted.overlay.metacopy", "user.overlay.metacopy")
# A directory of an overlayfs upper layer that holds a copied-up entry, metacopy files among them.
IMPURE_XATTRS = ("trusted.overlay.impure", "user.overlay.impure")
# A directory that no entry of its layer described (a layer tar that adds
# /a/b/c without an entry for /a/b): it takes its attributes from below.
IMPLICIT_XATTRS = ("trusted.unionfs.implicit", "user.unionfs.implicit")
# Private state of this driver; never shown through the mount.
PRIVATE_XATTR_PREFIXES = ("trusted.unionfs.", "user.unionfs.")
HIDDEN_XATTR_PREFIXES = OVERLAY_XATTR_PREFIXES + PRIVATE_XATTR_PREFIXES
# overlayfs (Linux 6.7) keeps an xattr of its own namespace that a user sets through it one
# "overlay." deeper, and shows it back without that level (overlayfs.rst "Nesting overlayfs
# mounts"): never a record of this union, only of one that has it as a layer.
ESCAPED_XATTR_PREFIXES = tuple(prefix + "overlay." for prefix in OVERLAY_XATTR_PREFIXES)


class WhiteoutForm(enum.Enum):
    """How this driver writes whiteouts and opaque markers in the upper layer."""

    OVERLAY = "overlay"  # char 0/0 + trusted.overlay.opaque: kernel overlayfs reads the upper
    OCI = "oci"  # .wh.NAME + .wh..wh..opq: no privilege needed, a layer tar as is


def is_marker_name(name: str) -> bool:
    """Names that would be read as markers: users may not create them."""
    return name.startswith(WH_PREFIX)


def is_chardev_whiteout(st_mode: int, st_rdev: int) -> bool:
    return stat.S_ISCHR(st_mode) and st_rdev == 0


def is_hidden_xattr(name: str) -> bool:
    return name.startswith(HIDDEN_XATTR_PREFIXES)


def shown_xattr(name: str, own: str) -> str | None:
    """The name that a layer's xattr shows under through the mount, or None for a record
    of overlayfs or of this driver; own: the overlay prefix of the mount's records."""
    if not name.startswith(HIDDEN_XATTR_PREFIXES):
        return name
    if name.startswith(own + "overlay."):
        return own + name[len(own) + len("overlay."):]
    return None


def stored_xattr(name: str, own: str) -> str | None:
    """The name under which a caller's xattr is kept in the upper layer, or None for one
    that no caller may set (the other overlay prefix, this driver's own)."""
    if not name.startswith(HIDDEN_XATTR_PREFIXES):
        return name
    if name.startswith(own):
        return own + "overlay." + name[len(own):]
    return None
