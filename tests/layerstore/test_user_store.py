"""A user's store end to end, as user ``nobody``, against a real registry: pull, images,
inspect, history, tag, save and load, push, import, rmi, prune, system df, fsck and search.

A user, unlike root, has no CAP_DAC_OVERRIDE or CAP_FOWNER: it unpacks layers as
itself, so what a layer's modes say (a file or directory of mode 0, a read-only file
with an xattr) holds for it even in its own store. Every command runs as root first,
into a store of root's own: its modules loaded while root can read them (the
interpreter may live where the user cannot), and what it prints the yardstick for
the user's. The user's run is a forked child whose results come back in a JSON file.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dockerregistry import DockerRegistry
from imagebuild import build_layout, run, write
from test_store import base_layer, locked_layer
from users import NOBODY, errno_as

from layerstore.cli import main

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("umoci", "skopeo", "docker-registry")),
    reason="runs the command line as another user; needs umoci, skopeo and docker-registry")

REPO = "users/app"
CREATED = "2024-01-02T03:04:05Z"  # a fixed date: the CREATED columns read the same in both runs
Steps = dict[str, list[Any]]  # a step's name -> [exit code, stdout, stderr]
IMPLICIT = {"user.unionfs.implicit": b"1"}  # a directory no entry of its layer described


def kept_layer(root: Path) -> None:
    write(root, "vault/sub/key", "key\n", 0o600)
    write(root, "notes/ro", "read-only\n", 0o444)


def sealed_layer(root: Path) -> None:
    """Entries that only their modes make hard for a user: umoci writes vault (now mode 0)
    and vault/sub/key, but no entry for the unchanged vault/sub, which the store marks as
    implicit; and a read-only file that gained an xattr."""
    (root / "vault/sub/key").write_text("new key\n")
    os.chmod(root / "vault", 0)
    os.setxattr(root / "notes/ro", "user.note", b"kept")


@dataclass(frozen=True)
class Served:
    host: str
    digests: dict[str, str]  # tag -> manifest digest, as the registry answers it


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A registry with ``users/app``: v1 one plain layer; v2 over it files and directories
    of mode 0, a whiteout of mode 0 (as umoci writes them), an implicit directory below one
    of mode 0 and a read-only file with an xattr."""
    work = tmp_path_factory.mktemp("user-store")
    layout = build_layout(work / "layout", "v1", [base_layer])
    build_layout(layout, "v2", [locked_layer, kept_layer, sealed_layer], base="v1")
    for tag in ("v1", "v2"):
        run("umoci", "config", "--no-history", "--image", f"{layout}:{tag}", "--created", CREATED)
    registry = DockerRegistry.start(work / "registry", work / "storage")
    try:
        digests = {}
        for tag in ("v1", "v2"):
            target = f"docker://{registry.host}/{REPO}:{tag}"
            run("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:{tag}", target)
            digests[tag] = run("skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}", target).strip()
        yield Served(registry.host, digests)
    finally:
        registry.stop()


def cli(root: Path, *args: str) -> list[Any]:
    """The command line in this process: [exit code, stdout, stderr]."""
    out, err = io.TextIOWrapper(io.BytesIO(), write_through=True), io.StringIO()  # save and load use stdout's bytes
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["--root", str(root), *args])
    return [rc, out.buffer.getvalue().decode(), err.getvalue()]


def tarball(path: Path) -> Path:
    """A tarball for import: a file and a directory of mode 0 among readable ones."""
    with tarfile.open(path, "w") as tar:
        for name, kind, mode, data in (("etc", tarfile.DIRTYPE, 0o755, b""),
                                       ("etc/shadow", tarfile.REGTYPE, 0, b"root:*:1::::::\n"),
                                       ("vault", tarfile.DIRTYPE, 0, b""), ("vault/key", tarfile.REGTYPE, 0o600, b"key\n"),
                                       ("hello", tarfile.REGTYPE, 0o644, b"hello\n")):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.size, info.mtime = kind, mode, len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return path


