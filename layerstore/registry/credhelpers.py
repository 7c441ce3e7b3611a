"""Docker's credential helpers: ``docker-credential-NAME get|store|erase``.

A ``config.json`` with ``credsStore`` (every registry) or ``credHelpers``
(``{"host:port": NAME}``, which wins) keeps passwords out of the file: the
Docker CLI runs the helper program with the server address on stdin (``get``,
``erase``) or a JSON record (``store``), and reads a JSON record back. A
record whose username is ``<token>`` holds an identity token (an OAuth2
refresh token) rather than a password. The protocol is that of
github.com/docker/docker-credential-helpers, which the helpers for pass,
secretservice, osxkeychain, wincred, ECR and GCR all speak.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass

PROGRAM_PREFIX = "docker-credential-"
TOKEN_USERNAME = "<token>"  # the username of a record that holds an identity token
NOT_FOUND = "credentials not found in native keychain"  # the helpers' own words for "none stored"
TIMEOUT = 60.0  # a helper may ask a keyring, or a cloud's metadata service


class HelperError(Exception):
    """The helper is missing, failed, or answered something that is not a record."""


class NotStored(HelperError):
    """The helper keeps nothing for that server."""


@dataclass(frozen=True)
class Secret:
    username: str  # TOKEN_USERNAME for an identity token
    secret: str


def _run(helper: str, action: str, stdin: str) -> str:
    program = PROGRAM_PREFIX + helper
    path = shutil.which(program)
    if path is None:
        raise HelperError(f"credential helper {program}: not found in PATH")
    try:
        proc = subprocess.run([path, action], input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise HelperError(f"credential helper {program} {action}: no answer in {TIMEOUT:.0f} s") from None
    except OSError as exc:
        raise HelperError(f"credential helper {program}: {exc.strerror}") from None
    if proc.returncode != 0:
        said = " ".join((proc.stdout.strip() or proc.stderr.strip()).split()) or f"exit status {proc.returncode}"
        if said == NOT_FOUND:
            raise NotStored(said)
        raise HelperError(f"credential helper {program} {action}: {said}")
    return proc.stdout


def get(helper: str, server: str) -> Secret | None:
    """What the helper keeps for server (None: nothing)."""
    try:
        out = _run(helper, "get", server)
    except NotStored:
        return None
    bad = HelperError(f"credential helper {PROGRAM_PREFIX}{helper} get: the answer is not a credentials record")
    try:
        record = json.loads(out)
        username, secret = record.get("Username") or "", record.get("Secret") or ""
    except (ValueError, AttributeError):
        raise bad from None
    if not isinstance(username, str) or not isinstance(secret, str):
        raise bad
    return Secret(username, secret) if secret else None


def store(helper: str, server: str, username: str, secret: str) -> None:
    _run(helper, "store", json.dumps({"ServerURL": server, "Username": username, "Secret": secret}))


def erase(helper: str, server: str) -> bool:
    """Forget server's record; whether there was one."""
    try:
        _run(helper, "erase", server)
    except NotStored:
        return False
    return True
