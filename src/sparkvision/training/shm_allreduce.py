"""Gradient all-reduce through POSIX shared memory for same-host DDP (gloo) training.

Two CPU processes on one machine spend ~1.4-2.7 ms per step pushing a 1.6 MB gradient
through gloo's TCP loopback. When every rank runs on the same host the same average is a
memcpy and a NumPy sum in a shared memory segment (~0.4 ms). :class:`ShmAllReduce` does
that: this module is the all-reduce itself (segment, protocol, waits). The DDP
communication hook that plugs it into ``DistributedDataParallel.register_comm_hook`` and
the collective decision to use it are :mod:`sparkvision.training.shm_comm_hook`.

Segment (created by rank 0, attached by the others; S = slot bytes, 2 slots per rank)::

    [0, 64)                 header: magic, nonce, world size, S (int64)
    64 + 64*r               control line of rank r (own cache line): arrive, done
    64 + 64*world + 8*(2r+k)  numel in rank r's slot k
    data + (2r + k)*S       data slot k of rank r (data: 4 KiB aligned)

Protocol. Every rank makes the same sequence of reductions (DDP launches buckets in the
same order on every rank); the g-th (g = 1, 2, ...) uses slot k = g % 2:

1. publish: wait until every other rank's ``done >= g - 2`` (nobody still reads slot k),
   copy my tensor into slot k, write its numel, then ``arrive = g``;
2. complete: wait until every other rank's ``arrive >= g``; sum the slot-k data of all
   ranks in rank order (the same order, hence bitwise the same result, on every rank)
   into my tensor, divide by the world size, then ``done = g``.

Correctness: a writer reuses slot k for g only once every rank has finished reading its
previous contents (g - 2); a reader reads g only after every rank published it, and it
cannot have been overwritten by g + 2 yet, which needs the reader's own ``done >= g``.
Two slots let a fast rank publish the next bucket while a slow one still reads the
previous. No deadlock: a rank R with the smallest ``done`` = d can publish d + 1 (needs
``done >= d - 1`` everywhere) and complete it (everyone else already published d + 1 or
can), so the minimum always grows.

Memory ordering: x86-64 is total-store-order (stores are seen in program order, loads are
not reordered with older loads, stores not with older loads), so "write data, then the
counter" is observed in that order by "read the counter, then the data". Each NumPy copy
or sum and each counter store is a separate C call the compiler cannot reorder across;
counters are aligned int64 (single-copy atomic). Weakly ordered CPUs would need fences,
so :func:`supported` is False there and callers keep gloo.

Cleanup: rank 0 unlinks the name as soon as every rank has attached (mappings stay valid
until closed), so a crashed job leaves nothing in ``/dev/shm``. Only rank 0's segment is
known to ``multiprocessing.resource_tracker`` (registered by ``SharedMemory(create=True)``
for the few milliseconds until that unlink); the other ranks map the segment themselves
(:func:`_attach`) because ``SharedMemory`` (Python < 3.13) would register each attachment
too, and the tracker would unlink the segment or complain about it at exit.
"""

import contextlib
import errno
import logging
import mmap
import os
import platform
import secrets
import time
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Self

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

__all__ = [
    "DTYPE",
    "ShmAllReduce",
    "ShmUnavailableError",
    "supported",
    "waiting_for",
]

_MAGIC = 0x5356_4152_5348_4D32  # "SVARSHM2"
_HEADER_BYTES = 64
_LINE_BYTES = 64  # one control cache line per rank
_LINE_WORDS = _LINE_BYTES // 8
_SLOT_ALIGN = 64
_DATA_ALIGN = 4096
_DEPTH = 2  # data slots per rank (double buffering)
# Control-line word indices (the rest of each line is padding).
_ARRIVE, _DONE = 0, 1

# Wait tuning: pure spin first (a peer usually arrives within microseconds when the ranks
# are in step), then sched_yield for a short while, then block in the kernel on the peer's
# counter (a futex: no CPU burnt while a slower or descheduled peer computes; woken as soon
# as it publishes) in slices of _FUTEX_SLICE_SECONDS (the timeout is checked between
# them). Where the futex call is refused, short sleeps instead.
_SPIN_ITERS = 200
_YIELD_SECONDS = 100e-6
_FUTEX_SLICE_SECONDS = 0.05
_SLEEP_SECONDS = 50e-6

# DDP's gradient buckets here are float32; other dtypes go through gloo.
DTYPE = torch.float32
_NP_DTYPE = np.dtype(np.float32)


