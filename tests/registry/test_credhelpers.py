"""Credential helpers: ``credsStore`` and ``credHelpers`` in config.json, as the Docker CLI reads them.

The helper is Debian's ``docker-credential-pass`` over a ``pass`` store with a
GnuPG key of the test's own (no passphrase); identity tokens are OAuth2
refresh tokens that the test's token server (``regkit.TokenServer``) hands out
and takes back in a POSTed form.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from regkit import PASSWORD, USER, Result, World, cli


@pytest.fixture
def pass_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An initialized ``pass`` store, encrypted to a key made for this test."""
    gnupg, store = tmp_path / "gnupg", tmp_path / "password-store"
    gnupg.mkdir(mode=0o700)
    monkeypatch.setenv("GNUPGHOME", str(gnupg))
    monkeypatch.setenv("PASSWORD_STORE_DIR", str(store))
    subprocess.run(["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key",
                    "layerstore test <test@layerstore.invalid>", "future-default", "default", "never"],
                   check=True, capture_output=True)
    listed = subprocess.run(["gpg", "--list-keys", "--with-colons"], check=True, capture_output=True, text=True).stdout
    fingerprint = next(line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr:"))
    subprocess.run(["pass", "init", fingerprint], check=True, capture_output=True)
    yield store
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], capture_output=True, check=False)


def helper(action: str, stdin: str) -> str:
    done = subprocess.run(["docker-credential-pass", action], input=stdin, check=True, capture_output=True, text=True)
    return done.stdout


def helper_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, script: str) -> None:
    """A credential helper docker-credential-NAME of this test's own: a shell script, first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    program = bin_dir / f"docker-credential-{name}"
    program.write_text(f"#!/bin/sh\n{script}\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def write_config(docker_config: Path, doc: dict[str, object]) -> Path:
    docker_config.mkdir(exist_ok=True)
    path = docker_config / "config.json"
    path.write_text(json.dumps(doc))
    return path


def login(tmp_path: Path, host: str) -> Result:
    return cli(tmp_path, "login", host, "-u", USER, "--password-stdin", stdin=PASSWORD + "\n")


def test_login_keeps_the_password_in_the_helper_and_pull_and_logout_use_it(
        world: World, tmp_path: Path, docker_config: Path, pass_store: Path) -> None:
    host = world.basic.host
    config = write_config(docker_config, {"credsStore": "pass"})
    assert cli(tmp_path, "pull", f"{host}/app1:v1").rc == 1

    ok = login(tmp_path, host)
    assert (ok.rc, ok.out, ok.err) == (0, "Login Succeeded\n", "")  # no warning: nothing is stored unencrypted
    assert json.loads(config.read_text()) == {"credsStore": "pass", "auths": {host: {}}}
    assert PASSWORD not in config.read_text()
    assert json.loads(helper("list", "")) == {host: USER}
    assert json.loads(helper("get", host))["Secret"] == PASSWORD

    pulled = cli(tmp_path, "pull", f"{host}/app1:v1")
    assert pulled.rc == 0, pulled.err

    out = cli(tmp_path, "logout", host)
    assert (out.rc, out.out, out.err) == (0, f"Removing login credentials for {host}\n", "")
    assert json.loads(helper("list", "")) == {}
    assert json.loads(config.read_text()) == {"credsStore": "pass", "auths": {}}
    assert cli(tmp_path, "pull", f"{host}/app2:v1").rc == 1


def test_a_registry_s_own_helper_wins_over_the_default_one_and_over_the_file(
        world: World, tmp_path: Path, docker_config: Path, pass_store: Path) -> None:
    basic, token = world.basic.host, world.token.host
    wrong = base64.b64encode(f"{USER}:wrong".encode()).decode()
    config = write_config(docker_config, {
        "credsStore": "nosuch", "credHelpers": {basic: "pass"}, "auths": {basic: {"auth": wrong}}})
    helper("store", json.dumps({"ServerURL": basic, "Username": USER, "Secret": PASSWORD}))
    pulled = cli(tmp_path, "pull", f"{basic}/app1:v1")
    assert pulled.rc == 0, pulled.err

    before = config.read_text()
    failed = cli(tmp_path, "pull", f"{token}/app2:v1")
    missing = "credential helper docker-credential-nosuch: not found in PATH"
    assert (failed.rc, failed.err) == (1, f"Error: registry {token}: {missing}\n")
    failed = login(tmp_path, token)  # checked with the registry, then not kept
    assert (failed.rc, failed.err) == (
        1, f"Error: registry {token}: credentials not saved: {missing}\n")
    assert config.read_text() == before


def test_an_identity_token_is_sent_to_the_realm_as_an_oauth2_refresh_token(
        world: World, tmp_path: Path, docker_config: Path, pass_store: Path) -> None:
    host, tokens = world.token.host, world.tokens
    identity = tokens.identity_token(USER)
    write_config(docker_config, {"credsStore": "pass"})
    helper("store", json.dumps({"ServerURL": host, "Username": "<token>", "Secret": identity}))
    before = len(tokens.issued)
    pulled = cli(tmp_path, "pull", f"{host}/app2:v1")
    assert pulled.rc == 0, pulled.err
    issued = tokens.issued[before:]
    assert [(t["user"], t["scopes"], t.get("grant"), t.get("client_id")) for t in issued] == [
        (USER, ["repository:app2:pull"], "refresh_token", "layerstore")]

    # the same token kept in the file, as the Docker CLI keeps it without a helper
    write_config(docker_config, {"auths": {host: {"identitytoken": identity}}})
    assert cli(tmp_path, "pull", f"{host}/app1:v1").rc == 0

    del tokens.refresh_tokens[identity]  # revoked
    refused = cli(tmp_path, "pull", f"{host}/app1:v1")
    assert (refused.rc, refused.err) == (1, f"Error: registry {host}: unauthorized: the identity token was refused\n")


@pytest.mark.parametrize("kept_by", ["file", "helper"])
def test_login_keeps_a_refresh_token_in_place_of_the_password_where_the_realm_hands_one_out(
        world: World, tmp_path: Path, docker_config: Path, pass_store: Path, kept_by: str) -> None:
    host, tokens = world.token.host, world.tokens
    config = write_config(docker_config, {"credsStore": "pass"} if kept_by == "helper" else {})
    tokens.refresh_on_login = True
    try:
        ok = login(tmp_path, host)
    finally:
        tokens.refresh_on_login = False
    assert (ok.rc, ok.out) == (0, "Login Succeeded\n"), ok.err
    assert PASSWORD not in config.read_text()
    if kept_by == "helper":
        record = json.loads(helper("get", host))
        assert record["Username"] == "<token>" and record["Secret"] in tokens.refresh_tokens
    else:
        entry = json.loads(config.read_text())["auths"][host]
        assert entry["auth"] == base64.b64encode(f"{USER}:".encode()).decode()  # the user, and no password
        assert tokens.refresh_tokens[entry["identitytoken"]] == USER
    before = len(tokens.issued)
    pulled = cli(tmp_path, "pull", f"{host}/app1:v1")
    assert pulled.rc == 0, pulled.err
    assert [t.get("grant") for t in tokens.issued[before:]] == ["refresh_token"]


def test_a_helper_record_without_a_secret_means_anonymous(world: World, tmp_path: Path, docker_config: Path,
                                                          pass_store: Path) -> None:
    """Debian's pass helper answers a server it keeps nothing for with an empty record: no credentials, no error."""
    write_config(docker_config, {"credsStore": "pass"})
    before = len(world.tokens.issued)
    pulled = cli(tmp_path, "pull", "-q", f"{world.token.host}/public/base:v1")
    assert (pulled.rc, pulled.err) == (0, "")
    assert [t["user"] for t in world.tokens.issued[before:]] == [None]


