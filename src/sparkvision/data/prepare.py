"""`prepare`: ingest images → validate/resize → label index → stratified split → shards.

Decoding runs on Spark executors (``binaryFile`` source + ``mapInArrow``); the driver only
sees metadata (class names, counts, rejected file names).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sparkvision.data.builtin import BUILTIN_SOURCES, load_builtin
from sparkvision.data.images import ImageRejected, ImageSpec, encoded_to_array, prepare_array
from sparkvision.data.schema import PREPARED_DDL
from sparkvision.errors import DataError, InvalidParameterError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FORMATS = ("tfrecords", "parquet")
MANIFEST = "dataset.json"
DEFAULT_FOLDER_SIZE = 32
_DECODED_DDL = PREPARED_DDL + ", class_name STRING, error STRING"


@dataclass(frozen=True)
class PrepareConfig:
    source: str
    out: str
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 42
    fmt: str = "tfrecords"
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    num_shards: int = 2


@dataclass
class PrepareResult:
    out: str
    classes: list[str]
    image_shape: list[int]
    splits: dict[str, int]
    per_class: dict[str, dict[str, int]]
    rejected: list[dict[str, str]]
    source: str
    seed: int
    format: str
    split_fractions: list[float]
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        data["image_shape"] = list(self.image_shape)
        data["paths"] = {s: s for s in SPLITS}
        data["version"] = 1
        return data


# ----------------------------------------------------------------------------- parsing


def parse_split(text: str) -> tuple[float, float, float]:
    """Parse ``"0.8,0.1,0.1"`` into three fractions that sum to 1."""
    fix = "give three non-negative fractions train,val,test that sum to 1, e.g. 0.8,0.1,0.1"
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 3:
        raise InvalidParameterError("split", text, fix)
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise InvalidParameterError("split", text, fix) from None
    if any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6 or values[0] <= 0:
        raise InvalidParameterError("split", text, fix)
    return values  # type: ignore[return-value]


def parse_image_size(text: str | int | None) -> tuple[int, int] | None:
    """Parse ``28`` or ``"32x24"`` (height x width)."""
    if text is None:
        return None
    fix = "give one size like 28 or HEIGHTxWIDTH like 32x24 (1..4096)"
    try:
        parts = [int(p) for p in str(text).lower().split("x")]
    except ValueError:
        raise InvalidParameterError("image-size", text, fix) from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(1 <= p <= 4096 for p in parts):
        raise InvalidParameterError("image-size", text, fix)
    return parts[0], parts[1]


# ----------------------------------------------------------------------------- decoding


def _decode_batches(
    batches: Iterator[Any], root: str, spec: ImageSpec, need_class: bool = True
) -> Iterator[Any]:
    """Executor side: binaryFile rows → decoded uint8 images (or a rejection reason).

    The class is the first folder under ``root``; files directly in ``root`` are rejected
    when ``need_class`` (prepare) and kept with no class otherwise (predict)."""
    import pyarrow as pa

    schema = _decoded_arrow_schema()
    for batch in batches:
        paths = batch.column("path").to_pylist()
        contents = batch.column("content").to_pylist()
        out: dict[str, list[Any]] = {name: [] for name in schema.names}
        for path, content in zip(paths, contents, strict=True):
            local = path[5:] if path.startswith("file:") else path
            rel = os.path.relpath(local, root) if local.startswith(root) else local
            class_name = rel.split("/")[0] if "/" in rel else ""
            image, error = None, None
            if not class_name and need_class:
                error = "not inside a class sub-folder"
            else:
                try:
                    image = encoded_to_array(content or b"", spec)
                except ImageRejected as exc:
                    error = str(exc)
            out["path"].append(local)
            out["class_name"].append(class_name)
            out["error"].append(error)
            out["image"].append(image.tobytes() if image is not None else None)
            out["height"].append(spec.height)
            out["width"].append(spec.width)
            out["channels"].append(spec.channels)
            out["label"].append(None)
        yield pa.RecordBatch.from_pydict(out, schema=schema)


def _decoded_arrow_schema():
    """Arrow schema of ``_DECODED_DDL`` (built without the JVM: runs on executors)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("channels", pa.int64()), ("height", pa.int64()), ("image", pa.binary()),
            ("label", pa.int64()), ("path", pa.string()), ("width", pa.int64()),
            ("class_name", pa.string()), ("error", pa.string()),
        ]
    )


def _list_local_files(root: Path) -> dict[str, str | None]:
    """Every file under ``root`` → None if readable, else the reason it is not."""
    found: dict[str, str | None] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            try:
                size = os.path.getsize(full)
                with open(full, "rb") as fh:
                    fh.read(1)
                found[full] = None if size > 0 else "empty file (0 bytes)"
            except OSError as exc:
                found[full] = f"unreadable: {exc.strerror or exc}"
    return found


