"""Command lines that do not parse: the Docker CLI's words and exit codes (125 for a flag,
1 for a wrong count of arguments or an unknown command), and pflag's boolean flags; what
``--debug`` adds to a mistake, and which store a command line names."""
from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from storecheck import REPO, cli_env
from test_cli_images import cli
from users import NOBODY, errno_as

from layerstore.cli import main

HELP = "See 'layerstore {}'.\n"

CASES = [
    # flags: exit 125, as cobra's flag errors
    (["images", "--bogus"], 125, "unknown flag: --bogus", "images --help"),
    (["images", "--bogus=1", "x"], 125, "unknown flag: --bogus", "images --help"),
    (["images", "-z"], 125, "unknown shorthand flag: 'z' in -z", "images --help"),
    (["images", "-qz"], 125, "unknown shorthand flag: 'z' in -qz", "images --help"),
    (["images", "x", "--digest"], 125, "unknown flag: --digest", "images --help"),  # no abbreviations
    (["images", "--form", "{{.ID}}"], 125, "unknown flag: --form", "images --help"),
    (["images", "--filter"], 125, "flag needs an argument: --filter", "images --help"),
    (["images", "-f"], 125, "flag needs an argument: --filter", "images --help"),
    (["images", "--quiet=maybe"], 125,
     'invalid argument "maybe" for "-q, --quiet" flag: strconv.ParseBool: parsing "maybe": invalid syntax', "images --help"),
    (["images", "--no-trunc=yes"], 125,
     'invalid argument "yes" for "--no-trunc" flag: strconv.ParseBool: parsing "yes": invalid syntax', "images --help"),
    (["search", "--limit", "ten", "busybox"], 125,
     'invalid argument "ten" for "--limit" flag: strconv.ParseInt: parsing "ten": invalid syntax', "search --help"),
    (["save", "--format", "tar", "x"], 125,
     "invalid argument \"tar\" for \"--format\" flag: expected one of 'docker-archive', 'oci-archive'", "save --help"),
    (["image", "ls", "--bogus"], 125, "unknown flag: --bogus", "image ls --help"),
    (["manifest", "inspect", "--bogus", "x"], 125, "unknown flag: --bogus", "manifest inspect --help"),
    (["--bogus", "images"], 125, "unknown flag: --bogus", "--help"),
    (["--bogus"], 125, "unknown flag: --bogus", "--help"),  # not the help that a missing command gets
    (["image", "-z"], 125, "unknown shorthand flag: 'z' in -z", "image --help"),
    # arguments: exit 1, as cobra's argument checks
    (["rmi"], 1, "'layerstore rmi' requires at least 1 argument", "rmi --help"),
    (["tag", "a"], 1, "'layerstore tag' requires 2 arguments", "tag --help"),
    (["tag", "a", "b", "c"], 1, "'layerstore tag' requires 2 arguments", "tag --help"),
    (["history"], 1, "'layerstore history' requires 1 argument", "history --help"),
    (["images", "a", "b"], 1, "'layerstore images' requires at most 1 argument", "images --help"),
    (["ps", "x"], 1, "'layerstore ps' accepts no arguments", "ps --help"),
    (["import"], 1, "'layerstore import' requires at least 1 and at most 2 arguments", "import --help"),
    (["manifest", "inspect", "a", "b", "c"], 1,
     "'layerstore manifest inspect' requires at least 1 and at most 2 arguments", "manifest inspect --help"),
    (["container", "rm"], 1, "'layerstore container rm' requires at least 1 argument", "container rm --help"),
    # commands
    (["imagse"], 1, "'imagse' is not a layerstore command", "--help"),
    (["image", "lx"], 1, "unknown command: layerstore image lx", "image --help"),
    (["system", "du"], 1, "unknown command: layerstore system du", "system --help"),
]