def layers_on_disk(store: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry of every layer directory, read as root, owners left out (they are whoever
    unpacked it): kind, mode, size, mtime, content hash or link target, xattrs."""
    found: dict[str, tuple[Any, ...]] = {}
    for layer in (store / "layers/sha256").glob("*"):
        for dirpath, dirnames, filenames in os.walk(layer):
            for path in [Path(dirpath)] + [Path(dirpath, name) for name in dirnames + filenames]:
                st = path.lstat()
                extra = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else \
                    os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
                xattrs = {} if path.is_symlink() else {key: os.getxattr(path, key) for key in os.listxattr(path)}
                made = path == layer or xattrs == IMPLICIT  # made by the unpack, not by an entry: its time is now
                found[str(path.relative_to(store))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                                       st.st_size if extra else 0, None if made else st.st_mtime_ns,
                                                       extra, xattrs)
    return found


def session(home: Path, served: Served, who: str, steps: Steps) -> None:
    """Every command of a store's life, in order, each step's result kept (a failed step does
    not stop the ones after it): the same for root and for the user."""
    store = home / "store"
    name = f"{served.host}/{REPO}"

    def step(key: str, *args: str, root: Path = store) -> None:
        steps[key] = cli(root, *args)

    step("pull", "pull", "-q", f"{name}:v1")
    step("pull -a", "pull", "-a", name)
    step("pull @digest", "pull", f"{name}@{served.digests['v2']}")
    step("images", "images", "--digests")
    step("images --format", "images", "--format", "{{.Repository}}:{{.Tag}} {{.Digest}} {{.ID}} {{.Size}}")
    step("inspect", "inspect", f"{name}:v2")
    step("history", "history", "--no-trunc", "--format", "{{.ID}}|{{.CreatedBy}}|{{.Size}}", f"{name}:v2")
    step("tag", "tag", f"{name}:v2", "mine/sealed:v1")
    step("save", "save", "-o", str(home / "sealed.tar"), "mine/sealed:v1")
    step("save oci", "save", "--format", "oci-archive", "-o", str(home / "sealed-oci.tar"), "mine/sealed:v1")
    step("rmi", "rmi", "mine/sealed:v1", f"{name}:v2")
    step("load", "load", "-i", str(home / "sealed.tar"))
    step("load id", "inspect", "-f", "{{.Id}}", "mine/sealed:v1")
    step("rmi loaded", "rmi", "mine/sealed:v1")
    step("load oci", "load", "-i", str(home / "sealed-oci.tar"))
    step("load oci id", "inspect", "-f", "{{.Id}}", "mine/sealed:v1")
    pushed = f"{served.host}/pushed/{who}:v1"  # a repository new to the registry
    step("tag to push", "tag", "mine/sealed:v1", pushed)
    step("push", "push", "-q", pushed)
    step("pull pushed", "pull", "-q", pushed, root=home / "fresh")
    step("pushed", "images", "--digests", "--format", "{{.Digest}} {{.ID}}", root=home / "fresh")
    step("import", "import", str(tarball(home / "import.tar")), "mine/imported:v1")
    step("system df", "system", "df", "--format", "{{.Type}} {{.TotalCount}} {{.Active}} {{.Size}}")
    step("fsck", "fsck")
    diff_ids = [layer for image in json.loads(steps["inspect"][1] or "[]") for layer in image["RootFS"]["Layers"]]
    if len(diff_ids) == 4:  # the damage: a file of mode 0 changed behind the store's back
        shadow = store / "layers" / diff_ids[1].replace(":", "/") / "etc/shadow"
        os.chmod(shadow, 0o600)
        shadow.write_text("root:$6$broken:1::::::\n")
        os.chmod(shadow, 0)
    step("fsck damaged", "fsck")
    step("fsck --repair", "fsck", "--repair")
    step("fsck repaired", "fsck")
    step("search", "search", "--format", "{{.Name}}", f"{served.host}/users")
    step("rmi imported", "rmi", "mine/imported:v1")
    step("prune", "image", "prune", "-a", "-f")
    step("images after", "images", "-a", "-q")
    step("system df after", "system", "df", "--format", "{{.Type}} {{.TotalCount}} {{.Size}}")
    step("fsck after", "fsck")
    steps["layers after"] = [0, sorted(p.name for p in (store / "layers/sha256").glob("*")), ""]


def run_session(home: Path, served: Served, who: str) -> None:
    """session, its results (home named HOME, the pushed repository WHO) written to
    home/steps.json whatever happened: a forked child's way back."""
    steps: Steps = {}
    try:
        session(home, served, who, steps)
    except Exception:
        steps["error"] = [1, "", traceback.format_exc()]

    def same(text: Any) -> Any:
        return text.replace(str(home), "HOME").replace(f"pushed/{who}", "pushed/WHO") if isinstance(text, str) else text

    (home / "steps.json").write_text(json.dumps({key: [rc, same(out), same(err)] for key, (rc, out, err) in steps.items()}))


def test_a_user_s_store_does_what_root_s_does(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command gives the user what it gives root: the same layers on disk, image IDs,
    digests, listings and archives to the byte; fsck finds the store clean, and finds and
    repairs a changed file of mode 0; at the end nothing is left."""
    monkeypatch.delenv("LAYERSTORE_ROOT", raising=False)
    monkeypatch.setenv("TZ", "UTC")
    with tempfile.TemporaryDirectory() as top:  # the user cannot reach into the test's own temp dirs
        os.chmod(top, 0o755)
        homes = {who: Path(top, who) for who in ("root", "user")}
        for home in homes.values():
            home.mkdir()
        os.chown(homes["user"], NOBODY, NOBODY)
        for who, home in homes.items():
            monkeypatch.setenv("HOME", str(home))
            monkeypatch.setenv("DOCKER_CONFIG", str(home / ".docker"))
            if who == "root":
                run_session(home, served, who)
            else:
                assert errno_as(NOBODY, lambda: run_session(home, served, who), cwd=home) is None
        root, user = (json.loads((home / "steps.json").read_text()) for home in homes.values())
        archives = {who: [hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
                          for path in (home / "sealed.tar", home / "sealed-oci.tar")] for who, home in homes.items()}
        owners = {p.lstat().st_uid for p in homes["user"].rglob("*")}
        layers = {who: layers_on_disk(home / "fresh") for who, home in homes.items()}  # as the pushed image came back
    assert "error" not in root and "error" not in user, (root.get("error"), user.get("error"))

    # root's run is what a store does: each command worked
    codes = {key: rc for key, (rc, _, _) in root.items()}
    assert codes == {**dict.fromkeys(root, 0), "fsck damaged": 4, "fsck --repair": 1}, root
    name, v1, v2 = f"{served.host}/{REPO}", served.digests["v1"], served.digests["v2"]
    [image] = json.loads(root["inspect"][1])
    assert image["RepoDigests"] == [f"{name}@{v2}"] and len(image["RootFS"]["Layers"]) == 4
    v2_id = image["Id"]
    assert [line.split()[:2] for line in root["images --format"][1].splitlines()] == [[f"{name}:v2", v2], [f"{name}:v1", v1]]
    assert root["load id"][1] == root["load oci id"][1] == f"{v2_id}\n"  # each archive loads as the image saved
    assert root["pushed"][1] == f"{v2} {v2_id.split(':')[1][:12]}\n"  # pushed and pulled back unchanged
    assert root["fsck"][1].endswith(": clean\n") and root["fsck repaired"][1].endswith(": clean\n")
    shadow = f"layer {image['RootFS']['Layers'][1]}: etc/shadow: "
    assert root["fsck damaged"][1].startswith(shadow), root["fsck damaged"][1]
    assert root["fsck --repair"][1].startswith(shadow) and "(unpacked again from its blob)" in root["fsck --repair"][1]
    assert root["search"][1] == f"{name}\n"
    assert root["images after"][1] == "" and root["layers after"][1] == [] and root["fsck after"][1].endswith(": clean\n")
    sealed = f"layers/sha256/{image['RootFS']['Layers'][3].split(':')[1]}"
    assert len({path.split("/")[2] for path in layers["root"]}) == 4
    assert {path.removeprefix(sealed): (mode, xattrs) for path, (_, mode, _, _, _, xattrs) in layers["root"].items()
            if path.startswith(sealed)} == {
        "": (0o755, {}), "/notes": (0o755, IMPLICIT), "/notes/ro": (0o444, {"user.note": b"kept"}), "/vault": (0, {}),
        "/vault/sub": (0o755, IMPLICIT), "/vault/sub/key": (0o600, {})}

    # the user's run: each command worked as it did for root
    failed = [(key, user[key][0], user[key][2]) for key in root if user[key][0] != root[key][0]]  # in the order run
    assert not failed, failed

    # and said the same, to the byte, but for the image that import dates now (and the order
    # in which a pull's layers, unpacked in parallel, report their progress)
    def settled(key: str, result: list[Any]) -> list[Any]:
        return [result[0], sorted(result[1].splitlines()), result[2]] if key.startswith("pull") else result

    differ = {key: (user[key], root[key]) for key in root
              if key not in ("import", "rmi imported") and settled(key, user[key]) != settled(key, root[key])}
    assert not differ, differ
    assert user["rmi imported"][1].startswith("Untagged: mine/imported:v1\n")
    assert archives["user"] == archives["root"]
    assert layers["user"] == layers["root"]
    assert owners == {NOBODY}
