"""Tables (``images``, ``history``, ``system df``, any ``--format "table ..."``)
against Go's own ``text/tabwriter`` with the Docker CLI's settings: minimum
width 10, padding 3, spaces. ``gocli/main.go`` writes the same text through it.

Go's tabwriter also reads ``\\v``, ``\\f`` and ``\\xff`` escapes; Docker's
tables never hold them, and ``tabwrite`` does not: the texts below leave them out.
"""
from __future__ import annotations

from collections.abc import Callable

import gocli
import pytest
from budgets import examples, long_run_marks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layerstore.formatting import tabwrite

pytestmark = long_run_marks("TABLE_EXAMPLES", seconds_each=0.05)

Table = Callable[[str], str]


@pytest.fixture
def go(go_cli: gocli.Ask) -> Table:
    return lambda text: str(go_cli({"table": text})["out"])


CASES = [
    "REPOSITORY\tTAG\tIMAGE ID\tSIZE\nbusybox\tlatest\tabc\t4.26MB\n",
    "A\tB\nlonger than ten\tx\n",
    "a\tb\tc\n\nd\te\n",  # an empty line ends the block
    "no tabs here\na\tb\n",
    "a\tb\t\nc\t\t\n",  # empty cells, trailing tabs
    "a\tb",  # no newline at the end
    "x\t\n\t\n\ty\n",
    "日本語\tx\né\ty\n",  # runes, not bytes nor display width
    "a\tb\tc\td\ne\n\tf\tg\n",
    "\n\n\t\n",
    "",
]


@pytest.mark.parametrize("text", CASES)
def test_tables_are_laid_out_as_by_go(go: Table, text: str) -> None:
    assert tabwrite(text) == go(text)


cells = st.one_of(
    st.sampled_from(["", "a", "latest", "4.26MB", "<none>", "sha256:4b1c7a9e", "日本", "é", "  "]),
    st.text(alphabet="abcdefghij -:/.", max_size=20),
)
lines = st.lists(cells, max_size=6).map("\t".join)


@settings(max_examples=examples("TABLE_EXAMPLES", 300), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=st.lists(lines, max_size=8).map("\n".join), newline=st.booleans())
def test_generated_tables_are_laid_out_as_by_go(go: Table, body: str, newline: bool) -> None:
    text = body + "\n" if newline else body
    assert tabwrite(text) == go(text)
