"""Decode and predict in one Python runner per task: image files (or stored image rows) in,
each row's predictions or the reason it is rejected out.

``prepare``'s decoding (``data/decoding.py``: the same per-file function, the same rejection
reasons) and ``ImageClassificationModel.transform``'s network (``batch.py``: the worker's
cached runner, the same output struct) run back to back on each Arrow batch, so the decoded
pixels never travel back to the JVM and into a second Python runner. ``sparkvision stream``
and ``predict``/``evaluate`` on an image folder go through it.

A ``FilePredictor`` is built once per model on the driver: the Arrow UDF (its weights
pickled once, and its key hashed once) and the columns that unpack its struct. ``apply(df)``
then costs two ``select`` calls, which is what a stream does for every micro-batch.

Inputs (``FilePredictor.kind``):

- ``files``: a ``path`` column; each file is read by the task (``image_folder``);
- ``content``: ``path`` and ``content`` (Spark's ``binaryFile`` rows: a stream of images);
- ``stored``: ``image``, ``height``, ``width``, ``channels`` (prepared rows: raw pixels, or
  PNG/JPEG as ``prepare --store encoded`` writes them), checked against the model's shape.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from sparkvision.config import PredictConfig
from sparkvision.inference.arrays import image_batch, list_array, typed_arrow_udf
from sparkvision.inference.batch import (
    RESULT_FIELDS,
    DriverChoice,
    Runner,
    choose_on_driver,
    chosen_runner,
    result_struct,
)
from sparkvision.inference.network_cache import TrainedNetwork

KINDS = ("files", "content", "stored")
#: Input columns of each kind, in the UDF's argument order.
INPUTS = {"files": ("path",), "content": ("path", "content"),
          "stored": ("image", "height", "width", "channels")}
#: The column saying why a row is rejected (null: the row is predicted).
ERROR = "error"
#: Fields of the UDF's struct besides the model outputs (``RESULT_FIELDS``).
_BASE_DDL = "path STRING, error STRING, label BIGINT"
#: Executor environment variable (as for training's step profile): a folder where every
#: Python worker appends one JSON line per Arrow batch it decodes and predicts (rows, seconds
#: spent decoding, getting the runner, predicting, in all); unset, nothing is measured.
PROFILE_ENV = "SPARKVISION_PROFILE_DIR"
_LOADED = time.time()  # when this worker imported this module (its first batch: cold)
_BATCHES = [0]  # batches this worker ran
#: The optional field of per-row pixel statistics (``FileTask.stats``): the decoded image's
#: per-channel means, then its per-channel standard deviations (0-255 scale; null for a
#: rejected row). Drift monitoring compares them with a reference profile.
PIXEL_STATS = "pixelStats"
_RESULT_TYPES = {"rawPrediction": "ARRAY<DOUBLE>", "probability": "ARRAY<DOUBLE>",
                 "prediction": "DOUBLE", "predictedLabel": "STRING", "confidence": "DOUBLE"}


@dataclass(frozen=True)
class FileTask:
    """What a task needs besides the network: the input kind, the folder the class names
    are read under (``files``/``content``), which optional outputs to return."""

    kind: str
    root: str = ""
    raw: bool = True  # rawPrediction (logits)
    image: bool = False  # the decoded pixels (raw HWC bytes)
    stats: bool = False  # PIXEL_STATS: per-channel mean and std of the decoded pixels

    def fields(self) -> tuple[str, ...]:
        return tuple(f for f in RESULT_FIELDS if self.raw or f != "rawPrediction")

    def ddl(self) -> str:
        parts = [_BASE_DDL, *(f"{f} {_RESULT_TYPES[f]}" for f in self.fields())]
        if self.image:
            parts.append("image BINARY")
        if self.stats:
            parts.append(f"{PIXEL_STATS} ARRAY<FLOAT>")
        return ", ".join(parts)


def _decoded(kind: str, columns: tuple[pa.Array, ...], root: str, shape: tuple[int, int, int]):
    """(path, image Binary array, error String array, class names) of one Arrow batch of image
    files, decoded by ``prepare``'s own per-file code (``need_class=False``: files directly
    under ``root`` are predicted with no class)."""
    from sparkvision.data.decoding import decode_batches, decode_paths
    from sparkvision.data.images import ImageSpec

    spec = ImageSpec(*shape)
    if kind == "files":
        batch = pa.RecordBatch.from_arrays([columns[0]], names=["path"])
        decoded = next(decode_paths(iter([batch]), root, spec, False, frozenset()))
    else:
        batch = pa.RecordBatch.from_arrays(list(columns[:2]), names=["path", "content"])
        decoded = next(decode_batches(iter([batch]), root, spec, False))
    return (decoded.column("path"), decoded.column("image"), decoded.column("error"),
            decoded.column("class_name").to_pylist())


def stored_errors(images: pa.Array, heights: pa.Array, widths: pa.Array, channels: pa.Array,
                  shape: tuple[int, int, int]) -> list[str | None]:
    """Why each stored row cannot be predicted by a model of ``shape`` (None: it can): no
    bytes, a shape column that differs, or bytes that are neither raw pixels of the shape
    nor a PNG/JPEG of that size."""
    import pyarrow.compute as pc

    from sparkvision.data.images import stored_to_array

    h, w, c = shape
    want = f"{h}x{w}x{c}"
    dims = list(zip(heights.to_pylist(), widths.to_pylist(), channels.to_pylist(),
                    strict=True))
    lengths = np.asarray(pc.binary_length(images).fill_null(-1))
    out: list[str | None] = []
    for i, (height, width, chans) in enumerate(dims):
        if lengths[i] < 0:
            out.append("no image bytes")
        elif height is not None and any(v is not None and v != t for v, t in
                                        ((height, h), (width, w), (chans, c))):
            found = "x".join(str(v) for v in (height, width, chans) if v is not None)
            out.append(f"image is {found}, the model expects {want}")
        elif lengths[i] != h * w * c:
            try:
                stored_to_array(images[i].as_py(), shape)
            except ValueError as exc:
                out.append(f"{exc}; the model expects {want}")
            else:
                out.append(None)
        else:
            out.append(None)
    return out


def pixel_stats(pixels: np.ndarray) -> np.ndarray:
    """(N, 2C) float32 of uint8 (N, H, W, C) images: each image's per-channel means, then its
    per-channel standard deviations."""
    n, c = pixels.shape[0], pixels.shape[-1]
    flat = pixels.reshape(n, -1, c).astype(np.float32)
    return np.concatenate([flat.mean(axis=1), flat.std(axis=1)], axis=1).astype(np.float32)


def predict_rows(columns: tuple[pa.Array, ...], task: FileTask, config: PredictConfig,
                 runner: Any, label_of: dict[str, int],
                 laps: dict[str, float] | None = None) -> pa.StructArray:
    """One Arrow batch of the task's input columns → the UDF's struct: ``error`` and
    ``label`` for every row, the model outputs (``result_struct``) for the rows without an
    error and nulls for the others. ``runner()`` gives the network's runner (called only
    when a row is predicted). ``laps``: seconds per phase are added to it."""
    clock = [time.perf_counter()]

    def lap(phase: str) -> None:
        if laps is not None:
            now = time.perf_counter()
            laps[phase] = laps.get(phase, 0.0) + now - clock[0]
            clock[0] = now

    n = len(columns[0])
    shape = config.image_shape
    labels: list[int | None]
    if task.kind == "stored":
        image, height, width, chans = columns
        errors = pa.array(stored_errors(image, height, width, chans, shape), pa.string())
        paths, images = pa.nulls(n, pa.string()), columns[0]
        labels = [None] * n
    else:
        paths, images, errors, class_names = _decoded(task.kind, columns, task.root, shape)
        labels = [label_of.get(name) for name in class_names]
    ok = np.asarray(errors.is_null())
    good = np.flatnonzero(ok)
    classes = pa.array(config.classes, pa.string())
    lap("decode")
    stats = None
    if len(good):
        run = runner()
        lap("runner")
        pixels = image_batch(images.take(pa.array(good)), shape)
        logits = run(pixels)
        if task.stats:
            stats = pixel_stats(pixels)
    else:
        logits = np.zeros((0, config.num_classes), dtype=np.float32)
        stats = np.zeros((0, 2 * shape[2]), dtype=np.float32)
    lap("predict")
    results = result_struct(logits, classes, config.temperature)
    where = np.zeros(n, dtype=np.int64)
    where[good] = np.arange(len(good))
    spread = results.take(pa.array(where, mask=~ok)).flatten()  # nulls for rejected rows
    by_name = dict(zip(RESULT_FIELDS, spread, strict=True))
    arrays = [paths, errors, pa.array(labels, pa.int64()),
              *(by_name[f] for f in task.fields())]
    names = ["path", "error", "label", *task.fields()]
    if task.image:  # files/content: the decoded pixels (null for a rejected file)
        arrays.append(images)
        names.append("image")
    if task.stats and stats is not None:
        arrays.append(list_array(stats, pa.float32()).take(pa.array(where, mask=~ok)))
        names.append(PIXEL_STATS)
    out = pa.StructArray.from_arrays(arrays, names=names)
    lap("pack")
    return out


def predict_files_iter(batches: Iterator[tuple[pa.Array, ...]], task: FileTask,
                       config: PredictConfig, trained: TrainedNetwork,
                       choice: DriverChoice) -> Iterator[pa.Array]:
    """Arrow UDF body: the task's input columns in, one struct per row out. The worker's
    runner of the network (``choice``: the driver's, ``batch.chosen_runner``) is fetched,
    built the first time in this worker, at the first row to predict."""
    label_of = {name: i for i, name in enumerate(config.classes)}
    runner: list[Runner] = []

    def get_runner() -> Runner:
        if not runner:
            runner.append(chosen_runner(config, trained, choice))
        return runner[0]

    folder = os.environ.get(PROFILE_ENV)
    for columns in batches:
        if not folder:
            yield predict_rows(tuple(columns), task, config, get_runner, label_of)
            continue
        started, at, laps = time.perf_counter(), time.time(), dict[str, float]()
        out = predict_rows(tuple(columns), task, config, get_runner, label_of, laps)
        _BATCHES[0] += 1
        record = {"pid": os.getpid(), "batch_in_worker": _BATCHES[0], "at": round(at, 3),
                  "worker_age_s": round(time.time() - _LOADED, 3), "rows": len(out),
                  "kind": task.kind, "seconds": round(time.perf_counter() - started, 4),
                  **{k: round(v, 4) for k, v in laps.items()}}
        with open(os.path.join(folder, f"files-{os.getpid()}.jsonl"), "a",
                  encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        yield out


def make_files_udf(config: PredictConfig, task: FileTask) -> Any:
    """A non-deterministic (so evaluated once per row) iterator Arrow UDF of the task's input
    columns. The weights are hashed here, on the driver, once, and the backend chosen
    (``batch.choose_on_driver``: the network exported to ONNX here, not in every worker)."""
    if task.kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {task.kind!r}")
    trained = TrainedNetwork.of(config)
    choice = choose_on_driver(config)
    ddl = task.ddl()
    if task.kind == "files":
        def one(batches: Iterator[pa.Array]) -> Iterator[pa.Array]:
            return predict_files_iter(((b,) for b in batches), task, config, trained, choice)
        return typed_arrow_udf(one, ddl).asNondeterministic()

    def many(batches: Iterator[tuple[pa.Array, ...]]) -> Iterator[pa.Array]:
        return predict_files_iter(batches, task, config, trained, choice)

    return typed_arrow_udf(many, ddl).asNondeterministic()


class FilePredictor:
    """A model's fused decode-and-predict for one kind of input, built once (the UDF and
    the output columns); ``apply`` to each DataFrame of that input.

    ``apply(df, keep)`` returns ``path`` (``files``/``content``: the file's local path, as
    ``prepare`` records it), the ``keep`` columns of ``df``, then ``error`` (null: the row
    is predicted), ``label`` (``files``/``content``: the index of the row's class folder
    among the model's classes, null when none), the model's output columns under its Param
    names, as ``transform`` writes them (vectors built in the JVM; a Param set to ``""``
    leaves that column out; null for a rejected row, or an empty vector for a vector column
    with ``empty_vectors``), ``image`` (the decoded pixels) and ``pixelStats``
    (``PIXEL_STATS``) when asked."""

    def __init__(self, model: Any, kind: str, root: str = "", raw: bool = True,
                 image: bool = False, empty_vectors: bool = False, stats: bool = False
                 ) -> None:
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F

        model.validateInferenceParams()
        config = model._predict_config()
        if config.backend == "onnxruntime":  # fail before any job runs
            from sparkvision.models.export import require_onnx

            require_onnx("inferenceBackend='onnxruntime'")
        get = model.getOrDefault
        self.kind = kind
        self.task = FileTask(kind, root, raw=raw, image=image, stats=stats)
        self.udf = make_files_udf(config, self.task)
        self._tmp = f"_sv_files_{model.uid}"
        tmp = F.col(f"`{self._tmp}`")

        # a rejected row's vectors: null (array_to_vector fails on null), or with
        # empty_vectors an empty vector (DataFrame.toArrow cannot convert a null vector)
        empty = array_to_vector(F.array().cast("array<double>")) if empty_vectors else None

        def vector(field: str) -> Any:
            return F.when(tmp[field].isNotNull(), array_to_vector(tmp[field])).otherwise(empty)

        outputs = {
            get(model.rawPredictionCol): vector("rawPrediction") if raw else None,
            get(model.probabilityCol): vector("probability"),
            get(model.predictionCol): tmp["prediction"],
            get(model.predictedLabelCol): tmp["predictedLabel"],
            get(model.confidenceCol): tmp["confidence"],
        }
        outputs.pop("", None)
        files = kind != "stored"
        # files: the file's local path (no file: scheme) and its class label, as prepare
        # writes them
        self._lead = [tmp["path"].alias("path")] if files else []
        named = {ERROR: tmp["error"]}
        if files:
            named["label"] = tmp["label"]
        named.update((name, col) for name, col in outputs.items() if col is not None)
        if image:
            named["image"] = tmp["image"]
        if stats:
            named[PIXEL_STATS] = tmp[PIXEL_STATS]
        self.columns = [col.alias(name) for name, col in named.items()]
        #: the columns ``apply`` adds (``path`` and ``label`` of files included)
        self.names = (["path"] if files else []) + list(named)
        # the UDF's call, unresolved: the same Column serves every DataFrame
        self._call = self.udf(*[F.col(c) for c in INPUTS[kind]]).alias(self._tmp)
        self._kept: dict[tuple[str, ...], list[Any]] = {}

    def apply(self, df: Any, keep: Sequence[str] = ()) -> Any:
        from pyspark.sql import functions as F

        key = tuple(keep)
        if key not in self._kept:
            self._kept[key] = [F.col(f"`{c}`") for c in keep if c not in self.names]
        kept = self._kept[key]
        return df.select(*kept, self._call).select(*self._lead, *kept, *self.columns)
