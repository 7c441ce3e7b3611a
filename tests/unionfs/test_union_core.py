"""The union core without FUSE: lookups, whiteout forms, copy-up, creation, removal."""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import threading
from pathlib import Path

import pytest

from unionfs.markers import WhiteoutForm
from unionfs.union import Caller, Union

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (device nodes, trusted xattrs)")


def tree(base: Path, spec: dict[str, str | None]) -> Path:
    """Make files ("text"), dirs (trailing /) and symlinks ("->target")."""
    base.mkdir(parents=True, exist_ok=True)
    for rel, content in spec.items():
        path = base / rel.rstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith("/"):
            path.mkdir(exist_ok=True)
        elif content is not None and content.startswith("->"):
            path.symlink_to(content[2:])
        else:
            path.write_text(content or "")
    return base


def chardev_whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    d = {name: tmp_path / name for name in ("top", "mid", "bottom", "upper", "work")}
    for path in d.values():
        path.mkdir()
    return d


def make_union(d: dict[str, Path], **kwargs: object) -> Union:
    return Union([str(d["top"]), str(d["mid"]), str(d["bottom"])], str(d["upper"]), str(d["work"]), **kwargs)  # type: ignore[arg-type]


def names(u: Union, path: str) -> list[str]:
    return sorted(n for n, _ in u.readdir(path) if n not in (".", ".."))


def names_afresh(d: dict[str, Path], form: WhiteoutForm, *paths: str) -> tuple[list[str], ...]:
    """The listings of paths by a new union over the same layers (what a remount shows)."""
    fresh = make_union(d, whiteout=form)
    try:
        return tuple(names(fresh, path) for path in paths)
    finally:
        fresh.close()


def asks_of_upper(u: Union) -> list[str]:
    """The upper rels that lookups ask the disk for from now on (an entry or a marker)."""
    asked: list[str] = []
    for name in ("lstat", "marker_exists"):
        real = getattr(u.upper, name)
        setattr(u.upper, name, lambda rel, real=real: asked.append(rel) or real(rel))
    return asked


def test_topmost_wins_and_directories_merge(dirs: dict[str, Path]) -> None:
    tree(dirs["bottom"], {"d/a": "bottom-a", "d/b": "bottom-b", "f": "bottom-f"})
    tree(dirs["top"], {"d/a": "top-a", "d/c": "top-c"})
    u = make_union(dirs)
    assert names(u, "/d") == ["a", "b", "c"]
    fd, _ = u.open("/d/a", os.O_RDONLY)
    assert os.read(fd, 100) == b"top-a"
    os.close(fd)
    assert u.node("/d").merged


def test_non_directory_hides_lower_directory(dirs: dict[str, Path]) -> None:
    tree(dirs["bottom"], {"x/inside": "1"})
    tree(dirs["top"], {"x": "file now"})
    u = make_union(dirs)
    assert not u.node("/x").is_dir
    with pytest.raises(OSError) as exc:
        u.node("/x/inside")
    assert exc.value.errno == errno.ENOENT


@pytest.mark.parametrize("form", ["oci", "chardev", "xattr", "xattr-first-mark"])
def test_every_whiteout_form_hides_lower_entries(dirs: dict[str, Path], form: str) -> None:
    """xattr whiteouts are listed by neither mark of their directory: overlay.opaque=x, as
    overlayfs documents it, and overlay.whiteouts, the first kernels' mark."""
    if form != "oci" and os.geteuid() != 0:
        pytest.skip("needs root")
    tree(dirs["bottom"], {"gone": "x", "kept": "y"})
    if form == "oci":
        (dirs["top"] / ".wh.gone").write_text("")
    elif form == "chardev":
        chardev_whiteout(dirs["top"] / "gone")
    else:
        (dirs["top"] / "gone").write_text("")
        os.setxattr(dirs["top"] / "gone", "trusted.overlay.whiteout", b"y")
        if form == "xattr":
            os.setxattr(dirs["top"], "trusted.overlay.opaque", b"x")
        else:
            os.setxattr(dirs["top"], "trusted.overlay.whiteouts", b"y")
    u = make_union(dirs)
    assert names(u, "/") == ["kept"]
    with pytest.raises(OSError):
        u.node("/gone")


@pytest.mark.parametrize("form", ["oci", "xattr"])
def test_opaque_directory_hides_lower_contents_only(dirs: dict[str, Path], form: str) -> None:
    if form == "xattr" and os.geteuid() != 0:
        pytest.skip("needs root")
    tree(dirs["bottom"], {"d/old": "x"})
    tree(dirs["top"], {"d/new": "y"})
    if form == "oci":
        (dirs["top"] / "d/.wh..wh..opq").write_text("")
    else:
        os.setxattr(dirs["top"] / "d", "trusted.overlay.opaque", b"y")
    u = make_union(dirs)
    assert names(u, "/d") == ["new"]
    assert not u.node("/d").merged


@root_only
def test_only_the_oci_marker_makes_a_layer_root_opaque(dirs: dict[str, Path]) -> None:
    """overlayfs ignores overlay.opaque on the root of any of its layers; an OCI
    layer's ``.wh..wh..opq`` at its root hides the layers below, as applying it would."""
    tree(dirs["bottom"], {"b": "b"})
    tree(dirs["mid"], {"m": "m"})
    tree(dirs["top"], {"t": "t"})
    for layer in ("upper", "top", "mid"):
        os.setxattr(dirs[layer], "trusted.overlay.opaque", b"y")
    u = make_union(dirs)
    assert names(u, "/") == ["b", "m", "t"]
    u.close()
    (dirs["mid"] / ".wh..wh..opq").write_bytes(b"")
    assert names(make_union(dirs), "/") == ["m", "t"]


