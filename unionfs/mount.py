"""Mounting and unmounting: the Python API and the FUSE process.

``mounted(spec, mountpoint)`` is what the layer store and the tests use: it
starts the driver as its own process (a crash of the filesystem never takes
the caller down), returns once the mount is up, and always unmounts, lazily
if it must, so that a dead mount never hangs whoever comes next.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

TYPE_CHECKING = False  # typing.TYPE_CHECKING: an unmount imports neither typing nor the options' parser
if TYPE_CHECKING:
    from unionfs.options import MountOptions


class MountError(RuntimeError):
    """The driver could not mount, or a mount could not be removed."""


@dataclass(frozen=True)
class MountSpec:
    """A union to mount, as a value: lower dirs top first, optional upper and work dirs."""

    lowerdirs: tuple[str, ...]
    upperdir: str | None = None
    workdir: str | None = None
    options: tuple[str, ...] = ()

    def option_string(self) -> str:
        def esc(path: str) -> str:  # as overlayfs reads them (options.unescape)
            return os.fspath(path).replace("\\", "\\\\").replace(",", "\\,")

        parts = ["lowerdir=" + ":".join(esc(p).replace(":", "\\:") for p in self.lowerdirs)]
        if self.upperdir is not None:
            parts.append("upperdir=" + esc(self.upperdir))
        if self.workdir is not None:
            parts.append("workdir=" + esc(self.workdir))
        parts.extend(self.options)
        return ",".join(parts)


def unescape_mountinfo(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _in_resolved_dir(path: str) -> str:
    """path with its directory's symlinks resolved and its last name as it is: the
    mount point itself is never looked at (see is_mounted)."""
    head, name = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(head), name)


def is_mounted(mountpoint: str) -> bool:
    """True for any mount at mountpoint, a dead FUSE mount included (ismount says False there).

    Never looks at the mount point itself: on a mount whose driver no longer
    answers, even a stat would wait for it."""
    path = os.path.abspath(mountpoint)
    candidates = {path, _in_resolved_dir(path)}
    try:
        os.readlink(path)  # a symlink's type is known without asking the mount: a mount is at its target
        candidates.add(os.path.realpath(path))
    except OSError:
        pass
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return any(unescape_mountinfo(line.split()[4]) in candidates for line in f)


def fusermount() -> str | None:
    """The setuid helper that mounts and unmounts FUSE for users (fuse3's, else fuse's)."""
    import shutil

    return shutil.which("fusermount3") or shutil.which("fusermount")


SETTLE_SECONDS = 30.0  # how long settle waits for a driver by default
_SYNC_ROOT = "import os, sys; os.fsync(os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))"
_left_waiting: list[int] = []  # settle's children that were still waiting: reaped once they end


def _reap_left_waiting() -> None:
    for pid in list(_left_waiting):
        try:
            ended = os.waitpid(pid, os.WNOHANG)[0] != 0
        except ChildProcessError:
            ended = True
        if ended:
            _left_waiting.remove(pid)


def settle(mountpoint: str, timeout: float | None = None) -> bool:
    """Ask the driver to finish its pending copy-ups, so that the upper directory
    is complete: an fsync of the mount's root directory does that. Returns whether
    the driver answered within timeout (SETTLE_SECONDS by default; a dead mount
    answers at once).

    Asked by a child process, not a thread of this one: the kernel waits
    uninterruptibly for a request that the driver has taken, and over io_uring it
    takes every request as soon as it is made. A thread asking a stopped or stuck
    driver would keep this process from exiting, SIGKILL included. A child left
    waiting ends when the driver answers or its connection ends. The child is
    coreutils' ``sync FILE``, which fsyncs what it is given, where it is found: a
    new interpreter took longer to start than the rest of an unmount."""
    import select
    import shutil

    _reap_left_waiting()
    tool = shutil.which("sync")
    argv = [tool, mountpoint] if tool else [sys.executable, "-I", "-S", "-c", _SYNC_ROOT, mountpoint]
    # Nothing of the caller's: a child left waiting must not keep a pipe of its output open.
    quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=quiet)
    pidfd = os.pidfd_open(pid)
    try:
        poller = select.poll()  # not select(): the pidfd may be numbered beyond FD_SETSIZE
        poller.register(pidfd, select.POLLIN)
        answered = bool(poller.poll(1000 * (SETTLE_SECONDS if timeout is None else timeout)))
    finally:
        os.close(pidfd)
    if not answered:
        _left_waiting.append(pid)
        return False
    with contextlib.suppress(ChildProcessError):  # reaped already by whoever waits for any child
        os.waitpid(pid, 0)
    return True


def unanswered(mountpoint: str) -> str:
    """What to tell whoever unmounted mountpoint when its driver did not answer (see unmount)."""
    return (f"{mountpoint}: the driver did not answer in {SETTLE_SECONDS:.0f} s: unmounted without waiting"
            " for its pending copy-ups")


def unmount(mountpoint: str, settle_timeout: float | None = None) -> bool:
    """Unmount, once pending copy-ups are in place; a busy or dead mount is
    detached lazily instead of hanging. Returns False where the driver did not
    answer within settle_timeout (SETTLE_SECONDS by default): the mount is
    detached all the same, and its pending copy-ups go into place when the
    driver goes on, or are cleared by the next mount of the layers if it never
    does, as after a crash."""
    import subprocess  # here, not at the top: the driver that serves a mount never needs it

    if not is_mounted(mountpoint):
        raise MountError(f"{mountpoint}: not mounted")
    answered = settle(mountpoint, settle_timeout)
    tool = fusermount()
    lazy = [[tool, "-u", "-z", mountpoint]] if tool else []
    if answered:
        attempts = ([[tool, "-u", mountpoint]] if tool else []) + [["umount", mountpoint]] + lazy
        attempts.append(["umount", "-l", mountpoint])
    else:
        # umount(8) looks at the mount point's attributes unless told not to (-c, with
        # a canonical path), and a driver that does not answer keeps it waiting for them.
        attempts = lazy + [["umount", "-l", "-c", _in_resolved_dir(mountpoint)]]
    last = ""
    for cmd in attempts:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode == 0 or not is_mounted(mountpoint):
            return answered
        last = result.stderr.strip()
    raise MountError(f"{mountpoint}: cannot unmount: {last}")


def mount(
    spec: MountSpec,
    mountpoint: str,
    *,
    timeout: float = 60.0,
    extra_args: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
) -> None:
    """Start the driver for spec on mountpoint; returns once the mount answers.

    env adds variables to the driver's environment (fault-injection tests arm
    ``unionfs.crashpoints`` that way).
    """
    import subprocess

    cmd = [sys.executable, "-m", "unionfs", *extra_args, "-o", spec.option_string(), os.fspath(mountpoint)]
    full_env = {**os.environ, **env} if env else None
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, env=full_env,
                            check=False)
    if result.returncode != 0:
        raise MountError(result.stderr.strip() or f"unionfs exited with {result.returncode}")


@contextlib.contextmanager
def mounted(spec: MountSpec, mountpoint: str, **kwargs: object) -> Iterator[str]:
    mount(spec, mountpoint, **kwargs)  # type: ignore[arg-type]
    try:
        yield os.fspath(mountpoint)
    finally:
        if is_mounted(mountpoint):
            unmount(mountpoint)


def fuse_options(opts: MountOptions, fsname: str) -> dict[str, object]:
    """The options handed to libfuse: let the kernel answer from its caches."""
    kwargs: dict[str, object] = {
        "fsname": fsname,
        "subtype": "unionfs",
        "use_ino": True,
        "default_permissions": True,
        "kernel_cache": True,  # lower layers never change; the upper only through us
        "entry_timeout": opts.timeout,
        "attr_timeout": opts.attr_seconds,
        "negative_timeout": opts.timeout,
        "big_writes": True,
        "max_write": 131072,
        "max_read": 131072,
        "atomic_o_trunc": True,  # open(O_TRUNC) copies up no data
        "nonempty": True,  # overlayfs mounts over non-empty directories too
        "hard_remove": True,  # no .fuse_hidden renames: open files are served by fd, not path
    }
    if opts.allow_other:
        kwargs["allow_other"] = True
    if opts.allow_root:
        kwargs["allow_root"] = True
    if opts.read_only:
        kwargs["ro"] = True
    for flag in opts.mount_flags:
        if flag not in ("ro", "rw"):
            kwargs[flag] = True
    if os.geteuid() == 0:
        # libfuse adds nosuid,nodev unless told otherwise; overlayfs does not.
        for flag in ("suid", "dev"):
            if "no" + flag not in opts.mount_flags:
                kwargs[flag] = True
    return kwargs


def serve(
    opts: MountOptions,
    mountpoint: str,
    *,
    fsname: str = "unionfs",
    debug: bool = False,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Run the filesystem in this process until it is unmounted or signalled."""
    from unionfs.layer import overlapping
    from unionfs.union import Union

    os.umask(0)  # the kernel applied the caller's umask already
    union = Union(
        opts.lowerdirs,
        None if opts.read_only else opts.upperdir,
        None if opts.read_only else opts.workdir,
        whiteout=opts.whiteout,
        durable=not opts.volatile,
        userxattr=opts.userxattr,
        static_nlink=opts.static_nlink,
    )
    if not union.private:
        layers = [*opts.lowerdirs, *((opts.upperdir, opts.workdir) if union.writable else ())]
        inside = overlapping(mountpoint, [layer for layer in layers if layer])
        if inside is not None:
            union.close()
            raise ValueError(f"{mountpoint}: the mount point is inside layer {inside}, which needs a private copy "
                             "of the layer's mount (CAP_SYS_ADMIN): mount elsewhere")
    if opts.engine == "fusepy":
        # imported only here: the core works without fusepy
        from unionfs.fuseops import UnionFUSE, UnionOperations

        operations = UnionOperations(union, on_ready, acl=opts.acl)
        UnionFUSE(operations, mountpoint, foreground=True, debug=debug, **fuse_options(opts, fsname))
        return
    from unionfs.handlers import Requests, Timeouts
    from unionfs.session import MountRequest, Session

    try:
        requests = Requests(union, Timeouts(opts.timeout, opts.attr_seconds, opts.timeout), ids=opts.ids, acl=opts.acl)
        target = MountRequest(
            os.path.abspath(mountpoint), fsname, "unionfs", opts.mount_flags,
            allow_other=opts.allow_other or opts.allow_root, read_only=opts.read_only,
        )
        session = Session(requests, target, debug=debug, on_ready=on_ready, io_uring=opts.io_uring)
        if opts.allow_root and not opts.allow_other:
            session.owners = {0, os.getuid()}
        session.mount()
        session.run(on_idle=requests.close)
    finally:
        union.close()
