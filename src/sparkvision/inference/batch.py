"""Executor side of ``ImageClassificationModel.transform``: Arrow batches in, predictions out.

The network is built and its weights loaded once per Python worker (cached by key).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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


def predict_batches(batches: Iterator[Any], config: PredictConfig, key: str) -> Iterator[Any]:
    """``mapInArrow`` function: appends prediction columns to every input batch."""
    import numpy as np
    import pyarrow as pa
    import torch

    from sparkvision.data.feed import binary_column_to_array

    torch.set_num_threads(1)
    model = _model_for(config, key)
    h, w, c = config.image_shape
    classes = np.array(config.classes, dtype=object)
    for batch in batches:
        n = batch.num_rows
        if n:
            images = binary_column_to_array(batch.column(config.image_col), h * w * c)
            probs = predict_arrays(model, images.reshape(n, h, w, c), config.batch_size)
        else:
            probs = np.zeros((0, config.num_classes), dtype=np.float32)
        pred = probs.argmax(axis=1).astype(np.int64)
        flat = pa.array(probs.astype(np.float32).reshape(-1), pa.float32())
        offsets = pa.array(np.arange(0, (n + 1) * probs.shape[1], probs.shape[1], dtype=np.int32))
        columns = list(batch.columns) + [
            pa.array(pred, pa.int64()),
            pa.array(classes[pred].tolist() if n else [], pa.string()),
            pa.array(probs[np.arange(n), pred].astype(np.float64), pa.float64()),
            pa.ListArray.from_arrays(offsets, flat),
        ]
        names = list(batch.schema.names) + [
            config.prediction_col,
            config.predicted_label_col,
            config.probability_col,
            config.probabilities_col,
        ]
        yield pa.RecordBatch.from_arrays(columns, names=names)
