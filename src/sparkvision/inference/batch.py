"""Executor side of ``ImageClassificationModel.transform``: Arrow batches in, predictions out.

The network is built and its weights loaded once per Python worker (cached by key). Only the
image column travels to Python; logits and probabilities come back as ``array<double>`` and
become pyspark.ml vectors in the JVM (``array_to_vector``), where that is cheapest.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from sparkvision.config import PredictConfig

_CACHE: dict[str, Any] = {}

#: Fields of the struct the UDF returns, in order.
RESULT_FIELDS = ("rawPrediction", "probability", "prediction", "predictedLabel", "confidence")
RESULT_DDL = (
    "rawPrediction ARRAY<DOUBLE>, probability ARRAY<DOUBLE>, prediction DOUBLE, "
    "predictedLabel STRING, confidence DOUBLE"
)


def _model_for(config: PredictConfig, key: str):
    model = _CACHE.get(key)
    if model is None:
        from sparkvision.models import build_model
        from sparkvision.models.weights import load_state_dict_bytes

        model = build_model(config.model, config.num_classes, config.image_shape)
        model.load_state_dict(load_state_dict_bytes(config.weights))
        model.eval()
        _CACHE.clear()  # keep one model per worker
        _CACHE[key] = model
    return model


def predict_logits_array(model, images_nhwc: np.ndarray, batch_size: int) -> np.ndarray:
    """uint8 (N, H, W, C) numpy → float32 logits numpy (N, K)."""
    import torch

    from sparkvision.models.preprocess import predict_logits

    x = torch.from_numpy(np.array(images_nhwc, copy=True)).permute(0, 3, 1, 2)
    return predict_logits(model, x, batch_size).numpy()


def softmax64(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, so each row sums to 1 within 1e-15."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def _list_array(values: np.ndarray) -> pa.ListArray:
    n, k = values.shape
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), pa.float64()))


def result_struct(logits: np.ndarray, classes: pa.Array) -> pa.StructArray:
    """The UDF's output for one batch of logits (N, K)."""
    n = logits.shape[0]
    probs = softmax64(logits)
    pred = probs.argmax(axis=1)
    return pa.StructArray.from_arrays(
        [
            _list_array(logits.astype(np.float64)),
            _list_array(probs),
            pa.array(pred.astype(np.float64), pa.float64()),
            classes.take(pa.array(pred)),
            pa.array(probs[np.arange(n), pred], pa.float64()),
        ],
        names=list(RESULT_FIELDS),
    )


def predict_arrays_iter(
    arrays: Iterator[pa.Array], config: PredictConfig, key: str
) -> Iterator[pa.Array]:
    """Arrow UDF body: image Binary arrays in, struct arrays of predictions out."""
    import torch

    from sparkvision.data.feed import binary_column_to_array

    torch.set_num_threads(1)
    model = _model_for(config, key)
    h, w, c = config.image_shape
    classes = pa.array(config.classes, pa.string())
    for arr in arrays:
        n = len(arr)
        if n:
            images = binary_column_to_array(arr, h * w * c)
            logits = predict_logits_array(model, images.reshape(n, h, w, c), config.batch_size)
        else:
            logits = np.zeros((0, config.num_classes), dtype=np.float32)
        yield result_struct(logits, classes)


def make_predict_udf(config: PredictConfig, key: str):
    """A non-deterministic (so evaluated once per row) iterator Arrow UDF."""
    from pyspark.sql.functions import arrow_udf

    def predict(arrays: Iterator[pa.Array]) -> Iterator[pa.Array]:
        return predict_arrays_iter(arrays, config, key)

    return arrow_udf(predict, RESULT_DDL).asNondeterministic()
