"""Benchmark + model: the gradient all-reduce across emulated hosts, an α-β (latency-
bandwidth) model fitted to it, and what the model predicts for 8 and 64 hosts.

Measure (root only): ``tests/netns.py`` makes 3 emulated hosts (network namespaces on a
bridge, each its own address); one process per host runs ``torch.distributed`` over gloo (the
backend our training uses between hosts) bound to its ``eth0``, and times ``all_reduce`` of
float32 tensors from 4 KB to 16 MB (median of ``--repeats`` after 2 warm-ups), for 2 and 3
hosts, with each host's link unshaped and shaped by ``tc tbf`` to 1 Gbit/s and 100 Mbit/s.

Fit: a ring all-reduce of ``n`` bytes over ``p`` hosts costs ``T = 2(p-1)·α + 2(p-1)/p·n·β``
(Thakur, Rabenseifner & Gropp 2005; Patarasuk & Yuan 2009): a least-squares line ``T = a + b·n``
per (hosts, rate) gives ``α = a / 2(p-1)`` and ``β = b·p / 2(p-1)``; the fit's relative error
on every measured point is reported, and the 2-host fit predicts the 3-host times (the check
of the model on a size it was not fitted on).

Predict: the step time of data-parallel training on ``P`` hosts with one accelerator each,
``step = compute + max(0, T(P, n) - overlap · backward)`` (DDP all-reduces buckets while the
backward pass runs), efficiency = ``compute / step``, for ``cnn``, resnet18-size and
resnet50-size gradients, at 10/25/100 Gbit/s, float32 and fp16-compressed (n/2). The
assumptions (per-step compute times, backward share, α of a data-centre network, the link
efficiency measured here) are in the results file and ``docs/scaling.md``.

Run: ``flock /tmp/sv-heavy.lock .venv/bin/python bench/allreduce_model.py``
→ bench/results/allreduce_model.json (``--quick``: fewer sizes and repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

SIZES = [4 << 10, 64 << 10, 512 << 10, 2 << 20, 8 << 20, 16 << 20]
QUICK_SIZES = [64 << 10, 2 << 20, 8 << 20]
RATES: list[str | None] = [None, "1gbit", "100mbit"]
#: The largest message timed at 100 Mbit/s (16 MB would take ~3 s per all-reduce).
MAX_BYTES_SLOW = 8 << 20
#: Sizes from here on are bandwidth-bound (the slope of the fit); below, latency counts.
BANDWIDTH_BOUND = 512 << 10

#: DDP bucket sizes compared (MB), and on which network and link.
BUCKETS_MB = [0.25, 1.0, 4.0, 25.0]
BUCKET_CASES: list[tuple[str, str | None]] = [("wide_mlp", None), ("wide_mlp", "1gbit"),
                                              ("cnn", "100mbit")]
#: Gradient sizes to predict for (float32 parameters × 4 bytes); ``cnn`` is counted by
#: building it.
NETWORKS = {"resnet18": 11_689_512, "resnet50": 25_557_032}
#: Assumed compute per step on one modern data-centre GPU, batch 64, mixed precision
#: (forward + backward, no communication): resnet18 ~ 0.045 s, resnet50 ~ 0.13 s (order of
#: MLPerf-era V100/A100 throughputs: ~1,400 and ~500 images/s); ``cnn`` 0.004 s.
COMPUTE_S = {"cnn": 0.004, "resnet18": 0.045, "resnet50": 0.13}
#: Share of a step's compute that is the backward pass (communication overlaps it).
BACKWARD_SHARE = 2 / 3
#: DDP's bucket (``bucket_cap_mb=1`` in training.epochs): the last one cannot overlap.
BUCKET_BYTES = 1 << 20
#: Target networks: Gbit/s; α of a data-centre TCP hop (one-way small-message latency).
TARGET_GBITS = (10, 25, 100)
TARGET_ALPHA_S = 25e-6
TARGET_HOSTS = (8, 64)


# -- one rank (runs inside an emulated host) -------------------------------------------------

def _rank_main(rank: int, world: int, master: str, port: int, sizes: list[int],
               repeats: int) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR=master, MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="eth0")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    warm = torch.ones(1024)
    for _ in range(20):  # connections and first-use costs, before any size is timed
        dist.all_reduce(warm)
    out = {}
    for size in sizes:
        t = torch.ones(size // 4)
        for _ in range(2):
            dist.all_reduce(t)
        laps = []
        for _ in range(repeats):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(t)
            laps.append(time.perf_counter() - start)
        # the slowest rank's lap is the collective's time
        lap = torch.tensor(laps)
        dist.all_reduce(lap, op=dist.ReduceOp.MAX)
        out[size] = statistics.median(lap.tolist())
    dist.destroy_process_group()
    if rank == 0:
        print(json.dumps(out), flush=True)


def _ddp_rank_main(rank: int, world: int, master: str, port: int, network: str,
                   bucket_mb: float, steps: int) -> None:
    """Time DDP training steps (forward, backward with the bucketed all-reduce, SGD) of
    ``network`` on random MNIST-shaped data, buckets of ``bucket_mb``."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from networks import wide_mlp
    from sparkvision.models import build_model

    os.environ.update(MASTER_ADDR=master, MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="eth0")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    net = wide_mlp(10, (28, 28, 1)) if network == "wide_mlp" else build_model(
        network, 10, (28, 28, 1))
    batch = 256 if network == "wide_mlp" else 64
    ddp = DDP(net, bucket_cap_mb=bucket_mb, gradient_as_bucket_view=True)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    laps = []
    for i in range(steps + 3):
        dist.barrier()
        start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
        if i >= 3:
            laps.append(time.perf_counter() - start)
    lap = torch.tensor([statistics.median(laps)])
    dist.all_reduce(lap, op=dist.ReduceOp.MAX)
    dist.destroy_process_group()
    if rank == 0:
        print(json.dumps({"step_s": float(lap.item())}), flush=True)


