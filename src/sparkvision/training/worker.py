"""Executor entry point of a barrier training task.

One task per worker: read the partition into tensors once, rendezvous with the other
tasks through ``BarrierTaskContext.allGather``, train with DistributedDataParallel over
gloo (nccl on GPUs), checkpoint from rank 0, and return the weights from rank 0.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from sparkvision.config import TrainConfig
from sparkvision.training.progress import EventSender
from sparkvision.training.watchdog import Heartbeat

log = logging.getLogger(__name__)

RESULT_DDL = "kind STRING, seq INT, payload BINARY"
FLAG_COL = "_sv_is_val"
CHUNK = 8 * 1024 * 1024
#: This Python worker's running training task's heartbeat (one task at a time per worker).
_BEAT: Heartbeat | None = None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _rendezvous(ctx: Any, rank: int) -> tuple[str, int]:
    """All tasks learn rank 0's host and a free port on it."""
    host = ctx.getTaskInfos()[0].address.split(":")[0]
    message = f"{host}:{_free_port()}" if rank == 0 else ""
    gathered = ctx.allGather(message)
    addr, port = gathered[0].rsplit(":", 1)
    return addr, int(port)


def _device(config: TrainConfig, ctx: Any, rank: int,
            placement: tuple[int, int] | None = None):
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
    if choice.kind == "cuda":
        torch.cuda.set_device(choice.index)
        return torch.device("cuda", choice.index), choice.backend
    return torch.device("cpu"), choice.backend


def _collective_timeout():
    """How long a rank waits in a collective for the others before failing its task (and
    Spark retrying the stage): ``SPARKVISION_COLLECTIVE_TIMEOUT_S`` on the executors, else
    ``config.COLLECTIVE_TIMEOUT_S``."""
    from datetime import timedelta

    from sparkvision.config import COLLECTIVE_TIMEOUT_S

    value = os.environ.get("SPARKVISION_COLLECTIVE_TIMEOUT_S", "")
    return timedelta(seconds=float(value) if value.strip() else COLLECTIVE_TIMEOUT_S)


def train_partition(batches: Iterator[Any], config: TrainConfig) -> Iterator[Any]:
    """``mapInArrow(..., barrier=True)`` function: trains and yields rank 0's result."""
    import torch
    from pyspark import BarrierTaskContext

    torch.set_num_threads(1)
    ctx = BarrierTaskContext.get()
    rank = ctx.partitionId()
    world = config.num_workers
    with _heartbeat(ctx, rank, config) as beat:
        yield from _train_task(batches, config, ctx, rank, world, beat)


@contextlib.contextmanager
def _heartbeat(ctx: Any, rank: int, config: TrainConfig) -> Iterator[Heartbeat]:
    """This rank's heartbeat to the driver's watchdog, for the whole task."""
    global _BEAT
    from sparkvision.training.shm_allreduce import waiting_for

    sender = EventSender(config.progress_url, config.progress_token, config.progress_mailbox)
    host = ctx.getTaskInfos()[rank].address.split(":")[0]
    interval = min(5.0, max(0.5, config.stall_timeout_s / 5))
    beat = Heartbeat(sender.send, rank, host, ctx.taskAttemptId(), interval,
                     waiting=waiting_for).start()
    _BEAT = beat
    try:
        yield beat
    finally:
        _BEAT = None
        beat.stop()
        sender.close(timeout=1.0)


def _progress(**state: Any) -> None:
    """Update this rank's heartbeat (phase, epoch, global_step)."""
    if _BEAT is not None:
        for key, value in state.items():
            setattr(_BEAT, key, value)


