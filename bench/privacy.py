"""Benchmark: differentially private training (Opacus DP-SGD, 2 Spark workers) vs the same
training without DP — samples/s on the same data and workers, same run — and the test
accuracy each privacy budget buys (ε = ∞ i.e. no DP, 8, 3, 1 at δ = 1e-5) on `digits`
and `mnist`, the README's table.

Run: ``.venv/bin/python bench/privacy.py`` → bench/results/privacy.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ensure_glibc_tunables, write_result  # noqa: E402

EPSILONS = (None, 8.0, 3.0, 1.0)  # None: no DP (ε = ∞)
#: epochs and learning rate per data set (the same with and without DP)
SETTINGS = {"digits": {"epochs": 15, "learningRate": 0.01},
            "mnist": {"epochs": 6, "learningRate": 0.01}}


def _samples_per_s(model) -> float:
    epochs = model.history.epochs
    return sum(e.samples_per_second for e in epochs) / len(epochs)


def run(spark, name: str, root: str) -> list[dict]:
    from sparkvision import ImageClassifier, PrepareConfig, load_prepared, prepare
    from sparkvision.ml.evaluator import ImageClassificationEvaluator

    out = str(Path(root) / name)
    prepare(spark, PrepareConfig(source=name, out=out, seed=1))
    train = load_prepared(spark, out, "train").cache()
    test = load_prepared(spark, out, "test").cache()
    train.count(), test.count()
    rows = []
    for eps in EPSILONS:
        params = {"numWorkers": 2, "seed": 0, **SETTINGS[name]}
        if eps is not None:
            params.update(privacy="dp", targetEpsilon=eps, targetDelta=1e-5, maxGradNorm=1.0)
        model = ImageClassifier(**params).setShowProgress(False).fit(train)
        acc = ImageClassificationEvaluator(metricName="accuracy").evaluate(
            model.transform(test))
        privacy = model.history.privacy
        row = {"data": name, "target_epsilon": eps,
               "epsilon": privacy.epsilon if privacy else None,
               "noise_multiplier": privacy.noise_multiplier if privacy else None,
               "test_accuracy": round(acc, 4), "samples_per_s": round(_samples_per_s(model)),
               **SETTINGS[name]}
        print(row, flush=True)
        rows.append(row)
    base = rows[0]["samples_per_s"]
    for row in rows:
        row["speed_vs_no_dp"] = round(row["samples_per_s"] / base, 3)
    return rows


def main() -> None:
    ensure_glibc_tunables()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    from sparkvision import get_spark

    spark = get_spark("local[2]")
    with tempfile.TemporaryDirectory() as root:
        rows = [row for name in args.data for row in run(spark, name, root)]
    print(write_result("privacy", {"delta": 1e-5, "max_grad_norm": 1.0, "workers": 2,
                                   "rows": rows}))


if __name__ == "__main__":
    main()
