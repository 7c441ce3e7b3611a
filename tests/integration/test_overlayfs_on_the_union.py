"""Kernel overlayfs with the driver's mount as its lower layer, as inside a container whose root the driver serves.

An overlayfs mounted inside such a container (a build, a nested container
engine) takes directories of the container's root as lower layers, and reads
them through FUSE: the kernel's own lookups, listings and xattr reads, and its
copy-ups of what it reads there. Over the driver's union of two layers it
must show and change what it shows and changes over the same two layers
given to it directly: nothing of the driver's markers may show through, hard
links must stay one inode, and its copy-ups must carry the same data and
xattrs into its own upper layer.

(overlayfs refuses the mount as its *upper* layer, as it refuses
fuse-overlayfs's: a FUSE upper must take ``RENAME_WHITEOUT`` and
``trusted.overlay.*`` xattrs, which the driver refuses as overlayfs does
through its own mounts.)
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from difftree import Dir, File, HardLink, Symlink, Whiteout, apply, build_layer, diff_maps, kernel_overlay_available, layer_state, op, upper_view, view
from mounts import Stack, fuse_mount, kernel_mount

pytestmark = [
    pytest.mark.usefixtures("transport"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (kernel overlayfs)"),
    pytest.mark.skipif(os.geteuid() == 0 and not kernel_overlay_available(), reason="kernel overlayfs not available"),
]

TOP = Dir({
    "etc": Dir({"hosts": File(b"127.0.0.1 localhost\n", xattrs=(("user.origin", b"top"),)), "gone": Whiteout()}),
    "opaque": Dir({"new": File(b"only this\n")}, opaque="xattr"),
    "bin": Dir({"tool": File(b"#!/bin/sh\n", mode=0o755), "alias": Symlink("tool"), "twin": HardLink("bin/tool")}),
})
BOTTOM = Dir({
    "etc": Dir({"gone": File(b"hidden by the top layer\n"), "passwd": File(b"root:x:0:0::/root:/bin/sh\n", mode=0o600)}),
    "opaque": Dir({"old": File(b"hidden by the opaque directory\n")}),
    "var": Dir({"lib": Dir({"data": File(b"x" * 70000, xattrs=(("user.big", b"v" * 300),))})}),
})
OPERATIONS = [
    op("write", "etc/passwd", "append", b"user:x:1000:1000::/home/user:/bin/sh\n"),
    op("write", "bin/tool", "append", b"echo copied up\n"),  # one of two hard links
    op("unlink", "etc/hosts"),
    op("rename", "var/lib/data", "var/data"),
    op("rmdir", "var/lib"),
    op("mkdir", "etc/gone"),  # where a whiteout hides a lower file
    op("setxattr", "opaque/new", "user.note", b"set through both"),
    op("chmod", "bin", 0o700),
    op("symlink", "../etc/passwd", "bin/passwd"),
    op("link", "bin/twin", "bin/third"),
]


def test_overlayfs_over_the_union_shows_and_changes_what_it_does_over_the_layers(tmp_path: Path) -> None:
    layers = (tmp_path / "top", tmp_path / "bottom")
    for root, spec in zip(layers, (TOP, BOTTOM), strict=True):
        root.mkdir()
        build_layer(root, spec)
    direct = Stack(layers, tmp_path / "k-upper", tmp_path / "k-work", tmp_path / "k-mnt")
    union = Stack(layers, tmp_path / "d-upper", tmp_path / "d-work", tmp_path / "union")
    stacked = Stack((union.mnt,), tmp_path / "s-upper", tmp_path / "s-work", tmp_path / "s-mnt")
    for path in (direct.upper, direct.work, direct.mnt, union.mnt, stacked.upper, stacked.work, stacked.mnt):
        path.mkdir()
    built = [layer_state(layer) for layer in layers]
    with fuse_mount(union, read_only=True), kernel_mount(direct) as reference, kernel_mount(stacked) as subject:
        kv, sv = view(reference), view(subject)
        assert diff_maps(kv.entries, sv.entries) == []
        assert kv.same_inode == sv.same_inode == {frozenset({"bin/tool", "bin/twin"})}
        assert os.listdir(subject / "opaque") == ["new"] and not os.path.lexists(subject / "etc/gone")
        answers = [(operation, apply(reference, operation), apply(subject, operation)) for operation in OPERATIONS]
        assert [(o, k, s) for o, k, s in answers if k != s] == []
        assert all(k is None for _, k, _ in answers), answers  # each operation did something on both
        kv, sv = view(reference), view(subject)
        assert diff_maps(kv.entries, sv.entries) == []
        # overlayfs without index=on copies up one name of a lower hard link: the others stay one inode
        assert kv.same_inode == sv.same_inode == {frozenset({"bin/twin", "bin/third"})}
        assert (subject / "etc/passwd").read_bytes().endswith(b"/home/user:/bin/sh\n")
        assert os.getxattr(subject / "var/data", "user.big") == b"v" * 300
    assert diff_maps(upper_view(direct.upper, layers), upper_view(stacked.upper, layers)) == []
    assert [layer_state(layer) for layer in layers] == built


def test_an_escaped_overlay_xattr_is_a_marker_to_the_overlayfs_stacked_above(tmp_path: Path) -> None:
    """trusted.overlay.opaque set through the union is kept escaped in its upper layer and
    read back unescaped, so an overlayfs that has the union as a layer takes the directory
    as opaque ("Nesting overlayfs mounts" in overlayfs.rst), and the union does not."""
    lower, below, extra = tmp_path / "lower", tmp_path / "below", tmp_path / "extra"
    for root, name in ((lower, "x"), (below, "z"), (extra, "y")):
        for d in ("marked", "plain"):
            (root / d).mkdir(parents=True)
            (root / d / name).write_text(f"{name}\n")
    union = Stack((lower, below), tmp_path / "d-upper", tmp_path / "d-work", tmp_path / "union")
    stacked = Stack((union.mnt, extra), tmp_path / "s-upper", tmp_path / "s-work", tmp_path / "s-mnt")
    for path in (union.upper, union.work, union.mnt, stacked.upper, stacked.work, stacked.mnt):
        path.mkdir()
    with fuse_mount(union) as mnt:
        os.setxattr(mnt / "marked", "trusted.overlay.opaque", b"y")
        assert os.getxattr(mnt / "marked", "trusted.overlay.opaque") == b"y"
        assert sorted(os.listdir(mnt / "marked")) == ["x", "z"]  # no marker to the union itself
        assert os.getxattr(union.upper / "marked", "trusted.overlay.overlay.opaque") == b"y"
        with kernel_mount(stacked) as outer:
            assert sorted(os.listdir(outer / "marked")) == ["x", "z"]  # opaque: extra's y is hidden
            assert sorted(os.listdir(outer / "plain")) == ["x", "y", "z"]
