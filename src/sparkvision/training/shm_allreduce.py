"""Gradient all-reduce through POSIX shared memory for same-host DDP (gloo) training.

Two CPU processes on one machine spend ~2.5 ms per step pushing a 1.6 MB gradient through
gloo's TCP loopback (pure CPU work in the kernel's socket path). When every rank runs on
the same host the same averaging can be done with a memcpy and a NumPy sum in a shared
memory segment, which costs a fraction of a millisecond. :class:`ShmAllReduce` does that;
:func:`shm_allreduce_hook` plugs it into ``DistributedDataParallel.register_comm_hook``
and :func:`install_shm_allreduce` decides (collectively) whether it can be used.

Segment layout (one segment, created by rank 0, attached by the others; D = ``depth``
data slots per rank, 2 by default, S = slot bytes = the capacity rounded up)::

    [0, 64)                   header: magic, nonce, world size, S, D (int64)
    64 + 64*r                 control line of rank r (int64[8], own cache line):
                              arrive (last generation published), done (last read)
    64 + 64*world + 16*(D*r+k)  metadata of rank r's slot k: numel, dtype code
    data + (D*r + k)*S        data slot k of rank r (data: 4 KiB aligned)

Protocol. Every rank makes the same sequence of reductions (DDP launches buckets in
bucket-index order on every rank); the g-th (g = 1, 2, ...) uses slot k = g % D:

1. publish: if slot k held generation g - D, complete my own reductions up to g - D,
   then wait until every other rank's ``done >= g - D`` (nobody reads slot k any more);
   copy my tensor into slot k, write its numel/dtype, then ``arrive = g``;
2. complete (at once for :meth:`ShmAllReduce.average_` and, by default, the DDP hook;
   later for :meth:`ShmAllReduce.average_async`, see deferral below): wait until every
   other rank's ``arrive >= g``; sum the world's slot-k data in rank order (the same
   order, hence bitwise the same result, on every rank) into my tensor and divide by the
   world size; then ``done = g``. Completions happen in generation order.

Why it is correct for any interleaving: a writer reuses slot k for generation g only
after every rank has declared ``done >= g - D``, i.e. finished reading slot k's previous
contents; a reader reads generation g from slot k only after ``arrive[q] >= g``, and slot
k cannot have been overwritten with g + D yet because that needs the reader's own
``done >= g``. With D = 2 this is the double buffering that lets a fast rank publish the
next bucket while a slow rank still reads the previous one. It cannot deadlock: let d be
the smallest ``done`` of all ranks and R a rank with it. Publishing any generation up to
d + D only needs ``done >= d`` everywhere, which holds, so whoever has not yet published
d + 1 can; R needs nothing else to complete d + 1, and then the minimum grows.

Deferral (opt-in, ``ShmAllReduce.defer = True``): DDP calls the hook bucket by bucket
during the backward pass and waits for the returned futures only after the last bucket
was launched (``Reducer::finalize_backward`` in torch 2.x). A deferring hook only
publishes a bucket and returns a pending future; when the last bucket arrives
(``bucket.is_last()``) it completes them all, so ranks wait for each other once per step
rather than once per bucket. It is off by default: it measured no faster for
``simple_cnn`` (2 buckets a step) and a DDP that waited for a future earlier would
deadlock (the future is completed by the thread that waits).

Memory-ordering assumption: x86-64 is total-store-order: stores become visible to other
cores in program order, loads are not reordered with older loads, and stores are not
reordered with older loads. So "write data, then write the counter" is observed in that
order by a reader that "reads the counter, then reads the data", and "read the slots,
then write done" cannot let a writer overwrite a slot still being read. The Python
interpreter executes each NumPy copy/sum and each counter store as separate C calls,
which the C compiler cannot reorder across. Counters are aligned int64 (single-copy
atomic on x86-64; they stay far below 2**32 anyway). Weakly ordered CPUs (ARM, POWER)
would need explicit fences, so :func:`supported` returns False there and callers keep
gloo.

Cleanup: rank 0 unlinks the segment's name as soon as every rank has attached (the
mapping stays valid until each process closes it), so a crashed job cannot leave an entry
in ``/dev/shm``. ``multiprocessing.resource_tracker`` is kept out of it: on Python < 3.13
it registers every ``SharedMemory`` it sees, including mere attachments, and would unlink
or warn about the segment when a process exits; ranks that share one tracker (children
of one ``spawn`` parent) would even make it raise on the second unregistration of the
same name. Only rank 0 registers (covering the few milliseconds between create and
unlink, should it die there) and its ``unlink()`` unregisters; attaching ranks never
register (``track=False`` on Python >= 3.13, registration suppressed before).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import platform
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)

__all__ = [
    "ShmAllReduce",
    "ShmUnavailableError",
    "all_ranks_on_this_host",
    "install_shm_allreduce",
    "max_bucket_bytes",
    "same_host",
    "shm_allreduce_hook",
    "supported",
]

_MAGIC = 0x5356_4152_5348_4D31  # "SVARSHM1"
_HEADER_BYTES = 64
_LINE_BYTES = 64  # one control cache line per rank
_LINE_WORDS = _LINE_BYTES // 8
_SLOT_ALIGN = 64
_DATA_ALIGN = 4096
# Control-line word indices (the rest of each line is padding).
_ARRIVE, _DONE = 0, 1

# Spin-wait tuning: pure spin first (a peer usually arrives within microseconds when the
# ranks are in step), then sched_yield, then short sleeps so a long wait (a peer
# checkpointing, evaluating) does not burn a core.
_SPIN_ITERS = 200
_YIELD_SECONDS = 1e-3
_SLEEP_SECONDS = 50e-6

# Wire codes of the dtypes reduced in shared memory (others fall back to gloo).
_DTYPES: dict[torch.dtype, tuple[int, np.dtype[Any]]] = {
    torch.float32: (1, np.dtype(np.float32)),
    torch.float64: (2, np.dtype(np.float64)),
    torch.float16: (3, np.dtype(np.float16)),
}

_tracker_lock = threading.Lock()


class ShmUnavailableError(RuntimeError):
    """Shared memory cannot be used by this process group; raised on every rank alike."""


def supported() -> bool:
    """Whether this machine can run the shared-memory protocol (x86-64 POSIX only).

    ``SPARKVISION_SHM_ALLREDUCE=0`` in the environment turns it off.
    """
    if os.environ.get("SPARKVISION_SHM_ALLREDUCE", "1").strip().lower() in ("0", "false", "no"):
        return False
    return os.name == "posix" and platform.machine().lower() in ("x86_64", "amd64")


def _host_part(address: str) -> str:
    """``host``, ``host:port`` or ``[v6]:port`` → the host part, lower-cased."""
    address = address.strip().lower()
    if address.startswith("["):
        return address[1 : address.find("]")] if "]" in address else address
    if address.count(":") == 1:
        host, _, port = address.partition(":")
        if port.isdigit():
            return host
    return address


def same_host(ctx_hostnames: list[str]) -> bool:
    """True when every entry names the same host (``host:port`` forms are accepted).

    Feed it hostnames gathered from every rank (e.g. ``socket.gethostname()``, as
    :func:`all_ranks_on_this_host` does) or Spark's ``BarrierTaskContext`` task
    addresses. An empty list is False.
    """
    hosts = {_host_part(h) for h in ctx_hostnames}
    return len(hosts) == 1 and "" not in hosts


def all_ranks_on_this_host() -> bool:
    """Collective: True on every rank iff all ranks report the same ``gethostname()``.

    Equal hostnames are necessary, not sufficient, for a shared ``/dev/shm`` (containers
    on different machines can share a hostname); :meth:`ShmAllReduce.create` verifies the
    segment itself with a nonce and fails on every rank alike if it is not shared.
    """
    names: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(names, socket.gethostname())
    return same_host([str(n) for n in names])


@contextlib.contextmanager
def _no_tracker_registration() -> Iterator[None]:
    """Keep ``SharedMemory.__init__`` (Python < 3.13) from registering with the tracker."""
    with _tracker_lock:
        saved = resource_tracker.register

        def _skip(name: str, rtype: str) -> None:
            if rtype != "shared_memory":
                saved(name, rtype)

        resource_tracker.register = _skip
        try:
            yield
        finally:
            resource_tracker.register = saved


def _attach_untracked(name: str) -> SharedMemory:
    if sys.version_info >= (3, 13):
        return SharedMemory(name=name, track=False)  # type: ignore[call-arg]
    with _no_tracker_registration():
        return SharedMemory(name=name)


def _round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def _offsets(world: int, depth: int) -> tuple[int, int, int]:
    """Byte offsets of the control lines, the slot metadata and the data slots."""
    ctrl = _HEADER_BYTES
    meta = ctrl + _LINE_BYTES * world
    data = _round_up(meta + _round_up(16 * world * depth, _LINE_BYTES), _DATA_ALIGN)
    return ctrl, meta, data


class _Pending:
    """One published, not yet summed reduction."""

    __slots__ = ("gen", "tensor", "out", "numel", "code", "np_dtype", "future")

    def __init__(
        self,
        gen: int,
        tensor: torch.Tensor,
        out: np.ndarray,
        code: int,
        np_dtype: np.dtype[Any],
    ) -> None:
        self.gen = gen
        self.tensor = tensor
        self.out = out
        self.numel = out.size
        self.code = code
        self.np_dtype = np_dtype
        self.future: torch.futures.Future[torch.Tensor] | None = None


class ShmAllReduce:
    """Averages same-shaped tensors across the ranks of the default process group.

    Create it collectively with :meth:`create` after ``dist.init_process_group``; every
    rank must then make the same sequence of calls (:meth:`average_`,
    :meth:`average_async`, or DDP calling :func:`shm_allreduce_hook`) with tensors of
    the same numel and dtype. Not thread-safe: one caller thread per process.
    :meth:`close` is local (no collective) and idempotent.
    """

    def __init__(
        self,
        shm: SharedMemory,
        *,
        rank: int,
        world: int,
        slot_bytes: int,
        depth: int,
        timeout_s: float,
        owner: bool,
    ) -> None:
        self._shm: SharedMemory | None = shm
        self.rank = rank
        self.world = world
        self.capacity_bytes = slot_bytes
        self.depth = depth
        self.timeout_s = float(timeout_s)
        #: Let the hook defer summing a bucket until DDP hands over the last bucket of
        #: the backward pass (one wait for the slowest rank per step instead of one per
        #: bucket; see the module docstring). Results are the same either way.
        self.defer = False
        self._owner = owner
        self._unlinked = False
        self._gen = 0
        self._pending: collections.deque[_Pending] = collections.deque()
        self._warned: set[str] = set()
        buf = shm.buf
        ctrl_offset, meta_offset, data_offset = _offsets(world, depth)
        self._ctrl: np.ndarray | None = np.ndarray(
            (world, _LINE_WORDS), np.int64, buffer=buf, offset=ctrl_offset
        )
        self._meta: np.ndarray | None = np.ndarray(
            (world, depth, 2), np.int64, buffer=buf, offset=meta_offset
        )
        self._slots: list[list[np.ndarray]] | None = [
            [
                np.ndarray(
                    (slot_bytes,),
                    np.uint8,
                    buffer=buf,
                    offset=data_offset + (depth * r + k) * slot_bytes,
                )
                for k in range(depth)
            ]
            for r in range(world)
        ]
        #: Test hook: called with a phase name ("published", "arrived", "summed").
        self._debug_delay: Callable[[str], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    @staticmethod
    def segment_bytes(capacity_bytes: int, world: int, depth: int = 2) -> int:
        """Size of the segment for ``world`` ranks, a per-call capacity and ``depth``."""
        slot = _round_up(max(1, capacity_bytes), _SLOT_ALIGN)
        return _offsets(world, depth)[2] + depth * world * slot

    @classmethod
    def create(
        cls, name: str, capacity_bytes: int, timeout_s: float = 600.0, *, depth: int = 2
    ) -> ShmAllReduce:
        """Collective: rank 0 creates segment ``name``, the other ranks attach.

        ``capacity_bytes`` is the largest tensor (in bytes) reduced in shared memory;
        larger ones go through gloo. ``depth`` (>= 2) data slots per rank: how many
        reductions can be in flight (published, not yet read by everyone); 2 is the
        double buffering that lets a fast rank publish the next tensor while a slow one
        still reads the previous. Rank 0's ``name`` is broadcast, so the other ranks'
        ``name`` arguments are ignored. Raises :class:`ShmUnavailableError` on every
        rank if any rank cannot create/attach/verify the segment (not enough
        ``/dev/shm``, ranks on different hosts, ...).
        """
        if not dist.is_initialized():
            raise RuntimeError("ShmAllReduce.create needs torch.distributed initialised")
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth}")
        rank, world = dist.get_rank(), dist.get_world_size()
        slot_bytes = _round_up(max(1, int(capacity_bytes)), _SLOT_ALIGN)
        size = cls.segment_bytes(slot_bytes, world, depth)
        expected = (_MAGIC, 0, world, slot_bytes, depth)
        shm: SharedMemory | None = None
        status: list[Any] = [None]
        if rank == 0:
            nonce = secrets.randbits(62)
            try:
                shm = SharedMemory(name=name, create=True, size=size)
                header = np.ndarray((5,), np.int64, buffer=shm.buf, offset=0)
                header[:] = (_MAGIC, nonce, world, slot_bytes, depth)
                del header
                status[0] = ("ok", shm.name, nonce)
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
                shm = _attach_untracked(seg_name.lstrip("/"))
                header = np.ndarray((5,), np.int64, buffer=shm.buf, offset=0)
                seen = tuple(int(v) for v in header)
                del header
                if seen != (*expected[:1], nonce, *expected[2:]) or shm.size < size:
                    error = f"rank {rank} attached a different segment {seg_name!r}"
            except Exception as e:
                error = f"rank {rank} could not attach {seg_name!r}: {e!r}"
        errors: list[Any] = [None] * world
        dist.all_gather_object(errors, error)
        errors = [e for e in errors if e]
        if rank == 0 and shm is not None:
            # Everyone attached (or gave up): the name is no longer needed.
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()
        if errors:
            if shm is not None:
                with contextlib.suppress(BufferError):
                    shm.close()
            raise ShmUnavailableError("; ".join(str(e) for e in errors))
        assert shm is not None
        self = cls(
            shm,
            rank=rank,
            world=world,
            slot_bytes=slot_bytes,
            depth=depth,
            timeout_s=timeout_s,
            owner=rank == 0,
        )
        self._unlinked = rank == 0
        return self

    def close(self) -> None:
        """Unmap the segment (local, idempotent; rank 0 also unlinks it if still named)."""
        shm, self._shm = self._shm, None
        if shm is None:
            return
        self._fail_pending(RuntimeError("ShmAllReduce closed with reductions in flight"))
        self._ctrl = self._meta = None
        self._slots = None
        if self._owner and not self._unlinked:
            self._unlinked = True
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()
        try:
            shm.close()
        except BufferError:
            # A caller still holds a view of the buffer; the mapping goes with it.
            log.debug("shared-memory all-reduce segment still referenced at close()")

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> ShmAllReduce:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._shm is None

    @property
    def generation(self) -> int:
        """Number of shared-memory reductions done so far (same on every rank)."""
        return self._gen

    # ------------------------------------------------------------------ reduction

    def fits(self, tensor: torch.Tensor) -> bool:
        """Whether :meth:`average_` can reduce ``tensor`` in shared memory."""
        return (
            tensor.device.type == "cpu"
            and tensor.dtype in _DTYPES
            and tensor.is_contiguous()
            and tensor.numel() * tensor.element_size() <= self.capacity_bytes
        )

    def average_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In place: ``tensor`` ← mean of every rank's ``tensor``; returns ``tensor``.

        Also completes every earlier :meth:`average_async`. Every rank gets the
        bitwise-same result (sum in rank order, then one division). Raises
        ``TimeoutError`` if a peer does not reach this call within ``timeout_s``.
        """
        self._publish(tensor)
        self.flush()
        return tensor

    def average_async(self, tensor: torch.Tensor) -> torch.futures.Future[torch.Tensor]:
        """Publish ``tensor`` now; average it in place later, in :meth:`flush` (or when
        its slot is needed again). The returned future completes then, with ``tensor``.

        ``tensor`` must not be modified until the future completes.
        """
        pending = self._publish(tensor)
        pending.future = torch.futures.Future()
        return pending.future

    def flush(self) -> None:
        """Complete every published reduction, oldest first (a no-op when none)."""
        pending = self._pending
        try:
            while pending:
                self._complete(pending[0])
                pending.popleft()
        except BaseException as e:
            self._fail_pending(e)
            raise

    @property
    def in_flight(self) -> int:
        """Reductions published by this rank and not yet completed."""
        return len(self._pending)

    def _fail_pending(self, error: BaseException) -> None:
        while self._pending:
            fut = self._pending.popleft().future
            if fut is not None and not fut.done():
                fut.set_exception(error)

    def _publish(self, tensor: torch.Tensor) -> _Pending:
        """Steps 1-2 of the protocol: wait for my slot to be free, fill it, announce it."""
        ctrl, meta, slots = self._ctrl, self._meta, self._slots
        if ctrl is None or meta is None or slots is None:
            raise RuntimeError("ShmAllReduce is closed")
        if not self.fits(tensor):
            raise ValueError(
                f"tensor ({tensor.dtype}, {tensor.numel()} elements, {tensor.device}) does "
                f"not fit the shared-memory all-reduce (capacity {self.capacity_bytes} B)"
            )
        code, np_dtype = _DTYPES[tensor.dtype]
        out = tensor.detach().reshape(-1).numpy()
        gen = self._gen + 1
        slot = gen % self.depth
        reuse = gen - self.depth  # the generation this slot held before
        if reuse > 0:
            # 1. My own reads of generation `reuse` come first (completion is in order) ...
            while self._pending and self._pending[0].gen <= reuse:
                self.flush_one()
            # ... then everyone else's.
            self._wait_all(_DONE, reuse, gen)
        # 2. Data, then metadata, then the arrive counter (TSO keeps the order).
        np.copyto(slots[self.rank][slot][: out.nbytes].view(np_dtype), out)
        meta[self.rank, slot] = (out.size, code)
        ctrl[self.rank, _ARRIVE] = gen
        self._gen = gen
        pending = _Pending(gen, tensor, out, code, np_dtype)
        self._pending.append(pending)
        if self._debug_delay is not None:
            self._debug_delay("published")
        return pending

    def flush_one(self) -> None:
        """Complete the oldest published reduction."""
        try:
            self._complete(self._pending[0])
            self._pending.popleft()
        except BaseException as e:
            self._fail_pending(e)
            raise

    def _complete(self, p: _Pending) -> None:
        """Steps 3-5: wait for everyone's data, sum it in rank order, mark it read."""
        ctrl, meta, slots = self._ctrl, self._meta, self._slots
        assert ctrl is not None and meta is not None and slots is not None
        rank, world, gen = self.rank, self.world, p.gen
        slot = gen % self.depth
        # 3. Everyone's generation-gen data is in place.
        self._wait_all(_ARRIVE, gen, gen)
        delay = self._debug_delay
        if delay is not None:
            delay("arrived")
        for q in range(world):
            numel, code = int(meta[q, slot, 0]), int(meta[q, slot, 1])
            if (numel, code) != (p.numel, p.code):
                raise RuntimeError(
                    f"rank {rank}, all-reduce generation {gen}: rank {q} contributed "
                    f"{numel} elements (dtype code {code}), this rank {p.numel} (code "
                    f"{p.code}): the ranks are not reducing the same buckets in the same "
                    "order"
                )
        # 4. Sum in rank order (identical on every rank), then average.
        nbytes = p.out.nbytes
        views = [slots[q][slot][:nbytes].view(p.np_dtype) for q in range(world)]
        out = p.out
        if p.np_dtype == np.float16:
            acc = views[0].astype(np.float32)
            for v in views[1:]:
                np.add(acc, v, out=acc)
            np.divide(acc, np.float32(world), out=acc)
            np.copyto(out, acc, casting="same_kind")
        elif world == 1:
            np.copyto(out, views[0])
        else:
            np.add(views[0], views[1], out=out)
            for v in views[2:]:
                np.add(out, v, out=out)
            if world & (world - 1) == 0:
                # x * 2**-k and x / 2**k round the same exact value: bitwise equal, and the
                # multiplication is ~8x faster.
                np.multiply(out, p.np_dtype.type(1.0 / world), out=out)
            else:
                np.divide(out, p.np_dtype.type(world), out=out)
        del views
        if delay is not None:
            delay("summed")
        # 5. My reads of generation gen are over.
        ctrl[rank, _DONE] = gen
        if p.future is not None:
            p.future.set_result(p.tensor)

    def _wait_all(self, word: int, target: int, gen: int) -> None:
        ctrl = self._ctrl
        assert ctrl is not None
        for q in range(self.world):
            if q != self.rank and ctrl[q, word] < target:
                self._spin(ctrl, q, word, target, gen)

    def _spin(self, ctrl: np.ndarray, q: int, word: int, target: int, gen: int) -> None:
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
                time.sleep(_SLEEP_SECONDS)
            else:
                what = "publish" if word == _ARRIVE else "finish reading"
                raise TimeoutError(
                    f"shared-memory all-reduce: rank {self.rank} waited {waited:.1f} s at "
                    f"generation {gen} for rank {q} to {what} generation {target} (is rank "
                    f"{q} alive and making the same calls?)"
                )

    # ------------------------------------------------------------------ gloo fallback

    def _fallback(
        self, tensor: torch.Tensor, kind: str, reason: str
    ) -> torch.futures.Future[torch.Tensor]:
        """Default-hook behaviour (divide, then gloo all_reduce); warns once per ``kind``."""
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("shared-memory all-reduce: %s; using dist.all_reduce", reason)
        tensor.div_(self.world)
        return (
            dist.all_reduce(tensor, async_op=True)  # type: ignore[union-attr]
            .get_future()
            .then(lambda fut: fut.value()[0])
        )


