"""Benchmark: reading TFRecords through the ``tfrecords`` data source.

Generates MNIST-like records (28x28 uint8 image, int label, path string) in a few TFRecord
files, written with :mod:`sparkvision.data.tfrecord`, and the same rows as Parquet. Then
measures rows/s of

(a) ``spark.read.format("tfrecords")`` with an aggregate that touches every value (schema
    inferred on each load, as users usually read; also timed with ``.schema(...)`` given),
(b) a plain-Python loop over the same files (``iter_records`` + ``decode_example``),
(c) ``spark.read.parquet`` with the same aggregate.

Run: ``.venv/bin/python bench/tfrecord_read.py`` (writes bench/results/tfrecord_read.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sparkvision.data import tf_example, tfrecord

RESULTS = Path(__file__).resolve().parent / "results" / "tfrecord_read.json"


def generate(root: Path, rows: int, files: int, seed: int = 0) -> tuple[Path, Path, int]:
    """Write ``rows`` records into ``files`` TFRecord and Parquet files; return dirs, label sum."""
    rng = np.random.default_rng(seed)
    tf_dir, pq_dir = root / "tfrecords", root / "parquet"
    tf_dir.mkdir(parents=True)
    pq_dir.mkdir(parents=True)
    label_sum = 0
    for part, chunk in enumerate(np.array_split(np.arange(rows), files)):
        images = rng.integers(0, 256, size=(len(chunk), 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=len(chunk))
        paths = [f"images/{int(i) % 10}/{int(i):06d}.png" for i in chunk]
        label_sum += int(labels.sum())
        with tfrecord.open_for_write(str(tf_dir / f"part-{part:05d}.tfrecord")) as f:
            for image, label, path in zip(images, labels, paths, strict=True):
                example = {
                    "image": ("bytes", [image.tobytes()]),
                    "label": ("int64", [int(label)]),
                    "path": ("bytes", [path.encode()]),
                }
                tfrecord.write_record(f, tf_example.encode_example(example))
        table = pa.table(
            {
                "image": pa.array([im.tobytes() for im in images], pa.binary()),
                "label": pa.array(labels, pa.int64()),
                "path": pa.array(paths, pa.string()),
            }
        )
        pq.write_table(table, pq_dir / f"part-{part:05d}.parquet")
    return tf_dir, pq_dir, label_sum


def python_loop(tf_dir: Path) -> tuple[int, int, int]:
    """Read every file in one process: (rows, total image bytes, label sum)."""
    rows = image_bytes = labels = 0
    for path in sorted(tf_dir.iterdir()):
        for record in tfrecord.read_file_records(str(path)):
            example = tf_example.decode_example(record)
            image_bytes += len(example["image"][1][0])
            labels += example["label"][1][0]
            rows += 1
    return rows, image_bytes, labels


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall seconds of ``repeats`` calls after one warm-up call."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from pyspark.sql import functions as F

    from sparkvision.session import get_spark

    root = Path(tempfile.mkdtemp(prefix="sv-bench-"))
    try:
        tf_dir, pq_dir, label_sum = generate(root, args.rows, args.files)
        spark = get_spark(args.master, app_name="bench-tfrecord-read")

        def aggregate(df) -> tuple[int, int]:
            row = df.select(F.sum(F.length("image")), F.sum("label")).collect()[0]
            return int(row[0]), int(row[1])

        expected = (args.rows * 28 * 28, label_sum)
        tf_s, tf_res = timed(
            lambda: aggregate(spark.read.format("tfrecords").load(str(tf_dir))), args.repeats
        )
        schema = spark.read.format("tfrecords").load(str(tf_dir)).schema
        tfs_s, tfs_res = timed(
            lambda: aggregate(spark.read.format("tfrecords").schema(schema).load(str(tf_dir))),
            args.repeats,
        )
        py_s, py_res = timed(lambda: python_loop(tf_dir), args.repeats)
        pq_s, pq_res = timed(lambda: aggregate(spark.read.parquet(str(pq_dir))), args.repeats)
        if expected != tf_res or expected != tfs_res or expected != pq_res:
            raise SystemExit(f"wrong results: {tf_res} {tfs_res} {pq_res}, expected {expected}")
        if py_res != (args.rows, *expected):
            raise SystemExit(f"wrong python loop result: {py_res}, expected {expected}")
        spark.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    rate = {
        "spark_tfrecords": args.rows / tf_s,
        "spark_tfrecords_given_schema": args.rows / tfs_s,
        "python_loop": args.rows / py_s,
        "spark_parquet": args.rows / pq_s,
    }
    result = {
        "benchmark": "tfrecord_read",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "spark_master": args.master,
        "rows": args.rows,
        "files": args.files,
        "record": "28x28 uint8 image (bytes) + int64 label + path string",
        "aggregate": "sum(length(image)), sum(label)",
        "repeats": args.repeats,
        "seconds_median": {
            "spark_tfrecords": tf_s,
            "spark_tfrecords_given_schema": tfs_s,
            "python_loop": py_s,
            "spark_parquet": pq_s,
        },
        "rows_per_s": {k: round(v, 1) for k, v in rate.items()},
        "ratios": {
            "spark_tfrecords_vs_python_loop": round(
                rate["spark_tfrecords"] / rate["python_loop"], 3
            ),
            "spark_tfrecords_vs_spark_parquet": round(
                rate["spark_tfrecords"] / rate["spark_parquet"], 3
            ),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, value in rate.items():
        print(f"{name:>28}: {value:12,.0f} rows/s  ({args.rows / value:.3f} s)")
    for name, value in result["ratios"].items():
        print(f"{name}: {value}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
