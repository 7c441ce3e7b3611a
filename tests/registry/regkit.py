"""Real parts for the registry tests: Debian's docker-registry, a token server, a TCP proxy, images.

- ``Registry``: ``docker-registry serve`` on 127.0.0.1 and a free port, plain
  HTTP, its JSON access log readable (``requests()``: method, URI, status and
  bytes written per answer).
- ``TokenServer``: the realm of a registry with ``auth: token``; it checks
  basic credentials and signs RS256 JWTs with a self-signed certificate that
  the registry trusts (``x5c`` header), counting the tokens it issues.
- ``Proxy``: a TCP proxy in front of a registry that can cut a connection, stall
  it, or slow it down after some bytes of answer, to interrupt downloads.
- ``Front``: an HTTP server in front of a registry that hands each request to a
  test's hook, which answers it itself or passes it on and changes the answer:
  a registry that misbehaves in one precise way.
- Images: built with umoci (one layer per callback that changes a rootfs),
  given a platform, gathered into an OCI index, pushed with skopeo.
- ``cli``: the layerstore command line run in this process, its output captured.
"""
from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from dockerregistry import DockerRegistry, free_port  # noqa: F401 - the tests call regkit.free_port
from trees import tree  # noqa: F401 - the tests import it from here too

Change = Callable[[Path], None]
USER, PASSWORD = "tester", "s3cret-pass"  # known to the htpasswd and token registries
RUNNER = Path(__file__).with_name("run_cli.py")
REPO = Path(__file__).resolve().parents[2]


def runner_env() -> dict[str, str]:
    """The environment for ``RUNNER`` in a child process: this checkout importable first."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


def sh(*cmd: str | Path) -> str:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True).stdout


# -- the registry ------------------------------------------------------------------------


class Registry(DockerRegistry):
    """With the tests' readings of its log and storage."""

    def mark(self) -> int:
        """A position in the log: ``requests(since=mark)`` shows only what came after."""
        return self.log.stat().st_size

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        """Answers the registry logged: ``method``, ``uri``, ``status``, ``written`` (bytes of body sent)."""
        time.sleep(0.05)  # the log line is written just after the answer
        with open(self.log, "rb") as f:
            f.seek(since)
            lines = f.read().decode(errors="replace").splitlines()
        out = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("msg") == "response completed" or "http.response.status" in entry:
                out.append({
                    "method": entry.get("http.request.method"),
                    "uri": entry.get("http.request.uri"),
                    "status": entry.get("http.response.status"),
                    "written": entry.get("http.response.written", 0),
                })
        return out

    def blob_path(self, digest: str) -> Path:
        hexpart = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"


def htpasswd(path: Path, user: str, password: str) -> Path:
    path.write_text(sh("htpasswd", "-Bbn", user, password))
    return path


# -- the token server ------------------------------------------------------------------------


def reply(handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes = b"") -> None:
    """An answer of the hand-made servers below: a JSON body, or none."""
    handler.send_response(status)
    if body:
        handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class _Quiet:
    """A request handler that logs nothing: the servers' requests are the tests' to look at."""

    def log_message(self, *args: Any) -> None:
        pass