def shm_allreduce_hook(
    state: ShmAllReduce, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook averaging each gradient bucket through shared memory.

    Same result as DDP's default all-reduce (the mean over ranks), returned as a
    completed future. With ``state.defer = True`` (off by default) a bucket is only
    published when DDP hands it over, and every bucket of the step is summed when the
    last one arrives (``bucket.is_last()``); this relies on DDP waiting for the futures
    only after the last bucket was launched, as its reducer does (``finalize_backward``).
    Buckets that do not fit (larger than the capacity, unsupported dtype) go through
    ``dist.all_reduce``, with a warning logged once per reason.
    """
    buffer = bucket.buffer()
    last = bucket.is_last()
    if state.fits(buffer):
        if state.defer and not last:
            return state.average_async(buffer)
        state.average_(buffer)  # also completes the deferred buckets, oldest first
        fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
        fut.set_result(buffer)
        return fut
    if last:
        state.flush()
    nbytes = buffer.numel() * buffer.element_size()
    if buffer.dtype not in _DTYPES or buffer.device.type != "cpu":
        kind, reason = "dtype", f"{buffer.dtype} buckets on {buffer.device.type} unsupported"
    else:
        kind = "capacity"
        reason = f"a {nbytes} B bucket exceeds the {state.capacity_bytes} B capacity"
    return state._fallback(buffer, kind, reason)


# DDP's register_comm_hook compares these annotations with the real objects; undo the
# strings of ``from __future__ import annotations`` for this one function.
shm_allreduce_hook.__annotations__ = {
    "state": ShmAllReduce,
    "bucket": dist.GradBucket,
    "return": torch.futures.Future[torch.Tensor],
}


def max_bucket_bytes(ddp: DistributedDataParallel) -> int:
    """Upper bound of the size of ``ddp``'s gradient buckets, in bytes.

    DDP closes a bucket once it reaches its cap (1 MiB for the first bucket, then
    ``bucket_cap_mb``), so a bucket holds less than the cap plus the largest parameter,
    and never more than all parameters together.
    """
    sizes = [p.numel() * p.element_size() for p in ddp.module.parameters() if p.requires_grad]
    if not sizes:
        return 1
    first_cap = int(getattr(dist, "_DEFAULT_FIRST_BUCKET_BYTES", 1024 * 1024))
    cap = int(getattr(ddp, "bucket_bytes_cap", 25 * 1024 * 1024))
    return min(sum(sizes), max(cap, first_cap) + max(sizes))


def install_shm_allreduce(
    ddp: DistributedDataParallel,
    *,
    capacity_bytes: int | None = None,
    timeout_s: float = 600.0,
    name: str | None = None,
) -> ShmAllReduce | None:
    """Collective: register :func:`shm_allreduce_hook` on ``ddp`` when it can work.

    Every rank takes the same decision: None (keep the default gloo all-reduce) unless
    all ranks are on one x86-64 host and the segment could be created and attached
    everywhere. ``capacity_bytes`` defaults to :func:`max_bucket_bytes` (the segment
    takes 2 x world x that). Call :meth:`ShmAllReduce.close` after training (any rank,
    any time after its last backward pass; no collective).
    """
    world = dist.get_world_size()
    facts: list[Any] = [None] * world
    dist.all_gather_object(facts, (socket.gethostname(), supported()))
    if world < 2 or not all(ok for _, ok in facts) or not same_host([h for h, _ in facts]):
        return None
    if capacity_bytes is None:
        capacity_bytes = max_bucket_bytes(ddp)
    name = name or f"sv-allreduce-{os.getpid()}-{secrets.token_hex(6)}"
    try:
        shm = ShmAllReduce.create(name, capacity_bytes, timeout_s=timeout_s)
    except ShmUnavailableError as e:
        log.warning("shared-memory all-reduce unavailable, using gloo: %s", e)
        return None
    ddp.register_comm_hook(state=shm, hook=shm_allreduce_hook)
    return shm
