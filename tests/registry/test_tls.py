"""Registries over TLS: a private CA from a certs.d directory, client certificates, insecure registries.

``localhost`` and ``127.0.0.0/8`` are always spoken to in plain HTTP, so these
registries listen on an address of their own (198.18.0.1, from the range set
aside for network tests), put on the loopback interface for this module and
taken off after it. The CA, server and client certificates are made here with
``cryptography``; the registries are Debian's ``docker-registry`` with its own
TLS (``http.tls``), over the storage the session's images were pushed to.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import ipaddress
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import certifi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
import regkit
from regkit import Registry, World, cli

from users import NOBODY, errno_as

from layerstore.registry import tls

ADDRESS = "198.18.0.1"
LOCK = Path("/run/lock" if os.path.isdir("/run/lock") else tempfile.gettempdir(), "layerstore-tests-tls-address.lock")


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


class Authority:
    """A CA that signs server and client certificates into files."""

    def __init__(self, base: Path, name: str) -> None:
        self.base = base
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.name = subject
        self.cert = self._build(subject, self.key.public_key(), ca=True).sign(self.key, hashes.SHA256())
        self.pem = base / f"{name}.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def _build(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey, ca: bool) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name if not ca else subject)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=7))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))

    def issue(self, name: str, *, server: bool, dns_names: tuple[str, ...] = ()) -> Issued:
        """A certificate; a server's is for ADDRESS and dns_names."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key(), ca=False)
        if server:
            names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ADDRESS))]
            names += [x509.DNSName(n) for n in dns_names]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.base / f"{name}.crt.pem", self.base / f"{name}.key.pem")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        return issued


@dataclass(frozen=True)
class TlsWorld:
    server_ca: Authority
    client_ca: Authority
    client: Issued
    server: Issued  # the registries' certificate
    tls: Registry  # HTTPS, its certificate from server_ca
    mutual: Registry  # HTTPS, and a client certificate from client_ca required
    plain: Registry  # plain HTTP, on the same address


@contextlib.contextmanager
def address_on_loopback() -> Iterator[None]:
    """ADDRESS on the loopback interface meanwhile. The address is the machine's: another test
    run that takes it off while this one serves on it waits for this lock."""
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        added = subprocess.run(["ip", "addr", "add", f"{ADDRESS}/32", "dev", "lo"], capture_output=True, text=True)
        assert added.returncode == 0 or "File exists" in added.stderr, added.stderr
        try:
            yield
        finally:
            if added.returncode == 0:
                subprocess.run(["ip", "addr", "del", f"{ADDRESS}/32", "dev", "lo"], check=False)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def tls_world(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsWorld]:
    base = tmp_path_factory.mktemp("tls")
    registries: list[Registry] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(address_on_loopback())
        stack.callback(lambda: [registry.stop() for registry in registries])
        server_ca, client_ca = Authority(base, "server-ca"), Authority(base, "client-ca")
        server, client = server_ca.issue("registry", server=True), client_ca.issue("client", server=False)
        served = {"certificate": str(server.cert), "key": str(server.key)}
        storage = world.open.storage
        mutual = {**served, "clientcas": [str(client_ca.pem)]}
        for name, settings in (("tls", served), ("mutual", mutual), ("plain", None)):
            registries.append(Registry.start(base / name, storage, address=ADDRESS, tls=settings))
        yield TlsWorld(server_ca, client_ca, client, server, *registries)


def certs_dir(path: Path, files: dict[str, Path]) -> Path:
    path.mkdir(parents=True)
    for name, source in files.items():
        (path / name).write_bytes(source.read_bytes())
    return path


