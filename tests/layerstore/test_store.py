"""The store end to end with images made by umoci and skopeo: load, share, mount, diff, remove."""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from imagebuild import build_layout, export, run, tree, write
from users import NOBODY, errno_as
from layerstore import fsck
from layerstore.containers import Containers
from layerstore.errors import AlreadyExists, CorruptArchive, DigestMismatch, InUse, NotFound, UnsafeArchiveEntry
from layerstore.model import Manifest
from layerstore.store import Store

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("umoci"), reason="needs root, umoci and skopeo")


def base_layer(root: Path) -> None:
    write(root, "etc/os-release", 'NAME="Test"\n')
    write(root, "bin/tool.sh", "#!/bin/sh\necho tool\n", 0o755)
    write(root, "var/cache/old.db", "stale\n")
    write(root, "usr/share/doc/readme", "docs\n")
    os.symlink("tool.sh", root / "bin/tool")
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)
    (root / "home/user").mkdir(parents=True)
    os.chmod(root / "home/user", 0o700)
    os.chown(root / "home/user", 1000, 1000)


def second_layer(root: Path) -> None:
    shutil.rmtree(root / "var/cache")
    write(root, "srv/app.txt", "app\n")
    os.chmod(root / "etc/os-release", 0o600)


def app_layer(root: Path) -> None:
    write(root, "srv/app.txt", "app v2\n")
    os.unlink(root / "usr/share/doc/readme")
    write(root, "opt/new/file", "new\n")
    write(root, "tmp/scratch", "x\n")  # the layer carries no entry for tmp/ or home/user/
    write(root, "home/user/.profile", "x\n")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("images")
    layout = build_layout(base / "layout", "base", [base_layer, second_layer])
    build_layout(layout, "app", [app_layer], base="base")
    out = {"layout": layout}
    out["base-docker"] = export(layout, "base", "docker-archive", base / "base.tar", "example/base:v1")
    out["app-oci"] = export(layout, "app", "oci-archive", base / "app-oci.tar", "example/app:v1")
    out["app-zstd"] = export(layout, "app", "oci", base / "app-zstd", "zstd", "--dest-compress-format", "zstd")
    for name in ("base", "app"):
        rootfs = base / f"unpacked-{name}"
        run("umoci", "unpack", "--image", f"{layout}:{name}", str(rootfs))
        out[f"{name}-rootfs"] = rootfs / "rootfs"
    return out


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store(tmp_path / "store") as s:
        yield s  # type: ignore[misc]


def test_load_shares_base_layers(store: Store, images: dict[str, Path]) -> None:
    lines: list[str] = []
    [base] = store.load(str(images["base-docker"]), lines.append)
    assert base.names == ("example/base:v1",)
    assert all(line.endswith("Loading layer") for line in lines) and len(lines) == 2
    lines.clear()
    [app] = store.load(str(images["app-oci"]), lines.append)
    assert app.names == ("example/app:v1",)
    assert [line.split(": ")[1] for line in lines] == ["Already exists", "Already exists", "Loading layer"]
    assert len(store.layers.diff_ids()) == 3
    assert store.image_layers(app.id)[:2] == store.image_layers(base.id)
    assert {os.stat(store.blobs.path(d)).st_mode & 0o7777 for d in store.blobs.digests()} == {0o444}


def test_zstd_layers_load_to_the_same_layers(store: Store, images: dict[str, Path]) -> None:
    [gz] = store.load(str(images["app-oci"]))
    lines: list[str] = []
    [zst] = store.load(str(images["app-zstd"]), lines.append)
    assert zst.id == gz.id  # one config: the same image, whatever the compression
    assert all("Already exists" in line for line in lines)
    assert len(store.layers.diff_ids()) == 3
    # the image's layer rows name the zstd blobs now; the gzip manifest still names its own
    manifests = [Manifest.parse(store.blobs.read(r["digest"]), "manifest") for r in store.meta.query("SELECT digest FROM manifests")]
    named = {d.digest for m in manifests for d in [m.config, *m.layers]}
    assert len(manifests) == 2 and len(named) == 7
    store.prune_unreferenced()
    assert all(store.blobs.has(digest) for digest in named)


