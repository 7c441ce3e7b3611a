"""The FUSE session: mount ``/dev/fuse``, read requests, write replies.

The driver speaks the kernel's FUSE protocol itself. As root it mounts with
mount(2); otherwise ``fusermount3`` mounts and hands the device over a
socket, as libfuse does. Worker threads each read whole requests into their
own buffer and answer them, one reading at a time (``readturn``); a request
that takes long (a large copy-up, an fsync) holds one thread, not the mount.
Where the kernel offers FUSE over io_uring, requests come instead through a
queue per CPU (``uring``), answered by the same ``answer``.
SIGTERM and SIGINT unmount; the workers end when the kernel closes the
connection.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from unionfs import fuseproto as fp
from unionfs.syscalls import libc
from unionfs import uring
from unionfs.handlers import QUICK, WAITED_FOR, Requests
from unionfs.mount import fusermount, unescape_mountinfo
from unionfs.placement import Gathering
from unionfs.readturn import ReadTurn

log = logging.getLogger(__name__)

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_SYNCHRONOUS = 1, 2, 4, 8, 16
MS_DIRSYNC, MS_NOATIME = 128, 1024
MNT_DETACH = 2
_FLAG_BITS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
              "sync": MS_SYNCHRONOUS, "dirsync": MS_DIRSYNC, "noatime": MS_NOATIME}
_CLEARS = {"rw": "ro", "suid": "nosuid", "dev": "nodev", "exec": "noexec", "async": "sync", "atime": "noatime"}

libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


@dataclass(frozen=True)
class MountRequest:
    """What the kernel is asked for: where, under which name, with which flags."""

    mountpoint: str
    fsname: str = "unionfs"
    subtype: str = "unionfs"
    flags: Sequence[str] = ()  # generic flags: ro, nosuid, nodev, noexec, sync, dirsync, noatime and their opposites
    allow_other: bool = False
    read_only: bool = False

    def flag_names(self) -> set[str]:
        names = {"ro"} if self.read_only else set()
        for flag in self.flags:
            if flag in _CLEARS:
                names.discard(_CLEARS[flag])
            elif flag in _FLAG_BITS:
                names.add(flag)
        return names


def _mount_as_root(req: MountRequest, fd: int) -> None:
    flags = 0
    for name in req.flag_names():
        flags |= _FLAG_BITS[name]
    st = os.stat(req.mountpoint)
    data = f"fd={fd},rootmode={st.st_mode & 0o170000:o},user_id={os.getuid()},group_id={os.getgid()},default_permissions"
    if req.allow_other:
        data += ",allow_other"
    source = req.fsname.replace(",", "_")
    if libc.mount(os.fsencode(source), os.fsencode(req.mountpoint), f"fuse.{req.subtype}".encode(), flags, data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount: {os.strerror(err)}", req.mountpoint)


def _mount_with_fusermount(req: MountRequest) -> int:
    """Mount through the setuid helper; it sends the device fd back (SCM_RIGHTS)."""
    import socket  # a user's mount only: root's opens the device itself and starts no process
    import subprocess

    tool = fusermount()
    if tool is None:
        raise OSError(errno.EPERM, "mounting as a user needs fusermount3 (package fuse3)")
    options = sorted(req.flag_names() | {"nosuid", "nodev"})
    options += [f"fsname={req.fsname.replace(',', '_')}", f"subtype={req.subtype}", "default_permissions"]
    if req.allow_other:
        options.append("allow_other")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        proc = subprocess.Popen(
            [tool, "-o", ",".join(options), "--", req.mountpoint],
            env={**os.environ, "_FUSE_COMMFD": str(theirs.fileno())},
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        theirs.close()
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
        _, err = proc.communicate()
    if proc.returncode != 0 or not fds:
        for fd in fds:
            os.close(fd)
        raise OSError(errno.EPERM, (err or b"").decode(errors="replace").strip() or "fusermount3 failed")
    return fds[0]


def raise_readahead(mountpoint: str, kib: int) -> None:
    """A FUSE mount starts with 128 KiB of readahead; with as much as one request
    carries, a cold sequential read costs half the time. Only root may set it
    (in sysfs), so a user's mount keeps the default."""
    device = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if unescape_mountinfo(fields[4]) == mountpoint:
                    device = fields[2]  # the last one is ours: mounted just now
        if device is not None:
            with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w", encoding="ascii") as f:
                f.write(str(kib))
    except OSError as exc:
        log.debug("readahead of %s left as it is: %s", mountpoint, exc)


