"""Same-host DDP training through :mod:`sparkvision.training.shm_allreduce`: the DDP
communication hook and the collective decision to install it.

:func:`shm_allreduce_hook` plugs a :class:`~sparkvision.training.shm_allreduce.ShmAllReduce`
into ``DistributedDataParallel.register_comm_hook``; :func:`install_shm_allreduce` decides
(collectively: every rank alike) whether it can be used, i.e. every rank is on one x86-64
host (one host name, kernel boot and ``/dev/shm``: ``hosts.host_identity``) and the segment
could be created and attached everywhere, and registers it.
"""

import logging
import os
import secrets
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from sparkvision.training.hosts import HostIdentity, host_identity, same_machine
from sparkvision.training.shm_allreduce import (
    DTYPE,
    ShmAllReduce,
    ShmUnavailableError,
    supported,
)

if TYPE_CHECKING:
    from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)

__all__ = [
    "install_shm_allreduce",
    "max_bucket_bytes",
    "shm_allreduce_hook",
]


def shm_allreduce_hook(
    state: ShmAllReduce, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook averaging each gradient bucket through shared memory.

    Same result as DDP's default all-reduce (the mean over ranks), returned as a
    completed future. Buckets that do not fit (larger than the capacity, not float32 on
    the CPU) go through ``dist.all_reduce``, with a warning logged once per reason.
    """
    buffer = bucket.buffer()
    if state.fits(buffer):
        if state.timed:
            started, cpu = time.perf_counter(), time.thread_time()
            state.average_(buffer)
            state.seconds += time.perf_counter() - started
            state.cpu_seconds += time.thread_time() - cpu
        else:
            state.average_(buffer)
        fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
        fut.set_result(buffer)
        return fut
    if buffer.dtype != DTYPE or buffer.device.type != "cpu":
        kind, reason = "dtype", f"{buffer.dtype} buckets on {buffer.device.type} unsupported"
    else:
        nbytes = buffer.numel() * buffer.element_size()
        kind = "capacity"
        reason = f"a {nbytes} B bucket exceeds the {state.capacity_bytes} B capacity"
    if kind not in state._warned:
        state._warned.add(kind)
        log.warning("shared-memory all-reduce: %s; using dist.all_reduce", reason)
    # DDP's default hook: divide, then all_reduce.
    buffer.div_(state.world)
    return (
        dist.all_reduce(buffer, async_op=True)
        .get_future()
        .then(lambda f: f.value()[0])
    )



def max_bucket_bytes(ddp: "DistributedDataParallel") -> int:
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
    ddp: "DistributedDataParallel",
    *,
    capacity_bytes: int | None = None,
    timeout_s: float = 600.0,
    name: str | None = None,
    identities: list[HostIdentity] | None = None,
) -> ShmAllReduce | None:
    """Collective: register :func:`shm_allreduce_hook` on ``ddp`` when it can work.

    Every rank takes the same decision: None (keep the default gloo all-reduce) unless
    all ranks are on one x86-64 host — one host name, kernel boot and ``/dev/shm``
    (``hosts.host_identity``), not a host name alone — and the segment could be created
    and attached everywhere. ``identities``: every rank's, in rank order, when the caller
    has gathered them already (then no collective is needed to decide: ranks on one
    machine see the same ``supported()``).
    ``capacity_bytes`` defaults to :func:`max_bucket_bytes` (the segment
    takes 2 x world x that). The hook is registered on ``ddp`` only. Call
    :meth:`ShmAllReduce.close` after training (any time after the last backward pass).
    """
    world = dist.get_world_size()
    if identities is None:
        facts: list[Any] = [None] * world
        dist.all_gather_object(facts, (host_identity(), supported()))
        usable = all(ok for _, ok in facts) and same_machine([h for h, _ in facts])
    else:
        usable = supported() and same_machine(identities)
    if world < 2 or not usable:
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
