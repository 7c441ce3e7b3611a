"""Node ids of hard links in the upper layer: one id for all names of a file,
whatever happens to each name (no mount: the table alone)."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from unionfs.nodes import ROOT_ID, NodeTable

FILE = (2049, 1234)  # (st_dev, st_ino) of an upper file with two names


def test_a_second_name_of_one_file_gets_its_id() -> None:
    table = NodeTable()
    first = table.looked_up(ROOT_ID, "a", identity=FILE)
    assert table.looked_up(ROOT_ID, "b", identity=FILE) == first
    assert table.looked_up(ROOT_ID, "c", identity=(2049, 99)) != first
    assert table.looked_up(ROOT_ID, "d") != first  # no identity: a name of its own
    assert table.known(ROOT_ID, "b") == first and table.find("/b") == first


def test_the_id_keeps_a_path_while_any_name_is_left() -> None:
    table = NodeTable()
    d = table.looked_up(ROOT_ID, "d")
    node = table.looked_up(ROOT_ID, "a", identity=FILE)
    table.looked_up(d, "b", identity=FILE)
    table.removed(ROOT_ID, "a")
    assert table.path(node) == "/d/b"
    table.renamed(d, "b", ROOT_ID, "c")
    assert table.path(node) == "/c" and table.find("/d/b") == 0
    table.removed(ROOT_ID, "c")
    with pytest.raises(OSError) as err:
        table.path(node)
    assert err.value.errno == errno.ESTALE  # still the kernel's until FORGET, but nameless


def test_renaming_the_other_name_leaves_the_path_alone() -> None:
    table = NodeTable()
    node = table.looked_up(ROOT_ID, "a", identity=FILE)
    table.looked_up(ROOT_ID, "b", identity=FILE)
    table.renamed(ROOT_ID, "b", ROOT_ID, "z")
    assert table.path(node) == "/a" and table.find("/z") == node and table.find("/b") == 0
    table.exchanged(ROOT_ID, "z", ROOT_ID, "a")  # both names of one file: still both
    assert {table.find("/a"), table.find("/z")} == {node}


def test_a_rename_over_one_name_keeps_the_file_under_the_other() -> None:
    table = NodeTable()
    node = table.looked_up(ROOT_ID, "a", identity=FILE)
    table.looked_up(ROOT_ID, "b", identity=FILE)
    other = table.looked_up(ROOT_ID, "x")
    table.renamed(ROOT_ID, "x", ROOT_ID, "a")
    assert table.find("/a") == other and table.path(node) == "/b"


def test_an_inode_number_given_again_after_the_last_name_went_is_another_file() -> None:
    table = NodeTable()
    old = table.looked_up(ROOT_ID, "a", identity=FILE)
    table.removed(ROOT_ID, "a")
    assert table.looked_up(ROOT_ID, "new", identity=FILE) != old


def test_forget_drops_every_name() -> None:
    table = NodeTable()
    node = table.looked_up(ROOT_ID, "a", identity=FILE)
    assert table.looked_up(ROOT_ID, "b", identity=FILE) == node
    table.forget(node, 2)
    assert table.find("/a") == table.find("/b") == 0
    assert table.looked_up(ROOT_ID, "b", identity=FILE) != node


def test_link_makes_a_known_name_the_files_id() -> None:
    """A file looked up while it had one name has no identity yet; LINK gives it one."""
    table = NodeTable()
    node = table.looked_up(ROOT_ID, "a")
    table.identify(node, FILE)
    assert table.looked_up(ROOT_ID, "b", identity=FILE) == node



def test_a_name_whose_directory_the_kernel_forgot_gives_way_to_another() -> None:
    """The kernel forgets a directory once none of its entries is cached, while the
    file's other name keeps its inode: the id's path goes through that name, and the
    forgotten name comes back when its directory is looked up anew."""
    table = NodeTable()
    one, two = table.looked_up(ROOT_ID, "one"), table.looked_up(ROOT_ID, "two")
    node = table.looked_up(one, "f", identity=FILE)
    assert table.looked_up(two, "f", identity=FILE) == node
    table.forget(one, 1)
    assert table.path(node) == "/two/f" and table.find("/one/f") == 0
    again = table.looked_up(ROOT_ID, "one")
    assert table.looked_up(again, "f", identity=FILE) == node
    table.forget(two, 1)
    assert table.path(node) == "/one/f"
    table.forget(again, 1)
    with pytest.raises(OSError) as err:
        table.path(node)
    assert err.value.errno == errno.ESTALE  # no name left that the kernel can reach
    table.forget(node, 3)
    assert table.find("/one/f") == table.find("/two/f") == 0 and not table._ids


def test_a_link_takes_the_inode_number_from_a_file_whose_names_went_unseen() -> None:
    """A file's first name was in a directory the kernel forgot, and its names the kernel
    knew were then removed: the table cannot tell that the file is gone, and the kernel
    keeps the node until FORGET. A new file given that file's inode number and a second
    name (LINK) is another file: both its names get its id, not the old node's."""
    table = NodeTable()
    one, two = table.looked_up(ROOT_ID, "one"), table.looked_up(ROOT_ID, "two")
    old = table.looked_up(one, "a", identity=FILE)
    assert table.looked_up(two, "b", identity=FILE) == old
    table.forget(one, 1)
    again = table.looked_up(ROOT_ID, "one")
    assert table.looked_up(again, "a", identity=FILE) == old
    table.removed(two, "b")
    table.removed(again, "a")
    new = table.looked_up(two, "c")  # one name: no identity yet
    table.identify(new, FILE)
    assert table.looked_up(again, "d", identity=FILE) == new
    table.forget(old, 3)  # the old node's FORGET, late, leaves the new file's identity alone
    assert table.looked_up(ROOT_ID, "e", identity=FILE) == new


