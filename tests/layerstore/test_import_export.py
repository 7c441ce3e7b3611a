"""import and export: a tarball made by GNU tar becomes an image of one layer, whose mount shows
what was tarred; a container's filesystem becomes a tarball that GNU tar unpacks to what it showed.

Tarballs come from GNU tar in each compression Docker's import reads; the
config the ``-c`` changes make is compared with what Docker's builder makes of
the same lines (moby's ``BuildFromConfig``); a hostile tarball is refused with
nothing kept, and ``commit -c`` applies the same changes over a parent's config.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import json
import os
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from trees import link_groups, tree

from layerstore import cli
from layerstore.containers import Containers
from layerstore.store import Store

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (FUSE mounts, files owned by others)")


def make_rootfs(root: Path) -> Path:
    for rel, text, mode in (("etc/hostname", "box\n", 0o644), ("bin/run.sh", "#!/bin/sh\necho run\n", 0o755),
                            ("srv/data/a.txt", "a\n", 0o600), ("srv/data/deep/b.txt", "b" * 70000, 0o644)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
        os.chmod(root / rel, mode)
    os.symlink("run.sh", root / "bin/run")
    os.link(root / "srv/data/a.txt", root / "srv/data/a-link")
    os.chown(root / "srv/data", 1000, 1000)
    os.chmod(root / "srv/data/deep", 0o750)
    (root / "empty").mkdir()
    return root


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rootfs(tmp_path_factory.mktemp("import") / "rootfs")


def main(store: Store, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(["--root", str(store.root), *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "store") as s:
        yield s


def tar_of(rootfs: Path, path: Path, *flags: str) -> Path:
    """GNU tar's archive of rootfs."""
    subprocess.run(["tar", "-C", str(rootfs), *flags, "-cf", str(path), "."], check=True)
    return path


@contextlib.contextmanager
def container(store: Store, image: str, mnt: Path, name: str | None = None,
              read_only: bool = False) -> Iterator[Containers]:
    """image mounted at mnt as a container, removed afterwards."""
    mnt.mkdir()
    containers = Containers(store)
    c = containers.create_and_mount(image, str(mnt), name=name, read_only=read_only)
    try:
        yield containers
    finally:
        containers.remove(c.name, force=True)


