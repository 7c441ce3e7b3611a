"""Example budgets of the generated tests, and the time a long run of them may take.

Each generated test runs a CI-sized number of examples unless an environment
variable asks for more (``DIFF_EXAMPLES=5000``). The suite's per-test timeout
(setup.cfg) is sized for the CI budgets, and would cut a long run short, in
the middle of a mount, as a failure; a budget set by hand therefore brings a
timeout of its own, still a guard against a hang.
"""
from __future__ import annotations

import os

import pytest

# Hypothesis gives up shrinking a failure after five minutes; let it finish, so that
# a long run reports the smallest example rather than a timeout.
SHRINKING = 300.0


def set_by_hand(variable: str) -> int | None:
    """The budget the environment asks for, if any (unset, empty or 0: none)."""
    value = os.environ.get(variable, "").strip()
    return int(value or 0) or None


def examples(variable: str, default: int) -> int:
    return set_by_hand(variable) or default


def long_run_marks(variable: str, seconds_each: float) -> list[pytest.MarkDecorator]:
    """For a module's ``pytestmark``: with a budget set by hand, a timeout of
    ``seconds_each`` per example (generous against the time one takes on a busy
    machine) plus shrinking; without one, none, and the suite's own stays."""
    budget = set_by_hand(variable)
    return [] if budget is None else [pytest.mark.timeout(budget * seconds_each + SHRINKING)]
