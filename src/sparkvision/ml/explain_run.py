"""``explain``: what a trained model looks at, for a whole data set, written to a folder.

Everything heavy runs in Spark; the driver receives only small things:

1. the model predicts every row (``ImageClassificationModel.transform``); each row gets its
   class (the label; the prediction when unlabelled), its group (right, wrong or
   unlabelled), the target class explained (predicted or true) and a seeded hash key;
2. a window ``row_number()`` over (class, group) ordered by the key picks up to K rows per
   class and group — the driver collects those (class, group, key) triples only;
3. one ``mapInArrow`` pass over every row computes the attribution maps on the executors
   (``inference/explain.py``); it returns the chosen rows whole (image + map) and, per
   partition, one row per class with the sum of that class's maps and pixels and its count.

So no more than 2·K images per class (plus K unlabelled ones per predicted class) reach the
driver, and the per-class mean map covers every row of the class. The driver then writes
(through ``sparkvision.storage``, each file atomically): ``images/STEM.png`` (the map over
the image, upscaled with nearest-neighbour to ≥ ``MIN_SIDE`` px), ``means/STEM.png`` (the
class's mean map over its mean image), ``attributions.safetensors`` (every raw float32
(H, W) map, keyed by the PNG's stem) and ``explain.json`` (last)."""

from __future__ import annotations

import io
import json
import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparkvision import storage
from sparkvision.errors import DataError, InvalidParameterError
from sparkvision.inference.explain import (
    SIGNED_METHODS,
    ExplainConfig,
    check_config,
    check_method,
    check_target,
)
from sparkvision.ml.model import ImageClassificationModel

EXPLAIN_FILE = "explain.json"
ATTRIBUTIONS_FILE = "attributions.safetensors"
IMAGES_DIR = "images"
MEANS_DIR = "means"
EXPLAIN_FORMAT = "sparkvision-explain/1"
#: Overlays are upscaled (nearest-neighbour, an integer factor) until both sides reach this.
MIN_SIDE = 112
#: Groups of explained rows, by their ``grp`` number.
GROUPS = ("wrong", "right", "unlabelled")
#: Colour maps: non-negative maps (gradcam, saliency) and signed ones (red +, blue −).
CMAP, SIGNED_CMAP = "jet", "bwr"


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
                         image_shape=shape,  # type: ignore[arg-type]
                         weights=model.weights, method=check_method(method),
                         batch_size=batch_size)


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


def _predicted(model: ImageClassificationModel, df, target: str, seed: int):
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


def choose_keys(pred, per_class: int) -> list[tuple[int, int, int]]:
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


def explain(model: ImageClassificationModel, df, out: str, method: str = "gradcam",
            per_class: int = 8, target: str = "predicted", seed: int = 0,
            source: dict[str, Any] | None = None) -> ExplainResult:
    """Explain ``model`` on ``df`` (an ``image`` column, maybe ``label`` and ``path``) and
    write the folder ``out`` (see the module docstring). ``source`` is recorded in
    ``explain.json`` (e.g. the model folder and data given to the command)."""
    from sparkvision.inference.explain import EXPLAIN_DDL, explain_partition_fn

    started = time.monotonic()
    config, layer = check_explain(model, method, per_class, target)  # before any job
    pred = _predicted(model, df, target, seed)
    chosen = choose_keys(pred, per_class)
    keys = frozenset(k for _, _, k in chosen)
    collected = (pred.select("image", "cls", "grp", "key", "target", "score", "label",
                             "prediction", "path")
                 .mapInArrow(explain_partition_fn(config, keys), EXPLAIN_DDL).collect())
    images, means = _gather(collected, per_class, config.image_shape)
    classes = list(model.getOrDefault(model.classes))
    rows = sum(m["count"] for m in means.values())
    files = _write(out, images, means, classes, config, layer, target, per_class, seed,
                   rows, source or {}, started)
    return ExplainResult(out=str(out), method=method, layer=layer, target=target, rows=rows,
                         images=len(images), classes=len(means), files=files,
                         seconds=round(time.monotonic() - started, 3))


