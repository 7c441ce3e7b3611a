"""manifest create, annotate, inspect, push and rm against the real registry.

The images are the umoci-built ones of ``conftest.py``: ``app1`` (linux/amd64)
in its own repository, and ``arm`` (linux/arm64/v8), which the registry has
only inside the ``multi`` index, named by digest. A list gathers images of
other repositories, so every push also brings them over (blobs mounted,
manifest put by digest). What is pushed is read back from the registry and
pulled per platform into a fresh store. Where the Docker CLI is installed
(its manifest commands need no daemon), it does the same steps in a config
directory of its own and its files and output are the reference; each tool
also reads the lists the other wrote. Each test pushes to repositories of
its own under ``lists/``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import regkit
import requests
from regkit import PASSWORD, USER, Proxy, World, cli

from layerstore.registry.client import MANIFEST_ACCEPT

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def digest_of(world: World, tag: str) -> str:
    return str(regkit.descriptor(world.layout, tag)["digest"])


def config_of(world: World, tag: str) -> str:
    return str(regkit.read_json(world.layout, digest_of(world, tag))["config"]["digest"])


def images(world: World) -> tuple[str, str]:
    """app1 by tag, arm by digest (the registry has it only inside the multi index)."""
    host = world.open.host
    return f"{host}/app1:v1", f"{host}/multi@{digest_of(world, 'arm')}"


def files(config: Path) -> dict[str, dict[str, bytes]]:
    root = config / "manifests"
    return {d.name: {f.name: f.read_bytes() for f in sorted(d.iterdir())} for d in sorted(root.iterdir())}


def registry_document(world: World, repo: str, ref: str) -> requests.Response:
    return requests.get(f"http://{world.open.host}/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}, timeout=10)


def test_create_annotate_push_then_pull_each_platform(world: World, tmp_path: Path, docker_config: Path) -> None:
    host = world.open.host
    app1, arm = images(world)
    name = f"{host}/lists/made:v1"
    created = cli(tmp_path, "manifest", "create", name, arm, app1)
    assert (created.rc, created.out, created.err) == (0, f"Created manifest list {name}\n", "")
    kept = files(docker_config)
    assert list(kept) == [f"{host.replace(':', '-')}_lists_made-v1"]
    assert list(kept[f"{host.replace(':', '-')}_lists_made-v1"]) == [
        f"{host.replace(':', '-')}_app1-v1", f"{host.replace(':', '-')}_multi@{digest_of(world, 'arm').replace(':', '-')}",
    ]

    shown = cli(tmp_path, "manifest", "inspect", name)
    assert shown.rc == 0, shown.err
    doc = json.loads(shown.out)
    assert doc["mediaType"] == OCI_INDEX
    assert [(m["digest"], m["platform"]) for m in doc["manifests"]] == [
        (digest_of(world, "app1"), {"architecture": "amd64", "os": "linux"}),
        (digest_of(world, "arm"), {"architecture": "arm64", "os": "linux", "variant": "v8"}),
    ]
    assert shown.out.startswith('{\n   "schemaVersion": 2,\n   "mediaType"')

    annotated = cli(tmp_path, "manifest", "annotate", "--os-version", "1.2", "--os-features", "a,b", "--os-features", "a,c",
                    name, arm)
    assert (annotated.rc, annotated.out, annotated.err) == (0, "", "")
    one = json.loads(cli(tmp_path, "manifest", "inspect", "-v", name, arm).out)
    assert one["Ref"] == arm and one["Descriptor"]["platform"] == {
        "architecture": "arm64", "os": "linux", "os.version": "1.2", "os.features": ["a", "b", "c"], "variant": "v8"}
    assert one["OCIManifest"] == regkit.read_json(world.layout, digest_of(world, "arm"))

    shown = cli(tmp_path, "manifest", "inspect", name)
    pushed = cli(tmp_path, "manifest", "push", "--purge", name)
    assert pushed.rc == 0, pushed.err
    on_registry = registry_document(world, "lists/made", "v1")
    on_registry.raise_for_status()
    digest = "sha256:" + hashlib.sha256(on_registry.content).hexdigest()
    assert pushed.lines == [
        *(f"Pushed ref {host}/lists/made@{d} with digest: {d}" for d in (digest_of(world, "app1"), digest_of(world, "arm"))),
        digest,
    ]
    assert on_registry.headers["Content-Type"] == OCI_INDEX
    assert on_registry.text == shown.out.removesuffix("\n")  # what inspect showed is what went up, byte for byte
    assert files(docker_config) == {}  # --purge

    for platform, tag in (("linux/arm64", "arm"), ("linux/amd64", "app1")):
        store = tmp_path / f"pulled-{tag}"
        pulled = cli(store, "pull", "--platform", platform, name)
        assert pulled.rc == 0, pulled.err
        assert f"Digest: {digest}" in pulled.lines
        assert cli(store, "images", "-q", "--no-trunc").lines == [config_of(world, tag)]


def test_amend_keeps_an_annotated_image_and_adds_the_new_one(world: World, tmp_path: Path, docker_config: Path) -> None:
    host = world.open.host
    app1, arm = images(world)
    name = f"{host}/lists/amended:v1"
    assert cli(tmp_path, "manifest", "create", name, app1).rc == 0
    assert cli(tmp_path, "manifest", "annotate", "--arch", "arm", "--variant", "v7", name, app1).rc == 0
    again = cli(tmp_path, "manifest", "create", name, arm)
    assert (again.rc, again.err) == (1, f"Error: manifest list {name}: exists already; refusing to amend it without --amend\n")
    amended = cli(tmp_path, "manifest", "create", "--amend", name, app1, arm)
    assert amended.rc == 0, amended.err
    doc = json.loads(cli(tmp_path, "manifest", "inspect", name).out)
    assert [m["platform"] for m in doc["manifests"]] == [
        {"architecture": "arm", "os": "linux", "variant": "v7"},  # kept as annotated, not fetched again
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]


def test_mistakes_are_one_line_and_change_nothing(world: World, tmp_path: Path, docker_config: Path) -> None:
    host = world.open.host
    app1, arm = images(world)
    name = f"{host}/lists/mistakes:v1"

    def fails(*args: str) -> str:
        result = cli(tmp_path, "manifest", *args)
        assert result.rc == 1 and result.out == "" and result.err.count("\n") == 1, result
        return result.err.removeprefix("Error: ").removesuffix("\n")

    assert fails("create", name, app1, f"{host}/app1:nope") == f"manifest for {host}/app1:nope: not found: manifest unknown"
    assert not (docker_config / "manifests").exists() or files(docker_config) == {}  # all or nothing, unlike Docker
    assert fails("create", name, f"{host}/multi:latest") == (
        f"manifest for {host}/multi:latest: is a manifest list; name one of its images by digest")
    assert fails("create", f"{name.split(':v1')[0]}@{digest_of(world, 'app1')}", app1) == (
        f"manifest list {name.split(':v1')[0]}@{digest_of(world, 'app1')}: a manifest list is named by a tag, not a digest")
    assert fails("push", name) == f"manifest list {name}: no such local manifest list (manifest create makes one)"

    assert cli(tmp_path, "manifest", "create", name, app1, arm).rc == 0
    before = files(docker_config)
    assert fails("annotate", "--arch", "aarch64", name, arm) == f"manifest {arm}: unsupported os/arch combination: linux/aarch64"
    assert fails("annotate", "--os", "linux", name, f"{host}/app2:v1") == (
        f"manifest {host}/app2:v1: not in the local manifest list {name}")
    assert fails("annotate", "--os", "linux", f"{host}/lists/none:v1", arm) == (
        f"manifest list {host}/lists/none:v1: no such local manifest list (manifest create makes one)")
    assert fails("inspect", name, f"{host}/app2:v1") == f"manifest {host}/app2:v1: not in the local manifest list {name}"
    assert files(docker_config) == before

    # the same registry under another name: an index can only point into its own registry
    other = f"localhost:{world.open.port}/app1:v1"
    elsewhere = f"{host}/lists/elsewhere:v1"
    assert cli(tmp_path, "manifest", "create", elsewhere, other).rc == 0
    assert fails("push", elsewhere) == (f"manifest list {elsewhere}: cannot use source images from a different registry than"
                                        f" the target image: localhost:{world.open.port} != {host}")
    assert fails("inspect", elsewhere) == fails("push", elsewhere)
    assert registry_document(world, "lists/elsewhere", "v1").status_code == 404

    result = cli(tmp_path, "manifest", "rm", f"{host}/lists/none:v1", elsewhere)
    assert (result.rc, result.err) == (
        1, f"Error: manifest list {host}/lists/none:v1: no such local manifest list (manifest create makes one)\n")
    assert f"{host.replace(':', '-')}_lists_elsewhere-v1" not in files(docker_config)  # the other one went
    assert registry_document(world, "lists/mistakes", "v1").status_code == 404


def _rewrite(config: Path, change: dict[str, object]) -> Path:
    """Change the fields of the single image of the single local list (a list written by hand)."""
    (directory,) = (config / "manifests").iterdir()
    (path,) = directory.iterdir()
    doc = json.loads(path.read_bytes())
    doc.update(change)
    path.write_text(json.dumps(doc))
    return path


def test_a_list_that_cannot_go_up_is_refused_before_the_index(world: World, tmp_path: Path, docker_config: Path) -> None:
    host = world.open.host
    app1, _ = images(world)
    name = f"{host}/lists/refused:v1"
    assert cli(tmp_path, "manifest", "create", name, app1).rc == 0
    original = _rewrite(docker_config, {}).read_bytes()
    desc = json.loads(original)["Descriptor"]

    _rewrite(docker_config, {"Descriptor": {k: v for k, v in desc.items() if k != "platform"}})
    result = cli(tmp_path, "manifest", "push", name)
    assert (result.rc, result.err) == (1, f"Error: manifest {app1}: must have an OS and Architecture to be pushed to a registry"
                                          " (manifest annotate --os --arch sets them)\n")

    # a source repository without the blobs: the registry answers the mount with an upload
    _rewrite(docker_config, {"Descriptor": desc, "Ref": f"{host}/lists/ghost:v1"})
    result = cli(tmp_path, "manifest", "push", name)
    config = regkit.read_json(world.layout, digest_of(world, "app1"))["config"]["digest"]
    assert result.rc == 1 and result.err.startswith(f"Error: blob {config}: the registry did not mount it from lists/ghost"
                                                    " into lists/refused"), result.err
    assert registry_document(world, "lists/refused", "v1").status_code == 404

    _rewrite(docker_config, {"Raw": json.loads(original)["Raw"][:-8] + "AAAAAAA="})
    result = cli(tmp_path, "manifest", "inspect", name)
    assert result.rc == 1 and "its raw manifest is sha256:" in result.err and f"not {desc['digest']}" in result.err


DOCKER = shutil.which("docker")


def docker(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert DOCKER
    return subprocess.run([DOCKER, "manifest", *args], check=False, capture_output=True, text=True,
                          env={**os.environ, "DOCKER_CONFIG": str(config)})


@pytest.mark.skipif(DOCKER is None, reason="the Docker CLI is the reference")
@pytest.mark.parametrize("kind", ["oci", "docker"])
def test_the_docker_cli_writes_and_reads_the_same_lists(world: World, tmp_path: Path, docker_config: Path, kind: str) -> None:
    """OCI images make an OCI index; a Docker schema 2 image first (``raw/app``) makes a Docker manifest list."""
    host = world.open.host
    first, second = images(world) if kind == "oci" else (f"{host}/raw/app:v1", f"{host}/tags/app:v2")
    theirs = tmp_path / "docker-cli-config"
    name = f"{host}/lists/docker-{kind}:v1"
    steps = [
        ["create", name, first],
        ["create", "--amend", name, second],
        ["annotate", "--arch", "arm64", "--os-version", "10", "--os-features", "x,y", name, second],
        ["inspect", name],
        ["inspect", "-v", name],
        ["inspect", name, second],
        ["inspect", "-v", name, first],
    ]
    for step in steps:
        reference = docker(theirs, *step[:1], *(["--insecure"] if step[0] == "create" else []), *step[1:])
        ours = cli(tmp_path, "manifest", *step)
        assert (ours.rc, ours.out) == (reference.returncode, reference.stdout), (step, ours.err, reference.stderr)
        assert files(docker_config) == files(theirs), step  # the same files, byte for byte
    listed = json.loads(cli(tmp_path, "manifest", "inspect", name).out)
    assert listed["mediaType"] == (OCI_INDEX if kind == "oci" else DOCKER_LIST)

    # Docker reads the files this tool wrote (and the other way round: they are the same bytes)
    assert docker(docker_config, "inspect", "-v", name).stdout == cli(tmp_path, "manifest", "inspect", "-v", name).out
    ours = cli(tmp_path, "manifest", "push", name)
    assert ours.rc == 0, ours.err
    reference = docker(theirs, "push", "--insecure", name)
    assert (reference.returncode, reference.stdout) == (0, ours.out), reference.stderr


def test_annotate_takes_an_architecture_containerd_knows_that_go_builds_no_linux_for(
        world: World, tmp_path: Path, docker_config: Path) -> None:
    """arm64be is in containerd's list of architectures, and linux/arm64be is not a pair Go builds
    for: the list takes it and pushes it, where the Docker CLI refuses it (when installed, it is asked)."""
    host = world.open.host
    app1, _ = images(world)
    name = f"{host}/lists/arm64be:v1"
    assert cli(tmp_path, "manifest", "create", name, app1).rc == 0
    annotated = cli(tmp_path, "manifest", "annotate", "--arch", "arm64be", name, app1)
    assert (annotated.rc, annotated.out, annotated.err) == (0, "", "")
    pushed = cli(tmp_path, "manifest", "push", name)
    assert pushed.rc == 0, pushed.err
    on_registry = registry_document(world, "lists/arm64be", "v1").json()
    assert [m["platform"] for m in on_registry["manifests"]] == [{"architecture": "arm64be", "os": "linux"}]
    if DOCKER is not None:
        theirs = tmp_path / "docker-cli-config"
        assert docker(theirs, "create", "--insecure", name, app1).returncode == 0
        refused = docker(theirs, "annotate", "--arch", "arm64be", name, app1)
        assert refused.returncode == 1 and "manifest entry for image has unsupported os/arch combination" in refused.stderr


def test_a_token_registry_needs_a_login_and_grants_the_mounts(world: World, tmp_path: Path, docker_config: Path) -> None:
    host = world.token.host
    app1, arm = (f"{host}/{name.split('/', 1)[1]}" for name in images(world))
    name = f"{host}/lists/token:v1"
    anonymous = cli(tmp_path, "manifest", "create", name, app1)
    assert (anonymous.rc, anonymous.err) == (
        1, f"Error: registry {host}: unauthorized: authentication required (check the credentials, or log in)\n")
    assert cli(tmp_path, "login", host, "-u", USER, "--password-stdin", stdin=PASSWORD + "\n").rc == 0
    assert cli(tmp_path, "manifest", "create", name, app1, arm).rc == 0
    before = len(world.tokens.issued)
    pushed = cli(tmp_path, "manifest", "push", name)
    assert pushed.rc == 0, pushed.err
    scopes = {scope for token in world.tokens.issued[before:] for scope in token["scopes"]}
    assert scopes == {"repository:lists/token:pull,push", "repository:app1:pull", "repository:multi:pull"}
    on_registry = registry_document(world, "lists/token", "v1")
    assert pushed.lines[-1] == "sha256:" + hashlib.sha256(on_registry.content).hexdigest()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_an_image_without_an_architecture_is_refused_before_the_index(world: World, tmp_path: Path, docker_config: Path) -> None:
    host = world.open.host
    app1, _ = images(world)
    name = f"{host}/lists/no-arch:v1"
    assert cli(tmp_path, "manifest", "create", name, app1).rc == 0
    desc = json.loads(_rewrite(docker_config, {}).read_bytes())["Descriptor"]
    _rewrite(docker_config, {"Descriptor": {**desc, "platform": {"os": "linux"}}})
    result = cli(tmp_path, "manifest", "push", name)
    assert (result.rc, result.err) == (1, f"Error: manifest {app1}: must have an OS and Architecture to be pushed to a registry"
                                          " (manifest annotate --os --arch sets them)\n")
    assert registry_document(world, "lists/no-arch", "v1").status_code == 404


@pytest.mark.parametrize("lie", ["list", "image"])
def test_the_digest_a_registry_answers_for_a_pushed_list_or_image_is_checked(world: World, tmp_path: Path, docker_config: Path,
                                                                              lie: str) -> None:
    """A proxy puts another digest in the registry's answer to the list's PUT, or to the PUT of an
    image brought over from another repository: the push says so and fails."""
    proxy = Proxy(world.open.port)
    app1 = f"{proxy.host}/app1:v1"
    name = f"{proxy.host}/lists/lying-{lie}:v1"
    try:
        assert cli(tmp_path, "manifest", "create", name, app1).rc == 0
        shown = cli(tmp_path, "manifest", "inspect", name).out
        true = sha(shown.removesuffix("\n").encode()) if lie == "list" else digest_of(world, "app1")
        told = sha(b"another document")
        proxy.rewrite[true.encode()] = told.encode()
        result = cli(tmp_path, "manifest", "push", name)
    finally:
        proxy.stop()
    assert proxy.rewritten > 0
    subject = f"manifest list {name}" if lie == "list" else f"manifest {app1}"
    assert (result.rc, result.err) == (1, f"Error: {subject}: the registry stored it as {told}\n")


def test_an_image_of_the_list_s_own_repository_is_not_brought_over(world: World, tmp_path: Path, docker_config: Path) -> None:
    """Only images of other repositories are mounted and put by digest: one already in the list's repository is just named."""
    host = world.open.host
    own = f"{host}/lists/own:app1"
    assert cli(tmp_path, "pull", "-q", f"{host}/app1:v1").rc == 0
    assert cli(tmp_path, "tag", f"{host}/app1:v1", own).rc == 0
    assert cli(tmp_path, "push", "-q", own).rc == 0
    name = f"{host}/lists/own:v1"
    assert cli(tmp_path, "manifest", "create", name, own).rc == 0
    mark = world.open.mark()
    pushed = cli(tmp_path, "manifest", "push", name)
    assert pushed.rc == 0, pushed.err
    assert [(r["method"], r["uri"]) for r in world.open.requests(mark)] == [("PUT", "/v2/lists/own/manifests/v1")]
    assert pushed.lines == [sha(registry_document(world, "lists/own", "v1").content)]
