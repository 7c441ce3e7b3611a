"""Credentials: login and logout against htpasswd and token registries, bearer tokens, redirects.

The basic registry checks an htpasswd file; the token registry sends clients
to a token server (``regkit.TokenServer``) that checks the same user and signs
JWTs the registry verifies. ``DOCKER_CONFIG`` is a directory of each test's own.
"""
from __future__ import annotations

import base64
import json
import stat
import time
from pathlib import Path

import pytest
from regkit import PASSWORD, USER, Answer, Asked, Front, Result, World, cli

from layerstore.registry.auth import HUB_AUTH_KEY, Credentials, DockerConfig
from layerstore.registry.client import RegistryClient


def login(tmp_path: Path, host: str, password: str = PASSWORD) -> Result:
    return cli(tmp_path, "login", host, "-u", USER, "--password-stdin", stdin=password + "\n")


def test_basic_auth_login_pull_logout(world: World, tmp_path: Path, docker_config: Path) -> None:
    host = world.basic.host
    name = f"{host}/app1:v1"
    denied = cli(tmp_path, "pull", name)
    assert denied.rc == 1
    assert denied.err.startswith(f"Error: registry {host}: unauthorized") and denied.err.count("\n") == 1

    wrong = login(tmp_path, host, "wrong")
    assert wrong.rc == 1
    assert wrong.err == f"Error: registry {host}: login failed: unauthorized (incorrect username or password)\n"
    assert not (docker_config / "config.json").exists()  # nothing is kept that the registry refused

    ok = login(tmp_path, host)
    assert (ok.rc, ok.out) == (0, "Login Succeeded\n")
    assert "stored unencrypted" in ok.err
    config = docker_config / "config.json"
    doc = json.loads(config.read_text())
    assert doc == {"auths": {host: {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}
    assert stat.S_IMODE(config.stat().st_mode) == 0o600

    pulled = cli(tmp_path, "pull", name)
    assert pulled.rc == 0, pulled.err
    assert pulled.lines[-1] == name

    out = cli(tmp_path, "logout", host)
    assert (out.rc, out.out) == (0, f"Removing login credentials for {host}\n")
    assert json.loads(config.read_text()) == {"auths": {}}
    assert cli(tmp_path, "pull", f"{host}/app2:v1").rc == 1


@pytest.mark.parametrize("server", [None, "docker.io", "index.docker.io", "registry-1.docker.io"])
def test_logout_of_docker_hub_by_any_of_its_names_removes_its_key(tmp_path: Path, docker_config: Path, server: str | None) -> None:
    """Docker keeps Docker Hub's credentials under https://index.docker.io/v1/; every name of the Hub finds them
    (the Docker CLI's logout finds them only without a server, and says the key then, as here)."""
    kept = {"auth": base64.b64encode(b"someone:secret").decode()}
    docker_config.mkdir()
    (docker_config / "config.json").write_text(json.dumps({"auths": {"https://index.docker.io/v1/": kept, "127.0.0.1:5000": kept}}))
    out = cli(tmp_path, "logout", *([server] if server else []))
    assert (out.rc, out.out, out.err) == (0, "Removing login credentials for https://index.docker.io/v1/\n", "")
    assert json.loads((docker_config / "config.json").read_text()) == {"auths": {"127.0.0.1:5000": kept}}


def test_login_with_password_stdin_needs_a_username_and_a_password(world: World, tmp_path: Path) -> None:
    result = cli(tmp_path, "login", world.basic.host, "--password-stdin", stdin="x\n")
    assert (result.rc, result.err) == (1, "Error: Must provide --username with --password-stdin\n")
    result = cli(tmp_path, "login", world.basic.host, "-u", USER, "--password-stdin", stdin="\n")
    assert (result.rc, result.err) == (1, "Error: Cannot perform an interactive login from a non TTY device\n")


def test_token_auth_anonymous_pull_of_a_public_repository(world: World, tmp_path: Path) -> None:
    before = len(world.tokens.issued)
    result = cli(tmp_path, "pull", f"{world.token.host}/public/base:v1")
    assert result.rc == 0, result.err
    issued = world.tokens.issued[before:]
    # one token for the whole pull (manifest, config, layers): cached per scope
    assert [(t["user"], t["scopes"]) for t in issued] == [(None, ["repository:public/base:pull"])]

    denied = cli(tmp_path, "pull", f"{world.token.host}/app1:v1")
    assert denied.rc == 1
    assert denied.err.startswith(f"Error: registry {world.token.host}: unauthorized") and denied.err.count("\n") == 1


def test_token_auth_login_and_pull(world: World, tmp_path: Path, docker_config: Path) -> None:
    host = world.token.host
    refused = world.tokens.refused
    wrong = login(tmp_path, host, "wrong")
    assert wrong.rc == 1
    assert "login failed" in wrong.err
    assert world.tokens.refused == refused + 1

    assert login(tmp_path, host).rc == 0
    before = len(world.tokens.issued)
    result = cli(tmp_path, "pull", f"{host}/app2:v1")
    assert result.rc == 0, result.err
    issued = world.tokens.issued[before:]
    assert [(t["user"], t["scopes"]) for t in issued] == [(USER, ["repository:app2:pull"])]
    assert issued[0]["access"] == [{"type": "repository", "name": "app2", "actions": ["pull"]}]

    found = cli(tmp_path, "search", "--format", "{{.Name}}", f"{host}/app")
    assert found.rc == 0, found.err
    assert f"{host}/app2" in found.lines  # the catalog needs a token of its own scope


def test_credentials_do_not_follow_a_redirect_to_blob_storage(world: World, tmp_path: Path) -> None:
    host = world.redirecting.host
    assert login(tmp_path, host).rc == 0
    seen = len(world.storage.paths)
    result = cli(tmp_path, "pull", f"{host}/app1:v1")
    assert result.rc == 0, result.err
    paths = world.storage.paths[seen:]
    assert paths and all(p.startswith("/docker/registry/v2/blobs/sha256/") for p in paths)  # config and layers
    assert world.storage.authorizations[seen:] == [None] * len(paths)


def test_config_file_keys_as_docker_writes_them(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    hub = base64.b64encode(b"hubuser:hubpass").decode()
    old = base64.b64encode(b"olduser:oldpass").decode()
    path.write_text(json.dumps({
        "auths": {HUB_AUTH_KEY: {"auth": hub}, "https://myreg.example:5000/v1/": {"auth": old}},
        "HttpHeaders": {"X-Keep": "me"},
    }))
    config = DockerConfig(path)
    assert config.get("docker.io") == Credentials("hubuser", "hubpass")
    assert config.get("myreg.example:5000") == Credentials("olduser", "oldpass")  # matched by host name
    assert config.get("other.example") is None
    config.set("other.example", Credentials("u", "p:with:colons"))
    assert DockerConfig(path).get("other.example") == Credentials("u", "p:with:colons")
    assert config.erase("myreg.example:5000")
    doc = json.loads(path.read_text())
    assert doc["HttpHeaders"] == {"X-Keep": "me"}  # the rest of the file stays
    assert set(doc["auths"]) == {HUB_AUTH_KEY, "other.example"}
    assert not DockerConfig(tmp_path / "missing.json").auths


def test_token_requests_name_the_service_and_the_account_and_ask_for_a_refresh_token_at_login_only(
        world: World, tmp_path: Path) -> None:
    """The realm is asked with the challenge's service and the user's account; ``offline_token``
    (a refresh token for the credentials file) at login, not for a pull."""
    host, tokens = world.token.host, world.tokens
    before = len(tokens.issued)
    assert login(tmp_path, host).rc == 0
    assert cli(tmp_path, "pull", "-q", f"{host}/app1:v1").rc == 0
    asked = [(t["scopes"], t["service"], t["account"], t["offline"]) for t in tokens.issued[before:]]
    assert asked == [([], [tokens.service], [USER], ["true"]), (["repository:app1:pull"], [tokens.service], [USER], None)]


def test_a_cached_token_is_renewed_before_it_expires(world: World) -> None:
    """A token is used until TOKEN_LEEWAY (10 s) before the end of its expires_in: one valid for 13 s, for 3 s."""
    tokens = world.tokens
    tokens.lifetime = 13
    client = RegistryClient(world.token.host)
    try:
        before = len(tokens.issued)
        client.manifest("public/base", "v1")
        client.manifest("public/base", "v1")
        assert len(tokens.issued) == before + 1  # cached
        time.sleep(3.2)
        client.manifest("public/base", "v1")
        assert len(tokens.issued) == before + 2  # due: asked for anew
    finally:
        tokens.lifetime = 300
        client.close()


def test_a_token_the_registry_stops_taking_is_fetched_anew(world: World, tmp_path: Path) -> None:
    """A cached token that the registry refuses (revoked, expired early) is not sent again: a new
    one is asked for, and the pull goes on."""
    revoked: list[str] = []

    def hook(asked: Asked) -> Answer | None:
        token = asked.header("Authorization")
        if token and not revoked:
            revoked.append(token)  # the manifest's token, refused from the next request on
        elif token in revoked:
            return asked.forward({k: v for k, v in asked.headers.items() if k.lower() != "authorization"})  # the registry's challenge
        return None

    front = Front(world.token.port, hook)
    before = len(world.tokens.issued)
    try:
        result = cli(tmp_path, "pull", f"{front.host}/public/base:v1")
    finally:
        front.stop()
    assert result.rc == 0, result.err
    assert len(world.tokens.issued) == before + 2
    refused = [a for a in front.asked if a.header("Authorization") == revoked[0]]
    assert len(refused) == 2  # the manifest, then the config once


def test_the_registry_s_own_key_wins_over_an_older_url_form_of_it(world: World, tmp_path: Path, docker_config: Path) -> None:
    """``host:port`` itself is read before ``https://host:port/v1/`` (which older clients wrote), wherever each is in the file."""
    host = world.basic.host
    wrong, right = (base64.b64encode(f"{USER}:{p}".encode()).decode() for p in ("wrong", PASSWORD))
    docker_config.mkdir()
    (docker_config / "config.json").write_text(json.dumps({"auths": {f"https://{host}/v1/": {"auth": wrong}, host: {"auth": right}}}))
    pulled = cli(tmp_path, "pull", "-q", f"{host}/app1:v1")
    assert (pulled.rc, pulled.err) == (0, "")


def test_an_auth_value_without_a_password_is_refused(world: World, tmp_path: Path, docker_config: Path) -> None:
    """``auth`` is base64 of ``user:password``: without the colon it is a broken file, said so, not a user without a password."""
    host = world.basic.host
    docker_config.mkdir()
    config = docker_config / "config.json"
    config.write_text(json.dumps({"auths": {host: {"auth": base64.b64encode(USER.encode()).decode()}}}))
    result = cli(tmp_path, "pull", f"{host}/app1:v1")
    assert (result.rc, result.err) == (1, f"Error: credentials for {host} in {config}: the auth value is not base64 of user:password\n")


def test_each_request_carries_a_token_for_its_own_repository(world: World) -> None:
    """A token is asked for the scope of the request at hand, not the one the last challenge named:
    the first request to a second repository does not go out with the first repository's token."""
    front = Front(world.token.port)
    client = RegistryClient(front.host, credentials=Credentials(USER, PASSWORD))
    try:
        client.manifest("app1", "v1")
        client.manifest("app2", "v1")
    finally:
        client.close()
        front.stop()

    def granted(asked: Asked) -> list[str]:
        payload = str(asked.header("Authorization")).removeprefix("Bearer ").split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return [a["name"] for a in claims["access"]]

    sent = [(a.path, granted(a)) for a in front.asked if a.header("Authorization")]
    assert sent == [("/v2/app1/manifests/v1", ["app1"]), ("/v2/app2/manifests/v1", ["app2"])]
