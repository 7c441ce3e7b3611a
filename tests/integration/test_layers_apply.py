"""A read-only union of layers shows what applying the layers one by one gives.

The layers are changesets as an OCI image has them: each adds or replaces
files, directories and symlinks, deletes names of the layers below with
``.wh.NAME`` files and empties directories with ``.wh..wh..opq``; the overlay
forms of the same markers (0/0 character devices, ``trusted.overlay.opaque``)
are mixed in. The expected tree comes from a small independent model, the
image-spec's "applying changesets" rules run bottom to top on plain Python
dicts, and is compared with the driver's merged view. Kernel overlayfs must
show the same tree on the same layers with their OCI markers in its own forms
(``difftree.as_overlayfs``): a check of the model itself. (Not generated
here: overlayfs's xattr whiteouts, which the differential tests generate.)

LAYERS_EXAMPLES=N runs N generated stacks instead of the default budget.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from budgets import examples, long_run_marks
from difftree import (
    Dir,
    File,
    HardLink,
    Node,
    Symlink,
    Whiteout,
    as_overlayfs,
    build_layer,
    fix_hardlinks,
    kernel_overlay_available,
    scratch,
    view,
    walk_spec,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from mounts import Stack, fuse_mount, kernel_mount

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (device nodes, trusted xattrs)"),
    *long_run_marks("LAYERS_EXAMPLES", seconds_each=1.0),
]

# -- the model -------------------------------------------------------------------------


@dataclass
class Entry:
    """A node of the expected tree."""

    kind: str  # "dir", "file" or "symlink"
    mode: int = 0
    owner: tuple[int, int] = (0, 0)
    data: bytes | None = None
    target: str | None = None
    children: dict[str, Entry] = field(default_factory=dict)


def _leaf(node: Node, layer: Dir) -> Entry:
    if isinstance(node, HardLink):  # another name of a file of the same layer
        node = dict(walk_spec(layer))[node.to]
    if isinstance(node, File):
        return Entry("file", node.mode, node.owner, data=node.data)
    assert isinstance(node, Symlink), node
    return Entry("symlink", 0o777, (0, 0), target=node.target)


def _apply_dir(entries: dict[str, Entry], changes: Dir, layer: Dir) -> None:
    """Apply one directory of a changeset to the same directory of the tree so far."""
    # whiteouts first: they delete what the layers below have, never this layer's own entries
    if changes.opaque:
        entries.clear()
    for name in changes.oci_hides:
        entries.pop(name, None)
    for name, node in changes.children.items():
        if isinstance(node, Whiteout):
            entries.pop(name, None)
    for name, node in changes.children.items():
        if isinstance(node, Whiteout):
            continue
        if isinstance(node, Dir):
            below = entries.get(name)
            merged = below if below is not None and below.kind == "dir" else Entry("dir")
            merged.mode, merged.owner = node.mode, node.owner  # the directory's attributes are the newest layer's
            _apply_dir(merged.children, node, layer)
            entries[name] = merged
        else:
            entries[name] = _leaf(node, layer)  # replaces a file or a whole directory tree


def apply_layers(layers_top_first: Iterable[Dir]) -> Entry:
    root = Entry("dir")
    for layer in reversed(list(layers_top_first)):
        root.mode, root.owner = layer.mode, layer.owner
        _apply_dir(root.children, layer, layer)
    return root


Shown = tuple[str, str, int, int, int | None, bytes | None, str | None]  # kind, mode, uid, gid, size, data, target


def expected_view(root: Entry) -> dict[str, Shown]:
    out: dict[str, Shown] = {}

    def visit(prefix: str, entry: Entry) -> None:
        size = len(entry.data) if entry.data is not None else len(entry.target) if entry.target is not None else None
        out[prefix or "."] = (entry.kind, f"{entry.mode:04o}", *entry.owner, size, entry.data, entry.target)
        for name, child in entry.children.items():
            visit(f"{prefix}/{name}" if prefix else name, child)

    visit("", root)
    return out


def shown(mnt: Path) -> dict[str, Shown]:
    """The merged view, limited to what the model knows (no directory sizes, times or link counts)."""
    out: dict[str, Shown] = {}
    for path, m in view(mnt).entries.items():
        assert not isinstance(m.content, str), "file data longer than the snapshot keeps as bytes"
        out[path] = (m.kind, m.mode, m.uid, m.gid, None if m.kind == "dir" else m.size, m.content, m.target)
    return out


def diff(expected: Mapping[str, Shown], actual: Mapping[str, Shown]) -> list[str]:
    return [f"{p}: expected {expected.get(p)} got {actual.get(p)}"
            for p in sorted(set(expected) | set(actual)) if expected.get(p) != actual.get(p)]


# -- generated layers ---------------------------------------------------------------------

NAMES = ("a", "b", "c", "d")
OWNERS = ((0, 0), (1000, 1000))
# short data only: the model compares bytes, the snapshot hashes anything longer than 48 bytes
datas = st.sampled_from((b"", b"x", b"layer data\n", b"0123456789" * 4))


def _leaves() -> st.SearchStrategy:
    return st.one_of(
        st.builds(File, datas, st.sampled_from((0o644, 0o600, 0o755)), st.sampled_from(OWNERS)),
        st.builds(Symlink, st.sampled_from(("a", "b/c", "../d", "/abs", "nowhere"))),
        st.just(HardLink("")),
        st.builds(Whiteout, st.sampled_from(("oci", "chardev"))),
    )


def _node(depth: int) -> st.SearchStrategy:
    return _leaves() if depth >= 3 else st.one_of(_leaves(), _dir(depth))


def _dir(depth: int) -> st.SearchStrategy[Dir]:
    return st.builds(
        Dir,
        st.dictionaries(st.sampled_from(NAMES), _node(depth + 1), max_size=3),
        st.sampled_from((0o755, 0o700, 0o750)),
        st.sampled_from(OWNERS),
        st.sampled_from((None, None, "oci", "xattr")),
        st.just(()),
        st.lists(st.sampled_from(NAMES), max_size=2, unique=True).map(tuple),  # may name an entry of this layer
    )


@st.composite
def changesets(draw: st.DrawFn) -> Dir:
    root = draw(st.builds(Dir, st.dictionaries(st.sampled_from(NAMES), _node(1), min_size=1, max_size=4),
                          oci_hides=st.lists(st.sampled_from(NAMES), max_size=2, unique=True).map(tuple)))
    return fix_hardlinks(root, draw(st.lists(st.integers(0, 7), max_size=3)))


def check_stack(base: Path, layers: list[Dir]) -> None:
    """Build layers (top first), mount them read-only, compare with the model; then kernel
    overlayfs on the same layers, their OCI markers in its own forms."""
    expected = expected_view(apply_layers(layers))
    for name, forms, mount in (("driver", lambda d: d, fuse_mount), ("kernel overlayfs", as_overlayfs, kernel_mount)):
        if mount is kernel_mount and not kernel_overlay_available():
            continue
        stack = Stack.make(base, len(layers), "" if mount is fuse_mount else "k-")  # tests mount the first again
        for root, layer in zip(stack.lowers, layers, strict=True):
            build_layer(root, forms(layer))
        with mount(stack, read_only=True) as mnt:
            problems = diff(expected, shown(mnt))
        assert not problems, f"{name} differs from the model:\n  " + "\n  ".join(problems)


@settings(
    max_examples=examples("LAYERS_EXAMPLES", 200),
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no "explain": slow with mounts
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(layers=st.lists(changesets(), min_size=2, max_size=4))
def test_union_equals_applied_changesets(tmp_path: Path, layers: list[Dir]) -> None:
    """Any 2-4 changesets: the read-only union is the image the changesets build."""
    with scratch(tmp_path) as base:
        check_stack(base, layers)


# -- the rules, one example each ----------------------------------------------------------

def test_oci_whiteout_deletes_lower_name_only(tmp_path: Path) -> None:
    """.wh.NAME deletes NAME of the layers below, not the NAME this layer adds next to it."""
    top = Dir({"a": File(b"new a"), "d": Dir({"y": File()})}, oci_hides=("a", "b", "d"))
    bottom = Dir({"a": File(b"old"), "b": File(), "d": Dir({"x": File()}), "c": File()})
    check_stack(tmp_path, [top, bottom])
    with fuse_mount(Stack.make(tmp_path, 2), read_only=True) as mnt:
        assert sorted(os.listdir(mnt)) == ["a", "c", "d"] and os.listdir(mnt / "d") == ["y"]


def test_oci_opaque_dir_keeps_own_entries(tmp_path: Path) -> None:
    """.wh..wh..opq hides the lower directory's entries but shows its own layer's."""
    top = Dir({"d": Dir({"own": File()}, opaque="oci")})
    bottom = Dir({"d": Dir({"x": File(), "own": File(b"lower")})})
    check_stack(tmp_path, [top, bottom])
    with fuse_mount(Stack.make(tmp_path, 2), read_only=True) as mnt:
        assert os.listdir(mnt / "d") == ["own"] and (mnt / "d/own").read_bytes() == b""


def test_markers_never_show(tmp_path: Path) -> None:
    """Whiteout and opaque markers of any form are not names of the merged view, even in the bottom layer."""
    top = Dir({"d": Dir(opaque="oci"), "w": Whiteout("oci"), "c": Whiteout("chardev")}, oci_hides=("zz",))
    bottom = Dir({"e": Dir(opaque="oci"), "v": Whiteout("oci"), "u": Whiteout("chardev")})
    check_stack(tmp_path, [top, bottom])
    with fuse_mount(Stack.make(tmp_path, 2), read_only=True) as mnt:
        assert sorted(os.listdir(mnt)) == ["d", "e"] and os.listdir(mnt / "d") == os.listdir(mnt / "e") == []


def test_replacing_kinds(tmp_path: Path) -> None:
    """A file replaces a whole directory tree; a directory over a file starts empty; later layers win."""
    top = Dir({"a": Dir({"n": File()}), "c": Symlink("a")})
    mid = Dir({"b": File(b"file now"), "a": File(b"file")})
    bottom = Dir({"a": Dir({"x": File()}), "b": Dir({"y": Dir({"z": File()})}), "c": Dir()})
    check_stack(tmp_path, [top, mid, bottom])