def test_mounted_rootfs_equals_umoci_unpack(store: Store, images: dict[str, Path], tmp_path: Path) -> None:
    store.load(str(images["app-oci"]))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    containers = Containers(store)
    c = containers.create_and_mount("example/app:v1", str(mnt))
    try:
        assert tree(mnt) == tree(images["app-rootfs"])
    finally:
        containers.remove(c.name, force=True)


def test_container_diff_and_read_only(store: Store, images: dict[str, Path], tmp_path: Path) -> None:
    store.load(str(images["app-oci"]))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    containers = Containers(store)
    c = containers.create_and_mount("example/app:v1", str(mnt), name="work")
    try:
        (mnt / "etc/added").write_text("x")
        with open(mnt / "srv/app.txt", "a") as f:
            f.write("more")
        os.unlink(mnt / "bin/tool")
        (mnt / "var/cache").mkdir()  # a layer of the image removed it: made again, it is an addition
        (mnt / "var/cache/old.db").write_text("made again\n")
        assert containers.diff("work") == [
            ("C", "/bin"), ("D", "/bin/tool"), ("C", "/etc"), ("A", "/etc/added"), ("C", "/srv"), ("C", "/srv/app.txt"),
            ("C", "/var"), ("A", "/var/cache"), ("A", "/var/cache/old.db")]
        with pytest.raises(InUse, match="already a mount point"):
            containers.create_and_mount("example/app:v1", str(mnt), name="over")
        (tmp_path / "other").mkdir()
        with pytest.raises(AlreadyExists, match='container name "work": already in use'):
            containers.create_and_mount("example/app:v1", str(tmp_path / "other"), name="work")
        assert [x.name for x in containers.all()] == ["work"]
        with pytest.raises(InUse):
            containers.remove("work")
        with pytest.raises(InUse):
            store.rmi("example/app:v1")
        containers.umount("work")
        assert not c.mounted
        ro = tmp_path / "ro"
        ro.mkdir()
        r = containers.create_and_mount("example/app:v1", str(ro), read_only=True)
        with pytest.raises(OSError):
            (ro / "x").write_text("no")
        containers.remove(r.name, force=True)
    finally:
        containers.remove("work", force=True)
    store.rmi("example/app:v1")


def test_rmi_keeps_shared_layers_and_prunes_the_rest(store: Store, images: dict[str, Path]) -> None:
    [base] = store.load(str(images["base-docker"]))
    [app] = store.load(str(images["app-oci"]))
    store.tag("example/app:v1", "example/app:alias")
    assert store.rmi("example/app:alias") == [("Untagged", "example/app:alias")]
    events = store.rmi("example/app:v1")
    assert events[0] == ("Untagged", "example/app:v1") and events[-1] == ("Deleted", app.id)
    assert sorted(store.layers.diff_ids()) == sorted(store.image_layers(base.id))
    store.rmi(base.id[:12])
    assert store.layers.diff_ids() == [] and list(store.blobs.digests()) == []
    with pytest.raises(NotFound):
        store.resolve("example/base:v1")


def test_cli_rmi_of_all_images_and_error_lines(tmp_path: Path, images: dict[str, Path]) -> None:
    root = tmp_path / "cli"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "layerstore", "--root", str(root), *args], capture_output=True, text=True)

    assert cli("load", "-i", str(images["base-docker"])).stdout == "Loaded image: example/base:v1\n"
    assert cli("load", "-q", "-i", str(images["app-oci"])).stdout == "Loaded image: example/app:v1\n"
    assert cli("tag", "example/app:v1", "127.0.0.1:5000/app").returncode == 0
    ids = [line.split()[0] for line in cli("ps", "-q").stdout.splitlines()]
    assert ids == []
    with Store(root) as s:
        all_ids = sorted({i.removeprefix("sha256:")[:12] for i in (s.resolve("example/base:v1"), s.resolve("example/app:v1"))})
    result = cli("rmi", "-f", *all_ids)
    assert result.returncode == 0, result.stderr
    assert "Untagged: 127.0.0.1:5000/app:latest" in result.stdout
    missing = cli("rmi", "nothere:v1", "docker.io/library/nothere", "sha256:0123abcd")
    assert missing.returncode == 1, missing.stderr
    assert missing.stderr.splitlines() == [  # as Docker says it: the name normalised, with its tag
        "Error: No such image: nothere:v1", "Error: No such image: nothere:latest", "Error: No such image: sha256:0123abcd"]
    bad = cli("load", "-i", str(tmp_path / "absent.tar"))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


