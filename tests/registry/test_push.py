"""push against a real docker-registry: output, uploads, mounts, chunks, credentials, errors.

Images come from archives skopeo makes of the umoci-built layout
(``conftest.py``), loaded into a store and tagged for the registry. What is
pushed is pulled back into another store and read by skopeo: the same image
ID, the same manifest digest. Each test pushes to repositories of its own.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path

import pytest
import regkit
import requests
from regkit import PASSWORD, USER, Answer, Asked, Front, Proxy, World, cli, layer_lines, short

from layerstore import reference
from layerstore.errors import CorruptArchive, RegistryError
from layerstore.mediatypes import DOCKER_LAYER
from layerstore.model import OCI_MANIFEST, Manifest
from layerstore.registry.auth import Credentials
from layerstore.registry.client import RegistryClient
from layerstore.registry.progress import Display
from layerstore.registry.push import Pusher
from layerstore.store import Store


@pytest.fixture(scope="module")
def archives(world: World, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """OCI archives (the original manifest inside) and a classic docker-archive (none: one is made on load)."""
    out = tmp_path_factory.mktemp("push-archives")
    made: dict[str, Path] = {}
    for tag in ("app1", "app2", "big"):
        made[tag] = out / f"{tag}.oci.tar"
        regkit.sh("skopeo", "copy", "-q", f"oci:{world.layout}:{tag}", f"oci-archive:{made[tag]}:example/{tag}:v1")
    made["classic"] = out / "app2.docker.tar"
    regkit.sh("skopeo", "copy", "-q", f"oci:{world.layout}:app2", f"docker-archive:{made['classic']}:example/app2:classic")
    return made


def load(root: Path, archive: Path, *names: str) -> str:
    """Load an archive and tag its image with ``names``; the image ID."""
    loaded = cli(root, "load", "-q", "-i", str(archive))
    assert loaded.rc == 0, loaded.err
    first = loaded.lines[-1].removeprefix("Loaded image: ")
    for name in names:
        assert cli(root, "tag", first, name).rc == 0
    with Store(root) as store:
        return store.resolve(first)


def layout_manifest(world: World, tag: str) -> tuple[str, bytes]:
    digest = regkit.descriptor(world.layout, tag)["digest"]
    return digest, (world.layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()



def layers_of(manifest: bytes) -> list[str]:
    return [layer["digest"] for layer in json.loads(manifest)["layers"]]



def skopeo_digest(name: str) -> str:
    return str(json.loads(regkit.sh("skopeo", "inspect", "--tls-verify=false", f"docker://{name}"))["Digest"])


def logged_puts(registry: regkit.Registry, mark: int) -> list[tuple[str, int | None]]:
    """The PUTs in the registry's log after ``mark``: refused ones too (``requests()`` has the answered ones only)."""
    deadline = time.monotonic() + 5
    while True:
        entries = [json.loads(line) for line in registry.log.read_bytes()[mark:].decode().splitlines() if line.startswith("{")]
        puts = [(str(e["msg"]).split(":")[0], e.get("http.response.status")) for e in entries
                if e.get("http.request.method") == "PUT" and e["msg"] != "authorized request"]
        if (puts and puts[-1][0] == "response completed") or time.monotonic() > deadline:
            return puts
        time.sleep(0.02)


def login(root: Path, host: str) -> None:
    assert cli(root, "login", host, "-u", USER, "--password-stdin", stdin=PASSWORD + "\n").rc == 0


