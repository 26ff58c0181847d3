"""Driver side of distributed training: slot check, data layout, barrier stage launch."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from sparkvision.config import TrainConfig
from sparkvision.errors import (
    ClusterCapacityError,
    InvalidParameterError,
    ModelBuildError,
    TrainingCancelledError,
    TrainingError,
    TrainingStalledError,
    user_error_message,
)
from sparkvision.session.jobs import cancel_jobs, tagged_jobs
from sparkvision.training.history import TrainingHistory
from sparkvision.training.progress import ProgressBar
from sparkvision.training.transport import MailboxReader, ProgressServer
from sparkvision.training.watchdog import Watchdog
from sparkvision.training.worker import ERROR_KIND, FLAG_COL, RESULT_DDL, train_partition

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOutput:
    weights: bytes  # safetensors
    history: TrainingHistory


def available_slots(spark) -> int:
    """Task slots the cluster offers now: cores / spark.task.cpus, on a classic or Spark
    Connect session (``session.default_parallelism`` says how each is counted)."""
    from sparkvision.session import default_parallelism, task_cpus

    return max(0, default_parallelism(spark) // task_cpus(spark))


def check_slots(spark, num_workers: int) -> None:
    from sparkvision.session import master_url

    slots = available_slots(spark)
    if num_workers > slots:
        raise ClusterCapacityError(
            f"numWorkers={num_workers} needs {num_workers} concurrent task slots but the "
            f"cluster has {slots} ({master_url(spark)}): lower numWorkers to at most "
            f"{slots}, or add executors/cores"
        )


def layout(train_df, val_df, image_col: str, label_col: str, num_workers: int, repartition: bool):
    """One DataFrame with train and validation rows, ``num_workers`` partitions."""
    from pyspark.sql import functions as F

    def pick(df, is_val: bool):
        for col in (image_col, label_col):
            if col not in df.columns:
                raise InvalidParameterError(
                    "imageCol" if col == image_col else "labelCol", col,
                    f"the DataFrame has columns {df.columns}; name an existing column",
                )
        return df.select(
            F.col(image_col).alias("image"),
            F.col(label_col).cast("long").alias("label"),
            F.lit(is_val).alias(FLAG_COL),
        )

    data = pick(train_df, False)
    if val_df is not None:
        data = data.unionByName(pick(val_df, True))
    if repartition:
        return data.repartition(num_workers)
    from sparkvision.session import num_partitions

    parts = num_partitions(data)
    if parts != num_workers:  # a barrier stage cannot coalesce or split partitions itself
        raise InvalidParameterError(
            "repartition", False,
            f"the data has {parts} partitions but numWorkers={num_workers}: set "
            "repartition=True, repartition the DataFrame yourself, or prepare the data "
            f"with --num-shards {num_workers}",
        )
    return data


def _driver_host(spark) -> str:
    """Where executors send progress events: this process (``session.client_host``)."""
    from sparkvision.session import client_host

    return client_host(spark)


@contextlib.contextmanager
def _mailbox(config: TrainConfig, server: ProgressServer, tag: str) -> Iterator[str]:
    """The fallback channel for executors that cannot reach ``server``: a folder beside the
    checkpoints (which every rank reaches), polled while the fit runs; "" without one.
    Events that come this way are marked ``"via": "mailbox"`` (the watchdog tells a rank cut
    off from the driver's network by it)."""
    if not config.checkpoint_dir:
        yield ""
        return
    from sparkvision import storage

    def deliver(event: dict[str, Any]) -> bool:
        return server.deliver({**event, "via": "mailbox"})

    folder = storage.join(config.checkpoint_dir, "_progress", tag)
    with MailboxReader(folder, server.token, deliver, server.refused) as reader:
        yield folder
    if reader.received:
        log.info("%d progress events came through the mailbox %s", reader.received, folder)


class _Stalled(Exception):
    """One attempt of the training was cancelled by the watchdog."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def run_distributed(
    spark,
    data,
    config: TrainConfig,
    on_epoch_end: Callable[[dict[str, Any]], Any] | None = None,
    show_progress: bool = True,
) -> TrainOutput:
    """Train in one barrier stage of ``config.num_workers`` tasks and return rank 0's result.

    A watchdog thread cancels the stage (its job tag) when a rank makes no progress for
    ``config.stall_timeout_s``; the training then starts again as a new job (resuming from
    its last checkpoint) up to ``config.stall_retries`` times, and after that fails with an
    error naming that rank, its host and last step."""
    check_network(config)
    check_slots(spark, config.num_workers)
    bar = ProgressBar(config.epochs, on_epoch_end, show=show_progress)
    stalls: list[str] = []
    try:
        while True:
            try:
                rows = _attempt(spark, data, config, bar)
                break
            except _Stalled as stall:
                stalls.append(stall.message)
                if len(stalls) > config.stall_retries:
                    again = (f" and started again {len(stalls) - 1} time(s) from its last "
                             "checkpoint, stalling each time" if len(stalls) > 1 else "")
                    raise TrainingStalledError(
                        f"training stopped: {stall.message}; the job was cancelled after "
                        f"stallTimeout={config.stall_timeout_s:g} s{again} (raise it with "
                        "--timeout if steps are legitimately that slow, or look at that "
                        "executor's log)") from stall.__cause__
                log.warning("training stalled: %s; the job was cancelled and starts again "
                            "from the last checkpoint (retry %d of %d)", stall.message,
                            len(stalls), config.stall_retries)
    finally:
        bar.close()
    errors = [json.loads(bytes(r.payload)) for r in rows if r.kind == ERROR_KIND]
    if errors:  # the ranks agreed it cannot run (one stage attempt): why, from rank 0
        kind = ModelBuildError if errors[0]["what"] == "build" else TrainingError
        raise kind(errors[0]["message"])
    chunks = sorted((r.seq, bytes(r.payload)) for r in rows if r.kind == "weights")
    histories = [bytes(r.payload) for r in rows if r.kind == "history"]
    if not chunks or len(histories) != 1:
        raise TrainingError("training finished without a result from rank 0")
    history = replace(
        TrainingHistory.from_json(histories[0], "rank 0's training history"),
        progress_events=sum(1 for e in bar.events if e.get("type") == "epoch"),
        attempts=max(1, sum(1 for e in bar.events if e.get("type") == "start")),
        stalls=stalls)
    return TrainOutput(b"".join(c for _, c in chunks), history)


def _attempt(spark, data, config: TrainConfig, bar: ProgressBar) -> list[Any]:
    """One job of the training (Spark retries its barrier stage after a task failure): the
    result rows; ``_Stalled`` when the watchdog cancelled it. Each job has its own progress
    endpoint, token and mailbox: late reports of a cancelled job's tasks are refused."""
    watchdog = Watchdog(config.num_workers, config.stall_timeout_s)

    def on_event(event: dict[str, Any]) -> Any:
        watchdog.observe(event)
        return None if event.get("type") == "heartbeat" else bar(event)

    tag = f"sparkvision-train-{uuid.uuid4().hex[:12]}"
    with ProgressServer(on_event, host=_driver_host(spark)) as server, \
            _mailbox(config, server, tag) as mailbox, \
            _watching(spark, watchdog, tag) as stalled:
        cfg = replace(config, progress_url=server.url, progress_token=server.token,
                      progress_mailbox=mailbox)
        func = functools.partial(train_partition, config=cfg)
        # The trailing repartition(1) makes the barrier stage a shuffle-map stage, which
        # Spark can retry as a whole after a task failure (a barrier result stage cannot).
        result = data.mapInArrow(func, RESULT_DDL, barrier=True).repartition(1)
        try:
            return result.collect()
        except Exception as exc:
            if stalled:
                raise _Stalled(stalled[0]) from exc
            raise _explain(exc, config) from exc


def check_network(config: TrainConfig) -> None:
    """Build the network once on the driver before any job: a builder that does not import,
    raises or returns no ``nn.Module`` fails in a second with a clear error, not inside the
    barrier stage (which Spark would retry)."""
    from sparkvision.models.registry import MODEL_NAMES, build_model

    if config.model not in MODEL_NAMES:
        build_model(config.model, config.num_classes, config.image_shape)


@contextlib.contextmanager
def _watching(spark, watchdog: Watchdog, tag: str) -> Iterator[list[str]]:
    """Run the calling thread's jobs under ``tag`` while a thread checks ``watchdog`` every
    second (or faster for short timeouts); on a stall it records the message in the yielded
    list and interrupts the tagged jobs."""
    stalled: list[str] = []
    stop = threading.Event()
    period = min(1.0, watchdog.timeout_s / 10)

    def watch() -> None:
        while not stop.wait(period):
            message = watchdog.check()
            if message:
                stalled.append(message)
                log.error("training stalled: %s", message)
                cancel_jobs(spark, tag)
                return

    with tagged_jobs(spark, tag):
        thread = threading.Thread(target=watch, name="sparkvision-watchdog", daemon=True)
        thread.start()
        try:
            yield stalled
        finally:
            stop.set()
            thread.join(2 * period + 1)


def _explain(exc: BaseException, config: TrainConfig) -> BaseException:
    text = str(exc)
    if "more slots than the total number" in text or "maxConcurrentTasksCheck" in text:
        return ClusterCapacityError(
            f"numWorkers={config.num_workers} is more than the cluster's free task slots: "
            "lower numWorkers or add executors/cores"
        )
    cancelled = re.search(r"Job \d+ cancelled[^\n]*", text)
    if cancelled:
        return TrainingCancelledError(f"training was cancelled: {cancelled.group(0)}")
    message = user_error_message(exc)
    if message:
        return TrainingError(message.strip())
    python_errors = re.findall(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$", text, re.M)
    python_errors = [e for e in python_errors if not e[0].startswith(("org.", "java."))]
    detail = f"{python_errors[-1][0]}: {python_errors[-1][1]}" if python_errors else text[:300]
    return TrainingError(f"distributed training failed: {detail}")
