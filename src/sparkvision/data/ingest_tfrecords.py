"""Ingest existing TFRecords (ours, or TensorFlow-style ``image/encoded`` records)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sparkvision.data.decoding import DECODED_DDL, DEFAULT_FOLDER_SIZE, decoded_arrow_schema
from sparkvision.data.images import ImageRejected, ImageSpec, encoded_to_array, prepare_array
from sparkvision.errors import DataError

_IMAGE_COLUMNS = ("image", "image/encoded", "image_raw")
_LABEL_COLUMNS = ("label", "image/class/label")


def _convert_batches(
    batches: Iterator[Any], image_col: str, label_col: str, raw: bool, spec: ImageSpec | None
) -> Iterator[Any]:
    import numpy as np
    import pyarrow as pa

    schema = decoded_arrow_schema()
    for batch in batches:
        rows = batch.to_pylist()
        out: dict[str, list[Any]] = {name: [] for name in schema.names}
        for row in rows:
            data = row.get(image_col) or b""
            error, image = None, None
            try:
                if raw:
                    h, w, c = int(row["height"]), int(row["width"]), int(row["channels"])
                    arr = np.frombuffer(data, dtype=np.uint8).reshape(h, w, c)
                    image = prepare_array(arr, spec) if spec is not None else arr
                else:
                    assert spec is not None
                    image = encoded_to_array(data, spec)
            except (ImageRejected, ValueError) as exc:
                error = str(exc)
            out["path"].append(row["path"])
            out["label"].append(row.get(label_col))
            out["class_name"].append(None)
            out["error"].append(error)
            out["image"].append(image.tobytes() if image is not None else None)
            shape = image.shape if image is not None else (0, 0, 0)
            out["height"].append(int(shape[0]))
            out["width"].append(int(shape[1]))
            out["channels"].append(int(shape[2]))
        yield pa.RecordBatch.from_pydict(out, schema=schema)


def tfrecords_frame(spark, path: Path, config) -> tuple[Any, list[str], tuple[int, int, int]]:
    """Read TFRecords at ``path`` into the decoded frame used by ``prepare``."""
    from pyspark.sql import functions as F

    df = spark.read.format("tfrecords").load(str(path))
    cols = set(df.columns)
    image_col = next((c for c in _IMAGE_COLUMNS if c in cols), None)
    label_col = next((c for c in _LABEL_COLUMNS if c in cols), None)
    if image_col is None or label_col is None:
        raise DataError(
            f"TFRecords at {path} have columns {sorted(cols)}: need an image column "
            f"({' or '.join(_IMAGE_COLUMNS)}) and an integer label ({' or '.join(_LABEL_COLUMNS)})"
        )
    if "path" not in cols:
        # Stable per-record ids (file partition + position) so the seeded split is repeatable.
        df = df.withColumn(
            "path", F.concat(F.lit("record-"), F.monotonically_increasing_id().cast("string"))
        )
    raw = {"height", "width", "channels"} <= cols
    spec = None
    if raw:
        # One aggregate over the shape columns, not first(): a limit stops the Python data
        # source mid-partition, leaving its worker writing to a closed socket.
        dims = ("height", "width", "channels")
        bounds = df.agg(*[F.min(d) for d in dims], *[F.max(d) for d in dims]).collect()[0]
        lows, highs = [int(b or 0) for b in bounds[:3]], [int(b or 0) for b in bounds[3:]]
        h, w, c = highs
        if config.image_size or config.channels:
            hh, ww = config.image_size or (h, w)
            spec = ImageSpec(hh, ww, config.channels or c)
        elif lows != highs:
            sizes = ", ".join(f"{d} {lo}..{hi}" for d, lo, hi in zip(dims, lows, highs,
                                                                        strict=True))
            raise DataError(f"TFRecords at {path} hold images of different sizes ({sizes}): "
                            "give --image-size H,W (and --channels) to resize them to one")
    else:
        hh, ww = config.image_size or (DEFAULT_FOLDER_SIZE, DEFAULT_FOLDER_SIZE)
        spec = ImageSpec(hh, ww, config.channels or 3)
    decoded = df.mapInArrow(
        lambda it: _convert_batches(it, image_col, label_col, raw, spec), DECODED_DDL
    ).filter(F.col("error").isNull())
    labels = sorted(int(r[0]) for r in decoded.select("label").distinct().collect())
    if not labels or labels[0] < 0:
        raise DataError(f"TFRecords at {path}: labels must be integers >= 0, got {labels[:5]}")
    classes = [str(i) for i in range(labels[-1] + 1)]
    shape = spec.shape if spec is not None else (h, w, c)
    return decoded, classes, shape