def test_marker_never_hides_its_own_layer(dirs: dict[str, Path]) -> None:
    tree(dirs["bottom"], {"a": "bottom", "d/x": "bottom"})
    tree(dirs["top"], {"a": "top", ".wh.a": "", "d/y": "top", "d/.wh..wh..opq": ""})
    u = make_union(dirs)
    assert names(u, "/") == ["a", "d"]
    assert names(u, "/d") == ["y"]
    assert u.getattr("/a")["st_size"] == 3


def test_an_upper_marker_is_looked_for_only_where_it_could_hide(dirs: dict[str, Path]) -> None:
    """A ``.wh.`` marker in the upper hides the lower entries of its name; for a name
    that no lower layer has, the lookup does not ask for one (it answers the same)."""
    tree(dirs["bottom"], {"d/gone": "x", "d/kept": "y", "d/sub/": None})
    tree(dirs["upper"], {"d/.wh.gone": "", "d/.wh.sub": "", "d/own": "z"})
    u = make_union(dirs)
    asked: list[str] = []
    real = u.upper.marker_exists
    u.upper.marker_exists = lambda rel: asked.append(rel) or real(rel)  # type: ignore[method-assign]
    for hidden in ("/d/gone", "/d/sub", "/d/new", "/d/.wh.gone"):
        with pytest.raises(OSError) as exc:
            u.node(hidden)
        assert exc.value.errno == errno.ENOENT, hidden
    assert u.getattr("/d/kept")["st_size"] == 1 and u.getattr("/d/own")["st_size"] == 1
    assert sorted(asked) == [".wh.d", "d/.wh.gone", "d/.wh.kept", "d/.wh.sub"]  # never d/.wh.new or d/.wh.own
    assert names(u, "/d") == ["kept", "own"]


@pytest.mark.parametrize("form", [WhiteoutForm.OVERLAY, WhiteoutForm.OCI])
def test_a_directory_the_driver_made_is_asked_only_for_the_names_changed_in_it(dirs: dict[str, Path], form: WhiteoutForm) -> None:
    """A directory that a copy-up or a mkdir made started empty: a lookup in it asks the
    upper layer (for the name or its marker) only for names changed in it since, and
    answers as a lookup that asks would."""
    if form is WhiteoutForm.OVERLAY and os.geteuid() != 0:
        pytest.skip("overlayfs whiteouts need root")
    tree(dirs["bottom"], {"d/a1": "1", "d/a2": "2", "d/a3": "3", "d/sub/x": "x"})
    tree(dirs["top"], {"d/b": "b"})
    u = make_union(dirs, whiteout=form)
    asked = asks_of_upper(u)

    def found(path: str) -> bool:  # each path is looked up for the first time since it changed
        try:
            u.node(path)
            return True
        except OSError as exc:
            assert exc.errno == errno.ENOENT, path
            return False

    os.close(u.create("/d/c", 0o644, os.O_WRONLY))  # copies d up
    u.unlink("/d/a2")
    u.rename("/d/a3", "/d/a4")
    u.mkdir("/m", 0o755)
    os.close(u.create("/m/f", 0o644, os.O_WRONLY))
    asked.clear()
    seen = {p: found(p) for p in ("/d/a1", "/d/b", "/d/sub", "/d/nothing", "/m/nothing")}
    assert seen == {"/d/a1": True, "/d/b": True, "/d/sub": True, "/d/nothing": False, "/m/nothing": False}
    assert asked == []
    seen = {p: found(p) for p in ("/d/a2", "/d/a3", "/d/a4", "/d/c", "/m/f")}
    assert seen == {"/d/a2": False, "/d/a3": False, "/d/a4": True, "/d/c": True, "/m/f": True}
    assert {rel.rsplit("/", 1)[-1] for rel in asked} <= {"a2", "a3", "a4", ".wh.a2", ".wh.a3"}
    assert {"d/a2", "d/a3", "d/a4"} <= set(asked)  # what the driver created it knows without asking
    asked.clear()
    os.close(u.create("/d/e", 0o644, os.O_WRONLY))
    assert asked.count("d/e") == 1  # once it is made (for its inode number), not to see if it was there
    # once removed, nothing is known of what is at its name
    u.unlink("/m/f")
    u.rmdir("/m")
    tree(dirs["upper"], {"m/g": "not made by the driver"})
    assert found("/m/g")
    os.unlink(dirs["upper"] / "m/g")
    os.rmdir(dirs["upper"] / "m")
    u.resolver.invalidate("/m", subtree=True)  # the nodes found in the directory made behind its back
    u.mkdir("/m", 0o755)
    assert not found("/m/f") and not found("/m/g")
    assert sorted(names(u, "/d")) == ["a1", "a4", "b", "c", "e", "sub"]


