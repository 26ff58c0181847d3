"""Benchmark: zoo networks on real photos — training loop and batch inference of sparkvision
vs plain PyTorch, predict_batch_udf and ONNX Runtime alone, same data, same run.

Data: the built-in ``scenes`` (480 crops of 6 real photos, 128×128 RGB, 6 classes), prepared
with ``sparkvision.prepare`` (all rows in ``train``). Networks: ``timm:resnet18`` and
``timm:mobilenetv3_small_100`` (random init: throughput does not depend on the weights).

- Training: ``ImageClassifier`` (2 workers × 1 thread, ``local[2]``, batch ``--batch``/2 per
  worker, no augmentation, Adam, constant lr) — the loop time is the sum of the epochs'
  ``seconds`` of the model's history — vs plain PyTorch in a process of its own with
  ``torch.set_num_threads(2)``: the same images, global batch, epochs, optimizer, and the
  model's own normalisation (``normalize(x, model.getInputMean(), model.getInputStd())``).
- Batch inference on ``--rows`` rows cached in Spark memory (the scenes repeated), written to
  Spark's ``noop`` sink: the fitted model's ``transform`` (default ``inferenceBackend``:
  ``auto``) vs ``pyspark.ml.functions.predict_batch_udf`` (same weights, ``array<float>``
  pixels column cached alongside — each variant drops the other's input column — 1 torch
  thread per task) vs, in a process of its own, plain
  PyTorch with 2 threads and ONNX Runtime alone on the same exported graph
  (``sparkvision.models.export.onnx_bytes``): one session with 2 intra-op threads in a plain
  loop (the baseline of the target), and also 2 Python threads × 1-thread sessions, the
  split sparkvision's two tasks use. Same ``--infer-batch`` images per forward pass for all.
  One warm-up pass each (Python workers start, networks load/export), then ``--repeats``
  interleaved rounds (variant order rotates); medians.
- CPU seconds of the JVM and of the workers during each Spark variant (where the time goes
  on 2 cores shared by both).
- Peak RSS per worker: the resident set (VmRSS, sampled every 0.1 s) of each Python process
  that did the work — the Spark Python workers (children of the JVM) that used CPU during
  the variant, or the baseline's own process. Spark reuses its Python workers (the same two
  train and then predict) and the inference baselines share one process, so an inference
  figure includes what earlier variants left there (networks, allocator pools).

Run: ``.venv-zoo/bin/python bench/photos.py`` (``--quick``: a short smoke run)
→ bench/results/photos.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ensure_glibc_tunables, write_result  # noqa: E402

MODELS = ("timm:resnet18", "timm:mobilenetv3_small_100")
#: inference rows per network (a few seconds a variant here; mobilenet runs faster)
ROWS = {"timm:resnet18": 1440, "timm:mobilenetv3_small_100": 2880}
TARGETS = {
    "train_loop_vs_plain_pytorch": 0.95,
    "transform_vs_plain_pytorch": 1.0,
    "transform_vs_predict_batch_udf": 1.5,
    "transform_vs_onnxruntime_alone": 0.9,
}
SPARK_CONF = {"spark.driver.memory": "2g"}  # room to cache the pixels column of pbu


# ----------------------------------------------------------------------------- RSS sampling


def _proc_table() -> dict[int, tuple[int, str, float]]:
    """pid → (parent pid, command name, CPU seconds) of every process we can read."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / tick)
    return table