class _Futex:
    """``futex(2)`` WAIT/WAKE on a 32-bit word of the shared segment (x86-64 Linux; shared,
    not private, futexes: the ranks are different processes). The counters are aligned
    little-endian int64, so their low 32 bits change with every store."""

    SYS_FUTEX = 202  # x86-64
    WAIT, WAKE = 0, 1
    WAKE_ALL = 2**31 - 1

    def __init__(self) -> None:
        import ctypes

        class Timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

        self._ctypes, self._timespec = ctypes, Timespec
        # CDLL functions release the GIL while they block: the heartbeat thread keeps beating.
        call = ctypes.CDLL(None, use_errno=True).syscall
        call.restype = ctypes.c_long
        call.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                         ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        self._call = call

    def wait(self, addr: int, value: int, timeout_s: float) -> None:
        """Block while the word at ``addr`` holds ``value`` (low 32 bits), at most
        ``timeout_s``; spurious returns are fine (the caller re-reads the counter).
        Raises OSError when the kernel refuses futexes (the caller falls back)."""
        value &= 0xFFFF_FFFF
        if value >= 2**31:
            value -= 2**32
        ts = self._timespec(int(timeout_s), int((timeout_s % 1.0) * 1e9))
        if self._call(self.SYS_FUTEX, addr, self.WAIT, value, self._ctypes.addressof(ts),
                      None, 0) == -1:
            err = self._ctypes.get_errno()
            if err in (errno.ENOSYS, errno.EPERM, errno.EFAULT, errno.EINVAL):
                raise OSError(err, os.strerror(err))

    def wake(self, addr: int) -> None:
        self._call(self.SYS_FUTEX, addr, self.WAKE, self.WAKE_ALL, None, None, 0)


_futex: _Futex | None = None
_futex_refused = False


def _get_futex() -> _Futex | None:
    global _futex, _futex_refused
    if _futex is None and not _futex_refused:
        try:
            _futex = _Futex()
        except (OSError, AttributeError) as e:  # no libc syscall(): sleep instead
            log.debug("futex unavailable (%s): the all-reduce waits by sleeping", e)
            _futex_refused = True
    return _futex


class ShmUnavailableError(RuntimeError):
    """Shared memory cannot be used by this process group; raised on every rank alike."""


def supported() -> bool:
    """Whether this machine can run the shared-memory protocol (x86-64 POSIX only).

    ``SPARKVISION_SHM_ALLREDUCE=0`` in the environment turns it off.
    """
    if os.environ.get("SPARKVISION_SHM_ALLREDUCE", "1").strip().lower() in ("0", "false", "no"):
        return False
    return os.name == "posix" and platform.machine().lower() in ("x86_64", "amd64")


def _attach(name: str) -> mmap.mmap:
    """Map the existing segment ``name`` without telling the resource tracker about it."""
    import _posixshmem  # what SharedMemory uses; POSIX only, hence imported here

    fd = _posixshmem.shm_open("/" + name.lstrip("/"), os.O_RDWR, mode=0o600)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def _offsets(world: int) -> tuple[int, int, int]:
    """Byte offsets of the control lines, the slot numels and the data slots."""
    ctrl = _HEADER_BYTES
    meta = ctrl + _LINE_BYTES * world
    data = _round_up(meta + _round_up(8 * world * _DEPTH, _LINE_BYTES), _DATA_ALIGN)
    return ctrl, meta, data