@pytest.mark.parametrize("form", [WhiteoutForm.OVERLAY, WhiteoutForm.OCI])
def test_a_name_removed_without_a_whiteout_is_known_absent_again(dirs: dict[str, Path], form: WhiteoutForm) -> None:
    """In a directory the driver made, a file or directory of the upper layer alone,
    once removed, leaves nothing at its name: a lookup there asks the disk no more, and
    a name whose removal left a whiteout (something of it below) is still asked for."""
    if form is WhiteoutForm.OVERLAY and os.geteuid() != 0:
        pytest.skip("overlayfs whiteouts need root")
    tree(dirs["bottom"], {"d/low": "1", "d/again": "2"})
    u = make_union(dirs, whiteout=form)
    os.close(u.create("/d/tmp", 0o644, os.O_WRONLY))  # copies d up
    u.mkdir("/d/sub", 0o755)
    u.unlink("/d/again")
    os.close(u.create("/d/again", 0o644, os.O_WRONLY))  # over its whiteout
    for path in ("/d/tmp", "/d/again", "/d/low"):
        u.unlink(path)
    u.rmdir("/d/sub")
    asked = asks_of_upper(u)
    for path in ("/d/tmp", "/d/sub", "/d/again", "/d/low"):
        with pytest.raises(OSError) as caught:
            u.node(path)
        assert caught.value.errno == errno.ENOENT, path
    assert {rel.rsplit("/", 1)[-1].removeprefix(".wh.") for rel in asked} == {"again", "low"}
    os.close(u.create("/d/tmp", 0o644, os.O_WRONLY))  # made again where nothing is
    assert names(u, "/d") == ["tmp"]
    u.close()
    assert names_afresh(dirs, form, "/d") == (["tmp"],)


@pytest.mark.parametrize("form", [WhiteoutForm.OVERLAY, WhiteoutForm.OCI])
def test_a_name_renamed_away_without_a_whiteout_is_known_absent_again(dirs: dict[str, Path], form: WhiteoutForm) -> None:
    """In a directory the driver made, a file or directory of the upper layer alone,
    renamed away (over a lower file, into another directory), leaves nothing at its
    old name: a lookup there asks the disk no more; a lower name renamed away left a
    whiteout and is still asked for."""
    if form is WhiteoutForm.OVERLAY and os.geteuid() != 0:
        pytest.skip("overlayfs whiteouts need root")
    tree(dirs["bottom"], {"d/low": "1", "d/target": "2", "d/moved": "3"})
    u = make_union(dirs, whiteout=form)
    u.mkdir("/e", 0o755)
    for name in ("tmp", "out"):
        fd = u.create(f"/d/{name}", 0o644, os.O_WRONLY)  # the first copies d up
        os.write(fd, name.encode())
        os.close(fd)
    u.mkdir("/d/sub", 0o755)
    u.rename("/d/tmp", "/d/target")  # written aside, then put in place over a lower file
    u.rename("/d/out", "/e/out")
    u.rename("/d/sub", "/e/sub")
    u.rename("/d/moved", "/e/moved")  # a lower file: its old name keeps a whiteout
    asked = asks_of_upper(u)
    for path in ("/d/tmp", "/d/out", "/d/sub", "/d/moved"):
        with pytest.raises(OSError) as caught:
            u.node(path)
        assert caught.value.errno == errno.ENOENT, path
    assert {rel.rsplit("/", 1)[-1].removeprefix(".wh.") for rel in asked} == {"moved"}
    assert names(u, "/d") == ["low", "target"]
    assert names(u, "/e") == ["moved", "out", "sub"]
    u.close()
    assert names_afresh(dirs, form, "/d", "/e") == (["low", "target"], ["moved", "out", "sub"])


@pytest.mark.parametrize("form", [WhiteoutForm.OVERLAY, WhiteoutForm.OCI])
def test_a_directory_the_driver_made_keeps_its_known_names_when_renamed(dirs: dict[str, Path], form: WhiteoutForm) -> None:
    """A rename changes no name in the directory it moves: at its new place, a lower
    name there (found through the redirect) and in a made directory below it is
    looked up without asking the upper layer, and one it holds is found."""
    if form is WhiteoutForm.OVERLAY and os.geteuid() != 0:
        pytest.skip("overlayfs whiteouts need root")
    tree(dirs["bottom"], {"d/low": "1", "d/gone": "2", "d/sub/deep": "3", "e/": None})
    u = make_union(dirs, whiteout=form)
    os.close(u.create("/d/new", 0o644, os.O_WRONLY))  # copies d up
    os.close(u.create("/d/sub/made", 0o644, os.O_WRONLY))  # and d/sub
    u.unlink("/d/gone")
    u.rename("/d", "/e/moved")
    u.node("/e/moved/sub")  # the directories themselves are asked for
    asked = asks_of_upper(u)
    assert u.getattr("/e/moved/low")["st_size"] == 1 and u.getattr("/e/moved/sub/deep")["st_size"] == 1
    for path in ("/e/moved/missing", "/e/moved/sub/missing"):
        with pytest.raises(OSError) as caught:
            u.node(path)
        assert caught.value.errno == errno.ENOENT, path
    assert asked == []
    u.node("/e/moved/new")
    with pytest.raises(OSError) as caught:
        u.node("/e/moved/gone")
    assert caught.value.errno == errno.ENOENT
    assert {rel.rsplit("/", 1)[-1].removeprefix(".wh.") for rel in asked} == {"new", "gone"}
    listed = names(u, "/e/moved"), names(u, "/e/moved/sub")
    assert listed == (["low", "new", "sub"], ["deep", "made"])
    u.close()
    assert names_afresh(dirs, form, "/e/moved", "/e/moved/sub") == listed


@pytest.mark.parametrize("form", [WhiteoutForm.OVERLAY, WhiteoutForm.OCI])
def test_directories_the_driver_made_keep_their_known_names_when_exchanged(dirs: dict[str, Path], form: WhiteoutForm) -> None:
    """RENAME_EXCHANGE of two directories copied up: each keeps, at the other's name,
    what is known of its names."""
    if form is WhiteoutForm.OVERLAY and os.geteuid() != 0:
        pytest.skip("overlayfs whiteouts need root")
    tree(dirs["bottom"], {"d/low": "1", "e/other": "22"})
    u = make_union(dirs, whiteout=form)
    os.close(u.create("/d/new", 0o644, os.O_WRONLY))  # copies d up
    os.close(u.create("/e/fresh", 0o644, os.O_WRONLY))  # and e
    u.exchange("/d", "/e")
    u.node("/d"), u.node("/e")  # the directories themselves are asked for
    asked = asks_of_upper(u)
    assert u.getattr("/e/low")["st_size"] == 1 and u.getattr("/d/other")["st_size"] == 2
    for path in ("/e/missing", "/d/missing", "/e/other", "/d/low"):
        with pytest.raises(OSError) as caught:
            u.node(path)
        assert caught.value.errno == errno.ENOENT, path
    assert asked == []
    listed = names(u, "/d"), names(u, "/e")
    assert listed == (["fresh", "other"], ["low", "new"])
    u.close()
    assert names_afresh(dirs, form, "/d", "/e") == listed


