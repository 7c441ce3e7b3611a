"""search over a registry's catalog, and manifest inspect, against the real registry; search over
Docker's search API, which the distribution registry lacks, against a server that keeps it.

Where the Docker CLI is installed, ``docker manifest inspect`` (which talks to
the registry itself, no daemon needed) prints the reference output and ours
must be the same bytes.
"""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from regkit import PASSWORD, USER, Answer, Asked, Front, SearchServer, World, cli

from layerstore.registry import client as client_module
from layerstore.registry.client import MANIFEST_ACCEPT
from layerstore.formatting import tabwrite
from layerstore.registry import search as search_module
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


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_search_of_a_registry_that_wants_credentials(world: World, tmp_path: Path, kind: str) -> None:
    """The registry has no /v1/search (404 there, credentials or not): its catalog, which needs a login."""
    host = getattr(world, kind).host
    anonymous = cli(tmp_path, "search", f"{host}/app")
    assert anonymous.rc == 1 and anonymous.err.startswith(f"Error: registry {host}: unauthorized"), anonymous.err
    assert cli(tmp_path, "login", host, "-u", USER, "--password-stdin", stdin=PASSWORD + "\n").rc == 0
    result = cli(tmp_path, "search", "--format", "{{.Name}}", f"{host}/app")
    assert (result.rc, result.lines) == (0, [f"{host}/{a}" for a in APPS]), result.err


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
    assert result.err == f"Error: registry 127.0.0.1:{world.tokens.port}: offers no search (neither Docker's search API, /v1/search, nor /v2/_catalog)\n"


SEARCHABLE = [
    {"name": "library/app", "description": "The app,\nin two lines", "star_count": 12, "is_official": True, "is_automated": False},
    {"name": "tools/app-debug", "description": "Debug builds of the app, with symbols and sources, for every release",
     "star_count": 3, "is_official": False, "is_automated": True},
    {"name": "appliance", "description": "", "star_count": 0, "is_official": False, "is_automated": False},
    {"name": "other", "description": "holds no match", "star_count": 99, "is_official": True, "is_automated": False},
]


@pytest.fixture
def searchable() -> Iterator[SearchServer]:
    server = SearchServer(SEARCHABLE)
    yield server
    server.stop()


def test_search_asks_a_registry_that_keeps_dockers_search_api(searchable: SearchServer, tmp_path: Path) -> None:
    """As the Docker daemon searches a private registry: ``/v1/search``, its answer filtered as dockerd filters."""
    term = f"{searchable.host}/app"

    def names(*args: str) -> list[str]:
        result = cli(tmp_path, "search", "--format", "{{.Name}}", *args, term)
        assert result.rc == 0, result.err
        return result.lines

    result = cli(tmp_path, "search", term)
    assert (result.rc, result.err) == (0, "")
    assert result.out == tabwrite(
        "NAME\tDESCRIPTION\tSTARS\tOFFICIAL\n"
        "library/app\tThe app, in two lines\t12\t[OK]\n"
        f"tools/app-debug\t{SEARCHABLE[1]['description'][:44]}…\t3\t\n"  # Docker's Ellipsis(description, 45)
        "appliance\t\t0\t\n"
    )
    assert searchable.asked == [({"q": ["app"], "n": ["25"]}, "true")]
    assert names("-f", "stars=1", "-f", "stars=5") == ["library/app"]  # the largest of them, as dockerd takes it
    assert names("-f", "stars=3") == ["library/app", "tools/app-debug"]
    assert names("-f", "is-official=true") == ["library/app"]
    assert names("-f", "is-official=false") == ["tools/app-debug", "appliance"]
    assert names("-f", "is-automated=true") == []  # automated builds are gone from Docker Hub: dockerd finds none
    assert names("-f", "is-automated=false") == ["library/app", "appliance"]
    assert names("--limit", "2") == ["library/app", "tools/app-debug"] and searchable.asked[-1][0]["n"] == ["2"]
    full = cli(tmp_path, "search", "--no-trunc", "--format", "{{.Description}}|{{.StarCount}}|{{.IsOfficial}}", term)
    assert full.lines == ["The app, in two lines|12|[OK]", f"{SEARCHABLE[1]['description']}|3|", "|0|"]
    as_json = cli(tmp_path, "search", "--format", "json", "--limit", "1", term)
    assert json.loads(as_json.out) == {"Description": "The app, in two lines", "IsAutomated": "false", "IsOfficial": "true",
                                       "Name": "library/app", "StarCount": "12"}


