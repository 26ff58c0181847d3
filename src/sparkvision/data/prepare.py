"""`prepare`: ingest images → validate/resize → label index → stratified split → shards.

Decoding runs on Spark executors (``binaryFile`` source + ``mapInArrow``); the driver only
sees metadata (class names, counts, rejected file names).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sparkvision import storage
from sparkvision.data.builtin import BUILTIN_SOURCES, load_builtin
from sparkvision.data.decoding import (
    DECODED_DDL,
    DEFAULT_FOLDER_SIZE,
    MAX_LISTED_REJECTED,
    REJECTED_FILE,
    decode_image_folder,
    label_by_class,
    looks_like_tfrecords,
    rejected_rows,
    scan_files,
    write_rejected,
)
from sparkvision.data.images import ENCODINGS, ImageSpec, encode_array, prepare_array
from sparkvision.data.ingest_tfrecords import tfrecords_frame
from sparkvision.data.manifest import SPLITS, write_manifest
from sparkvision.data.schema import PREPARED_DDL
from sparkvision.errors import DataError, InvalidParameterError

log = logging.getLogger(__name__)

FORMATS = ("tfrecords", "parquet")
STORES = ("raw", "encoded")


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
    #: > 1: the first half of the classes keep 1/imbalance of their training images
    #: (val/test untouched): a deliberately imbalanced training split for tests and demos.
    imbalance: float | None = None
    #: raw (uint8 pixels) or encoded (PNG/JPEG bytes at the target size, ``encoding``)
    store: str = "raw"
    encoding: str = "png"

    def __post_init__(self) -> None:
        """Validate on construction, so a CLI fails before Spark starts."""
        if self.fmt not in FORMATS:
            raise InvalidParameterError("format", self.fmt, f"use one of {', '.join(FORMATS)}")
        if self.channels not in (None, 1, 3):
            raise InvalidParameterError("channels", self.channels,
                                        "use 1 (grayscale) or 3 (RGB)")
        if self.store not in STORES:
            raise InvalidParameterError("store", self.store, f"use one of {', '.join(STORES)}")
        if self.encoding not in ENCODINGS:
            raise InvalidParameterError("encoding", self.encoding,
                                        f"use one of {', '.join(ENCODINGS)}")
        if self.num_shards < 1:
            raise InvalidParameterError("num-shards", self.num_shards, "use 1 or more")
        if self.imbalance is not None and not self.imbalance > 1:
            raise InvalidParameterError(
                "imbalance", self.imbalance, "give a ratio > 1, e.g. 10 (the first half of "
                "the classes keep 1/10 of their training images)")


@dataclass
class PrepareResult:
    out: str
    classes: list[str]
    image_shape: list[int]
    splits: dict[str, int]
    per_class: dict[str, dict[str, int]]
    rejected: list[dict[str, str]]  # the first MAX_LISTED_REJECTED, by path
    rejected_count: int
    rejected_file: str | None  # all of them (JSON lines), beside dataset.json
    source: str
    seed: int
    format: str
    split_fractions: list[float]
    imbalance: dict[str, Any] | None = None
    storage: str = "raw"  # raw | png | jpeg
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


def _folder_frame(spark, root: Path, spec: ImageSpec):
    root_str = str(root.resolve())
    files, extra = scan_files(Path(root_str))
    decoded = decode_image_folder(spark, root_str, spec, files=files,
                                 skip=frozenset(path for path, _ in extra))
    # Files the stat-only scan finds empty or unreadable (Spark's listing skips some of
    # them) are rejected by the driver and left out of the decoding. Only those are kept
    # on the driver, never the list of all files.
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

    df = spark.createDataFrame(pdf, schema=StructType.fromDDL(DECODED_DDL))
    return df, list(ds.classes), (int(h), int(w), int(c))


def encode_images(df, encoding: str):
    """Prepared rows with ``image`` as PNG/JPEG bytes instead of raw pixels (executors)."""
    columns = [c.split()[0] for c in PREPARED_DDL.split(", ")]

    def encode(batches):
        import numpy as np
        import pyarrow as pa

        for batch in batches:
            shapes = zip(batch.column("height").to_pylist(), batch.column("width").to_pylist(),
                         batch.column("channels").to_pylist(), strict=True)
            images = [encode_array(np.frombuffer(raw, np.uint8).reshape(h, w, c), encoding)
                      for raw, (h, w, c) in zip(batch.column("image").to_pylist(), shapes,
                                                strict=True)]
            index = batch.schema.get_field_index("image")
            yield batch.set_column(index, "image", pa.array(images, pa.binary()))

    return df.select(*columns).mapInArrow(encode, PREPARED_DDL)


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


def minority_classes(num_classes: int) -> list[int]:
    """The classes ``--imbalance`` thins out: the first half (by class index)."""
    return list(range(num_classes // 2))


def split_bounds(class_counts: dict[int, int], fractions: tuple[float, float, float],
                 imbalance: float | None = None) -> dict[int, tuple[int, int, int]]:
    """Per class, the ranks where ``dropped``, ``val`` and ``test`` start (rows ranked by
    the seeded hash): train is ``[0, a)``, dropped ``[a, b)``, val ``[b, c)``, test the
    rest."""
    thinned = set(minority_classes(len(class_counts))) if imbalance else set()
    bounds = {}
    for label, n in class_counts.items():
        tr, va, _ = split_counts(n, fractions)
        keep = max(1, math.ceil(tr / imbalance)) if label in thinned and imbalance else tr
        bounds[label] = (keep, tr, tr + va)
    return bounds


def _assign_splits(df, class_counts: dict[int, int], fractions, seed: int,
                   imbalance: float | None = None):
    """Stratified, deterministic split: rank rows in each class by a seeded hash.

    With ``imbalance``, minority training rows past 1/imbalance of the class's training
    share get the split ``dropped`` (they are not written)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    bounds = split_bounds(class_counts, fractions, imbalance)
    # Rank only (label, path, hash) — not the images — and keep the rows where a split
    # starts (at most 3 per class); each image row is then placed by comparing its (hash,
    # path) with those boundaries: the same assignment as ranking every row, without
    # shuffling the image bytes.
    order = F.xxhash64(F.col("path"), F.lit(seed))
    narrow = df.select("label", "path", order.alias("_h"))
    rank = F.row_number().over(Window.partitionBy("label").orderBy("_h", "path")) - 1
    names = ("dropped", "val", "test")  # the splits that start at the ranks in bounds
    wanted = F.lit(False)
    for label, ends in bounds.items():
        wanted = wanted | ((F.col("label") == label) & F.col("_rank").isin(*set(ends)))
    found: dict[int, dict[str, tuple[int, str]]] = {label: {} for label in bounds}
    for r in narrow.withColumn("_rank", rank).filter(wanted).collect():
        label = int(r.label)
        for name, start in zip(names, bounds[label], strict=True):
            if start == int(r._rank):
                found[label][name] = (int(r._h), str(r.path))
    cols = [f"_{name}_{part}" for name in names for part in ("h", "p")]
    rows = [(label, *[v for name in names for v in found[label].get(name, (None, None))])
            for label in bounds]
    starts = df.sparkSession.createDataFrame(
        rows, "label BIGINT, " + ", ".join(f"{c} {'BIGINT' if c.endswith('h') else 'STRING'}"
                                           for c in cols))
    def before(name: str):
        """The row comes before the first row of split ``name`` of its class (there is no
        such row: every row of the class does)."""
        bh, bp = F.col(f"_{name}_h"), F.col(f"_{name}_p")
        return bh.isNull() | (order < bh) | ((order == bh) & (F.col("path") < bp))

    split = (
        F.when(before("dropped"), F.lit("train"))
        .when(before("val"), F.lit("dropped"))
        .when(before("test"), F.lit("val"))
        .otherwise(F.lit("test"))
    )
    return df.join(F.broadcast(starts), "label", "left").withColumn("split", split).drop(*cols)


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
    source = config.source
    rejected: list[dict[str, str]] = []
    rejected_count = 0
    extra: list[tuple[str, str]] = []
    counts: dict[int, int] | None = None

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
        if looks_like_tfrecords(path):
            decoded, classes, image_shape = tfrecords_frame(spark, path, config)
            good = decoded
        else:
            spec = _resolve_spec(config, (DEFAULT_FOLDER_SIZE, DEFAULT_FOLDER_SIZE), 3)
            decoded, extra = _folder_frame(spark, path, spec)
            # One job decodes every file (into the cache) and counts per class.
            tally = decoded.groupBy("class_name", F.col("error").isNull().alias("ok")).count()
            tally_rows = tally.collect()
            classes = sorted({r.class_name for r in tally_rows if r.ok})
            counts = {classes.index(r.class_name): int(r["count"])
                      for r in tally_rows if r.ok}
            rejected_count = sum(int(r["count"]) for r in tally_rows if not r.ok) + len(extra)
            if rejected_count:
                rejected = rejected_rows(decoded, limit=MAX_LISTED_REJECTED)
                rejected += [{"path": p, "reason": reason} for p, reason in extra]
                rejected = sorted(rejected, key=lambda r: r["path"])[:MAX_LISTED_REJECTED]
            if not classes:
                raise DataError(
                    f"no usable images under {source}: put images in one sub-folder per class "
                    f"(found {rejected_count} rejected files)"
                )
            good = label_by_class(decoded, classes)
            image_shape = spec.shape

    if counts is None:
        counts = {int(r.label): int(r["count"])
                  for r in good.groupBy("label").count().collect()}
    split_df = _assign_splits(good, counts, config.split, config.seed, config.imbalance)
    # The split sizes follow from the counts alone (no job over the rows).
    per_class: dict[str, dict[str, int]] = {s: {c: 0 for c in classes} for s in SPLITS}
    for label, (keep, train_end, val_end) in split_bounds(
            counts, config.split, config.imbalance).items():
        name = classes[label]
        per_class["train"][name] = keep
        per_class["val"][name] = val_end - train_end
        per_class["test"][name] = counts[label] - val_end

    out = storage.absolute(config.out)  # a local folder or any fsspec URL (s3://...)
    storage.makedirs(out)
    columns = [c.split()[0] for c in PREPARED_DDL.split(", ")]
    for split in SPLITS:
        part = split_df.filter(F.col("split") == split).select(*columns)
        if config.store == "encoded":
            part = encode_images(part, config.encoding)
        part = part.repartition(config.num_shards, "path").sortWithinPartitions("path")
        writer = part.write.mode("overwrite")
        target = storage.join(out, split)
        if config.fmt == "tfrecords":
            writer.format("tfrecords").save(target)
        else:
            writer.parquet(target)
    rejected_file = None
    if rejected_count:  # all of them, beside dataset.json (the manifest lists the first)
        write_rejected(decoded, extra, storage.join(out, REJECTED_FILE))
        rejected_file = REJECTED_FILE
    decoded.unpersist()

    result = PrepareResult(
        out=out,
        classes=list(classes),
        image_shape=list(image_shape),
        splits={s: sum(per_class[s].values()) for s in SPLITS},
        per_class=per_class,
        rejected=rejected,
        rejected_count=rejected_count,
        rejected_file=rejected_file,
        source=source,
        seed=config.seed,
        format=config.fmt,
        split_fractions=list(config.split),
        imbalance=None if config.imbalance is None else {
            "ratio": config.imbalance,
            "minority_classes": [classes[i] for i in minority_classes(len(classes))],
        },
        storage="raw" if config.store == "raw" else config.encoding,
        seconds=round(time.monotonic() - started, 3),
    )
    write_manifest(out, result.manifest())
    log.info("prepared %s: %s", out, result.splits)
    return result