@root_only
@pytest.mark.parametrize("form", [WhiteoutForm.OVERLAY, WhiteoutForm.OCI])
def test_what_a_create_made_is_known_as_a_fresh_look_finds_it(dirs: dict[str, Path], form: WhiteoutForm) -> None:
    """A new entry is kept as resolved at once, with its inode number: the node and the
    attributes are those that a mount of the same layers finds by looking."""
    tree(dirs["bottom"], {"d/file": "lower", "d/dir/x": "x", "d/gone": "g", "keep": "k"})
    tree(dirs["top"], {"d/t": "t"})
    u = make_union(dirs, whiteout=form)
    u.unlink("/d/file")
    os.close(u.create("/d/file", 0o600, os.O_WRONLY))  # over a whiteout of a lower file
    u.unlink("/d/dir/x")
    u.rmdir("/d/dir")
    u.symlink("/d/dir", "file")  # a symlink where a lower directory was
    u.mknod("/d/fifo", stat.S_IFIFO | 0o644, 0)
    u.mkdir("/n", 0o755)
    os.close(u.create("/n/new", 0o644, os.O_WRONLY, Caller(1234, 5678)))  # built aside: another owner
    made = ("/d/file", "/d/dir", "/d/fifo", "/n/new")
    assert all(path in u.resolver._nodes for path in made)
    paths = made + ("/d/t", "/keep")
    known = [(u.node(path), u.getattr(path)) for path in paths]
    listed = names(u, "/d")
    u.close()  # the work dir takes one mount at a time
    fresh = make_union(dirs, whiteout=form)
    try:
        assert known == [(fresh.node(path), fresh.getattr(path)) for path in paths]
        assert listed == names(fresh, "/d") == ["dir", "fifo", "file", "gone", "t"]
    finally:
        fresh.close()


def test_lower_directories_read_are_kept_up_to_a_bound(dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A walk of a large image does not keep every lower name for as long as the mount
    lives: beyond the bound, the directories read first go first, the one just read
    stays however large, and one let go is read again as it was."""
    monkeypatch.setattr("unionfs.resolve._MAX_LOWER_NAMES", 25)
    tree(dirs["bottom"], {f"d{n}/f{i}": f"{n} {i}" for n in range(6) for i in range(4)})
    tree(dirs["bottom"], {f"big/f{i}": "" for i in range(40)})
    u = make_union(dirs)
    try:
        r, bottom = u.resolver, len(u.resolver.layers) - 1
        first = {n: r.lower_dir(bottom, f"d{n}") for n in range(6)}  # 5 names each: 30
        assert [rel for _, rel in r._lower_dirs] == ["d1", "d2", "d3", "d4", "d5"] and r._lower_names == 25
        again = r.lower_dir(bottom, "d0")
        assert again == first[0] and again is not first[0] and set(again.entries) == {"f0", "f1", "f2", "f3"}
        assert [rel for _, rel in r._lower_dirs] == ["d2", "d3", "d4", "d5", "d0"]
        big = r.lower_dir(bottom, "big")
        assert list(r._lower_dirs) == [(bottom, "big")] and r._lower_names == 41
        assert r.lower_dir(bottom, "big") is big
        assert [names(u, f"/d{n}") for n in range(6)] == [["f0", "f1", "f2", "f3"]] * 6  # merged views read them again
    finally:
        u.close()


def test_a_directory_that_did_not_appear_is_not_taken_for_empty(dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy-up of a directory that fails leaves no record of an empty directory there."""
    tree(dirs["bottom"], {"d/a": "a"})
    u = make_union(dirs)
    copyup = u.copyup
    assert copyup is not None

    def refuse(tmp: str, path: str) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO), path)

    monkeypatch.setattr(copyup, "_place", refuse)
    with pytest.raises(OSError):
        u.mkdir("/d/new", 0o755)
    assert not u.resolver.upper_names.absent("d", "a")
    monkeypatch.undo()
    u.mkdir("/d/new", 0o755)
    assert u.resolver.upper_names.absent("d", "a") and not u.resolver.upper_names.absent("d", "new")


def test_markers_are_never_visible_nor_creatable(dirs: dict[str, Path]) -> None:
    tree(dirs["top"], {".wh.x": "", "d/.wh..wh..opq": ""})
    u = make_union(dirs)
    assert names(u, "/") == ["d"] and names(u, "/d") == []
    with pytest.raises(OSError) as exc:
        u.node("/.wh.x")
    assert exc.value.errno == errno.ENOENT
    with pytest.raises(OSError) as exc:
        u.create("/.wh.y", 0o644, os.O_WRONLY)
    assert exc.value.errno == errno.EINVAL


