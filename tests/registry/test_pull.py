"""pull against a real docker-registry: output, what is stored, platforms, tags, formats, errors.

Images were built by umoci and pushed by skopeo (``conftest.py``). What a
pull stores is checked against the registry's own bytes, and a pulled image,
mounted by unionfs, against what skopeo copies out of the registry and umoci
unpacks.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest
import regkit
import requests
from regkit import PASSWORD, USER, Answer, Asked, Front, Proxy, World, cli, layer_lines, short

from layerstore.model import DOCKER_MANIFEST, MAX_DOCUMENT, OCI_INDEX, OCI_MANIFEST
from layerstore.registry import client as client_module
from layerstore.registry.client import MANIFEST_ACCEPT
from layerstore.store import Store

LAYER_STEPS = ["Pulling fs layer", "Verifying Checksum", "Download complete", "Pull complete"]


def registry_manifest(world: World, repo: str, ref: str, accept: str = MANIFEST_ACCEPT) -> bytes:
    r = requests.get(f"http://{world.open.host}/v2/{repo}/manifests/{ref}", headers={"Accept": accept}, timeout=10)
    r.raise_for_status()
    return r.content


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()




def manifest_layers(data: bytes) -> list[str]:
    return [layer["digest"] for layer in json.loads(data)["layers"]]


def test_pull_by_tag_prints_docker_lines_and_stores_the_original_bytes(world: World, tmp_path: Path) -> None:
    name = world.name(world.open, "app1")
    manifest = registry_manifest(world, "app1", "v1")
    layers = manifest_layers(manifest)
    result = cli(tmp_path / "2", "pull", f"{name}:v1")
    assert result.rc == 0, result.err
    lines = result.lines
    assert lines[0] == "v1: Pulling from app1"
    assert layer_lines(lines) == {short(d): LAYER_STEPS for d in layers}
    assert lines[-3:] == [f"Digest: {sha(manifest)}", f"Status: Downloaded newer image for {name}:v1", f"{name}:v1"]
    assert result.err == ""

    with Store(tmp_path / "2") as store:
        image_id = store.resolve(f"{name}:v1")
        config_digest = json.loads(manifest)["config"]["digest"]
        assert image_id == config_digest
        assert store.blobs.read(sha(manifest)) == manifest  # the original bytes, never re-serialised
        assert store.resolve(f"{name}@{sha(manifest)}") == image_id
        rows = store.meta.query("SELECT repository, digest FROM repo_digests")
        assert [(r["repository"], r["digest"]) for r in rows] == [(name, sha(manifest))]
        row = store.meta.one("SELECT media_type FROM manifests WHERE digest = ?", sha(manifest))
        assert row is not None and row["media_type"] == OCI_MANIFEST
        assert all(store.blobs.has(d) for d in layers)
        assert not list((tmp_path / "2" / "ingest").iterdir())
        # downloaded (layers) and written whole (manifest, config): read-only, as the README says
        assert {os.stat(store.blobs.path(d)).st_mode & 0o7777 for d in store.blobs.digests()} == {0o444}

    again = cli(tmp_path / "2", "pull", f"{name}:v1")
    assert again.lines == [
        "v1: Pulling from app1", f"Digest: {sha(manifest)}", f"Status: Image is up to date for {name}:v1", f"{name}:v1"
    ]


def test_default_tag_is_announced(world: World, tmp_path: Path) -> None:
    result = cli(tmp_path, "pull", world.name(world.open, "multi"))
    assert result.rc == 0, result.err
    assert result.lines[:2] == ["Using default tag: latest", "latest: Pulling from multi"]
    assert result.lines[-1] == f"{world.open.host}/multi:latest"


def test_a_layer_the_store_has_already_exists(world: World, tmp_path: Path) -> None:
    assert cli(tmp_path, "pull", world.name(world.open, "app1:v1")).rc == 0
    result = cli(tmp_path, "pull", world.name(world.open, "app2:v1"))
    assert result.rc == 0, result.err
    base, own = manifest_layers(registry_manifest(world, "app2", "v1"))
    assert layer_lines(result.lines) == {short(base): ["Already exists"], short(own): LAYER_STEPS}
    assert f"Status: Downloaded newer image for {world.name(world.open, 'app2:v1')}" in result.lines


def test_pull_by_digest(world: World, tmp_path: Path) -> None:
    manifest = registry_manifest(world, "app2", "v1")
    ref = f"{world.name(world.open, 'app2')}@{sha(manifest)}"
    result = cli(tmp_path, "pull", ref)
    assert result.rc == 0, result.err
    assert result.lines[0] == f"{sha(manifest)}: Pulling from app2"
    assert result.lines[-3:] == [f"Digest: {sha(manifest)}", f"Status: Downloaded newer image for {ref}", ref]
    with Store(tmp_path) as store:
        assert store.meta.query("SELECT * FROM tags") == []  # a digest names no tag
        assert store.resolve(ref) == json.loads(manifest)["config"]["digest"]
    assert cli(tmp_path, "pull", ref).lines[-2] == f"Status: Image is up to date for {ref}"
    # no tag but a repository digest: dangling as Docker counts tags, yet kept by dangling=false as dockerd keeps it
    image_id = json.loads(manifest)["config"]["digest"]
    for value in ("true", "false"):
        assert cli(tmp_path, "images", "-q", "--no-trunc", "-f", f"dangling={value}").lines == [image_id]
    # its row names the repository, without a tag, as docker images shows an image pulled by digest
    repo = world.name(world.open, "app2")
    assert cli(tmp_path, "images", "--format", "{{.Repository}} {{.Tag}}").lines == [f"{repo} <none>"]
    assert cli(tmp_path, "images", "--digests", "--format", "{{.Repository}} {{.Tag}} {{.Digest}}").lines == [f"{repo} <none> {sha(manifest)}"]


def test_an_index_gives_this_machines_image_and_its_digest(world: World, tmp_path: Path) -> None:
    index = registry_manifest(world, "multi", "latest")
    assert json.loads(index)["mediaType"] == OCI_INDEX
    amd64 = registry_manifest(world, "app1", "v1")
    name = world.name(world.open, "multi:latest")
    result = cli(tmp_path, "pull", name)
    assert result.rc == 0, result.err
    assert f"Digest: {sha(index)}" in result.lines  # the digest the tag names: the index
    with Store(tmp_path) as store:
        image_id = store.resolve(name)
        assert image_id == json.loads(amd64)["config"]["digest"]
        assert store.config(image_id)["architecture"] == "amd64"
        assert store.blobs.read(sha(index)) == index
        assert store.blobs.read(sha(amd64)) == amd64
        digests = store.meta.query("SELECT digest FROM repo_digests WHERE image_id = ?", image_id)
        assert [r["digest"] for r in digests] == [sha(index)]
        assert store.resolve(f"{world.name(world.open, 'multi')}@{sha(index)}") == image_id
        store.prune_unreferenced()  # the index is what the repository digest names: it stays with its image
        assert store.blobs.read(sha(index)) == index


def test_an_index_entry_that_lies_about_the_size_of_its_manifest_is_refused(world: World, tmp_path: Path) -> None:
    """The size is part of a descriptor's identity: the manifest is right by its digest, the index is not."""
    amd64 = registry_manifest(world, "app1", "v1")
    base = f"http://{world.open.host}/v2/lying/index"
    for blob in [json.loads(amd64)["config"]["digest"], *manifest_layers(amd64)]:
        mounted = requests.post(f"{base}/blobs/uploads/", params={"mount": blob, "from": "app1"}, timeout=10)
        assert mounted.status_code == 201, mounted.text
    put = requests.put(f"{base}/manifests/{sha(amd64)}", data=amd64, headers={"Content-Type": OCI_MANIFEST}, timeout=10)
    assert put.status_code == 201, put.text
    entry = {"mediaType": OCI_MANIFEST, "digest": sha(amd64), "size": len(amd64) + 1,
             "platform": {"architecture": "amd64", "os": "linux"}}
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}).encode()
    put = requests.put(f"{base}/manifests/v1", data=index, headers={"Content-Type": OCI_INDEX}, timeout=10)
    assert put.status_code == 201, put.text
    result = cli(tmp_path, "pull", world.name(world.open, "lying/index:v1"))
    assert result.rc == 1
    assert result.err == f"Error: manifest {sha(amd64)}: size mismatch (expected {len(amd64) + 1} bytes, got {len(amd64)})\n"
    with Store(tmp_path) as store:
        assert store.meta.query("SELECT * FROM images") == []


