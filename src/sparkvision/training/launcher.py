"""Driver side of distributed training: slot check, data layout, barrier stage launch."""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sparkvision.config import TrainConfig
from sparkvision.errors import (
    ClusterCapacityError,
    InvalidParameterError,
    TrainingCancelledError,
    TrainingError,
    user_error_message,
)
from sparkvision.training.progress import ProgressBar, ProgressServer
from sparkvision.training.worker import FLAG_COL, RESULT_DDL, train_partition

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOutput:
    weights: bytes  # safetensors
    history: dict[str, Any]


def available_slots(spark) -> int:
    """Task slots the cluster offers now: cores (``defaultParallelism``) / spark.task.cpus."""
    sc = spark.sparkContext
    task_cpus = int(sc.getConf().get("spark.task.cpus", "1"))
    cores = 1 if sc.master == "local" else sc.defaultParallelism
    return max(0, cores // max(1, task_cpus))


def check_slots(spark, num_workers: int) -> None:
    slots = available_slots(spark)
    if num_workers > slots:
        raise ClusterCapacityError(
            f"numWorkers={num_workers} needs {num_workers} concurrent task slots but the "
            f"cluster has {slots} ({spark.sparkContext.master}): lower numWorkers to at most "
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
    parts = data.rdd.getNumPartitions()
    if parts > num_workers:
        return data.coalesce(num_workers)
    if parts < num_workers:
        raise InvalidParameterError(
            "repartition", False,
            f"the data has {parts} partitions but numWorkers={num_workers}: set "
            "repartition=True or repartition the DataFrame yourself",
        )
    return data


def _driver_host(spark) -> str:
    return spark.sparkContext.getConf().get("spark.driver.host", "127.0.0.1")


def run_distributed(
    spark,
    data,
    config: TrainConfig,
    on_epoch_end: Callable[[dict[str, Any]], Any] | None = None,
    show_progress: bool = True,
) -> TrainOutput:
    """Train in one barrier stage of ``config.num_workers`` tasks and return rank 0's result."""
    check_slots(spark, config.num_workers)
    bar = ProgressBar(config.epochs, on_epoch_end, show=show_progress)
    with ProgressServer(bar, host=_driver_host(spark)) as server:
        cfg = replace(config, progress_url=server.url)
        func = functools.partial(train_partition, config=cfg)
        # The trailing repartition(1) makes the barrier stage a shuffle-map stage, which
        # Spark can retry as a whole after a task failure (a barrier result stage cannot).
        result = data.mapInArrow(func, RESULT_DDL, barrier=True).repartition(1)
        try:
            rows = result.collect()
        except Exception as exc:
            raise _explain(exc, config) from exc
        finally:
            bar.close()
    chunks = sorted((r.seq, bytes(r.payload)) for r in rows if r.kind == "weights")
    histories = [json.loads(bytes(r.payload)) for r in rows if r.kind == "history"]
    if not chunks or len(histories) != 1:
        raise TrainingError("training finished without a result from rank 0")
    history = histories[0]
    history["progress_events"] = sum(1 for e in bar.events if e.get("type") == "epoch")
    history["attempts"] = max(1, sum(1 for e in bar.events if e.get("type") == "start"))
    return TrainOutput(b"".join(c for _, c in chunks), history)


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