def _is_python_worker(pid: int) -> bool:
    try:
        return b"pyspark.worker" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class RssSampler:
    """Samples, while a variant runs, the VmRSS of the Python processes under the JVM and
    of any baseline process; a variant's workers are those that used CPU meanwhile."""

    def __init__(self, jvm_pid: int) -> None:
        self.jvm_pid = jvm_pid
        self.extra: set[int] = set()
        self._lock = threading.Lock()
        self._peak: dict[int, float] | None = None
        self._cpu0: dict[int, float] = {}
        self._only: set[int] | None = None
        self._jvm0 = self._wall0 = 0.0
        self.last_cpu: dict[str, float | None] = {}
        threading.Thread(target=self._loop, daemon=True, name="rss-sampler").start()

    def _pids(self) -> dict[int, float]:
        """pid → CPU seconds of the Spark Python workers (``pyspark.worker``, forked by
        the daemon under the JVM; not the daemon, not the data source workers) and of the
        baseline processes."""
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        found = {pid: table[pid][2] for pid in self.extra if pid in table}
        for daemon in children.get(self.jvm_pid, []):
            for pid in children.get(daemon, []):
                if _is_python_worker(pid):
                    found[pid] = table[pid][2]
        return found

    def _loop(self) -> None:
        while True:
            time.sleep(0.1)
            with self._lock:
                if self._peak is None:
                    continue
                for pid in self._pids():
                    rss = _rss_mb(pid)
                    if rss is not None:
                        self._peak[pid] = max(self._peak.get(pid, 0.0), rss)

    def _jvm_cpu(self) -> float:
        return _proc_table().get(self.jvm_pid, (0, "", 0.0))[2]

    def start(self, pids: set[int] | None = None) -> None:
        """Watch the Spark workers, or only ``pids``."""
        with self._lock:
            self._only = pids
            self._cpu0 = self._pids()
            self._jvm0 = self._jvm_cpu()
            self._wall0 = time.perf_counter()
            self._peak = {}

    def stop(self) -> list[float]:
        """Peak RSS (MB) of each process that worked since ``start``, largest first."""
        with self._lock:
            cpu1 = self._pids()
            peak, self._peak = self._peak or {}, None
            jvm = self._jvm_cpu() - self._jvm0
        busy = [pid for pid, cpu in cpu1.items() if cpu - self._cpu0.get(pid, 0.0) >= 0.05
                and (pid in self._only if self._only is not None else pid not in self.extra)]
        # where the CPU went meanwhile (the JVM: Spark's own work, in local mode all of it)
        self.last_cpu = {
            "wall_s": round(time.perf_counter() - self._wall0, 2),
            "jvm_cpu_s": None if self._only is not None else round(jvm, 2),
            "workers_cpu_s": round(sum(cpu1[p] - self._cpu0.get(p, 0.0) for p in busy), 2)}
        return sorted((round(peak[p], 1) for p in busy if p in peak), reverse=True)


# ----------------------------------------------------------------------------- baselines
# The plain baselines run in a process of their own (``--serve``), so their RSS is theirs
# alone: JSON requests on stdin, one JSON line per answer on stdout.


def _serve() -> None:
    import numpy as np
    import torch

    torch.set_num_threads(2)
    state: dict = {}
    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not mix with the answers
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        if op == "load":
            state.update(req)
            data = np.load(req["npz"])
            images = data["images"]
            if req.get("rows"):  # inference: the images repeated to the Spark rows' count
                images = np.resize(images, (req["rows"], *images.shape[1:]))
            state["nhwc"] = np.ascontiguousarray(images)
            state["labels"] = torch.from_numpy(np.resize(data["labels"], len(images))
                                               .astype(np.int64))
            state["nchw"] = torch.from_numpy(state["nhwc"].transpose(0, 3, 1, 2).copy())
            answer: dict = {"ok": True}
        elif op == "train":
            answer = _plain_train(state, req["epochs"], req["batch"])
        elif op == "torch":
            answer = _plain_infer(state, req["batch"])
        elif op == "onnxruntime":
            answer = _ort_infer(state, req["batch"], req["split"])
        else:
            raise SystemExit(f"unknown op {op}")
        out.write(json.dumps(answer) + "\n")
        out.flush()


def _network(state: dict):
    from sparkvision.models import build_model
    from sparkvision.models.weights import load_state_dict_bytes

    net = build_model(state["model"], state["num_classes"], tuple(state["image_shape"]))
    if state.get("weights"):
        net.load_state_dict(load_state_dict_bytes(Path(state["weights"]).read_bytes()))
    return net