def test_names_in_forgotten_directories_do_not_gather() -> None:
    """A file known to the kernel for long, one of whose directories the kernel forgets
    and looks up again and again: the table keeps its live names only."""
    table = NodeTable()
    kept = table.looked_up(ROOT_ID, "kept")
    node = table.looked_up(kept, "f", identity=FILE)
    for _ in range(100):
        cycled = table.looked_up(ROOT_ID, "cycled")
        assert table.looked_up(cycled, "f", identity=FILE) == node
        table.forget(cycled, 1)
    assert table.path(node) == "/kept/f"
    assert len(table._ids) <= 3  # kept, kept/f, and at most the last name in cycled

def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def test_a_file_replaced_under_each_of_its_names_holds_one_descriptor(tmp_path: Path) -> None:
    """A rename over a known name holds the file it replaced (for opens on their way);
    replaced again under its other name, the file keeps one descriptor, and its
    FORGET, or the end of the mount, closes it."""
    (tmp_path / "f").write_bytes(b"")
    for close in ("forget", "close_held"):
        table = NodeTable()
        node = table.looked_up(ROOT_ID, "a", identity=FILE)
        table.looked_up(ROOT_ID, "b", identity=FILE)
        before = _open_fds()
        for name in ("a", "b"):
            held = (os.open(tmp_path / "f", os.O_PATH | os.O_CLOEXEC), 0)
            table.renamed(ROOT_ID, "new", ROOT_ID, name, held)
        assert len(_open_fds() - before) == 1
        if close == "forget":
            table.forget(node, 2)
        else:
            table.close_held()
        assert _open_fds() == before


@pytest.mark.parametrize("how", ["unlinked", "renamed over"])
def test_a_removed_lower_file_is_opened_only_when_asked_for_and_closed_with_its_node(tmp_path: Path, how: str) -> None:
    """A lower file whose name went stays in its layer: the unlink or the rename records
    where, and its descriptor is opened at the first call that needs one, once, and
    closed at the node's FORGET. A removal that leaves other names opens nothing."""
    (tmp_path / "f").write_bytes(b"lower")
    opened: list[tuple[int, str]] = []
    table = NodeTable()

    def open_kept(index: int, rel: str) -> int:
        opened.append((index, rel))
        return os.open(tmp_path / rel, os.O_PATH | os.O_CLOEXEC)
    table.open_kept = open_kept
    node = table.looked_up(ROOT_ID, "f")
    before = _open_fds()
    if how == "unlinked":
        assert table.removed(ROOT_ID, "f", kept=(2, "f")) == node
    else:
        assert table.renamed(ROOT_ID, "new", ROOT_ID, "f", kept=(2, "f")) == node
    assert (table.kept(node), table.held_layer(node), opened) == ((2, "f"), 2, [])
    assert _open_fds() == before
    sizes = [table.with_held(node, lambda fd, index: (os.fstat(fd).st_size, index)) for _ in range(2)]
    assert sizes == [(5, 2), (5, 2)] and opened == [(2, "f")]
    assert len(_open_fds() - before) == 1
    table.forget(node, 1)
    assert _open_fds() == before and table.held_layer(node) is None

    twins = table.looked_up(ROOT_ID, "a", identity=FILE)
    assert table.looked_up(ROOT_ID, "b", identity=FILE) == twins
    table.removed(ROOT_ID, "a", kept=(1, "a"))
    assert table.kept(twins) is None and table.path(twins) == "/b"
