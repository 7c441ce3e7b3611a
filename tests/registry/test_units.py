"""The registry package's pure parts: platforms, index entry choice, challenges, endpoints, Go JSON, output."""
from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from regkit import RUNNER, World, runner_env

from layerstore.errors import InvalidReference, NotFound
from layerstore.registry import gojson
from layerstore.registry.auth import parse_challenges
from layerstore.registry.client import Endpoint, endpoint
from layerstore.platforms import Platform, host
from layerstore.registry.progress import Display, progress_bar
from layerstore.registry.pull import choose_manifest

M = "application/vnd.oci.image.manifest.v1+json"


@pytest.mark.parametrize(("text", "expected"), [
    ("linux/amd64", "linux/amd64"),
    ("linux/x86_64", "linux/amd64"),
    ("linux/amd64/v1", "linux/amd64"),
    ("linux/arm64/v8", "linux/arm64"),
    ("linux/aarch64", "linux/arm64"),
    ("linux/arm", "linux/arm/v7"),
    ("linux/armhf", "linux/arm/v7"),
    ("linux/arm/6", "linux/arm/v6"),
    ("arm64", "linux/arm64"),
    ("x86_64", "linux/amd64"),
    ("armhf", "linux/arm/v7"),
    ("Windows/AMD64", "windows/amd64"),
    ("linux/riscv64", "linux/riscv64"),
    ("plan9/unknown-arch", "plan9/unknown-arch"),  # two parts are taken as they are
])
def test_platforms_normalise_as_containerd(text: str, expected: str) -> None:
    assert str(Platform.parse(text)) == expected


@pytest.mark.parametrize("text", ["", "linux/", "a/b/c/d", "/amd64", "bogus", "linux/amd 64", "linux/amd64/v8@x"])
def test_bad_platforms(text: str) -> None:
    with pytest.raises(InvalidReference):
        Platform.parse(text)


def test_an_os_or_an_architecture_alone_takes_the_rest_from_this_machine() -> None:
    here = host()
    assert Platform.parse("linux") == here
    assert Platform.parse("windows") == Platform("windows", here.architecture, here.variant)
    assert Platform.parse("macos") == Platform("darwin", here.architecture, here.variant)
    assert Platform.parse("s390x") == Platform(here.os, "s390x")


def entry(digest_char: str, platform: dict[str, str] | None, **annotations: str) -> dict[str, object]:
    out: dict[str, object] = {"mediaType": M, "digest": "sha256:" + digest_char * 64, "size": 10}
    if platform is not None:
        out["platform"] = platform
    if annotations:
        out["annotations"] = annotations
    return out


INDEX = json.dumps({"manifests": [
    entry("a", {"os": "unknown", "architecture": "unknown"}, **{"vnd.docker.reference.type": "attestation-manifest"}),
    entry("b", {"os": "linux", "architecture": "arm", "variant": "v6"}),
    entry("c", {"os": "linux", "architecture": "arm64", "variant": "v8"}),
    entry("d", {"os": "linux", "architecture": "amd64"}),
    entry("e", {"os": "linux", "architecture": "arm", "variant": "v7"}),
    entry("f", {"os": "windows", "architecture": "amd64"}),
]}).encode()


@pytest.mark.parametrize(("want", "chosen"), [
    ("linux/amd64", "d"), ("linux/arm64", "c"), ("linux/arm/v7", "e"), ("linux/arm/v6", "b"), ("windows/amd64", "f"),
])
def test_choose_manifest(want: str, chosen: str) -> None:
    assert choose_manifest(INDEX, Platform.parse(want), "image x").digest == "sha256:" + chosen * 64


def test_arm_v7_falls_back_to_v6_and_the_error_lists_platforms() -> None:
    index = json.dumps({"manifests": [entry("b", {"os": "linux", "architecture": "arm", "variant": "v6"})]}).encode()
    assert choose_manifest(index, Platform.parse("linux/arm/v7"), "x").digest.endswith("b" * 64)
    with pytest.raises(NotFound) as caught:
        choose_manifest(INDEX, Platform.parse("linux/ppc64le"), "image x")
    assert str(caught.value) == (
        "image x: no matching manifest for linux/ppc64le in the manifest list entries "
        "(it has: linux/arm/v6, linux/arm64, linux/amd64, linux/arm/v7, windows/amd64)"
    )


def test_an_index_without_platforms_gives_its_first_image() -> None:
    index = json.dumps({"manifests": [entry("a", None), entry("b", None)]}).encode()
    assert choose_manifest(index, Platform.parse("linux/amd64"), "x").digest.endswith("a" * 64)


def test_challenges() -> None:
    (bearer,) = parse_challenges('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"')
    assert bearer.scheme == "bearer"
    assert bearer.params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io", "scope": "repository:library/busybox:pull"}
    both = parse_challenges('Bearer realm="a\\"b", error="insufficient_scope", Basic realm=plain')
    assert [(c.scheme, c.params) for c in both] == [("bearer", {"realm": 'a"b', "error": "insufficient_scope"}), ("basic", {"realm": "plain"})]


