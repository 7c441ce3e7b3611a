"""The tree of a cache's paths, and the resolver's caches built on it, against plain
sets and dicts that find what is below a path by scanning every key."""
from __future__ import annotations

from budgets import examples, long_run_marks
from hypothesis import given, settings
from hypothesis import strategies as st

from unionfs.pathtree import PathCache, PathTree

pytestmark = long_run_marks("PATHTREE_EXAMPLES", seconds_each=0.05)

_PARTS = ("a", "b", "c")


def _paths(root: str) -> st.SearchStrategy[str]:
    def join(parts: list[str]) -> str:
        if root == "/":
            return "/" + "/".join(parts)
        return "/".join(parts) or "."
    return st.lists(st.sampled_from(_PARTS), max_size=4).map(join)


def _below(path: str, root: str, keys: set[str]) -> set[str]:
    prefix = "" if path == root and root == "." else path.rstrip("/") + "/"
    return {k for k in keys if k != path and k.startswith(prefix)}


def _ancestors(path: str, root: str) -> set[str]:
    found = set()
    while path != root:
        path = path.rpartition("/")[0] or root
        found.add(path)
    return found


def _links_needed(members: set[str], root: str) -> set[str]:
    """The tree holds a path as a parent exactly when a member lies below it."""
    return set().union(*(_ancestors(m, root) for m in members))


@settings(max_examples=examples("PATHTREE_EXAMPLES", 500), deadline=None)
@given(st.sampled_from(("/", ".")), st.data())
def test_the_tree_finds_what_a_scan_finds_and_holds_nothing_more(root: str, data: st.DataObject) -> None:
    members: set[str] = set()
    tree = PathTree(root, members)
    for _ in range(data.draw(st.integers(0, 40))):
        kind = data.draw(st.sampled_from(("add", "add", "discard", "take")))
        path = data.draw(_paths(root))
        if kind == "add":
            members.add(path)
            tree.add(path)
        elif kind == "discard":
            members.discard(path)
            tree.discard(path)
        else:
            taken = tree.take_below(path)
            assert members & set(taken) == _below(path, root, members), path
            members -= set(taken)  # as the cache does with what is taken
        assert set(tree._below) == _links_needed(members, root), (kind, path)
        for parent, below in tree._below.items():
            assert below and all((p.rpartition("/")[0] or root) == parent for p in below)


@settings(max_examples=examples("PATHTREE_EXAMPLES", 500), deadline=None)
@given(st.integers(1, 6), st.data())
def test_a_path_cache_forgets_what_a_scan_would(bound: int, data: st.DataObject) -> None:
    cache: PathCache[int] = PathCache(bound)
    model: dict[str, int] = {}
    for step in range(data.draw(st.integers(0, 40))):
        kind = data.draw(st.sampled_from(("keep", "keep", "drop", "tree", "all")))
        path = data.draw(_paths("/"))
        if kind == "keep":
            if path not in model and len(model) >= bound:
                model.clear()
            model[path] = step
            cache.keep(path, step)
        elif kind == "drop":
            model.pop(path, None)
            cache.drop(path)
        elif kind == "tree":
            for key in _below(path, "/", set(model)) | {path}:
                model.pop(key, None)
            cache.drop_tree(path)
        else:
            model.clear()
            cache.drop_all()
        assert dict(cache) == model, (kind, path)
        assert set(cache._tree._below) == _links_needed(set(model), "/")
