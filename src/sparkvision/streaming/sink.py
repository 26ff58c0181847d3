"""``foreachBatch`` body of ``sparkvision stream``: decode/check one micro-batch, predict it
with the current model, and write predictions and rejected rows idempotently.

One Spark job per micro-batch: predicted and rejected rows are written together into
``OUT/_staging/batch=ID`` (partitioned by kind), then the driver moves each kind to its
folder, ``OUT/batch=ID`` and ``OUT/_rejected/batch=ID``, counting rows from the Parquet
footers.

Exactly once: Spark writes a micro-batch's offsets before running it and re-runs the same
batch id with the same input after a crash; the staging folder is overwritten and each
target folder replaced, so a replay replaces what a killed run left, and the query's commit
log records the batch as done.
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

import pyarrow as pa

from sparkvision.inference.arrays import typed_arrow_udf
from sparkvision.streaming.model_source import ModelSource

log = logging.getLogger(__name__)

REJECTED_DIR = "_rejected"
STAGING_DIR = "_staging"
KIND, PREDICTED, REJECTED = "kind", "predicted", "rejected"
#: Columns of a rejected row (the prediction columns of its file are null).
REJECTED_COLUMNS = ("path", "reason", "eventTime", "processedTime")
#: Model output columns written per predicted row, after ``path`` and ``label`` (then come
#: ``modelVersion``, ``eventTime``, ``processedTime``).
PREDICTION_COLUMNS = ("prediction", "predictedLabel", "probability", "confidence")


@dataclass(frozen=True)
class BatchRecord:
    """What one micro-batch did."""

    batch: int
    rows: int
    rejected: int
    model_version: str
    seconds: float


def batch_path(root: str, batch_id: int) -> str:
    return os.path.join(root, f"batch={batch_id}")


def publish(staged: str, target: str, columns: tuple[str, ...] | None = None) -> int:
    """Replace ``target`` with the staged folder of one kind (absent: no such rows); return
    its row count (from the Parquet footers, no Spark job). ``columns``: keep only these
    (rewritten on the driver; rejected rows are few). Idempotent: a replayed batch publishes
    again over what a killed run left."""
    import pyarrow.parquet as pq

    if os.path.exists(target):
        shutil.rmtree(target)
    if not os.path.isdir(staged):
        return 0
    files = sorted(os.path.join(staged, f) for f in os.listdir(staged)
                   if f.endswith(".parquet"))
    rows = sum(pq.read_metadata(f).num_rows for f in files)
    keep = list(columns or ())
    for f in files if keep else ():
        table = pq.read_table(f, columns=keep).replace_schema_metadata(None)
        # INT96 timestamps, as Spark wrote them (Spark cannot read pyarrow's nanoseconds)
        pq.write_table(table, f + ".tmp", use_deprecated_int96_timestamps=True)
        os.replace(f + ".tmp", f)
        crc = os.path.join(staged, f".{os.path.basename(f)}.crc")  # Hadoop's checksum of
        if os.path.exists(crc):  # the old bytes: stale now
            os.remove(crc)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(staged, target)
    open(os.path.join(target, "_SUCCESS"), "w").close()
    return rows


def stored_image_error(shape: tuple[int, int, int]):
    """An Arrow UDF: null for an image stored as ``shape`` raw pixels or as PNG/JPEG bytes
    of that size (``prepare --store encoded``), else why not. Only the images whose length
    is not the raw size are decoded."""
    def check(images: pa.Array) -> pa.Array:  # resolved from this module's globals
        import numpy as np
        import pyarrow.compute as pc

        from sparkvision.data.images import stored_to_array

        h, w, c = shape
        lengths = np.asarray(pc.binary_length(images).fill_null(-1))
        out: list[str | None] = [None] * len(images)
        for i in np.flatnonzero(lengths != h * w * c):
            value = images[int(i)].as_py()
            if value is None:
                continue
            try:
                stored_to_array(value, shape)
            except ValueError as exc:
                out[int(i)] = f"{exc}; the model expects {h}x{w}x{c}"
        return pa.array(out, pa.string())

    return typed_arrow_udf(check, "string")


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
            .otherwise(stored_image_error((h, w, c))("image"))
        )
        return batch_df.withColumn("error", error)

    def _with_label(self, rows, model):
        from sparkvision.data.decoding import with_class_label

        return with_class_label(rows, model.getClasses()) if self.fmt == "image" else rows

    def __call__(self, batch_df, batch_id: int) -> None:
        from pyspark.sql import functions as F

        started = time.monotonic()
        model, version = self.models.current()
        h, w, c = (int(v) for v in model.getImageShape())
        rows = self._with_label(self._checked(batch_df, model), model)
        ok = F.col("error").isNull()
        # One Spark job per micro-batch: bad rows go through the network as a blank image
        # (their outputs are dropped) and both kinds are written by one partitioned write.
        blank = F.lit(bytes(h * w * c))
        scored = model.transform(rows.withColumn("image", F.when(ok, F.col("image"))
                                                 .otherwise(blank)))
        kind = F.when(ok, F.lit(PREDICTED)).otherwise(F.lit(REJECTED))
        out = scored.select(
            "path", "label", *[F.when(ok, F.col(c)).alias(c) for c in PREDICTION_COLUMNS],
            F.lit(version).alias("modelVersion"),
            F.timestamp_micros("eventMicros").alias("eventTime"),
            F.current_timestamp().alias("processedTime"),
            F.col("error").alias("reason"), kind.alias(KIND),
        )
        staging = batch_path(os.path.join(self.out, STAGING_DIR), batch_id)
        out.write.mode("overwrite").partitionBy(KIND).parquet(staging)
        counts = {}
        for name, target in ((PREDICTED, batch_path(self.out, batch_id)),
                             (REJECTED, batch_path(os.path.join(self.out, REJECTED_DIR),
                                                   batch_id))):
            counts[name] = publish(os.path.join(staging, f"{KIND}={name}"), target,
                                   None if name == PREDICTED else REJECTED_COLUMNS)
        shutil.rmtree(staging, ignore_errors=True)
        record = BatchRecord(batch_id, counts[PREDICTED] + counts[REJECTED], counts[REJECTED],
                             version, round(time.monotonic() - started, 3))
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