def test_push_a_loaded_image_then_pull_it_back(world: World, archives: dict[str, Path], tmp_path: Path) -> None:
    host = world.open.host
    name = f"{host}/pushed/round:v1"
    image_id = load(tmp_path / "a", archives["app1"], name)
    digest, manifest = layout_manifest(world, "app1")
    layers = layers_of(manifest)
    mark = world.open.mark()
    result = cli(tmp_path / "a", "push", name)
    assert result.rc == 0, result.err
    assert result.err == ""
    assert result.lines[0] == f"The push refers to repository [{host}/pushed/round]"
    assert result.lines[1:1 + len(layers)] == [f"{short(d)}: Preparing" for d in reversed(layers)]  # top layer first
    assert layer_lines(result.lines) == {short(d): ["Preparing", "Pushed"] for d in layers}
    assert result.lines[-1] == f"v1: digest: {digest} size: {len(manifest)}"  # the bytes skopeo wrote, unchanged

    answers = world.open.requests(mark)
    starts = [r for r in answers if r["method"] == "POST"]
    puts = [r for r in answers if r["method"] == "PUT" and "/blobs/uploads/" in r["uri"]]
    assert len(starts) == len(puts) == len(layers) + 1  # the layers and the config, monolithic
    assert {r["status"] for r in starts} == {202} and {r["status"] for r in puts} == {201}
    assert not [r for r in answers if r["method"] == "PATCH"]
    assert [(r["uri"], r["status"]) for r in answers if "/manifests/" in r["uri"]] == [("/v2/pushed/round/manifests/v1", 201)]
    with Store(tmp_path / "a") as store:
        rows = store.meta.query("SELECT repository, digest, image_id FROM repo_digests")
        assert [tuple(r) for r in rows] == [(f"{host}/pushed/round", digest, image_id)]

    pulled = cli(tmp_path / "b", "pull", name)
    assert pulled.rc == 0, pulled.err
    assert f"Digest: {digest}" in pulled.lines
    with Store(tmp_path / "b") as store:
        assert store.resolve(name) == image_id
        assert store.blobs.read(digest) == manifest
    assert skopeo_digest(name) == digest

    mark = world.open.mark()
    again = cli(tmp_path / "a", "push", name)
    assert again.rc == 0, again.err
    assert layer_lines(again.lines) == {short(d): ["Preparing", "Layer already exists"] for d in layers}
    assert again.lines[-1] == f"v1: digest: {digest} size: {len(manifest)}"
    assert not [r for r in world.open.requests(mark) if r["method"] in ("POST", "PATCH")]  # nothing uploaded


def test_a_manifest_made_for_a_classic_archive_is_pushed_as_it_is(world: World, archives: dict[str, Path], tmp_path: Path) -> None:
    name = f"{world.open.host}/pushed/classic:v1"
    image_id = load(tmp_path / "a", archives["classic"], name)
    with Store(tmp_path / "a") as store:
        row = store.meta.one("SELECT digest, size, synthetic FROM manifests WHERE image_id = ?", image_id)
        assert row is not None and row["synthetic"] == 1
        digest, size = str(row["digest"]), int(row["size"])
    result = cli(tmp_path / "a", "push", name)
    assert result.rc == 0, result.err
    assert result.lines[-1] == f"v1: digest: {digest} size: {size}"
    pulled = cli(tmp_path / "b", "pull", name)
    assert pulled.rc == 0, pulled.err
    assert f"Digest: {digest}" in pulled.lines
    with Store(tmp_path / "b") as store:
        assert store.resolve(name) == image_id
        assert {layer.media_type for layer in Manifest.parse(store.blobs.read(digest), "manifest").layers} == {DOCKER_LAYER}  # skopeo's uncompressed tars
    assert skopeo_digest(name) == digest


def test_a_shared_base_layer_is_mounted_from_the_repository_it_went_to(world: World, archives: dict[str, Path], tmp_path: Path) -> None:
    host = world.open.host
    one, two = f"{host}/pushed/one:v1", f"{host}/pushed/two:v1"
    load(tmp_path / "a", archives["app1"], one)
    image_id = load(tmp_path / "a", archives["app2"], two)
    assert cli(tmp_path / "a", "push", one).rc == 0
    base, own = layers_of(layout_manifest(world, "app2")[1])
    mark = world.open.mark()
    result = cli(tmp_path / "a", "push", two)
    assert result.rc == 0, result.err
    assert layer_lines(result.lines) == {short(base): ["Preparing", "Mounted from pushed/one"], short(own): ["Preparing", "Pushed"]}
    mounts = [(r["uri"], r["status"]) for r in world.open.requests(mark) if "mount=" in r["uri"]]
    assert mounts == [(f"/v2/pushed/two/blobs/uploads/?mount={base}&from=pushed/one", 201)]
    pulled = cli(tmp_path / "b", "pull", two)
    assert pulled.rc == 0, pulled.err
    with Store(tmp_path / "b") as store:
        assert store.resolve(two) == image_id


