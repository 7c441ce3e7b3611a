"""The names in upper directories the driver made: what is known without asking the
disk, that it is never wrong, and that a mount making new names for hours keeps a
bounded number of them."""
from __future__ import annotations

import tracemalloc

from unionfs.uppernames import MAX_ENTRIES, UpperNames


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
