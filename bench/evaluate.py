"""Benchmark: evaluation of 100k and 1M prediction rows (10 classes) by Spark
(``sparkvision.evaluation.metrics.compute_metrics``) vs collecting to pandas +
scikit-learn, same run, same rows; and the driver's peak RSS growth from 100k to 1M rows.

Rows are synthetic predictions (label, prediction, probability vector) written to Parquet
first, so both sides read the same files. Every metric is computed by both: accuracy,
per-class precision/recall/F1/support, confusion matrix, log-loss, top-5 accuracy, and
one-vs-rest ROC-AUC and average precision per class.
Run: ``.venv/bin/python bench/evaluate.py`` → bench/results/evaluate.json
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ensure_glibc_tunables, write_result  # noqa: E402

K = 10


def _peak_rss_mb() -> float:
    """Peak resident memory of this (driver) Python process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _jvm_peak_rss_mb(spark) -> float | None:
    proc = getattr(spark.sparkContext._gateway, "proc", None)
    if proc is None:
        return None
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def _write_predictions(spark, rows: int, path: str) -> None:
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    df = spark.range(rows).select(
        (F.col("id") % K).cast("long").alias("label"),
        F.array(*[F.rand(seed=i) + F.when(F.col("id") % K == i, F.rand(seed=100 + i) * 1.5)
                  .otherwise(0.0) for i in range(K)]).alias("s"),
    )
    total = F.aggregate("s", F.lit(0.0), lambda acc, x: acc + x)
    df = df.select("label", F.transform("s", lambda x: x / total).alias("p"))
    df = df.select(
        "label",
        (F.array_position("p", F.array_max("p")) - 1).cast("double").alias("prediction"),
        array_to_vector("p").alias("probability"),
    )
    df.repartition(4).write.mode("overwrite").parquet(path)


def ours(spark, path: str) -> dict:
    from sparkvision.evaluation.metrics import compute_metrics

    df = spark.read.parquet(path)
    return compute_metrics(df, [str(i) for i in range(K)]).to_dict()


def sklearn_baseline(spark, path: str) -> dict:
    import numpy as np
    from sklearn import metrics as skm

    pdf = spark.read.parquet(path).toPandas()
    y = pdf["label"].to_numpy()
    yhat = pdf["prediction"].to_numpy()
    proba = np.stack([v.toArray() for v in pdf["probability"]])
    labels = list(range(K))
    p, r, f, s = skm.precision_recall_fscore_support(y, yhat, labels=labels, zero_division=0)
    return {
        "accuracy": skm.accuracy_score(y, yhat),
        "macro_f1": float(f.mean()),
        "confusion": skm.confusion_matrix(y, yhat, labels=labels).tolist(),
        "log_loss": skm.log_loss(y, proba, labels=labels),
        "top_k_accuracy": skm.top_k_accuracy_score(y, proba, k=5, labels=labels),
        "roc_auc": [skm.roc_auc_score(y == k, proba[:, k]) for k in labels],
        "pr_auc": [skm.average_precision_score(y == k, proba[:, k]) for k in labels],
    }


def _timed(fn, *args):
    started = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    args = parser.parse_args()
    ensure_glibc_tunables()
    from sparkvision import get_spark

    sizes = [int(s) for s in args.sizes.split(",")]
    spark = get_spark("local[2]", app_name="bench-evaluate")
    tmp = tempfile.mkdtemp(prefix="sv-bench-eval-")
    paths = {}
    for n in sizes:
        paths[n] = f"{tmp}/preds-{n}"
        _write_predictions(spark, n, paths[n])
    ours(spark, paths[sizes[0]])  # warm-up: JVM code paths, Python workers

    results: dict[str, dict] = {}
    rss: dict[str, dict] = {"sparkvision": {}, "pandas_sklearn": {}}
    for n in sizes:  # ours first: the pandas baseline's memory would hide our growth
        seconds, metrics = _timed(ours, spark, paths[n])
        rss["sparkvision"][str(n)] = {"python_peak_mb": round(_peak_rss_mb(), 1),
                                      "jvm_peak_mb": _jvm_peak_rss_mb(spark)}
        results.setdefault(str(n), {})["sparkvision_s"] = round(seconds, 2)
        results[str(n)]["ours"] = metrics
    for n in sizes:
        seconds, base = _timed(sklearn_baseline, spark, paths[n])
        rss["pandas_sklearn"][str(n)] = {"python_peak_mb": round(_peak_rss_mb(), 1),
                                         "jvm_peak_mb": _jvm_peak_rss_mb(spark)}
        entry = results[str(n)]
        entry["pandas_sklearn_s"] = round(seconds, 2)
        got = entry.pop("ours")
        entry["max_abs_diff"] = max(
            abs(got["accuracy"] - base["accuracy"]), abs(got["macro_f1"] - base["macro_f1"]),
            abs(got["log_loss"] - base["log_loss"]),
            abs(got["top_k_accuracy"] - base["top_k_accuracy"]),
            *[abs(got["per_class"][str(k)]["roc_auc"] - base["roc_auc"][k]) for k in range(K)],
            *[abs(got["per_class"][str(k)]["pr_auc"] - base["pr_auc"][k]) for k in range(K)],
        )
        entry["confusion_equal"] = got["confusion"] == base["confusion"]
        entry["speedup_vs_pandas_sklearn"] = round(
            entry["pandas_sklearn_s"] / entry["sparkvision_s"], 2)
    lo, hi = str(sizes[0]), str(sizes[-1])
    growth = {
        "sparkvision_python_mb": round(rss["sparkvision"][hi]["python_peak_mb"]
                                       - rss["sparkvision"][lo]["python_peak_mb"], 1),
        "pandas_sklearn_python_mb": round(rss["pandas_sklearn"][hi]["python_peak_mb"]
                                          - rss["pandas_sklearn"][lo]["python_peak_mb"], 1),
    }
    path = write_result("evaluate", {
        "classes": K, "spark_master": "local[2]", "results": results, "peak_rss": rss,
        "driver_peak_rss_growth_100k_to_1m": growth,
        "targets": {"sparkvision_python_mb": "< 50"},
    })
    for n, entry in results.items():
        print(f"{n:>9s} rows: sparkvision {entry['sparkvision_s']:6.2f}s  pandas+sklearn "
              f"{entry['pandas_sklearn_s']:6.2f}s  max |diff| {entry['max_abs_diff']:.2e}")
    print(f"driver peak RSS growth {lo}→{hi}: {growth}")
    print(f"wrote {path}")
    spark.stop()


if __name__ == "__main__":
    main()