def test_sources_that_lack_the_blob_fall_back_to_an_upload(world: World, archives: dict[str, Path], tmp_path: Path) -> None:
    host = world.open.host
    target = f"{host}/pushed/target:v1"
    # tags on the same registry name repositories never pushed: each mount is answered with a new upload instead
    image_id = load(tmp_path / "a", archives["app1"], f"{host}/pushed/ghost-a:v1", f"{host}/pushed/ghost-b:v1", target)
    layers = layers_of(layout_manifest(world, "app1")[1])
    mark = world.open.mark()
    result = cli(tmp_path / "a", "push", target)
    assert result.rc == 0, result.err
    assert layer_lines(result.lines) == {short(d): ["Preparing", "Pushed"] for d in layers}
    answers = world.open.requests(mark)
    for layer in layers:
        tried = [(r["uri"].split("&from=")[1], r["status"]) for r in answers if f"mount={layer}" in r["uri"]]
        assert tried == [("pushed/ghost-a", 202), ("pushed/ghost-b", 202)]
    assert [r["status"] for r in answers if r["method"] == "DELETE"] == [204] * len(layers)  # the first mount's upload, given up
    starts = [r for r in answers if r["method"] == "POST" and "mount=" not in r["uri"]]
    assert len(starts) == 1  # the config only: each layer went into the upload its last mount opened
    assert len([r for r in answers if r["method"] == "PUT" and "/blobs/uploads/" in r["uri"]]) == len(layers) + 1
    pulled = cli(tmp_path / "b", "pull", target)
    assert pulled.rc == 0, pulled.err
    with Store(tmp_path / "b") as store:
        assert store.resolve(target) == image_id