def literal_map(mapping: dict[Any, Any]):  # -> pyspark Column
    """A ``map`` column literal of a small driver-side dict (class names, split bounds)."""
    from pyspark.sql import functions as F

    return F.create_map(*[F.lit(x) for pair in mapping.items() for x in pair])


def decode_image_folder(spark, root: str, spec: ImageSpec, need_class: bool = True):
    """Read every file under ``root`` with ``binaryFile`` and decode it on the executors.

    Returns a persisted DataFrame of ``_DECODED_DDL`` rows; bad files carry ``error``.
    """
    raw = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("ignoreCorruptFiles", "true")
        .option("ignoreMissingFiles", "true")
        .load(root)
        .select("path", "content")
    )
    return raw.mapInArrow(
        lambda it: _decode_batches(it, root, spec, need_class), _DECODED_DDL
    ).persist()


def rejected_rows(decoded) -> list[dict[str, str]]:
    """The (path, reason) of every decoded row that carries an error."""
    from pyspark.sql import functions as F

    bad = decoded.filter(F.col("error").isNotNull()).select("path", "error")
    return [{"path": r.path, "reason": r.error} for r in bad.collect()]


def label_by_class(decoded, classes: list[str]):
    """Good rows with ``label`` = index of their class folder (null when not a class)."""
    from pyspark.sql import functions as F

    index = literal_map({name: i for i, name in enumerate(classes)})
    return decoded.filter(F.col("error").isNull()).withColumn(
        "label", index[F.col("class_name")].cast("bigint")
    )


def _folder_frame(spark, root: Path, spec: ImageSpec):
    root_str = str(root.resolve())
    decoded = decode_image_folder(spark, root_str, spec)
    seen = {r.path for r in decoded.select("path").collect()}
    # Files Spark could not list or read (empty, broken links, permissions) are rejected too.
    extra = [
        (p, reason or "unreadable")
        for p, reason in _list_local_files(Path(root_str)).items()
        if p not in seen
    ]
    return decoded, extra


def _builtin_frame(spark, name: str, spec: ImageSpec | None):
    import pandas as pd

    ds = load_builtin(name)
    images = ds.images
    if spec is not None and spec.shape != ds.image_shape:
        import numpy as np

        images = np.stack([prepare_array(img, spec) for img in images])
    h, w, c = images.shape[1:]
    pdf = pd.DataFrame(
        {
            "channels": c,
            "height": h,
            "image": [img.tobytes() for img in images],
            "label": ds.labels.astype("int64"),
            "path": [f"{name}/{i:05d}" for i in range(len(images))],
            "width": w,
            "class_name": [ds.classes[i] for i in ds.labels],
            "error": None,
        }
    )
    from pyspark.sql.types import StructType

    df = spark.createDataFrame(pdf, schema=StructType.fromDDL(_DECODED_DDL))
    return df, list(ds.classes), (int(h), int(w), int(c))


# ----------------------------------------------------------------------------- splitting


def split_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Sizes of train/val/test for a class of ``n`` images.

    Every split with a non-zero fraction gets at least one image when ``n >= 3``.
    """
    _, fv, ft = fractions
    val = round(n * fv)
    test = round(n * ft)
    if n >= 3:
        val = max(val, 1 if fv > 0 else 0)
        test = max(test, 1 if ft > 0 else 0)
    while val + test > n - 1 and (val > 0 or test > 0) and n >= 1:
        if val >= test and val > 0:
            val -= 1
        else:
            test -= 1
    return n - val - test, val, test


def _assign_splits(df, class_counts: dict[int, int], fractions, seed: int):
    """Stratified, deterministic split: rank rows in each class by a seeded hash."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    bounds = {}
    for label, n in class_counts.items():
        tr, va, _ = split_counts(n, fractions)
        bounds[label] = (tr, tr + va)
    train_end = literal_map({label: ends[0] for label, ends in bounds.items()})
    val_end = literal_map({label: ends[1] for label, ends in bounds.items()})
    order = F.xxhash64(F.col("path"), F.lit(seed))
    rank = F.row_number().over(Window.partitionBy("label").orderBy(order, F.col("path"))) - 1
    ranked = df.withColumn("_rank", rank)
    split = (
        F.when(F.col("_rank") < train_end[F.col("label")], F.lit("train"))
        .when(F.col("_rank") < val_end[F.col("label")], F.lit("val"))
        .otherwise(F.lit("test"))
    )
    return ranked.withColumn("split", split).drop("_rank")


