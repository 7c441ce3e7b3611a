"""Registry credentials and authorization: Docker's ``config.json``, basic auth and bearer tokens.

Credentials live where the Docker CLI keeps them, in ``$DOCKER_CONFIG/config.json``
(default ``~/.docker/config.json``), under ``auths`` keyed by registry host (Docker
Hub's key is ``https://index.docker.io/v1/``), each with a base64
``user:password`` in ``auth``. Keys are matched by host name, so the
``https://host/v1/`` forms older clients wrote are found too; the rest of the
file is kept as it was when it is written back (atomically, mode 0600). Where
the file names a credential helper for a registry (``credHelpers``, else
``credsStore``), that helper keeps its credentials instead, as the Docker CLI
does (``credhelpers``); the file then holds an empty entry for it.

Authorization follows the distribution spec's token flow: a request goes out
anonymous (or with the scheme learnt earlier); a 401 answer's
``WWW-Authenticate`` challenge says ``Basic`` (send the credentials) or
``Bearer realm=,service=,scope=`` (ask the realm for a token for that scope,
with the credentials if there are any). Tokens are cached per scope until they
expire, so pulling many blobs of one repository asks for one token. An identity
token (``identitytoken`` in the file, or a helper's ``<token>`` record) is an
OAuth2 refresh token: it is POSTed to the realm (``grant_type=refresh_token``)
instead of a user and password.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerstore.errors import AuthError, RegistryError, TransportError
from layerstore.registry import credhelpers

log = logging.getLogger(__name__)

HUB_AUTH_KEY = "https://index.docker.io/v1/"
_HUB_NAMES = ("docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")
TOKEN_LEEWAY = 10.0  # seconds before expiry a cached token is renewed
DEFAULT_TOKEN_LIFETIME = 60.0  # the spec's default when the answer has no expires_in
CLIENT_ID = "layerstore"  # who asks, in an OAuth2 token request (the spec asks for a meaningful name)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    identity_token: str = ""  # an OAuth2 refresh token, sent to the token realm in place of the password

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def auth_key(domain: str) -> str:
    """The ``auths`` key Docker writes for a registry."""
    return HUB_AUTH_KEY if hostname_of(domain) in _HUB_NAMES else domain


def hostname_of(key: str) -> str:
    """Docker's ``ConvertToHostname``: drop the scheme and any path."""
    for prefix in ("http://", "https://"):
        key = key.removeprefix(prefix)
    return key.split("/", 1)[0]


def config_dir() -> Path:
    env = os.environ.get("DOCKER_CONFIG")
    return Path(env) if env else Path.home() / ".docker"


def config_path() -> Path:
    """The Docker CLI's ``config.json``."""
    return config_dir() / "config.json"