def test_large_blobs_go_up_in_chunks_with_a_progress_bar_on_a_terminal(world: World, archives: dict[str, Path], tmp_path: Path) -> None:
    name = f"{world.open.host}/pushed/chunked:v1"
    image_id = load(tmp_path / "a", archives["big"], name)
    (layer,) = layers_of(layout_manifest(world, "big")[1])
    size = (world.layout / "blobs" / "sha256" / layer.split(":", 1)[1]).stat().st_size
    chunk = 1 << 20
    assert size > 5 * chunk
    out = io.StringIO()
    mark = world.open.mark()
    with Store(tmp_path / "a") as store:
        client = RegistryClient(world.open.host)
        try:
            pushed = Pusher(store, client, Display(out, terminal=True), chunk_size=chunk).push(reference.parse(name))
        finally:
            client.close()
    answers = world.open.requests(mark)
    patches = [r for r in answers if r["method"] == "PATCH"]
    assert len(patches) == -(-size // chunk) and {r["status"] for r in patches} == {202}
    assert len([r for r in answers if r["method"] == "PUT" and f"digest={layer}" in r["uri"]]) == 1
    shown = out.getvalue()
    assert f"{short(layer)}: Pushing [" in shown and f"{short(layer)}: Pushed" in shown
    assert world.open.blob_path(layer).stat().st_size == size
    pulled = cli(tmp_path / "b", "pull", name)
    assert pulled.rc == 0, pulled.err
    assert f"Digest: {pushed.digest}" in pulled.lines
    with Store(tmp_path / "b") as store:
        assert store.resolve(name) == image_id


def test_basic_auth_push_needs_a_login(world: World, archives: dict[str, Path], tmp_path: Path) -> None:
    host = world.basic.host
    name = f"{host}/pushed/basic:v1"
    load(tmp_path, archives["app1"], name)
    denied = cli(tmp_path, "push", name)
    assert denied.rc == 1
    assert denied.err == f"Error: registry {host}: unauthorized: authentication required (check the credentials, or log in)\n"
    assert denied.lines == [f"The push refers to repository [{name.removesuffix(':v1')}]"]
    login(tmp_path, host)
    result = cli(tmp_path, "push", name)
    assert result.rc == 0, result.err
    digest, manifest = layout_manifest(world, "app1")
    assert result.lines[-1] == f"v1: digest: {digest} size: {len(manifest)}"
    answer = requests.head(f"http://{world.open.host}/v2/pushed/basic/manifests/v1", timeout=10,
                           headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert answer.headers["Docker-Content-Digest"] == digest  # the same storage behind the open registry

    # a client that has not met the registry's challenge yet sends a body twice: anonymous, then with the credentials
    mark = world.basic.mark()
    client = RegistryClient(host, credentials=Credentials(USER, PASSWORD))
    try:
        assert client.put_manifest("pushed/basic", "again", manifest, OCI_MANIFEST) == digest
    finally:
        client.close()
    assert logged_puts(world.basic, mark) == [("error authorizing context", None), ("response completed", 201)]  # 401, then again


def test_token_scopes_of_a_push_and_a_mount(world: World, archives: dict[str, Path], tmp_path: Path) -> None:
    host = world.token.host
    one, two = f"{host}/pushed/tok-one:v1", f"{host}/pushed/tok-two:v1"
    load(tmp_path, archives["app1"], one)
    load(tmp_path, archives["app2"], two)
    anonymous = cli(tmp_path, "push", one)
    assert anonymous.rc == 1
    assert anonymous.err.startswith(f"Error: registry {host}: unauthorized") and anonymous.err.count("\n") == 1
    login(tmp_path, host)
    assert cli(tmp_path, "push", one).rc == 0
    before = len(world.tokens.issued)
    result = cli(tmp_path, "push", two)
    assert result.rc == 0, result.err
    assert "Mounted from pushed/tok-one" in " ".join(result.lines)
    issued = world.tokens.issued[before:]
    assert [(t["user"], t["scopes"]) for t in issued] == [
        (USER, ["repository:pushed/tok-two:pull,push"]),
        (USER, ["repository:pushed/tok-two:pull,push", "repository:pushed/tok-one:pull"]),
    ]


def test_all_tags_and_quiet(world: World, archives: dict[str, Path], tmp_path: Path) -> None:
    repo = f"{world.open.host}/pushed/all"
    load(tmp_path, archives["app1"], f"{repo}:v1")
    load(tmp_path, archives["app2"], f"{repo}:v2")
    result = cli(tmp_path, "push", "-a", repo)
    assert result.rc == 0, result.err
    v1, _ = layout_manifest(world, "app1")
    v2, manifest2 = layout_manifest(world, "app2")
    digests = [line.split(" size:")[0] for line in result.lines if ": digest: " in line]
    assert digests == [f"v1: digest: {v1}", f"v2: digest: {v2}"]
    assert result.lines.count(f"The push refers to repository [{repo}]") == 1
    base = layers_of(manifest2)[0]
    assert f"{short(base)}: Layer already exists" in result.lines  # pushed with v1 a moment before

    quiet = cli(tmp_path, "push", "-q", f"{repo}:v1")
    assert (quiet.rc, quiet.out, quiet.err) == (0, f"{repo}:v1\n", "")
    quiet = cli(tmp_path, "image", "push", "-a", "-q", repo)
    assert (quiet.rc, quiet.out, quiet.err) == (0, f"{repo}\n", "")
    refused = cli(tmp_path, "push", "-a", f"{repo}:v1")
    assert (refused.rc, refused.err) == (1, "Error: tag can't be used with --all-tags/-a\n")


def test_errors_are_one_line(world: World, archives: dict[str, Path], tmp_path: Path) -> None:
    host = world.open.host
    # Docker's words: scripts look for them
    missing = cli(tmp_path, "push", f"{host}/pushed/none")
    assert missing.rc == 1
    assert missing.out == f"Using default tag: latest\nThe push refers to repository [{host}/pushed/none]\n"
    assert missing.err == f"Error: An image does not exist locally with the tag: {host}/pushed/none\n"
    nothing = cli(tmp_path, "push", "-a", f"{host}/pushed/none")
    assert (nothing.rc, nothing.err) == (1, f"Error: An image does not exist locally with the tag: {host}/pushed/none\n")
    load(tmp_path, archives["app1"], f"{host}/pushed/some:v1")
    other_tag = cli(tmp_path, "push", f"{host}/pushed/some:v2")
    assert (other_tag.rc, other_tag.err) == (1, f"Error: tag does not exist: {host}/pushed/some:v2\n")
    by_digest = cli(tmp_path, "push", f"{host}/pushed/none@sha256:{'0' * 64}")
    assert (by_digest.rc, by_digest.err) == (1, "Error: cannot push a digest reference\n")
    with Store(tmp_path) as store:  # a layer blob that changed in the store since it was verified
        row = store.meta.one("SELECT blob, blob_size AS size FROM image_layers WHERE position = 0")
        path = store.blobs.path(row["blob"])
    path.chmod(0o644)
    os.truncate(path, row["size"] - 1)
    changed = cli(tmp_path, "push", f"{host}/pushed/some:v1")
    assert changed.rc == 1
    assert changed.err == f"Error: blob {row['blob']}: {row['size'] - 1} bytes in the store, {row['size']} in its descriptor\n"
    assert requests.get(f"http://{host}/v2/pushed/some/manifests/v1", timeout=10).status_code == 404

    port = regkit.free_port()
    name = f"127.0.0.1:{port}/app:v1"
    load(tmp_path, archives["app1"], name)
    gone = cli(tmp_path, "push", name)
    assert gone.rc == 1
    assert gone.err.startswith(f"Error: registry 127.0.0.1:{port}: unreachable (") and gone.err.count("\n") == 1
    assert "Connection refused" in gone.err


def push_through_a_liar(world: World, archives: dict[str, Path], tmp_path: Path, repo: str, true: str, told: str) -> tuple[str, regkit.Result]:
    """Push app1 to ``repo`` through a proxy that puts ``told`` wherever the registry answers ``true``."""
    proxy = Proxy(world.open.port, rewrite={true.encode(): told.encode()})
    name = f"{proxy.host}/pushed/{repo}:v1"
    load(tmp_path, archives["app1"], name)
    try:
        result = cli(tmp_path, "push", name)
    finally:
        proxy.stop()
    assert proxy.rewritten > 0
    return name, result


@pytest.mark.parametrize("answer", ["another", "malformed"])
def test_the_digest_a_registry_answers_for_a_pushed_manifest_is_checked(world: World, archives: dict[str, Path], tmp_path: Path,
                                                                         answer: str) -> None:
    """A proxy puts another digest in the registry's answer to the manifest's PUT: the push says so and fails."""
    digest, _ = layout_manifest(world, "app1")
    told = sha(b"another manifest") if answer == "another" else "sha256:" + "z" * 64
    name, result = push_through_a_liar(world, archives, tmp_path, f"lying-{answer}", digest, told)
    problem = f"the registry stored it as {told}" if answer == "another" else f"the registry answered with a malformed digest {told!r}"
    assert (result.rc, result.err) == (1, f"Error: manifest for {name}: {problem}\n")
    assert not [line for line in result.lines if ": digest: " in line]


def test_the_digest_a_registry_answers_for_an_uploaded_blob_is_checked(world: World, archives: dict[str, Path], tmp_path: Path) -> None:
    layer = layers_of(layout_manifest(world, "app1")[1])[-1]
    told = sha(b"another blob")
    _, result = push_through_a_liar(world, archives, tmp_path, "lying-blob", layer, told)
    assert (result.rc, result.err) == (1, f"Error: blob {layer}: the registry stored {told}\n")
    assert requests.get(f"http://{world.open.host}/v2/pushed/lying-blob/manifests/v1", timeout=10).status_code == 404


def test_a_blob_that_shrinks_while_it_is_sent_stops_the_push(world: World, archives: dict[str, Path], tmp_path: Path) -> None:
    """The size is checked before the upload; a blob cut while its bytes go out is caught as they are read."""
    name = f"{world.open.host}/pushed/shrinking:v1"
    load(tmp_path, archives["big"], name)
    (layer,) = layers_of(layout_manifest(world, "big")[1])
    with Store(tmp_path) as store:
        path = store.blobs.path(layer)
        cut = path.stat().st_size // 2
        seen: list[int] = []

        class Shrinking(Display):
            """Cuts the blob in the store when the first bytes of it have gone out."""

            def layer(self, ident: str, action: str, current: int = 0, total: int = 0) -> None:
                if action == "Pushing" and not seen:
                    seen.append(current)
                    path.chmod(0o644)
                    os.truncate(path, cut)
                super().layer(ident, action, current, total)

        client = RegistryClient(world.open.host)
        try:
            with pytest.raises(CorruptArchive) as caught:
                Pusher(store, client, Shrinking(io.StringIO(), terminal=True)).push(reference.parse(name))
        finally:
            client.close()
    assert seen and 0 < seen[0] < cut
    assert str(caught.value) == f"blob {layer}: ended at byte {cut} while it was sent (changed in the store?)"
    assert requests.head(f"http://{world.open.host}/v2/pushed/shrinking/blobs/{layer}", timeout=10).status_code == 404
    assert requests.get(f"http://{world.open.host}/v2/pushed/shrinking/manifests/v1", timeout=10).status_code == 404


def test_push_platform_checks_the_image_first(world: World, archives: dict[str, Path], tmp_path: Path) -> None:
    """An image here holds one platform: --platform must name it, or nothing is sent."""
    repo = f"{world.open.host}/pushed/platform"
    load(tmp_path, archives["app1"], f"{repo}:v1")
    refused = cli(tmp_path, "push", "--platform", "linux/arm64", f"{repo}:v1")
    assert (refused.rc, refused.out, refused.err) == (1, "", f'Error: image "{repo}:v1": found, but it does not match the'
                                                             " specified platform: wanted linux/arm64, actual: linux/amd64\n")
    assert requests.get(f"http://{world.open.host}/v2/pushed/platform/tags/list", timeout=10).status_code == 404
    both = cli(tmp_path, "push", "-a", "--platform", "linux/amd64", repo)
    assert (both.rc, both.err) == (1, "Error: --platform can't be used with --all-tags/-a\n")
    pushed = cli(tmp_path, "push", "-q", "--platform", "linux/amd64", f"{repo}:v1")
    assert (pushed.rc, pushed.out) == (0, f"{repo}:v1\n"), pushed.err


def test_credentials_do_not_follow_an_upload_to_another_origin(world: World, archives: dict[str, Path], tmp_path: Path) -> None:
    """An upload whose Location is on another origin (here the same server under the name
    localhost) is sent there without the registry's credentials: the basic registry refuses it."""
    def hook(asked: Asked) -> Answer | None:
        if asked.method != "POST":
            return None
        status, headers, body = asked.forward()
        return status, {k: v.replace("//127.0.0.1:", "//localhost:") if k.lower() == "location" else v for k, v in headers.items()}, body

    front = Front(world.basic.port, hook)
    name = f"{front.host}/pushed/elsewhere:v1"
    load(tmp_path, archives["app1"], name)
    try:
        login(tmp_path, front.host)
        result = cli(tmp_path, "push", name)
    finally:
        front.stop()
    assert result.rc == 1
    assert result.err.startswith("Error: blob sha256:") and result.err.endswith(": unauthorized: authentication required\n"), result.err
    elsewhere = [a for a in front.asked if str(a.header("Host")).startswith("localhost:")]
    assert elsewhere and [a.header("Authorization") for a in elsewhere] == [None] * len(elsewhere)
    assert any(a.header("Authorization") for a in front.asked)  # the registry's own origin had them


def push_big_through(world: World, archives: dict[str, Path], tmp_path: Path, repo: str, hook: regkit.Hook | None,
                     chunk: int) -> tuple[Front, int]:
    """Push the big image to ``repo`` through a ``Front`` of the open registry, in chunks of ``chunk``
    bytes; the front, and the size of the layer."""
    front = Front(world.open.port, hook)
    name = f"{front.host}/pushed/{repo}:v1"
    load(tmp_path, archives["big"], name)
    (layer,) = layers_of(layout_manifest(world, "big")[1])
    try:
        with Store(tmp_path) as store:
            client = RegistryClient(front.host)
            try:
                Pusher(store, client, chunk_size=chunk).push(reference.parse(name))
            finally:
                client.close()
    finally:
        front.stop()
    return front, world.open.blob_path(layer).stat().st_size


def patch_ranges(front: Front) -> list[str | None]:
    """The Content-Range of each PATCH the front was sent, in order."""
    return [a.header("Content-Range") for a in front.asked if a.method == "PATCH"]


def chunk_ranges(size: int, chunk: int) -> list[str]:
    """A blob of size bytes in chunks of chunk bytes: each one's first and last byte, inclusive."""
    return [f"{start}-{min(start + chunk, size) - 1}" for start in range(0, size, chunk)]


def test_each_chunk_names_its_bytes_in_content_range(world: World, archives: dict[str, Path], tmp_path: Path) -> None:
    """A PATCH's Content-Range is the chunk's first and last byte, inclusive, as the spec has it."""
    chunk = 1 << 20
    front, size = push_big_through(world, archives, tmp_path, "ranges", None, chunk)
    assert patch_ranges(front) == chunk_ranges(size, chunk)


def test_a_registry_s_minimum_chunk_length_is_honoured(world: World, archives: dict[str, Path], tmp_path: Path) -> None:
    """A registry that names a minimum chunk length (OCI-Chunk-Min-Length) gets chunks that long, not shorter."""
    least = 2 << 20

    def hook(asked: Asked) -> Answer | None:
        if asked.method != "POST":
            return None
        status, headers, body = asked.forward()
        return status, {**headers, "OCI-Chunk-Min-Length": str(least)}, body

    front, size = push_big_through(world, archives, tmp_path, "least", hook, 1 << 20)
    assert patch_ranges(front) == chunk_ranges(size, least)


def test_a_chunk_the_registry_did_not_take_whole_stops_the_push(world: World, archives: dict[str, Path], tmp_path: Path) -> None:
    """The Range a registry answers to a PATCH must end where the chunk did: bytes missing there stop the push."""
    chunk = 1 << 20

    def hook(asked: Asked) -> Answer | None:
        if asked.method != "PATCH":
            return None
        status, headers, body = asked.forward()
        return status, {k: f"0-{chunk - 2}" if k.lower() == "range" else v for k, v in headers.items()}, body

    with pytest.raises(RegistryError) as caught:
        push_big_through(world, archives, tmp_path, "short-chunk", hook, chunk)
    assert str(caught.value).endswith(f": the registry has bytes '0-{chunk - 2}' after a chunk ending at {chunk - 1}")
    assert requests.get(f"http://{world.open.host}/v2/pushed/short-chunk/manifests/v1", timeout=10).status_code == 404


def test_a_blob_of_exactly_the_chunk_size_goes_up_in_one_put(world: World, archives: dict[str, Path], tmp_path: Path) -> None:
    """Blobs up to the chunk size, that size included, are uploaded monolithically."""
    (layer,) = layers_of(layout_manifest(world, "big")[1])
    size = (world.layout / "blobs" / "sha256" / layer.split(":", 1)[1]).stat().st_size
    mark = world.open.mark()
    front, _ = push_big_through(world, archives, tmp_path, "one-put", None, size)
    assert not [a for a in front.asked if a.method == "PATCH"]
    assert [a.method for a in front.asked if f"digest={layer}" in a.path] == ["PUT"]
    assert len([r for r in world.open.requests(mark) if r["method"] == "PUT" and r["status"] == 201]) == 3  # layer, config, manifest


def test_a_blob_is_mounted_from_three_repositories_at_most(world: World, archives: dict[str, Path], tmp_path: Path) -> None:
    """As dockerd, at most three source repositories are tried for one blob before it is uploaded."""
    host = world.open.host
    target = f"{host}/pushed/many-target:v1"
    ghosts = [f"pushed/many-{c}" for c in "abcd"]
    load(tmp_path, archives["app1"], *(f"{host}/{g}:v1" for g in ghosts), target)
    layers = layers_of(layout_manifest(world, "app1")[1])
    mark = world.open.mark()
    result = cli(tmp_path, "push", target)
    assert result.rc == 0, result.err
    answers = world.open.requests(mark)
    for layer in layers:
        tried = [r["uri"].split("&from=")[1] for r in answers if f"mount={layer}" in r["uri"]]
        assert tried == ghosts[:3]
