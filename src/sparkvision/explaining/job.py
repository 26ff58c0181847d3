"""``explain``: what a trained model looks at, for a whole data set, written to a folder.

Everything heavy runs in Spark; the driver receives only small things:

1. the model predicts every row (``ImageClassificationModel.transform``); each row gets its
   class (the label; the prediction when unlabelled), its group (right, wrong or
   unlabelled), the target class explained (predicted or true) and a seeded hash key;
2. a window ``row_number()`` over (class, group) ordered by the key picks up to K rows per
   class and group — the driver collects those (class, group, key) triples only;
3. one ``mapInArrow`` pass over every row computes the attribution maps on the executors
   (``partitions.py``, with ``inference/explain.py``); it returns the chosen rows whole
   (image + map) and, per partition, one row per class with the sum of that class's maps
   and pixels and its count.

So no more than 2·K images per class (plus K unlabelled ones per predicted class) reach the
driver, and the per-class mean map covers every row of the class. The driver then writes
the folder (``files.py``): the chosen images' and the class means' PNGs, every raw map in
``attributions.safetensors``, and ``explain.json``."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sparkvision.errors import DataError, InvalidParameterError
from sparkvision.explaining.files import write_folder
from sparkvision.explaining.partitions import EXPLAIN_DDL, explain_partition_fn
from sparkvision.inference.explain import (
    ExplainConfig,
    check_config,
    check_method,
    check_target,
)
from sparkvision.ml.model import ImageClassificationModel
from sparkvision.settings import ExplainerSettings, row

_METHOD, _TARGET = row(ExplainerSettings, "method"), row(ExplainerSettings, "target")

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


@dataclass
class ExplainResult:
    """What ``explain`` wrote."""

    out: str
    method: str
    layer: str
    target: str
    rows: int
    images: int
    classes: int
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"out": self.out, "method": self.method, "layer": self.layer or None,
                "target": self.target, "rows": self.rows, "images": self.images,
                "classes": self.classes, "files": len(self.files), "seconds": self.seconds}


def explain_config(model: ImageClassificationModel, method: str,
                   batch_size: int = 64) -> ExplainConfig:
    """The executors' config for ``model`` (no network built)."""
    if not model.weights:
        raise DataError("the model has no weights: fit or load it before explaining it")
    get = model.getOrDefault
    shape = tuple(get(model.imageShape))
    return ExplainConfig(model=get(model.model), num_classes=model.numClasses,
                         image_shape=shape,
                         weights=model.weights, method=check_method(method),
                         batch_size=batch_size, input_mean=tuple(get(model.inputMean)),
                         input_std=tuple(get(model.inputStd)))


def check_explain(model: ImageClassificationModel, method: str, per_class: int,
                  target: str) -> tuple[ExplainConfig, str]:
    """Every driver-side check (before any job): method, target, K, captum, and for
    Grad-CAM a conv layer. Returns (config, Grad-CAM's layer or '')."""
    check_method(method)
    check_target(target)
    if per_class < 1:
        raise InvalidParameterError("per-class", per_class,
                                    "use 1 or more (images explained per class and group)")
    config = explain_config(model, method)
    return config, check_config(config)


def _predicted(model: ImageClassificationModel, df: DataFrame, target: str,
               seed: int) -> DataFrame:
    """``df`` predicted, with the columns the explain pass needs."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    image_col = model.getOrDefault(model.imageCol)
    label_col = model.getOrDefault(model.labelCol)
    if image_col not in df.columns:
        raise InvalidParameterError("imageCol", image_col,
                                    f"the data has columns {df.columns}; name the image column")
    labelled = label_col in df.columns
    if target == "true" and not labelled:
        raise InvalidParameterError(
            "target", "true", f"the data has no labels (no {label_col!r} column): use "
            "--target predicted, or labelled data (a prepared folder, class sub-folders)")
    has_path = "path" in df.columns
    keep = [F.col(f"`{image_col}`").alias("image")]
    keep.append(F.col(f"`{label_col}`").cast("bigint").alias("label") if labelled
                else F.lit(None).cast("bigint").alias("label"))
    keep.append(F.col("path").cast("string").alias("path") if has_path
                else F.lit(None).cast("string").alias("path"))
    scorer = model.copy({model.imageCol: "image", model.predictionCol: "_sv_prediction",
                         model.probabilityCol: "_sv_probability",
                         model.rawPredictionCol: "", model.predictedLabelCol: "",
                         model.confidenceCol: ""})
    scorer.weights = model.weights
    pred = scorer.transform(df.select(*keep))
    prediction = F.col("_sv_prediction").cast("bigint")
    label = F.col("label")
    target_col = prediction if target == "predicted" else F.coalesce(label, prediction)
    hashed = [F.lit(int(seed)), F.col("image")] + ([F.col("path")] if has_path else [])
    return pred.select(
        "image", "label", "path",
        prediction.alias("prediction"),
        F.coalesce(label, prediction).alias("cls"),
        F.when(label.isNull(), F.lit(2)).when(label == prediction, F.lit(1))
        .otherwise(F.lit(0)).cast("int").alias("grp"),
        target_col.alias("target"),
        F.element_at(vector_to_array(F.col("_sv_probability")), (target_col + 1).cast("int"))
        .alias("score"),
        F.xxhash64(*hashed).alias("key"),
    )


def choose_keys(pred: DataFrame, per_class: int) -> list[tuple[int, int, int]]:
    """(class, group, key) of up to ``per_class`` rows per class and group, picked in Spark
    (a window ordered by the seeded hash); only these small triples are collected."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    window = Window.partitionBy("cls", "grp").orderBy("key")
    rows = (pred.select("cls", "grp", "key")
            .withColumn("_rank", F.row_number().over(window))
            .filter(F.col("_rank") <= per_class)
            .select("cls", "grp", "key").collect())
    return [(int(r["cls"]), int(r["grp"]), int(r["key"])) for r in rows]


