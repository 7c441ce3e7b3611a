"""Waiting for what another process or thread brings about, within a bound."""
from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], bool], seconds: float, every: float = 0.01) -> bool:
    """Whether condition() came true within seconds, asked every so often."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True