def test_docker_hub_is_asked_through_the_same_api(searchable: SearchServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A term without a registry searches Docker Hub (here the server stands in for its search endpoint)."""
    monkeypatch.setattr(search_module, "HUB_SEARCH", f"http://{searchable.host}/v1/search")
    result = cli(tmp_path, "search", "--format", "{{.Name}} {{.StarCount}}", "app")
    assert (result.rc, result.lines) == (0, ["library/app 12", "tools/app-debug 3", "appliance 0"])
    assert searchable.asked == [({"q": ["app"], "n": ["25"]}, None)]


def test_a_malformed_search_answer_is_one_line(tmp_path: Path) -> None:
    server = SearchServer([{"name": "app", "star_count": "many"}])
    try:
        result = cli(tmp_path, "search", f"{server.host}/app")
    finally:
        server.stop()
    assert (result.rc, result.out, result.err) == (1, "", f"Error: search on {server.host}: malformed answer\n")


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


def test_search_of_the_catalog_ignores_case(world: World, tmp_path: Path) -> None:
    result = cli(tmp_path, "search", "--format", "{{.Name}}", f"{world.open.host}/APP")
    assert (result.rc, result.lines) == (0, [f"{world.open.host}/{a}" for a in APPS]), result.err


@pytest.mark.parametrize("back_to", ["1", "2"], ids=["the first page", "a later page"])
def test_catalog_pages_that_link_in_a_loop_are_each_read_once(world: World, tmp_path: Path, back_to: str) -> None:
    """A registry whose Link headers lead back to a page already read, the first one (asked
    by a path, the others by the Link's URL) included: the listing ends there."""
    answered: list[str] = []

    def link(page: str) -> str:
        return "/v2/_catalog?n=1000" + ("" if page == "1" else f"&page={page}")

    def hook(asked: Asked) -> Answer | None:
        if not asked.path.startswith("/v2/_catalog"):
            return None
        answered.append(asked.path)
        page = asked.path.rpartition("page=")[2] if "page=" in asked.path else "1"
        following = {"1": "2", "2": "3", "3": back_to}[page]
        headers = {"Content-Type": "application/json"}
        if len(answered) < 10:  # a registry that loops for ever would hang a client without the guard
            headers["Link"] = f'<{link(following)}>; rel="next"'
        return 200, headers, json.dumps({"repositories": [f"loop/app{page}"]}).encode()

    front = Front(world.open.port, hook)
    try:
        result = cli(tmp_path, "search", "--format", "{{.Name}}", f"{front.host}/app")
    finally:
        front.stop()
    assert (result.rc, result.lines) == (0, [f"{front.host}/loop/app{n}" for n in "123"]), result.err
    assert answered == [link(n) for n in "123"]


def test_a_catalog_page_on_another_origin_is_asked_without_the_registrys_credentials(world: World, tmp_path: Path) -> None:
    """A Link to the next page may name another host: it is read, but the credentials of the
    registry stay with the registry, as they do for its redirects and upload locations."""
    def elsewhere_hook(asked: Asked) -> Answer | None:
        body = json.dumps({"repositories": ["elsewhere/app"]}).encode()
        return 200, {"Content-Type": "application/json"}, body

    elsewhere = Front(world.open.port, elsewhere_hook)

    def hook(asked: Asked) -> Answer | None:
        if not asked.path.startswith("/v2/_catalog"):
            return None
        status, headers, body = asked.forward()
        if status == 200:
            headers["Link"] = f'<http://{elsewhere.host}/v2/_catalog?n=1000&last=x>; rel="next"'
        return status, headers, body

    front = Front(world.basic.port, hook)
    try:
        assert cli(tmp_path, "login", front.host, "-u", USER, "--password-stdin", stdin=PASSWORD + "\n").rc == 0
        result = cli(tmp_path, "search", "--format", "{{.Name}}", f"{front.host}/app")
    finally:
        front.stop()
        elsewhere.stop()
    assert (result.rc, result.lines) == (0, [f"{front.host}/{a}" for a in APPS] + [f"{front.host}/elsewhere/app"]), result.err
    assert [a.path for a in elsewhere.asked] == ["/v2/_catalog?n=1000&last=x"]
    assert elsewhere.asked[0].header("Authorization") is None
    assert [a for a in front.asked if a.path.startswith("/v2/_catalog")][-1].header("Authorization")  # the page it gave


def test_docker_hub_answers_in_its_newer_fields_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Docker Hub's ``repo_name`` and ``short_description`` are a result's name and description."""
    server = SearchServer([{"repo_name": "library/app", "short_description": "The app", "star_count": 5, "is_official": True}])
    monkeypatch.setattr(search_module, "HUB_SEARCH", f"http://{server.host}/v1/search")
    try:
        result = cli(tmp_path, "search", "--format", "{{.Name}}|{{.Description}}|{{.StarCount}}|{{.IsOfficial}}", "app")
    finally:
        server.stop()
    assert (result.rc, result.lines) == (0, ["library/app|The app|5|[OK]"]), result.err


@pytest.mark.parametrize("name", ["docker.io", "index.docker.io", "registry-1.docker.io"])
def test_every_name_of_docker_hub_in_a_term_searches_docker_hub(searchable: SearchServer, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(search_module, "HUB_SEARCH", f"http://{searchable.host}/v1/search")
    result = cli(tmp_path, "search", "--format", "{{.Name}}", f"{name}/app")
    assert (result.rc, result.lines) == (0, ["library/app", "tools/app-debug", "appliance"]), result.err
    assert searchable.asked == [({"q": ["app"], "n": ["25"]}, None)]