class DockerConfig:
    """``config.json``: read for credentials, written back whole by login and logout."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config_path()
        self.doc: dict[str, Any] = {}
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        try:
            doc = json.loads(text) if text.strip() else {}
        except ValueError as exc:
            raise AuthError(f"credentials file {self.path}", f"malformed JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise AuthError(f"credentials file {self.path}", "not a JSON object")
        self.doc = doc

    @property
    def auths(self) -> dict[str, Any]:
        auths = self.doc.get("auths")
        return auths if isinstance(auths, dict) else {}

    def _keys_for(self, domain: str) -> list[str]:
        return self._keys_in(self.auths, domain)

    @staticmethod
    def _keys_in(table: dict[str, Any], domain: str) -> list[str]:
        wanted = hostname_of(auth_key(domain))
        hub = wanted in _HUB_NAMES
        return [k for k in table if (hostname_of(k) in _HUB_NAMES if hub else hostname_of(k) == wanted)]

    def helper_for(self, domain: str) -> str | None:
        """The credential helper that keeps this registry's credentials: its own
        (``credHelpers``, keyed as ``auths`` is), else the default (``credsStore``)."""
        helpers = self.doc.get("credHelpers")
        if isinstance(helpers, dict):
            for key in sorted(self._keys_in(helpers, domain), key=lambda k: k != auth_key(domain)):
                if isinstance(helpers[key], str) and helpers[key]:
                    return helpers[key]
        default = self.doc.get("credsStore")
        return default if isinstance(default, str) and default else None

    def get(self, domain: str) -> Credentials | None:
        """The stored credentials for a registry: its helper's, else the file's, the exact key first."""
        helper = self.helper_for(domain)
        if helper is not None:
            try:
                found = credhelpers.get(helper, auth_key(domain))
            except credhelpers.HelperError as exc:
                raise AuthError(f"registry {domain}", str(exc)) from None
            if found is None:
                return None
            if found.username == credhelpers.TOKEN_USERNAME:
                return Credentials("", "", identity_token=found.secret)
            return Credentials(found.username, found.secret)
        keys = sorted(self._keys_for(domain), key=lambda k: k != auth_key(domain))
        for key in keys:
            entry = self.auths.get(key)
            creds = _decode_entry(entry, f"credentials for {key} in {self.path}") if isinstance(entry, dict) else None
            if creds is not None:
                return creds
        return None

    def set(self, domain: str, creds: Credentials) -> str | None:
        """Keep creds for a registry: with its credential helper if it has one (whose
        name is returned), else in the file."""
        auths = self.doc.setdefault("auths", {})
        if not isinstance(auths, dict):
            auths = self.doc["auths"] = {}
        helper = self.helper_for(domain)
        if helper is not None:
            username, secret = ((credhelpers.TOKEN_USERNAME, creds.identity_token) if creds.identity_token
                                else (creds.username, creds.password))
            try:
                credhelpers.store(helper, auth_key(domain), username, secret)
            except credhelpers.HelperError as exc:
                raise AuthError(f"registry {domain}", f"credentials not saved: {exc}") from None
            for key in self._keys_for(domain):  # no password of it stays in the file
                del auths[key]
            auths[auth_key(domain)] = {}
        else:
            token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
            entry = {"auth": token}
            if creds.identity_token:  # in place of the password, which is then empty
                entry["identitytoken"] = creds.identity_token
            auths[auth_key(domain)] = entry
        self.save()
        return helper

    def erase(self, domain: str) -> bool:
        """Remove every key that names this registry, then the record its credential
        helper keeps; whether there was either. AuthError if the helper failed (the
        file is written by then)."""
        keys = self._keys_for(domain)
        for key in keys:
            del self.doc["auths"][key]
        if keys:
            self.save()
        helper = self.helper_for(domain)
        if helper is None:
            return bool(keys)
        try:
            return credhelpers.erase(helper, auth_key(domain)) or bool(keys)
        except credhelpers.HelperError as exc:
            raise AuthError(f"registry {domain}", f"could not erase credentials: {exc}") from None

    def save(self) -> None:
        """Write atomically, readable by the owner only (it holds passwords)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".config.json.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.doc, f, indent="\t")
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _decode_entry(entry: dict[str, Any], subject: str) -> Credentials | None:
    if entry.get("auth"):
        try:
            user, sep, password = base64.b64decode(str(entry["auth"]), validate=False).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise AuthError(subject, "the auth value is not base64 of user:password") from None
        if not sep:
            raise AuthError(subject, "the auth value is not base64 of user:password")
        return Credentials(user, password, identity_token=str(entry.get("identitytoken") or ""))
    if entry.get("username") and entry.get("password"):
        return Credentials(str(entry["username"]), str(entry["password"]))
    if entry.get("identitytoken"):
        return Credentials("", "", identity_token=str(entry["identitytoken"]))
    return None