def _train_task(batches: Iterator[Any], config: TrainConfig, ctx: Any, rank: int, world: int,
                beat: Heartbeat) -> Iterator[Any]:
    import pyarrow as pa
    import torch
    import torch.distributed as dist

    from sparkvision.data.feed import batches_to_sink
    from sparkvision.data.spill import PartitionSink, memory_budget, rss_anon_bytes
    from sparkvision.training import devices

    beat.phase = "reading its data"
    placement = devices.local_rank([info.address for info in ctx.getTaskInfos()], rank)
    budget = memory_budget(config.memory_budget_mb, placement[1])
    sink = PartitionSink(config.image_shape, budget)
    anon_before = rss_anon_bytes() or 0
    try:
        batches_to_sink(batches, sink, "image", "label", FLAG_COL, config.image_shape)
        x_tr, y_tr, x_val, y_val = sink.finish()
        memory = {"budget_mb": None if budget is None else round(budget / (1 << 20), 3),
                  "partition_kb": sink.bytes >> 10, "spilled": int(sink.spilled),
                  "rss_anon_growth_kb": max(0, (rss_anon_bytes() or 0) - anon_before) >> 10}
        if sink.spilled:
            config = replace(config, prefetch=True)
            log.info("rank %d: %.1f MB of images over its %.1f MB budget: memory-mapped from "
                     "%s", rank, sink.bytes / (1 << 20), (budget or 0) / (1 << 20),
                     sink.folder)
        beat.phase = "forming the process group"
        addr, port = _rendezvous(ctx, rank)
        device, backend = _device(config, ctx, rank, placement)
        if addr in ("127.0.0.1", "localhost"):
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        dist.init_process_group(
            backend, init_method=f"tcp://{addr}:{port}", rank=rank, world_size=world,
            timeout=_collective_timeout(),
        )
        beat.phase = "building the network"
        try:
            result = _train(
                torch.from_numpy(x_tr), torch.from_numpy(y_tr),
                torch.from_numpy(x_val), torch.from_numpy(y_val),
                config, rank, world, device,
            )
        except BaseException:
            # No collective here: the other ranks may be gone. Spark retries the stage.
            gc.collect()
            if dist.is_initialized():
                dist.destroy_process_group()
            raise
        # The teardown order that avoids DDP deadlocks in reused Python workers.
        gathered = {k: _allgather_int(int(v or 0)) for k, v in memory.items()
                    if k != "budget_mb"}
        gc.collect()
        dist.barrier()
        time.sleep(0.2)
        dist.destroy_process_group()
        if rank == 0:
            weights, history = result
            history["memory"] = {"budget_mb": memory["budget_mb"], **{
                k: gathered[k] for k in ("spilled", "partition_kb", "rss_anon_growth_kb")}}
            rows: list[tuple[str, int, bytes]] = [("history", 0, json.dumps(history).encode())]
            rows += [
                ("weights", i, weights[off : off + CHUNK])
                for i, off in enumerate(range(0, len(weights), CHUNK))
            ]
            yield pa.RecordBatch.from_pydict(
                {
                    "kind": [r[0] for r in rows],
                    "seq": pa.array([r[1] for r in rows], pa.int32()),
                    "payload": pa.array([r[2] for r in rows], pa.binary()),
                }
            )
    finally:
        sink.cleanup()  # also when the task fails: no spill file outlives its task