@pytest.mark.parametrize("platform", ["linux/arm64", "linux/arm64/v8", "linux/aarch64"])
def test_platform_selects_from_the_index(world: World, tmp_path: Path, platform: str) -> None:
    name = world.name(world.open, "multi:latest")
    result = cli(tmp_path, "pull", "--platform", platform, name)
    assert result.rc == 0, result.err
    with Store(tmp_path) as store:
        config = store.config(store.resolve(name))
        assert (config["architecture"], config.get("variant")) == ("arm64", "v8")
        mounted = store.layers.path(store.image_layers(store.resolve(name))[-1])
        assert (mounted / "etc/arch").read_text() == "arm64\n"


def test_docker_default_platform_is_the_platform_unless_one_is_given(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_DEFAULT_PLATFORM", "linux/arm64")
    name = world.name(world.open, "multi:latest")
    for store, flags, arch in ((tmp_path / "env", [], "arm64"), (tmp_path / "flag", ["--platform", "linux/amd64"], "amd64")):
        result = cli(store, "pull", *flags, name)
        assert result.rc == 0, result.err
        with Store(store) as opened:
            assert opened.config(opened.resolve(name))["architecture"] == arch


def test_a_platform_the_index_lacks_is_one_line_naming_those_it_has(world: World, tmp_path: Path) -> None:
    result = cli(tmp_path, "pull", "--platform", "linux/s390x", world.name(world.open, "multi"))
    assert result.rc == 1
    assert result.err.count("\n") == 1
    assert "no matching manifest for linux/s390x in the manifest list entries" in result.err
    assert "(it has: linux/amd64, linux/arm64)" in result.err  # the attestation's unknown/unknown is not a platform
    with Store(tmp_path) as store:
        assert store.meta.query("SELECT * FROM images") == []


def test_platform_of_a_single_manifest_is_checked(world: World, tmp_path: Path) -> None:
    result = cli(tmp_path, "pull", "--platform", "linux/arm64", world.name(world.open, "app1:v1"))
    assert result.rc == 1
    assert "does not match the specified platform: wanted linux/arm64, actual: linux/amd64" in result.err


def test_all_tags(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # distribution 2.8 answers the whole tag list at once whatever n says (pages: the search test)
    monkeypatch.setattr(client_module, "PAGE_SIZE", 1)
    mark = world.open.mark()
    repo = world.name(world.open, "tags/app")
    result = cli(tmp_path, "pull", "-a", repo)
    assert result.rc == 0, result.err
    starts = [line for line in result.lines if line.endswith(": Pulling from tags/app")]
    assert starts == ["v1: Pulling from tags/app", "v2: Pulling from tags/app", "v3: Pulling from tags/app"]
    assert result.lines[-2:] == [f"Status: Downloaded newer image for {repo}", repo]
    assert sum(line.startswith("Digest: ") for line in result.lines) == 3
    pages = [r for r in world.open.requests(mark) if "/tags/list" in r["uri"]]
    assert [r["uri"] for r in pages] == ["/v2/tags/app/tags/list?n=1"]
    with Store(tmp_path) as store:
        tags = store.meta.query("SELECT tag FROM tags WHERE repository = ? ORDER BY tag", repo)
        assert [r["tag"] for r in tags] == ["v1", "v2", "v3"]
    refused = cli(tmp_path, "pull", "-a", f"{repo}:v1")
    assert (refused.rc, refused.err) == (1, "Error: tag can't be used with --all-tags/-a\n")


def test_all_tags_reads_a_page_of_tags_on_another_host_without_the_registrys_credentials(world: World, tmp_path: Path) -> None:
    """The tag list in three pages linked by Link headers: the second, on the registry's own origin,
    is asked with its credentials at once; the third, on another host, is read without them, and
    its tag is pulled from the registry all the same."""
    repo = "tags/app"
    second, third_path = (f"/v2/{repo}/tags/list?n=1&last={tag}" for tag in ("v1", "v2"))

    def tags(names: list[str]) -> bytes:
        return json.dumps({"name": repo, "tags": names}).encode()

    elsewhere = Front(world.open.port, lambda asked: (200, {"Content-Type": "application/json"}, tags(["v3"])))
    third = f"http://{elsewhere.host}{third_path}"

    def hook(asked: Asked) -> Answer | None:
        if "/tags/list" not in asked.path:
            return None
        status, headers, body = asked.forward()  # the registry decides whether the credentials are good
        if status != 200:
            return status, headers, body
        page, following = (["v2"], third) if asked.path == second else (["v1"], second)
        return status, {**headers, "Link": f'<{following}>; rel="next"'}, tags(page)

    front = Front(world.basic.port, hook)
    try:
        assert cli(tmp_path, "login", front.host, "-u", USER, "--password-stdin", stdin=PASSWORD + "\n").rc == 0
        result = cli(tmp_path, "pull", "-a", f"{front.host}/{repo}")
    finally:
        front.stop()
        elsewhere.stop()
    assert result.rc == 0, result.err
    assert [line for line in result.lines if line.endswith(f": Pulling from {repo}")] == [
        f"{tag}: Pulling from {repo}" for tag in ("v1", "v2", "v3")]
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert [a.header("Authorization") for a in front.asked if a.path == second] == [basic]
    assert [(a.path, a.header("Authorization")) for a in elsewhere.asked] == [(third_path, None)]


def test_all_tags_goes_on_past_a_tag_it_cannot_pull(world: World, tmp_path: Path) -> None:
    repo = world.name(world.open, "mixed/app")
    result = cli(tmp_path, "pull", "-a", repo)
    assert result.rc == 0, result.err
    assert result.err == (
        f"Error pulling {repo}:armonly: image {repo}:armonly: no matching manifest for linux/amd64"
        " in the manifest list entries (it has: linux/arm64)\n"
    )
    assert result.lines[-2:] == [f"Status: Downloaded newer image for {repo}", repo]
    with Store(tmp_path) as store:
        assert [r["tag"] for r in store.meta.query("SELECT tag FROM tags")] == ["base"]


@pytest.fixture(scope="module")
def five_layers(world: World) -> str:
    """An image of five layers on the open registry, more than a pull downloads at once: its repository and tag."""
    layout = world.work / "five-layers"
    regkit.build(layout, "five", [lambda r, n=n: regkit.write(r, f"layer/{n}", f"{n}\n" * 1000) for n in range(5)])
    regkit.push(layout, "five", f"{world.open.host}/five/layers:v1")
    return "five/layers:v1"


def test_a_pull_downloads_three_layers_at_a_time(world: World, tmp_path: Path, five_layers: str) -> None:
    """Seen from the registry's side, each layer GET held there a moment: three are asked at
    once, never a fourth before one of them is answered, and each layer once."""
    repo, tag = five_layers.split(":")
    layers = manifest_layers(registry_manifest(world, repo, tag))
    lock = threading.Lock()
    in_flight, most = [0], [0]

    def hook(asked: Asked) -> Answer | None:
        if asked.method != "GET" or asked.path.rpartition("/")[2] not in layers:
            return None
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            time.sleep(0.5)
            return asked.forward()
        finally:
            with lock:
                in_flight[0] -= 1

    front, result = through_front(world, tmp_path, hook, five_layers)
    assert result.rc == 0, result.err
    assert most[0] == 3
    asked = sorted(a.path.rpartition("/")[2] for a in front.asked if a.path.rpartition("/")[2] in layers)
    assert asked == sorted(layers) and len(set(layers)) == 5


def test_quiet_prints_the_name_only(world: World, tmp_path: Path) -> None:
    result = cli(tmp_path, "pull", "-q", world.name(world.open, "app1"))
    assert result.rc == 1  # no latest tag: the error still shows
    assert result.out == ""
    result = cli(tmp_path, "pull", "-q", world.name(world.open, "app1:v1"))
    assert (result.rc, result.out, result.err) == (0, f"{world.open.host}/app1:v1\n", "")


def test_zstd_and_uncompressed_docker_layers(world: World, tmp_path: Path) -> None:
    zstd = registry_manifest(world, "zstd/app", "v1")
    assert {layer["mediaType"] for layer in json.loads(zstd)["layers"]} == {"application/vnd.oci.image.layer.v1.tar+zstd"}
    raw = registry_manifest(world, "raw/app", "v1")
    assert json.loads(raw)["mediaType"] == DOCKER_MANIFEST
    assert {layer["mediaType"] for layer in json.loads(raw)["layers"]} == {"application/vnd.docker.image.rootfs.diff.tar"}
    for repo in ("zstd/app:v1", "raw/app:v1", "app1:v1"):
        result = cli(tmp_path, "pull", world.name(world.open, repo))
        assert result.rc == 0, result.err
    with Store(tmp_path) as store:
        raw_id = store.resolve(world.name(world.open, "raw/app:v1"))
        assert raw_id == store.resolve(world.name(world.open, "app1:v1"))  # one config, two manifests
        row = store.meta.one("SELECT media_type FROM manifests WHERE digest = ?", sha(raw))
        assert row is not None and row["media_type"] == DOCKER_MANIFEST
        assert (store.layers.path(store.image_layers(store.resolve(world.name(world.open, "zstd/app:v1")))[1]) / "z/two").read_text() == "two\n"


def test_unknown_tag_repository_and_registry(world: World, tmp_path: Path) -> None:
    result = cli(tmp_path, "pull", world.name(world.open, "app1:nope"))
    assert (result.rc, result.err) == (1, f"Error: manifest for {world.open.host}/app1:nope: not found: manifest unknown\n")
    assert result.out == ""  # no "Pulling from" line: as dockerd, that comes once the manifest is there
    result = cli(tmp_path, "pull", world.name(world.open, "never/pushed"))
    assert result.rc == 1 and "not found" in result.err and result.err.count("\n") == 1
    port = regkit.free_port()
    result = cli(tmp_path, "pull", f"127.0.0.1:{port}/app:v1")
    assert result.rc == 1
    assert result.err.startswith(f"Error: registry 127.0.0.1:{port}: unreachable (") and result.err.count("\n") == 1
    assert "Connection refused" in result.err


@pytest.mark.parametrize("which", ["layer", "config", "config-shorter"])
def test_a_changed_blob_fails_the_pull_and_nothing_of_it_is_kept(world: World, tmp_path: Path, which: str) -> None:
    """A layer is checked as it streams in; the config before any layer is fetched."""
    manifest = registry_manifest(world, "bad", "v1")
    (layer,) = manifest_layers(manifest)
    blob = layer if which == "layer" else json.loads(manifest)["config"]["digest"]
    data_file = world.open.blob_path(blob)
    original = data_file.read_bytes()
    changed = bytearray(original)
    if which == "config-shorter":
        del changed[-1]
    else:
        changed[len(changed) // 2] ^= 0xFF  # same size, other bytes
    data_file.write_bytes(bytes(changed))
    try:
        result = cli(tmp_path, "pull", world.name(world.open, "bad:v1"))
    finally:
        data_file.write_bytes(original)
    assert result.rc == 1
    if which == "config-shorter":
        assert result.err == f"Error: blob {blob}: size mismatch (expected {len(original)} bytes, got {len(changed)})\n"
    else:
        assert result.err == f"Error: blob {blob}: digest mismatch (computed {sha(bytes(changed))})\n"
    with Store(tmp_path) as store:
        assert not store.blobs.has(layer) and not store.blobs.has(blob)
        assert not store.blobs.has(sha(manifest))
        assert store.meta.query("SELECT * FROM images") == []
        assert store.meta.query("SELECT * FROM leases") == []
    assert list((tmp_path / "ingest").iterdir()) == []  # no partial file: the bytes were wrong
    assert list((tmp_path / "layers" / ".staging").iterdir()) == []
    assert cli(tmp_path, "pull", world.name(world.open, "bad:v1")).rc == 0  # the registry's blob is right again


def test_a_changed_manifest_is_refused(world: World, tmp_path: Path) -> None:
    manifest = registry_manifest(world, "bad", "v1")
    data_file = world.open.blob_path(sha(manifest))
    config = json.loads(manifest)["config"]["digest"]
    changed = manifest.replace(config.encode(), (config[:-1] + ("0" if config[-1] != "0" else "1")).encode())
    data_file.write_bytes(changed)
    try:
        result = cli(tmp_path, "pull", world.name(world.open, "bad:v1"))
    finally:
        data_file.write_bytes(manifest)
    assert result.rc == 1
    assert result.err == f"Error: manifest for {world.open.host}/bad:v1: digest mismatch (computed {sha(changed)})\n"


def test_a_malformed_digest_answered_for_a_manifest_is_refused(world: World, tmp_path: Path) -> None:
    """A proxy puts a digest that is not one in the registry's Docker-Content-Digest."""
    told = "sha256:" + "z" * 64
    proxy = Proxy(world.open.port, rewrite={sha(registry_manifest(world, "app1", "v1")).encode(): told.encode()})
    try:
        result = cli(tmp_path, "pull", f"{proxy.host}/app1:v1")
    finally:
        proxy.stop()
    assert proxy.rewritten > 0
    assert (result.rc, result.err) == (1, f"Error: manifest for {proxy.host}/app1:v1: the registry answered with a malformed digest {told!r}\n")
    with Store(tmp_path) as store:
        assert store.meta.query("SELECT * FROM images") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
@pytest.mark.parametrize("repo", ["app1:v1", "zstd/app:v1", "raw/app:v1", "multi:latest"])
def test_the_pulled_image_mounts_as_umoci_unpacks_it(world: World, tmp_path: Path, repo: str) -> None:
    from layerstore.containers import Containers

    name = world.name(world.open, repo)
    assert cli(tmp_path / "store", "pull", name).rc == 0
    oci = tmp_path / "oci"
    # umoci 0.4 reads gzip layers only: skopeo recompresses the zstd and the uncompressed ones
    regkit.sh("skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-compress-format", "gzip", f"docker://{name}", f"oci:{oci}:t")
    regkit.sh("umoci", "unpack", "--image", f"{oci}:t", tmp_path / "bundle")
    expected = regkit.tree(tmp_path / "bundle" / "rootfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with Store(tmp_path / "store") as store:
        containers = Containers(store)
        c = containers.create_and_mount(name, str(mnt), read_only=True)
        try:
            assert regkit.tree(mnt) == expected
        finally:
            containers.remove(c.name, force=True)


def test_pulling_an_image_the_store_has_fetches_no_blob(world: World, tmp_path: Path) -> None:
    """As Docker's "Image is up to date": the manifest is asked for again, the config and layers are not."""
    name = world.name(world.open, "app1:v1")
    assert cli(tmp_path, "pull", "-q", name).rc == 0
    mark = world.open.mark()
    again = cli(tmp_path, "pull", name)
    assert again.rc == 0 and again.lines[-2] == f"Status: Image is up to date for {name}"
    asked = [r["uri"] for r in world.open.requests(mark)]
    assert any("/manifests/v1" in uri for uri in asked), asked
    assert not [uri for uri in asked if "/blobs/" in uri], asked


@pytest.mark.parametrize("command", ["pull", "push"])
def test_content_trust_asked_for_is_refused_not_ignored(world: World, tmp_path: Path, command: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """DOCKER_CONTENT_TRUST=1 asks for Notary signatures to be verified, which this tool cannot do."""
    name = world.name(world.open, "base:v1")
    monkeypatch.setenv("DOCKER_CONTENT_TRUST", "1")
    refused = cli(tmp_path, command, name)
    assert (refused.rc, refused.out) == (1, "")
    assert refused.err == ("Error: content trust (DOCKER_CONTENT_TRUST) is not supported: image signatures cannot be"
                           " verified here; unset it or pass --disable-content-trust\n")
    monkeypatch.setenv("DOCKER_CONTENT_TRUST", "yes")  # not Go's spelling of a bool: the Docker CLI asks for trust
    assert cli(tmp_path, command, name).err == refused.err
    monkeypatch.setenv("DOCKER_CONTENT_TRUST", "0")
    asked = cli(tmp_path, command, "--disable-content-trust=false", name)
    assert (asked.rc, asked.out) == (1, "")
    assert asked.err == ("Error: content trust (--disable-content-trust=false) is not supported: image signatures"
                         " cannot be verified here\n")
    if command == "pull":
        assert cli(tmp_path, "images", "-q").out == ""  # nothing was pulled
        monkeypatch.setenv("DOCKER_CONTENT_TRUST", "1")
        assert cli(tmp_path, "pull", "--disable-content-trust", name).rc == 0
        monkeypatch.setenv("DOCKER_CONTENT_TRUST", "0")
        assert cli(tmp_path, "pull", "-q", name).rc == 0


def through_front(world: World, tmp_path: Path, hook: regkit.Hook, ref: str) -> tuple[Front, regkit.Result]:
    """``pull`` of ``ref`` (a path and tag or digest) from the open registry, behind a ``Front`` with ``hook``."""
    front = Front(world.open.port, hook)
    try:
        return front, cli(tmp_path, "pull", f"{front.host}/{ref}")
    finally:
        front.stop()


def put_image(world: World, repo: str, source: str, manifest: bytes) -> str:
    """An image of repository ``source`` into ``repo`` of the open registry (blobs mounted, manifest put by digest)."""
    base = f"http://{world.open.host}/v2/{repo}"
    doc = json.loads(manifest)
    for blob in [doc["config"]["digest"], *manifest_layers(manifest)]:
        mounted = requests.post(f"{base}/blobs/uploads/", params={"mount": blob, "from": source}, timeout=10)
        assert mounted.status_code == 201, mounted.text
    put = requests.put(f"{base}/manifests/{sha(manifest)}", data=manifest,
                       headers={"Content-Type": doc.get("mediaType", OCI_MANIFEST)}, timeout=10)
    assert put.status_code == 201, put.text
    return sha(manifest)


def test_a_manifest_named_by_digest_must_hash_to_it_whatever_the_answer_says(world: World, tmp_path: Path) -> None:
    """The digest in the reference is what the bytes are checked against, also when the answer
    names none (Docker-Content-Digest is optional): other bytes are refused."""
    manifest = registry_manifest(world, "app1", "v1")
    digest = sha(manifest)
    changed = manifest + b"\n"  # the same document, other bytes

    def hook(asked: Asked) -> Answer | None:
        if asked.method == "GET" and asked.path == f"/v2/app1/manifests/{digest}":
            return 200, {"Content-Type": OCI_MANIFEST}, changed
        return None

    front, result = through_front(world, tmp_path, hook, f"app1@{digest}")
    assert (result.rc, result.err) == (1, f"Error: manifest for {front.host}/app1@{digest}: digest mismatch (computed {sha(changed)})\n")
    with Store(tmp_path) as store:
        assert store.meta.query("SELECT * FROM images") == []


def test_a_manifest_larger_than_the_limit_is_refused_as_such(world: World, tmp_path: Path) -> None:
    """At most MAX_DOCUMENT bytes of a manifest are read: a longer one is refused for its size,
    not for a digest that the first bytes of it cannot have."""
    huge = b"{" + b" " * MAX_DOCUMENT + b"}"

    def hook(asked: Asked) -> Answer | None:
        if asked.method == "GET" and asked.path == "/v2/app1/manifests/v1":
            return 200, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": sha(huge)}, huge
        return None

    front, result = through_front(world, tmp_path, hook, "app1:v1")
    assert (result.rc, result.err) == (1, f"Error: manifest for {front.host}/app1:v1: larger than {MAX_DOCUMENT} bytes\n")


def test_a_blob_the_registry_answers_404_for_without_an_error_code_is_an_unknown_blob(world: World, tmp_path: Path) -> None:
    """A 404 to a blob GET says the blob is unknown, with or without the registry's BLOB_UNKNOWN code."""
    config = json.loads(registry_manifest(world, "app1", "v1"))["config"]["digest"]

    def hook(asked: Asked) -> Answer | None:
        return (404, {}, b"") if asked.path == f"/v2/app1/blobs/{config}" else None

    _, result = through_front(world, tmp_path, hook, "app1:v1")
    assert (result.rc, result.err) == (1, f"Error: blob {config}: not found: blob unknown to registry\n")


def test_a_403_answer_is_access_denied(world: World, tmp_path: Path) -> None:
    """A 403 without the registry's DENIED code is still an authorization refusal, in Docker's words."""
    def hook(asked: Asked) -> Answer | None:
        return (403, {}, b"") if "/manifests/" in asked.path else None

    front, result = through_front(world, tmp_path, hook, "app1:v1")
    assert (result.rc, result.err) == (
        1, f"Error: manifest for {front.host}/app1:v1: denied: requested access to the resource is denied\n")


def test_a_503_answer_is_asked_again(world: World, tmp_path: Path) -> None:
    """A registry that is briefly unavailable (503 to a GET) is asked again, and the pull goes on."""
    refused: list[str] = []

    def hook(asked: Asked) -> Answer | None:
        if "/manifests/" in asked.path and not refused:
            refused.append(asked.path)
            return 503, {}, b""
        return None

    front, result = through_front(world, tmp_path, hook, "app1:v1")
    assert result.rc == 0, result.err
    assert [a.path for a in front.asked if "/manifests/" in a.path] == ["/v2/app1/manifests/v1"] * 2


def test_an_unknown_repository_is_named_so(world: World, tmp_path: Path) -> None:
    """The registry's NAME_UNKNOWN (its answer to the tag list of a repository it lacks) says the
    repository is not known, not that a manifest is."""
    result = cli(tmp_path, "pull", "-a", world.name(world.open, "never/pushed"))
    assert (result.rc, result.err) == (
        1, f"Error: repository {world.open.host}/never/pushed: not found: repository name not known to registry\n")


def test_an_index_entry_without_a_platform_is_checked_against_its_config(world: World, tmp_path: Path) -> None:
    """An index that names no platforms gives its first image, whose config must then name this platform."""
    arm = regkit.descriptor(world.layout, "arm")["digest"]
    manifest = (world.layout / "blobs" / "sha256" / arm.split(":", 1)[1]).read_bytes()
    put_image(world, "unlabelled/index", "multi", manifest)
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                        "manifests": [{"mediaType": OCI_MANIFEST, "digest": arm, "size": len(manifest)}]}).encode()
    put = requests.put(f"http://{world.open.host}/v2/unlabelled/index/manifests/v1", data=index,
                       headers={"Content-Type": OCI_INDEX}, timeout=10)
    assert put.status_code == 201, put.text
    name = world.name(world.open, "unlabelled/index:v1")
    result = cli(tmp_path, "pull", name)
    assert (result.rc, result.err) == (1, f"Error: image {name}: found, but it does not match the specified platform:"
                                          " wanted linux/amd64, actual: linux/arm64\n")
    assert cli(tmp_path, "pull", "--platform", "linux/arm64", name).rc == 0


def test_an_index_is_known_by_its_manifests_when_no_media_type_says_so(world: World, tmp_path: Path) -> None:
    """An index answered as plain JSON, without a mediaType field, is still an index: its entry for this platform is pulled."""
    real = json.loads(registry_manifest(world, "multi", "latest"))
    bare = json.dumps({"schemaVersion": 2, "manifests": real["manifests"]}).encode()

    def hook(asked: Asked) -> Answer | None:
        if asked.path == "/v2/multi/manifests/bare":
            return 200, {"Content-Type": "application/json"}, bare
        return None

    front, result = through_front(world, tmp_path, hook, "multi:bare")
    assert result.rc == 0, result.err
    assert f"Digest: {sha(bare)}" in result.lines
    with Store(tmp_path) as store:
        assert store.resolve(f"{front.host}/multi:bare") == json.loads(registry_manifest(world, "app1", "v1"))["config"]["digest"]