class ShmAllReduce:
    """Averages same-shaped tensors across the ranks of the default process group.

    Create it collectively with :meth:`create` after ``dist.init_process_group``; every
    rank must then make the same sequence of :meth:`average_` calls (directly or through
    DDP calling :func:`~sparkvision.training.shm_comm_hook.shm_allreduce_hook`) with
    tensors of the same numel. Not thread-safe: one caller thread per process.
    :meth:`close` is local and idempotent.
    """

    def __init__(
        self, segment: SharedMemory | mmap.mmap, *, rank: int, world: int, slot_bytes: int,
        timeout_s: float,
    ) -> None:
        self._segment: SharedMemory | mmap.mmap | None = segment
        self.rank = rank
        self.world = world
        self.capacity_bytes = slot_bytes
        self.timeout_s = float(timeout_s)
        self._gen = 0
        self._warned: set[str] = set()
        #: With ``timed`` (profiling), the hook adds its wall and CPU seconds to ``seconds``
        #: and ``cpu_seconds``, the waits for a slower peer to ``wait_seconds``.
        self.timed = False
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.wait_seconds = 0.0
        buf = segment.buf if isinstance(segment, SharedMemory) else segment
        ctrl_offset, meta_offset, data_offset = _offsets(world)
        self._ctrl: np.ndarray | None = np.ndarray(
            (world, _LINE_WORDS), np.int64, buffer=buf, offset=ctrl_offset
        )
        self._ctrl_addr = int(self._ctrl.ctypes.data)  # of ctrl[0, 0], for the futexes
        self._futex = _get_futex()
        self._meta: np.ndarray | None = np.ndarray(
            (world, _DEPTH), np.int64, buffer=buf, offset=meta_offset
        )
        self._slots: list[list[np.ndarray]] | None = [
            [
                np.ndarray(
                    (slot_bytes // _NP_DTYPE.itemsize,), _NP_DTYPE, buffer=buf,
                    offset=data_offset + (_DEPTH * r + k) * slot_bytes,
                )
                for k in range(_DEPTH)
            ]
            for r in range(world)
        ]

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, name: str, capacity_bytes: int, timeout_s: float = 600.0) -> Self:
        """Collective: rank 0 creates segment ``name``, the other ranks attach.

        ``capacity_bytes`` is the largest tensor (in bytes) reduced in shared memory;
        larger ones go through gloo. Rank 0's ``name`` is broadcast (the others' are
        ignored). Raises :class:`ShmUnavailableError` on every rank if any rank cannot
        create/attach/verify the segment (not enough ``/dev/shm``, other hosts, ...).
        """
        if not dist.is_initialized():
            raise RuntimeError("ShmAllReduce.create needs torch.distributed initialised")
        rank, world = dist.get_rank(), dist.get_world_size()
        slot_bytes = _round_up(max(1, int(capacity_bytes)), _SLOT_ALIGN)
        size = _offsets(world)[2] + _DEPTH * world * slot_bytes
        segment: SharedMemory | mmap.mmap | None = None
        status: list[Any] = [None]
        if rank == 0:
            nonce = secrets.randbits(62)
            try:
                segment = SharedMemory(name=name, create=True, size=size)
                header = np.ndarray((4,), np.int64, buffer=segment.buf, offset=0)
                header[:] = (_MAGIC, nonce, world, slot_bytes)
                del header
                status[0] = ("ok", segment.name, nonce)
            except Exception as e:
                status[0] = ("error", f"rank 0 could not create {name!r} ({size} B): {e!r}", 0)
        # The broadcast doubles as the barrier between "created" and "attach".
        dist.broadcast_object_list(status, src=0)
        kind, seg_name, nonce = status[0]
        if kind != "ok":
            raise ShmUnavailableError(seg_name)
        error = ""
        if rank != 0:
            try:
                segment = _attach(seg_name)
                header = np.ndarray((4,), np.int64, buffer=segment, offset=0)
                seen = tuple(int(v) for v in header)
                del header
                if seen != (_MAGIC, nonce, world, slot_bytes) or len(segment) < size:
                    error = f"rank {rank} attached a different segment {seg_name!r}"
            except Exception as e:
                error = f"rank {rank} could not attach {seg_name!r}: {e!r}"
        errors: list[Any] = [None] * world
        dist.all_gather_object(errors, error)
        errors = [e for e in errors if e]
        if isinstance(segment, SharedMemory):
            # Everyone attached (or gave up): the name is no longer needed.
            with contextlib.suppress(FileNotFoundError):
                segment.unlink()
        if errors:
            if segment is not None:
                with contextlib.suppress(BufferError):
                    segment.close()
            raise ShmUnavailableError("; ".join(str(e) for e in errors))
        assert segment is not None
        return cls(segment, rank=rank, world=world, slot_bytes=slot_bytes, timeout_s=timeout_s)

    def close(self) -> None:
        """Unmap the segment (local, idempotent)."""
        segment, self._segment = self._segment, None
        if segment is None:
            return
        self._ctrl = self._meta = None
        self._slots = None
        try:
            segment.close()
        except BufferError:
            # A caller still holds a view of the buffer; the mapping goes with it.
            log.debug("shared-memory all-reduce segment still referenced at close()")

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    @property
    def generation(self) -> int:
        """Number of shared-memory reductions done so far (same on every rank)."""
        return self._gen

    # ------------------------------------------------------------------ reduction

    def fits(self, tensor: torch.Tensor) -> bool:
        """Whether :meth:`average_` can reduce ``tensor`` in shared memory."""
        return (
            tensor.device.type == "cpu"
            and tensor.dtype == DTYPE
            and tensor.is_contiguous()
            and tensor.numel() * tensor.element_size() <= self.capacity_bytes
        )

    def average_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In place: ``tensor`` ← mean of every rank's ``tensor``; returns ``tensor``.

        Every rank gets the bitwise-same result (sum in rank order, then one division).
        Raises ``TimeoutError`` if a peer does not reach this call within ``timeout_s``.
        """
        ctrl, meta, slots = self._ctrl, self._meta, self._slots
        if ctrl is None or meta is None or slots is None:
            raise RuntimeError("ShmAllReduce is closed")
        if not self.fits(tensor):
            raise ValueError(
                f"tensor ({tensor.dtype}, {tensor.numel()} elements, {tensor.device}) does "
                f"not fit the shared-memory all-reduce (capacity {self.capacity_bytes} B)"
            )
        rank = self.rank
        out = tensor.detach().reshape(-1).numpy()
        n = out.size
        gen = self._gen + 1
        slot = gen % _DEPTH
        # 1. Publish: once nobody reads slot k any more, data, numel, then the counter.
        if gen > _DEPTH:
            self._wait_all(_DONE, gen - _DEPTH, gen)
        np.copyto(slots[rank][slot][:n], out)
        meta[rank, slot] = n
        ctrl[rank, _ARRIVE] = gen
        self._wake(_ARRIVE)
        self._gen = gen
        # 2. Complete: everyone's data is in place; sum it in rank order, then average.
        self._wait_all(_ARRIVE, gen, gen)
        self._reduce_slot(out, slot, gen)
        ctrl[rank, _DONE] = gen  # my reads of generation gen are over
        self._wake(_DONE)
        return tensor

    def _addr(self, q: int, word: int) -> int:
        return self._ctrl_addr + 8 * (q * _LINE_WORDS + word)

    def _wake(self, word: int) -> None:
        """Wake the peers blocked on this rank's counter ``word`` (just stored)."""
        if self._futex is not None:
            self._futex.wake(self._addr(self.rank, word))

    def _reduce_slot(self, out: np.ndarray, slot: int, gen: int) -> None:
        """``out`` ← the mean of every rank's data in ``slot`` (rank order, bitwise the
        same on every rank); checks each rank contributed as many elements."""
        meta, slots = self._meta, self._slots
        assert meta is not None and slots is not None
        rank, world, n = self.rank, self.world, out.size
        for q in range(world):
            if int(meta[q, slot]) != n:
                raise RuntimeError(
                    f"rank {rank}, all-reduce generation {gen}: rank {q} contributed "
                    f"{int(meta[q, slot])} elements, this rank {n}: the ranks are not "
                    "reducing the same buckets in the same order"
                )
        views = [slots[q][slot][:n] for q in range(world)]
        if world == 1:
            np.copyto(out, views[0])
        else:
            np.add(views[0], views[1], out=out)
            for v in views[2:]:
                np.add(out, v, out=out)
            if world & (world - 1) == 0:
                # x * 2**-k and x / 2**k round the same exact value: bitwise equal, and the
                # multiplication is ~1.5x faster.
                np.multiply(out, np.float32(1.0 / world), out=out)
            else:
                np.divide(out, np.float32(world), out=out)
        del views

    def _wait_all(self, word: int, target: int, gen: int) -> None:
        ctrl = self._ctrl
        assert ctrl is not None
        for q in range(self.world):
            if q != self.rank and ctrl[q, word] < target:
                self._spin(ctrl, q, word, target, gen)

    def _spin(self, ctrl: np.ndarray, q: int, word: int, target: int, gen: int) -> None:
        global _waiting_for
        started = time.perf_counter() if self.timed else 0.0
        try:
            self._spin_loop(ctrl, q, word, target, gen)
        finally:
            _waiting_for = None
            if self.timed:
                self.wait_seconds += time.perf_counter() - started

    def _spin_loop(self, ctrl: np.ndarray, q: int, word: int, target: int, gen: int) -> None:
        global _waiting_for
        spins = 0
        started = 0.0
        while ctrl[q, word] < target:
            spins += 1
            if spins <= _SPIN_ITERS:
                continue
            now = time.monotonic()
            if started == 0.0:
                started = now
                continue
            waited = now - started
            if waited < _YIELD_SECONDS:
                os.sched_yield()
            elif waited < self.timeout_s:
                _waiting_for = q  # a long wait: the watchdog's heartbeat names the peer
                self._block(ctrl, q, word, min(_FUTEX_SLICE_SECONDS, self.timeout_s - waited))
            else:
                what = "publish" if word == _ARRIVE else "finish reading"
                raise TimeoutError(
                    f"shared-memory all-reduce: rank {self.rank} waited {waited:.1f} s at "
                    f"generation {gen} for rank {q} to {what} generation {target} (is rank "
                    f"{q} alive and making the same calls?)"
                )


    def _block(self, ctrl: np.ndarray, q: int, word: int, timeout_s: float) -> None:
        """Sleep until rank ``q`` stores its counter ``word`` (or ``timeout_s``)."""
        futex = self._futex
        if futex is not None:
            try:
                futex.wait(self._addr(q, word), int(ctrl[q, word]), timeout_s)
                return
            except OSError as e:
                log.debug("futex wait refused (%s): the all-reduce waits by sleeping", e)
                self._futex = None
        time.sleep(_SLEEP_SECONDS)


#: The peer this process's all-reduce is waiting for after a long wait (None otherwise).
_waiting_for: int | None = None


def waiting_for() -> int | None:
    """The rank the shared-memory all-reduce is waiting for right now (after the first
    short phase of a wait), else None."""
    return _waiting_for