def unmount_lazily(mountpoint: str) -> None:
    if os.geteuid() == 0:
        libc.umount2(os.fsencode(mountpoint), MNT_DETACH)
        return
    import subprocess

    tool = fusermount()
    if tool:
        subprocess.run([tool, "-u", "-z", "--", mountpoint], capture_output=True, check=False)


_DRAIN_SECONDS = 2.0  # how long an unmounted connection's workers get to see that it ended
_FORGET_GATHER = 0.005  # seconds a /dev/fuse reader waits after a FORGET, when requests come by io_uring

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# Requests that carry no new access decision: libfuse lets them through under allow_root.
_ANY_CALLER = {fp.INIT, fp.READ, fp.WRITE, fp.FSYNC, fp.RELEASE, fp.READDIR, fp.READDIRPLUS, fp.FSYNCDIR,
               fp.RELEASEDIR, fp.FORGET, fp.BATCH_FORGET, fp.INTERRUPT, fp.DESTROY}


class _Answering:
    """The request one worker thread is answering now, if any (see ``Session.answer``):
    its unpacked header."""

    __slots__ = ("h",)

    def __init__(self) -> None:
        self.h: tuple | None = None


def _refuse(h: tuple, data: memoryview) -> None:
    raise OSError(errno.EACCES, os.strerror(errno.EACCES))