def test_copy_up_keeps_metadata_xattrs_holes_and_inode(dirs: dict[str, Path]) -> None:
    path = dirs["bottom"] / "sparse"
    with open(path, "wb") as f:
        f.write(b"head")
        f.seek(64 << 20)
        f.write(b"tail")
    os.chmod(path, 0o640)
    os.setxattr(path, "user.note", b"kept")
    os.utime(path, ns=(1_000_000_123, 2_000_000_456))
    u = make_union(dirs)
    before = u.getattr("/sparse")
    fd, index = u.open("/sparse", os.O_WRONLY)
    os.close(fd)
    assert index == 0
    copied = dirs["upper"] / "sparse"
    st = copied.lstat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == 2_000_000_456
    assert os.getxattr(copied, "user.note") == b"kept"
    assert st.st_blocks * 512 < 1 << 20, "holes were filled in"
    assert copied.read_bytes()[-4:] == b"tail"
    assert u.getattr("/sparse")["st_ino"] == before["st_ino"]
    assert os.listdir(dirs["work"] / "work") == []


def test_copy_up_happens_once_under_racing_threads(dirs: dict[str, Path]) -> None:
    (dirs["bottom"] / "big").write_bytes(os.urandom(1 << 20))
    u = make_union(dirs)
    inodes: list[int] = []
    barrier = threading.Barrier(8)

    def writer() -> None:
        barrier.wait()
        fd, _ = u.open("/big", os.O_RDWR)
        inodes.append(os.fstat(fd).st_ino)
        os.close(fd)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(inodes)) == 1
    assert (dirs["upper"] / "big").read_bytes() == (dirs["bottom"] / "big").read_bytes()