def hostile_archive(path: Path, manifest: object, extra: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in {"manifest.json": json.dumps(manifest).encode(), **(extra or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            import io

            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    "manifest, error",
    [
        ([{"Config": "../outside.json", "Layers": []}], UnsafeArchiveEntry),
        ([{"Config": "/etc/passwd", "Layers": []}], UnsafeArchiveEntry),
        ([{"Config": "c.json", "Layers": ["../../layer.tar"]}], UnsafeArchiveEntry),
        ({"not": "a list"}, CorruptArchive),
        ([{"Config": "missing.json", "Layers": []}], NotFound),
    ],
)
def test_hostile_archives_leave_nothing(store: Store, tmp_path: Path, manifest: object, error: type) -> None:
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": []}}).encode()
    archive = hostile_archive(tmp_path / "evil.tar", manifest, {"c.json": config})
    with pytest.raises(error):
        store.load(str(archive))
    assert store.meta.query("SELECT * FROM images") == []
    assert list(store.blobs.digests()) == [] and store.layers.diff_ids() == []


def test_corrupt_blob_is_refused_and_nothing_kept(store: Store, images: dict[str, Path], tmp_path: Path) -> None:
    layout = tmp_path / "corrupt"
    shutil.copytree(images["app-zstd"], layout)
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]).read_text())
    layer = layout / "blobs/sha256" / manifest["layers"][-1]["digest"].split(":")[1]
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(layer, 0o644)
    layer.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch):
        store.load(str(layout))
    assert store.meta.query("SELECT * FROM images") == []
    assert manifest["layers"][-1]["digest"] not in set(store.blobs.digests())
    assert os.listdir(store.blobs.ingest_dir) == [] and os.listdir(store.layers.staging) == []
    # what was verified before the bad layer stays for the next attempt: not a problem for a day
    verified = set(store.blobs.digests())
    assert verified, "the layers before the corrupt one were not kept"
    report = fsck.check(store, repair=True)
    assert report.exit_code == fsck.CLEAN and {f"blob {d}" for d in verified} <= set(report.kept), report.summary()
    assert set(store.blobs.digests()) == verified
    assert fsck.check(store, max_age=0).exit_code == fsck.LEFT
    [app] = store.load(str(images["app-zstd"]))
    assert fsck.check(store, max_age=0).exit_code == fsck.CLEAN and store.image_layers(app.id)


