"""search over a registry's catalog, and manifest inspect, against the real registry.

Where the Docker CLI is installed, ``docker manifest inspect`` (which talks to
the registry itself, no daemon needed) prints the reference output and ours
must be the same bytes.
"""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
from regkit import World, cli

from layerstore.registry import client as client_module
from layerstore.registry.client import MANIFEST_ACCEPT
from layerstore.registry.gojson import indent

APPS = ["app1", "app2", "mixed/app", "raw/app", "tags/app", "zstd/app"]


def test_search_lists_the_catalog_entries_holding_the_term(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "PAGE_SIZE", 2)  # the catalog in pages of two, linked by Link headers
    mark = world.open.mark()
    host = world.open.host
    result = cli(tmp_path, "search", f"{host}/app")
    assert result.rc == 0, result.err
    assert result.lines[0].split() == ["NAME", "DESCRIPTION", "STARS", "OFFICIAL"]
    assert [line.split() for line in result.lines[1:]] == [[f"{host}/{a}", "0"] for a in APPS]
    pages = [r for r in world.open.requests(mark) if r["uri"].startswith("/v2/_catalog")]
    assert len(pages) > 3 and pages[0]["uri"] == "/v2/_catalog?n=2" and "last=" in pages[1]["uri"]


def test_search_format_limit_and_filters(world: World, tmp_path: Path) -> None:
    host = world.open.host

    def names(*args: str) -> list[str]:
        result = cli(tmp_path, "search", "--format", "{{.Name}}|{{.StarCount}}|{{.IsOfficial}}|{{.Description}}", *args, f"{host}/app")
        assert result.rc == 0, result.err
        return result.lines

    assert names() == [f"{host}/{a}|0||" for a in APPS]
    assert names("--limit", "2") == [f"{host}/{a}|0||" for a in APPS[:2]]
    assert names("-f", "stars=1") == []
    assert names("-f", "is-official=true") == []
    assert len(names("-f", "is-official=false", "--no-trunc")) == len(APPS)
    assert names("-f", "is-automated=true") == []
    # in JSON the search context says its flags as Go's true and false, not [OK] and nothing
    result = cli(tmp_path, "search", "--format", "json", "--limit", "1", f"{host}/app")
    assert result.rc == 0, result.err
    assert json.loads(result.out) == {"Description": "", "IsAutomated": "false", "IsOfficial": "false",
                                      "Name": f"{host}/{APPS[0]}", "StarCount": "0"}
    result = cli(tmp_path, "search", "--format", "{{.IsOfficial}}|{{json .IsOfficial}}", "--limit", "1", f"{host}/app")
    assert (result.rc, result.out) == (0, '|""\n')
    for args, message in (
        (["-f", "stars=many"], "invalid filter 'stars=many'"),
        (["-f", "color=red"], "invalid filter 'color'"),
        (["-f", "is-official=maybe"], "invalid filter 'is-official=maybe'"),
        (["--limit", "101"], "limit 101 is outside the range of [1, 100]"),
    ):
        result = cli(tmp_path, "search", *args, f"{host}/app")
        assert (result.rc, result.err) == (1, f"Error: {message}\n")


def test_search_where_a_server_offers_none(world: World, tmp_path: Path) -> None:
    result = cli(tmp_path, "search", f"127.0.0.1:{world.tokens.port}/app")  # an HTTP server that is no registry
    assert result.rc == 1
    assert result.err == f"Error: registry 127.0.0.1:{world.tokens.port}: offers no search (neither Docker Hub's search API nor /v2/_catalog)\n"


def raw(world: World, repo: str, ref: str) -> bytes:
    r = requests.get(f"http://{world.open.host}/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}, timeout=10)
    r.raise_for_status()
    return r.content


def test_manifest_inspect_prints_the_registry_bytes_indented(world: World, tmp_path: Path) -> None:
    data = raw(world, "app1", "v1")
    result = cli(tmp_path, "manifest", "inspect", world.name(world.open, "app1:v1"))
    assert result.rc == 0, result.err
    assert result.out == indent(data.decode()) + "\n"
    assert json.loads(result.out) == json.loads(data)
    assert result.out.startswith('{\n\t"schemaVersion": 2,\n\t"config": {\n\t\t"mediaType"')


def test_manifest_inspect_verbose(world: World, tmp_path: Path) -> None:
    data = raw(world, "raw/app", "v1")
    result = cli(tmp_path, "manifest", "inspect", "-v", world.name(world.open, "raw/app:v1"))
    assert result.rc == 0, result.err
    doc = json.loads(result.out)
    assert list(doc) == ["Ref", "Descriptor", "Raw", "SchemaV2Manifest"]
    assert doc["Ref"] == f"{world.open.host}/raw/app:v1"
    assert doc["Descriptor"]["platform"] == {"architecture": "amd64", "os": "linux"}
    assert base64.b64decode(doc["Raw"]) == data
    assert doc["SchemaV2Manifest"] == json.loads(data)

    listing = json.loads(cli(tmp_path, "manifest", "inspect", "-v", world.name(world.open, "multi")).out)
    assert [item["Descriptor"].get("platform", {}).get("architecture") for item in listing] == ["amd64", "arm64", "unknown"]
    assert all(set(item) == {"Ref", "Descriptor", "Raw", "OCIManifest"} for item in listing)
    assert listing[1]["Ref"] == f"{world.open.host}/multi:latest@{listing[1]['Descriptor']['digest']}"


def test_manifest_inspect_of_an_unknown_tag(world: World, tmp_path: Path) -> None:
    result = cli(tmp_path, "manifest", "inspect", world.name(world.open, "app1:nope"))
    assert (result.rc, result.err) == (1, f"Error: manifest for {world.open.host}/app1:nope: not found: manifest unknown\n")


@pytest.mark.skipif(not shutil.which("docker"), reason="the Docker CLI is the reference output")
@pytest.mark.parametrize("args", [[], ["-v"]], ids=["plain", "verbose"])
@pytest.mark.parametrize("repo", ["app1:v1", "raw/app:v1", "multi:latest"])
def test_manifest_inspect_matches_the_docker_cli(world: World, tmp_path: Path, repo: str, args: list[str]) -> None:
    name = world.name(world.open, repo)
    docker = subprocess.run([str(shutil.which("docker")), "manifest", "inspect", "--insecure", *args, name],
                            check=False, capture_output=True, text=True, env={"DOCKER_CONFIG": str(tmp_path / "docker")})
    if docker.returncode != 0:
        pytest.skip(f"docker manifest inspect failed: {docker.stderr.strip()}")
    ours = cli(tmp_path, "manifest", "inspect", *args, name)
    assert ours.out == docker.stdout