class Session:
    """One mounted connection and the threads that serve it."""

    def __init__(
        self,
        requests: Requests,
        req: MountRequest,
        *,
        threads: int = 8,
        debug: bool = False,
        on_ready: Callable[[], None] | None = None,
        io_uring: str = "auto",
    ) -> None:
        self.requests = requests
        self.on_ready = on_ready
        self.req = req
        self.threads = threads
        self.debug = debug
        self.handlers = requests.table()
        self.bufsize = requests.max_write + 4096  # a WRITE's payload plus its headers
        self.fd = -1
        self.owners: set[int] | None = None  # allow_root: only these uids (and the kernel's own requests)
        self._done = threading.Event()
        self._end_gate = threading.Lock()
        self._released = False  # the connection has ended and the lower layers are let go of (see _ended)
        self._answering: list[_Answering] = []  # one per worker thread that has answered a request
        self._local = threading.local()
        self._interrupts = requests.interrupts
        self._interrupts.answering = self._answering_now
        self.io_uring = io_uring  # auto: when the kernel offers it; on: or fail; off: /dev/fuse only
        self._queues: list[uring.QueueWorker] = []
        self._ring_threads: list[threading.Thread] = []
        self._gathering = Gathering(WAITED_FOR)  # the ring workers' (see placement)
        self._failure: OSError | None = None  # what ended the session, when not an unmount
        self._turn = ReadTurn()  # which worker reads /dev/fuse next

    def mount(self) -> None:
        if self.io_uring == "on" and not uring.kernel_offers():
            raise OSError(errno.EOPNOTSUPP, "io_uring=on, but the kernel does not offer FUSE over io_uring"
                          f" ({uring.SYSFS_ENABLE} is not Y)")
        if os.geteuid() == 0:
            fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
            try:
                _mount_as_root(self.req, fd)
            except BaseException:
                os.close(fd)
                raise
        else:
            fd = _mount_with_fusermount(self.req)
        self.fd = fd
        self.requests.notify = self.notify
        try:
            self._prepare_rings()
        except BaseException:
            unmount_lazily(self.req.mountpoint)
            raise

    def _prepare_rings(self) -> None:
        """Make the rings before INIT: once the kernel has agreed to io_uring, it holds
        every request until each CPU's queue has an entry, so agreeing to it and then
        failing to make a ring would hang the mount."""
        if self.io_uring == "off" or not uring.kernel_offers():
            return
        queues = uring.possible_cpus()
        per_queue = max(1, self.threads // queues)
        try:
            for qid in range(queues):
                for _ in range(per_queue):
                    self._queues.append(uring.QueueWorker(self.fd, qid, max(8192, self.requests.max_write)))
        except OSError as exc:
            self._drop_rings()
            if self.io_uring == "on":
                raise
            log.info("FUSE over io_uring not used: %s", exc)
            return
        self.requests.offer_io_uring = True

    def notify(self, code: int, payload: bytes) -> None:
        """A message the kernel did not ask for (unique 0, the code in the error field)."""
        self._send(self.fd, [fp.OUT_HEADER.pack(fp.OUT_HEADER.size + len(payload), code, 0), payload], -code)

    def run(self, on_idle: Callable[[], None] | None = None) -> None:
        """Serve until the mount goes away; SIGTERM/SIGINT unmount first. A queue
        worker that fails ends the session with its error (see ``_fail``).
        on_idle: called once the kernel has ended the connection and no request is
        being answered, before the threads have ended (they take some milliseconds,
        during which a layer's filesystem would stay busy)."""
        def stop(signum: int, frame: object) -> None:
            unmount_lazily(self.req.mountpoint)

        previous = {sig: signal.signal(sig, stop) for sig in _STOP_SIGNALS}
        workers = [threading.Thread(target=self._serve, name=f"fuse-{i}", daemon=True) for i in range(self.threads)]
        try:
            self._turn.start()
            for worker in workers:
                worker.start()
            while not self._done.wait(1.0):  # Python runs signal handlers between waits
                pass
            if self._failure is not None:
                unmount_lazily(self.req.mountpoint)  # the mount point is free again, as after a crash
                raise self._failure
            if on_idle is not None and self._released and self._idle_by(time.monotonic() + _DRAIN_SECONDS):
                on_idle()
        finally:
            self._turn.end()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            # The other workers each still have to read ENODEV (or their ring its end):
            # closed before that, the descriptor's number could be a new file's by then.
            deadline = time.monotonic() + _DRAIN_SECONDS
            for thread in workers + self._ring_threads:
                if thread.ident is not None:
                    thread.join(max(0.0, deadline - time.monotonic()))
            os.close(self.fd)

    def _serve(self) -> None:
        # Signals go to the main thread, which waits to run their handlers; one taken
        # by a worker would be noted but left unhandled until the main thread woke.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        buf = bytearray(self.bufsize)
        view = memoryview(buf)
        fd, header, turn, me, unsent = self.fd, fp.IN_HEADER, self._turn, object(), self.requests.unsent
        turn.take(me)
        try:
            while True:
                try:
                    if self.requests.over_io_uring:
                        size = self._read_forgets(fd, buf)
                    else:
                        size = os.readv(fd, [buf])
                except OSError as exc:
                    if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                        continue  # ENOENT: the request was interrupted before we read it
                    if exc.errno != errno.ENODEV:
                        log.error("reading /dev/fuse: %s", exc)
                    self._ended()  # ENODEV: unmounted
                    return
                turn.begin()
                self._reply(fd, header.unpack_from(buf), view, size)
                unsent.sent()
                if not turn.done(me):  # it took long, and another worker reads now
                    turn.take(me)
        finally:
            turn.leave(me)

    def _reply(self, fd: int, h: tuple, view: memoryview, size: int) -> None:
        """Answer one request read from /dev/fuse; its header is h, its body in view."""
        unique, out = h[2], fp.OUT_HEADER
        # The request is unpacked before a READ's data is read over it.
        code, payload = self.answer(h, view[fp.IN_HEADER.size:size], "dev", view)
        if payload is fp.NO_REPLY:
            return
        if code:
            reply = out.pack(16, -code, unique)
        elif payload is None:
            reply = out.pack(16, 0, unique)
        elif len(payload) > 4096:  # file data: not copied once more
            self._send(fd, [out.pack(16 + len(payload), 0, unique), payload], h[1])
            return
        else:
            reply = out.pack(16 + len(payload), 0, unique) + payload
        self._send(fd, [reply], h[1])
        if h[1] == fp.INIT and not code:  # refused: the kernel ends the connection
            self._initialized()

    def _ended(self) -> None:
        """The connection has ended (unmounted): the first thread to see it lets go of
        the lower layers at once (Requests.release_lowers), rather than after every
        thread has finished, and run() then finishes."""
        with self._end_gate:
            if not self._released:
                self._released = True
                try:
                    self.requests.release_lowers()
                except OSError as exc:
                    log.warning("the lower layers are let go of at exit only: %s", exc.strerror)
        self._done.set()

    def _read_forgets(self, fd: int, buf: bytearray) -> int:
        """Over io_uring, ``/dev/fuse`` brings only FORGET and INTERRUPT. Each FORGET read
        as it comes wakes a worker, most often on the other CPU, and takes the
        interpreter lock from the ring workers: one per unlinked file. So the one
        worker that reads (``readturn``) waits a little after a FORGET, for the
        kernel to gather the next ones into a BATCH_FORGET. Forgetting later only
        keeps node ids a few milliseconds longer; an INTERRUPT waits as long at most."""
        if self._done.is_set():  # unmounted: another reader read ENODEV
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        size = os.readv(fd, [buf])
        if fp.IN_HEADER.unpack_from(buf)[1] in (fp.FORGET, fp.BATCH_FORGET):
            time.sleep(_FORGET_GATHER)
        return size

    def _idle_by(self, deadline: float) -> bool:
        """Wait until no request is being answered; False if one still is at deadline."""
        while any(answering.h is not None for answering in tuple(self._answering)):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.0002)
        return True

    def answer(self, h: tuple, body: memoryview, via: str, reply_area: memoryview) -> tuple[int, fp.Reply]:
        """(errno, payload) for one request; file data is read into ``reply_area``.
        Once the connection has ended, no request is answered: marked as answering
        before it looks, a thread is seen by ``_idle_by``, or sees the end."""
        try:
            mine = self._local.answering
        except AttributeError:
            mine = self._local.answering = _Answering()
            self._answering.append(mine)
        mine.h = h
        try:
            if self._released:
                return errno.ENODEV, None  # nobody waits for the answer any more
            return self._answer(h, body, via, reply_area)
        finally:
            mine.h = None
            if self._interrupts.asked:
                self._interrupts.answered(h[2])

    def _answering_now(self) -> tuple | None:
        """The header of the request this thread is answering, if any."""
        mine = getattr(self._local, "answering", None)
        return None if mine is None else mine.h

    def _answer(self, h: tuple, body: memoryview, via: str, reply_area: memoryview) -> tuple[int, fp.Reply]:
        payload: fp.Reply
        handler = self.handlers.get(h[1])
        if self.owners is not None and h[4] not in self.owners and h[1] not in _ANY_CALLER:
            handler = _refuse  # allow_root: the kernel lets everyone in, libfuse's rule keeps them out
        code, payload = 0, None
        if handler is None:
            code = errno.ENOSYS
        else:
            try:
                result = handler(h, body)
                payload = result.read_into(reply_area) if isinstance(result, fp.FileRange) else result
            except OSError as exc:
                code = exc.errno if exc.errno and exc.errno > 0 else errno.EIO
                if code == errno.EIO:
                    log.exception("opcode %d on node %d failed", h[1], h[3])
            except Exception:
                log.exception("opcode %d on node %d failed", h[1], h[3])
                code = errno.EIO
        if self.debug:
            log.debug("op %d node %d uid %d via %s -> error %d, %d bytes", h[1], h[3], h[4], via, code,
                      len(payload) if code == 0 and isinstance(payload, (bytes, bytearray, memoryview)) else 0)
        return code, payload

    def _initialized(self) -> None:
        """After the INIT reply: the kernel has set the mount's readahead from it by now."""
        raise_readahead(self.req.mountpoint, self.requests.max_write // 1024)
        if self.requests.over_io_uring:
            for i, worker in enumerate(self._queues):
                thread = threading.Thread(target=self._serve_ring, args=(worker,), name=f"fuse-{worker.name}-{i}",
                                          daemon=True)
                self._ring_threads.append(thread)
                thread.start()
        else:
            if self._queues and self.io_uring == "on":
                log.warning("io_uring=on, but the kernel did not offer it at INIT: serving /dev/fuse only")
            self._drop_rings()
        if self.on_ready:
            self.on_ready()

    def _drop_rings(self) -> None:
        for worker in self._queues:
            worker.ring.close()
        self._queues = []

    def _serve_ring(self, worker: uring.QueueWorker) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            if worker.serve(self.answer, QUICK, self._gathering, self.requests.unsent) == errno.ENOTCONN:  # the kernel ended the connection
                self._ended()
        except OSError as exc:
            log.error("FUSE queue of CPU %d: %s", worker.qid, exc)
            self._fail(worker.qid, exc.strerror or str(exc))
        except Exception as exc:  # its entry can take no more requests: say so, loudly
            log.exception("FUSE queue of CPU %d failed", worker.qid)
            self._fail(worker.qid, str(exc))

    def _fail(self, qid: int, detail: str) -> None:
        """End the session: requests bound for a queue without a worker would wait
        forever. The process ends, and with it the connection; its callers get
        ENOTCONN (or ECONNABORTED) as from a driver that crashed."""
        if self._failure is None:
            self._failure = OSError(errno.EIO, f"FUSE queue of CPU {qid} stopped serving: {detail}")
        self._done.set()

    @staticmethod
    def _send(fd: int, buffers: list, opcode: int) -> None:
        try:
            os.writev(fd, buffers)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # ENOENT: the caller was interrupted and gone
                log.error("replying to opcode %d: %s", opcode, exc)
