"""Executor entry point of a barrier training task.

One task per worker: read the partition into tensors once, set up the process group
(``training.process_group``), train (``training.epochs``, resuming through
``training.resume``) and return the weights from rank 0, with a heartbeat to the driver's
watchdog for the whole task.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from sparkvision.config import TrainConfig
from sparkvision.training.history import MemoryRecord
from sparkvision.training.transport import EventSender
from sparkvision.training.watchdog import Heartbeat

log = logging.getLogger(__name__)

RESULT_DDL = "kind STRING, seq INT, payload BINARY"
#: The result row's kind that carries an error every rank agreed on (``_error_row``)
ERROR_KIND = "error"
FLAG_COL = "_sv_is_val"
CHUNK = 8 * 1024 * 1024


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
    from sparkvision.training.shm_allreduce import waiting_for

    sender = EventSender(config.progress_url, config.progress_token, config.progress_mailbox)
    host = ctx.getTaskInfos()[rank].address.split(":")[0]
    interval = min(5.0, max(0.5, config.stall_timeout_s / 5))
    beat = Heartbeat(sender.send, rank, host, ctx.taskAttemptId(), interval,
                     waiting=waiting_for).start()
    try:
        yield beat
    finally:
        beat.stop()
        sender.close(timeout=1.0)


def _train_task(batches: Iterator[Any], config: TrainConfig, ctx: Any, rank: int, world: int,
                beat: Heartbeat) -> Iterator[Any]:
    import torch
    import torch.distributed as dist

    from sparkvision.data.feed import batches_to_sink
    from sparkvision.data.spill import AnonMemoryWatch, PartitionSink, memory_budget
    from sparkvision.training import devices
    from sparkvision.training.epochs import BuildFailed, train
    from sparkvision.training.process_group import (
        ConnectFailed,
        allgather_int,
        form_process_group,
    )

    beat.phase = "reading its data"
    placement = devices.local_rank([info.address for info in ctx.getTaskInfos()], rank)
    budget = memory_budget(config.memory_budget_mb, placement[1])
    sink = PartitionSink(config.image_shape, budget)
    watch = AnonMemoryWatch().start()  # before the first Arrow batch
    try:
        batches_to_sink(watch.through(batches), sink, "image", "label", FLAG_COL,
                        config.image_shape)
        x_tr, y_tr, x_val, y_val = sink.finish()
        anon_read = watch.sample()
        memory = {"budget_mb": None if budget is None else round(budget / (1 << 20), 3),
                  "partition_kb": sink.bytes >> 10, "spilled": int(sink.spilled),
                  "rss_anon_growth_kb": max(0, anon_read - watch.start_bytes) >> 10,
                  "pid": os.getpid(), "rss_anon_start_kb": watch.start_bytes >> 10,
                  "rss_anon_read_kb": anon_read >> 10}
        if sink.spilled:
            config = replace(config, prefetch=True)
            log.info("rank %d: %.1f MB of images over its %.1f MB budget: memory-mapped from "
                     "%s", rank, sink.bytes / (1 << 20), (budget or 0) / (1 << 20),
                     sink.folder)
        beat.phase = "forming the process group"
        try:
            device = form_process_group(config, ctx, rank, world, placement)
        except ConnectFailed as failed:  # every rank agreed: no stage retry, rank 0 says why
            if rank == 0:
                yield _error_row("connect", str(failed))
            return
        beat.phase = "building the network"
        try:
            result = train(
                torch.from_numpy(x_tr), torch.from_numpy(y_tr),
                torch.from_numpy(x_val), torch.from_numpy(y_val),
                config, rank, world, device, beat,
            )
        except BuildFailed as failed:
            # Every rank agreed (no DDP yet): end the task without an exception, so that
            # Spark does not run the stage again to fail alike; rank 0 says why.
            _leave_process_group()
            if rank == 0:
                yield _error_row("build", str(failed))
            return
        except BaseException:
            # No collective here: the other ranks may be gone. Spark retries the stage.
            gc.collect()
            if dist.is_initialized():
                dist.destroy_process_group()
            raise
        memory["rss_anon_end_kb"] = watch.sample() >> 10
        watch.stop()
        memory["rss_anon_peak_kb"] = watch.peak >> 10
        gathered = {k: allgather_int(int(v or 0)) for k, v in memory.items()
                    if k != "budget_mb"}
        _leave_process_group()
        if rank == 0:
            weights, history = result
            history = replace(history, memory=MemoryRecord(
                memory["budget_mb"], gathered["spilled"], gathered["partition_kb"],
                gathered["rss_anon_growth_kb"], *(gathered[k] for k in MemoryRecord.LATER)))
            rows: list[tuple[str, int, bytes]] = [
                ("history", 0, history.to_json(indent=None).encode())]
            rows += [
                ("weights", i, weights[off : off + CHUNK])
                for i, off in enumerate(range(0, len(weights), CHUNK))
            ]
            yield _result_rows(rows)
    finally:
        watch.stop()
        sink.cleanup()  # also when the task fails: no spill file outlives its task


def _leave_process_group() -> None:
    """Every rank together: the teardown order that avoids DDP deadlocks in reused Python
    workers (collect DDP's reducer, a barrier, a pause, then destroy the group)."""
    import torch.distributed as dist

    gc.collect()
    dist.barrier()
    time.sleep(0.2)
    dist.destroy_process_group()


def _result_rows(rows: list[tuple[str, int, bytes]]) -> Any:
    """``(kind, seq, payload)`` rows as one Arrow batch of ``RESULT_DDL``."""
    import pyarrow as pa

    return pa.RecordBatch.from_pydict({
        "kind": [r[0] for r in rows],
        "seq": pa.array([r[1] for r in rows], pa.int32()),
        "payload": pa.array([r[2] for r in rows], pa.binary())})


def _error_row(what: str, message: str) -> Any:
    """The one result row of a training that every rank agreed cannot run (``what``:
    "build" — the network; "connect" — the process group): JSON ``{what, message}``."""
    import json

    return _result_rows([(ERROR_KIND, 0,
                          json.dumps({"what": what, "message": message}).encode())])
