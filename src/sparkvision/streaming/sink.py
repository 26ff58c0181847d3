"""``foreachBatch`` body of ``sparkvision stream``: decode/check one micro-batch, predict it
with the current model, and write predictions and rejected rows idempotently.

Exactly once: Spark writes a micro-batch's offsets before running it and re-runs the same
batch id with the same input after a crash, so each batch is written to its own folder
``OUT/batch=ID`` (rejected rows to ``OUT/_rejected/batch=ID``) in overwrite mode: a replay
replaces what a killed run left, and the query's commit log records the batch as done.
``spark.read.parquet(OUT)`` reads every prediction (``batch`` becomes a column) and skips
``_rejected``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from sparkvision.streaming.models import ModelSource

log = logging.getLogger(__name__)

REJECTED_DIR = "_rejected"
#: Prediction columns written per row, after ``path`` (and ``label`` when known).
OUTPUT_COLUMNS = ("prediction", "predictedLabel", "probability", "confidence", "modelVersion",
                  "eventTime", "processedTime")


@dataclass(frozen=True)
class BatchRecord:
    """What one micro-batch did."""

    batch: int
    rows: int
    rejected: int
    model_version: str
    seconds: float


def _local(path: str) -> str:
    return path[5:] if path.startswith("file:") else path


def batch_path(root: str, batch_id: int) -> str:
    return os.path.join(root, f"batch={batch_id}")


class BatchWriter:
    """Callable for ``DataStreamWriter.foreachBatch``; keeps a record of every batch."""

    def __init__(self, models: ModelSource, fmt: str, source_root: str, out: str) -> None:
        self.models = models
        self.fmt = fmt
        self.source_root = source_root
        self.out = out
        self.records: list[BatchRecord] = []
        self._lock = threading.Lock()

    def _checked(self, batch_df, model):
        """Rows of ``DECODED``-like shape with ``error`` (null = good) and ``eventMicros``."""
        from pyspark.sql import functions as F

        h, w, c = (int(v) for v in model.getImageShape())
        if self.fmt == "image":
            from sparkvision.data.decoding import decode_files
            from sparkvision.data.images import ImageSpec

            return decode_files(batch_df, self.source_root, ImageSpec(h, w, c),
                                need_class=False, keep=("eventMicros",))
        shape = F.concat_ws("x", "height", "width", "channels")
        error = (
            F.when(F.col("image").isNull(), F.lit("no image bytes"))
            .when(
                F.col("height").isNotNull()
                & ((F.col("height") != h) | (F.col("width") != w) | (F.col("channels") != c)),
                F.concat(F.lit("image is "), shape, F.lit(f", the model expects {h}x{w}x{c}")),
            )
            .when(
                F.length("image") != h * w * c,
                F.concat(F.lit("image has "), F.length("image").cast("string"),
                         F.lit(f" bytes, the model expects {h}x{w}x{c} = {h * w * c}")),
            )
        )
        return batch_df.withColumn("error", error)

    def _with_label(self, rows, model):
        from pyspark.sql import functions as F

        from sparkvision.data.schema import literal_map

        if self.fmt != "image":
            return rows
        index = literal_map({name: i for i, name in enumerate(model.getClasses())})
        return rows.withColumn("label", index[F.col("class_name")].cast("bigint"))

    def __call__(self, batch_df, batch_id: int) -> None:
        from pyspark.sql import functions as F

        started = time.monotonic()
        model, version = self.models.current()
        rows = self._with_label(self._checked(batch_df, model), model).persist()
        try:
            counts = rows.agg(
                F.count(F.lit(1)).alias("rows"),
                F.count("error").alias("rejected"),
            ).first()
            total, rejected = int(counts.rows), int(counts.rejected)
            times = [
                F.timestamp_micros("eventMicros").alias("eventTime"),
                F.current_timestamp().alias("processedTime"),
            ]
            good = rows.filter(F.col("error").isNull())
            predicted = model.transform(good).select(
                "path", "label",
                *[F.col(c) for c in OUTPUT_COLUMNS[:4]],
                F.lit(version).alias("modelVersion"), *times,
            )
            predicted.write.mode("overwrite").parquet(batch_path(self.out, batch_id))
            bad_path = batch_path(os.path.join(self.out, REJECTED_DIR), batch_id)
            if rejected:
                rows.filter(F.col("error").isNotNull()).select(
                    "path", F.col("error").alias("reason"), *times,
                ).write.mode("overwrite").parquet(bad_path)
            elif os.path.exists(_local(bad_path)):  # a replay of a batch that now has none
                shutil.rmtree(_local(bad_path))
        finally:
            rows.unpersist()
        record = BatchRecord(batch_id, total, rejected, version,
                             round(time.monotonic() - started, 3))
        with self._lock:
            self.records.append(record)
        log.info("stream batch %s", asdict(record))

    def summary(self) -> dict[str, Any]:
        with self._lock:
            records = list(self.records)
        return {
            "batches": len(records),
            "rows": sum(r.rows for r in records),
            "rejected": sum(r.rejected for r in records),
            "model_versions": sorted({r.model_version for r in records}),
        }
