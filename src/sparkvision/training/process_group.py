"""Set-up of a barrier training task: rendezvous with the other tasks through
``BarrierTaskContext.allGather``, this rank's device, the gloo (nccl on GPUs) process group
(bound to the interface that carries the task's own address: ``training.hosts``; a rank
that cannot connect within ``CONNECT_TIMEOUT_S`` fails the training once, every rank told
through Spark's barrier RPC, with one line naming its host, rank and address), and the
small collectives (metrics, row counts) the rest of the training uses."""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sparkvision.config import TrainConfig

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def rendezvous(ctx: Any, rank: int) -> tuple[str, int]:
    """All tasks learn rank 0's host and a free port on it."""
    host = ctx.getTaskInfos()[0].address.split(":")[0]
    message = f"{host}:{_free_port()}" if rank == 0 else ""
    gathered = ctx.allGather(message)
    addr, port = gathered[0].rsplit(":", 1)
    return addr, int(port)


def task_device(config: TrainConfig, ctx: Any, rank: int,
                placement: tuple[int, int] | None = None) -> tuple[torch.device, str]:
    """This rank's torch device and process-group backend (see ``training.devices``): the
    task's Spark ``gpu`` resource, else its rank among the tasks on its host; under
    ``useGpu=auto`` the ranks agree on one backend (CPU for all if one has no GPU)."""
    import torch

    from sparkvision.training import devices

    if placement is None:  # (rank among the training tasks on this host, how many)
        placement = devices.local_rank([info.address for info in ctx.getTaskInfos()], rank)
    task_local, local_world = placement
    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    choice = devices.choose_device(
        config.use_gpu, cuda_count, devices.task_gpu_addresses(ctx), task_local,
        local_world=local_world, visible=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )
    if config.use_gpu == "auto":  # the same on every rank, so every rank joins the gather
        choice = devices.agree(choice, ctx.allGather(choice.backend), config.use_gpu)
    (log.warning if choice.fallback else log.info)(
        "rank %d trains on %s%s (%s): %s", rank, choice.kind,
        "" if choice.index is None else f":{choice.index}", choice.backend, choice.source,
    )
    if choice.index is not None:  # a CUDA device (the index is None on CPU)
        torch.cuda.set_device(choice.index)
        return torch.device("cuda", choice.index), choice.backend
    return torch.device("cpu"), choice.backend


def collective_timeout() -> timedelta:
    """How long a rank waits in a collective for the others before failing its task (and
    Spark retrying the stage): ``SPARKVISION_COLLECTIVE_TIMEOUT_S`` on the executors, else
    ``config.COLLECTIVE_TIMEOUT_S``."""
    from sparkvision.config import COLLECTIVE_TIMEOUT_S

    value = os.environ.get("SPARKVISION_COLLECTIVE_TIMEOUT_S", "")
    return timedelta(seconds=float(value) if value.strip() else COLLECTIVE_TIMEOUT_S)


class ConnectFailed(Exception):
    """Some rank could not join the process group, and every rank knows (they agreed
    through Spark's barrier ``allGather``, which needs no gloo connection): the tasks end
    without an exception, so that Spark does not run the stage again to wait and fail
    alike, and rank 0 reports the first rank's message."""


def form_process_group(config: TrainConfig, ctx: Any, rank: int, world: int,
                       placement: tuple[int, int]) -> torch.device:
    """Rendezvous, pick this rank's device and join the process group; the device.
    ``ConnectFailed`` (on every rank) when a rank could not connect."""
    import torch.distributed as dist
    from torch.distributed import distributed_c10d

    from sparkvision.config import CONNECT_TIMEOUT_S
    from sparkvision.training import hosts

    addr, port = rendezvous(ctx, rank)
    device, backend = task_device(config, ctx, rank, placement)
    # gloo and nccl advertise what the host name resolves to unless told an interface
    # (127.0.1.1 on stock Debian/Ubuntu hosts: unreachable from any other host), so every
    # rank binds to the interface carrying its own task address, unless the user chose one.
    own = hosts.socket_interface(ctx.getTaskInfos()[rank].address)
    bound = hosts.bind_socket_interface(own.interface)
    if own.interface is None:
        log.warning("rank %d: no network interface here carries its task address %s (%s); "
                    "gloo/nccl pick one from the host name", rank, own.address, own.ip)
    log.info("rank %d (%s, %s) joins the %s process group at %s:%d with %s", rank,
             socket.gethostname(), own.ip or own.address, backend, addr, port,
             bound or "no interface set")
    timeout = collective_timeout()
    failure = ""
    try:
        dist.init_process_group(
            backend, init_method=f"tcp://{addr}:{port}", rank=rank, world_size=world,
            timeout=min(timeout, timedelta(seconds=CONNECT_TIMEOUT_S)),
        )
        distributed_c10d._set_pg_timeout(timeout)  # connected: the collectives' own timeout
    except (RuntimeError, OSError) as exc:  # torch's DistError kinds, gloo's connect errors
        failure = hosts.connect_failure(
            rank, world, socket.gethostname(), own, bound, backend, f"{addr}:{port}", exc)
        log.error("%s", failure)
    failures = [f for f in ctx.allGather(failure) if f]
    if failures:
        if dist.is_initialized():
            dist.destroy_process_group()
        raise ConnectFailed(failures[0])
    return device


def collective_device() -> torch.device:
    """Where small collective tensors live: nccl takes only CUDA tensors, gloo CPU ones."""
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def allreduce(values: list[float], op: str = "sum") -> list[float]:
    """``values`` summed (or their maximum, ``op="max"``) over all ranks."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.cpu().tolist()


def allgather_int(value: int) -> list[int]:
    """Every rank's ``value``, in rank order."""
    import torch
    import torch.distributed as dist

    device = collective_device()
    out = [torch.zeros(1, dtype=torch.int64, device=device)
           for _ in range(dist.get_world_size())]
    dist.all_gather(out, torch.tensor([value], dtype=torch.int64, device=device))
    return [int(t.item()) for t in out]
