"""The names in upper directories the driver made: what is known without asking the
disk, that it is never wrong, and that a mount making new names for hours keeps a
bounded number of them."""
from __future__ import annotations

import tracemalloc

from budgets import examples, long_run_marks
from hypothesis import given, settings
from hypothesis import strategies as st

from unionfs.uppernames import MAX_ENTRIES, UpperNames

pytestmark = long_run_marks("NAMES_EXAMPLES", seconds_each=0.1)  # the generated test at the end


def test_a_made_directory_knows_which_names_it_cannot_hold() -> None:
    names = UpperNames()
    names.expect_empty("a")
    names.changed("a", subtree=False, made_dir=True)
    names.changed("a/new", subtree=False, made_dir=False)
    assert names.absent("a", "other")
    assert not names.absent("a", "new")
    assert not names.absent("b", "other")  # not made by the driver: unknown


def test_names_made_for_hours_stay_bounded_and_are_never_claimed_absent() -> None:
    """Unique names, as a build's temporary files or a queue's: three times the bound."""
    names = UpperNames()
    names.expect_empty("tmp")
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        peak = 0
        for i in range(3 * MAX_ENTRIES):
            names.changed(f"tmp/build-{i:08d}", subtree=False, made_dir=False)
            assert not names.absent("tmp", f"build-{i:08d}")
            if i % 1024 == 0:
                peak = max(peak, tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()
    assert peak < 200 * MAX_ENTRIES, f"{peak} bytes held for {3 * MAX_ENTRIES} names"


def test_directories_made_and_removed_give_back_what_they_counted() -> None:
    """A directory made, given names and removed, again and again, leaves the count
    where it was: the directory made first stays known (no drift toward the bound,
    which would forget everything)."""
    names = UpperNames()
    names.expect_empty("keep")
    names.changed("keep/mine", subtree=False, made_dir=False)
    for i in range(2 * MAX_ENTRIES):
        names.expect_empty("work")
        names.changed("work", subtree=False, made_dir=True)
        names.changed("work/a", subtree=False, made_dir=False)
        names.changed("work", subtree=True, made_dir=False)  # removed (or renamed away)
    assert names.absent("keep", "other")
    assert not names.absent("keep", "mine")
    assert not names.absent("work", "a")


def test_names_that_come_and_go_are_let_go() -> None:
    """Temporary files made and removed in a made directory, three times the bound:
    each is absent again once removed without a whiteout, and none is kept, so the
    bound is never reached and what the directory holds stays known."""
    names = UpperNames()
    names.expect_empty("tmp")
    names.changed("tmp", subtree=False, made_dir=True)
    names.changed("tmp/kept", subtree=False, made_dir=False)
    for i in range(3 * MAX_ENTRIES):
        names.changed(f"tmp/t{i}", subtree=False, made_dir=False)
        assert not names.absent("tmp", f"t{i}")
        names.changed(f"tmp/t{i}", subtree=False, made_dir=False, gone=True)
        assert names.absent("tmp", f"t{i}")
    assert names.absent("tmp", "other") and not names.absent("tmp", "kept")
    names.changed("tmp/kept", subtree=False, made_dir=False, gone=True)
    names.changed("tmp/kept", subtree=False, made_dir=False, gone=True)  # counted once
    assert names._count == 1


def test_a_directory_renamed_back_and_forth_keeps_its_names_and_its_count() -> None:
    """A made directory with a made one in it, renamed to and fro three times the
    bound: the names known in both move along, nothing is counted twice, and a
    directory of the same name as the one it replaced is forgotten, not inherited."""
    names = UpperNames()
    for rel in ("a", "a/d", "a/d/sub"):
        names.expect_empty(rel)
        names.changed(rel, subtree=False, made_dir=True)
    names.changed("a/d/f", subtree=False, made_dir=False)
    names.changed("a/d/sub/g", subtree=False, made_dir=False)
    count = names._count
    for i in range(3 * MAX_ENTRIES):
        old, new = ("a/d", "a/e") if i % 2 == 0 else ("a/e", "a/d")
        names.renamed(old, new, subtree=True, gone=True)
    assert names._count == count
    assert not names.absent("a", "d") and names.absent("a", "e")
    assert not names.absent("a/d", "f") and names.absent("a/d", "other")
    assert not names.absent("a/d/sub", "g") and names.absent("a/d/sub", "other")
    names.expect_empty("a/e")
    names.changed("a/e", subtree=False, made_dir=True)
    names.renamed("a/d", "a/e", subtree=True, gone=True)  # over an empty directory
    assert not names.absent("a/e", "f") and not names.absent("a/e/sub", "g")
    assert not names.absent("a/d", "f") and not names.absent("a/d", "anything")  # no record: unknown
    names.renamed("a/e", "b/e", subtree=True, gone=False)  # into a directory not made: its names unknown
    assert not names.absent("a", "e") and not names.absent("b/e", "f") and names.absent("b/e", "other")


def test_directories_exchanged_swap_their_names() -> None:
    names = UpperNames()
    for rel in ("p", "p/a", "p/a/in", "p/b"):
        names.expect_empty(rel)
        names.changed(rel, subtree=False, made_dir=True)
    names.changed("p/a/x", subtree=False, made_dir=False)
    names.changed("p/b/y", subtree=False, made_dir=False)
    count = names._count
    names.renamed("p/a", "p/b", subtree=True, gone=False, exchange=True)
    assert names._count == count
    assert not names.absent("p/b", "x") and names.absent("p/b", "y") and not names.absent("p/b", "in")
    assert not names.absent("p/a", "y") and names.absent("p/a", "x")
    assert names.absent("p/b/in", "anything") and not names.absent("p/a/in", "anything")  # no record at p/a/in now
    assert not names.absent("p", "a") and not names.absent("p", "b")


# -- generated: the known names against a model of the upper layer ----------------

_NAMES = ("a", "b", "c")


class _Upper:
    """An upper layer in memory: each directory's names (a marker left at a name
    counts as holding it). Which directories the driver made is UpperNames' business."""

    def __init__(self) -> None:
        self.dirs: dict[str, set[str]] = {".": set()}
        self.kinds: dict[str, str] = {}  # rel -> "dir", "file" or "marker"
        for rel in ("a", "a/b", "a/b/c", "b"):  # there before the mount: not made by the driver
            self.put(rel, "dir")

    @staticmethod
    def parent(rel: str) -> tuple[str, str]:
        head, _, name = rel.rpartition("/")
        return head or ".", name

    def put(self, rel: str, kind: str) -> None:
        head, name = self.parent(rel)
        self.dirs[head].add(name)
        self.kinds[rel] = kind
        if kind == "dir":
            self.dirs[rel] = set()

    def take(self, rel: str) -> dict[str, str]:
        """Remove rel and all below it: {path relative to rel: kind}."""
        head, name = self.parent(rel)
        self.dirs[head].discard(name)
        taken = {}
        for key in [k for k in self.kinds if k == rel or k.startswith(rel + "/")]:
            taken[key[len(rel):]] = self.kinds.pop(key)
            self.dirs.pop(key, None)
        return taken

    def place(self, rel: str, taken: dict[str, str]) -> None:
        for suffix, kind in sorted(taken.items()):
            self.put(rel + suffix, kind)


def _step(data: st.DataObject, upper: _Upper, names: UpperNames) -> None:
    """One change to the upper layer, drawn from what it holds, told to names as
    the driver tells it."""
    def new_place() -> str:
        head = data.draw(st.sampled_from(sorted(upper.dirs)))
        return (head + "/" if head != "." else "") + data.draw(st.sampled_from(_NAMES))

    entries = sorted(rel for rel, kind in upper.kinds.items() if kind != "marker")
    kind = data.draw(st.sampled_from(("mkdir", "create", "remove", "rename", "rename", "exchange")))
    if kind in ("mkdir", "create"):
        rel = new_place()
        if upper.kinds.get(rel, "marker") != "marker":
            return
        if rel in upper.kinds:
            upper.take(rel)  # made over its whiteout
        if kind == "mkdir":
            names.expect_empty(rel)
        upper.put(rel, "dir" if kind == "mkdir" else "file")
        names.changed(rel, subtree=False, made_dir=kind == "mkdir")
        return
    if not entries:
        return
    rel = data.draw(st.sampled_from(entries))
    whiteout = data.draw(st.booleans())  # something of it below: a marker stays at its name
    if kind == "remove":
        was_dir = upper.kinds[rel] == "dir"
        upper.take(rel)
        if whiteout:
            upper.put(rel, "marker")
        names.changed(rel, subtree=was_dir, made_dir=False, gone=not whiteout)
        return
    other = data.draw(st.sampled_from(entries)) if kind == "exchange" else new_place()
    if other == rel or other.startswith(rel + "/") or rel.startswith(other + "/"):
        return
    subtree = upper.kinds[rel] == "dir" or upper.kinds.get(other) == "dir"
    if kind == "exchange":
        first, second = upper.take(rel), upper.take(other)
        upper.place(other, first)
        upper.place(rel, second)
        names.renamed(rel, other, subtree, gone=False, exchange=True)
        return
    moved = upper.take(rel)
    if other in upper.kinds:
        upper.take(other)  # replaced
    upper.place(other, moved)
    if whiteout:
        upper.put(rel, "marker")
    names.renamed(rel, other, subtree, gone=not whiteout)


@settings(max_examples=examples("NAMES_EXAMPLES", 500), deadline=None)
@given(st.data())
def test_a_name_known_absent_is_never_in_the_upper_layer(data: st.DataObject) -> None:
    """Whatever the changes, a name that the known names call absent from a directory
    is neither an entry nor a marker there, names are kept only for directories that
    are there, and the count is what they hold."""
    upper, names = _Upper(), UpperNames()
    for _ in range(data.draw(st.integers(0, 30))):
        _step(data, upper, names)
        for rel, entries in upper.dirs.items():
            for name in _NAMES:
                assert not (names.absent(rel, name) and name in entries), (rel, name)
        assert set(names._changed) <= set(upper.dirs), "names kept for what is no longer a directory"
    assert names._count == sum(1 + len(entries) for entries in names._changed.values())