# -- challenges -----------------------------------------------------------------------

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lowercase: "basic" or "bearer"
    params: dict[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """``WWW-Authenticate``: ``Bearer realm="...",service="...",scope="..."`` (RFC 7235).

    A name followed by ``=`` is a parameter of the challenge before it; any
    other name starts a new challenge.
    """
    out: list[Challenge] = []
    pos, n = 0, len(header)
    while pos < n:
        if header[pos] in ", \t":
            pos += 1
            continue
        m = _TOKEN.match(header, pos)
        if not m:
            break
        name, pos = m.group(0), m.end()
        while pos < n and header[pos] in " \t":
            pos += 1
        if pos < n and header[pos] == "=" and out:
            value, pos = _param_value(header, pos + 1)
            out[-1].params[name.lower()] = value
        else:
            out.append(Challenge(name.lower(), {}))
    return out


def _param_value(header: str, pos: int) -> tuple[str, int]:
    while pos < len(header) and header[pos] in " \t":
        pos += 1
    if pos < len(header) and header[pos] == '"':
        out: list[str] = []
        pos += 1
        while pos < len(header) and header[pos] != '"':
            if header[pos] == "\\" and pos + 1 < len(header):
                pos += 1
            out.append(header[pos])
            pos += 1
        return "".join(out), pos + 1
    m = _TOKEN.match(header, pos)
    return (m.group(0), m.end()) if m else ("", pos)


# -- the authorizer ---------------------------------------------------------------------


class Authorizer:
    """What to send in ``Authorization`` for a scope, learnt from the registry's challenges.

    Thread-safe: layer downloads share one. ``session`` is a requests
    Session (connection reuse, retries) used for the token requests.
    """

    def __init__(self, domain: str, session: Any, credentials: Credentials | None, timeout: Any,
                 offline: bool = False) -> None:
        """offline: ask the realm for a refresh token as well (``login``, as Docker's asks),
        kept in ``refresh_token`` if the realm hands one out."""
        self.domain = domain
        self.session = session
        self.credentials = credentials
        self.timeout = timeout
        self.offline = offline
        self.refresh_token = ""
        self._challenge: Challenge | None = None
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self.token_requests = 0  # how many tokens were fetched (the cache at work)

    def header(self, scope: str | None) -> str | None:
        """The Authorization value for a request in ``scope`` (None: anonymous)."""
        with self._lock:
            challenge = self._challenge
            if challenge is None:
                return None
            if challenge.scheme == "basic":
                return self.credentials.basic() if self.credentials and self.credentials.username else None
            return "Bearer " + self._token(challenge, scope)

    def challenged(self, response: Any, scope: str | None) -> bool:
        """Take a 401's challenge; whether asking again with what it taught can help."""
        challenges = parse_challenges(response.headers.get("WWW-Authenticate", ""))
        chosen = next((c for c in challenges if c.scheme == "bearer" and c.params.get("realm")), None)
        chosen = chosen or next((c for c in challenges if c.scheme == "basic"), None)
        if chosen is None:
            return False
        with self._lock:
            before = self._challenge
            self._challenge = chosen
            if chosen.scheme == "basic":
                has_user = bool(self.credentials and self.credentials.username)
                return has_user and (before is None or before.scheme != "basic")
            # a token the registry refused (expired early, revoked) is fetched anew; the
            # caller asks once more only, so credentials that cannot have the scope end there
            self._tokens.pop(_scope_key(chosen, scope), None)
            return True

    def _token(self, challenge: Challenge, scope: str | None) -> str:
        key = _scope_key(challenge, scope)
        cached = self._tokens.get(key)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        token, lifetime = self._fetch_token(challenge, key)
        self._tokens[key] = (token, time.monotonic() + max(lifetime - TOKEN_LEEWAY, 1.0))
        return token

    def _fetch_token(self, challenge: Challenge, scope: str) -> tuple[str, float]:
        import requests

        realm = challenge.params["realm"]
        service = challenge.params.get("service", "")
        refresh = self.credentials.identity_token if self.credentials else ""
        self.token_requests += 1
        log.debug("token for %r from %s", scope, realm)
        try:
            if refresh:  # OAuth2 (the distribution spec's token-auth oauth.md): the form, POSTed
                form = {"grant_type": "refresh_token", "refresh_token": refresh, "service": service,
                        "scope": scope, "client_id": CLIENT_ID}
                resp = self.session.post(realm, data=form, timeout=self.timeout)
            else:
                params: list[tuple[str, str]] = [("service", service)] if service else []
                params.extend(("scope", s) for s in scope.split(" ") if s)
                if self.credentials:
                    params.append(("account", self.credentials.username))
                    if self.offline:
                        params.extend((("offline_token", "true"), ("client_id", CLIENT_ID)))
                auth = (self.credentials.username, self.credentials.password) if self.credentials else None
                resp = self.session.get(realm, params=params, auth=auth, timeout=self.timeout)
        except requests.RequestException as exc:
            from layerstore.registry.client import describe_failure

            raise TransportError(f"token server {realm}", f"unreachable ({describe_failure(exc)})") from None
        with resp:
            if resp.status_code in (401, 403) or (refresh and resp.status_code == 400):  # 400: invalid_grant
                raise AuthError(f"registry {self.domain}", "unauthorized: the identity token was refused" if refresh
                                else "unauthorized: incorrect username or password" if self.credentials
                                else "unauthorized: authentication required")
            if resp.status_code != 200:
                raise RegistryError(f"token server {realm}", f"HTTP {resp.status_code}")
            try:
                body = resp.json()
                token = str(body.get("token") or body.get("access_token") or "")
                lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
                if self.offline and not refresh and body.get("refresh_token"):
                    self.refresh_token = str(body["refresh_token"])
            except (ValueError, AttributeError):
                raise RegistryError(f"token server {realm}", "answer is not a token") from None
        if not token:
            raise RegistryError(f"token server {realm}", "answer has no token")
        return token, lifetime


def _scope_key(challenge: Challenge, scope: str | None) -> str:
    """The scope a token is asked for: the request's, else the one the challenge names."""
    return scope or challenge.params.get("scope", "")

