"""Which interrupted request a copy-up stops for (unionfs.interrupts), without a
mount: the kernel's side is in tests/integration/test_killed_copyup.py."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading

from unionfs.interrupts import Interrupts, fatal_signal_pending

DYING = 4242  # the thread id taken here for a caller being killed


def header(unique: int, tid: int) -> tuple:
    return (40, 15, unique, 1, 0, 0, tid, 0, 0)  # len, opcode, unique, nodeid, uid, gid, pid, ...


def interrupts_answering(h: tuple | None) -> Interrupts:
    found = Interrupts(dying=lambda tid: tid == DYING)
    found.answering = lambda: h
    return found


def test_only_an_interrupted_request_of_a_dying_caller_stops() -> None:
    asked = interrupts_answering(header(8, DYING))
    assert not asked.caller_dying()  # not interrupted (yet)
    asked.interrupt(memoryview(struct.pack("<Q", 8)))
    assert asked.caller_dying()
    asked.answered(8)
    assert not asked.caller_dying() and not asked.asked
    alive = interrupts_answering(header(10, DYING + 1))
    alive.interrupt(memoryview(struct.pack("<Q", 10)))
    assert not alive.caller_dying()  # a signal it handles
    idle = interrupts_answering(None)
    idle.interrupt(memoryview(struct.pack("<Q", 10)))
    assert not idle.caller_dying()  # no request answered on this thread: a copy-up in-process


def test_interrupts_of_requests_long_answered_are_let_go() -> None:
    asked = interrupts_answering(header(2, DYING))
    for unique in range(2, 2 + 2 * 2000, 2):
        asked.interrupt(memoryview(struct.pack("<Q", unique)))
    assert len(asked.asked) == 1024
    assert 2 not in asked.asked and 2 * 2000 in asked.asked


def test_interrupts_from_several_threads_are_all_counted() -> None:
    asked = interrupts_answering(None)

    def record(start: int) -> None:
        for unique in range(start, start + 400):
            asked.interrupt(memoryview(struct.pack("<Q", unique)))
            asked.answered(unique - 1)

    threads = [threading.Thread(target=record, args=(n * 1000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(asked.asked) == [n * 1000 + 399 for n in range(4)]


def test_a_live_process_is_not_dying() -> None:
    assert not fatal_signal_pending(os.getpid())
    assert not fatal_signal_pending(threading.get_native_id())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not fatal_signal_pending(child.pid)  # gone: never a reason to stop