def test_failed_copy_up_leaves_nothing_visible(dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    (dirs["bottom"] / "f").write_text("data")
    u = make_union(dirs)

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("unionfs.copyup.copy_data", broken)
    monkeypatch.setattr("unionfs.syscalls.reflink", lambda *a: False)
    with pytest.raises(OSError) as exc:
        u.open("/f", os.O_WRONLY)
    assert exc.value.errno == errno.ENOSPC
    assert not (dirs["upper"] / "f").exists()
    assert os.listdir(dirs["work"] / "work") == []


def test_a_copy_up_that_truncates_to_zero_copies_no_data(dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """open(O_TRUNC) and truncate to 0 copy the metadata up and no data (overlayfs's
    ATOMIC_O_TRUNC): with the data copy broken, they still succeed, a plain open does not."""
    for name in ("opened", "truncated", "control"):
        (dirs["bottom"] / name).write_bytes(b"lower data\n")
        os.chmod(dirs["bottom"] / name, 0o640)
        os.setxattr(dirs["bottom"] / name, "user.kept", b"yes")
    u = make_union(dirs)

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("unionfs.copyup.copy_data", broken)
    monkeypatch.setattr("unionfs.syscalls.reflink", lambda *a: False)
    fd, _ = u.open("/opened", os.O_WRONLY | os.O_TRUNC)
    u.release(fd)
    os.close(fd)
    u.truncate("/truncated", 0)
    with pytest.raises(OSError) as exc:
        u.open("/control", os.O_WRONLY)
    assert exc.value.errno == errno.ENOSPC
    for name in ("opened", "truncated"):
        st = os.stat(dirs["upper"] / name)
        assert (st.st_size, stat.S_IMODE(st.st_mode)) == (0, 0o640)
        assert os.getxattr(dirs["upper"] / name, "user.kept") == b"yes"
    assert not (dirs["upper"] / "control").exists()


def test_oci_form_writes_wh_files(dirs: dict[str, Path]) -> None:
    tree(dirs["bottom"], {"a": "x", "d/x": "y"})
    u = make_union(dirs, whiteout=WhiteoutForm.OCI)
    u.unlink("/a")
    u.unlink("/d/x")
    u.rmdir("/d")
    u.mkdir("/d", 0o755)
    assert (dirs["upper"] / ".wh.a").is_file()
    assert (dirs["upper"] / ".wh.d").is_file() and (dirs["upper"] / "d").is_dir()
    assert names(u, "/") == ["d"] and names(u, "/d") == []
    assert u.statfs()["f_namemax"] == 251


def test_in_the_oci_form_a_name_beyond_the_limit_is_too_long(dirs: dict[str, Path]) -> None:
    """The OCI form needs room for a ``.wh.`` marker beside any name: a new name longer
    than the 251 bytes statfs reports is ENAMETOOLONG, whatever makes it, and so is a
    lookup of a missing one; a name of 251 bytes is taken and can be whited out."""
    longest, beyond = "n" * 251, "n" * 252
    tree(dirs["bottom"], {longest: "x", "f": "f"})
    u = make_union(dirs, whiteout=WhiteoutForm.OCI)
    makes = {
        "create": lambda: os.close(u.create("/" + beyond, 0o644, os.O_WRONLY)),
        "mkdir": lambda: u.mkdir("/" + beyond, 0o755),
        "symlink": lambda: u.symlink("/" + beyond, "f"),
        "rename": lambda: u.rename("/f", "/" + beyond),
    }
    for how, make in makes.items():
        with pytest.raises(OSError) as exc:
            make()
        assert exc.value.errno == errno.ENAMETOOLONG, how
    with pytest.raises(OSError) as exc:
        u.getattr("/" + beyond)
    assert exc.value.errno == errno.ENAMETOOLONG
    with pytest.raises(OSError) as exc:
        u.getattr("/" + "m" * 251)
    assert exc.value.errno == errno.ENOENT
    assert sorted(os.listdir(dirs["upper"])) == []
    u.unlink("/" + longest)
    assert (dirs["upper"] / (".wh." + longest)).is_file() and names(u, "/") == ["f"]


@root_only
def test_new_entries_belong_to_the_caller(dirs: dict[str, Path]) -> None:
    u = make_union(dirs)
    caller = Caller(1234, 5678)
    fd = u.create("/f", 0o640, os.O_WRONLY, caller)
    os.close(fd)
    u.mkdir("/d", 0o750, caller)
    u.symlink("/l", "f", caller)
    for rel in ("f", "d", "l"):
        st = (dirs["upper"] / rel).lstat()
        assert (st.st_uid, st.st_gid) == (1234, 5678), rel


@root_only
def test_setgid_directory_gives_its_group(dirs: dict[str, Path]) -> None:
    d = dirs["bottom"] / "shared"
    d.mkdir()
    os.chown(d, 0, 4242)
    os.chmod(d, 0o2775)
    u = make_union(dirs)
    os.close(u.create("/shared/f", 0o644, os.O_WRONLY, Caller(1000, 1000)))
    assert (dirs["upper"] / "shared/f").stat().st_gid == 4242


def test_rmdir_judges_emptiness_on_the_merged_view(dirs: dict[str, Path]) -> None:
    tree(dirs["bottom"], {"d/a": "1"})
    tree(dirs["top"], {"d/b": "2"})
    u = make_union(dirs)
    with pytest.raises(OSError) as exc:
        u.rmdir("/d")
    assert exc.value.errno == errno.ENOTEMPTY
    u.unlink("/d/a")
    u.unlink("/d/b")
    u.rmdir("/d")
    assert names(u, "/") == []


def test_a_listing_resolves_its_entries_only_while_nothing_changed(dirs: dict[str, Path]) -> None:
    """readdirplus hands each listed file's layer to the resolver (``listed_getattr``);
    one listed before a change must not be kept, or the path would resolve to the
    lower file that the change copied up."""
    tree(dirs["bottom"], {"d/f": "1", "d/g": "2"})
    os.chmod(dirs["bottom"] / "d" / "f", 0o644)
    u = make_union(dirs)
    before = u.generation
    sources = {name: source for name, _, source in u.listed("/d") if source}
    assert sorted(sources) == ["f", "g"]
    u.chmod("/d/f", 0o600)  # copied up: f is in the upper layer now
    u.listed_getattr(*sources["f"], "/d/f", before)  # the listing's answer, from before the change
    assert stat.S_IMODE(u.getattr("/d/f")["st_mode"]) == 0o600
    now = u.generation
    sources = {name: source for name, _, source in u.listed("/d") if source}
    assert sources["f"][0] == 0 and sources["g"][0] != 0  # upper, lower
    u.listed_getattr(*sources["g"], "/d/g", now)
    u.unlink("/d/g")  # resolved from the listing: a whiteout over the lower file
    assert names(u, "/d") == ["f"]
    assert stat.S_ISCHR((dirs["upper"] / "d" / "g").lstat().st_mode)


def test_rename_of_lower_directory_keeps_contents_and_inode(dirs: dict[str, Path]) -> None:
    tree(dirs["bottom"], {"src/a": "1", "src/sub/b": "2"})
    tree(dirs["top"], {"src/c": "3"})
    u = make_union(dirs)
    ino = u.getattr("/src")["st_ino"]
    u.rename("/src", "/dst")
    assert names(u, "/") == ["dst"]
    assert names(u, "/dst") == ["a", "c", "sub"]
    assert names(u, "/dst/sub") == ["b"]
    assert u.getattr("/dst")["st_ino"] == ino
    u.rename("/dst/sub", "/moved")
    assert names(u, "/moved") == ["b"] and names(u, "/dst") == ["a", "c"]
    # a fresh union over the same layers reads the same
    u.close()
    u2 = make_union(dirs)
    assert names(u2, "/dst") == ["a", "c"] and names(u2, "/moved") == ["b"]


def test_rename_between_names_of_one_file(dirs: dict[str, Path]) -> None:
    """Names of one upper file: rename(2) does nothing (the kernel sends it when it
    holds two inodes for them, as under libfuse's path API). Names of one lower file
    are two files to overlayfs, which breaks them apart at the first change: done."""
    tree(dirs["bottom"], {"a": "shared"})
    os.link(dirs["bottom"] / "a", dirs["bottom"] / "b")
    tree(dirs["upper"], {"u": "upper"})
    os.link(dirs["upper"] / "u", dirs["upper"] / "v")
    u = make_union(dirs)
    u.rename("/u", "/v")
    assert names(u, "/") == ["a", "b", "u", "v"]
    assert (dirs["upper"] / "u").stat().st_nlink == 2
    u.rename("/a", "/b")
    assert names(u, "/") == ["b", "u", "v"]
    assert u.getattr("/b")["st_nlink"] == 1 and (dirs["bottom"] / "a").exists()


@root_only
def test_a_relative_redirect_names_the_entry_in_its_parents_own_lower_dirs(dirs: dict[str, Path]) -> None:
    """overlayfs writes a relative redirect (the old name) for a rename within one
    directory. Below, that name is looked up where the parent's lower parts are,
    which a redirect of the parent may have put at another path."""
    tree(dirs["bottom"], {"old/sub0/f": "f", "old/keep": "k", "new/sub0/g": "wrong parent"})
    tree(dirs["mid"], {"new/sub/": None})
    os.setxattr(dirs["mid"] / "new", "trusted.overlay.redirect", b"old")
    os.setxattr(dirs["mid"] / "new/sub", "trusted.overlay.redirect", b"sub0")
    chardev_whiteout(dirs["mid"] / "new/sub0")  # what the rename left at the old name
    u = make_union(dirs)
    assert names(u, "/new") == ["keep", "sub"]
    assert names(u, "/new/sub") == ["f"]
    # moved to another parent, the relative redirect would name nothing: it becomes absolute
    os.mkdir(dirs["upper"] / "new")
    os.mkdir(dirs["upper"] / "new/sub")
    os.setxattr(dirs["upper"] / "new/sub", "trusted.overlay.redirect", b"sub")
    u.close()
    u = make_union(dirs)
    assert names(u, "/new/sub") == ["f"]
    u.rename("/new/sub", "/moved")
    assert os.getxattr(dirs["upper"] / "moved", "trusted.overlay.redirect") == b"/new/sub"  # from the layer below, whose own redirects lead on
    u.close()
    assert names(make_union(dirs), "/moved") == ["f"]


@root_only
@pytest.mark.parametrize("redirect", [b"a/b", b".", b"..", b"/", b"//old", b"/old/", b"/old/../old"])
def test_a_redirect_overlayfs_would_refuse_merges_nothing_below(dirs: dict[str, Path], redirect: bytes) -> None:
    tree(dirs["bottom"], {"old/f": "f", "a/b/g": "g", "d/h": "h"})
    tree(dirs["top"], {"d/own": "own"})
    os.setxattr(dirs["top"] / "d", "trusted.overlay.redirect", redirect)
    assert names(make_union(dirs), "/d") == ["own"]


@pytest.mark.parametrize("form", [WhiteoutForm.OCI, pytest.param(WhiteoutForm.OVERLAY, marks=root_only)])
def test_whiteouts_share_one_inode_and_survive_its_loss(dirs: dict[str, Path], form: WhiteoutForm) -> None:
    tree(dirs["bottom"], {f"f{i}": "x" for i in range(4)})
    u = make_union(dirs, whiteout=form)
    u.unlink("/f0")
    u.unlink("/f1")
    marker = (lambda n: dirs["upper"] / n) if form is WhiteoutForm.OVERLAY else (lambda n: dirs["upper"] / f".wh.{n}")
    assert marker("f0").lstat().st_ino == marker("f1").lstat().st_ino
    for name in os.listdir(dirs["work"] / "work"):  # the shared inode is gone (a cleaner ran)
        os.unlink(dirs["work"] / "work" / name)
    u.unlink("/f2")
    assert marker("f2").exists() and names(u, "/") == ["f3"]


@root_only
def test_a_removed_directory_serves_the_next_copy_up_without_what_it_had(dirs: dict[str, Path]) -> None:
    """rmdir keeps the emptied upper directory for the next directory copy-up
    (``WorkDir.recycle_dir``): the copy must show the lower directory's mode,
    owner, times and xattrs only, nothing of the directory it was before."""
    tree(dirs["bottom"], {"gone/f": "x", "keep/g": "y"})
    os.setxattr(dirs["bottom"] / "gone", "user.old", b"1")
    os.chmod(dirs["bottom"] / "gone", 0o1777)
    os.chmod(dirs["bottom"] / "keep", 0o750)
    os.chown(dirs["bottom"] / "keep", 1000, 1001)
    os.utime(dirs["bottom"] / "keep", ns=(1_000_000_000, 2_000_000_000))
    u = make_union(dirs, whiteout=WhiteoutForm.OVERLAY)
    keep_ino = u.getattr("/keep")["st_ino"]
    u.unlink("/gone/f")  # copies gone up, to hold f's whiteout
    work = dirs["work"] / "work"

    def spare_dirs() -> list[int]:
        return [entry.inode() for entry in os.scandir(work) if entry.is_dir(follow_symlinks=False)]

    used = (dirs["upper"] / "gone").lstat().st_ino
    u.getattr("/gone")  # the union remembers the number it reports for that upper inode
    u.rmdir("/gone")
    assert spare_dirs() == [used], "the removed directory was not kept for a copy-up"
    u.chmod("/keep", 0o750)  # copies keep up: into the directory gone was
    assert spare_dirs() == []
    st = (dirs["upper"] / "keep").lstat()
    assert st.st_ino == used
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 1000, 1001)
    assert st.st_mtime_ns == 2_000_000_000
    assert "user.old" not in os.listxattr(dirs["upper"] / "keep")
    assert not any(name.startswith("trusted.overlay.opaque") for name in os.listxattr(dirs["upper"] / "keep"))
    assert os.listdir(dirs["upper"] / "keep") == []
    assert u.getattr("/keep")["st_ino"] == keep_ino
    assert names(u, "/") == ["keep"] and names(u, "/keep") == ["g"]


_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS, _FS_IMMUTABLE_FL = 0x80086601, 0x40086602, 0x10


def _set_immutable(path: Path, on: bool) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        flags = struct.unpack("l", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8)))[0]
        flags = flags | _FS_IMMUTABLE_FL if on else flags & ~_FS_IMMUTABLE_FL
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("l", flags))
    finally:
        os.close(fd)


