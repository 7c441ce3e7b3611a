"""HTTP to one registry (the distribution spec's ``/v2/`` API) with ``requests``.

One ``requests.Session`` per client: pooled keep-alive connections, a
connect and a read timeout on every request, and urllib3's ``Retry`` with
exponential backoff for what is worth another try (connection failures,
408/429/5xx answers to GET and HEAD). Bytes that stop mid-body are resumed by
the caller with a ``Range`` request (``download.py``).

Endpoints as Docker chooses them: ``docker.io`` is served by
``registry-1.docker.io``; ``localhost``, ``127.0.0.0/8`` and ``::1`` speak
plain HTTP; registries named in ``--insecure-registry`` or
``$LAYERSTORE_INSECURE_REGISTRIES`` are asked in HTTPS without certificate
checks first and in plain HTTP if TLS fails there (Docker's order for an
insecure registry); every other registry HTTPS with certificate checks, with
the CAs and client certificate of its certs.d directory (``tls``).

Redirects are followed here, not by requests: blob storage (S3, a CDN) answers
a blob GET with a 307 to another host, and the registry's credentials must not
travel there, so ``Authorization`` is dropped as soon as the origin changes.

Uploads (push) go through ``send``: the body comes from a callable, so a 401
challenge is answered by sending it again, and the ``Location`` an upload
answer names (relative or absolute) is where the next request goes, with the
registry's credentials only while it stays on the registry's origin.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import ssl
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import requests
import requests.auth
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InsecureRequestWarning
from urllib3.util.retry import Retry

from layerstore.digest import digest_bytes, parse_digest
from layerstore.errors import (
    AuthError,
    DigestMismatch,
    InvalidReference,
    ManifestUnknown,
    NotFound,
    RegistryError,
    SizeMismatch,
    TransportError,
)
from layerstore.model import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MAX_DOCUMENT,
    OCI_INDEX,
    OCI_MANIFEST,
)
from layerstore.reference import DEFAULT_DOMAIN, Reference
from layerstore.registry import tls
from layerstore.registry.auth import Authorizer, Credentials, DockerConfig

log = logging.getLogger(__name__)

HUB_REGISTRY = "registry-1.docker.io"
INSECURE_ENV = "LAYERSTORE_INSECURE_REGISTRIES"
USER_AGENT = "layerstore/0.1 (python-requests)"
TIMEOUT = (15.0, 60.0)  # connect, read (between two reads of the socket)
#: Every manifest type the store can use, in one Accept header: the registry
#: converts or narrows what it answers to what the client names (see README).
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
MAX_REDIRECTS = 10
_REDIRECTS = (301, 302, 303, 307, 308)
CHUNK = 1 << 20
PAGE_SIZE: int | None = None  # entries asked for per page of a tag or catalog listing


def insecure_registries(extra: Iterable[str] = ()) -> frozenset[str]:
    """Registries named insecure by option or ``$LAYERSTORE_INSECURE_REGISTRIES`` (comma or space separated)."""
    names = re.split(r"[,\s]+", os.environ.get(INSECURE_ENV, ""))
    return frozenset(n.strip().lower() for n in (*names, *extra) if n.strip())


@dataclass(frozen=True)
class Endpoint:
    domain: str  # as references name it: docker.io, host:port
    base_url: str  # where its /v2/ API is
    verify: bool = True  # certificates checked (an insecure registry's are not)
    fallback: str | None = None  # the plain-HTTP base_url to try if TLS fails (an insecure registry)

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc


def endpoint(domain: str, insecure: Iterable[str] = ()) -> Endpoint:
    host = HUB_REGISTRY if domain == DEFAULT_DOMAIN else domain
    if _loopback(host):
        return Endpoint(domain, f"http://{host}")
    if domain.lower() in insecure_registries(insecure):
        return Endpoint(domain, f"https://{host}", verify=False, fallback=f"http://{host}")
    return Endpoint(domain, f"https://{host}")


def _loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _retry(retries: int = 3) -> Retry:
    """Transient failures again, with backoff; a TLS handshake that failed (a certificate
    not trusted, no TLS at all) fails the same way each time, so at once."""
    return Retry(
        total=retries + 1,
        connect=retries,
        read=2,
        status=retries,
        other=0,
        backoff_factor=0.25,
        status_forcelist=(408, 429, 500, 502, 503, 504),
        allowed_methods=frozenset({"GET", "HEAD"}),
        raise_on_status=False,
        respect_retry_after_header=True,
    )


def new_session(retries: int = 3) -> requests.Session:
    """A pooled session that retries transient failures with exponential backoff."""
    session = requests.Session()
    adapter = _adapter(retries=retries)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def _adapter(context: ssl.SSLContext | None = None, retries: int = 3) -> HTTPAdapter:
    """A connection pool with retries; with context, its TLS connections made with it."""
    kwargs: dict[str, Any] = {"pool_connections": 4, "pool_maxsize": 8, "max_retries": _retry(retries)}
    return HTTPAdapter(**kwargs) if context is None else _ContextAdapter(context, **kwargs)


class _ContextAdapter(HTTPAdapter):
    """Connections made with an SSL context of the registry's own (its CAs, a client certificate)."""

    def __init__(self, context: ssl.SSLContext, **kwargs: Any) -> None:
        self._context = context
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)


