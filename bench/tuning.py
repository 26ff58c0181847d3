"""Benchmark: tuning throughput with trials in parallel. 8 one-worker trials on `digits`,
``parallel=2`` vs ``parallel=1`` on local[2], same space, seed and trials, same run; and the
seconds from a prune decision (driver) to the pruned trial's slots being free again.

Run: ``.venv/bin/python bench/tuning.py`` → bench/results/tuning.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ensure_glibc_tunables, write_result  # noqa: E402

SPACE = {"learningRate": {"log": [1e-3, 2e-2]}, "batchSize": [32, 64]}
PRUNE_SPACE = {"learningRate": [0.003, 0.005, 2.0], "optimizer": ["sgd"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    ensure_glibc_tunables()

    from sparkvision import PrepareConfig, get_spark, load_prepared, prepare
    from sparkvision.tuning.search import TuneConfig, tune

    spark = get_spark("local[2]", app_name="bench-tuning")
    tmp = Path(tempfile.mkdtemp(prefix="sv-bench-tune-"))
    prepare(spark, PrepareConfig(source="digits", out=str(tmp / "digits")))
    train = load_prepared(spark, str(tmp / "digits"), "train").cache()
    val = load_prepared(spark, str(tmp / "digits"), "val").cache()
    train.count(), val.count()
    params = {"epochs": args.epochs, "numWorkers": 1, "model": "cnn"}

    def run(parallel: int, tag: str) -> dict:
        config = TuneConfig(out=str(tmp / tag), strategy="random", trials=args.trials,
                            parallelism=parallel, pruner="none", seed=0)
        started = time.perf_counter()
        result = tune(train, val, SPACE, config, params, show_progress=False)
        seconds = time.perf_counter() - started
        assert result.trials["complete"] == args.trials, result.trials
        return {"seconds": round(seconds, 2),
                "trials_per_minute": round(args.trials / seconds * 60, 2),
                "best_value": result.best_value}

    run(1, "warmup-" + str(time.time()))  # Python workers, JIT, caches
    serial = run(1, "parallel-1")
    parallel = run(2, "parallel-2")
    prune_cfg = TuneConfig(out=str(tmp / "prune"), strategy="bayes", trials=8, parallelism=2,
                           seed=3)
    tune(train, val, PRUNE_SPACE, prune_cfg, {**params, "epochs": 4, "model": "simple_cnn"},
         show_progress=False)
    trials = json.loads((tmp / "prune" / "trials.json").read_text())
    latencies = [t["prune_to_free_s"] for t in trials if t["prune_to_free_s"] is not None]
    ratio = round(parallel["trials_per_minute"] / serial["trials_per_minute"], 3)
    path = write_result("tuning", {
        "data": "digits (1437 train / 180 val, 8x8)", "trials": args.trials,
        "epochs": args.epochs, "workers_per_trial": 1, "spark_master": "local[2]",
        "space": SPACE, "parallel_1": serial, "parallel_2": parallel,
        "ratio_parallel_2_vs_1": ratio,
        "prune_to_slots_free_s": {"pruned_trials": len(latencies),
                                  "median": statistics.median(latencies) if latencies else None,
                                  "max": max(latencies) if latencies else None},
        "targets": {"ratio_parallel_2_vs_1": ">= 1.6"},
    })
    print(f"parallel 1: {serial['trials_per_minute']} trials/min  parallel 2: "
          f"{parallel['trials_per_minute']} trials/min  ratio {ratio}")
    print(f"prune → slots free: {latencies}")
    print(f"wrote {path}")
    spark.stop()


if __name__ == "__main__":
    main()
