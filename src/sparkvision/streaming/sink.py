"""``foreachBatch`` body of ``sparkvision stream``: decode/check one micro-batch, predict it
with the current model, and write predictions and rejected rows idempotently.

One Spark job and one Python runner per micro-batch task: each file is decoded (``prepare``'s
decoding, its rejection reasons) and predicted by one Arrow UDF (``inference/files.py``),
built once per model version. The driver then splits predicted and rejected rows (pyarrow)
into ``OUT/batch=ID`` and ``OUT/_rejected/batch=ID``. Where a micro-batch's rows are bounded
(image files with ``maxFilesPerTrigger`` ≤ ``COLLECT_MAX_ROWS``: predictions, not images,
a few hundred bytes a row) they come to the driver as Arrow (``toArrow``: no write job, no
commit protocol, ~0.1 s less per batch here); otherwise Spark writes them all to
``OUT/_staging/batch=ID`` (one plain Parquet write: a write partitioned by kind costs a sort
and twice the files) and the driver splits those files.

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

from sparkvision.inference.files import ERROR, PIXEL_STATS, FilePredictor
from sparkvision.streaming.drift import DriftMonitor, DriftSettings
from sparkvision.streaming.model_source import ModelSource

log = logging.getLogger(__name__)

REJECTED_DIR = "_rejected"
STAGING_DIR = "_staging"
#: The column of a staged row saying why it is rejected (null: predicted).
REASON = "reason"
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
    #: the drift of the window ending with this batch (``streaming/drift.py``; None: drift
    #: not watched, or no predicted row)
    drift: dict[str, Any] | None = None


def batch_path(root: str, batch_id: int) -> str:
    return os.path.join(root, f"batch={batch_id}")


#: The key of the Spark schema (JSON) in a Parquet file Spark wrote.
SPARK_SCHEMA_KEY = b"org.apache.spark.sql.parquet.row.metadata"


def _without_fields(metadata: dict[bytes, bytes] | None, drop: set[str]) -> dict[bytes, bytes]:
    """A Spark-written file's schema metadata without the fields named in ``drop`` (Spark
    reads a vector column's type from it)."""
    import json

    meta = dict(metadata or {})
    if SPARK_SCHEMA_KEY in meta:
        schema = json.loads(meta[SPARK_SCHEMA_KEY])
        schema["fields"] = [f for f in schema["fields"] if f["name"] not in drop]
        meta[SPARK_SCHEMA_KEY] = json.dumps(schema).encode()
    return meta


def _replace_folder(tables: list[tuple[str, Any]], scratch: str, target: str) -> None:
    """Write ``tables`` (file name, table) as Parquet into ``scratch``, then replace
    ``target`` with it (``_SUCCESS`` included)."""
    import pyarrow.parquet as pq

    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    for name, table in tables:
        # INT96 timestamps, as Spark wrote them (Spark cannot read pyarrow's nanoseconds)
        pq.write_table(table, os.path.join(scratch, name), use_deprecated_int96_timestamps=True)
    open(os.path.join(scratch, "_SUCCESS"), "w").close()
    if os.path.exists(target):
        shutil.rmtree(target)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(scratch, target)


#: The largest micro-batch (rows) whose predictions are collected to the driver as Arrow.
COLLECT_MAX_ROWS = 100_000


def _split(named: list[tuple[str, Any]], staged: str, predicted: str, rejected: str,
           observed: list[Any] | None = None) -> tuple[int, int]:
    """Split tables (file name, table of every row, ``reason`` null for a predicted one):
    the predicted rows without ``reason`` replace the folder ``predicted``, the rejected
    rows' ``REJECTED_COLUMNS`` the folder ``rejected`` (a folder only where there are such
    rows; scratch folders under ``staged``). The predicted rows' ``PIXEL_STATS`` (drift
    monitoring) are not written; ``observed`` gets their tables with it. Return (predicted,
    rejected) row counts."""
    import pyarrow.compute as pc

    good: list[tuple[str, Any]] = []
    bad: list[tuple[str, Any]] = []
    for name, table in named:
        is_bad = pc.is_valid(table[REASON])
        n_bad = int(pc.sum(is_bad).as_py() or 0)
        ok = table.filter(pc.invert(is_bad)) if n_bad else table
        drop = [c for c in (REASON, PIXEL_STATS) if c in ok.column_names]
        if ok.num_rows:
            if observed is not None and PIXEL_STATS in drop:
                observed.append(ok)
            good.append((name, ok.drop_columns(drop).replace_schema_metadata(
                _without_fields(ok.schema.metadata, set(drop)))))
        if n_bad:
            bad.append((name, table.filter(is_bad).select(list(REJECTED_COLUMNS))
                        .replace_schema_metadata(None)))
    for tables, target, scratch in ((good, predicted, ".predicted"),
                                    (bad, rejected, ".rejected")):
        if tables:
            _replace_folder(tables, os.path.join(staged, scratch), target)
        elif os.path.exists(target):
            shutil.rmtree(target)
    return (sum(t.num_rows for _, t in good), sum(t.num_rows for _, t in bad))


