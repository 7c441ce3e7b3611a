"""Doing something as another user, from a test that runs as root."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path


def errno_as(uid: int, action: Callable[[], object], *, groups: Iterable[int] = (), cwd: Path | str | None = None) -> int | None:
    """Run action in a forked child with uid and gid ``uid`` and the given
    supplementary groups: the errno of the OSError it raised, or None.

    The child starts in ``cwd`` (chosen while still root), so the test's own
    private directories above it need not be searchable by that user.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test
        code = 0
        try:
            os.close(read_end)
            if cwd is not None:
                os.chdir(cwd)
            os.setgroups(list(groups))
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
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
    assert status == 0 and answer, f"the child process as uid {uid} failed"
    return None if answer == "None" else int(answer)
