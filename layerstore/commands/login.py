"""``login [SERVER]``: check credentials against a registry's ``/v2/``, then keep them as the Docker CLI does.

Credentials go to ``$DOCKER_CONFIG/config.json`` (``~/.docker/config.json``)
in Docker's format, so ``docker`` and this tool share one login. The password
comes from ``--password-stdin`` (needs ``-u``), ``-p`` (with Docker's warning),
or a prompt on a terminal. Nothing is written unless the registry accepted
the credentials. Without a server: Docker Hub.
"""
from __future__ import annotations

import argparse
import getpass
import sys

from layerstore.commands.pull import add_registry_options, quiet_http_logs
from layerstore.errors import AuthError, CommandError
from layerstore.registry.auth import Credentials, DockerConfig, hostname_of
from layerstore.registry.client import RegistryClient
from layerstore.store import Store

_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")


def register(sub: argparse._SubParsersAction, name: str = "login") -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="log in to a registry")
    p.add_argument("server", nargs="?", metavar="SERVER", help="registry host[:port] (default: Docker Hub)")
    p.add_argument("-u", "--username", help="username")
    p.add_argument("-p", "--password", help="password (prefer --password-stdin)")
    p.add_argument("--password-stdin", action="store_true", help="take the password from stdin")
    add_registry_options(p)
    p.set_defaults(func=run)


def server_domain(server: str | None) -> str:
    """The registry a SERVER argument names, as references name it (``docker.io`` for Docker Hub)."""
    host = hostname_of(server or "docker.io")
    return "docker.io" if host in _HUB else host


def verify(domain: str, creds: Credentials, args: argparse.Namespace) -> Credentials:
    """What to keep of creds once the registry took them: an identity token in place of the
    password where its token realm handed out a refresh token, as the Docker CLI keeps it."""
    client = RegistryClient(domain, insecure=args.insecure_registry, credentials=creds, cert_dir=args.cert_dir,
                            offline=True)
    try:
        client.ping()
    except AuthError:
        raise AuthError(f"registry {domain}", "login failed: unauthorized (incorrect username or password)") from None
    finally:
        client.close()
    if client.auth.refresh_token:
        return Credentials(creds.username, "", identity_token=client.auth.refresh_token)
    return creds


def _read_credentials(args: argparse.Namespace, stored: Credentials | None) -> Credentials:
    if args.password_stdin:
        if args.password:
            raise CommandError("--password and --password-stdin are mutually exclusive")
        if not args.username:
            raise CommandError("Must provide --username with --password-stdin")
        password = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    else:
        password = args.password
        if password:
            print("WARNING! Using --password via the CLI is insecure. Use --password-stdin.", file=sys.stderr)
    username = args.username
    if not username:
        if not sys.stdin.isatty():
            raise CommandError("Cannot perform an interactive login from a non TTY device")
        default = f" ({stored.username})" if stored else ""
        username = input(f"Username{default}: ").strip() or (stored.username if stored else "")
        if not username:
            raise CommandError("Username cannot be empty")
    if not password:  # an empty one from stdin too, as Docker does
        if not sys.stdin.isatty():
            raise CommandError("Cannot perform an interactive login from a non TTY device")
        password = getpass.getpass("Password: ")
        if not password:
            raise CommandError("Password is required")
    return Credentials(username, password)


def run(args: argparse.Namespace, store: Store) -> int:
    quiet_http_logs()
    domain = server_domain(args.server)
    config = DockerConfig()
    given = bool(args.username or args.password or args.password_stdin)
    stored = None if given else config.get(domain)  # as the Docker CLI: the store is asked only then
    if stored:
        print(f"Authenticating with existing credentials... [Username: {stored.username}]")
        try:
            verify(domain, stored, args)
            print("Login Succeeded")
            return 0
        except AuthError:
            if not sys.stdin.isatty():
                raise
    creds = verify(domain, _read_credentials(args, stored), args)
    if config.set(domain, creds) is None:
        print(
            f"WARNING! Your credentials are stored unencrypted in '{config.path}'.\n"
            "Configure a credential helper to remove this warning. See\n"
            "https://docs.docker.com/go/credential-store/\n",
            file=sys.stderr,
        )
    print("Login Succeeded")
    return 0
