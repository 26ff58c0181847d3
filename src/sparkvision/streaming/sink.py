"""``foreachBatch`` body of ``sparkvision stream``: decode/check one micro-batch, predict it
with the current model, and write predictions and rejected rows idempotently.

One Spark job and one Python runner per micro-batch task: each file is decoded (``prepare``'s
decoding, its rejection reasons) and predicted by one Arrow UDF (``inference/files.py``),
built once per model version. Predicted and rejected rows are written together into
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
from dataclasses import asdict, dataclass, field
from typing import Any

from sparkvision.inference.files import ERROR, FilePredictor
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
    #: seconds of the driver's parts of the batch: ``plan`` (model check, the rows' plan),
    #: ``job`` (the Spark job: decode, predict, write), ``publish`` (the folder moves)
    phases: dict[str, float] = field(default_factory=dict)


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


@dataclass(frozen=True)
class _Plan:
    """What a micro-batch runs for one model version, built once: the fused decode-and-
    predict UDF (``inference/files.py``: one Python runner per task, the weights pickled
    once) and the output columns. Each batch is then two ``select`` calls and the write."""

    version: str
    predictor: FilePredictor
    keep: tuple[str, ...]
    columns: tuple[Any, ...]

    @classmethod
    def build(cls, model, version: str, fmt: str, source_root: str) -> _Plan:
        from pyspark.sql import functions as F

        if fmt == "image":
            predictor = FilePredictor(model, "content", root=source_root, raw=False)
            keep: tuple[str, ...] = ("path", "eventMicros")
        else:
            predictor = FilePredictor(model, "stored", raw=False)
            keep = ("path", "label", "eventMicros")
        ok = F.col(ERROR).isNull()
        columns = (
            F.col("path"), F.col("label"), *[F.col(c) for c in PREDICTION_COLUMNS],
            F.lit(version).alias("modelVersion"),
            F.timestamp_micros("eventMicros").alias("eventTime"),
            F.current_timestamp().alias("processedTime"),
            F.col(ERROR).alias("reason"),
            F.when(ok, F.lit(PREDICTED)).otherwise(F.lit(REJECTED)).alias(KIND),
        )
        return cls(version, predictor, keep, columns)

    def rows(self, batch_df):
        """The batch's rows to write: predicted and rejected, told apart by ``kind``."""
        return self.predictor.apply(batch_df, self.keep).select(*self.columns)


def _blank_png(h: int, w: int, c: int) -> bytes:
    """A PNG of ``h``x``w`` mid-grey pixels (``c`` channels)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L" if c == 1 else "RGB", (w, h), 128 if c == 1 else (128, 128, 128)).save(
        buffer, format="PNG")
    return buffer.getvalue()


class BatchWriter:
    """Callable for ``DataStreamWriter.foreachBatch``; keeps a record of every batch."""

    def __init__(self, models: ModelSource, fmt: str, source_root: str, out: str) -> None:
        self.models = models
        self.fmt = fmt
        self.source_root = source_root
        self.out = out
        self.records: list[BatchRecord] = []
        self._lock = threading.Lock()
        self._current: _Plan | None = None
        #: seconds ``warm_up`` took before the query started (None: not warmed up)
        self.warm_up_seconds: float | None = None

    def _plan(self, model, version: str) -> _Plan:
        """The current model's plan (built at its first use, then reused)."""
        plan = self._current
        if plan is None or plan.version != version:
            plan = self._current = _Plan.build(model, version, self.fmt, self.source_root)
        return plan

    def warm_up(self, spark) -> float:
        """Run the current model's plan once, before the stream starts, on one synthetic
        row per core (a blank image of the model's shape), written to a scratch folder
        and removed: the Python workers start, import, and open the network's runner (a
        worker keeps it), and the JVM compiles the write, so the first micro-batch costs
        about what the others do. Returns the seconds it took."""
        from pyspark.sql import functions as F

        started = time.monotonic()
        model, version = self.models.current()
        plan = self._plan(model, version)
        cores = max(1, int(spark.sparkContext.defaultParallelism))
        h, w, c = (int(v) for v in model.getImageShape())
        ids = spark.range(0, cores, 1, cores)  # one task per core, no Python input
        path = F.concat(F.lit(os.path.join(self.source_root, ".sparkvision-warm-up-")),
                        F.col("id").cast("string"))
        nothing = F.lit(None).cast("bigint")
        if self.fmt == "image":
            rows = ids.select(path.alias("path"), F.lit(_blank_png(h, w, c)).alias("content"),
                              nothing.alias("eventMicros"))
        else:
            rows = ids.select(F.lit(bytes(h * w * c)).alias("image"), path.alias("path"),
                              nothing.alias("label"), F.lit(h).cast("bigint").alias("height"),
                              F.lit(w).cast("bigint").alias("width"),
                              F.lit(c).cast("bigint").alias("channels"),
                              nothing.alias("eventMicros"))
        scratch = os.path.join(self.out, STAGING_DIR, "warm-up")
        try:
            plan.rows(rows).write.mode("overwrite").partitionBy(KIND).parquet(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return time.monotonic() - started

    def __call__(self, batch_df, batch_id: int) -> None:
        started = time.monotonic()
        model, version = self.models.current()
        plan = self._plan(model, version)
        staging = batch_path(os.path.join(self.out, STAGING_DIR), batch_id)
        rows = plan.rows(batch_df)
        planned = time.monotonic()
        rows.write.mode("overwrite").partitionBy(KIND).parquet(staging)
        written = time.monotonic()
        counts = {}
        for name, target in ((PREDICTED, batch_path(self.out, batch_id)),
                             (REJECTED, batch_path(os.path.join(self.out, REJECTED_DIR),
                                                   batch_id))):
            counts[name] = publish(os.path.join(staging, f"{KIND}={name}"), target,
                                   None if name == PREDICTED else REJECTED_COLUMNS)
        shutil.rmtree(staging, ignore_errors=True)
        done = time.monotonic()
        record = BatchRecord(batch_id, counts[PREDICTED] + counts[REJECTED], counts[REJECTED],
                             version, round(done - started, 3),
                             {"plan": round(planned - started, 3),
                              "job": round(written - planned, 3),
                              "publish": round(done - written, 3)})
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
