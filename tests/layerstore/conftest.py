"""Fixtures shared by the layer store's tests."""
from __future__ import annotations

from collections.abc import Iterator

import gocli
import pytest


@pytest.fixture(scope="session")
def go_cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[gocli.Ask]:
    """The Go comparison program, built and started once for every module that asks it."""
    with gocli.running(tmp_path_factory.mktemp("gocli")) as ask:
        yield ask
