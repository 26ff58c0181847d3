"""Executor side of ``ImageClassificationModel.transform``: Arrow batches in, predictions out.

The network is built and its weights loaded once per Python worker (cached by key).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from sparkvision.config import PredictConfig

_CACHE: dict[str, Any] = {}


def _model_for(config: PredictConfig, key: str):
    model = _CACHE.get(key)
    if model is None:
        from sparkvision.models import build_model
        from sparkvision.training.checkpoint import load_state_dict_bytes

        model = build_model(config.model, config.num_classes, config.image_shape)
        model.load_state_dict(load_state_dict_bytes(config.weights))
        model.eval()
        _CACHE.clear()  # keep one model per worker
        _CACHE[key] = model
    return model


def predict_arrays(model, images_nhwc, batch_size: int):
    """uint8 (N, H, W, C) numpy → (probabilities float32 numpy (N, K))."""
    import numpy as np
    import torch

    from sparkvision.training.loop import predict_proba

    x = torch.from_numpy(np.array(images_nhwc, copy=True)).permute(0, 3, 1, 2)
    return predict_proba(model, x, batch_size).numpy()


RESULT_FIELDS = ("prediction", "predictedLabel", "probability", "probabilities")
RESULT_DDL = (
    "prediction BIGINT, predictedLabel STRING, probability DOUBLE, probabilities ARRAY<FLOAT>"
)


def predict_arrays_iter(
    arrays: Iterator[pa.Array], config: PredictConfig, key: str
) -> Iterator[pa.Array]:
    """Arrow UDF body: image Binary arrays in, struct arrays of predictions out."""
    import numpy as np
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
            probs = predict_arrays(model, images.reshape(n, h, w, c), config.batch_size)
        else:
            probs = np.zeros((0, config.num_classes), dtype=np.float32)
        k = probs.shape[1]
        pred = probs.argmax(axis=1).astype(np.int64)
        flat = pa.array(probs.astype(np.float32, copy=False).reshape(-1), pa.float32())
        offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
        yield pa.StructArray.from_arrays(
            [
                pa.array(pred, pa.int64()),
                classes.take(pa.array(pred)),
                pa.array(probs[np.arange(n), pred].astype(np.float64), pa.float64()),
                pa.ListArray.from_arrays(offsets, flat),
            ],
            names=list(RESULT_FIELDS),
        )


def make_predict_udf(config: PredictConfig, key: str):
    """A non-deterministic (so evaluated once per row) iterator Arrow UDF."""
    from pyspark.sql.functions import arrow_udf

    def predict(arrays: Iterator[pa.Array]) -> Iterator[pa.Array]:
        return predict_arrays_iter(arrays, config, key)

    return arrow_udf(predict, RESULT_DDL).asNondeterministic()