def test_a_private_ca_is_trusted_from_the_registry_s_certs_directory(
        tls_world: TlsWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"{tls_world.tls.host}/app1:v1"
    untrusted = cli(tmp_path, "pull", name)
    assert untrusted.rc == 1 and untrusted.err.count("\n") == 1
    assert untrusted.err.startswith(f"Error: registry {tls_world.tls.host}: unreachable")
    assert "TLS: certificate verify failed" in untrusted.err
    assert "certs.d/HOST:PORT/ca.crt, or --cert-dir" in untrusted.err

    given = certs_dir(tmp_path / "given", {"ca.crt": tls_world.server_ca.pem})
    pulled = cli(tmp_path, "pull", "--cert-dir", str(given), name)
    assert pulled.rc == 0, pulled.err
    assert pulled.lines[-1] == name

    system = tmp_path / "certs.d"
    certs_dir(system / tls_world.tls.host, {"ca.crt": tls_world.server_ca.pem})
    monkeypatch.setattr(tls, "SYSTEM_CERT_DIRS", (tmp_path / "missing", system))
    found = cli(tmp_path, "manifest", "inspect", name)
    assert found.rc == 0, found.err


def test_a_registry_that_asks_for_a_client_certificate_gets_the_one_beside_its_ca(
        tls_world: TlsWorld, tmp_path: Path) -> None:
    name = f"{tls_world.mutual.host}/app2:v1"
    ca_only = certs_dir(tmp_path / "ca-only", {"ca.crt": tls_world.server_ca.pem})
    refused = cli(tmp_path, "pull", "--cert-dir", str(ca_only), name)
    assert refused.rc == 1 and refused.err.count("\n") == 1
    assert refused.err.startswith(f"Error: registry {tls_world.mutual.host}: unreachable")
    assert "the registry wants a client certificate" in refused.err

    both = certs_dir(tmp_path / "both", {"ca.crt": tls_world.server_ca.pem, "client.cert": tls_world.client.cert,
                                         "client.key": tls_world.client.key})
    pulled = cli(tmp_path, "pull", "--cert-dir", str(both), name)
    assert pulled.rc == 0, pulled.err

    # a key without its certificate, and a certificate without its key, as Docker refuses them
    no_key = certs_dir(tmp_path / "no-key", {"ca.crt": tls_world.server_ca.pem, "client.cert": tls_world.client.cert})
    lone_key = certs_dir(tmp_path / "lone-key", {"ca.crt": tls_world.server_ca.pem, "client.key": tls_world.client.key})
    for directory, problem in ((no_key, "missing key client.key for client certificate client.cert"),
                               (lone_key, "missing client certificate client.cert for key client.key")):
        failed = cli(tmp_path, "pull", "--cert-dir", str(directory), name)
        hint = " (CA certificates end in .crt)" if "missing key" in problem else ""
        assert (failed.rc, failed.err) == (
            1, f"Error: registry {tls_world.mutual.host}: certificates: {directory}: {problem}{hint}\n")


def test_an_insecure_registry_is_asked_in_https_unchecked_then_in_plain_http(
        tls_world: TlsWorld, tmp_path: Path) -> None:
    tls_host, plain_host = tls_world.tls.host, tls_world.plain.host
    unchecked = cli(tmp_path, "pull", "--insecure-registry", tls_host, f"{tls_host}/app1:v1")
    assert unchecked.rc == 0, unchecked.err  # its certificate is from a CA nobody here trusts

    refused = cli(tmp_path, "pull", f"{plain_host}/base:v1")
    assert refused.rc == 1 and refused.err.count("\n") == 1  # HTTPS only, and no TLS there
    assert refused.err.startswith(f"Error: registry {plain_host}: unreachable")
    assert "TLS: wrong version number; no TLS there? plain HTTP is for --insecure-registry" in refused.err

    before = tls_world.plain.mark()
    fell_back = cli(tmp_path, "pull", "--insecure-registry", plain_host, f"{plain_host}/app2:v1")
    assert fell_back.rc == 0, fell_back.err
    assert [(r["method"], r["uri"]) for r in tls_world.plain.requests(before)][:1] == [("GET", "/v2/app2/manifests/v1")]

    # a push goes the same way: HTTPS first, then plain HTTP, with its uploads
    assert cli(tmp_path, "tag", f"{plain_host}/app2:v1", f"{plain_host}/pushed/app2:v1").rc == 0
    pushed = cli(tmp_path, "push", "-q", "--insecure-registry", plain_host, f"{plain_host}/pushed/app2:v1")
    assert pushed.rc == 0, pushed.err
    assert cli(tmp_path, "manifest", "inspect", "--insecure", f"{plain_host}/pushed/app2:v1").rc == 0


def test_an_insecure_registry_gets_the_client_certificate_of_its_directory_and_its_own_stays_unchecked(
        tls_world: TlsWorld, tmp_path: Path) -> None:
    """--insecure-registry with a certs directory that holds a client certificate and no CA: the
    certificate is sent, and the registry's, from a CA nobody here trusts, is not checked."""
    host = tls_world.mutual.host
    client_only = certs_dir(tmp_path / "client-only", {"client.cert": tls_world.client.cert, "client.key": tls_world.client.key})
    pulled = cli(tmp_path, "pull", "--insecure-registry", host, "--cert-dir", str(client_only), f"{host}/app2:v1")
    assert pulled.rc == 0, pulled.err


def test_the_first_certs_directory_that_names_the_registry_wins(
        tls_world: TlsWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """containers' certs.d is read before Docker's: a directory of the registry in both, the first one counts."""
    host = tls_world.tls.host
    first, second = tmp_path / "containers-certs.d", tmp_path / "docker-certs.d"
    certs_dir(first / host, {"ca.crt": tls_world.server_ca.pem})
    certs_dir(second / host, {"ca.crt": tls_world.client_ca.pem})  # a CA that did not sign the registry's certificate
    monkeypatch.setattr(tls, "SYSTEM_CERT_DIRS", (first, second))
    pulled = cli(tmp_path, "pull", f"{host}/app1:v1")
    assert pulled.rc == 0, pulled.err


@pytest.mark.skipif(os.geteuid() != 0, reason="runs a user other than root")
def test_a_user_other_than_root_reads_its_own_certs_directory_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """As podman and skopeo: a user's ``~/.config/containers/certs.d/HOST`` comes before the
    system's directories; root has none of its own (its home's is not read)."""
    host = "registry.invalid:5000"
    with tempfile.TemporaryDirectory() as home:
        os.chmod(home, 0o755)
        mine = Path(home) / tls.USER_CERT_DIR / host
        mine.mkdir(parents=True)
        monkeypatch.setenv("HOME", home)

        def found_mine() -> None:
            if tls.certs_directory(host) != mine:
                raise OSError(errno.ENOENT, "not the user's own directory")

        assert errno_as(NOBODY, found_mine) is None
        assert tls.certs_directory(host) is None  # as root


def test_a_certs_directory_with_two_client_certificates_is_refused(tls_world: TlsWorld, tmp_path: Path) -> None:
    host = tls_world.mutual.host
    pair = {"ca.crt": tls_world.server_ca.pem}
    for name in ("a", "b"):
        pair.update({f"{name}.cert": tls_world.client.cert, f"{name}.key": tls_world.client.key})
    two = certs_dir(tmp_path / "two", pair)
    failed = cli(tmp_path, "pull", "--cert-dir", str(two), f"{host}/app2:v1")
    assert (failed.rc, failed.err) == (1, f"Error: registry {host}: certificates: {two}: more than one client certificate (a.cert, b.cert)\n")


def test_an_insecure_registry_s_blob_storage_elsewhere_has_its_certificate_checked(
        tls_world: TlsWorld, world: World, tmp_path: Path) -> None:
    """Certificates go unchecked on the insecure registry's own origin only: the blob storage it
    redirects to, elsewhere, must have a certificate this machine trusts."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(tls_world.server.cert), str(tls_world.server.key))  # from a CA nobody here trusts
    storage = regkit.BlobServer(world.open.storage, context)
    redirect = {"storage": [{"name": "redirect", "options": {"baseurl": storage.url}}]}
    registry = Registry.start(tmp_path / "redirecting", world.open.storage, address=ADDRESS,
                              tls={"certificate": str(tls_world.server.cert), "key": str(tls_world.server.key)}, middleware=redirect)
    try:
        result = cli(tmp_path, "pull", "--insecure-registry", registry.host, f"{registry.host}/app1:v1")
    finally:
        registry.stop()
        storage.stop()
    assert result.rc == 1 and result.err.count("\n") == 1
    assert result.err.startswith(f"Error: registry {registry.host}: unreachable (GET {storage.url}docker/registry/v2/blobs/sha256/")
    assert "TLS: certificate verify failed" in result.err
    assert storage.paths == []  # nothing was asked of it


def test_every_registry_command_takes_the_certs_directory_and_the_insecure_registry(
        tls_world: TlsWorld, tmp_path: Path) -> None:
    """search, login and manifest create|inspect|push reach a registry as pull does: through
    --cert-dir for a private CA, through --insecure-registry for plain HTTP; and not without."""
    given = certs_dir(tmp_path / "given", {"ca.crt": tls_world.server_ca.pem})
    plain = tls_world.plain.host
    for host, flags in ((tls_world.tls.host, ("--cert-dir", str(given))), (plain, ("--insecure-registry", plain))):
        listed = f"{host}/lists/app:v1"

        def steps(given_flags: tuple[str, ...]) -> list[tuple[str, ...]]:
            return [
                ("search", "--format", "{{.Name}}", *given_flags, f"{host}/app"),
                ("login", *given_flags, "-u", "someone", "--password-stdin", host),
                ("manifest", "inspect", *given_flags, f"{host}/app1:v1"),
                ("manifest", "create", *given_flags, listed, f"{host}/app1:v1"),
                ("manifest", "push", *given_flags, listed),
            ]

        for without, args in zip(steps(()), steps(flags), strict=True):
            stdin = "secret\n" if args[0] == "login" else None
            if without[:2] != ("manifest", "push"):  # pushes what create made, and create failed without
                refused = cli(tmp_path, *without, stdin=stdin)
                assert refused.rc == 1 and refused.err.startswith(f"Error: registry {host}: unreachable"), (args, refused.err)
            done = cli(tmp_path, *args, stdin=stdin)
            assert done.rc == 0, (args, done.err)
        assert cli(tmp_path, "manifest", "inspect", *flags, listed).rc == 0  # the pushed list is there


# -- which name gets TLS, how often a handshake is tried, where certificates are looked for ----


def _own_loopback_name() -> tuple[str, str] | None:
    """This machine's name and its address, where that is a loopback address (Debian's
    /etc/hosts gives the name 127.0.1.1) and the name can name a registry."""
    name = socket.gethostname().lower()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        return None
    label = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
    usable = name != "localhost" and re.fullmatch(rf"{label}(?:\.{label})*", name) is not None
    return (name, address) if usable and ipaddress.ip_address(address).is_loopback else None


@pytest.fixture
def loopback_name() -> Iterator[tuple[str, str]]:
    """A name other than localhost for a loopback address, and that address: the machine's own
    name where it is one, else a name put in /etc/hosts meanwhile (the line taken out after)."""
    own = _own_loopback_name()
    if own is not None:
        yield own
        return
    if os.geteuid() != 0:
        pytest.skip("needs a name for a loopback address other than localhost, or root to put one in /etc/hosts")
    hosts = Path("/etc/hosts")
    name = f"registry-{os.getpid()}.layerstore.test"
    line = f"127.0.0.1 {name}\n"
    text = hosts.read_text()
    with open(hosts, "a") as f:  # in place: /etc/hosts may be a mount of its own, which a rename cannot replace
        f.write(("" if text.endswith("\n") or not text else "\n") + line)
    try:
        yield name, "127.0.0.1"
    finally:
        kept = [kept_line for kept_line in hosts.read_text().splitlines(keepends=True) if kept_line != line]
        with open(hosts, "w") as f:
            f.write("".join(kept))


def test_a_name_for_a_loopback_address_other_than_localhost_gets_https(
        world: World, loopback_name: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain HTTP is for localhost and loopback addresses written as such: a name is judged by itself,
    not by what it resolves to (the Docker daemon would resolve it and speak plain HTTP)."""
    name, address = loopback_name
    ca = Authority(tmp_path, "loopback-ca")
    server = ca.issue("loopback-registry", server=True, dns_names=(name,))
    plain = Registry.start(tmp_path / "plain", world.open.storage, address=address)
    secure = Registry.start(tmp_path / "secure", world.open.storage, address=address,
                            tls={"certificate": str(server.cert), "key": str(server.key)})
    try:
        refused = cli(tmp_path / "store", "pull", f"{name}:{plain.port}/app1:v1")
        system = tmp_path / "certs.d"
        certs_dir(system / f"{name}:{secure.port}", {"ca.crt": ca.pem})
        monkeypatch.setattr(tls, "SYSTEM_CERT_DIRS", (system,))
        pulled = cli(tmp_path / "store", "pull", "-q", f"{name}:{secure.port}/app1:v1")
    finally:
        plain.stop()
        secure.stop()
    assert refused.rc == 1 and refused.err.count("\n") == 1
    assert refused.err.startswith(f"Error: registry {name}:{plain.port}: unreachable (GET https://{name}:{plain.port}/v2/")
    assert "TLS: wrong version number; no TLS there? plain HTTP is for --insecure-registry" in refused.err
    assert plain.requests() == []  # never asked in plain HTTP
    assert (pulled.rc, pulled.out) == (0, f"{name}:{secure.port}/app1:v1\n"), pulled.err


@contextlib.contextmanager
def counting_server(answer: Callable[[socket.socket], None]) -> Iterator[tuple[str, list[socket.socket]]]:
    """A TCP server on ADDRESS that hands each connection to answer, one after the other: its
    host:port, and the connections it accepted (appended as soon as each is accepted)."""
    listener = socket.create_server((ADDRESS, 0))
    listener.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(conn)
            with conn, contextlib.suppress(OSError):
                conn.settimeout(5)
                answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"{ADDRESS}:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join()
        listener.close()


def _no_tls(conn: socket.socket) -> None:
    """A plain HTTP server's answer to a TLS client hello."""
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


@pytest.mark.parametrize("kind", ["no TLS", "an untrusted certificate"])
def test_a_tls_handshake_that_fails_is_not_tried_again(tls_world: TlsWorld, tmp_path: Path, kind: str) -> None:
    """A handshake fails the same way every time: one connection, and the one-line error says why at once
    (where a refused connection or a 503 is tried again)."""
    if kind == "no TLS":
        answer, reason = _no_tls, "TLS: wrong version number; no TLS there? plain HTTP is for --insecure-registry"
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls_world.server.cert), str(tls_world.server.key))  # from a CA nobody here trusts

        def answer(conn: socket.socket) -> None:
            context.wrap_socket(conn, server_side=True).close()

        reason = "TLS: certificate verify failed"
    with counting_server(answer) as (host, accepted):
        result = cli(tmp_path, "pull", f"{host}/app1:v1")
    assert result.rc == 1 and result.err.count("\n") == 1, result.err
    assert result.err.startswith(f"Error: registry {host}: unreachable (GET https://{host}/v2/app1/manifests/v1: {reason}")
    assert len(accepted) == 1


