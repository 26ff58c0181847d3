"""Spark Connect vs classic: the same `sparkvision train` on local[2], once with the driver in
the CLI process (`--master local[2]`) and once through a Spark Connect server running
local[2] (`--remote sc://…`), interleaved; writes bench/results/connect_overhead.json.

Target: Connect ≥ 0.95× classic in training-loop samples/s (the barrier stage is the same
work; only planning and result transfer go over gRPC).
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

from tests.cluster import connect_server  # noqa: E402

from common import cli_env, ensure_glibc_tunables, run_cli, write_result  # noqa: E402

TRAIN_FLAGS = ["--model", "cnn", "--batch-size", "64", "--seed", "0", "--augment", "none",
               "--workers", "2"]


def train(data: Path, out: Path, where: list[str], epochs: int,
          env: dict[str, str]) -> dict[str, Any]:
    wall = run_cli(["train", str(data), "--out", str(out), "--epochs", str(epochs),
                        *where, *TRAIN_FLAGS], env)
    history = json.loads((out / "history.json").read_text())
    epochs_h = history["epochs"]
    samples = sum(e["steps_per_rank"][0] * 64 * history["world_size"] for e in epochs_h)
    rows = sum(history["train_rows_per_rank"])
    return {
        "loop_samples_per_s": samples / sum(e["seconds"] for e in epochs_h),
        "end_to_end_samples_per_s": rows * len(epochs_h) / wall,
        "wall_seconds": wall,
        "final_val_accuracy": epochs_h[-1]["val_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    ensure_glibc_tunables()
    work = Path(tempfile.mkdtemp(prefix="sv-bench-connect-"))
    env = cli_env(work / "logs")
    data = work / "mnist"
    run_cli(["prepare", "mnist", "--out", str(data), "--master", "local[2]"], env)
    runs: dict[str, list[dict[str, Any]]] = {"classic": [], "connect": []}
    with connect_server(work / "connect-server.log") as url:
        for i in range(args.repeats):  # interleaved: load drifts hit both
            for name, where in (("classic", ["--master", "local[2]"]),
                                ("connect", ["--remote", url])):
                result = train(data, work / f"model-{name}-{i}", where, args.epochs, env)
                runs[name].append(result)
                print(f"{name} run {i}: loop {result['loop_samples_per_s']:.1f} samples/s, "
                      f"end to end {result['end_to_end_samples_per_s']:.1f}", flush=True)
    results = {name: {
        "loop_samples_per_s": round(statistics.median(r["loop_samples_per_s"] for r in items), 1),
        "end_to_end_samples_per_s": round(
            statistics.median(r["end_to_end_samples_per_s"] for r in items), 1),
        "runs": [{k: round(v, 3) for k, v in r.items()} for r in items],
    } for name, items in runs.items()}
    classic, connect = results["classic"], results["connect"]
    ratios = {
        "loop_connect_vs_classic": round(
            connect["loop_samples_per_s"] / classic["loop_samples_per_s"], 3),
        "end_to_end_connect_vs_classic": round(
            connect["end_to_end_samples_per_s"] / classic["end_to_end_samples_per_s"], 3),
    }
    path = write_result("connect_overhead", {
        "setup": "local[2] both ways; Connect server = spark-submit SparkConnectServer on "
                 "127.0.0.1 (tests/cluster.py); cnn, MNIST-5000 train split, batch 64/worker",
        "epochs": args.epochs, "repeats": args.repeats,
        "statistic": "median over interleaved repeats",
        "results": results, "ratios": ratios, "target": {"loop_connect_vs_classic": 0.95},
    })
    print(json.dumps(ratios), "→", path)


if __name__ == "__main__":
    main()