def measure_buckets(cases: list[tuple[str, str | None]], buckets: list[float], steps: int
                    ) -> list[dict[str, Any]]:
    """DDP step time per bucket size on 2 emulated hosts, per (network, link rate)."""
    from tests.netns import HostNetwork

    rows = []
    with tempfile.TemporaryDirectory(prefix="sv-buckets-") as tmp, \
            HostNetwork(Path(tmp), 2) as net:
        for network, rate in cases:
            for host in net.hosts:
                host.limit_rate(rate)
            for bucket in buckets:
                port = _free_port()
                procs = [subprocess.Popen(
                    [*host.prefix(), sys.executable, __file__, "--rank", str(r),
                     "--world", "2", "--master", net.hosts[0].ip, "--port", str(port),
                     "--ddp", network, "--bucket-mb", str(bucket), "--repeats", str(steps)],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                    env=dict(os.environ, PYTHONPATH=f"{ROOT / 'bench'}:{ROOT}"))
                    for r, host in enumerate(net.hosts)]
                outs = [p.communicate(timeout=900) for p in procs]
                for p, (_, err) in zip(procs, outs, strict=True):
                    if p.returncode != 0:
                        raise SystemExit(f"rank failed ({p.returncode}): {err[-2000:]}")
                step = json.loads(outs[0][0].strip().splitlines()[-1])["step_s"]
                rows.append({"network": network, "rate": rate or "unshaped",
                             "bucket_mb": bucket, "step_s": step})
                print(f"  {network:>9} {rate or 'unshaped':>9} bucket {bucket:5.2f} MB: "
                      f"step {step * 1e3:8.1f} ms", flush=True)
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def measure(hosts: int, rates: list[str | None], sizes: list[int], repeats: int
            ) -> list[dict[str, Any]]:
    from tests.netns import HostNetwork

    rows = []
    with tempfile.TemporaryDirectory(prefix="sv-allreduce-") as tmp, \
            HostNetwork(Path(tmp), hosts) as net:
        for rate in rates:
            for host in net.hosts:
                host.limit_rate(rate)
            for world in range(2, hosts + 1):
                chosen = [s for s in sizes if rate != "100mbit" or s <= MAX_BYTES_SLOW]
                port = _free_port()
                procs = [subprocess.Popen(
                    [*host.prefix(), sys.executable, __file__, "--rank", str(r),
                     "--world", str(world), "--master", net.hosts[0].ip, "--port", str(port),
                     "--repeats", str(repeats), "--sizes", *map(str, chosen)],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
                    for r, host in enumerate(net.hosts[:world])]
                outs = [p.communicate(timeout=900) for p in procs]
                for p, (_, err) in zip(procs, outs, strict=True):
                    if p.returncode != 0:
                        raise SystemExit(f"rank failed ({p.returncode}): {err[-2000:]}")
                times = json.loads(outs[0][0].strip().splitlines()[-1])
                for size, seconds in sorted((int(k), v) for k, v in times.items()):
                    rows.append({"hosts": world, "rate": rate or "unshaped", "bytes": size,
                                 "seconds": seconds})
                    print(f"  {world} hosts {rate or 'unshaped':>9} {size / 2**20:8.3f} MB "
                          f"{seconds * 1e3:9.2f} ms", flush=True)
    return rows


# -- the model -------------------------------------------------------------------------------

def fit(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """α, β per (hosts, rate), one per regime: β from the least-squares slope of the
    bandwidth-bound sizes (≥ ``BANDWIDTH_BOUND``), α from the smallest message's time (where
    ``n·β`` is negligible). The relative error of the fitted line at every measured size."""
    import numpy as np

    fits: dict[str, dict[str, Any]] = {}
    for key in sorted({(r["hosts"], r["rate"]) for r in rows}):
        pts = sorted((r for r in rows if (r["hosts"], r["rate"]) == key),
                     key=lambda r: r["bytes"])
        p = key[0]
        big = [r for r in pts if r["bytes"] >= BANDWIDTH_BOUND]
        slope, _ = np.polyfit([r["bytes"] for r in big], [r["seconds"] for r in big], 1)
        beta = float(slope) * p / (2 * (p - 1))
        alpha = statistics.median(
            max(0.0, r["seconds"] - 2 * (p - 1) / p * r["bytes"] * beta) / (2 * (p - 1))
            for r in pts[:2])  # the two smallest sizes
        errors = {r["bytes"]: (ring_seconds(p, r["bytes"], alpha, beta) - r["seconds"])
                  / r["seconds"] for r in pts}
        fits[f"{key[0]}x{key[1]}"] = {
            "hosts": p, "rate": key[1], "alpha_us": alpha * 1e6,
            "bandwidth_gbit_s": 8 / beta / 1e9 if beta > 0 else None,
            "rel_error_by_bytes": errors,
            "max_rel_error_bandwidth_bound": max(abs(errors[r["bytes"]]) for r in big),
        }
    return fits


def ring_seconds(p: int, n: float, alpha: float, beta: float) -> float:
    return 2 * (p - 1) * alpha + 2 * (p - 1) / p * n * beta


def check_three_from_two(rows: list[dict[str, Any]], fits: dict[str, dict[str, Any]]
                         ) -> list[dict[str, Any]]:
    """The 3-host times the 2-host fit predicts, against the measured ones."""
    out = []
    for r in rows:
        two = fits.get(f"2x{r['rate']}")
        if r["hosts"] != 3 or two is None or not two["bandwidth_gbit_s"]:
            continue
        beta = 8 / (two["bandwidth_gbit_s"] * 1e9)
        predicted = ring_seconds(3, r["bytes"], two["alpha_us"] * 1e-6, beta)
        out.append({"rate": r["rate"], "bytes": r["bytes"], "measured_s": r["seconds"],
                    "bandwidth_bound": r["bytes"] >= BANDWIDTH_BOUND,
                    "predicted_s": predicted,
                    "rel_error": (predicted - r["seconds"]) / r["seconds"]})
    return out


def check_training(fits: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The model's all-reduce time per step for the trainings ``bench/multihost.py``
    measured on 2 emulated hosts (its results file), beside the measured time a step
    waited for it (which is lower where the all-reduce overlapped the backward pass)."""
    from common import RESULTS_DIR

    path = RESULTS_DIR / "multihost.json"
    if not path.exists():
        return []
    from networks import wide_mlp

    params = {"cnn": cnn_parameters(),
              "wide_mlp": sum(p.numel() for p in wide_mlp(10, (28, 28, 1)).parameters())}
    out = []
    for pair in json.loads(path.read_text()).get("pairs", []):
        fitted = fits.get("2x" + ("unshaped" if pair["rate"] == "unlimited" else pair["rate"]))
        if fitted is None or pair["network"] not in params or not fitted["bandwidth_gbit_s"]:
            continue
        beta = 8 / (fitted["bandwidth_gbit_s"] * 1e9)
        for compression, width in (("none", 4), ("fp16", 2)):
            predicted = ring_seconds(2, params[pair["network"]] * width,
                                     fitted["alpha_us"] * 1e-6, beta)
            out.append({"network": pair["network"], "rate": pair["rate"],
                        "compression": compression, "predicted_ms": predicted * 1e3,
                        "measured_wait_ms": pair[f"allreduce_ms_{compression}"]})
    return out


def cnn_parameters() -> int:
    from sparkvision.models import build_model

    net = build_model("cnn", 10, (28, 28, 1))
    return sum(p.numel() for p in net.parameters())


def predict(link_efficiency: float, gloo_alpha_s: float) -> list[dict[str, Any]]:
    """Step time and efficiency at the target scales. ``link_efficiency``: the share of a
    link's nominal rate that gloo's ring reached here (applied to the targets);
    ``gloo_alpha_s``: the per-hop latency gloo showed here (software and scheduling on
    this 2-core machine), the pessimistic α beside the data-centre one."""
    networks = {"cnn": cnn_parameters(), **NETWORKS}
    rows = []
    for name, params in networks.items():
        compute = COMPUTE_S[name]
        for gbit in TARGET_GBITS:
            beta = 8 / (gbit * 1e9 * link_efficiency)
            for compression, width in (("none", 4), ("fp16", 2)):
                n = params * width
                bucket = min(n, BUCKET_BYTES * width / 4)
                for hosts in TARGET_HOSTS:
                    row: dict[str, Any] = {"network": name, "parameters": params,
                                           "gbit_s": gbit, "compression": compression,
                                           "hosts": hosts, "compute_s": compute}
                    for label, alpha in (("", TARGET_ALPHA_S), ("_gloo_alpha", gloo_alpha_s)):
                        comm = ring_seconds(hosts, n, alpha, beta)
                        last = ring_seconds(hosts, bucket, alpha, beta)
                        overlapped = compute + max(comm - BACKWARD_SHARE * compute, last)
                        row[f"allreduce_s{label}"] = comm
                        row[f"efficiency{label}"] = compute / overlapped
                        row[f"efficiency_no_overlap{label}"] = compute / (compute + comm)
                    rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--world", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--master", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--sizes", type=int, nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--ddp", help=argparse.SUPPRESS)
    ap.add_argument("--bucket-mb", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--buckets", action="store_true",
                    help="only the DDP bucket-size runs, added to the results file")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="3 sizes, 3 repeats")
    ap.add_argument("--refit", action="store_true",
                    help="fit and predict again from the measurements in the results file")
    args = ap.parse_args()
    if args.rank is not None and args.ddp:
        _ddp_rank_main(args.rank, args.world, args.master, args.port, args.ddp,
                       args.bucket_mb, args.repeats)
        return
    if args.rank is not None:
        _rank_main(args.rank, args.world, args.master, args.port, args.sizes, args.repeats)
        return

    from common import machine, write_result

    if args.buckets:
        from common import RESULTS_DIR

        path = RESULTS_DIR / "allreduce_model.json"
        previous = json.loads(path.read_text())
        previous["ddp_buckets"] = {
            "what": "DDP step (forward, backward with the bucketed gloo all-reduce, SGD) on 2 "
                    "emulated hosts x 1 process, random MNIST-shaped batches (cnn 64, "
                    "wide_mlp 256), median of 10 steps after 3; bucket_cap_mb varied",
            "machine": machine(), "rows": measure_buckets(BUCKET_CASES, BUCKETS_MB, 10)}
        path.write_text(json.dumps(previous, indent=2) + "\n")
        return
    sizes, repeats = (QUICK_SIZES, 3) if args.quick else (SIZES, args.repeats)
    started = time.time()
    if args.refit:
        from common import RESULTS_DIR

        previous = json.loads((RESULTS_DIR / "allreduce_model.json").read_text())
        rows, repeats = previous["measured"], previous["repeats"]
    else:
        rows = measure(args.hosts, RATES, sizes, repeats)
    fits = fit(rows)
    shaped = [f for f in fits.values() if f["rate"] != "unshaped" and f["bandwidth_gbit_s"]]
    # how much of the nominal rate the ring reached (tbf's rate is the nominal one)
    nominal = {"1gbit": 1.0, "100mbit": 0.1}
    efficiency = statistics.median(f["bandwidth_gbit_s"] / nominal[f["rate"]] for f in shaped)
    check = check_three_from_two(rows, fits)
    gloo_alpha = statistics.median(f["alpha_us"] for f in fits.values()
                                   if f["alpha_us"] > 0) * 1e-6
    predictions = predict(min(1.0, efficiency), gloo_alpha)
    training = check_training(fits)
    if training:
        print("\ntrainings on 2 hosts (bench/multihost.py): model all-reduce vs measured wait")
        for t in training:
            print(f"  {t['network']:>9} {t['rate']:>9} {t['compression']:>5}: model "
                  f"{t['predicted_ms']:8.1f} ms, waited {t['measured_wait_ms']:8.1f} ms")
    print("\nfit (T = 2(p-1)α + 2(p-1)/p·n·β):")
    for key, f in fits.items():
        print(f"  {key:>14}: α {f['alpha_us']:8.1f} µs, bandwidth "
              f"{f['bandwidth_gbit_s'] or float('nan'):7.3f} Gbit/s, max error "
              f"{f['max_rel_error_bandwidth_bound']:.0%} (sizes >= 512 KB)")
    for bound in (True, False):
        errs = [abs(c["rel_error"]) for c in check if c["bandwidth_bound"] == bound]
        if errs:
            print(f"3 hosts predicted from the 2-host fit, {'>=' if bound else '<'} 512 KB: "
                  f"median error {statistics.median(errs):.0%}, worst {max(errs):.0%}")
    print(f"link efficiency (ring bandwidth / nominal rate): {efficiency:.2f}")
    print(f"gloo's α here: {gloo_alpha * 1e6:.0f} µs")
    print("\npredicted efficiency (compute / step), α 25 µs [no overlap] (gloo's α here):")
    for r in predictions:
        print(f"  {r['network']:>9} {r['gbit_s']:>4} Gbit/s {r['compression']:>5} "
              f"{r['hosts']:>3} hosts: all-reduce {r['allreduce_s'] * 1e3:8.1f} ms, "
              f"efficiency {r['efficiency']:.0%} [{r['efficiency_no_overlap']:.0%}] "
              f"({r['efficiency_gloo_alpha']:.0%})")
    write_result("allreduce_model", {
        "benchmark": "allreduce_model", "machine": machine(),
        "seconds": round(time.time() - started, 1), "repeats": repeats,
        "measured": rows, "fits": fits, "three_hosts_from_two": check,
        "trainings_on_two_hosts": training,
        "link_efficiency": efficiency, "gloo_alpha_us": gloo_alpha * 1e6,
        "assumptions": {"compute_s_per_step": COMPUTE_S, "backward_share": BACKWARD_SHARE,
                        "target_alpha_us": TARGET_ALPHA_S * 1e6,
                        "ddp_bucket_bytes": BUCKET_BYTES,
                        "target_gbit_s": list(TARGET_GBITS), "target_hosts": list(TARGET_HOSTS),
                        "parameters": {"cnn": cnn_parameters(), **NETWORKS}},
        "predictions": predictions,
    })


if __name__ == "__main__":
    main()