@root_only
def test_an_rmdir_done_stays_done_when_its_leftovers_will_not_go(dirs: dict[str, Path]) -> None:
    """Once the directory is swapped for its whiteout, the rmdir has happened:
    an entry of it that cannot be removed from the work dir is left for the
    next mount, not reported as the rmdir's failure."""
    tree(dirs["bottom"], {"d/x": "1"})
    tree(dirs["upper"], {"d/.wh.y": ""})  # a marker that names nothing below: hidden, and no entry
    try:
        _set_immutable(dirs["upper"] / "d" / ".wh.y", True)
    except OSError as exc:
        pytest.skip(f"no immutable flag here: {exc.strerror}")
    try:
        u = make_union(dirs, whiteout=WhiteoutForm.OVERLAY)
        u.unlink("/d/x")
        u.rmdir("/d")
        assert names(u, "/") == []
        assert stat.S_ISCHR((dirs["upper"] / "d").lstat().st_mode)
        u.close()
    finally:
        for left in (dirs["work"] / "work").rglob(".wh.y"):
            _set_immutable(left, False)
    make_union(dirs).close()  # the next mount clears the work dir
    assert os.listdir(dirs["work"] / "work") == []


@root_only
def test_implicit_directory_takes_attributes_from_below(dirs: dict[str, Path]) -> None:
    """A layer that adds d/f without an entry for d/ must not change d's owner, mode or xattrs."""
    tree(dirs["bottom"], {"d/": None})
    os.chmod(dirs["bottom"] / "d", 0o1770)
    os.chown(dirs["bottom"] / "d", 1000, 1000)
    os.setxattr(dirs["bottom"] / "d", "user.k", b"below")
    tree(dirs["top"], {"d/f": "x"})
    os.setxattr(dirs["top"] / "d", "user.unionfs.implicit", b"1")
    u = make_union(dirs)
    attrs = u.getattr("/d")
    assert (stat.S_IMODE(attrs["st_mode"]), attrs["st_uid"]) == (0o1770, 1000)
    assert u.listxattr("/d") == ["user.k"] and u.getxattr("/d", "user.k") == b"below"
    os.close(u.create("/d/new", 0o644, os.O_WRONLY))
    st = (dirs["upper"] / "d").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o1770, 1000)
    assert os.getxattr(dirs["upper"] / "d", "user.k") == b"below" and u.getxattr("/d", "user.k") == b"below"


