"""Driver side of input normalisation: the per-channel mean/std a training stores with its
model (``inputMean``/``inputStd``), resolved from ``normalize`` before the training starts.

``auto``: the pretrained config's statistics when the network starts from ``pretrained``
zoo weights, the source model's with ``initFrom``, none (the fixed [-1, 1] scaling) under
``privacy="dp"`` (statistics of the data would leak outside the privacy accounting), else
``dataset``: per-channel statistics of the training split, from one Spark job whose tasks
count pixel values (exact integer histograms, so the result does not depend on the
partitioning).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from sparkvision.errors import InvalidParameterError

log = logging.getLogger(__name__)

Stats = tuple[tuple[float, ...], tuple[float, ...]]
#: images per histogram chunk in a task (bounds the task's extra memory)
_CHUNK = 256


def pixel_histograms(images: np.ndarray) -> np.ndarray:
    """(C, 256) int64 counts of each pixel value per channel of uint8 (N, H, W, C) images."""
    c = images.shape[-1]
    out = np.zeros((c, 256), dtype=np.int64)
    for s in range(0, len(images), _CHUNK):
        part = images[s : s + _CHUNK].reshape(-1, c)
        for k in range(c):
            out[k] += np.bincount(part[:, k], minlength=256)
    return out


def stats_of_histograms(hist: np.ndarray) -> Stats:
    """Per-channel (mean, std) of pixel values scaled to [0, 1], from (C, 256) counts."""
    values = np.arange(256, dtype=np.float64) / 255.0
    n = hist.sum(axis=1).astype(np.float64)
    if not np.all(n > 0):
        raise InvalidParameterError("normalize", "dataset", "the training split has no "
                                    "images to compute statistics of")
    mean = (hist * values).sum(axis=1) / n
    var = (hist * values**2).sum(axis=1) / n - mean**2
    std = np.sqrt(np.maximum(var, 0.0))
    std = np.maximum(std, 1.0 / 255.0)  # a constant channel: scale as one pixel step
    return (tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std))


def dataset_statistics(df: Any, image_col: str, shape: tuple[int, int, int]) -> Stats:
    """Per-channel mean/std of every image of ``df[image_col]`` (raw or encoded), from one
    Spark job of pixel-value histograms."""
    c = shape[2]

    def histograms(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        from sparkvision.inference.arrays import image_batch

        total = np.zeros((c, 256), dtype=np.int64)
        for batch in batches:
            if batch.num_rows:
                total += pixel_histograms(image_batch(batch.column(0), shape))
        yield pa.RecordBatch.from_pydict(
            {"hist": [total.reshape(-1).tolist()]},
            schema=pa.schema([("hist", pa.list_(pa.int64()))]))

    rows = df.select(image_col).mapInArrow(histograms, "hist array<bigint>").collect()
    total = np.zeros((c, 256), dtype=np.int64)
    for row in rows:
        total += np.asarray(row["hist"], dtype=np.int64).reshape(c, 256)
    return stats_of_histograms(total)


def check_normalization(get: Callable[[str], Any]) -> None:
    """The driver-side checks of ``normalize``, ``inputMean`` and ``inputStd`` (no data)."""
    mean, std = list(get("inputMean")), list(get("inputStd"))
    for name, vals in (("inputMean", mean), ("inputStd", std)):
        if len(vals) not in (0, 1, 3):
            raise InvalidParameterError(name, vals, "give one value, or one per channel "
                                        "(3 for RGB); empty = 0.5")
    if any(float(v) <= 0 for v in std):
        raise InvalidParameterError("inputStd", std, "every standard deviation must be > 0")
    if bool(mean) != bool(std):
        raise InvalidParameterError("inputStd" if mean else "inputMean", std or mean,
                                    "give inputMean and inputStd together")
    mode = get("normalize")
    if mean and mode != "auto":
        raise InvalidParameterError(
            "normalize", mode, "inputMean/inputStd are given explicitly: leave normalize "
            "at auto (or drop inputMean/inputStd)")
    if mode == "dataset" and get("privacy") == "dp":
        raise InvalidParameterError(
            "normalize", mode, "statistics of the training data are not covered by the "
            "differential-privacy accounting: use normalize='none' or 'imagenet' with "
            "privacy='dp'")


def _source_stats(path: str) -> Stats:
    from sparkvision.ml.model import read_model_metadata

    params = read_model_metadata(path).get("paramMap", {})
    return (tuple(params.get("inputMean", ())), tuple(params.get("inputStd", ())))


def resolve_normalization(get: Callable[[str], Any], network: str, df: Any,
                          image_col: str, shape: tuple[int, int, int]) -> tuple[Stats, str]:
    """((mean, std), how they were chosen) for a training: ``get`` reads the classifier's
    Params, ``df`` is the training split (read only for ``dataset``)."""
    from sparkvision.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, channel_stats

    c = shape[2]
    mode = get("normalize")
    if get("inputMean"):
        stats: Stats = (channel_stats(get("inputMean"), c, "inputMean"),
                        channel_stats(get("inputStd"), c, "inputStd"))
        return stats, "given (inputMean/inputStd)"
    if mode == "auto":
        if get("pretrained"):
            from sparkvision.models.zoo import pretrained_normalization

            found = pretrained_normalization(network)
            mean, std = found if found else (IMAGENET_MEAN, IMAGENET_STD)
            return ((channel_stats(mean, c), channel_stats(std, c)),
                    f"the pretrained config of {network}" if found else "imagenet")
        if get("initFrom"):
            return _source_stats(get("initFrom")), f"the model folder {get('initFrom')}"
        mode = "none" if get("privacy") == "dp" else "dataset"
    if mode == "none":
        return ((), ()), "none (fixed [-1, 1] scaling)"
    if mode == "imagenet":
        return (channel_stats(IMAGENET_MEAN, c), channel_stats(IMAGENET_STD, c)), "imagenet"
    stats = dataset_statistics(df, image_col, shape)
    log.info("input normalisation from the training split: mean %s, std %s", *stats)
    return stats, "dataset (the training split)"
