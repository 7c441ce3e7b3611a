"""Changes wait for the entries of their file that other threads have answered
but not yet handed to the kernel (see unionfs.unsent)."""
from __future__ import annotations

import threading
import time

import pytest

from unionfs import unsent as unsent_module
from unionfs.unsent import Unsent


def held_by_another_thread(unsent: Unsent, nodeids: list[int]) -> tuple[threading.Thread, threading.Event]:
    """A thread that holds nodeids until its event is set, then says its answer is out."""
    held, release = threading.Event(), threading.Event()

    def answer() -> None:
        unsent.hold(nodeids)
        held.set()
        release.wait()
        unsent.sent()
    thread = threading.Thread(target=answer)
    thread.start()
    held.wait()
    return thread, release


def test_a_change_waits_for_another_threads_answer_to_be_handed_over() -> None:
    unsent = Unsent()
    thread, release = held_by_another_thread(unsent, [7, 8])
    waited: list[float] = []
    start = time.monotonic()
    waiter = threading.Thread(target=lambda: (unsent.wait(8), waited.append(time.monotonic() - start)))
    waiter.start()
    time.sleep(0.2)
    assert not waited  # still waiting
    unsent.wait(9)  # another node: at once
    release.set()
    waiter.join()
    thread.join()
    assert waited and waited[0] >= 0.2
    assert not unsent.holding()


def test_a_threads_own_answer_never_holds_it_up() -> None:
    """A thread answers one request at a time: what it holds is out before its next request."""
    unsent = Unsent()
    unsent.hold([3])
    assert unsent.holding()
    start = time.monotonic()
    unsent.wait(3)
    assert time.monotonic() - start < 0.1
    unsent.sent()
    assert not unsent.holding()


def test_an_answer_never_handed_over_holds_a_change_up_only_so_long(monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(unsent_module, "WAIT_AT_MOST", 0.2)
    unsent = Unsent()
    thread, release = held_by_another_thread(unsent, [5])
    try:
        start = time.monotonic()
        unsent.wait(5)
        assert 0.2 <= time.monotonic() - start < 2
        assert "node 5: an entry answered" in caplog.text
    finally:
        release.set()
        thread.join()
