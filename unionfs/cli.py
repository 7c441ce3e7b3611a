"""The ``unionfs`` command: mount like ``mount -t overlay``, unmount, or serve.

    unionfs [-f] [-d] -o lowerdir=TOP:...:BOTTOM[,upperdir=U,workdir=W] [SOURCE] MOUNTPOINT
    unionfs umount MOUNTPOINT

The SOURCE form is what mount.fuse runs for
``mount -t fuse.unionfs SOURCE MOUNTPOINT -o ...``. Without ``-f`` the command
returns once the filesystem answers (or fails with the driver's own error),
leaving the driver running in the background.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

from unionfs.mount import MountError, unanswered, unmount

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing for an unmount
if TYPE_CHECKING:
    from unionfs.options import MountOptions


def _die(message: str, code: int = 1) -> int:
    print(f"unionfs: {message}", file=sys.stderr)
    return code


def _check_paths(opts: MountOptions, mountpoint: str) -> str | None:
    from unionfs.layer import layout_problem
    from unionfs.mount import is_mounted

    for path in opts.lowerdirs + tuple(p for p in (opts.upperdir, opts.workdir) if p):
        if not os.path.isdir(path):
            return f"{path}: {'not a directory' if os.path.exists(path) else 'no such directory'}"
    if not os.path.isdir(mountpoint):
        return f"{mountpoint}: mount point is not a directory" if os.path.exists(mountpoint) else f"{mountpoint}: mount point does not exist"
    if is_mounted(mountpoint):
        return f"{mountpoint}: mount point in use (unmount it first)"
    return layout_problem(opts.lowerdirs, opts.upperdir, opts.workdir)


def _daemonize() -> int:
    """Fork the driver off in a session of its own. The parent leaves with its exit
    code once the child is mounted or dead; the child gets the descriptor to say it
    is mounted on. A fork, not a new interpreter: no thread runs yet, and
    the imports are done (half of the time a mount took)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1):  # stderr stays until the mount is up: its errors are the command's
            os.dup2(null, target)
        os.close(null)
        return write_fd
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as ready:
        signal = ready.read()  # to the end: the child has let go of the pipe and of our terminal
    code = 0
    if signal != b"1":
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status) or 1
    # Nothing of the parent's needs tearing down, and the interpreter's teardown
    # took an eighth of the time a mount command takes.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _ready_callback(fd: int, debug: bool) -> Callable[[], None] | None:
    if fd < 0:
        return None

    def ready() -> None:
        if not debug:  # a daemon: nobody reads our terminal any more
            null = os.open(os.devnull, os.O_RDWR)
            for target in (0, 1, 2):
                os.dup2(null, target)
            os.close(null)
        # Last: the command returns when the pipe closes, and then the daemon holds only
        # what it serves with.
        os.write(fd, b"1")
        os.close(fd)

    return ready


def umount_main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        return _die("usage: unionfs umount MOUNTPOINT", 2)
    try:
        answered = unmount(argv[0])
    except MountError as exc:
        return _die(str(exc))
    if not answered:
        print(f"unionfs: {unanswered(argv[0])}", file=sys.stderr)
    return 0


def _is_unmount(argv: list[str]) -> bool:
    return bool(argv) and argv[0] in ("umount", "unmount")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if _is_unmount(argv):
        return umount_main(argv[1:])
    return mount_main(argv)


def console() -> None:
    """The ``unionfs`` command. An unmount leaves without the interpreter's teardown,
    which took a fifth of its time; it has no thread and nothing else to close."""
    code = main()
    if _is_unmount(sys.argv[1:]):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def mount_main(argv: list[str]) -> int:
    # Imported here: an unmount needs none of it, and Python's start is most of its time.
    import argparse
    import logging

    from unionfs import __version__
    from unionfs.mount import serve
    from unionfs.options import OptionError, parse

    parser = argparse.ArgumentParser(
        prog="unionfs",
        usage="unionfs [-f] [-d] -o lowerdir=TOP:...:BOTTOM[,upperdir=U,workdir=W] [SOURCE] MOUNTPOINT\n"
        "       unionfs umount MOUNTPOINT",
        description="Mount a union of directories with overlayfs semantics over FUSE.",
    )
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS")
    parser.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    parser.add_argument("-d", "--debug", action="store_true", help="log every request (implies -f)")
    parser.add_argument("--version", action="version", version=f"unionfs {__version__}")
    parser.add_argument("paths", nargs="+", metavar="[SOURCE] MOUNTPOINT")
    args = parser.parse_args(argv)
    if len(args.paths) > 2:
        parser.error("expected [SOURCE] MOUNTPOINT")
    source = args.paths[0] if len(args.paths) == 2 else "unionfs"
    mountpoint = args.paths[-1]
    try:
        opts = parse(args.options)
    except OptionError as exc:
        return _die(str(exc), 2)
    problem = _check_paths(opts, mountpoint)
    if problem:
        return _die(problem)
    ready_fd = -1
    if not (args.foreground or args.debug):
        ready_fd = _daemonize()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="unionfs: %(levelname)s %(name)s: %(message)s")
    try:
        serve(opts, mountpoint, fsname=source, debug=args.debug, on_ready=_ready_callback(ready_fd, args.debug))  # type: ignore[arg-type]
    except OSError as exc:
        return _die(f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc))
    except ValueError as exc:
        return _die(str(exc))
    except RuntimeError as exc:
        return _die(f"{mountpoint}: mount failed ({exc})")
    return 0


if __name__ == "__main__":
    console()
