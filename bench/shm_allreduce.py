"""Benchmark: gradient all-reduce through shared memory vs gloo, and 2x1 DDP throughput.

1. Micro-benchmark: time per all-reduce of 1k / 100k / 420k float32 between 2 processes,
   gloo ``dist.all_reduce`` (TCP loopback) vs :meth:`ShmAllReduce.average_` (shared
   memory; it also divides by the world size, gloo is timed without the division).
2. Training throughput (samples/s) of ``simple_cnn`` (421,642 parameters), batch 64 per
   process, 2 processes x 1 thread, random uint8 images normalised like training, Adam:

   - ``no_ddp``: each process trains alone, no communication (the ceiling);
   - ``ddp_nocomm``: DDP with a hook that communicates nothing (DDP's own overhead);
   - ``ddp_gloo``: DDP, default gloo all-reduce (``bucket_cap_mb=1,
     gradient_as_bucket_view=True``, as the worker builds it);
   - ``ddp_shm``: DDP + :func:`shm_allreduce_hook` (as installed).

   The modes run in short interleaved runs (order rotated every round) so that drifts of
   a shared machine hit all of them; ratios are medians of same-round ratios.

Run: ``.venv/bin/python bench/shm_allreduce.py`` → bench/results/shm_allreduce.json
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

from common import write_result  # noqa: E402
from sparkvision.session.conf import GLIBC_TUNABLES  # noqa: E402

WORLD = 2
BATCH = 64
SIZES = [1_000, 100_000, 420_000]
MODES = ["no_ddp", "ddp_nocomm", "ddp_gloo", "ddp_shm"]
CEILING = "no_ddp"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _init(rank: int, port: int) -> None:
    import datetime as dt

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=dt.timedelta(minutes=5),
    )


def _micro(rank: int, port: int, iters: int, rounds: int, outdir: str) -> None:
    """Per-call time of back-to-back all-reduces (each includes waiting for the peer)."""
    import torch
    import torch.distributed as dist

    from sparkvision.training.shm_allreduce import ShmAllReduce

    _init(rank, port)
    shm = ShmAllReduce.create(f"sv-bench-{port}", max(SIZES) * 4)
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        for n in SIZES:
            # zeros for gloo: the sum stays finite over thousands of calls, same cost
            x_gloo = torch.zeros(n)
            x_shm = torch.randn(n, generator=torch.Generator().manual_seed(rank))
            for name, call in (
                ("gloo", lambda x=x_gloo: dist.all_reduce(x)),
                ("shm", lambda x=x_shm: shm.average_(x)),
            ):
                for _ in range(max(5, iters // 10)):
                    call()
                dist.barrier()
                samples = times.setdefault(f"{name}_{n}", [])
                for _ in range(iters):
                    t0 = time.perf_counter()
                    call()
                    samples.append(time.perf_counter() - t0)
    shm.close()
    dist.destroy_process_group()
    Path(outdir, f"micro{rank}.json").write_text(json.dumps(times))


def _nocomm_hook(state, bucket):
    """DDP's machinery without any communication (ranks never wait for each other)."""
    import torch

    fut = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


def _timed_hook(state, bucket):  # no annotations: DDP checks them against GradBucket
    from sparkvision.training.shm_comm_hook import shm_allreduce_hook

    shm, spent = state
    t0 = time.perf_counter()
    fut = shm_allreduce_hook(shm, bucket)
    spent[0] += time.perf_counter() - t0
    return fut


