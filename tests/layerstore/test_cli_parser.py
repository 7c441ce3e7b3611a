"""The command line parser built for the command named: the same parse as the whole
parser gives, without importing the commands it does not run."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from layerstore.cli import COMMANDS, MANAGEMENT, build_parser, named_commands

REPO = Path(__file__).resolve().parents[2]

ARGVS = [
    ["images"],
    ["--root", "/srv/store", "images", "-a", "--format", "{{.ID}}"],
    ["--root=/srv/store", "--debug", "rmi", "-f", "a:1", "b:2"],
    ["image", "ls", "--digests", "busybox"],
    ["image", "rm", "x"],
    ["image", "pull", "-q", "127.0.0.1:5000/a/b:c"],
    ["pull", "--platform", "linux/arm64", "-a", "localhost:5000/busybox"],
    ["manifest", "inspect", "--verbose", "busybox"],
    ["search", "--limit", "3", "--filter", "stars=2", "busy"],
    ["save", "-o", "out.tar", "a", "b"],
    ["tag", "a", "b"],
    ["container", "ls", "-q"],
    ["container", "export", "-o", "out.tar", "box"],
    ["image", "import", "-c", "CMD sh", "-", "x:1"],
]


@pytest.mark.parametrize("case", [
    (["images"], {"images"}),
    (["--debug", "--root", "images", "tag", "x", "y"], {"tag"}),  # "images" is --root's value
    (["--root=/x", "pull", "a"], {"pull"}),
    (["image", "ls"], {"image", "images"}),
    (["image", "history", "a"], {"image", "history"}),
    (["container", "ls"], {"container", "ps"}),
    (["container", "rm", "-f", "a"], {"container", "rm"}),
], ids=lambda case: " ".join(case[0]))
def test_the_command_named_is_the_one_imported(case: tuple[list[str], set[str]]) -> None:
    words, wanted = case
    assert named_commands(words) == wanted


@pytest.mark.parametrize("words", [[], ["-h"], ["--help", "images"], ["imagse"], ["image"], ["image", "lx"],
                                   ["container", "run"], ["--root"],
                                   ["--version"]], ids=repr)
def test_help_and_mistakes_get_the_whole_parser(words: list[str]) -> None:
    assert named_commands(words) is None


@pytest.mark.parametrize("argv", ARGVS, ids=" ".join)
def test_the_parse_is_the_whole_parsers(argv: list[str]) -> None:
    assert vars(build_parser(argv).parse_args(argv)) == vars(build_parser().parse_args(argv))


def test_the_whole_parser_offers_every_command() -> None:
    parser = build_parser(["-h"])
    choices = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(choices) == {*COMMANDS, *MANAGEMENT}
    for group, aliases in MANAGEMENT.items():
        offered = choices[group]._subparsers._group_actions[0].choices  # type: ignore[union-attr]
        assert set(offered) == {alias for alias, _ in aliases}


@pytest.mark.parametrize(("argv", "http"), [(["images", "-q"], False), (["rmi", "x"], False), (["pull", "x"], True)],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_only_commands_that_talk_to_a_registry_import_the_http_stack(argv: list[str], http: bool) -> None:
    """What a local command costs to start: the registry's HTTP stack was half of it."""
    code = "import sys; from layerstore.cli import build_parser; build_parser(sys.argv[1:]); print('requests' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == str(http), out.stdout + out.stderr