# -- records of interrupted renames (whiteout=oci) ------------------------------------
def _record(work: Path, text: str) -> None:
    (work / "work").mkdir(exist_ok=True)
    (work / "work" / "#unionfs.1.0.rename").write_bytes(os.fsencode(text))


def test_next_mount_finishes_an_interrupted_rename(dirs: dict[str, Path]) -> None:
    tree(dirs["bottom"], {"dst/a": "hidden", "src": "a lower file the rename whites out"})
    # as the rename left it half-way: src made opaque, one whiteout of dst left to remove
    tree(dirs["upper"], {"src/x": "moved", "src/.wh..wh..opq": "", "dst/.wh.a": ""})
    _record(dirs["work"], "src\0dst\0.wh.src")
    u = make_union(dirs, whiteout=WhiteoutForm.OCI)
    try:
        assert names(u, "/") == ["dst"]
        assert names(u, "/dst") == ["x"]
        assert (dirs["upper"] / "dst/x").read_text() == "moved"
        assert (dirs["upper"] / ".wh.src").exists()
        assert os.listdir(dirs["work"] / "work") == []
    finally:
        u.close()


def test_a_finished_rename_is_not_repeated(dirs: dict[str, Path]) -> None:
    tree(dirs["upper"], {"dst/x": "moved", "src/": None})  # a new src made after the rename
    tree(dirs["bottom"], {"src/y": "below"})
    _record(dirs["work"], "gone\0dst\0")
    u = make_union(dirs, whiteout=WhiteoutForm.OCI)
    try:
        assert (dirs["upper"] / "dst/x").read_text() == "moved"
        assert names(u, "/src") == ["y"]
        assert os.listdir(dirs["work"] / "work") == []
    finally:
        u.close()


@pytest.mark.parametrize("text", ["../outside\0dst\0", "src\0/abs\0", "src\0dst\0../../m", "src\0dst", "src"])
def test_a_rename_record_never_reaches_outside_the_upper(dirs: dict[str, Path], tmp_path: Path, text: str) -> None:
    """A record that is cut short or names a path outside the upper layer changes nothing."""
    tree(tmp_path, {"outside/keep": "k"})
    tree(dirs["upper"], {"src/x": "s", "dst/.wh.a": ""})
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "work" not in p.parts)
    _record(dirs["work"], text)
    u = make_union(dirs, whiteout=WhiteoutForm.OCI)
    u.close()
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "work" not in p.parts)
    assert after == before
    assert os.listdir(dirs["work"] / "work") == []


@pytest.mark.parametrize("where", ["inside", "absolute", "above"])
def test_an_intent_record_removes_its_entry_only_inside_the_upper(dirs: dict[str, Path], tmp_path: Path, where: str) -> None:
    """The record of an interrupted create names the temporary entry it was building, which
    the next mount removes; one that names a path outside the upper layer, absolute or
    through "..", removes nothing there."""
    name = "#unionfs.1.0"
    entry = (dirs["upper"] if where == "inside" else tmp_path / "outside") / f".wh.{name}"
    entry.parent.mkdir(exist_ok=True)
    entry.write_text("entry")
    rel = {"inside": entry.name, "absolute": str(entry), "above": f"../outside/{entry.name}"}[where]
    (dirs["work"] / "work").mkdir()
    (dirs["work"] / "work" / f"{name}.intent").write_bytes(os.fsencode(rel))
    make_union(dirs).close()
    assert entry.exists() == (where != "inside")
    assert os.listdir(dirs["work"] / "work") == []


def test_a_lower_layer_in_the_upper_or_work_dir_is_refused_through_the_api_too(tmp_path: Path) -> None:
    upper, work = tmp_path / "upper", tmp_path / "work"
    for path in (upper / "in", work / "in"):
        path.mkdir(parents=True)
    for lower, problem in ((upper / "in", "overlaps upperdir"), (work, "overlaps workdir")):
        with pytest.raises(ValueError, match=problem):
            Union([str(lower)], str(upper), str(work))
    with pytest.raises(ValueError, match="separate directories"):
        Union([str(tmp_path / "upper/in")], str(upper), str(upper / "in"))
    assert not (work / "work").exists()  # refused before anything was made
