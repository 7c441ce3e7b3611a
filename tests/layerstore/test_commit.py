"""commit: a container's changes through a real unionfs mount become a layer that other tools read the same.

The base image is built by umoci and loaded from skopeo's oci-archive. The
container view is recorded while it is mounted; the committed image mounted
read-only, and umoci's unpack of skopeo's copy of its saved archive, must
show the same tree and the same hard links.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import signal
import socket
import sqlite3
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from imagebuild import build_layout, export, run, tree, write
from mounts import driver_pid
from trees import link_groups

from layerstore import cli
from layerstore.commit import CREATED_BY, Changeset, commit
from layerstore.containers import SAFE_OPTIONS, Containers
from layerstore.errors import InvalidReference, NotFound
from layerstore.export import TarWriter, save
from layerstore.model import OCI_MANIFEST
from layerstore.store import Store
from layerstore.unpack import unpack_layer

import unionfs.mount
from unionfs.mount import is_mounted

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("umoci"), reason="needs root, umoci and skopeo")


def base_layer(root: Path) -> None:
    write(root, "etc/os-release", 'NAME="Test"\n')
    write(root, "etc/cfg/one.conf", "1\n")
    write(root, "etc/cfg/two.conf", "2\n")
    write(root, "bin/tool.sh", "#!/bin/sh\necho tool\n", 0o755)
    os.symlink("tool.sh", root / "bin/tool")
    write(root, "srv/data/a.txt", "a\n")
    write(root, "srv/data/sub/b.txt", "b\n")
    write(root, "srv/data/sub/c.txt", "c\n")
    write(root, "srv/data/hl1", "linked in the image\n")
    os.link(root / "srv/data/hl1", root / "srv/data/hl2")
    write(root, "lib/x", "shared\n")
    os.link(root / "lib/x", root / "lib/y")
    write(root, "usr/share/doc/readme", "docs\n")
    write(root, "var/lib/keep", "a file\n")
    write(root, "opt/owned", "owned\n", 0o640)
    os.chown(root / "opt/owned", 1000, 1000)
    os.chmod(root / "srv/data/sub", 0o750)


def second_layer(root: Path) -> None:
    os.unlink(root / "etc/cfg/two.conf")
    write(root, "srv/data/sub/d.txt", "d\n")  # the directory renamed below spans both layers
    write(root, "srv/data/a.txt", "a v2\n")


def change(m: Path) -> None:
    """What the container does: every kind of change a layer must carry."""
    write(m, "new/file.txt", "new\n")
    os.setxattr(m / "new/file.txt", "user.note", b"kept")
    os.link(m / "new/file.txt", m / "new/file-link")  # a hard link pair made in the container
    os.symlink("file.txt", m / "new/sym")
    os.mkfifo(m / "new/fifo")
    (m / "etc/os-release").write_text('NAME="Changed"\n')
    os.unlink(m / "usr/share/doc/readme")
    shutil.rmtree(m / "etc/cfg")  # a lower directory deleted and made again: opaque
    (m / "etc/cfg").mkdir()
    write(m, "etc/cfg/three.conf", "3\n")
    os.rename(m / "srv/data", m / "srv/moved")  # a renamed lower directory: redirect
    write(m, "srv/moved/added.txt", "added\n")
    os.unlink(m / "srv/moved/sub/c.txt")
    with open(m / "lib/x", "a") as f:  # breaks the image's hard link lib/x = lib/y
        f.write("changed\n")
    os.link(m / "bin/tool.sh", m / "bin/tool-link")  # a hard link to a lower file
    os.chmod(m / "opt/owned", 0o600)
    os.chown(m / "opt/owned", 2000, 3000)
    os.unlink(m / "var/lib/keep")  # a file replaced by a directory
    (m / "var/lib/keep").mkdir()


@pytest.fixture(scope="module")
def base_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("commit-images")
    layout = build_layout(base / "layout", "base", [base_layer, second_layer])
    return export(layout, "base", "oci-archive", base / "base.tar", "example/base:v1")


@pytest.fixture
def store(tmp_path: Path, base_archive: Path) -> Iterator[Store]:
    with Store(tmp_path / "store") as s:
        s.load(str(base_archive))
        yield s


def layer_entries(store: Store, blob: str) -> list[tarfile.TarInfo]:
    with store.blobs.open(blob) as raw, gzip.open(raw) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        return list(tar)


@pytest.mark.parametrize("form", ["overlay", "oci"])
def test_commit_keeps_what_the_container_showed(store: Store, tmp_path: Path, form: str) -> None:
    containers = Containers(store)
    mnt, ro = tmp_path / "mnt", tmp_path / "ro"
    mnt.mkdir()
    ro.mkdir()
    c = containers.create_and_mount("example/base:v1", str(mnt), options=(*SAFE_OPTIONS, f"whiteout={form}"))
    try:
        change(mnt)
        expected, links = tree(mnt), link_groups(mnt)
        containers.umount(c.name)
        upper = containers.paths(c.id)[0]
        prefix = "trusted." if form == "overlay" else "user."
        assert os.getxattr(upper / "srv/moved", prefix + "overlay.redirect", follow_symlinks=False)  # the case is exercised
        result = commit(store, c.name, "example/committed:v1", message="the changes", author="Tester <t@example.com>")
    finally:
        containers.remove(c.name, force=True)
    assert ("new/file-link", "new/file.txt") in links and ("srv/moved/hl1", "srv/moved/hl2") in links
    assert ("bin/tool-link", "bin/tool.sh") in links and not any("lib/x" in group for group in links)

    assert store.resolve("example/committed:v1") == result.id
    r = containers.create_and_mount(result.id, str(ro), read_only=True)
    try:
        assert tree(ro) == expected
        assert link_groups(ro) == links
        assert os.getxattr(ro / "new/file.txt", "user.note") == b"kept"
    finally:
        containers.remove(r.name, force=True)

    # the layer tar: OCI whiteouts in stream order, no driver bookkeeping
    assert result.layer is not None
    entries = layer_entries(store, result.layer.blob.digest)
    names = [e.name.rstrip("/") for e in entries]
    assert "srv/.wh.data" in names and "usr/share/doc/.wh.readme" in names
    assert names[names.index("srv/moved") + 1] == "srv/moved/.wh..wh..opq"
    # a directory made again is opaque in the tar, whatever the form in the upper (.wh.cfg beside cfg in the OCI form)
    assert names[names.index("etc/cfg") + 1] == "etc/cfg/.wh..wh..opq" and "etc/.wh.cfg" not in names
    assert names[names.index("var/lib/keep") + 1] == "var/lib/keep/.wh..wh..opq" and "var/lib/.wh.keep" not in names
    assert not any("overlay" in key or "unionfs" in key for e in entries for key in e.pax_headers)
    pair = {e.name: e for e in entries if e.name in ("new/file.txt", "new/file-link")}
    assert sorted(e.type for e in pair.values()) == sorted([tarfile.REGTYPE, tarfile.LNKTYPE])
    assert len(names) == len(set(names))

    # the image: the parent's config plus one layer and one history entry, an OCI manifest
    config = store.config(result.id)
    parent = store.config(store.resolve("example/base:v1"))
    assert config["rootfs"]["diff_ids"] == [*parent["rootfs"]["diff_ids"], result.layer.diff_id]
    assert config["history"][:-1] == parent["history"]
    assert config["history"][-1] == {
        "created": config["created"], "created_by": CREATED_BY, "author": "Tester <t@example.com>", "comment": "the changes"
    }
    assert config["created"].endswith("Z") and config["author"] == "Tester <t@example.com>"
    manifest = json.loads(store.blobs.read(result.manifest))
    assert manifest["mediaType"] == OCI_MANIFEST and manifest["config"]["digest"] == result.id
    assert manifest["layers"][-1] == result.layer.blob.to_json()
    assert result.layer.blob.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert store.image_layers(result.id) == config["rootfs"]["diff_ids"]

    # saved, copied by skopeo and unpacked by umoci: the same tree
    archive = tmp_path / "committed.tar"
    with open(archive, "wb") as out:
        save(store, ["example/committed:v1"], None, out)
    run("skopeo", "copy", "-q", f"docker-archive:{archive}", f"oci:{tmp_path / 'copy'}:x")
    run("umoci", "unpack", "--image", f"{tmp_path / 'copy'}:x", str(tmp_path / "bundle"))
    assert tree(tmp_path / "bundle/rootfs") == expected
    assert link_groups(tmp_path / "bundle/rootfs") == links


def test_changeset_of_a_handmade_upper(tmp_path: Path) -> None:
    """Every form the driver leaves in an upper, those other tools leave (an xattr whiteout, a lone
    OCI opaque marker), and names and xattrs a ustar header cannot hold."""
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    write(lower, "old/f1", "one\n")
    write(lower, "old/sub/f2", "two\n")
    write(lower, "gone", "x")
    write(lower, "xw", "hidden by an xattr whiteout")
    write(lower, "lone/hidden", "hidden by the marker\n")
    write(upper, "xw", "")
    os.setxattr(upper / "xw", "user.overlay.whiteout", b"")
    write(upper, "lone/.wh..wh..opq", "")
    write(upper, "lone/kept", "kept\n")
    write(upper, "new/extra", "extra\n")
    os.setxattr(upper / "new", "trusted.overlay.redirect", b"/old")
    os.setxattr(upper / "new", "trusted.unionfs.origin", b"42")
    write(upper, "op/x", "x\n")
    os.setxattr(upper / "op", "trusted.overlay.opaque", b"y")
    os.mknod(upper / "gone", stat.S_IFCHR | 0o600, 0)
    os.link(upper / "gone", upper / "old")  # the driver links every whiteout to one inode
    long_name, weird = "n" * 150, os.fsdecode(b"caf\xe9")
    write(upper, long_name, "long\n")
    os.symlink("t" * 200, upper / "longlink")
    write(upper, weird, "undecodable name\n")
    os.link(upper / weird, upper / "weird-link")
    os.setxattr(upper / long_name, "user.bin", b"\xff\x00\x01")
    os.setxattr(upper / long_name, "user.overlay.origin", b"no")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(upper / "sock"))
    buf = io.BytesIO()
    tar = TarWriter(buf)
    with Changeset(str(upper), [str(lower)]) as changes:
        changes.write(tar)
    tar.close()
    assert len(buf.getvalue()) % 512 == 0 and buf.getvalue()[-1024:] == bytes(1024)
    buf.seek(0)
    with tarfile.open(fileobj=buf, encoding="utf-8", errors="surrogateescape") as t:
        entries = {m.name.rstrip("/"): m for m in t}
    assert [n for n in entries if ".wh." in n] == [
        ".wh.gone", ".wh.old", ".wh.xw", "lone/.wh..wh..opq", "new/.wh..wh..opq", "op/.wh..wh..opq"]
    assert "xw" not in entries and "lone/kept" in entries
    assert all(entries[n].isreg() and entries[n].size == 0 for n in entries if ".wh." in n)
    assert {n for n in entries if n.startswith("new/")} == {"new/.wh..wh..opq", "new/extra", "new/f1", "new/sub", "new/sub/f2"}
    pax = entries[long_name].pax_headers
    assert pax["SCHILY.xattr.user.bin"] == os.fsdecode(b"\xff\x00\x01") and pax["hdrcharset"] == "BINARY"
    assert entries["longlink"].linkname == "t" * 200
    assert entries["weird-link"].islnk() and entries["weird-link"].linkname == weird  # sorted: 'c' < 'w'
    assert "sock" not in entries
    assert not any("overlay" in k or "unionfs" in k for m in entries.values() for k in m.pax_headers)
    buf.seek(0)
    unpack_layer(buf, tmp_path / "unpacked")
    assert os.getxattr(tmp_path / "unpacked" / long_name, "user.bin") == b"\xff\x00\x01"
    assert (tmp_path / "unpacked" / weird).read_text() == "undecodable name\n"
    assert (tmp_path / "unpacked/new/sub/f2").read_text() == "two\n"


@contextlib.contextmanager
def unmounted_container(store: Store, tmp_path: Path, name: str) -> Iterator[None]:
    """A container of example/base:v1 left as made (mounted once, then unmounted), removed after."""
    containers = Containers(store)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    c = containers.create_and_mount("example/base:v1", str(mnt), name=name)
    try:
        containers.umount(name)
        yield
    finally:
        containers.remove(c.name, force=True)


def test_cli_commit_without_changes_adds_no_layer(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with unmounted_container(store, tmp_path, "idle"):
        assert cli.main(["--root", str(store.root), "commit", "-m", "nothing", "idle"]) == 0
        image_id = capsys.readouterr().out.strip()
        assert cli.main(["--root", str(store.root), "commit", "idle", "bad@name"]) == 1
        assert capsys.readouterr().err.count("\n") == 1
    assert image_id.startswith("sha256:") and len(image_id) == 71
    parent_id = store.resolve("example/base:v1")
    assert store.image_layers(image_id) == store.image_layers(parent_id)
    assert store.config(image_id)["history"][-1]["empty_layer"] is True
    assert store.tags_of(image_id) == []
    with pytest.raises(InvalidReference):
        commit(store, "idle", "x@sha256:" + "0" * 64)  # a bad name is refused before anything is read
    with pytest.raises(NotFound):
        commit(store, "no-such-container")


def test_cli_commit_author_is_the_image_s_author(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """-a (--author) of the command line, as docker commit's: the config's author, its history
    step's too, and what inspect shows as Author."""
    author = "Jane Doe <jane@example.com>"
    with unmounted_container(store, tmp_path, "authored"):
        root = ["--root", str(store.root)]
        assert cli.main([*root, "commit", "-a", author, "authored", "example/authored:v1"]) == 0
        image_id = capsys.readouterr().out.strip()
        assert cli.main([*root, "commit", "--author", "Long Form", "-m", "message", "authored", "example/authored:v2"]) == 0
        capsys.readouterr()
    config = store.config(image_id)
    assert config["author"] == author and config["history"][-1]["author"] == author
    assert cli.main(["--root", str(store.root), "inspect", "-f", "{{.Author}}", "example/authored:v1", "example/authored:v2"]) == 0
    assert capsys.readouterr().out == f"{author}\nLong Form\n"
    assert cli.main(["--root", str(store.root), "inspect", "example/authored:v1"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["Author"] == author


def test_cli_mount_of_a_container_mounts_it_again_as_it_was_left(
        store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``mount CONTAINER``: after umount, and after its driver was killed and its dead
    mount unmounted, the container's layer is mounted again where it was."""
    containers = Containers(store)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    root = ["--root", str(store.root)]
    c = containers.create_and_mount("example/base:v1", str(mnt), name="again")
    try:
        with open(mnt / "written", "w") as f:
            f.write("kept\n")
            f.flush()
            os.fsync(f.fileno())
        assert cli.main([*root, "umount", "again"]) == 0 and not is_mounted(str(mnt))
        assert cli.main([*root, "mount", "again"]) == 0
        assert capsys.readouterr().out == "again\n"
        assert (mnt / "written").read_text() == "kept\n" and (mnt / "srv").is_dir()  # the layer over the image
        assert cli.main([*root, "mount", "again"]) == 1
        assert capsys.readouterr().err == f"Error: container again: already mounted on {mnt}\n"
        os.kill(driver_pid(mnt), signal.SIGKILL)
        assert cli.main([*root, "mount", "again"]) == 1  # a dead mount is still there
        capsys.readouterr()
        assert cli.main([*root, "umount", "again"]) == 0
        assert cli.main([*root, "mount", "again"]) == 0
        assert (mnt / "written").read_text() == "kept\n"
        assert cli.main([*root, "mount", "--name", "other", "again"]) == 1
        assert cli.main([*root, "mount", "example/base:v1"]) == 1
        assert cli.main([*root, "mount", "nothing"]) == 1
        assert capsys.readouterr().err.splitlines() == [
            "Error: --name and --read-only make a new container: mount IMAGE MOUNTPOINT",
            "Error: example/base:v1 is an image, not a container: a new container needs a MOUNTPOINT",
            'Error: No such container: nothing',
        ]
    finally:
        containers.remove(c.name, force=True)


def test_cli_mount_on_a_missing_path_or_a_file_is_one_line_and_keeps_no_container(
        store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = ["--root", str(store.root)]
    afile = tmp_path / "afile"
    afile.write_text("not a directory\n")
    assert cli.main([*root, "mount", "example/base:v1", str(tmp_path / "missing")]) == 1
    assert cli.main([*root, "mount", "example/base:v1", str(afile)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"Error: mount point {tmp_path / 'missing'}: no such directory",
        f"Error: mount point {afile}: not a directory",
    ]
    assert Containers(store).all() == [] and afile.read_text() == "not a directory\n"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    containers = Containers(store)
    c = containers.create_and_mount("example/base:v1", str(mnt), name="moved")
    try:
        containers.umount("moved")
        mnt.rmdir()
        mnt.write_text("")  # where it was mounted is a file now
        assert cli.main([*root, "mount", "moved"]) == 1
        assert capsys.readouterr().err == f"Error: mount point {mnt}: not a directory\n"
        assert not is_mounted(str(mnt))
    finally:
        containers.remove(c.name, force=True)


def test_a_container_whose_driver_does_not_answer_is_not_read(store: Store, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """diff and commit read the container layer once the driver has placed its pending
    copy-ups. A driver that does not answer (here: stopped) is a one-line error, not a
    changeset that may lack a file written a moment before; umount detaches its mount
    all the same, with a warning."""
    monkeypatch.setattr(unionfs.mount, "SETTLE_SECONDS", 1.0)
    containers = Containers(store)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    c = containers.create_and_mount("example/base:v1", str(mnt), name="stopped")
    driver = driver_pid(mnt)
    try:
        os.kill(driver, signal.SIGSTOP)
        assert cli.main(["--root", str(store.root), "diff", "stopped"]) == 1
        assert capsys.readouterr().err == f"Error: container stopped: its driver on {mnt} does not answer\n"
        assert cli.main(["--root", str(store.root), "umount", "stopped"]) == 0
        assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
            f"{mnt}: the driver did not answer in 1 s: unmounted without waiting for its pending copy-ups"]
        assert not is_mounted(str(mnt))
    finally:
        os.kill(driver, signal.SIGCONT)
        containers.remove(c.name, force=True)


def test_cli_ps_lists_mounted_and_unmounted_containers(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    containers = Containers(store)
    mounts = [tmp_path / "one", tmp_path / "two", tmp_path / "ro"]
    for mnt in mounts:
        mnt.mkdir()
    made = [containers.create_and_mount("example/base:v1", str(mnt), name=mnt.name, read_only=mnt.name == "ro") for mnt in mounts]
    try:
        containers.umount("two")
        tables = []
        for flags in ([], ["-a"], ["--all", "--no-trunc"]):
            assert cli.main(["--root", str(store.root), "ps", *flags]) == 0
            tables.append(capsys.readouterr().out.splitlines())
        assert cli.main(["--root", str(store.root), "ps", "-aq"]) == 0
        ids = capsys.readouterr().out.split()
    finally:
        for c in made:
            containers.remove(c.name, force=True)
    assert tables[0] == tables[1] and tables[0][0].split() == ["CONTAINER", "ID", "IMAGE", "MOUNTPOINT", "STATE", "NAMES"]
    rows = {line.split()[-1]: line.split() for line in tables[0][1:]}
    assert rows["one"][1:4] == ["example/base:v1", str(mounts[0]), "mounted"]
    assert rows["two"][1:4] == ["example/base:v1", str(mounts[1]), "unmounted"]
    assert rows["ro"][1:5] == ["example/base:v1", str(mounts[2]), "mounted", "(read-only)"]
    assert sorted(ids) == sorted(c.id[:12] for c in made) == sorted(row[0] for row in rows.values())
    assert sorted(line.split()[0] for line in tables[2][1:]) == sorted(c.id for c in made)


def test_cli_ps_shows_the_image_as_named_while_the_name_still_means_it(
        store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Docker's IMAGE column: the name given when the container was made, the short ID once
    that name means no image or another one; and, in a store made before names were kept,
    the image's first tag."""
    containers = Containers(store)
    image = store.resolve("example/base:v1")
    store.tag("example/base:v1", "example/alias:v2")
    named = {"by-alias": "example/alias:v2", "by-id": image.removeprefix("sha256:")[:8], "by-name": "example/base:v1"}
    made = []
    for name, ref in named.items():
        (tmp_path / name).mkdir()
        made.append(containers.create_and_mount(ref, str(tmp_path / name), name=name))
        containers.umount(name)

    def shown() -> dict[str, str]:
        assert cli.main(["--root", str(store.root), "ps"]) == 0
        return {line.split()[-1]: line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]}

    try:
        assert shown() == named
        store.rmi("example/alias:v2")  # another tag is left: an untag, the container keeps its image
        assert shown() == {**named, "by-alias": image[7:19]}
        with contextlib.closing(sqlite3.connect(store.root / "meta.db")) as db:  # as a store made before
            db.execute("ALTER TABLE containers DROP COLUMN image")
        assert shown() == dict.fromkeys(named, "example/base:v1")  # the column is back, empty
        store.tag("example/base:v1", "example/alias:v3")
        assert cli.main(["--root", str(store.root), "mount", "--name", "after", "example/alias:v3", str(tmp_path / "by-id")]) == 0
        capsys.readouterr()
        assert shown()["after"] == "example/alias:v3"
    finally:
        for c in containers.all():
            containers.remove(c.name, force=True)