def test_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    assert endpoint("docker.io").base_url == "https://registry-1.docker.io"
    assert endpoint("localhost:5000").base_url == "http://localhost:5000"
    assert endpoint("127.0.0.5:80").base_url == "http://127.0.0.5:80"
    assert endpoint("[::1]:5000").base_url == "http://[::1]:5000"
    assert endpoint("registry.example:5000").base_url == "https://registry.example:5000"
    assert endpoint("registry.example:5000").verify and endpoint("registry.example:5000").fallback is None
    insecure = Endpoint("registry.example:5000", "https://registry.example:5000", verify=False,
                        fallback="http://registry.example:5000")  # HTTPS unchecked, then plain HTTP, as Docker asks
    assert endpoint("registry.example:5000", ["registry.example:5000"]) == insecure
    monkeypatch.setenv("LAYERSTORE_INSECURE_REGISTRIES", "other.example, registry.example:5000")
    assert endpoint("registry.example:5000") == insecure


@pytest.mark.parametrize("doc", [
    '{"a":[],"b":{},"c":[1,{"d":"x\\"y, [z]"}],"e":-1.50e3,"f":null}',
    '  [ true , false ]\n',
    '{"nested":[[[]],[{}]]}',
])
def test_go_indent_and_compact_keep_the_text(doc: str) -> None:
    out = gojson.indent(doc)
    assert json.loads(out) == json.loads(doc)
    assert gojson.compact(out) == gojson.compact(doc)
    assert out.endswith(doc[len(doc.rstrip()):])  # trailing whitespace kept, as json.Indent does
    assert '"x\\"y, [z]"' in out or "x" not in doc
    assert gojson.indent('{"a":[],"b":{}}') == '{\n\t"a": [],\n\t"b": {}\n}'
    assert gojson.compact('{"a": "<&>"}') == '{"a":"\\u003c\\u0026\\u003e"}'


def test_progress_bar_as_docker_draws_it() -> None:
    assert progress_bar(0, 0) == ""
    assert progress_bar(1_500_000, 3_000_000) == "[" + "=" * 25 + ">" + " " * 25 + "]    1.5MB/3MB"
    assert progress_bar(1_500_000, 3_000_000, width=80) == "   1.5MB/3MB"


def test_terminal_display_rewrites_each_layers_line() -> None:
    out = io.StringIO()
    display = Display(out, terminal=True)
    display.status("v1", "Pulling from app")
    display.layer("aaaaaaaaaaaa", "Pulling fs layer")
    display.layer("bbbbbbbbbbbb", "Pulling fs layer")
    display.layer("aaaaaaaaaaaa", "Downloading", 5, 10)
    assert out.getvalue() == (
        "v1: Pulling from app\n"
        "\n\x1b[1A\x1b[2K\raaaaaaaaaaaa: Pulling fs layer \r\x1b[1B"
        "\n\x1b[1A\x1b[2K\rbbbbbbbbbbbb: Pulling fs layer \r\x1b[1B"
        "\x1b[2A\x1b[2K\raaaaaaaaaaaa: Downloading " + progress_bar(5, 10, display._width()) + "\r\x1b[2B"
    )


def test_pull_on_a_terminal_draws_progress(world: World, tmp_path: Path) -> None:
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    process = subprocess.Popen([sys.executable, str(RUNNER), "--root", str(tmp_path), "pull", world.name(world.open, "big:v1")],
                               stdout=child, stderr=subprocess.PIPE, env=runner_env())
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    process.wait(30)
    os.close(main)
    text = b"".join(chunks).decode()
    assert process.returncode == 0
    assert "\x1b[2K\r" in text and "Downloading [" in text and "Pull complete" in text
    assert text.rstrip().endswith(world.name(world.open, "big:v1"))


def test_attestations_nested_indexes_and_artifacts_are_never_chosen_whatever_their_platform() -> None:
    """An entry is an image of the index only when it is an image manifest and no attestation."""
    nested = {**entry("a", {"os": "linux", "architecture": "amd64"}), "mediaType": "application/vnd.oci.image.index.v1+json"}
    attestation = entry("b", {"os": "linux", "architecture": "amd64"}, **{"vnd.docker.reference.type": "attestation-manifest"})
    artifact = {**entry("c", {"os": "linux", "architecture": "amd64"}), "mediaType": "application/vnd.example.artifact+json"}
    index = json.dumps({"manifests": [nested, attestation, artifact, entry("d", {"os": "linux", "architecture": "amd64"})]}).encode()
    assert choose_manifest(index, Platform.parse("linux/amd64"), "x").digest == "sha256:" + "d" * 64


def test_of_entries_that_fit_as_well_the_first_is_chosen() -> None:
    index = json.dumps({"manifests": [entry(c, {"os": "linux", "architecture": "amd64"}) for c in "abc"]}).encode()
    assert choose_manifest(index, Platform.parse("linux/amd64"), "x").digest == "sha256:" + "a" * 64


def test_an_entry_without_a_platform_is_not_taken_when_others_name_theirs() -> None:
    """Only an index that names no platform at all gives its first image; otherwise the platform must be listed."""
    index = json.dumps({"manifests": [entry("a", None), entry("b", {"os": "linux", "architecture": "arm64"})]}).encode()
    with pytest.raises(NotFound) as caught:
        choose_manifest(index, Platform.parse("linux/amd64"), "image x")
    assert str(caught.value) == "image x: no matching manifest for linux/amd64 in the manifest list entries (it has: linux/arm64)"


def test_insecure_registries_named_in_any_case_and_separated_by_spaces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host names are case-insensitive; the variable takes commas, spaces or both between names."""
    assert not endpoint("Registry.Example:5000", ["registry.example:5000"]).verify
    monkeypatch.setenv("LAYERSTORE_INSECURE_REGISTRIES", "other.example registry.example:5000\tthird.example")
    assert endpoint("registry.example:5000").fallback == "http://registry.example:5000"
    assert endpoint("third.example").fallback == "http://third.example"