def test_kernel_overlayfs_shows_the_same_rootfs(store: Store, images: dict[str, Path], tmp_path: Path) -> None:
    """The layer dirs, with .wh. markers turned into the kernel's form, mounted by overlayfs."""
    [app] = store.load(str(images["app-oci"]))
    lowers: list[str] = []
    for i, diff_id in enumerate(store.image_layers(app.id)):  # bottom first
        copy = tmp_path / f"k{i}"
        subprocess.run(["cp", "-a", str(store.layers.path(diff_id)), str(copy)], check=True)
        for dirpath, dirnames, filenames in os.walk(copy):
            if "user.unionfs.implicit" in os.listxattr(dirpath):
                # the kernel knows no implicit dirs: give it the attributes from below
                rel = os.path.relpath(dirpath, copy)
                below = next(Path(low) / rel for low in lowers if (Path(low) / rel).is_dir())
                st = below.stat()
                os.chown(dirpath, st.st_uid, st.st_gid)
                os.chmod(dirpath, stat.S_IMODE(st.st_mode))
            for name in filenames:
                if name == ".wh..wh..opq":
                    os.unlink(os.path.join(dirpath, name))
                    os.setxattr(dirpath, "trusted.overlay.opaque", b"y")
                elif name.startswith(".wh."):
                    os.unlink(os.path.join(dirpath, name))
                    os.mknod(os.path.join(dirpath, name[4:]), stat.S_IFCHR, os.makedev(0, 0))
        lowers.insert(0, str(copy))
    mnt = tmp_path / "kmnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", "lowerdir=" + ":".join(lowers), str(mnt)], check=True)
    try:
        kernel = tree(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert kernel == tree(images["app-rootfs"])


@pytest.mark.parametrize("compress", [["gzip", "-c"], ["zstd", "-q", "-c"]])
def test_compressed_archives_and_stdin(tmp_path: Path, images: dict[str, Path], compress: list[str]) -> None:
    if not shutil.which(compress[0]):
        pytest.skip(f"{compress[0]} not installed")
    packed = tmp_path / "base.tar.z"
    with open(packed, "wb") as out:
        subprocess.run([*compress, str(images["base-docker"])], stdout=out, check=True)
    root = tmp_path / "store"
    with open(packed, "rb") as stdin:
        result = subprocess.run([sys.executable, "-m", "layerstore", "--root", str(root), "load"], stdin=stdin, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Loaded image: example/base:v1\n"
    with Store(root) as s:
        assert len(s.layers.diff_ids()) == 2


def test_prune_removes_leftovers_but_keeps_partial_downloads_and_live_work(store: Store, images: dict[str, Path]) -> None:
    [base] = store.load(str(images["base-docker"]))
    stale_ingest = store.blobs.ingest_dir / "dead.part"
    partial = store.blobs.ingest_dir / ("a" * 64 + ".partial")
    stale_stage = store.layers.staging / "interrupted"
    for path in (stale_ingest, partial):
        path.write_bytes(b"x")
    stale_stage.mkdir()
    (stale_stage / "file").write_text("half")
    with store.lease():  # a load in progress elsewhere: nothing may go
        assert store.prune_unreferenced() == {"layers": 0, "blobs": 0, "leftovers": 0}
        assert stale_ingest.exists() and stale_stage.exists()
    assert store.prune_unreferenced()["leftovers"] == 2
    assert not stale_ingest.exists() and not stale_stage.exists() and partial.exists()
    assert sorted(store.layers.diff_ids()) == sorted(store.image_layers(base.id))


def test_rmi_f_of_images_q(tmp_path: Path, images: dict[str, Path]) -> None:
    root = tmp_path / "store"
    cli = f"{sys.executable} -m layerstore --root {root}"
    for archive in ("base-docker", "app-oci"):
        subprocess.run([*cli.split(), "load", "-q", "-i", str(images[archive])], check=True, capture_output=True)
    subprocess.run([*cli.split(), "tag", "example/app:v1", "other/app:v2"], check=True)
    result = subprocess.run(["sh", "-c", f"{cli} rmi -f $({cli} images -q)"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert subprocess.run([*cli.split(), "images", "-q"], capture_output=True, text=True).stdout == ""
    with Store(root) as s:
        assert s.layers.diff_ids() == [] and list(s.blobs.digests()) == []


def test_a_store_that_cannot_be_written_is_a_one_line_error_and_is_left_alone(tmp_path: Path) -> None:
    """Every command writes to the store; on a read-only mount, or for a user who may not
    write there, it says so rather than SQLite's "unable to open database file"."""
    root = tmp_path / "store"
    Store(root).close()
    before = sorted(os.walk(root))
    subprocess.run(["mount", "--bind", str(root), str(root)], check=True, timeout=30)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(root)], check=True, timeout=30)
        for args in (["images"], ["inspect", "example/base:v1"], ["load", "-i", str(tmp_path / "any.tar")]):
            result = subprocess.run([sys.executable, "-m", "layerstore", "--root", str(root), *args],
                                    capture_output=True, text=True, timeout=60)
            assert (result.returncode, result.stdout) == (1, ""), result
            assert result.stderr.startswith(f"Error: {args[0]}") and result.stderr.count("\n") == 1, result.stderr
            assert result.stderr.endswith(f": {root}: the store is on a read-only filesystem\n"), result.stderr
    finally:
        subprocess.run(["umount", str(root)], check=True, timeout=30)
    assert sorted(os.walk(root)) == before
    root.chmod(0o755)
    assert errno_as(65534, lambda: Store(Path("store")), cwd=tmp_path) == errno.EACCES
    assert sorted(os.walk(root)) == before


def test_a_bare_oci_ref_name_is_read_as_a_repository_with_the_latest_tag(tmp_path: Path, images: dict[str, Path]) -> None:
    """skopeo's oci:DIR:zstd writes only org.opencontainers.image.ref.name=zstd, as containerd reads it."""
    loaded = subprocess.run([sys.executable, "-m", "layerstore", "--root", str(tmp_path / "store"),
                             "load", "-q", "-i", str(images["app-zstd"])], capture_output=True, text=True, timeout=120)
    assert (loaded.returncode, loaded.stdout, loaded.stderr) == (0, "Loaded image: zstd:latest\n", "")


def test_the_readme_s_four_digests_of_the_example_image(tmp_path: Path) -> None:
    """The worked example in the README ("Image ID, manifest digest, blob digest and diff_id"),
    made again with skopeo as it says, so that its numbers cannot drift from what the store does."""
    example = Path(__file__).resolve().parents[2] / "layerstore" / "demo" / "example.tar"
    run("skopeo", "copy", "-q", f"docker-archive:{example}", f"oci:{tmp_path / 'ex'}:latest")
    index = json.loads((tmp_path / "ex" / "index.json").read_text())
    assert index["manifests"][0]["digest"].startswith("sha256:7628d06cb2e8")
    store = Store(tmp_path / "store")
    try:
        [docker] = store.load(str(example))
        [oci] = store.load(str(tmp_path / "ex"))
        assert docker.id.startswith("sha256:71614e5d8ab6") and oci.id.startswith("sha256:1f952e4b3421")
        layers = "SELECT blob, diff_id FROM image_layers WHERE image_id = ? ORDER BY position"
        row = store.meta.query(layers, oci.id)[0]
        assert row["blob"].startswith("sha256:446723f26440") and store.blobs.path(row["blob"]).stat().st_size == 16_587
        assert row["diff_id"].startswith("sha256:44aa17f853e7")
        assert store.image_layers(docker.id) == store.image_layers(oci.id)  # the layers kept once for both: by diff_id
        assert all(plain["blob"] == plain["diff_id"] for plain in store.meta.query(layers, docker.id))  # uncompressed
    finally:
        store.close()


def locked_layer(root: Path) -> None:
    """Entries whose modes keep even their owner out, as distributions ship them (Fedora's
    /etc/shadow is mode 0, its / is 0555) and as umoci writes its whiteouts (of var/cache here)."""
    os.chmod(root, 0o555)
    shutil.rmtree(root / "var/cache")
    write(root, "etc/shadow", "root:*:19000::::::\n", 0)
    write(root, "locked/inside", "inside\n")
    write(root, "read-only/file", "ro\n")
    os.chmod(root / "locked", 0)
    os.chmod(root / "read-only", 0o555)


def test_a_user_s_store_takes_layers_whose_modes_keep_the_owner_out(tmp_path: Path) -> None:
    """A user unpacks as itself, without root's CAP_DAC_OVERRIDE or CAP_FOWNER: files and
    directories of mode 0, whiteouts, read-only directories and a read-only layer root
    load, check clean and are removed, and keep their modes on disk."""
    layout = build_layout(tmp_path / "layout", "locked", [base_layer, locked_layer])
    top_dir = tempfile.TemporaryDirectory()  # the user cannot reach into the test's own temp dirs
    mine = Path(top_dir.name, "user")
    mine.mkdir()
    archive = export(layout, "locked", "docker-archive", mine / "locked.tar", "example/locked:v1")
    for path in (mine, archive):
        os.chown(path, NOBODY, NOBODY)
    os.chmod(top_dir.name, 0o755)

    def as_user(root: Path) -> None:
        found: dict[str, object] = {}
        try:
            with Store(root) as store:
                [image] = store.load(str(archive))
                top = store.layers.path(store.image_layers(image.id)[-1])
                found["modes"] = {rel: stat.S_IMODE(os.lstat(top / rel).st_mode)
                                  for rel in (".", "etc/shadow", "locked", "read-only", "var/.wh.cache")}
                os.chmod(top / "locked", 0o700)
                found["inside"] = (top / "locked/inside").read_text()
                os.chmod(top / "locked", 0)
                found["fsck"] = fsck.check(store).summary()
                store.rmi("example/locked:v1")
                found["left"] = [store.layers.diff_ids(), list(store.blobs.digests())]
        except Exception as exc:
            found["error"] = repr(exc)
        root.with_suffix(".json").write_text(json.dumps(found))

    with top_dir:
        as_user(tmp_path / "store")  # as root first: the modules it needs loaded, where the user may not read them
        assert errno_as(NOBODY, lambda: as_user(mine / "store"), cwd=mine) is None
        found = json.loads((mine / "store.json").read_text())
    assert "error" not in found, found
    assert found["modes"] == {".": 0o555, "etc/shadow": 0, "locked": 0, "read-only": 0o555, "var/.wh.cache": 0}
    assert found["inside"] == "inside\n"
    assert found["fsck"].endswith(": clean"), found["fsck"]
    assert found["left"] == [[], []]