def _throughput(rank: int, port: int, steps: int, warmup: int, repeats: int, outdir: str) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    from sparkvision.models import build_model
    from sparkvision.training.loop import normalize
    from sparkvision.training.shm_allreduce import ShmAllReduce

    _init(rank, port)
    gen = torch.Generator().manual_seed(rank)
    pool = 4096
    x_u8 = torch.randint(0, 256, (pool, 1, 28, 28), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (pool,), generator=gen)
    order = torch.randint(0, pool, (warmup + steps, BATCH), generator=gen)
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for rep in range(repeats):
        for mode in MODES[rep % len(MODES) :] + MODES[: rep % len(MODES)]:  # rotate the order
            torch.manual_seed(0)
            model = build_model("simple_cnn", 10, (28, 28, 1))
            net: torch.nn.Module = model
            shm, spent = None, [0.0]
            if mode != "no_ddp":
                net = DDP(model, bucket_cap_mb=1, gradient_as_bucket_view=True)
            if mode == "ddp_nocomm":
                net.register_comm_hook(None, _nocomm_hook)  # type: ignore[operator]
            if mode == "ddp_shm":
                # What install_shm_allreduce() registers, wrapped to time the hook.
                capacity = sum(p.numel() * p.element_size() for p in model.parameters())
                shm = ShmAllReduce.create(f"sv-bench-train-{port}", capacity)
                net.register_comm_hook((shm, spent), _timed_hook)  # type: ignore[operator]
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)
            started = 0.0
            for step in range(warmup + steps):
                if step == warmup:
                    dist.barrier()
                    spent[0] = 0.0
                    started = time.perf_counter()
                idx = order[step]
                loss = F.cross_entropy(net(normalize(x_u8[idx])), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            seconds = time.perf_counter() - started
            runs[mode].append({"seconds": seconds, "hook_seconds": spent[0]})
            if shm is not None:
                shm.close()
            del net, model, opt
            dist.barrier()
    dist.destroy_process_group()
    Path(outdir, f"train{rank}.json").write_text(json.dumps(runs))


def _spawn(fn, *args: Any) -> list[Any]:
    import torch.multiprocessing as mp

    outdir = tempfile.mkdtemp(prefix="sv-bench-shm-")
    mp.start_processes(fn, args=(_free_port(), *args, outdir), nprocs=WORLD, start_method="spawn")
    prefix = "micro" if fn is _micro else "train"
    return [json.loads(Path(outdir, f"{prefix}{r}.json").read_text()) for r in range(WORLD)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=200, help="timed calls per size/round")
    parser.add_argument("--rounds", type=int, default=3, help="micro-benchmark rounds")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per run")
    parser.add_argument("--repeats", type=int, default=12, help="rounds over the modes")
    args = parser.parse_args()
    # The children inherit these (read by glibc / OpenMP at process start).
    os.environ["GLIBC_TUNABLES"] = GLIBC_TUNABLES
    os.environ["OMP_NUM_THREADS"] = "1"

    micro_ranks = _spawn(_micro, args.iters, args.rounds)
    micro: dict[str, dict[str, float]] = {}
    for n in SIZES:
        row: dict[str, float] = {}
        for name in ("gloo", "shm"):
            samples = [s for r in micro_ranks for s in r[f"{name}_{n}"]]
            row[f"{name}_median_us"] = round(statistics.median(samples) * 1e6, 1)
            row[f"{name}_mean_us"] = round(statistics.fmean(samples) * 1e6, 1)
        row["speedup_median"] = round(row["gloo_median_us"] / row["shm_median_us"], 2)
        micro[f"{n}_floats"] = row
        print(
            f"all_reduce {n:>7} floats: gloo {row['gloo_median_us']:8.1f} us   "
            f"shm {row['shm_median_us']:7.1f} us   (median per call; x"
            f"{row['speedup_median']})"
        )

    train_ranks = _spawn(_throughput, args.steps, args.warmup, args.repeats)
    samples = WORLD * BATCH * args.steps
    rates: dict[str, list[float]] = {}
    train: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        rates[mode] = [
            samples / max(r[mode][i]["seconds"] for r in train_ranks) for i in range(args.repeats)
        ]
        median = statistics.median(rates[mode])
        train[mode] = {
            "samples_per_s_median": round(median, 1),
            "samples_per_s_runs": [round(v, 1) for v in rates[mode]],
            "ms_per_step_median": round(WORLD * BATCH / median * 1e3, 2),
        }
        if mode == "ddp_shm":
            hook_ms = [
                max(r[mode][i]["hook_seconds"] for r in train_ranks) / args.steps * 1e3
                for i in range(args.repeats)
            ]
            train[mode]["hook_ms_per_step_median"] = round(statistics.median(hook_ms), 3)
        print(
            f"{mode:12s} {median:8.1f} samples/s  {train[mode]['ms_per_step_median']:6.2f} "
            f"ms/step  runs {[round(v) for v in rates[mode]]}"
        )

    def paired(a: str, b: str) -> float:
        """Median over rounds of rate(a) / rate(b) measured in the same round."""
        return round(statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True)), 3)

    ratios = {f"{m}_vs_{CEILING}": paired(m, CEILING) for m in MODES if m != CEILING}
    ratios["ddp_shm_vs_ddp_gloo"] = paired("ddp_shm", "ddp_gloo")
    print("ratios (median over rounds of same-round ratios):")
    for k, v in ratios.items():
        print(f"  {k:26s} {v:.3f}")
    path = write_result(
        "shm_allreduce",
        {
            "setup": {
                "world": WORLD,
                "threads_per_process": 1,
                "backend": "gloo (127.0.0.1)",
                "network": "simple_cnn (421,642 parameters)",
                "batch_per_process": BATCH,
                "optimizer": "Adam",
                "data": "random uint8 28x28x1, normalize()",
                "ddp": "bucket_cap_mb=1, gradient_as_bucket_view=True",
                "steps": args.steps,
                "warmup": args.warmup,
                "repeats": args.repeats,
                "micro_iters": args.iters,
                "micro_rounds": args.rounds,
                "glibc_tunables": GLIBC_TUNABLES,
            },
            "all_reduce": micro,
            "training": train,
            "ratios": ratios,
            "targets": {"ddp_shm_vs_no_ddp": ">= 0.95", "shm_all_reduce_420k_us": "< 1000"},
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
