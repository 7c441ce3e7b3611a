"""FUSE over io_uring (Linux 6.14 and later): a request queue per CPU.

Over ``/dev/fuse`` any idle worker takes the next request, most often one on
the other CPU, so each request wakes an idle, halted CPU and the caller's
CPU goes idle in turn. On a VM that does not poll before halting, that costs
50 to 100 µs per request, more than the request itself. Over io_uring the
kernel puts a request on the queue of the CPU that made it, and that queue's
workers are pinned to that CPU: the caller sleeps and the worker runs in its
place. (The worker is still running when it wakes the caller, so the
scheduler may move the caller to an idle CPU, and a process that works
between requests then alternates CPUs; while a CPU is free, the workers
reply under a policy that keeps it in place: see ``placement``. While callers
on several CPUs keep them busy, the workers all move to one CPU, since they
answer under one interpreter lock: ``placement.Gathering``.)

The kernel offers it in INIT when the ``fuse`` module's ``enable_uring``
parameter is on. FORGET and INTERRUPT still come through ``/dev/fuse``, as
do the requests before every queue has an entry registered.

Only what FUSE needs of io_uring is here: 128-byte SQEs carrying
``IORING_OP_URING_CMD``, one ring per worker, one FUSE entry in flight on
each. Each ring is only ever used by its own worker thread, which submits
and then reads completions after ``io_uring_enter`` returns. The kernel is
told so (``IORING_SETUP_SINGLE_ISSUER``, with ``DEFER_TASKRUN``): it then
hands a request to the worker when the worker waits for it, rather than by
interrupting it (``rm -rf`` 2 to 6% faster). The ring is made disabled and
enabled by the worker thread, which makes that thread its one submitter.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
from collections.abc import Callable

from unionfs import crashpoints
from unionfs import fuseproto as fp
from unionfs.placement import Gathering, IdleWhileCpuFree
from unionfs.syscalls import libc
from unionfs.unsent import Unsent

_SYS_SETUP, _SYS_ENTER, _SYS_REGISTER = 425, 426, 427  # the same numbers on every architecture

_SETUP_R_DISABLED = 1 << 6
_SETUP_SQE128 = 1 << 10
_SETUP_SINGLE_ISSUER = 1 << 12
_SETUP_DEFER_TASKRUN = 1 << 13
_REGISTER_ENABLE_RINGS = 12
_ENTER_GETEVENTS = 1
_FEAT_SINGLE_MMAP = 1
_OP_URING_CMD = 46
_OFF_CQ_RING, _OFF_SQES = 0x8000000, 0x10000000
_SQE_SIZE, _CQE = 128, struct.Struct("<QiI")  # user_data, res, flags
# opcode, flags, ioprio, fd, cmd_op, pad, addr, len, uring_cmd_flags, user_data;
# then struct fuse_uring_cmd_req at the command area (byte 48): flags, commit_id, qid.
_SQE_HEAD = struct.Struct("<BBHiIIQIIQ")
_CMD_REQ = struct.Struct("<QQH6x")
_CMD_AREA = 48
_ZERO_SQE = bytes(_SQE_SIZE)

SYSFS_ENABLE = "/sys/module/fuse/parameters/enable_uring"
THREAD_PREFIX = "unionfs-q"  # the workers' names as ps and top show them: unionfs-q0 serves CPU 0
_PR_SET_NAME = 15
CMD_REGISTER, CMD_COMMIT_AND_FETCH = 1, 2

# struct fuse_uring_req_header: in_out[128] (fuse_in_header, then fuse_out_header),
# op_in[128] (the opcode's own header), fuse_uring_ent_in_out (flags, commit_id,
# payload_sz, padding, reserved).
_HEADERS_SIZE, _OP_IN, _COMMIT_ID, _PAYLOAD_SZ = 288, 128, 264, 272
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_PAYLOAD = 4096  # where the payload starts in an entry's mapping; the op header is copied just before it


class _SqOffsets(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in
                ("head", "tail", "ring_mask", "ring_entries", "flags", "dropped", "array", "resv1")] + [
                ("user_addr", ctypes.c_uint64)]


class _CqOffsets(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in
                ("head", "tail", "ring_mask", "ring_entries", "overflow", "cqes", "flags", "resv1")] + [
                ("user_addr", ctypes.c_uint64)]


class _Params(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in  # type: ignore[assignment]  # the c_uint32 * 3 array
                ("sq_entries", "cq_entries", "flags", "sq_thread_cpu", "sq_thread_idle", "features", "wq_fd")] + [
                ("resv", ctypes.c_uint32 * 3), ("sq_off", _SqOffsets), ("cq_off", _CqOffsets)]


def _address(buffer: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


def kernel_offers() -> bool:
    """Whether the kernel offers FUSE over io_uring to new connections."""
    try:
        with open(SYSFS_ENABLE, "rb") as f:  # bytes: no codec to import after privileges were dropped
            return f.read().strip() == b"Y"
    except OSError:
        return False


def possible_cpus() -> int:
    """The kernel makes a queue for each possible CPU, and uses them once each has an entry."""
    if os.path.exists("/sys/devices/system/cpu/possible"):
        return _count_cpus()
    return os.cpu_count() or 1


def _count_cpus() -> int:
    with open("/sys/devices/system/cpu/possible", "rb") as f:
        text = f.read().decode().strip()
    count = 0
    for part in text.split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


class Ring:
    """An io_uring instance with 128-byte SQEs, for one worker's commands."""

    def __init__(self, entries: int = 2) -> None:
        params = _Params(flags=_SETUP_SQE128 | _SETUP_SINGLE_ISSUER | _SETUP_DEFER_TASKRUN | _SETUP_R_DISABLED)
        fd = libc.syscall(ctypes.c_long(_SYS_SETUP), ctypes.c_long(entries), ctypes.byref(params))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"io_uring_setup: {os.strerror(err)}")
        self.fd = fd
        try:
            sq, cq = params.sq_off, params.cq_off
            sq_size = sq.array + params.sq_entries * 4
            cq_size = cq.cqes + params.cq_entries * _CQE.size
            if params.features & _FEAT_SINGLE_MMAP:
                sq_size = cq_size = max(sq_size, cq_size)
                self._sq_map = self._cq_map = mmap.mmap(fd, sq_size, offset=0)
            else:
                self._sq_map = mmap.mmap(fd, sq_size, offset=0)
                self._cq_map = mmap.mmap(fd, cq_size, offset=_OFF_CQ_RING)
            self._sqe_map = mmap.mmap(fd, params.sq_entries * _SQE_SIZE, offset=_OFF_SQES)
        except BaseException:
            os.close(fd)
            raise
        sq_base, cq_base = _address(self._sq_map), _address(self._cq_map)
        self._sq_head = ctypes.c_uint32.from_address(sq_base + sq.head)
        self._sq_tail = ctypes.c_uint32.from_address(sq_base + sq.tail)
        self._sq_mask = params.sq_entries - 1
        array = (ctypes.c_uint32 * params.sq_entries).from_address(sq_base + sq.array)
        for i in range(params.sq_entries):
            array[i] = i  # slot i always holds SQE i
        self._cq_head = ctypes.c_uint32.from_address(cq_base + cq.head)
        self._cq_tail = ctypes.c_uint32.from_address(cq_base + cq.tail)
        self._cq_mask = params.cq_entries - 1
        self._cqes = memoryview(self._cq_map)[cq.cqes:]
        self._sqes = memoryview(self._sqe_map)
        self._to_submit = ctypes.c_long(0)
        self._enter_args = (ctypes.c_long(_SYS_ENTER), ctypes.c_long(fd), self._to_submit, ctypes.c_long(1),
                            ctypes.c_long(_ENTER_GETEVENTS), ctypes.c_long(0), ctypes.c_long(0))
        self._submit_args = (*self._enter_args[:3], ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0),
                             ctypes.c_long(0))  # none to wait for

    def enable(self) -> None:
        """Start the ring on the thread that will submit to it (its single issuer)."""
        if libc.syscall(ctypes.c_long(_SYS_REGISTER), ctypes.c_long(self.fd), ctypes.c_long(_REGISTER_ENABLE_RINGS),
                         ctypes.c_long(0), ctypes.c_long(0)) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"io_uring_register(ENABLE_RINGS): {os.strerror(err)}")

    def fuse_cmd(self, fuse_fd: int, cmd_op: int, qid: int, commit_id: int = 0, iov: int = 0) -> None:
        """Queue one FUSE ring command: REGISTER (with the entry's iovec pair) or COMMIT_AND_FETCH."""
        tail = self._sq_tail.value
        offset = (tail & self._sq_mask) * _SQE_SIZE
        sqe = self._sqes[offset:offset + _SQE_SIZE]
        sqe[:] = _ZERO_SQE
        _SQE_HEAD.pack_into(sqe, 0, _OP_URING_CMD, 0, 0, fuse_fd, cmd_op, 0, iov, 2 if iov else 0, 0, qid)
        _CMD_REQ.pack_into(sqe, _CMD_AREA, 0, commit_id, qid)
        self._sq_tail.value = (tail + 1) & 0xFFFFFFFF

    def wait(self) -> int:
        """Submit what is queued, wait for one completion and return its result."""
        while True:
            head = self._cq_head.value
            pending = (self._sq_tail.value - self._sq_head.value) & 0xFFFFFFFF
            if not pending and head != self._cq_tail.value:
                _, res, _ = _CQE.unpack_from(self._cqes, (head & self._cq_mask) * _CQE.size)
                self._cq_head.value = (head + 1) & 0xFFFFFFFF
                return res
            self._to_submit.value = pending
            if libc.syscall(*self._enter_args) < 0:
                _raise_unless_retried()

    def submit(self) -> None:
        """Submit what is queued without waiting: a commit hands its answer over here."""
        while True:
            self._to_submit.value = (self._sq_tail.value - self._sq_head.value) & 0xFFFFFFFF
            if not self._to_submit.value or libc.syscall(*self._submit_args) >= 0:
                return
            _raise_unless_retried()

    def close(self) -> None:
        os.close(self.fd)  # the mappings go with the process; they pin the ring until then


