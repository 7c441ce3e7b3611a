"""Registry fixtures: real ``docker-registry`` instances over one storage, and the images pushed there.

One fixture per test run builds the images with umoci and pushes them with
skopeo to an open registry; a basic-auth (htpasswd), a token-auth and a
redirecting (blobs answered with a 307 to a separate blob server) registry
serve the same storage directory, so every image is there four ways without
pushing it four times. Each test gets its own store and its own ``DOCKER_CONFIG``.
"""
from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import regkit
from regkit import PASSWORD, USER, Registry, TokenServer, World, build, write

TOOLS = ("docker-registry", "skopeo", "umoci", "htpasswd")

missing = [t for t in TOOLS if not shutil.which(t)]
if missing:
    pytest.skip(f"needs {', '.join(missing)} (apt-get install docker-registry apache2-utils skopeo umoci)", allow_module_level=True)


# -- images -----------------------------------------------------------------------------------


def base_layer(root: Path) -> None:
    write(root, "etc/os-release", 'NAME="Registry test"\n')
    write(root, "bin/tool.sh", "#!/bin/sh\necho tool\n", 0o755)
    os.symlink("tool.sh", root / "bin/tool")
    write(root, "srv/one", "1\n")
    os.link(root / "srv/one", root / "srv/one-link")
    write(root, "var/cache/old.db", "stale\n")
    (root / "opt/empty").mkdir(parents=True)
    (root / "opt/empty").chmod(0o750)


def app1_layer(root: Path) -> None:
    shutil.rmtree(root / "var/cache")
    write(root, "srv/app.txt", "app one\n", 0o600)


def app2_layer(root: Path) -> None:
    write(root, "srv/app.txt", "app two\n")
    os.unlink(root / "bin/tool")


def arm_layer(root: Path) -> None:
    write(root, "etc/arch", "arm64\n")


def big_layer(root: Path) -> None:
    write(root, "data/big.bin", os.urandom(6 << 20))  # incompressible: the blob is as big


def bad_layer(root: Path) -> None:
    write(root, "data/bad.bin", os.urandom(256 << 10))


def zstd_layers() -> list[regkit.Change]:
    return [lambda r: write(r, "z/one", os.urandom(1000).hex()), lambda r: write(r, "z/two", "two\n")]


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("registry")
    layout = work / "layout"
    build(layout, "base", [base_layer])
    build(layout, "app1", [app1_layer], base="base")
    build(layout, "app2", [app2_layer], base="base")
    build(layout, "arm", [arm_layer], base="base")
    regkit.set_platform(layout, "arm", "linux", "arm64", "v8")
    build(layout, "big", [big_layer])
    build(layout, "bad", [bad_layer])
    build(layout, "zimg", zstd_layers())
    app1 = regkit.descriptor(layout, "app1")
    regkit.make_index(
        layout, "multi",
        [("app1", {"architecture": "amd64", "os": "linux"}), ("arm", {"architecture": "arm64", "os": "linux", "variant": "v8"})],
        [regkit.attestation(layout, app1)],
    )
    regkit.make_index(layout, "armonly", [("arm", {"architecture": "arm64", "os": "linux"})])
    storage = work / "storage"
    tokens = TokenServer(work, {USER: PASSWORD})
    blobs = regkit.BlobServer(storage)
    basic = {"htpasswd": {"realm": "basic-realm", "path": str(regkit.htpasswd(work / "htpasswd", USER, PASSWORD))}}
    redirect = {"storage": [{"name": "redirect", "options": {"baseurl": blobs.url}}]}
    registries: list[Registry] = []
    try:
        registries.append(Registry.start(work / "open", storage))
        registries.append(Registry.start(work / "basic", storage, basic))
        registries.append(Registry.start(work / "token", storage, tokens.registry_auth()))
        registries.append(Registry.start(work / "redirecting", storage, basic, middleware=redirect))
        reg = registries[0].host
        regkit.push(layout, "zimg", f"{reg}/zstd/app:v1", "--dest-compress-format", "zstd")
        for tag, dest in (("base", "base:v1"), ("app1", "app1:v1"), ("app2", "app2:v1"), ("big", "big:v1"), ("bad", "bad:v1"),
                          ("app1", "tags/app:v1"), ("app2", "tags/app:v2"), ("base", "tags/app:v3"), ("base", "public/base:v1")):
            regkit.push(layout, tag, f"{reg}/{dest}")
        regkit.push(layout, "multi", f"{reg}/multi:latest", "--all", "--preserve-digests")
        regkit.push(layout, "base", f"{reg}/mixed/app:base")
        regkit.push(layout, "armonly", f"{reg}/mixed/app:armonly", "--all", "--preserve-digests")
        regkit.push_uncompressed(layout, "app1", reg, "raw/app", "v1")
        open_, basic_, token, redirecting = registries
        yield World(open_, basic_, token, redirecting, tokens, blobs, layout, work)
    finally:
        for registry in registries:
            registry.stop()
        tokens.stop()
        blobs.stop()


# -- per test ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Credentials of this test only: never the user's ~/.docker."""
    path = tmp_path / "docker-config"
    monkeypatch.setenv("DOCKER_CONFIG", str(path))
    monkeypatch.delenv("LAYERSTORE_INSECURE_REGISTRIES", raising=False)
    return path
