"""The ``layerstore`` command: Docker's image commands, daemonless.

Data goes to stdout, with ``pull``'s and ``push``'s progress as Docker prints
it there; other progress and diagnostics go to stderr. A user mistake is
one line on stderr and exit 1; a command line that does not parse is said
as the Docker CLI says it, with its exit codes (``layerstore.usage``); a
traceback only with ``--debug``. A failure of the system (a full disk, a store that cannot be
written) is one line too, naming the operation it stopped:
``Error: load big.tar: No space left on device``. Each command lives in ``layerstore.commands.<name>`` and stays
thin over the library.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sqlite3
import sys

from layerstore.errors import LayerStoreError
from unionfs import __version__
from layerstore.usage import Parser, UsageError

COMMANDS = (
    "pull", "load", "images", "tag", "rmi", "inspect", "history", "save",
    "mount", "umount", "ps", "diff", "commit", "rm", "prune", "system",
    "manifest", "search", "login", "logout", "push", "fsck", "import", "export",
)


# ``image SUBCOMMAND``: Docker's management-command spellings of the image commands
IMAGE_ALIASES = (
    ("ls", "images"), ("list", "images"), ("rm", "rmi"), ("prune", "prune"), ("inspect", "inspect"), ("load", "load"),
    ("save", "save"), ("tag", "tag"), ("history", "history"), ("pull", "pull"), ("push", "push"),
    ("import", "import"),
)
# ``container SUBCOMMAND``: those of the container commands (mount and umount as podman has them)
CONTAINER_ALIASES = (
    ("ls", "ps"), ("list", "ps"), ("ps", "ps"), ("rm", "rm"), ("diff", "diff"), ("commit", "commit"),
    ("export", "export"), ("mount", "mount"), ("umount", "umount"),
)
MANAGEMENT = {"image": IMAGE_ALIASES, "container": CONTAINER_ALIASES}


def named_commands(argv: list[str]) -> set[str] | None:
    """The command modules that argv needs (``image ls`` needs ``images``), or None for
    all of them: for help, a mistyped command, or anything this does not follow."""
    words = iter(argv)
    for word in words:
        if word == "--debug":
            continue
        if word == "--root":
            next(words, None)
            continue
        if word.startswith("--root="):
            continue
        if word in COMMANDS:
            return {word}
        if word in MANAGEMENT:
            alias = dict(MANAGEMENT[word]).get(next(words, ""))
            return {word, alias} if alias else None
        return None
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line, or, given argv, only the command it names. Each command
    registers itself from its module, and importing the registry's HTTP stack for the
    commands that talk to one took half of the time a local command takes to start."""
    wanted = named_commands(argv) if argv is not None else None
    parser = Parser(prog="layerstore", description="Daemonless image store with Docker's image commands.")
    parser.add_argument("--root", help="store directory (default: $LAYERSTORE_ROOT, /var/lib/layerstore as root)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--version", action="version", version=f"layerstore version {__version__}",
                        help="print version information and quit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        if wanted is not None and name not in wanted:
            continue
        try:
            module = importlib.import_module(f"layerstore.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"layerstore.commands.{name}":
                raise
            continue
        module.register(sub)
    for group, aliases in MANAGEMENT.items():
        if wanted is not None and group not in wanted:
            continue
        managed = sub.add_parser(group, help=f"{group} commands ({group} ls, {group} rm, ...)")
        group_sub = managed.add_subparsers(dest="management_command", metavar="COMMAND")
        group_sub.required = True
        for alias, name in aliases:
            if wanted is not None and name not in wanted:
                continue
            try:
                importlib.import_module(f"layerstore.commands.{name}").register(group_sub, alias)
            except ModuleNotFoundError:
                continue
    return parser


# what a command works on, the first found
OPERANDS = ("input", "source", "image", "images", "name", "container", "containers")


def operation(args: argparse.Namespace) -> str:
    """The command and what it works on (``pull busybox:latest``): an OS error names the work it stopped."""
    command = getattr(args, "management_command", None) or args.command
    for attr in OPERANDS:
        value = getattr(args, attr, None)
        if isinstance(value, list):
            value = " ".join(value)
        if value:
            return f"{command} {'stdin' if value == '-' else value}"
    return str(command)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(argv).parse_args(argv)
    except UsageError as exc:
        sys.stderr.write(exc.report())
        return exc.code
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="layerstore: %(message)s")
    from layerstore.store import Store

    try:
        with Store(args.root) as store:
            return int(args.func(args, store) or 0)
    except LayerStoreError as exc:
        if args.debug:
            raise
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader of stdout went away (| head): an OSError, but no mistake
        return 141
    except OSError as exc:
        if args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"Error: {operation(args)}: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:  # the metadata database itself failed (a full disk is an OSError already)
        if args.debug:
            raise
        print(f"Error: {operation(args)}: metadata database: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