def explain(model: ImageClassificationModel, df: DataFrame, out: str,
            method: str = _METHOD.default, per_class: int = 8, target: str = _TARGET.default,
            seed: int = 0, source: dict[str, Any] | None = None) -> ExplainResult:
    """Explain ``model`` on ``df`` (an ``image`` column, maybe ``label`` and ``path``) and
    write the folder ``out`` (see the module docstring). ``source`` is recorded in
    ``explain.json`` (e.g. the model folder and data given to the command)."""
    started = time.monotonic()
    config, layer = check_explain(model, method, per_class, target)  # before any job
    pred = _predicted(model, df, target, seed)
    chosen = choose_keys(pred, per_class)
    keys = frozenset(k for _, _, k in chosen)
    collected = (pred.select("image", "cls", "grp", "key", "target", "score", "label",
                             "prediction", "path")
                 .mapInArrow(explain_partition_fn(config, keys), EXPLAIN_DDL).collect())
    images, means = gather(collected, per_class, config.image_shape)
    classes = list(model.getOrDefault(model.classes))
    rows = sum(m["count"] for m in means.values())
    files = write_folder(out, images, means, classes, config, layer, target, per_class,
                         seed, rows, source or {}, started)
    return ExplainResult(out=str(out), method=method, layer=layer, target=target, rows=rows,
                         images=len(images), classes=len(means), files=files,
                         seconds=round(time.monotonic() - started, 3))


def gather(collected: list[Any], per_class: int, image_shape: tuple[int, int, int]
           ) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """The chosen rows (at most ``per_class`` per class and group, by key) and the per-class
    means of the partial sums."""
    from sparkvision.data.images import stored_to_array

    h, w, c = image_shape
    by_group: dict[tuple[int, int], list[Any]] = defaultdict(list)
    sums: dict[int, dict[str, Any]] = {}
    for r in collected:
        if r["kind"] == "image":
            by_group[(int(r["cls"]), int(r["grp"]))].append(r)
            continue
        k = int(r["cls"])
        entry = sums.setdefault(k, {"maps": np.zeros(h * w), "pixels": np.zeros(h * w * c),
                                    "count": 0})
        entry["maps"] += np.asarray(r["attribution_sum"], dtype=np.float64)
        entry["pixels"] += np.asarray(r["pixel_sum"], dtype=np.float64)
        entry["count"] += int(r["count"])
    images: list[dict[str, Any]] = []
    for (cls, grp), found in sorted(by_group.items()):
        for i, r in enumerate(sorted(found, key=lambda r: r["key"])[:per_class]):
            images.append({
                "cls": cls, "grp": grp, "index": i, "path": r["path"],
                "label": r["label"], "prediction": int(r["prediction"]),
                "target": int(r["target"]), "score": float(r["score"]),
                "image": stored_to_array(bytes(r["image"]), image_shape),
                "map": np.asarray(r["attribution"], dtype=np.float32).reshape(h, w),
            })
    means: dict[int, dict[str, Any]] = {}
    for k, entry in sorted(sums.items()):
        n = max(1, entry["count"])
        means[k] = {"count": entry["count"],
                    "map": (entry["maps"] / n).astype(np.float32).reshape(h, w),
                    "image": np.clip(np.rint(entry["pixels"] / n), 0, 255).astype(np.uint8)
                    .reshape(h, w, c)}
    return images, means