# ----------------------------------------------------------------------------- main entry


def check_source(source: str) -> None:
    """Raise a clear DataError unless ``source`` is a built-in data set or an existing path."""
    if source not in BUILTIN_SOURCES and not Path(source).exists():
        raise DataError(
            f"unknown source {source!r}: not a built-in data set and no such path; use one "
            f"of {', '.join(BUILTIN_SOURCES)}, an image folder (one sub-folder per class) "
            "or a TFRecord folder"
        )


def _resolve_spec(config: PrepareConfig, default_hw: tuple[int, int], default_c: int) -> ImageSpec:
    h, w = config.image_size or default_hw
    return ImageSpec(h, w, config.channels or default_c)


def prepare(spark, config: PrepareConfig) -> PrepareResult:
    """Run the whole prepare path and write shards plus ``dataset.json``."""
    from pyspark.sql import functions as F

    started = time.monotonic()
    if config.fmt not in FORMATS:
        raise InvalidParameterError("format", config.fmt, f"use one of {', '.join(FORMATS)}")
    if config.channels not in (None, 1, 3):
        raise InvalidParameterError("channels", config.channels, "use 1 (grayscale) or 3 (RGB)")
    if config.num_shards < 1:
        raise InvalidParameterError("num-shards", config.num_shards, "use 1 or more")
    source = config.source
    rejected: list[dict[str, str]] = []

    if source in BUILTIN_SOURCES:
        spec = None
        if config.image_size or config.channels:
            shape = load_builtin(source).image_shape
            spec = _resolve_spec(config, shape[:2], shape[2])
        decoded, classes, image_shape = _builtin_frame(spark, source, spec)
        good = decoded
    else:
        check_source(source)
        path = Path(source)
        if _looks_like_tfrecords(path):
            from sparkvision.data.ingest_tfrecords import tfrecords_frame

            decoded, classes, image_shape = tfrecords_frame(spark, path, config)
            good = decoded
        else:
            spec = _resolve_spec(config, (DEFAULT_FOLDER_SIZE, DEFAULT_FOLDER_SIZE), 3)
            decoded, extra = _folder_frame(spark, path, spec)
            rejected = rejected_rows(decoded)
            rejected += [{"path": p, "reason": reason} for p, reason in extra]
            rejected.sort(key=lambda r: r["path"])
            good_names = decoded.filter(F.col("error").isNull()).select("class_name").distinct()
            classes = sorted(r.class_name for r in good_names.collect())
            if not classes:
                raise DataError(
                    f"no usable images under {source}: put images in one sub-folder per class "
                    f"(found {len(rejected)} rejected files)"
                )
            good = label_by_class(decoded, classes)
            image_shape = spec.shape

    counts = {
        int(r.label): int(r["count"]) for r in good.groupBy("label").count().collect()
    }
    split_df = _assign_splits(good, counts, config.split, config.seed).persist()
    per_split = split_df.groupBy("split", "label").count().collect()
    per_class: dict[str, dict[str, int]] = {s: {c: 0 for c in classes} for s in SPLITS}
    for r in per_split:
        per_class[r.split][classes[int(r.label)]] = int(r["count"])

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    columns = [c.split()[0] for c in PREPARED_DDL.split(", ")]
    for split in SPLITS:
        part = split_df.filter(F.col("split") == split).select(*columns)
        part = part.repartition(config.num_shards, "path").sortWithinPartitions("path")
        writer = part.write.mode("overwrite")
        target = str(out / split)
        if config.fmt == "tfrecords":
            writer.format("tfrecords").save(target)
        else:
            writer.parquet(target)
    split_df.unpersist()
    decoded.unpersist()

    result = PrepareResult(
        out=str(out),
        classes=list(classes),
        image_shape=list(image_shape),
        splits={s: sum(per_class[s].values()) for s in SPLITS},
        per_class=per_class,
        rejected=rejected,
        source=source,
        seed=config.seed,
        format=config.fmt,
        split_fractions=list(config.split),
        seconds=round(time.monotonic() - started, 3),
    )
    write_manifest(out, result.manifest())
    log.info("prepared %s: %s", out, result.splits)
    return result


def _looks_like_tfrecords(path: Path) -> bool:
    names = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return bool(names) and all(
        p.name.startswith(("_", ".")) or ".tfrecord" in p.name for p in names
    )


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``dataset.json`` from a prepared folder (or the file itself)."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    if not p.exists():
        raise DataError(
            f"no {MANIFEST} at {p}: point at a folder made by `sparkvision prepare`"
        )
    return json.loads(p.read_text(encoding="utf-8"))
