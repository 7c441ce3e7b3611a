"""A registry's own TLS: its CA certificates and a client certificate, from a certs.d directory.

Docker reads ``/etc/docker/certs.d/HOST:PORT/``; podman and skopeo read
``~/.config/containers/certs.d/HOST:PORT/`` (as a user other than root),
then ``/etc/containers/certs.d/HOST:PORT/``, then Docker's; the first of these
that exists is the registry's. ``--cert-dir DIR`` names the directory itself,
as podman's and skopeo's option does. In it, as Docker reads it:
``*.crt`` are CA certificates trusted for this registry, on top of the
system's; ``NAME.cert`` with ``NAME.key`` is the client certificate, for a
registry that asks for one (mutual TLS).
"""
from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

SYSTEM_CERT_DIRS = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))
USER_CERT_DIR = Path(".config/containers/certs.d")  # under the home directory


class CertsError(ValueError):
    """A certs.d directory that cannot be used as it is."""


@dataclass(frozen=True)
class RegistryCerts:
    directory: Path
    cas: tuple[Path, ...]
    client: tuple[Path, Path] | None  # (certificate, key)

    def context(self) -> ssl.SSLContext:
        """The system's trust (and requests' own bundle, which it would use otherwise),
        this registry's CAs, and its client certificate."""
        ctx = ssl.create_default_context()
        try:
            import certifi

            ctx.load_verify_locations(certifi.where())
        except ImportError:
            pass
        try:
            for ca in self.cas:
                ctx.load_verify_locations(str(ca))
            if self.client is not None:
                ctx.load_cert_chain(str(self.client[0]), str(self.client[1]))
        except (ssl.SSLError, OSError) as exc:
            raise CertsError(f"{self.directory}: {getattr(exc, 'strerror', None) or exc}") from None
        return ctx


def certs_directory(host: str, cert_dir: str | None = None) -> Path | None:
    """Where host's certificates are: cert_dir if given, else the first certs.d/HOST that exists."""
    if cert_dir is not None:
        return Path(cert_dir)
    bases = list(SYSTEM_CERT_DIRS)
    if os.geteuid() != 0:
        bases.insert(0, Path.home() / USER_CERT_DIR)
    for base in bases:
        path = base / host
        if path.is_dir():
            return path
    return None


def read(directory: Path) -> RegistryCerts:
    """Docker's ReadCertsDirectory: CAs, and a client certificate whose key is beside it."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise CertsError(f"{directory}: {exc.strerror}") from None
    cas = tuple(directory / n for n in names if n.endswith(".crt"))
    certs = [n for n in names if n.endswith(".cert")]
    keys = [n for n in names if n.endswith(".key")]
    for key in keys:
        if key.removesuffix(".key") + ".cert" not in certs:
            raise CertsError(f"{directory}: missing client certificate {key.removesuffix('.key')}.cert for key {key}")
    for cert in certs:
        if cert.removesuffix(".cert") + ".key" not in keys:
            raise CertsError(f"{directory}: missing key {cert.removesuffix('.cert')}.key for client certificate {cert}"
                             " (CA certificates end in .crt)")
    if len(certs) > 1:
        raise CertsError(f"{directory}: more than one client certificate ({', '.join(certs)})")
    client = (directory / certs[0], directory / (certs[0].removesuffix(".cert") + ".key")) if certs else None
    return RegistryCerts(directory, cas, client)