def _gather(collected, per_class: int, image_shape: tuple[int, int, int]
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
    images = []
    for (cls, grp), found in sorted(by_group.items()):
        for i, r in enumerate(sorted(found, key=lambda r: r["key"])[:per_class]):
            images.append({
                "cls": cls, "grp": grp, "index": i, "path": r["path"],
                "label": r["label"], "prediction": int(r["prediction"]),
                "target": int(r["target"]), "score": float(r["score"]),
                "image": stored_to_array(bytes(r["image"]), image_shape),
                "map": np.asarray(r["attribution"], dtype=np.float32).reshape(h, w),
            })
    means = {}
    for k, entry in sorted(sums.items()):
        n = max(1, entry["count"])
        means[k] = {"count": entry["count"],
                    "map": (entry["maps"] / n).astype(np.float32).reshape(h, w),
                    "image": np.clip(np.rint(entry["pixels"] / n), 0, 255).astype(np.uint8)
                    .reshape(h, w, c)}
    return images, means


# --- files ---------------------------------------------------------------------------------


def slug(name: str) -> str:
    """A class name as a file-name part: letters, digits, ``.``, ``_``, ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "class"


def _class_name(classes: list[str], index: int | None) -> str | None:
    if index is None:
        return None
    return classes[index] if 0 <= index < len(classes) else str(index)


def overlay_png(image_hwc: np.ndarray, amap: np.ndarray, signed: bool,
                min_side: int = MIN_SIDE) -> bytes:
    """PNG bytes of ``amap`` (H, W) colour-mapped over the uint8 image (H, W, C), upscaled
    with nearest-neighbour by an integer factor until both sides are ≥ ``min_side``.
    Colours span the map's 99th percentile m (of |map| for signed maps; larger values are
    clipped): non-negative maps ``jet`` over [0, m], opacity 0.2-0.7 growing with the value;
    signed maps ``bwr`` over [−m, m], opacity growing with |map|."""
    import matplotlib
    from PIL import Image

    h, w = amap.shape
    gray = image_hwc.astype(np.float32) / 255.0
    base = np.repeat(gray, 3, axis=2) if gray.shape[2] == 1 else gray[..., :3]
    finite = np.nan_to_num(amap.astype(np.float64))
    if signed:
        m = float(np.percentile(np.abs(finite), 99)) or float(np.abs(finite).max()) or 1.0
        v = np.clip(finite / m, -1.0, 1.0)
        heat = matplotlib.colormaps[SIGNED_CMAP]((v + 1.0) / 2.0)[..., :3]
        alpha = (0.7 * np.abs(v))[..., None]
    else:
        m = float(np.percentile(finite, 99)) or float(finite.max()) or 1.0
        v = np.clip(finite / m, 0.0, 1.0)
        heat = matplotlib.colormaps[CMAP](v)[..., :3]
        alpha = (0.2 + 0.5 * v)[..., None]
    rgb = np.clip((1.0 - alpha) * base + alpha * heat, 0.0, 1.0)
    picture = Image.fromarray(np.rint(rgb * 255).astype(np.uint8), "RGB")
    scale = max(1, math.ceil(min_side / max(1, min(h, w))))
    if scale > 1:
        picture = picture.resize((w * scale, h * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _write(out: str, images: list[dict[str, Any]], means: dict[int, dict[str, Any]],
           classes: list[str], config: ExplainConfig, layer: str, target: str,
           per_class: int, seed: int, rows: int, source: dict[str, Any],
           started: float) -> list[str]:
    from safetensors.numpy import save

    signed = config.method in SIGNED_METHODS
    digits = len(str(max(1, len(classes) - 1)))
    arrays: dict[str, np.ndarray] = {}
    records, mean_records, files = [], [], []
    for folder in (IMAGES_DIR, MEANS_DIR):  # files of an earlier run there would mislead
        if storage.exists(storage.join(out, folder)):
            storage.remove(storage.join(out, folder))
    for item in images:
        name = _class_name(classes, item["cls"]) or str(item["cls"])
        stem = (f"{item['cls']:0{digits}d}-{slug(name)}-{GROUPS[item['grp']]}-"
                f"{item['index']:02d}")
        rel = f"{IMAGES_DIR}/{stem}.png"
        storage.write_bytes(storage.join(out, rel), overlay_png(item["image"], item["map"],
                                                                signed))
        arrays[stem] = np.ascontiguousarray(item["map"], dtype=np.float32)
        files.append(rel)
        label = item["label"]
        records.append({
            "file": rel, "key": stem, "path": item["path"],
            "true": _class_name(classes, None if label is None else int(label)),
            "predicted": _class_name(classes, item["prediction"]),
            "correct": None if label is None else int(label) == item["prediction"],
            "target": _class_name(classes, item["target"]),
            "score": item["score"],
        })
    for k, mean in means.items():
        name = _class_name(classes, k) or str(k)
        stem = f"mean-{k:0{digits}d}-{slug(name)}"
        rel = f"{MEANS_DIR}/{stem}.png"
        storage.write_bytes(storage.join(out, rel), overlay_png(mean["image"], mean["map"],
                                                                signed))
        arrays[stem] = np.ascontiguousarray(mean["map"], dtype=np.float32)
        files.append(rel)
        mean_records.append({"class": name, "index": k, "rows": mean["count"], "file": rel,
                             "key": stem})
    storage.write_bytes(storage.join(out, ATTRIBUTIONS_FILE),
                        save(arrays, metadata={"method": config.method, "layer": layer,
                                               "target": target}))
    files.append(ATTRIBUTIONS_FILE)
    h, w, c = config.image_shape
    summary = {
        "format": EXPLAIN_FORMAT, **source, "network": config.model, "method": config.method,
        "layer": layer or None, "target": target, "signed": signed, "per_class": per_class,
        "seed": seed, "classes": classes, "image_shape": [h, w, c],
        "attribution_shape": [h, w], "rows": rows, "attributions": ATTRIBUTIONS_FILE,
        "images": records, "class_means": mean_records,
        "seconds": round(time.monotonic() - started, 3),
    }
    storage.write_text(storage.join(out, EXPLAIN_FILE),
                       json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    files.append(EXPLAIN_FILE)
    return files