def test_a_helper_that_says_it_keeps_nothing_means_anonymous(world: World, tmp_path: Path, docker_config: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The helpers' own "credentials not found in native keychain" (their exit status 1 for a server
    they keep nothing for) is no error: the registry is asked without credentials."""
    helper_on_path(tmp_path, monkeypatch, "empty", "echo 'credentials not found in native keychain'\nexit 1")
    write_config(docker_config, {"credsStore": "empty"})
    before = len(world.tokens.issued)
    pulled = cli(tmp_path, "pull", "-q", f"{world.token.host}/public/base:v1")
    assert (pulled.rc, pulled.err) == (0, "")
    assert [t["user"] for t in world.tokens.issued[before:]] == [None]


def test_login_with_a_helper_leaves_no_password_of_that_registry_in_the_file(
        world: World, tmp_path: Path, docker_config: Path, pass_store: Path) -> None:
    """Passwords the file held for the registry, under any key that names it, go when a helper takes its credentials."""
    host = world.basic.host
    old = base64.b64encode(f"{USER}:old".encode()).decode()
    other = {"auth": base64.b64encode(b"someone:else").decode()}
    config = write_config(docker_config, {"credsStore": "pass",
                                          "auths": {host: {"auth": old}, f"https://{host}/v1/": {"auth": old}, "other.example": other}})
    assert login(tmp_path, host).rc == 0
    assert json.loads(config.read_text()) == {"credsStore": "pass", "auths": {"other.example": other, host: {}}}
    assert json.loads(helper("get", host))["Secret"] == PASSWORD


def test_a_helper_that_fails_is_one_line_naming_it_and_what_it_said(
        world: World, tmp_path: Path, docker_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A helper that exits non-zero with its own words (a locked keyring, say): the pull
    stops with one line that names the helper and gives its words, not anonymously."""
    helper_on_path(tmp_path, monkeypatch, "locked", "echo 'keyring is locked' >&2\nexit 1")
    write_config(docker_config, {"credsStore": "locked"})
    host = world.basic.host
    failed = cli(tmp_path, "pull", f"{host}/app1:v1")
    said = "credential helper docker-credential-locked get: keyring is locked"
    assert (failed.rc, failed.err) == (1, f"Error: registry {host}: {said}\n")