_CLIENT_CERT_WANTED = "; the registry wants a client certificate: NAME.cert and NAME.key in certs.d/HOST:PORT"
_TLS_HINTS = {  # OpenSSL's reason -> what to do about it
    "WRONG_VERSION_NUMBER": "; no TLS there? plain HTTP is for --insecure-registry",
    "CERTIFICATE_VERIFY_FAILED": "; a private CA goes in certs.d/HOST:PORT/ca.crt, or --cert-dir",
    "SSLV3_ALERT_BAD_CERTIFICATE": _CLIENT_CERT_WANTED,
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": _CLIENT_CERT_WANTED,
}


def describe_failure(exc: BaseException) -> str:
    """The innermost reason of a requests failure, without urllib3's wrapping."""
    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        m = re.search(r"\[SSL: ([A-Z0-9_]+)\] ([^(]*?)(?: \(_ssl\.c:\d+\))?['\"]", text)
        if m is None:
            m2 = re.search(r"SSLError\((?:\d+, )?['\"]?(.*?)['\"]?\)+$", text)
            return "TLS: " + (m2.group(1) if m2 else text)
        return "TLS: " + m.group(2) + _TLS_HINTS.get(m.group(1), "")
    if isinstance(exc, requests.Timeout):
        return "timed out"
    m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if m:
        return m.group(1).strip()
    m = re.search(r"(Connection aborted|Connection broken|RemoteDisconnected)[^,)]*", text)
    return m.group(0) if m else text