@pytest.mark.parametrize("flag", ["", "-z", "-j", "-J", "--zstd"])
def test_a_tarball_in_any_compression_becomes_an_image_whose_mount_shows_it(
        store: Store, rootfs: Path, tmp_path: Path, flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tar_of(rootfs, tmp_path / "rootfs.tar", "--numeric-owner")
    tarball = tar_of(rootfs, tmp_path / "rootfs.tar.any", "--numeric-owner", *([flag] if flag else []))
    rc, out, err = main(store, "import", str(tarball), "imported/rootfs:v1", capsys=capsys)
    assert (rc, err) == (0, "")
    image_id = out.strip()
    assert image_id == store.resolve("imported/rootfs:v1") and image_id.startswith("sha256:")

    config = store.config(image_id)
    diff_id = "sha256:" + hashlib.sha256(plain.read_bytes()).hexdigest()  # GNU tar writes the same bytes each time
    assert config["rootfs"] == {"type": "layers", "diff_ids": [diff_id]}
    assert config["history"] == [{"created": config["created"], "comment": "Imported from -"}]
    assert (config["os"], config["architecture"], config["config"]) == ("linux", "amd64", {})

    mnt = tmp_path / "mnt"
    with container(store, image_id, mnt, read_only=True):
        assert tree(mnt) == tree(rootfs)
        assert link_groups(mnt) == [("srv/data/a-link", "srv/data/a.txt")]


def test_a_tarball_in_two_compressed_streams_is_read_whole(store: Store, rootfs: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """bzip2 and xz files joined one after the other (pbzip2 and xz -T write them so) are one tarball."""
    plain = tar_of(rootfs, tmp_path / "rootfs.tar")
    data = plain.read_bytes()
    halves = tmp_path / "first", tmp_path / "second"
    halves[0].write_bytes(data[:len(data) // 2])
    halves[1].write_bytes(data[len(data) // 2:])
    for tool in ("bzip2", "xz"):
        joined = tmp_path / f"joined.{tool}"
        joined.write_bytes(b"".join(subprocess.run([tool, "-c", str(half)], check=True, capture_output=True).stdout
                                    for half in halves))
        rc, out, err = main(store, "import", str(joined), capsys=capsys)
        assert (rc, err) == (0, ""), tool
        assert store.config(out.strip())["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(data).hexdigest()]


CHANGES = [
    "CMD echo hello", 'ENV A=1 B="two words" C=$A', "ENV PATH /usr/local/bin:$PATH", "EXPOSE 80 53/udp 8000-8001",
    'LABEL org.example.name="the box" version=1', "WORKDIR /srv", "WORKDIR data", "USER app",
    'VOLUME ["/data", "/logs"]',
    "STOPSIGNAL SIGINT", "ONBUILD RUN make", 'ENTRYPOINT ["/bin/run.sh"]', "env D=${A:-unset}${NONE:-default}",
]
# What Docker's builder makes of CHANGES over an empty config: the variables of one ENV line
# expand from the environment before it, an ENTRYPOINT keeps a CMD given in the same changes.
EXPECTED = {
    "Cmd": ["/bin/sh", "-c", "echo hello"],
    "Env": ["A=1", "B=two words", "C=", "PATH=/usr/local/bin:", "D=1default"],
    "ExposedPorts": {"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}},
    "Labels": {"org.example.name": "the box", "version": "1"},
    "WorkingDir": "/srv/data", "User": "app", "Volumes": {"/data": {}, "/logs": {}}, "StopSignal": "SIGINT",
    "OnBuild": ["RUN make"], "Entrypoint": ["/bin/run.sh"],
}


def test_changes_message_and_platform_make_the_config_docker_makes(
        store: Store, rootfs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tarball = tar_of(rootfs, tmp_path / "rootfs.tgz", "-z")
    args = [arg for change in CHANGES for arg in ("-c", change)]
    rc, out, err = main(store, "image", "import", *args, "-m", "from a tarball", "--platform", "linux/arm64/v8",
                        str(tarball), "box:1", capsys=capsys)
    assert (rc, err) == (0, "")
    config = store.config(out.strip())
    assert config["config"] == EXPECTED
    assert (config["os"], config["architecture"], config.get("variant")) == ("linux", "arm64", None)
    assert config["history"][0]["comment"] == config["comment"] == "from a tarball"

    rc, out, err = main(store, "inspect", "-f", "{{json .Config.ExposedPorts}} {{.Comment}} {{.Architecture}}", "box:1",
                        capsys=capsys)
    assert (rc, out) == (0, '{"53/udp":{},"80/tcp":{},"8000/tcp":{},"8001/tcp":{}} from a tarball arm64\n')


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_stdin_and_a_url_are_sources_too(store: Store, rootfs: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "served").mkdir()
    tarball = tar_of(rootfs, tmp_path / "served/rootfs.tgz", "-z")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tarball.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/rootfs.tgz"
        rc, out, err = main(store, "import", url, "from/url", capsys=capsys)
        assert (rc, err) == (0, "")
        assert store.config(out.strip())["comment"] == f"Imported from {url}"
        rc, out, err = main(store, "import", url.replace("rootfs", "missing"), capsys=capsys)
        assert (rc, out) == (1, "") and err.startswith(f"Error: tarball {url.replace('rootfs', 'missing')}: HTTP 404")
    finally:
        server.shutdown()
        server.server_close()
    with open(tarball, "rb") as f:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(f))
        rc, out, err = main(store, "import", "-", "from/stdin", capsys=capsys)
    assert (rc, err) == (0, "")
    assert store.image_layers(out.strip()) == store.image_layers(store.resolve("from/url"))  # the same layer, kept once


def hostile(path: Path, name: str) -> Path:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    return path


def test_a_bad_tarball_or_change_is_one_line_and_keeps_nothing(
        store: Store, rootfs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tar_of(rootfs, tmp_path / "good.tar")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a tar at all\n" * 100)
    truncated = tmp_path / "truncated.tar.gz"
    subprocess.run(["gzip", "-c", str(good)], check=True, stdout=open(truncated, "wb"))
    truncated.write_bytes(truncated.read_bytes()[:-200])
    escape = hostile(tmp_path / "escape.tar", "../outside")
    cut = {tool: tmp_path / f"cut.tar.{tool}" for tool in ("xz", "bzip2")}  # read by the import, not the unpacker
    for tool, path in cut.items():
        whole = subprocess.run([tool, "-c", str(good)], check=True, capture_output=True).stdout
        path.write_bytes(whole[: len(whole) // 2])
    cases = [
        *(((str(path),), f'tarball "{path}": the compressed stream ends early') for path in cut.values()),
        ((str(escape),), f'tarball "{escape}": escapes the layer root'),
        ((str(garbage),), f'tarball "{garbage}": '),
        ((str(truncated),), f'tarball "{truncated}": '),
        ((str(tmp_path / "nothing.tar"),), f'tarball "{tmp_path / "nothing.tar"}": no such file'),
        (("-c", "RUN make", str(good)), "change 'RUN make': run is not a valid change command"),
        (("-c", "EXPOSE eighty", str(good)), "change 'EXPOSE eighty': invalid port 'eighty'"),
        ((str(good), "Bad/Name"), ""),
    ]
    for args, problem in cases:
        rc, out, err = main(store, "import", *args, capsys=capsys)
        assert (rc, out, err.count("\n")) == (1, "", 1), (args, err)
        assert err.startswith(f"Error: {problem}"), (args, err)
    assert not (store.root / "blobs/sha256").exists() or not os.listdir(store.root / "blobs/sha256")
    assert main(store, "images", "-q", capsys=capsys) == (0, "", "")
    assert main(store, "fsck", "-q", capsys=capsys)[0] == 0


def test_commit_applies_changes_over_the_parent_s_config(store: Store, rootfs: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    tarball = tar_of(rootfs, tmp_path / "rootfs.tar")
    assert main(store, "import", "-c", "CMD sleep 1", "-c", "ENV PATH=/bin", str(tarball), "base", capsys=capsys)[0] == 0
    mnt = tmp_path / "mnt"
    with container(store, "base", mnt, "work") as containers:
        (mnt / "new.txt").write_text("new\n")
        containers.umount("work")
        rc, out, err = main(store, "commit", "-c", 'ENTRYPOINT ["/bin/run.sh"]', "-c", "ENV PATH=/usr/bin:$PATH",
                            "work", "derived", capsys=capsys)
        assert (rc, err) == (0, "")
        assert main(store, "commit", "-c", "COPY . /", "work", capsys=capsys)[:2] == (1, "")
    config = store.config(out.strip())
    # the parent's CMD goes with a new ENTRYPOINT, as in a Dockerfile; ENV sees the parent's PATH
    assert config["config"] == {"Env": ["PATH=/usr/bin:/bin"], "Entrypoint": ["/bin/run.sh"]}
    assert json.loads(json.dumps(store.config(store.resolve("base"))["config"])) == {
        "Cmd": ["/bin/sh", "-c", "sleep 1"], "Env": ["PATH=/bin"]}


def test_export_writes_what_the_container_shows_and_import_takes_it_back(
        store: Store, rootfs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tarball = tar_of(rootfs, tmp_path / "rootfs.tar")
    assert main(store, "import", str(tarball), "base", capsys=capsys)[0] == 0
    mnt = tmp_path / "mnt"
    with container(store, "base", mnt, "box") as containers:
        (mnt / "new.txt").write_text("new\n")
        os.link(mnt / "new.txt", mnt / "new-link")
        (mnt / "etc/hostname").unlink()
        os.rename(mnt / "srv/data", mnt / "srv/moved")  # a lower directory renamed: a redirect in the upper
        with open(mnt / "bin/run.sh", "a") as f:
            f.write("echo more\n")
        expected, links = tree(mnt), link_groups(mnt)
        mounted = tmp_path / "mounted.tar"
        assert main(store, "export", "-o", str(mounted), "box", capsys=capsys) == (0, "", "")
        containers.umount("box")
        rc, out, err = main(store, "export", "--output", str(tmp_path / "after.tar"), "box", capsys=capsys)
        assert (rc, err) == (0, "")
        assert main(store, "export", "nosuch", "-o", str(tmp_path / "x.tar"), capsys=capsys) == (
            1, "", "Error: No such container: nosuch\n")
        assert not (tmp_path / "x.tar").exists()
    assert (tmp_path / "after.tar").read_bytes() == mounted.read_bytes()  # the same, mounted or not
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-C", str(unpacked), "--numeric-owner", "-xpf", str(mounted)], check=True)
    assert tree(unpacked) == expected
    assert link_groups(unpacked) == links == [("new-link", "new.txt"), ("srv/moved/a-link", "srv/moved/a.txt")]
    names = subprocess.run(["tar", "-tf", str(mounted)], check=True, capture_output=True, text=True).stdout.split()
    assert not any(".wh." in n or n.startswith(("/", "./", "../")) for n in names)

    rc, out, err = main(store, "import", str(mounted), "again", capsys=capsys)
    assert (rc, err) == (0, "")
    with container(store, "again", tmp_path / "again", read_only=True):
        assert tree(tmp_path / "again") == expected