def _raise_unless_retried() -> None:
    """After io_uring_enter failed: return to try again (interrupted, or the kernel busy), or raise."""
    err = ctypes.get_errno()
    if err not in (errno.EINTR, errno.EAGAIN, errno.EBUSY):
        raise OSError(err, f"io_uring_enter: {os.strerror(err)}")


Answer = Callable[[tuple, memoryview, str, memoryview], "tuple[int, fp.Reply]"]


class QueueWorker:
    """One registered FUSE entry on one CPU's queue, and the thread that serves it."""

    def __init__(self, fuse_fd: int, qid: int, payload_size: int) -> None:
        self.fuse_fd, self.qid = fuse_fd, qid
        self.ring = Ring()
        # Headers at the start of the mapping, the payload at _PAYLOAD: a request's
        # op header is copied in right before its payload, so that the handlers get
        # one contiguous body, as from /dev/fuse.
        self._map = mmap.mmap(-1, _PAYLOAD + payload_size)
        self.view = memoryview(self._map)
        base = _address(self._map)
        self._iov = (ctypes.c_uint64 * 4)(base, _HEADERS_SIZE, base + _PAYLOAD, payload_size)
        self.payload_size = payload_size
        self.name = f"q{qid}"

    def serve(self, answer: Answer, quick: frozenset[int], gathering: Gathering, unsent: Unsent) -> int:
        """Register, then answer requests until the connection ends; those whose
        opcode is in quick may be answered under SCHED_IDLE, and gathering moves the
        workers together while callers on several CPUs keep them busy (see
        placement). An answer that unsent holds is handed over at once rather than
        with the next wait. Returns the errno that ended it."""
        libc.prctl(_PR_SET_NAME, f"{THREAD_PREFIX}{self.qid}".encode()[:15], 0, 0, 0)
        try:
            os.sched_setaffinity(0, {self.qid})
        except OSError:
            pass  # a CPU this process may not use, or one that is offline: unpinned, still served
        view, ring, fuse_fd, qid = self.view, self.ring, self.fuse_fd, self.qid
        crashpoints.fault("ring.register")
        ring.enable()
        # Registered before anything optional: until every queue has an entry the
        # kernel holds every request of the mount.
        ring.fuse_cmd(fuse_fd, CMD_REGISTER, qid, iov=ctypes.addressof(self._iov))
        placement = IdleWhileCpuFree()  # keeps the caller on this CPU (see placement)
        placement.start()
        slot = gathering.join()
        header, out = fp.IN_HEADER, fp.OUT_HEADER
        reply_area = view[_PAYLOAD:_PAYLOAD + self.payload_size]
        try:
            while True:
                placement.waiting()
                res = ring.wait()
                if res < 0:
                    placement.woken()  # the normal policy to end: a busy CPU would stall it under SCHED_IDLE
                    if -res not in (errno.ENOTCONN, errno.ECANCELED, errno.ECONNABORTED):
                        raise OSError(-res, f"FUSE ring command: {os.strerror(-res)}")
                    return -res  # the connection ended (ENOTCONN: unmounted), or the ring was cancelled
                h = header.unpack_from(view)
                placement.woken(h[1] in quick)
                gathering.arrive(slot, h[1], h[6])
                commit_id = _U64.unpack_from(view, _COMMIT_ID)[0]
                size = _U32.unpack_from(view, _PAYLOAD_SZ)[0]
                op_size = h[0] - header.size - size
                if op_size:
                    view[_PAYLOAD - op_size:_PAYLOAD] = view[_OP_IN:_OP_IN + op_size]
                code, payload = answer(h, view[_PAYLOAD - op_size:_PAYLOAD + size], self.name, reply_area)
                n = 0
                if not code and payload is not None and payload is not fp.NO_REPLY:
                    n = len(payload)
                    if n > self.payload_size:  # never sent: the kernel asks for no more than it can take
                        code, n = errno.EIO, 0
                    elif h[1] != fp.READ:  # a READ's data is read into reply_area, where it goes out from
                        view[_PAYLOAD:_PAYLOAD + n] = payload
                out.pack_into(view, 0, out.size + n, -code, h[2])
                _U32.pack_into(view, _PAYLOAD_SZ, n)
                ring.fuse_cmd(fuse_fd, CMD_COMMIT_AND_FETCH, qid, commit_id)
                if unsent.holding():
                    ring.submit()
                    unsent.sent()
                placement.served()
        finally:
            placement.close()
            ring.close()