@pytest.mark.parametrize(("argv", "code", "message", "help_words"), CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_command_line_that_does_not_parse(tmp_path: Path, argv: list[str], code: int, message: str, help_words: str) -> None:
    proc = cli(tmp_path, *argv)
    assert (proc.returncode, proc.stdout) == (code, ""), proc.stderr
    assert proc.stderr == f"Error: {message}\n" + HELP.format(help_words)
    assert list(tmp_path.iterdir()) == []  # refused before the store was opened


@pytest.mark.parametrize("argv", [[], ["image"], ["system"], ["manifest"]], ids=lambda v: " ".join(v) or "nothing")
def test_a_command_group_alone_shows_its_help(tmp_path: Path, argv: list[str]) -> None:
    """As ``docker`` and ``docker image`` do: the help on stderr, exit 0."""
    proc = cli(tmp_path, *argv)
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    assert proc.stderr.startswith(f"usage: layerstore {' '.join(argv)}".rstrip() + " ")
    assert "COMMAND" in proc.stderr and "Error" not in proc.stderr


def test_a_boolean_flag_takes_gos_spellings_of_true_and_false(tmp_path: Path) -> None:
    """pflag's ``--quiet=false``: the same as no flag, ``--quiet=T`` the same as ``-q``; the last one given wins."""
    header = cli(tmp_path, "images").stdout
    assert header.startswith("REPOSITORY")
    for value in ("0", "f", "F", "false", "FALSE", "False"):
        assert cli(tmp_path, "images", f"--quiet={value}").stdout == header, value
    for value in ("1", "t", "T", "true", "TRUE", "True"):
        assert cli(tmp_path, "images", f"--quiet={value}").stdout == "", value
    assert cli(tmp_path, "images", "-q=true").stdout == ""
    assert cli(tmp_path, "images", "-q", "--quiet=false").stdout == header
    assert cli(tmp_path, "images", "--quiet=false", "-q").stdout == ""


def test_the_spellings_of_false_stay_out_of_the_help(tmp_path: Path) -> None:
    shown = cli(tmp_path, "images", "--quiet=false", "--help")
    assert shown.returncode == 0 and "--quiet" in shown.stdout and "=false" not in shown.stdout


@pytest.mark.parametrize("flag", ["--version", "-v"])
def test_the_version(tmp_path: Path, flag: str) -> None:
    """As ``docker --version`` prints ``Docker version ...``."""
    from unionfs import __version__

    proc = cli(tmp_path, flag)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"layerstore version {__version__}\n", "")


def test_debug_shows_the_traceback_that_a_mistake_otherwise_hides(tmp_path: Path) -> None:
    missing = tmp_path / "missing.tar"
    plain = cli(tmp_path / "store", "load", "-i", str(missing))
    assert (plain.returncode, plain.stderr) == (1, f"Error: archive {missing}: no such file\n")
    debug = cli(tmp_path / "store", "--debug", "load", "-i", str(missing))
    assert debug.returncode == 1
    assert debug.stderr.startswith("Traceback (most recent call last):")
    assert debug.stderr.rstrip().endswith(f"NotFound: archive {missing}: no such file")


def test_root_flag_wins_over_the_environment_and_the_environment_over_the_default(tmp_path: Path) -> None:
    flag, env = tmp_path / "flag", tmp_path / "env"
    example = str(REPO / "layerstore/demo/example.tar")
    both = subprocess.run([sys.executable, "-m", "layerstore", "--root", str(flag), "load", "-q", "-i", example],
                          capture_output=True, text=True, env=cli_env(env), timeout=60, check=False)
    assert both.returncode == 0, both.stderr
    assert (flag / "meta.db").exists() and not env.exists()
    alone = subprocess.run([sys.executable, "-m", "layerstore", "images", "-q"],
                           capture_output=True, text=True, env=cli_env(env), timeout=60, check=False)
    assert (alone.returncode, alone.stdout) == (0, "")  # an empty store made where the variable says
    assert (env / "meta.db").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the command line as another user")
def test_a_user_s_default_store_is_in_its_xdg_data_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --root and $LAYERSTORE_ROOT, a user other than root keeps the store where rootless
    podman keeps its own: $XDG_DATA_HOME/layerstore, else (unset or empty, as the XDG spec reads it)
    ~/.local/share/layerstore."""
    monkeypatch.delenv("LAYERSTORE_ROOT", raising=False)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--root", str(tmp_path / "warm"), "images", "-q"]) == 0  # its modules loaded while root can read them

    def images() -> None:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            if main(["images", "-q"]) != 0 or out.getvalue():
                raise OSError(errno.EIO, "images failed")

    with tempfile.TemporaryDirectory() as top:
        os.chmod(top, 0o755)
        home, data = Path(top, "home"), Path(top, "data")
        for directory in (home, data):
            directory.mkdir()
            os.chown(directory, NOBODY, NOBODY)
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("XDG_DATA_HOME", str(data))
        assert errno_as(NOBODY, images, cwd=top) is None
        assert (data / "layerstore/meta.db").stat().st_uid == NOBODY
        assert not (home / ".local").exists()

        for unset in ("", None):
            if unset is None:
                monkeypatch.delenv("XDG_DATA_HOME")
            else:
                monkeypatch.setenv("XDG_DATA_HOME", unset)
            assert errno_as(NOBODY, images, cwd=top) is None
            assert (home / ".local/share/layerstore/meta.db").stat().st_uid == NOBODY
            shutil.rmtree(home / ".local")
