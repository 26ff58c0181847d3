"""Start a prediction stream: source → ``foreachBatch`` (``sink.BatchWriter``) with a
checkpoint that belongs to this stream only."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from typing import Any

from sparkvision.checks import check_prediction_input, check_stream_input
from sparkvision.errors import InvalidParameterError
from sparkvision.streaming.drift import DEFAULT_THRESHOLD, DEFAULT_WINDOW, DriftSettings
from sparkvision.streaming.model_source import ModelSource
from sparkvision.streaming.sink import BatchWriter
from sparkvision.streaming.sources import check_format, read_stream

#: Session conf ``start`` sets (``session_conf=True``) for short micro-batches: no Spark
#: job to list a batch's files (the file source lists each batch's paths again), and small
#: files packed about one partition per core instead of one per 32 files.
STREAM_CONF = {
    "spark.sql.sources.parallelPartitionDiscovery.threshold": "100000",
    "spark.sql.files.openCostInBytes": str(64 * 1024),
}

#: The file in the checkpoint folder naming the stream it belongs to.
MARKER = "sparkvision-stream.json"


@dataclass(frozen=True)
class StreamSpec:
    """What a stream reads and writes; a checkpoint serves one spec only."""

    input: str
    out: str
    format: str = "image"

    def describe(self) -> dict[str, str]:
        return {"input": os.path.abspath(self.input), "out": os.path.abspath(self.out),
                "format": self.format}


def claim_checkpoint(checkpoint: str, spec: StreamSpec) -> None:
    """Create ``checkpoint`` for ``spec`` or check it already belongs to ``spec``."""
    marker = os.path.join(checkpoint, MARKER)
    wanted = spec.describe()
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as fh:
            found = json.load(fh)
        if found != wanted:
            raise InvalidParameterError(
                "checkpoint", checkpoint,
                f"it belongs to the stream {found['input']} ({found['format']}) → "
                f"{found['out']}; give a new --checkpoint folder for this one",
            )
        return
    if os.path.isdir(checkpoint) and os.listdir(checkpoint):
        raise InvalidParameterError(
            "checkpoint", checkpoint,
            "it holds another query's state (no sparkvision-stream.json); give an empty or "
            "new --checkpoint folder",
        )
    os.makedirs(checkpoint, exist_ok=True)
    tmp = marker + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(wanted, fh, indent=2)
    os.replace(tmp, marker)


def _reference(spark, model, data: str):
    """The drift profile of ``data`` (a prepared folder: its ``val`` split) with ``model``."""
    from sparkvision.data.prediction_input import load_prediction_input
    from sparkvision.ml.drift import reference_profile

    get = model.getOrDefault
    df, _ = load_prediction_input(spark, data, tuple(get(model.imageShape)),
                                  list(get(model.classes)), "val")
    return reference_profile(model, df, source=os.path.abspath(data))


def start(
    model: Any,
    input: str,  # noqa: A002 - the user-facing name
    output: str,
    checkpoint: str,
    *,
    format: str = "image",  # noqa: A002
    available_now: bool = False,
    trigger_seconds: float = 1.0,
    max_files_per_trigger: int | None = None,
    spark=None,
    query_name: str | None = None,
    session_conf: bool = True,
    backend: str | None = None,
    trust_code: bool = False,
    warm_up: bool = True,
    drift: bool = True,
    drift_threshold: float = DEFAULT_THRESHOLD,
    drift_window: int = DEFAULT_WINDOW,
    drift_reference: str | None = None,
):
    """Classify the files that appear in ``input`` and append predictions to ``output``.

    ``model``: a model folder (re-loaded when a newer model is moved there) or an
    ``ImageClassificationModel``. Returns the running ``StreamingQuery``; its
    ``sparkvision_writer`` attribute records every micro-batch (rows, rejected, model
    version). ``session_conf`` sets ``STREAM_CONF`` on the session (lower latency per
    micro-batch). ``backend``: the model's ``inferenceBackend`` (None keeps the model's).
    ``trust_code``: allow a model folder whose network is an import path (its code runs).
    ``warm_up``: before the query starts, run the model's plan once on one blank image per
    core (``BatchWriter.warm_up``: Python workers started, network runner opened, write
    compiled), so the first micro-batch is not the slow one; its seconds are the
    writer's ``warm_up_seconds``.

    Drift (``streaming/drift.py``): each micro-batch is compared with the model's reference
    profile (``drift_profile.json``, written by a fit with validation data), pooled over the
    last ``drift_window`` micro-batches; a window whose PSI exceeds ``drift_threshold`` (and
    is significant) warns. ``drift_reference``: data (a prepared folder — its ``val`` split
    —, split, TFRecords, Parquet or image folder) whose profile, computed with the model
    when the stream starts, replaces the model's. A model without a profile and no
    ``drift_reference``: drift is not watched, and the writer's summary says why.
    ``drift=False`` turns it off."""
    from pyspark.sql import SparkSession

    check_format(format)
    check_stream_input(input)  # before the model is loaded or the session touched
    if not available_now and trigger_seconds <= 0:
        raise InvalidParameterError("trigger_seconds", trigger_seconds, "use a value > 0")
    drift_settings = DriftSettings(drift_threshold, drift_window, enabled=drift)
    if drift and drift_reference is not None:
        check_prediction_input(drift_reference)
    if max_files_per_trigger is not None and max_files_per_trigger < 1:
        raise InvalidParameterError("max_files_per_trigger", max_files_per_trigger,
                                    "use 1 or more")
    from sparkvision.settings import OutputSettings, row

    backends = row(OutputSettings, "inferenceBackend").setting.choices
    if backend is not None and backend not in backends:
        raise InvalidParameterError("backend", backend, f"use one of {', '.join(backends)}")
    if isinstance(model, str | os.PathLike):
        from sparkvision.ml.model import check_model_folder

        check_model_folder(os.fspath(model))
    from sparkvision.session import get_spark, is_connect

    spark = spark or SparkSession.getActiveSession()
    if spark is None:
        spark = get_spark()
    if is_connect(spark):
        raise InvalidParameterError(
            "remote", "Spark Connect", "stream runs its foreachBatch writer (model hot swap, "
            "exactly-once folders, the batch records) in this process, which Spark Connect "
            "does not allow: run `sparkvision stream` with --master instead")
    if session_conf:
        for key, value in STREAM_CONF.items():
            spark.conf.set(key, value)
    source = read_stream(spark, input, format, max_files_per_trigger)
    models = ModelSource(model, backend, trust_code=trust_code)
    if drift and drift_reference is not None:
        drift_settings = replace(drift_settings, reference=_reference(
            spark, models.current()[0], drift_reference))
    spec = StreamSpec(input, output, format)
    claim_checkpoint(checkpoint, spec)
    os.makedirs(output, exist_ok=True)
    writer = BatchWriter(models, format, os.path.abspath(input), os.path.abspath(output),
                         max_files_per_trigger, drift_settings)
    writer.warm_up_seconds = round(writer.warm_up(spark), 3) if warm_up else None
    stream = source.writeStream.foreachBatch(writer).option("checkpointLocation", checkpoint)
    if query_name:
        stream = stream.queryName(query_name)
    if available_now:
        stream = stream.trigger(availableNow=True)
    else:
        stream = stream.trigger(processingTime=f"{trigger_seconds} seconds")
    query = stream.start()
    query.sparkvision_writer = writer
    return query