def _plain_train(state: dict, epochs: int, batch: int) -> dict:
    import torch

    from sparkvision.models.preprocess import normalize

    x, y = state["nchw"], state["labels"]
    mean, std = state["mean"], state["std"]
    torch.manual_seed(0)
    net = _network(state).train()
    opt = torch.optim.Adam(net.parameters(), lr=0.003)
    steps = len(x) // batch
    started = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for s in range(steps):
            idx = perm[s * batch : (s + 1) * batch]
            loss = torch.nn.functional.cross_entropy(net(normalize(x[idx], mean, std)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return {"seconds": time.perf_counter() - started, "samples": steps * batch * epochs}


def _plain_infer(state: dict, batch: int) -> dict:
    import torch

    from sparkvision.models.preprocess import predict_proba

    if "torch_net" not in state:
        state["torch_net"] = _network(state).eval()
    started = time.perf_counter()
    probs = predict_proba(state["torch_net"], state["nchw"], batch, state["mean"], state["std"])
    seconds = time.perf_counter() - started
    assert probs.shape == (len(state["nchw"]), state["num_classes"]) and torch.isfinite(probs).all()
    return {"seconds": seconds}


def _ort_infer(state: dict, batch: int, split: bool) -> dict:
    """ONNX Runtime alone on the exported graph: one session × 2 intra-op threads, or
    (``split``) 2 Python threads each running half the rows on a 1-thread session."""
    import numpy as np
    import onnxruntime as ort

    from sparkvision.models.export import INPUT_NAME

    key = f"ort_{split}"
    if key not in state:
        graph = Path(state["onnx"]).read_bytes()

        def session(threads: int):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

        state[key] = [session(1), session(1)] if split else [session(2)]
    sessions, images = state[key], state["nhwc"]

    def run(sess, part: np.ndarray) -> None:
        for s in range(0, len(part), batch):
            sess.run(["logits"], {INPUT_NAME: part[s : s + batch]})

    started = time.perf_counter()
    if split:
        half = len(images) // 2
        threads = [threading.Thread(target=run, args=(sess, part))
                   for sess, part in zip(sessions, (images[:half], images[half:]), strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        run(sessions[0], images)
    return {"seconds": time.perf_counter() - started}


class Baseline:
    """A ``--serve`` process: the plain baselines, timed inside it."""

    def __init__(self, sampler: RssSampler, **load) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve"], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.sampler = sampler
        sampler.extra.add(self.proc.pid)
        self.ask(op="load", **load)

    def ask(self, **req) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the baseline process died on {req['op']} (its stderr above)")
        return json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.sampler.extra.discard(self.proc.pid)


# ----------------------------------------------------------------------------- the runs


def _measured(sampler: RssSampler, fn: Callable[[], float],
              pid: int | None = None) -> tuple[float, list[float]]:
    """(what ``fn`` returns, peak RSS per worker): of the Spark workers, or of ``pid``."""
    sampler.start(None if pid is None else {pid})
    try:
        seconds = fn()
    finally:
        rss = sampler.stop()
    return seconds, rss


def _wall(fn: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started
    return run


def _stats(model) -> tuple[list[float], list[float]]:
    """The model's input normalisation (empty before the models carried one)."""
    get_mean, get_std = getattr(model, "getInputMean", None), getattr(model, "getInputStd", None)
    mean = list(get_mean()) if get_mean else []
    std = list(get_std()) if get_std else []
    return mean, std


def _rate(items: list[dict], key: str) -> float:
    return round(statistics.median(i["samples"] / i[key] for i in items), 1)


def train_both(sampler: RssSampler, name: str, train, load: dict, rows: int,
               args) -> tuple[dict, object]:
    """Training loop: sparkvision vs plain PyTorch, ``args.train_repeats`` rounds
    (sparkvision first in even rounds: the first plain run needs the fitted model's
    normalisation); returns the results and the last fitted model."""
    from sparkvision import ImageClassifier

    runs: dict[str, list[dict]] = {"sparkvision_2x1": [], "plain_pytorch_2_threads": []}
    fitted: list = []

    def run_sparkvision() -> None:
        clf = ImageClassifier(model=name, numWorkers=2, epochs=args.epochs,
                              batchSize=args.batch // 2, augment="none",
                              lrSchedule="constant", seed=0)
        started = time.perf_counter()
        model, rss = _measured(sampler, lambda: clf.fit(train))
        end_to_end = time.perf_counter() - started
        cpu = sampler.last_cpu
        fitted.append(model)
        h = model.history
        runs["sparkvision_2x1"].append({
            "samples": h.steps_per_epoch * args.batch * args.epochs,
            "loop_seconds": sum(e.seconds for e in h.epochs),
            "end_to_end_seconds": end_to_end, "peak_rss_mb_per_worker": rss,
            "cpu_seconds": cpu, "epoch_seconds": [round(e.seconds, 2) for e in h.epochs],
            "train_accuracy_last_epoch": round(h.epochs[-1].train_accuracy, 3)})

    def run_plain() -> None:
        mean, std = _stats(fitted[-1])
        base = Baseline(sampler, **load, mean=mean, std=std)
        try:
            seconds, rss = _measured(sampler, lambda: base.ask(
                op="train", epochs=args.epochs, batch=args.batch)["seconds"], base.proc.pid)
        finally:
            base.close()
        runs["plain_pytorch_2_threads"].append({
            "samples": (rows // args.batch) * args.batch * args.epochs,
            "loop_seconds": seconds, "end_to_end_seconds": seconds,
            "peak_rss_mb_per_worker": rss})

    for r in range(args.train_repeats):
        for run in (run_sparkvision, run_plain) if r % 2 == 0 else (run_plain, run_sparkvision):
            run()
    results = {}
    for variant, items in runs.items():
        results[variant] = {
            "samples": items[0]["samples"],
            "loop_images_per_s": _rate(items, "loop_seconds"),
            "end_to_end_images_per_s": _rate(items, "end_to_end_seconds"),
            "loop_seconds_runs": [round(i["loop_seconds"], 2) for i in items],
            "peak_rss_mb_per_worker": max((i["peak_rss_mb_per_worker"] for i in items),
                                          key=lambda v: v[:1]),
            **{k: items[-1][k] for k in ("epoch_seconds", "train_accuracy_last_epoch",
                                         "cpu_seconds")
               if k in items[-1]},
        }
    return results, fitted[-1]


def infer_all(spark, sampler: RssSampler, name: str, model, base_df, load: dict,
              tmp: Path, args) -> dict:
    """Batch inference of every variant on ``args.rows`` rows: one warm-up each (on the
    480 base rows, 2 partitions), then ``args.repeats`` interleaved rounds."""
    import numpy as np
    import torch
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType

    from sparkvision.models import build_model
    from sparkvision.models.export import onnx_bytes
    from sparkvision.models.preprocess import predict_proba
    from sparkvision.models.weights import load_state_dict_bytes

    mean, std = _stats(model)
    shape, k, batch = (128, 128, 3), len(load["classes"]), args.infer_batch
    weights = model.weights
    weights_path = tmp / "weights.safetensors"
    weights_path.write_bytes(weights)
    net = build_model(name, k, shape)
    net.load_state_dict(load_state_dict_bytes(weights))
    started = time.perf_counter()
    graph = onnx_bytes(net.eval(), shape, "logits", name=name, mean=mean, std=std)
    export_seconds = time.perf_counter() - started
    onnx_path = tmp / "net.onnx"
    onnx_path.write_bytes(graph)

    # array<float> pixels for predict_batch_udf (it cannot read binary columns)
    to_floats = F.udf(lambda b: np.frombuffer(b, np.uint8).astype(np.float32).tolist(),
                      ArrayType(FloatType()))
    want = args.rows or ROWS.get(name, 1440)
    reps = -(-want // base_df.count())
    big = (base_df.crossJoin(spark.range(reps).withColumnRenamed("id", "rep"))
           .limit(want).repartition(2))
    big = big.withColumn("pixels", to_floats("image")).cache()
    rows = big.count()
    small = base_df.repartition(2).withColumn("pixels", to_floats("image")).cache()
    small.count()

    def make_predict_fn():
        torch.set_num_threads(1)
        pnet = build_model(name, k, shape)
        pnet.load_state_dict(load_state_dict_bytes(weights_path.read_bytes()))
        pnet.eval()

        def predict(x: np.ndarray) -> np.ndarray:
            imgs = torch.from_numpy(x.reshape(-1, *shape).astype(np.uint8)).permute(0, 3, 1, 2)
            return predict_proba(pnet, imgs.contiguous(), batch, mean, std).numpy()

        return predict

    pbu = predict_batch_udf(make_predict_fn, return_type=ArrayType(FloatType()),
                            batch_size=batch, input_tensor_shapes=[[int(np.prod(shape))]])
    ours = model.copy().setInferenceBatchSize(batch)

    def spark_run(df, job) -> Callable[[], float]:
        return _wall(lambda: job(df).write.format("noop").mode("overwrite").save())

    # each reads only its own input column of the cache (the other one is dropped)
    def sv_job(df):
        return ours.transform(df.drop("pixels"))

    def pbu_job(df):
        return df.drop("image").withColumn("probabilities", pbu("pixels"))

    baseline = Baseline(sampler, **load, rows=rows, mean=mean, std=std,
                        weights=str(weights_path), onnx=str(onnx_path))
    try:
        def ask(op: str, **kw) -> Callable[[], float]:
            return lambda: baseline.ask(op=op, batch=batch, **kw)["seconds"]

        pid = baseline.proc.pid
        variants = {  # (warm-up, timed run, the process to watch: None = Spark's workers)
            "sparkvision_transform": (spark_run(small, sv_job), spark_run(big, sv_job), None),
            "predict_batch_udf": (spark_run(small, pbu_job), spark_run(big, pbu_job), None),
            "plain_pytorch_2_threads": (ask("torch"), ask("torch"), pid),
            "onnxruntime_alone_2_threads": (*(ask("onnxruntime", split=False),) * 2, pid),
            "onnxruntime_alone_2x1_threads": (*(ask("onnxruntime", split=True),) * 2, pid),
        }
        for warm, _, _ in variants.values():
            warm()
        times: dict[str, list[float]] = {v: [] for v in variants}
        rss: dict[str, list[float]] = {v: [] for v in variants}
        cpu: dict[str, dict] = {}
        names = list(variants)
        for r in range(args.repeats):
            for v in names[r % len(names):] + names[: r % len(names)]:
                seconds, peak = _measured(sampler, variants[v][1], variants[v][2])
                times[v].append(seconds)
                rss[v] = max(rss[v], peak, key=lambda p: p[:1])
                cpu[v] = sampler.last_cpu  # of the last round
    finally:
        baseline.close()
        big.unpersist()
        small.unpersist()
    rates = {v: round(rows / statistics.median(ts), 1) for v, ts in times.items()}
    return {
        "rows": rows, "batch": batch, "onnx_export": {"seconds": round(export_seconds, 3),
                                                      "bytes": len(graph)},
        "images_per_s": rates,
        "images_per_s_runs": {v: [round(rows / t, 1) for t in ts] for v, ts in times.items()},
        "peak_rss_mb_per_worker": rss,
        "cpu_seconds_last_round": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: mobilenet only, 1 epoch, 960 inference rows, 1 round")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-repeats", type=int, default=2,
                        help="training rounds (the order alternates)")
    parser.add_argument("--batch", type=int, default=96,
                        help="global training batch (96: 480 rows in 5 full steps)")
    parser.add_argument("--rows", type=int, default=0,
                        help=f"inference rows (default: per network, {ROWS})")
    parser.add_argument("--infer-batch", type=int, default=64,
                        help="images per forward pass (every inference variant)")
    parser.add_argument("--repeats", type=int, default=3, help="inference rounds")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve()
        return
    if args.quick:
        args.epochs, args.rows, args.repeats, args.train_repeats = 1, 960, 1, 1
        args.models = MODELS[-1]
    ensure_glibc_tunables()
    begun = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)

    import numpy as np
    import torch

    from sparkvision import PrepareConfig, get_spark, load_prepared, prepare
    from sparkvision.data.builtin import load_builtin
    from sparkvision.settings import OutputSettings, row

    spark = get_spark("local[2]", app_name="bench-photos", conf=SPARK_CONF)
    sampler = RssSampler(spark.sparkContext._gateway.proc.pid)
    tmp = Path(tempfile.mkdtemp(prefix="sv-bench-photos-"))
    prepare(spark, PrepareConfig(source="scenes", out=str(tmp / "data"), split=(1.0, 0.0, 0.0)))
    train = load_prepared(spark, str(tmp / "data"), "train").cache()
    rows = train.count()
    ds = load_builtin("scenes")  # the same 480 images, for the plain baselines
    npz = tmp / "scenes.npz"
    np.savez(npz, images=ds.images, labels=ds.labels)
    load = {"npz": str(npz), "classes": list(ds.classes), "num_classes": len(ds.classes),
            "image_shape": list(ds.image_shape)}

    results: dict[str, dict] = {}
    for name in args.models.split(","):
        print(f"{name}: training", flush=True)
        training, model = train_both(sampler, name, train, dict(load, model=name), rows, args)
        print(f"{name}: inference", flush=True)
        inference = infer_all(spark, sampler, name, model, train, dict(load, model=name),
                              tmp, args)
        mean, std = _stats(model)
        t, r = training, inference["images_per_s"]
        ratios = {
            "train_loop_vs_plain_pytorch": round(
                t["sparkvision_2x1"]["loop_images_per_s"]
                / t["plain_pytorch_2_threads"]["loop_images_per_s"], 3),
            "train_end_to_end_vs_plain_pytorch": round(
                t["sparkvision_2x1"]["end_to_end_images_per_s"]
                / t["plain_pytorch_2_threads"]["end_to_end_images_per_s"], 3),
            "transform_vs_plain_pytorch": round(
                r["sparkvision_transform"] / r["plain_pytorch_2_threads"], 3),
            "transform_vs_predict_batch_udf": round(
                r["sparkvision_transform"] / r["predict_batch_udf"], 3),
            "transform_vs_onnxruntime_alone": round(
                r["sparkvision_transform"] / r["onnxruntime_alone_2_threads"], 3),
            "transform_vs_onnxruntime_alone_2x1": round(
                r["sparkvision_transform"] / r["onnxruntime_alone_2x1_threads"], 3),
        }
        results[name] = {
            "input_mean": mean, "input_std": std, "training": training,
            "inference": inference, "ratios": ratios,
            "targets_met": {key: ratios[key] >= v for key, v in TARGETS.items()},
        }
        for key, v in ratios.items():
            print(f"  {key:38s} {v:.3f}" + ("" if key not in TARGETS else
                  f"  (target >= {TARGETS[key]}: {'met' if v >= TARGETS[key] else 'NOT met'})"))
    import onnxruntime
    import timm

    path = write_result("photos", {
        "data": f"scenes (built-in: {len(ds.images)} random crops of {len(ds.classes)} real "
                "photos from scikit-image and scikit-learn, 128x128 RGB)",
        "classes": list(ds.classes), "quick": args.quick, "spark_master": "local[2]",
        "spark_conf": SPARK_CONF,
        "versions": {"torch": torch.__version__, "timm": timm.__version__,
                     "onnxruntime": onnxruntime.__version__},
        "torch_threads_plain": 2, "cores": os.cpu_count(),
        "load_avg_1m_start": load_start, "load_avg_1m_end": round(os.getloadavg()[0], 2),
        "epochs": args.epochs, "global_batch": args.batch, "train_repeats": args.train_repeats,
        "inference_repeats": args.repeats,
        "default_backend": row(OutputSettings, "inferenceBackend").default,
        "statistic": "median over interleaved repeats (training: alternating rounds)",
        "models": results,
        "targets": {k: f">= {v}" for k, v in TARGETS.items()},
        "targets_met": {k: all(m["targets_met"][k] for m in results.values()) for k in TARGETS},
        "seconds_total": round(time.perf_counter() - begun, 1),
    })
    print(f"wrote {path} in {time.perf_counter() - begun:.0f} s")
    spark.stop()


if __name__ == "__main__":
    main()
