"""Executor side of ``ImageClassificationModel.transform``: Arrow batches in, predictions out.

The network and its runner (eager torch, or the network exported to ONNX and run by ONNX
Runtime) come from the worker's network cache (``network_cache.py``: built once per Python
worker, keyed by the weights' content). Only the image column travels to Python; logits and
probabilities come back as ``array<double>`` and become pyspark.ml vectors in the JVM
(``array_to_vector``), where that is cheapest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from sparkvision.config import PredictConfig
from sparkvision.extras import install_hint
from sparkvision.inference.arrays import image_batch, list_array, typed_arrow_udf
from sparkvision.inference.network_cache import NETWORKS, TrainedNetwork

_WARNED: list[bool] = []  # the auto backend's fallback warning, once per Python worker
_log = logging.getLogger(__name__)

#: A runner maps uint8 (N, H, W, C) images (numpy) to float32 (N, K) logits (numpy).
Runner = Callable[[np.ndarray], np.ndarray]

#: Fields of the struct the UDF returns, in order.
RESULT_FIELDS = ("rawPrediction", "probability", "prediction", "predictedLabel", "confidence")
RESULT_DDL = (
    "rawPrediction ARRAY<DOUBLE>, probability ARRAY<DOUBLE>, prediction DOUBLE, "
    "predictedLabel STRING, confidence DOUBLE"
)


def torch_runner(net: Any, batch_size: int, mean: tuple[float, ...] = (),
                 std: tuple[float, ...] = ()) -> Runner:
    """Eager PyTorch on the calling thread(s), normalising with ``mean``/``std``."""

    def run(images_nhwc: np.ndarray) -> np.ndarray:
        return predict_logits_array(net, images_nhwc, batch_size, mean, std)

    return run


def graph_runner(graph: bytes, batch_size: int) -> Runner:
    """An ONNX graph of ``onnx_bytes`` (uint8 NHWC in, logits out; the scaling is in the
    graph) run by ONNX Runtime on one thread, ``batch_size`` images per call, straight from
    the uint8 array (no torch tensor, no copy). Imports no torch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(images_nhwc: np.ndarray) -> np.ndarray:
        outs = [session.run(["logits"], {input_name: images_nhwc[s : s + batch_size]})[0]
                for s in range(0, len(images_nhwc), batch_size)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    return run


def onnxruntime_runner(
    net: Any, image_shape: tuple[int, int, int], batch_size: int, name: str = "",
    mean: tuple[float, ...] = (), std: tuple[float, ...] = (),
) -> Runner:
    """The network exported to ONNX here and run by :func:`graph_runner`."""
    from sparkvision.models.export import onnx_bytes

    return graph_runner(onnx_bytes(net, image_shape, "logits", name=name, mean=mean,
                                   std=std), batch_size)


def build_runner(config: PredictConfig, net: Any) -> tuple[str, Runner]:
    """(backend that runs, runner) of the network ``net`` (``config``'s, eval mode) for
    ``config.backend``: ``torch``, ``onnxruntime`` (a MissingDependencyError naming the
    install command when it is not installed here), or ``auto``: onnxruntime when it is
    installed, the network exports and the exported graph agrees with torch on a probe
    batch; else torch, with one warning saying why."""
    from sparkvision.models.export import (
        missing_onnx_packages,
        require_onnx,
    )

    stats = (config.input_mean, config.input_std)
    torch_run = torch_runner(net, config.batch_size, *stats)
    if config.backend == "torch":
        return "torch", torch_run
    if config.backend == "onnxruntime":
        require_onnx("inferenceBackend='onnxruntime'")
        return "onnxruntime", onnxruntime_runner(net, config.image_shape, config.batch_size,
                                                 config.model, *stats)
    missing = missing_onnx_packages()
    if missing:
        reason = f"{' and '.join(missing)} not installed ({install_hint('onnx')})"
    else:
        try:
            ort_run = onnxruntime_runner(net, config.image_shape, config.batch_size,
                                         config.model, *stats)
            reason = _disagreement(ort_run, torch_run, config.image_shape)
        except Exception as exc:  # noqa: BLE001 - auto falls back on any export/runtime error
            reason = f"{type(exc).__name__}: {exc}"
        if not reason:
            return "onnxruntime", ort_run
    if not _WARNED:
        _WARNED.append(True)
        _log.warning("inferenceBackend='auto' runs network %r with torch: %s",
                     config.model, reason)
    return "torch", torch_run


def _disagreement(a: Runner, b: Runner, image_shape: tuple[int, int, int]) -> str:
    """'' when two runners give the same logits on a fixed random probe batch, else why."""
    probe = np.random.default_rng(0).integers(0, 256, (4, *image_shape), dtype=np.uint8)
    la, lb = a(probe), b(probe)
    diff = float(np.abs(la - lb).max())
    if diff <= 1e-3 * (1.0 + float(np.abs(lb).max())):
        return ""
    return f"the ONNX graph's logits differ from torch's by {diff:.3g} on a probe batch"


def runner_for(config: PredictConfig, trained: TrainedNetwork) -> Runner:
    """This worker's runner of ``trained`` for ``config``'s backend and batch size (built
    once, on the worker's cached network)."""
    return NETWORKS.part(trained, f"predict:{config.backend}:{config.batch_size}",
                         lambda net: build_runner(config, net)[1])


@dataclass(frozen=True)
class DriverChoice:
    """What the driver decided, once, for ``build_runner``'s backend choice: ``backend``
    ``onnxruntime`` with the exported ``graph``, ``torch``, or ``""`` (the workers decide,
    as ``build_runner`` does: the onnx packages are not installed on the driver)."""

    backend: str = ""
    graph: bytes | None = field(default=None, repr=False)


def choose_on_driver(config: PredictConfig) -> DriverChoice:
    """``build_runner``'s choice made here, once, instead of in every Python worker: the
    network exported to ONNX (and, for ``auto``, checked against torch on the probe batch)
    on the driver, so a worker only opens an ONNX Runtime session (it imports no torch and
    builds no network). ``torch`` stays torch; ``auto`` whose export fails or disagrees is
    torch (one warning, here); without the onnx packages here the workers decide."""
    from sparkvision.models.export import missing_onnx_packages, onnx_bytes
    from sparkvision.models.weights import trained_network

    if config.backend == "torch":
        return DriverChoice("torch")
    if missing_onnx_packages():
        return DriverChoice()
    net = trained_network(config.model, config.num_classes, config.image_shape,
                          config.weights)
    def export() -> bytes:
        return onnx_bytes(net, config.image_shape, "logits", name=config.model,
                          mean=config.input_mean, std=config.input_std)

    if config.backend == "onnxruntime":  # an export error is raised here, before any job
        return DriverChoice("onnxruntime", export())
    try:
        graph = export()
        reason = _disagreement(graph_runner(graph, config.batch_size),
                               torch_runner(net, config.batch_size, config.input_mean,
                                            config.input_std),
                               config.image_shape)
    except Exception as exc:  # noqa: BLE001 - auto falls back on any export/runtime error
        reason = f"{type(exc).__name__}: {exc}"
    if reason:
        _log.warning("inferenceBackend='auto' runs network %r with torch: %s",
                     config.model, reason)
        return DriverChoice("torch")
    return DriverChoice("onnxruntime", graph)


def chosen_runner(config: PredictConfig, trained: TrainedNetwork,
                  choice: DriverChoice) -> Runner:
    """This worker's runner for the driver's ``choice`` (cached as ``runner_for``'s, under
    the same name): the driver's ONNX graph in an ONNX Runtime session where onnxruntime
    is installed here, else ``build_runner``'s own choice (an ``onnxruntime`` backend
    without it: MissingDependencyError naming the install command)."""
    import importlib.util

    name = f"predict:{config.backend}:{config.batch_size}"
    if choice.graph is not None and importlib.util.find_spec("onnxruntime") is not None:
        graph = choice.graph
        return NETWORKS.extra(trained, name, lambda: graph_runner(graph, config.batch_size))
    if choice.backend == "torch":
        import torch

        torch.set_num_threads(1)
        return NETWORKS.part(trained, name, lambda net: torch_runner(
            net, config.batch_size, config.input_mean, config.input_std))
    import torch

    torch.set_num_threads(1)
    return runner_for(config, trained)


def predict_logits_array(model: Any, images_nhwc: np.ndarray, batch_size: int,
                         mean: tuple[float, ...] = (), std: tuple[float, ...] = ()
                         ) -> np.ndarray:
    """uint8 (N, H, W, C) numpy → float32 logits numpy (N, K)."""
    import torch

    from sparkvision.models.preprocess import predict_logits

    # The copy makes the (read-only, Arrow-owned) array writable for torch; it costs
    # ~0.3 ms per 4096 28x28 images against ~800 ms of forward pass. The permuted view is
    # already channels_last in memory, which the convolutions prefer.
    x = torch.from_numpy(np.array(images_nhwc, copy=True)).permute(0, 3, 1, 2)
    return predict_logits(model, x, batch_size, mean, std).numpy()


def softmax64(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, so each row sums to 1 within 1e-15."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def result_struct(logits: np.ndarray, classes: pa.Array, temperature: float = 1.0
                  ) -> pa.StructArray:
    """The UDF's output for one batch of logits (N, K): rawPrediction the logits,
    probability softmax(logits / temperature), prediction the largest logit's class (the
    same at any temperature)."""
    n = logits.shape[0]
    probs = softmax64(logits if temperature == 1.0
                      else logits.astype(np.float64) / temperature)
    pred = logits.argmax(axis=1)
    return pa.StructArray.from_arrays(
        [
            list_array(logits, pa.float64()),
            list_array(probs, pa.float64()),
            pa.array(pred.astype(np.float64), pa.float64()),
            classes.take(pa.array(pred)),
            pa.array(probs[np.arange(n), pred], pa.float64()),
        ],
        names=list(RESULT_FIELDS),
    )


def predict_arrays_iter(
    arrays: Iterator[pa.Array], config: PredictConfig, trained: TrainedNetwork
) -> Iterator[pa.Array]:
    """Arrow UDF body: image Binary arrays in, struct arrays of predictions out."""
    import torch

    torch.set_num_threads(1)
    runner = runner_for(config, trained)
    classes = pa.array(config.classes, pa.string())
    for arr in arrays:
        if len(arr):
            logits = runner(image_batch(arr, config.image_shape))
        else:
            logits = np.zeros((0, config.num_classes), dtype=np.float32)
        yield result_struct(logits, classes, config.temperature)


def make_predict_udf(config: PredictConfig) -> Any:
    """A non-deterministic (so evaluated once per row) iterator Arrow UDF. The weights are
    hashed here, on the driver, once."""
    trained = TrainedNetwork.of(config)

    def predict(arrays: Iterator[pa.Array]) -> Iterator[pa.Array]:
        return predict_arrays_iter(arrays, config, trained)

    return typed_arrow_udf(predict, RESULT_DDL).asNondeterministic()