def _fingerprint(config: TrainConfig) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed by this training."""
    return {
        "model": config.model, "num_classes": config.num_classes,
        "image_shape": list(config.image_shape), "num_workers": config.num_workers,
        "batch_size": config.batch_size, "optimizer": config.optimizer,
        "epochs": config.epochs, "seed": config.seed, "freeze": config.freeze,
        "backbone_lr_scale": config.backbone_lr_scale, "privacy": config.privacy,
        "target_epsilon": config.target_epsilon if config.privacy == "dp" else None,
        "init_sha1": hashlib.sha1(config.init_state).hexdigest() if config.init_state else "",
    }


def _transfer(model, config: TrainConfig):
    """Load the starting tensors (the rest keep their seeded initialisation), freeze the
    backbone; return what the optimizer trains (parameter groups when the backbone's
    learning rate differs from the head's)."""
    from sparkvision.models.parts import freeze_backbone, head_name, parameter_groups
    from sparkvision.models.weights import load_state_dict_bytes

    if config.init_state:
        model.load_state_dict(load_state_dict_bytes(config.init_state), strict=False)
    if config.freeze == "none" and config.backbone_lr_scale == 1.0:
        return model.parameters()
    head = head_name(model, config.num_classes)
    if config.freeze == "backbone":
        freeze_backbone(model, head)
    return parameter_groups(model, head, config.backbone_lr_scale)


def _maybe_inject_fault(config: TrainConfig, epoch: int, rank: int) -> None:
    """Test hook: fail once in (epoch, rank); a marker file makes the retry pass."""
    if config.fault_injection != (epoch, rank) or not config.checkpoint_dir:
        return
    from sparkvision import storage

    marker = storage.join(config.checkpoint_dir, f"_fault-injected-e{epoch}-r{rank}")
    if storage.exists(marker):
        return
    storage.write_bytes(marker, b"")
    raise RuntimeError(f"injected failure in epoch {epoch} on rank {rank}")


def _allreduce(values: list[float], op: str = "sum") -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.cpu().tolist()


def _collective_device():
    """Where small collective tensors live: nccl takes only CUDA tensors, gloo CPU ones."""
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _allgather_int(value: int) -> list[int]:
    import torch
    import torch.distributed as dist

    device = _collective_device()
    out = [torch.zeros(1, dtype=torch.int64, device=device)
           for _ in range(dist.get_world_size())]
    dist.all_gather(out, torch.tensor([value], dtype=torch.int64, device=device))
    return [int(t.item()) for t in out]


@dataclass
class _Run:
    """What one rank's training needs besides the data."""

    config: TrainConfig
    rank: int
    world: int
    device: Any
    model: Any
    ddp: Any
    optimizer: Any
    start_epoch: int
    history: list[dict[str, Any]]
    resumed_from: int | None
    started: float
    allreduce: str


def _train(x_tr, y_tr, x_val, y_val, config: TrainConfig, rank: int, world: int, device):
    """Build (or resume) the model, wrap it in DDP and run the epochs."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from sparkvision.models import build_model
    from sparkvision.training import checkpoint as ckpt
    from sparkvision.training.loop import make_optimizer
    from sparkvision.training.shm_allreduce import install_shm_allreduce

    started = time.monotonic()
    torch.manual_seed(config.seed)
    model = build_model(config.model, config.num_classes, config.image_shape)
    params = _transfer(model, config)
    model = model.to(device)
    optimizer = make_optimizer(config, params)

    _progress(phase="looking for a checkpoint")
    # Resume: rank 0 picks the checkpoint so every rank loads the same one.
    resume = _allreduce([ckpt.latest_epoch(config.checkpoint_dir) if rank == 0 else 0])[0]
    start_epoch, history, resumed_from = int(resume), [], None
    if start_epoch > 0:
        state, opt_state, info = ckpt.load_checkpoint(config.checkpoint_dir, start_epoch)
        if info.get("fingerprint") != _fingerprint(config):
            from sparkvision.errors import TrainingError

            raise TrainingError(
                f"checkpointDir {config.checkpoint_dir} holds checkpoints of another training "
                f"({info.get('fingerprint')}); use an empty folder to start a new one"
            )
        model.load_state_dict(state)
        optimizer.load_state_dict(opt_state)
        history = info.get("history", [])
        resumed_from = start_epoch
        if rank == 0:
            log.warning("resuming from checkpoint after epoch %d", start_epoch)
    # Small buckets let the all-reduce of the last layers overlap the backward pass of the
    # first ones (one 25 MB bucket would serialise communication after the whole backward).
    _progress(phase="wrapping the network in DDP")
    shm = None
    if config.privacy == "dp":  # Opacus wraps it once the steps are known (_epochs)
        ddp = model
    else:
        ddp = DDP(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            bucket_cap_mb=1, gradient_as_bucket_view=True,
        )
        # Same-host CPU ranks average gradients through shared memory (~3x cheaper than
        # gloo's TCP loopback); collective, every rank takes the same decision.
        _progress(phase="setting up the gradient all-reduce")
        shm = install_shm_allreduce(ddp) if dist.get_backend() == "gloo" else None
    _progress(phase="exchanging row counts")
    run = _Run(
        config, rank, world, device, model, ddp, optimizer, start_epoch, history,
        resumed_from, started,
        "dp-sgd" if config.privacy == "dp" else "shm" if shm is not None else dist.get_backend(),
    )
    try:
        return _epochs(run, x_tr, y_tr, x_val, y_val)
    finally:
        if shm is not None:
            shm.close()
        run.ddp = None


def _epochs(run: _Run, x_tr, y_tr, x_val, y_val) -> tuple[bytes, dict[str, Any]]:
    """The epoch loop: equal steps per rank, all-reduced metrics, rank-0 checkpoints."""
    import torch
    import torch.distributed as dist

    from sparkvision.errors import TrainingError
    from sparkvision.models.weights import state_dict_bytes
    from sparkvision.training import checkpoint as ckpt
    from sparkvision.training.loop import epoch_indices, evaluate, steps_per_epoch, train_epoch
    config, rank, world, device = run.config, run.rank, run.world, run.device
    train_rows = _allgather_int(len(x_tr))
    val_rows = _allgather_int(len(x_val))
    if min(train_rows) == 0:
        raise TrainingError(
            f"a worker got no training rows (rows per worker: {train_rows}): use fewer "
            "workers or more data"
        )
    steps = steps_per_epoch(max(train_rows), config.batch_size)
    total_steps = steps * config.epochs
    weights = None
    if config.class_weights is not None:
        weights = torch.tensor(config.class_weights, dtype=torch.float32, device=device)
    dp = None
    if config.privacy == "dp":  # noise calibrated on all ranks' rows and every step
        from sparkvision.training.privacy import make_private, plan

        dp = plan(sum(train_rows), config.batch_size * world, steps, config.epochs,
                  config.target_epsilon, config.target_delta, config.max_grad_norm)
        run.ddp, run.optimizer = make_private(run.model, run.optimizer, config.batch_size, dp)
    seed = config.seed * 1000 + rank + 7919 * run.start_epoch
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    url = config.progress_url if rank == 0 else ""
    events = EventSender(url, config.progress_token, config.progress_mailbox)
    events.send({"type": "start", "steps_per_epoch": steps, "start_epoch": run.start_epoch,
                 "world_size": world})

    stopped_early, diverged, record = config.epochs, False, {}
    privacy_stop, spent = None, None
    for epoch in range(run.start_epoch, config.epochs):
        if dp is not None:  # ε spent once this epoch is done
            spent = dp.epsilon_after((epoch + 1) * steps)
            if spent > config.target_epsilon:
                privacy_stop = epoch  # one more epoch would spend more than targetEpsilon
                stopped_early = epoch
                break
        t0 = time.monotonic()
        _maybe_inject_fault(config, epoch + 1, rank)
        order = epoch_indices(len(x_tr), steps, config.batch_size, config.seed, epoch, rank)
        base = epoch * steps

        _progress(phase="training", epoch=epoch + 1)

        def on_step(step: int, base: int = base) -> None:
            if _BEAT is not None:
                _BEAT.global_step = base + step
            if url and (step % config.progress_every_steps == 0 or step == steps):
                events.send({"type": "step", "global_step": base + step})

        tot = train_epoch(
            run.ddp, run.optimizer, x_tr, y_tr, order, config, gen, base, total_steps, weights,
            on_step, device,
        )
        loss_sum, correct, count = _allreduce([tot.loss_sum, tot.correct, tot.count])
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / count,
            "train_accuracy": correct / count,
            "val_loss": None,
            "val_accuracy": None,
            "steps_per_rank": [steps] * world,
            "lr": run.optimizer.param_groups[0]["lr"],
        }
        if dp is not None:
            record["epsilon"] = spent
        _progress(phase="validating")
        if sum(val_rows) > 0:
            v = evaluate(run.model, x_val, y_val, config.loss, device=device,
                         gamma=config.focal_gamma)
            vl, vc, vn = _allreduce([v.loss_sum, v.correct, v.count])
            record["val_loss"], record["val_accuracy"] = vl / vn, vc / vn
        record["seconds"] = round(time.monotonic() - t0, 3)
        samples = steps * config.batch_size * world
        record["samples_per_second"] = round(samples / max(record["seconds"], 1e-9), 1)
        run.history.append(record)
        stop = 0.0
        _progress(phase="checkpointing and reporting the epoch")
        if rank == 0:
            if config.checkpoint_dir:
                ckpt.save_checkpoint(
                    config.checkpoint_dir, epoch + 1, run.model, run.optimizer,
                    {"history": run.history, "fingerprint": _fingerprint(config)},
                )
            stop = float(events.ask_stop(dict(record, type="epoch")))
        diverged = not math.isfinite(record["train_loss"])
        # One collective tells every rank whether the driver asked to stop (a pruned trial):
        # they all leave the loop after this epoch, and the barrier job ends normally.
        if _allreduce([stop])[0] > 0 or diverged:
            stopped_early = epoch + 1
            break

    events.close()
    summary = {
        "world_size": world,
        "ranks": list(range(world)),
        "backend": dist.get_backend(),
        "allreduce": run.allreduce,
        "device": str(device),
        "train_rows_per_rank": train_rows,
        "val_rows_per_rank": val_rows,
        "steps_per_epoch": steps,
        "resumed_from_epoch": run.resumed_from,
        "stopped_early": stopped_early if stopped_early < config.epochs else None,
        "diverged": (f"the training loss is {record['train_loss']} in epoch "
                     f"{record['epoch']}") if diverged else None,
        "epochs": run.history,
        "seconds": round(time.monotonic() - run.started, 3),
    }
    if dp is not None:
        last = run.history[-1].get("epsilon", 0.0) if run.history else 0.0
        summary["privacy"] = dict(dp.as_dict(last), stopped_at_budget=privacy_stop is not None)
    weights_bytes = state_dict_bytes(run.model) if rank == 0 else b""
    return weights_bytes, summary