@contextlib.contextmanager
def removed_after(directory: Path) -> Iterator[Path]:
    """directory, removed afterwards with the parents that were missing before (unless something
    else was put in them meanwhile)."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        for parent in missing[1:]:
            with contextlib.suppress(OSError):
                parent.rmdir()


@pytest.mark.skipif(os.geteuid() != 0, reason="writes to /etc and runs a user other than root")
def test_the_default_certs_directories_are_read_in_podman_s_order(
        tls_world: TlsWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --cert-dir, the first of these that exists is the registry's: the user's own
    ~/.config/containers/certs.d/HOST:PORT (not root's), /etc/containers/certs.d/HOST:PORT,
    /etc/docker/certs.d/HOST:PORT. A wrong CA in an earlier one fails the pull, however right
    a later one is."""
    host = tls_world.tls.host
    name = f"{host}/app1:v1"
    with contextlib.ExitStack() as stack:
        docker = stack.enter_context(removed_after(Path("/etc/docker/certs.d") / host))
        containers = stack.enter_context(removed_after(Path("/etc/containers/certs.d") / host))
        assert not docker.exists() and not containers.exists()
        certs_dir(docker, {"ca.crt": tls_world.server_ca.pem})
        pulled = cli(tmp_path / "store", "pull", "-q", name)
        assert pulled.rc == 0, pulled.err

        certs_dir(containers, {"ca.crt": tls_world.client_ca.pem})  # a CA that did not sign the registry's certificate
        refused = cli(tmp_path / "store", "pull", "-q", name)
        assert refused.rc == 1 and "TLS: certificate verify failed" in refused.err, refused.err

        with tempfile.TemporaryDirectory() as top:
            os.chmod(top, 0o755)
            home = Path(top, "home")
            home.mkdir()
            os.chown(home, NOBODY, NOBODY)
            certs_dir(home / tls.USER_CERT_DIR / host, {"ca.crt": tls_world.server_ca.pem})
            monkeypatch.setenv("HOME", str(home))
            monkeypatch.setenv("DOCKER_CONFIG", str(home / ".docker"))
            as_root = cli(home / "root-store", "pull", "-q", name)
            assert as_root.rc == 1 and "TLS: certificate verify failed" in as_root.err, as_root.err

            # the CA bundle this interpreter comes with may lie where only root reads (a Python under /root)
            bundle = str(shutil.copy(certifi.where(), home / "cacert.pem"))
            monkeypatch.setattr(certifi, "where", lambda: bundle)
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", bundle)

            def pull() -> None:
                result = cli(home / "store", "pull", "-q", name)  # its layer's whiteout is of mode 0, as umoci writes it
                if result.rc != 0:
                    raise OSError(errno.EIO, result.err)

            assert errno_as(NOBODY, pull, cwd=home) is None
            assert (home / "store/meta.db").stat().st_uid == NOBODY
