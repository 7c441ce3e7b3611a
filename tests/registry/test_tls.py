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
import fcntl
import ipaddress
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from regkit import Registry, World, cli

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

    def issue(self, name: str, *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key(), ca=False)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ADDRESS))]),
                                            critical=False)
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
        yield TlsWorld(server_ca, client_ca, client, *registries)


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
