"""Doing something as another user, or as root with fewer capabilities, from a test that runs as root."""
from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterable
from pathlib import Path

CAP_DAC_READ_SEARCH, CAP_FSETID = 2, 4
NOBODY = 65534  # the overflow ID: a user that owns nothing here
_CAP_VERSION_3 = 0x20080522
_PR_SET_KEEPCAPS = 8
_LIBC = ctypes.CDLL(None, use_errno=True)


def _bit(cap: int) -> tuple[int, int]:
    """Where cap is in capget's data: the index of its word in the effective set (the
    permitted set's is the next one), and its bit there."""
    return 3 * (cap // 32), 1 << (cap % 32)


def _drop_capability(cap: int) -> None:
    """Take cap out of this process's effective and permitted sets (capset(2))."""
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two of {effective, permitted, inheritable}
    if _LIBC.capget(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    word, bit = _bit(cap)
    data[word] &= ~bit
    data[word + 1] &= ~bit
    if _LIBC.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _only_capabilities(caps: Iterable[int]) -> None:
    """Make caps (kept through setuid by PR_SET_KEEPCAPS) the effective and permitted sets, nothing else."""
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    for cap in caps:
        word, bit = _bit(cap)
        data[word] |= bit
        data[word + 1] |= bit
    if _LIBC.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def errno_without(cap: int, action: Callable[[], object]) -> int | None:
    """Run action as root without capability cap (as a container's root may be)."""
    return _in_child(lambda: _drop_capability(cap), action, f"root without capability {cap}")


def errno_as(uid: int, action: Callable[[], object], *, groups: Iterable[int] = (), cwd: Path | str | None = None,
             gid: int | None = None, caps: Iterable[int] = ()) -> int | None:
    """Run action in a forked child with uid ``uid``, gid ``gid`` (default: the uid),
    the given supplementary groups and capabilities ``caps`` (none by default, as
    setuid leaves a user): the errno of the OSError it raised, or None.

    The child starts in ``cwd`` (chosen while still root), so the test's own
    private directories above it need not be searchable by that user.
    """
    def become() -> None:
        if cwd is not None:
            os.chdir(cwd)
        os.setgroups(list(groups))
        os.setresgid(*(uid if gid is None else gid,) * 3)
        kept = tuple(caps)
        if kept:
            _LIBC.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0)
        os.setresuid(uid, uid, uid)
        if kept:
            _only_capabilities(kept)
    return _in_child(become, action, f"uid {uid}")


def _in_child(become: Callable[[], None], action: Callable[[], object], who: str) -> int | None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test
        code = 0
        try:
            os.close(read_end)
            become()
            try:
                action()
                answer = "None"
            except OSError as exc:
                answer = str(exc.errno)
            os.write(write_end, answer.encode())
        except BaseException:  # noqa: BLE001 - whatever happens, the child ends here
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        answer = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert status == 0 and answer, f"the child process as {who} failed"
    return None if answer == "None" else int(answer)
