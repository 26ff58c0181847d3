"""`prepare`: its config and result, and the run that ties the path together: source →
decoded, validated, resized rows → label index → stratified split → shards + manifest.

Decoding runs on Spark executors (``binaryFile`` source + ``mapInArrow``); the driver only
sees metadata (class names, counts, rejected file names). The decoded frame of each kind
of source is :mod:`sparkvision.data.source_frames` (built-in data set, image folder) and
:mod:`sparkvision.data.ingest_tfrecords`; the split is :mod:`sparkvision.data.splitting`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sparkvision import storage
from sparkvision.data.builtin import BUILTIN_SOURCES, load_builtin
from sparkvision.data.decoding import (
    DEFAULT_FOLDER_SIZE,
    MAX_LISTED_REJECTED,
    REJECTED_FILE,
    label_by_class,
    looks_like_tfrecords,
    rejected_rows,
    write_rejected,
)
from sparkvision.data.images import ENCODINGS, ImageSpec, encode_array
from sparkvision.data.ingest_tfrecords import tfrecords_frame
from sparkvision.data.manifest import SPLITS, write_manifest
from sparkvision.data.schema import PREPARED_DDL
from sparkvision.data.source_frames import builtin_frame, folder_frame
from sparkvision.data.splitting import assign_splits, minority_classes, split_bounds
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


# ----------------------------------------------------------------------------- storing


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
        decoded, classes, image_shape = builtin_frame(spark, source, spec)
        good = decoded
    else:
        check_source(source)
        path = Path(source)
        if looks_like_tfrecords(path):
            decoded, classes, image_shape = tfrecords_frame(spark, path, config)
            good = decoded
        else:
            spec = _resolve_spec(config, (DEFAULT_FOLDER_SIZE, DEFAULT_FOLDER_SIZE), 3)
            decoded, extra = folder_frame(spark, path, spec)
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
    split_df = assign_splits(good, counts, config.split, config.seed, config.imbalance)
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
