"""``python3 run_cli.py ARGS``: the layerstore command line in a process of its own (for tests that kill it).

Adds the registry commands to ``layerstore.cli.COMMANDS`` when that list does
not name them yet, then runs ``main``.
"""
import sys

from layerstore import cli

extra = tuple(n for n in ("pull", "login", "logout", "manifest", "search") if n not in cli.COMMANDS)
setattr(cli, "COMMANDS", cli.COMMANDS + extra)  # noqa: B010 - a wider tuple than the declared one
sys.exit(cli.main())