class _AsSet(requests.auth.AuthBase):
    """Send the Authorization header as set here: without an auth object requests would
    put ``~/.netrc`` credentials in its place."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


_AS_SET = _AsSet()


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def pull_scope(path: str) -> str:
    return f"repository:{path}:pull"


CATALOG_SCOPE = "registry:catalog:*"


def push_scope(path: str) -> str:
    """What a push needs of its repository: Docker asks for ``pull,push`` (HEAD and GET are pulls)."""
    return f"repository:{path}:pull,push"


@dataclass(frozen=True)
class UploadStart:
    """The answer to ``POST /v2/<name>/blobs/uploads/``: a mounted blob (201), or an upload
    to write to (202) at ``location`` (absolute), in chunks of ``min_chunk`` bytes or more."""

    location: str | None
    mounted: bool = False
    min_chunk: int = 0


@dataclass(frozen=True)
class Fetched:
    """A manifest or index as the registry sent it: the original bytes and their digest."""

    data: bytes
    media_type: str
    digest: str


class RegistryClient:
    """Requests to one registry, authorized as its challenges ask."""

    def __init__(
        self,
        domain: str,
        *,
        insecure: Iterable[str] = (),
        credentials: Credentials | None = None,
        config: DockerConfig | None = None,
        session: requests.Session | None = None,
        timeout: Any = TIMEOUT,
        cert_dir: str | None = None,
        offline: bool = False,
    ) -> None:
        """cert_dir: the registry's certificates (podman's ``--cert-dir``), else its certs.d directory;
        offline: ask for a refresh token with the credentials (``login``)."""
        self.endpoint = endpoint(domain, insecure)
        self.session = session or new_session()
        self.timeout = timeout
        self._settle = threading.Lock()
        if not self.endpoint.verify:  # asked for (an insecure registry): Docker says nothing either
            warnings.filterwarnings("ignore", category=InsecureRequestWarning)
        if self.endpoint.base_url.startswith("https://"):
            self._use_certs(cert_dir)
        if credentials is None:
            credentials = (config or DockerConfig()).get(domain)
        self.auth = Authorizer(domain, self.session, credentials, timeout, offline)

    @property
    def domain(self) -> str:
        return self.endpoint.domain

    def _use_certs(self, cert_dir: str | None) -> None:
        """The registry's own CAs and client certificate, for its origin alone."""
        directory = tls.certs_directory(self.endpoint.host, cert_dir)
        if directory is None:
            return
        try:
            context = tls.read(directory).context()
        except tls.CertsError as exc:
            raise TransportError(f"registry {self.domain}", f"certificates: {exc}") from None
        if not self.endpoint.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self.session.mount(self.endpoint.base_url + "/", _adapter(context))

    def _transmit(self, method: str, url: str, **kwargs: Any) -> tuple[requests.Response, str]:
        """One request (and the URL it went to): to an insecure registry without certificate
        checks, and in plain HTTP from the first time TLS fails there on."""
        home = _origin(url) == _origin(self.endpoint.base_url)
        try:
            response = self.session.request(method, url, verify=self.endpoint.verify or not home, timeout=self.timeout,
                                            allow_redirects=False, auth=_AS_SET, **kwargs)
            return response, url
        except (requests.exceptions.SSLError, requests.exceptions.ConnectionError) as exc:
            if isinstance(exc, requests.exceptions.ConnectTimeout) or not url.startswith("https://"):
                raise
            with self._settle:
                now = self.endpoint
                if home and now.fallback is not None:
                    log.debug("%s: no TLS there (%s); plain HTTP from now on", self.domain, describe_failure(exc))
                    self.endpoint = Endpoint(self.domain, now.fallback)
                elif home or _origin(url) != ("https", _origin(now.base_url)[1]):
                    raise  # a registry that has TLS, or another origin: no plain HTTP there
            return self._transmit(method, urlsplit(url)._replace(scheme="http").geturl(), **kwargs)

    def close(self) -> None:
        self.session.close()

    # -- requests ------------------------------------------------------------------------
    def url(self, path: str) -> str:
        return urljoin(self.endpoint.base_url, path)

    def request(
        self, method: str, path: str, *, scope: str | None, headers: dict[str, str] | None = None, stream: bool = False
    ) -> requests.Response:
        """Send, answering one 401 challenge; any answer but 401 is returned to the caller.
        ``path`` may be an absolute URL (a ``Link`` to the next page): credentials go to the
        registry's own origin only."""
        url = self.url(path)
        return self._authorized(scope, headers, self._home(url), lambda sent: self._send(method, url, sent, stream))

    def _home(self, url: str) -> bool:
        return _origin(url) == _origin(self.endpoint.base_url)

    def _authorized(
        self, scope: str | None, headers: dict[str, str] | None, home: bool, transmit: Callable[[dict[str, str]], requests.Response]
    ) -> requests.Response:
        """Transmit with credentials (to the registry's own origin only), answering one 401 challenge."""
        for attempt in (1, 2):
            sent = dict(headers or {})
            authorization = self.auth.header(scope) if home else None
            if authorization:
                sent["Authorization"] = authorization
            response = transmit(sent)
            if response.status_code != 401 or not home:
                return response
            if attempt == 2 or not self.auth.challenged(response, scope):
                break
            response.close()
        error = _registry_error(response)
        response.close()
        detail = f"{error[0].lower()}: {error[1]}" if error else "unauthorized"
        raise AuthError(f"registry {self.domain}", f"{detail} (check the credentials, or log in)")

    def _send(self, method: str, url: str, headers: dict[str, str], stream: bool) -> requests.Response:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response, url = self._transmit(method, url, headers=headers, stream=stream)
            except requests.RequestException as exc:
                raise TransportError(f"registry {self.domain}", f"unreachable ({method} {url}: {describe_failure(exc)})") from None
            location = response.headers.get("Location")
            if response.status_code not in _REDIRECTS or not location:
                return response
            response.close()
            target = urljoin(url, location)
            if _origin(target) != _origin(url):
                # blob storage elsewhere: the registry's credentials stay with the registry
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            if response.status_code == 303:
                method = "GET"
            log.debug("%s redirected to %s", url, target)
            url = target
        raise TransportError(f"registry {self.domain}", f"more than {MAX_REDIRECTS} redirects for {url}")

    def check(self, response: requests.Response, subject: str, *, blob: bool = False) -> None:
        """Raise the error an unsuccessful answer means; 200 and 206 pass."""
        if response.status_code in (200, 206):
            return
        error = _registry_error(response)
        response.close()
        code, message = error or ("", "")
        if response.status_code == 404 or code in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"):
            if code == "NAME_UNKNOWN":
                raise ManifestUnknown(subject, "not found: repository name not known to registry")
            if code == "BLOB_UNKNOWN" or blob:
                raise NotFound(subject, "not found: blob unknown to registry")
            raise ManifestUnknown(subject, "not found: manifest unknown")
        if response.status_code == 403 or code == "DENIED":
            raise AuthError(subject, f"denied: {message or 'requested access to the resource is denied'}")
        detail = f"{code.lower()}: {message}" if code else f"HTTP {response.status_code} {response.reason or ''}".strip()
        raise RegistryError(subject, f"{detail} (registry {self.domain})")

    # -- the API ---------------------------------------------------------------------------
    def ping(self) -> None:
        """``GET /v2/``: reachable, speaks the v2 API, and takes our credentials (login)."""
        response = self.request("GET", "/v2/", scope=None)
        with response:
            self.check(response, f"registry {self.domain}")

    def manifest(self, path: str, ref: str) -> Fetched:
        """A manifest or index by tag or digest, verified against the digest asked for
        or the ``Docker-Content-Digest`` the registry answers with."""
        subject = f"manifest for {_display(self.domain, path, ref)}"
        response = self.request("GET", f"/v2/{path}/manifests/{ref}", scope=pull_scope(path), headers={"Accept": MANIFEST_ACCEPT})
        with response:
            self.check(response, subject)
            data = _read_upto(response, MAX_DOCUMENT)
            if len(data) > MAX_DOCUMENT:
                raise RegistryError(subject, f"larger than {MAX_DOCUMENT} bytes")
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
            announced = response.headers.get("Docker-Content-Digest", "")
        expected = ref if ref.startswith(("sha256:", "sha512:")) else announced
        digest = digest_bytes(data)
        if expected:
            try:
                algorithm = parse_digest(expected).algorithm
            except InvalidReference:
                raise RegistryError(subject, f"the registry answered with a malformed digest {expected!r}") from None
            actual = digest_bytes(data, algorithm)
            if actual != expected:
                raise DigestMismatch(subject, expected=expected, actual=actual)
            digest = actual
        return Fetched(data, media_type, digest)

    def blob_bytes(self, path: str, digest: str, size: int) -> bytes:
        """A small blob (a config) in memory, checked against its size and digest."""
        subject = f"blob {digest}"
        with self.open_blob(path, digest) as response:
            data = _read_upto(response, min(size, MAX_DOCUMENT))
        if len(data) != size:
            raise SizeMismatch(subject, expected=size, actual=len(data))
        actual = digest_bytes(data, parse_digest(digest).algorithm)
        if actual != digest:
            raise DigestMismatch(subject, expected=digest, actual=actual)
        return data

    def open_blob(self, path: str, digest: str, offset: int = 0) -> requests.Response:
        """A blob GET, from ``offset`` with a Range request; the caller checks 200 against 206."""
        headers = {"Accept-Encoding": "identity"}  # the digest covers the bytes as stored
        if offset:
            headers["Range"] = f"bytes={offset}-"
        response = self.request("GET", f"/v2/{path}/blobs/{digest}", scope=pull_scope(path), headers=headers, stream=True)
        self.check(response, f"blob {digest}", blob=True)
        return response

    def tags(self, path: str) -> list[str]:
        """Every tag of a repository, following the ``Link: <...>; rel="next"`` pages."""
        subject = f"repository {_display(self.domain, path, None)}"
        query = f"?n={PAGE_SIZE}" if PAGE_SIZE else ""  # without n the registry decides the page size
        return list(self._paged(f"/v2/{path}/tags/list{query}", pull_scope(path), "tags", subject))

    def catalog(self) -> list[str]:
        """Every repository (``/v2/_catalog``, paged)."""
        return list(self._paged(f"/v2/_catalog?n={PAGE_SIZE or 1000}", CATALOG_SCOPE, "repositories", f"registry {self.domain}"))

    def _paged(self, path: str, scope: str, key: str, subject: str) -> Iterator[str]:
        url: str | None = self.url(path)  # absolute, as the pages a Link names, so that a loop back is seen
        seen: set[str] = set()
        while url and url not in seen:
            seen.add(url)
            response = self.request("GET", url, scope=scope)
            with response:
                self.check(response, subject)
                try:
                    items = response.json().get(key) or []
                except (ValueError, AttributeError):
                    raise RegistryError(subject, f"malformed {key} list") from None
                yield from (str(i) for i in items)
                following = response.links.get("next", {}).get("url")
            url = urljoin(url, following) if following else None

    # -- uploads (push) --------------------------------------------------------------------
    def send(
        self,
        method: str,
        url: str,
        *,
        scope: str | None,
        headers: dict[str, str] | None = None,
        body: Callable[[], Any] | None = None,
    ) -> requests.Response:
        """``request`` with a body, to a path or an absolute URL (an upload's ``Location``).

        ``body()`` gives the body anew for each attempt (bytes or a reader with
        ``__len__``), so a 401 challenge is answered by sending it again. The
        credentials go to the registry's own origin only.
        """
        url = self.url(url)
        return self._authorized(scope, headers, self._home(url), lambda sent: self._send_body(method, url, sent, body))

    def _send_body(self, method: str, url: str, headers: dict[str, str], body: Callable[[], Any] | None) -> requests.Response:
        """One request with its body; 307 and 308 (which keep method and body) are followed."""
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response, url = self._transmit(method, url, headers=headers, data=body() if body else None)
            except requests.RequestException as exc:
                shown = urlsplit(url)._replace(query="").geturl()  # an upload's _state is no news to anyone
                raise TransportError(f"registry {self.domain}", f"unreachable ({method} {shown}: {describe_failure(exc)})") from None
            location = response.headers.get("Location")
            if response.status_code not in (307, 308) or not location:
                return response
            response.close()
            target = urljoin(url, location)
            if _origin(target) != _origin(url):
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = target
        raise TransportError(f"registry {self.domain}", f"more than {MAX_REDIRECTS} redirects for {url}")

    def expect(self, response: requests.Response, subject: str, *ok: int) -> None:
        """Raise the error an answer other than ``ok`` means (upload answers are 201 and 202)."""
        if response.status_code in ok:
            return
        error = _registry_error(response)
        response.close()
        code, message = error or ("", "")
        status = response.status_code
        if status == 401:
            raise AuthError(subject, f"unauthorized: {message or 'authentication required'}")
        if status == 403 or code == "DENIED":
            raise AuthError(subject, f"denied: {message or 'requested access to the resource is denied'}")
        detail = f"{code.lower()}: {message}" if code else f"HTTP {status} {response.reason or ''}".strip()
        if status == 404 and not code:
            raise NotFound(subject, f"not found ({detail}, registry {self.domain})")
        raise RegistryError(subject, f"{detail} (registry {self.domain})")

    def blob_exists(self, path: str, digest: str, scope: str | None = None) -> bool:
        """``HEAD /v2/<name>/blobs/<digest>``: whether the repository has the blob."""
        response = self.request("HEAD", f"/v2/{path}/blobs/{digest}", scope=scope or pull_scope(path))
        with response:
            if response.status_code == 404:
                return False
            self.check(response, f"blob {digest}", blob=True)
        return True

    def start_upload(self, path: str, *, mount: str | None = None, source: str | None = None) -> UploadStart:
        """``POST /v2/<name>/blobs/uploads/``, with ``?mount=<digest>&from=<repository>`` to ask
        for a cross-repository mount (the token then needs ``pull`` on ``source`` too)."""
        scope = push_scope(path)
        query = ""
        if mount and source:
            query = f"?mount={quote(mount, safe=':')}&from={quote(source, safe='/')}"
            scope += " " + pull_scope(source)
        subject = f"blob upload to {_display(self.domain, path, None)}"
        response = self.send("POST", f"/v2/{path}/blobs/uploads/{query}", scope=scope)
        with response:
            self.expect(response, subject, 201, 202)
            location = response.headers.get("Location")
            if response.status_code == 201:
                if not query:
                    raise RegistryError(subject, f"the registry answered 201 to a new upload (registry {self.domain})")
                return UploadStart(urljoin(response.url, location) if location else None, mounted=True)
            if not location:
                raise RegistryError(subject, f"the registry started an upload without a Location (registry {self.domain})")
            try:
                min_chunk = int(response.headers.get("OCI-Chunk-Min-Length", "0"))
            except ValueError:
                min_chunk = 0
            return UploadStart(urljoin(response.url, location), min_chunk=max(min_chunk, 0))

    def cancel_upload(self, path: str, location: str) -> None:
        """``DELETE`` an upload that is not wanted (a mount that did not happen); best effort."""
        try:
            self.send("DELETE", location, scope=push_scope(path)).close()
        except RegistryError as exc:
            log.debug("cancelling upload %s: %s", location, exc)

    def upload_chunk(self, path: str, location: str, body: Callable[[], Any], offset: int, length: int) -> str:
        """``PATCH`` ``length`` bytes at ``offset`` of an upload; the next ``Location``."""
        subject = f"blob upload to {_display(self.domain, path, None)}"
        headers = {"Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{offset + length - 1}"}
        response = self.send("PATCH", location, scope=push_scope(path), headers=headers, body=body)
        with response:
            self.expect(response, subject, 202)
            answered = response.headers.get("Range", "")
            m = re.fullmatch(r"(?:bytes=)?0-(\d+)", answered.strip())
            if answered and (m is None or int(m.group(1)) != offset + length - 1):
                raise RegistryError(subject, f"the registry has bytes {answered!r} after a chunk ending at {offset + length - 1}")
            following = response.headers.get("Location")
            return urljoin(response.url, following) if following else location

    def finish_upload(self, path: str, location: str, digest: str, body: Callable[[], Any] | None = None) -> None:
        """``PUT <location>?digest=``, with the blob (monolithic) or the chunks' end (no body)."""
        parts = urlsplit(location)
        param = f"digest={quote(digest, safe=':')}"
        url = urlunsplit(parts._replace(query=f"{parts.query}&{param}" if parts.query else param))
        subject = f"blob {digest}"
        response = self.send("PUT", url, scope=push_scope(path), headers={"Content-Type": "application/octet-stream"}, body=body)
        with response:
            self.expect(response, subject, 201, 204)
            answered = response.headers.get("Docker-Content-Digest", "")
        if answered and answered != digest:
            raise DigestMismatch(subject, expected=digest, actual=answered, problem=f"the registry stored {answered}")

    def put_manifest(self, path: str, ref: str, data: bytes, media_type: str) -> str:
        """``PUT /v2/<name>/manifests/<tag>`` with the bytes as they are; the digest the registry answers."""
        subject = f"manifest for {_display(self.domain, path, ref)}"
        headers = {"Content-Type": media_type}
        response = self.send("PUT", f"/v2/{path}/manifests/{ref}", scope=push_scope(path), headers=headers, body=lambda: data)
        with response:
            self.expect(response, subject, 200, 201, 202)
            return response.headers.get("Docker-Content-Digest", "")


def _display(domain: str, path: str, ref: str | None) -> str:
    """A reference as Docker names it in messages (``busybox:latest``, ``host:5000/app@sha256:...``)."""
    if ref is None:
        return Reference(domain, path).repository
    if ref.startswith(("sha256:", "sha512:")):
        return str(Reference(domain, path, digest=ref))
    return str(Reference(domain, path, tag=ref))


def _read_upto(response: requests.Response, limit: int) -> bytes:
    """The body, or its first ``limit + 1`` bytes when it is longer (the caller refuses it)."""
    out = bytearray()
    try:
        for chunk in response.iter_content(CHUNK):
            out += chunk
            if len(out) > limit:
                break
    except requests.RequestException as exc:
        raise TransportError(f"{response.url}", f"connection lost ({describe_failure(exc)})") from None
    return bytes(out[: limit + 1])


def _registry_error(response: requests.Response) -> tuple[str, str] | None:
    """The first ``{"errors": [{"code", "message"}]}`` entry of an error answer."""
    try:
        body = response.json() if response.content else {}
        first = body["errors"][0]
        return str(first.get("code") or ""), str(first.get("message") or "")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, requests.RequestException):
        return None
