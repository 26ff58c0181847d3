"""The decoded frame ``prepare`` starts from, for a built-in data set or an image folder
(existing TFRecords: :mod:`sparkvision.data.ingest_tfrecords`)."""

from __future__ import annotations

from pathlib import Path

from sparkvision.data.builtin import load_builtin
from sparkvision.data.decoding import DECODED_DDL, decode_image_folder, scan_files
from sparkvision.data.images import ImageSpec, prepare_array


def folder_frame(spark, root: Path, spec: ImageSpec):
    root_str = str(root.resolve())
    files, extra = scan_files(Path(root_str))
    decoded = decode_image_folder(spark, root_str, spec, files=files,
                                 skip=frozenset(path for path, _ in extra))
    # Files the stat-only scan finds empty or unreadable (Spark's listing skips some of
    # them) are rejected by the driver and left out of the decoding. Only those are kept
    # on the driver, never the list of all files.
    return decoded, extra


def builtin_frame(spark, name: str, spec: ImageSpec | None):
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
