"""One rank's training once its process group stands: build the network (or resume it from
the last checkpoint), wrap it in DDP, and run the epoch loop — equal steps per rank,
all-reduced metrics, rank-0 checkpoints and progress events, this rank's heartbeat updated
as it goes."""

from __future__ import annotations

import logging
import math
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sparkvision.config import TrainConfig
from sparkvision.errors import SparkVisionError
from sparkvision.training.history import EpochRecord, TopologyRecord, TrainingHistory
from sparkvision.training.transport import EventSender
from sparkvision.training.watchdog import Heartbeat

if TYPE_CHECKING:
    import torch

    from sparkvision.training.loop import StepProfile

log = logging.getLogger(__name__)


@dataclass
class Run:
    """What one rank's training needs besides the data."""

    config: TrainConfig
    rank: int
    world: int
    device: torch.device
    model: torch.nn.Module
    ddp: Any
    optimizer: Any
    start_epoch: int
    history: list[EpochRecord]
    resumed_from: int | None
    started: float
    allreduce: str
    #: the hosts the ranks run on and the backend of each level
    topology: TopologyRecord | None = None
    #: opt-in per-phase step times (``loop.PROFILE_ENV``); None: nothing is measured
    profile: StepProfile | None = None


class BuildFailed(Exception):
    """Building the network (or fitting its starting weights) raised a sparkvision error on
    at least one rank, and every rank knows (they agreed in one collective): the task ends
    without an exception so that Spark does not retry the stage, and rank 0 reports the
    message (``worker.ERROR_KIND``)."""