def publish(staged: str, predicted: str, rejected: str, observed: list[Any] | None = None
            ) -> tuple[int, int]:
    """Split the Parquet files Spark staged for one micro-batch into the folders
    ``predicted`` and ``rejected`` (``_split``). Idempotent: a replayed batch publishes
    again over what a killed run left."""
    import pyarrow.parquet as pq

    files = sorted(f for f in os.listdir(staged) if f.endswith(".parquet"))
    return _split([(name, pq.read_table(os.path.join(staged, name))) for name in files],
                  staged, predicted, rejected, observed)


def publish_collected(table, spark_schema_json: str, staged: str, predicted: str,
                      rejected: str, observed: list[Any] | None = None) -> tuple[int, int]:
    """Split the Arrow ``table`` of a micro-batch's rows (``DataFrame.toArrow``) into the
    folders ``predicted`` and ``rejected`` (``_split``), with Spark's schema in the files'
    metadata as a Spark write records it (the probability vector reads back as a vector)."""
    table = table.replace_schema_metadata({SPARK_SCHEMA_KEY: spark_schema_json.encode()})
    return _split([("part-00000.parquet", table)], staged, predicted, rejected, observed)


@dataclass(frozen=True)
class _Plan:
    """What a micro-batch runs for one model version, built once: the fused decode-and-
    predict UDF (``inference/files.py``: one Python runner per task, the weights pickled
    once) and the output columns. Each batch is then two ``select`` calls and the write.
    ``monitor``: the drift windows of this model version (None: drift not watched)."""

    version: str
    predictor: FilePredictor
    keep: tuple[str, ...]
    columns: tuple[Any, ...]
    monitor: DriftMonitor | None = None

    @classmethod
    def build(cls, model, version: str, fmt: str, source_root: str, collect: bool = False,
              drift: DriftSettings | None = None) -> _Plan:
        from pyspark.sql import functions as F

        monitor = None
        if drift is not None and drift.enabled:
            profile = drift.reference or getattr(model, "drift_profile", None)
            if profile is not None:
                monitor = DriftMonitor(profile, drift.threshold, drift.window)
        stats = monitor is not None
        if fmt == "image":  # collected: toArrow needs non-null vectors (rejected: empty)
            predictor = FilePredictor(model, "content", root=source_root, raw=False,
                                      empty_vectors=collect, stats=stats)
            keep: tuple[str, ...] = ("path", "eventMicros")
        else:
            predictor = FilePredictor(model, "stored", raw=False, stats=stats)
            keep = ("path", "label", "eventMicros")
        columns = (
            F.col("path"), F.col("label"), *[F.col(c) for c in PREDICTION_COLUMNS],
            F.lit(version).alias("modelVersion"),
            F.timestamp_micros("eventMicros").alias("eventTime"),
            F.current_timestamp().alias("processedTime"),
            F.col(ERROR).alias(REASON),
            *([F.col(PIXEL_STATS)] if stats else []),
        )
        return cls(version, predictor, keep, columns, monitor)

    def rows(self, batch_df):
        """The batch's rows to write: predicted and rejected (``reason`` not null)."""
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

    def __init__(self, models: ModelSource, fmt: str, source_root: str, out: str,
                 max_files_per_trigger: int | None = None,
                 drift: DriftSettings | None = None) -> None:
        self.models = models
        self.fmt = fmt
        self.source_root = source_root
        self.out = out
        #: one row per file and at most COLLECT_MAX_ROWS files a batch: collect to the driver
        self.collect = (fmt == "image" and max_files_per_trigger is not None
                        and max_files_per_trigger <= COLLECT_MAX_ROWS)
        self.records: list[BatchRecord] = []
        #: how drift is watched (None: not at all)
        self.drift = drift
        self._lock = threading.Lock()
        self._current: _Plan | None = None
        #: seconds ``warm_up`` took before the query started (None: not warmed up)
        self.warm_up_seconds: float | None = None

    def _plan(self, model, version: str) -> _Plan:
        """The current model's plan (built at its first use, then reused)."""
        plan = self._current
        if plan is None or plan.version != version:
            plan = self._current = _Plan.build(model, version, self.fmt, self.source_root,
                                               self.collect, self.drift)
        return plan

    def warm_up(self, spark) -> float:
        """Run a micro-batch's work once, before the stream starts, on one blank image of
        the model's shape per core (image files: read by ``binaryFile`` from a scratch
        folder, as the stream reads them), written and published to scratch folders that
        are then removed: the Python workers start, import and open the network's runner
        (a worker keeps it), and the JVM loads and compiles the reading and writing code,
        so the first micro-batch costs about what the others do. Returns its seconds."""
        from pyspark.sql import functions as F

        started = time.monotonic()
        model, version = self.models.current()
        plan = self._plan(model, version)
        cores = max(1, int(spark.sparkContext.defaultParallelism))
        h, w, c = (int(v) for v in model.getImageShape())
        scratch = os.path.join(self.out, STAGING_DIR, "warm-up")
        try:
            if self.fmt == "image":
                from sparkvision.streaming.sources import BINARY_FILE_DDL, image_rows

                folder = os.path.join(scratch, "in")
                os.makedirs(folder, exist_ok=True)
                for i in range(cores):
                    with open(os.path.join(folder, f"blank-{i}.png"), "wb") as fh:
                        fh.write(_blank_png(h, w, c))
                raw = spark.read.format("binaryFile").schema(BINARY_FILE_DDL).load(folder)
                rows = image_rows(raw).repartition(cores)  # one task per core
            else:
                nothing = F.lit(None).cast("bigint")
                rows = spark.range(0, cores, 1, cores).select(  # one task per core
                    F.lit(bytes(h * w * c)).alias("image"),
                    F.concat(F.lit("warm-up-"), F.col("id").cast("string")).alias("path"),
                    nothing.alias("label"), F.lit(h).cast("bigint").alias("height"),
                    F.lit(w).cast("bigint").alias("width"),
                    F.lit(c).cast("bigint").alias("channels"), nothing.alias("eventMicros"))
            self._write(plan.rows(rows), os.path.join(scratch, "staged"),
                        os.path.join(scratch, "predicted"), os.path.join(scratch, "rejected"))
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
        observed: list[Any] | None = None if plan.monitor is None else []
        predicted, rejected, job_s = self._write(
            rows, staging, batch_path(self.out, batch_id),
            batch_path(os.path.join(self.out, REJECTED_DIR), batch_id), observed)
        shutil.rmtree(staging, ignore_errors=True)
        window = None
        if plan.monitor is not None and observed is not None:
            window = plan.monitor.observe(batch_id, observed, PIXEL_STATS)
        done = time.monotonic()
        record = BatchRecord(batch_id, predicted + rejected, rejected, version,
                             round(done - started, 3),
                             {"plan": round(planned - started, 3), "job": round(job_s, 3),
                              "publish": round(done - planned - job_s, 3)},
                             None if window is None else window.to_dict())
        with self._lock:
            self.records.append(record)
        log.info("stream batch %s", asdict(record))

    def _write(self, rows, staging: str, predicted: str, rejected: str,
               observed: list[Any] | None = None) -> tuple[int, int, float]:
        """Run the batch's job and publish its rows (collected, or staged by Spark): the
        (predicted, rejected) row counts and the job's seconds."""
        started = time.monotonic()
        if self.collect:
            table = rows.toArrow()
            job_s = time.monotonic() - started
            os.makedirs(staging, exist_ok=True)
            return (*publish_collected(table, rows.schema.json(), staging, predicted,
                                       rejected, observed), job_s)
        rows.write.mode("overwrite").parquet(staging)
        job_s = time.monotonic() - started
        return (*publish(staging, predicted, rejected, observed), job_s)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            records = list(self.records)
        return {
            "batches": len(records),
            "rows": sum(r.rows for r in records),
            "rejected": sum(r.rejected for r in records),
            "model_versions": sorted({r.model_version for r in records}),
            "drift": self.drift_summary(records),
        }

    def drift_summary(self, records: list[BatchRecord]) -> dict[str, Any]:
        """How drift was watched and what it found: ``threshold``, ``window``, the
        reference (``reference``: its source and rows), ``max_score``, ``warnings`` (windows
        over the threshold) and ``first_warning_batch``; with ``note`` saying why it was not
        watched."""
        settings = self.drift
        if settings is None or not settings.enabled:
            return {"watched": False, "note": "drift monitoring is off"}
        plan = self._current
        monitor = plan.monitor if plan is not None else None
        if monitor is None:
            return {"watched": False, "note": "the model has no reference profile (trained "
                    "without validation data, or saved before profiles): give "
                    "--drift-reference DATA to watch drift"}
        windows = [r.drift for r in records if r.drift]
        warned = [w["batch"] for w in windows if w["warning"]]
        return {"watched": True, "threshold": settings.threshold, "window": settings.window,
                "reference": {"source": monitor.profile.source, "rows": monitor.profile.rows},
                "max_score": max((w["score"] for w in windows), default=None),
                "warnings": len(warned),
                "first_warning_batch": warned[0] if warned else None}