class _Served:
    """An HTTP server on 127.0.0.1, answering in a thread of its own."""

    port: int
    httpd: http.server.ThreadingHTTPServer

    def _serve(self, handler: type[http.server.BaseHTTPRequestHandler], context: ssl.SSLContext | None = None) -> None:
        """context: HTTPS, with that server context."""
        self.port = free_port()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        if context is not None:
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class TokenServer(_Served):
    """A token realm: users from a dict, full access for them, pull of ``public/*`` for anyone."""

    def __init__(self, base: Path, users: dict[str, str], service: str = "layerstore-test", issuer: str = "layerstore-test-issuer") -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.users = users
        self.service = service
        self.issuer = issuer
        self.issued: list[dict[str, Any]] = []
        self.refused = 0
        self.refresh_tokens: dict[str, str] = {}  # identity token -> its user (OAuth2 refresh tokens)
        self.refresh_on_login = False  # hand out a refresh token to a GET that asks for offline access
        self.lifetime = 300  # seconds a token is valid for: its expires_in and its exp claim
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "layerstore test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.bundle = base / "token-cert.pem"
        self.bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        server = self

        class Handler(_Quiet, http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._answer(self)

            def do_POST(self) -> None:
                server._answer_oauth(self)

        self._serve(Handler)

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def registry_auth(self) -> dict[str, Any]:
        return {"token": {"realm": self.realm, "service": self.service, "issuer": self.issuer, "rootcertbundle": str(self.bundle)}}

    def _answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(handler.path)
        if parts.path != "/token":  # not a registry: what a search of the catalog meets here
            reply(handler, 404)
            return
        query = parse_qs(parts.query)
        user = None
        header = handler.headers.get("Authorization", "")
        if header.startswith("Basic "):
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if self.users.get(name) != password:
                self.refused += 1
                body = b'{"details":"incorrect username or password"}'
                reply(handler, 401, body)
                return
            user = name
        access = [a for scope in query.get("scope", []) if (a := self._grant(scope, user))]
        token = self._sign(user or "", access)
        self.issued.append({"user": user, "scopes": query.get("scope", []), "access": access,
                            "service": query.get("service"), "account": query.get("account"),
                            "offline": query.get("offline_token")})
        answer: dict[str, Any] = {"token": token, "access_token": token, "expires_in": self.lifetime}
        if self.refresh_on_login and user and query.get("offline_token") == ["true"] and query.get("client_id"):
            answer["refresh_token"] = self.identity_token(user)  # what the client keeps instead of the password
        body = json.dumps(answer).encode()
        reply(handler, 200, body)

    def identity_token(self, user: str) -> str:
        """A refresh token for user, as a registry's OAuth2 login hands out (kept by clients
        as an identity token)."""
        token = os.urandom(16).hex()
        self.refresh_tokens[token] = user
        return token

    def _answer_oauth(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        """The spec's OAuth2 token endpoint (token-auth oauth.md): a form POSTed to the
        realm, here with grant_type=refresh_token; an unknown token is 400 invalid_grant."""
        from urllib.parse import parse_qs

        body = handler.rfile.read(int(handler.headers.get("Content-Length", 0))).decode()
        form = {k: v[0] for k, v in parse_qs(body).items()}
        user = self.refresh_tokens.get(form.get("refresh_token", "")) if form.get("grant_type") == "refresh_token" else None
        if user is None or not form.get("client_id"):
            self.refused += 1
            status, answer = 400, {"error": "invalid_grant"}
        else:
            scopes = form.get("scope", "").split()
            access = [a for scope in scopes if (a := self._grant(scope, user))]
            self.issued.append({"user": user, "scopes": scopes, "access": access, "grant": "refresh_token",
                                "client_id": form["client_id"]})
            status, answer = 200, {"access_token": self._sign(user, access), "expires_in": 300}
        body = json.dumps(answer).encode()
        reply(handler, status, body)

    @staticmethod
    def _grant(scope: str, user: str | None) -> dict[str, Any] | None:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        wanted = actions.split(",")
        if user:
            return {"type": kind, "name": name, "actions": wanted}
        if kind == "repository" and name.startswith("public/"):
            return {"type": kind, "name": name, "actions": [a for a in wanted if a == "pull"]}
        return None

    def _sign(self, subject: str, access: list[dict[str, Any]]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + self.lifetime, "nbf": now - 10,
                  "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64(signature)}"


# -- blob storage behind a redirect ---------------------------------------------------------------


class BlobServer(_Served):
    """Serves a registry's storage directory over HTTP, as the storage behind the registry's
    ``redirect`` middleware (S3 or a CDN in real life), remembering the Authorization headers it saw;
    in HTTPS with ``context`` (a server context: its certificate and key)."""

    def __init__(self, storage: Path, context: ssl.SSLContext | None = None) -> None:
        self.scheme = "https" if context else "http"
        self.authorizations: list[str | None] = []
        self.paths: list[str] = []
        self.ranges: list[str | None] = []  # it ignores them, answering 200, as some storage does
        server = self

        class Handler(_Quiet, http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(storage), **kwargs)

            def do_GET(self) -> None:
                server.authorizations.append(self.headers.get("Authorization"))
                server.paths.append(self.path)
                server.ranges.append(self.headers.get("Range"))
                super().do_GET()

        self._serve(Handler, context)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/"



class SearchServer(_Served):
    """Docker's search API as registries that keep it answer (``GET /v1/search?q=&n=``, the
    daemon's search of a private registry): the entries whose name holds the term, at most n;
    404 for anything else. It remembers each search's query and X-Docker-Token header."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = entries
        self.asked: list[tuple[dict[str, list[str]], str | None]] = []
        server = self

        class Handler(_Quiet, http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlsplit

                parts = urlsplit(self.path)
                if parts.path != "/v1/search":
                    reply(self, 404)
                    return
                query = parse_qs(parts.query)
                server.asked.append((query, self.headers.get("X-Docker-Token")))
                term, limit = query["q"][0], int(query["n"][0])
                found = [e for e in server.entries if term in (e.get("name") or e.get("repo_name") or "")][:limit]
                body = json.dumps({"num_results": len(found), "query": term, "results": found}).encode()
                reply(self, 200, body)

        self._serve(Handler)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


# -- a registry that misbehaves -------------------------------------------------------------


@dataclass
class Asked:
    """A request as a ``Front`` received it; ``forward`` passes it on to the registry behind."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    upstream: int  # the registry's port

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    def forward(self, headers: dict[str, str] | None = None) -> Answer:
        """The registry's answer to this request (sent with ``headers`` instead of its own if given)."""
        r = requests.request(self.method, f"http://127.0.0.1:{self.upstream}{self.path}", data=self.body or None,
                             headers=self.headers if headers is None else headers, allow_redirects=False, timeout=30)
        dropped = ("transfer-encoding", "connection", "content-encoding") + (() if self.method == "HEAD" else ("content-length",))
        return r.status_code, {k: v for k, v in r.headers.items() if k.lower() not in dropped}, r.content


Answer = tuple[int, dict[str, str], bytes]  # status, headers, body
Hook = Callable[[Asked], Answer | None]  # a Front's own answer to a request, or None to pass it on


class Front(_Served):
    """A registry that misbehaves as a test asks: in front of a real one (``upstream``, a port),
    each request goes to ``hook`` first, whose answer is sent when it gives one, else the
    request is passed on unchanged (Host header included, so the registry's Location headers
    name the front) and the registry's answer sent back. A hook that changes a request or an
    answer passes it on itself (``Asked.forward``). Each answer closes its connection: a
    Content-Length larger than the body sent is a connection cut there. Every request is kept
    in ``asked``."""

    def __init__(self, upstream: int, hook: Hook | None = None) -> None:
        self.upstream = upstream
        self.hook: Hook = hook or (lambda asked: None)
        self.asked: list[Asked] = []
        server = self

        class Handler(_Quiet, http.server.BaseHTTPRequestHandler):
            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                asked = Asked(self.command, self.path, dict(self.headers.items()), body, server.upstream)
                server.asked.append(asked)
                status, headers, data = server.hook(asked) or asked.forward()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if not any(name.lower() == "content-length" for name in headers):
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = answer

        self._serve(Handler)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


# -- the proxy -----------------------------------------------------------------------------


class Proxy:
    """A TCP proxy to ``target``; ``mode`` acts on the first connection whose answers pass ``after`` bytes.

    ``cut``: close that connection there (once). ``stall``: stop forwarding on
    it until the proxy stops. ``slow``: forward everything at ``rate`` bytes a second.
    ``rewrite`` replaces byte strings in every answer with others of the same
    length (a registry that lies in a header; the answers' headers come in one read).
    """

    def __init__(self, target_port: int, mode: str = "pass", after: int = 0, rate: int = 0,
                 rewrite: dict[bytes, bytes] | None = None) -> None:
        self.target_port = target_port
        self.mode = mode
        self.after = after
        self.rate = rate
        self.rewrite = dict(rewrite or {})
        assert all(len(old) == len(new) for old, new in self.rewrite.items())
        self.rewritten = 0
        self.tripped = threading.Event()
        self.stopped = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Abort every connection with a reset, as a proxy that dies does. A plain close after
        the pumps' shutdowns would leave the registry's side waiting on a zero window: the
        closed socket lingers in FIN-WAIT-2 for a minute and answers the registry's window
        probes, so a write of an answer the client left unread would block that long."""
        self.stopped.set()
        self.listener.close()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RDWR)  # wakes a pump blocked in recv
            s.close()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        sent = 0
        try:
            while not self.stopped.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if answers:
                    for old, new in self.rewrite.items():
                        self.rewritten += data.count(old)
                        data = data.replace(old, new)
                if answers and self.mode in ("cut", "stall") and not self.tripped.is_set() and sent + len(data) > self.after:
                    self.tripped.set()
                    dst.sendall(data[: max(self.after - sent, 0)])
                    if self.mode == "cut":
                        break
                    self.stopped.wait()
                    return
                if answers and self.mode == "slow" and self.rate:
                    for i in range(0, len(data), 16384):
                        dst.sendall(data[i:i + 16384])
                        time.sleep(16384 / self.rate)
                else:
                    dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


# -- images ---------------------------------------------------------------------------------


def build(layout: Path, tag: str, layers: list[Change], base: str | None = None) -> None:
    """An image ``tag`` in an OCI layout, one umoci layer per change, over ``base`` if given."""
    if not (layout / "index.json").exists():
        sh("umoci", "init", "--layout", layout)
    if base:
        sh("umoci", "tag", "--image", f"{layout}:{base}", tag)
    else:
        sh("umoci", "new", "--image", f"{layout}:{tag}")
    bundle = layout.parent / f"bundle-{tag}"
    for change in layers:
        shutil.rmtree(bundle, ignore_errors=True)
        sh("umoci", "unpack", "--image", f"{layout}:{tag}", bundle)
        change(bundle / "rootfs")
        sh("umoci", "repack", "--image", f"{layout}:{tag}", bundle)
    shutil.rmtree(bundle, ignore_errors=True)


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def put_blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _blob(layout, digest).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def descriptor(layout: Path, tag: str) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    for d in index["manifests"]:
        if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return dict(d)
    raise KeyError(tag)


def read_json(layout: Path, digest: str) -> dict[str, Any]:
    return json.loads(_blob(layout, digest).read_bytes())


def set_tag(layout: Path, tag: str, desc: dict[str, Any]) -> None:
    index = json.loads((layout / "index.json").read_text())
    index["manifests"] = [d for d in index["manifests"] if d.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag]
    index["manifests"].append({**desc, "annotations": {"org.opencontainers.image.ref.name": tag}})
    (layout / "index.json").write_text(json.dumps(index))


def set_platform(layout: Path, tag: str, os_name: str, arch: str, variant: str | None = None) -> None:
    """Rewrite an image's config (and so its manifest) to another platform."""
    desc = descriptor(layout, tag)
    manifest = read_json(layout, desc["digest"])
    config = read_json(layout, manifest["config"]["digest"])
    config.update({"os": os_name, "architecture": arch})
    if variant:
        config["variant"] = variant
    manifest["config"].update(put_blob(layout, json.dumps(config).encode()))
    new = put_blob(layout, json.dumps(manifest).encode())
    set_tag(layout, tag, {"mediaType": desc["mediaType"], **new})


def make_index(layout: Path, tag: str, entries: list[tuple[str, dict[str, Any]]], extra: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """An OCI index of images of this layout (``(tag, platform)``) plus raw descriptors, tagged ``tag``."""
    manifests = []
    for image_tag, platform in entries:
        d = descriptor(layout, image_tag)
        manifests.append({"mediaType": d["mediaType"], "digest": d["digest"], "size": d["size"], "platform": platform})
    manifests.extend(extra)
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
    new = put_blob(layout, json.dumps(doc).encode())
    set_tag(layout, tag, {"mediaType": "application/vnd.oci.image.index.v1+json", **new})
    return {"mediaType": "application/vnd.oci.image.index.v1+json", **new}


def attestation(layout: Path, subject: dict[str, Any]) -> dict[str, Any]:
    """A BuildKit-style attestation manifest for ``subject``, as an index entry."""
    statement = put_blob(layout, b'{"_type":"https://in-toto.io/Statement/v0.1"}')
    config = put_blob(layout, b"{}")
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.in-toto+json", **statement,
                    "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}}],
    }
    m = put_blob(layout, json.dumps(manifest).encode())
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", **m,
            "annotations": {"vnd.docker.reference.digest": subject["digest"], "vnd.docker.reference.type": "attestation-manifest"},
            "platform": {"architecture": "unknown", "os": "unknown"}}


def push(layout: Path, tag: str, dest: str, *extra: str) -> None:
    sh("skopeo", "copy", "-q", "--dest-tls-verify=false", *extra, f"oci:{layout}:{tag}", f"docker://{dest}")


def push_uncompressed(layout: Path, tag: str, registry: str, repo: str, dest_tag: str) -> str:
    """A Docker schema 2 image with uncompressed layers, uploaded with the distribution API
    (skopeo compresses every layer it pushes); its manifest digest."""
    desc = descriptor(layout, tag)
    manifest = read_json(layout, desc["digest"])
    base = f"http://{registry}/v2/{repo}"

    def upload(data: bytes) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        start = requests.post(f"{base}/blobs/uploads/", timeout=30)
        start.raise_for_status()
        location = requests.compat.urljoin(f"http://{registry}", start.headers["Location"])
        done = requests.put(location, params={"digest": digest}, data=data,
                            headers={"Content-Type": "application/octet-stream"}, timeout=30)
        done.raise_for_status()
        return {"digest": digest, "size": len(data)}

    config = _blob(layout, manifest["config"]["digest"]).read_bytes()
    layers = [upload(gzip.decompress(_blob(layout, layer["digest"]).read_bytes())) for layer in manifest["layers"]]
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **upload(config)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar", **layer} for layer in layers],
    }
    data = json.dumps(doc, indent=3).encode()
    put = requests.put(f"{base}/manifests/{dest_tag}", data=data,
                       headers={"Content-Type": str(doc["mediaType"])}, timeout=30)
    put.raise_for_status()
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write(root: Path, rel: str, data: str | bytes, mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)


# -- the test run's registries and the command line ---------------------------------------------


@dataclass
class World:
    """The registries of a test run (one storage, four ways in) and the OCI layout the images came from."""

    open: Registry
    basic: Registry
    token: Registry
    redirecting: Registry  # basic auth; blobs answered with a 307 to ``storage``
    tokens: TokenServer
    storage: BlobServer
    layout: Path
    work: Path

    def name(self, registry: Registry, repo: str) -> str:
        return f"{registry.host}/{repo}"


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


def cli(root: Path, *args: str, stdin: str | None = None) -> Result:
    """The layerstore command line, in this process (registry commands added if cli.py lacks them)."""
    from layerstore import cli as cli_module

    extra = tuple(n for n in ("pull", "login", "logout", "manifest", "search") if n not in cli_module.COMMANDS)
    saved = cli_module.COMMANDS
    setattr(cli_module, "COMMANDS", saved + extra)  # noqa: B010 - a wider tuple than the declared one
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    try:
        if stdin is not None:
            sys.stdin = io.StringIO(stdin)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli_module.main(["--root", str(root), *args])
    finally:
        sys.stdin = old_stdin
        setattr(cli_module, "COMMANDS", saved)  # noqa: B010
    return Result(rc, out.getvalue(), err.getvalue())


def short(digest: str) -> str:
    """The 12 hex digits that Docker's progress lines name a layer by."""
    return digest.split(":", 1)[1][:12]


def layer_lines(lines: list[str]) -> dict[str, list[str]]:
    """Each layer's updates in order (layers run in parallel: their lines interleave)."""
    out: dict[str, list[str]] = {}
    for line in lines:
        ident, sep, text = line.partition(": ")
        if sep and len(ident) == 12 and all(c in "0123456789abcdef" for c in ident):
            out.setdefault(ident, []).append(text)
    return out