def train(x_tr: torch.Tensor, y_tr: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
          config: TrainConfig, rank: int, world: int, device: torch.device,
          beat: Heartbeat) -> tuple[bytes, TrainingHistory]:
    """Build (or resume) the model, wrap it in DDP and run the epochs: rank 0's weights
    (safetensors; empty on the other ranks) and the training's history (what the driver
    adds to it left empty)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from sparkvision.models import build_model
    from sparkvision.training import hosts
    from sparkvision.training.compression import NONE, compression_used, register_compression
    from sparkvision.training.loop import StepProfile, make_optimizer, profile_dir
    from sparkvision.training.resume import restore, transfer
    from sparkvision.training.shm_comm_hook import install_shm_allreduce

    started = time.monotonic()
    torch.manual_seed(config.seed)
    failure: str | None = None
    try:
        model = build_model(config.model, config.num_classes, config.image_shape)
        params = transfer(model, config)
    except SparkVisionError as exc:  # the same inputs on every rank: a retry fails alike
        traceback.print_exc()  # the executor's log keeps the cause
        failure = str(exc)
    beat.phase = "exchanging host identities"
    # Collective: whether every rank built the network, and which ranks share a host
    # (name, kernel boot and /dev/shm), for the shared-memory decision and the topology.
    identity = hosts.host_identity()
    facts: list[Any] = [None] * world
    dist.all_gather_object(facts, (failure, identity))
    failed = next((f for f, _ in facts if f is not None), None)
    if failed is not None:
        raise BuildFailed(failed)
    identities = [i for _, i in facts]
    model = model.to(device)
    optimizer = make_optimizer(config, params)

    beat.phase = "looking for a checkpoint"
    resumed = restore(config, rank, model, optimizer)
    # Small buckets let the all-reduce of the last layers overlap the backward pass of the
    # first ones (one 25 MB bucket would serialise communication after the whole backward).
    beat.phase = "wrapping the network in DDP"
    shm = None
    if config.privacy == "dp":  # Opacus wraps it once the steps are known (run_epochs)
        ddp = model
    else:
        ddp = DDP(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            bucket_cap_mb=1, gradient_as_bucket_view=True,
        )
        # Same-host CPU ranks average gradients through shared memory (~3x cheaper than
        # gloo's TCP loopback); collective, every rank takes the same decision.
        beat.phase = "setting up the gradient all-reduce"
        shm = (install_shm_allreduce(ddp, identities=identities)
               if dist.get_backend() == "gloo" else None)
    # Gradients through the process group (between hosts) travel compressed when asked.
    compression = compression_used(config.grad_compression, world=world,
                                   shared_memory=shm is not None,
                                   private=config.privacy == "dp")
    if compression != NONE:
        register_compression(ddp, compression, seed=config.seed)
    beat.phase = "exchanging row counts"
    run = Run(
        config, rank, world, device, model, ddp, optimizer, resumed.start_epoch,
        resumed.history, resumed.resumed_from, started,
        "dp-sgd" if config.privacy == "dp" else "shm" if shm is not None else dist.get_backend(),
        hosts.topology(identities, dist.get_backend(), shm is not None, compression),
    )
    if profile_dir():
        run.profile = StepProfile()
        if shm is not None:
            shm.timed = True
            run.profile.comm_clock = lambda: (shm.seconds, shm.cpu_seconds)
            run.profile.comm_wait_clock = lambda: shm.wait_seconds
    try:
        return run_epochs(run, x_tr, y_tr, x_val, y_val, beat)
    finally:
        if shm is not None:
            shm.close()
        run.ddp = None


def run_epochs(run: Run, x_tr: torch.Tensor, y_tr: torch.Tensor, x_val: torch.Tensor,
               y_val: torch.Tensor, beat: Heartbeat) -> tuple[bytes, TrainingHistory]:
    """The epoch loop: equal steps per rank, all-reduced metrics, rank-0 checkpoints."""
    import torch
    import torch.distributed as dist

    from sparkvision.errors import TrainingError
    from sparkvision.models.weights import state_dict_bytes
    from sparkvision.training import checkpoint as ckpt
    from sparkvision.training.loop import epoch_indices, evaluate, steps_per_epoch, train_epoch
    from sparkvision.training.process_group import allgather_int, allreduce
    from sparkvision.training.resume import fingerprint
    config, rank, world, device = run.config, run.rank, run.world, run.device
    train_rows = allgather_int(len(x_tr))
    val_rows = allgather_int(len(x_val))
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

    stopped_early, diverged, record = config.epochs, False, None
    privacy_stop, spent = None, None
    for epoch in range(run.start_epoch, config.epochs):
        if dp is not None:  # ε spent once this epoch is done
            spent = dp.epsilon_after((epoch + 1) * steps)
            if spent > config.target_epsilon:
                privacy_stop = epoch  # one more epoch would spend more than targetEpsilon
                stopped_early = epoch
                break
        t0 = time.monotonic()
        order = epoch_indices(len(x_tr), steps, config.batch_size, config.seed, epoch, rank)
        base = epoch * steps

        beat.phase, beat.epoch = "training", epoch + 1

        def on_step(step: int, base: int = base) -> None:
            beat.global_step = base + step
            if url and (step % config.progress_every_steps == 0 or step == steps):
                events.send({"type": "step", "global_step": base + step})

        t_steps = time.monotonic()
        tot = train_epoch(
            run.ddp, run.optimizer, x_tr, y_tr, order, config, gen, base, total_steps, weights,
            on_step, device, run.profile,
        )
        t_steps = time.monotonic() - t_steps
        loss_sum, correct, count = allreduce([tot.loss_sum, tot.correct, tot.count])
        lr = run.optimizer.param_groups[0]["lr"]
        beat.phase = "validating"
        val_loss = val_accuracy = None
        if sum(val_rows) > 0:
            v = evaluate(run.model, x_val, y_val, config.loss, device=device,
                         gamma=config.focal_gamma, mean=config.input_mean,
                         std=config.input_std)
            vl, vc, vn = allreduce([v.loss_sum, v.correct, v.count])
            val_loss, val_accuracy = vl / vn, vc / vn
        seconds = round(time.monotonic() - t0, 3)
        if run.profile is not None:  # what the epoch's seconds hold besides its steps
            run.profile.seconds["epoch_end"] += seconds - t_steps
        samples = steps * config.batch_size * world
        record = EpochRecord(
            epoch=epoch + 1, train_loss=loss_sum / count, train_accuracy=correct / count,
            val_loss=val_loss, val_accuracy=val_accuracy, steps_per_rank=[steps] * world,
            lr=lr, seconds=seconds, samples_per_second=round(samples / max(seconds, 1e-9), 1),
            epsilon=spent if dp is not None else None,
        )
        run.history.append(record)
        stop = 0.0
        beat.phase = "checkpointing and reporting the epoch"
        if rank == 0:
            if config.checkpoint_dir:
                ckpt.save_checkpoint(
                    config.checkpoint_dir, epoch + 1, run.model, run.optimizer,
                    {"history": [e.to_dict() for e in run.history],
                     "fingerprint": fingerprint(config)},
                )
            stop = float(events.ask_stop(dict(record.to_dict(), type="epoch")))
        diverged = not math.isfinite(record.train_loss)
        # One collective tells every rank whether the driver asked to stop (a pruned trial):
        # they all leave the loop after this epoch, and the barrier job ends normally.
        if allreduce([stop])[0] > 0 or diverged:
            stopped_early = epoch + 1
            break

    events.close()
    privacy = None
    if dp is not None:
        last = run.history[-1].epsilon if run.history else None
        privacy = dp.record(last or 0.0, stopped_at_budget=privacy_stop is not None)
    summary = TrainingHistory(
        world_size=world,
        ranks=list(range(world)),
        backend=dist.get_backend(),
        allreduce=run.allreduce,
        device=str(device),
        train_rows_per_rank=train_rows,
        val_rows_per_rank=val_rows,
        steps_per_epoch=steps,
        resumed_from_epoch=run.resumed_from,
        stopped_early=stopped_early if stopped_early < config.epochs else None,
        diverged=(f"the training loss is {record.train_loss} in epoch "
                  f"{record.epoch}") if diverged and record is not None else None,
        epochs=run.history,
        seconds=round(time.monotonic() - run.started, 3),
        privacy=privacy,
        topology=run.topology,
    )
    if run.profile is not None:
        try:
            _write_profile(run, summary)
        except OSError as e:  # a diagnostic: never a reason to fail the training
            log.warning("could not write the step profile: %s", e)
    weights_bytes = state_dict_bytes(run.model) if rank == 0 else b""
    return weights_bytes, summary


def _write_profile(run: Run, summary: TrainingHistory) -> None:
    """This rank's step profile as ``<PROFILE_ENV folder>/profile-<pid>-r<rank>-<ns>.json``
    (a process runs one training at a time; the bench picks the files a fit added)."""
    import json
    import os
    from pathlib import Path

    from sparkvision.training.loop import profile_dir

    assert run.profile is not None
    folder = Path(profile_dir())
    folder.mkdir(parents=True, exist_ok=True)
    data = {"rank": run.rank, "world": run.world, "allreduce": run.allreduce,
            "batch_size": run.config.batch_size, "steps_per_epoch": summary.steps_per_epoch,
            "epochs": len(run.history), "epoch_seconds": [e.seconds for e in run.history],
            **run.profile.to_dict()}
    path = folder / f"profile-{os.getpid()}-r{run.rank}-{time.time_ns()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
