"""Executor side of ``ImageFeaturizer.transform``: Arrow batches of images in, feature
vectors out (the classifier head's input, or the output of a named module).

The network is built and its weights loaded once per Python worker (cached by key: the
weights' SHA-1, the layer, the network); only the image column travels to Python, and the
features come back as ``array<float>``, made pyspark.ml vectors in the JVM
(``array_to_vector``), as ``inference/batch.py`` does for predictions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

#: A feature extractor maps uint8 (N, H, W, C) images (numpy) to float32 (N, D) features.
Extractor = Callable[[np.ndarray], np.ndarray]

#: The UDF's return type.
FEATURES_DDL = "ARRAY<FLOAT>"

_CACHE: dict[str, Extractor] = {}  # feature key → extractor (one network per worker)


@dataclass(frozen=True)
class FeatureConfig:
    """What a feature task needs; the weights travel as safetensors bytes."""

    model: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (height, width, channels)
    weights: bytes
    layer: str = ""  # "" = the classifier head's input (penultimate features)
    batch_size: int = 1024

    def key(self) -> str:
        """The per-worker cache key: weights' SHA-1, layer and network."""
        h, w, c = self.image_shape
        return (f"{hashlib.sha1(self.weights).hexdigest()}:{self.layer}:{self.model}:"
                f"{self.num_classes}:{h}x{w}x{c}")


def extract_features(net, images_nhwc: np.ndarray, layer: str, num_classes: int,
                     batch_size: int) -> np.ndarray:
    """uint8 (N, H, W, C) numpy → float32 (N, D) features of ``net`` (eval mode) at
    ``layer``, ``batch_size`` images per forward pass, scaled as in training
    (``models.preprocess.normalize``). An unknown layer is ``InvalidParameterError``."""
    import torch

    from sparkvision.models.parts import capture_features
    from sparkvision.models.preprocess import normalize

    # The copy makes the (read-only, Arrow-owned) array writable for torch; the permuted
    # view is channels_last in memory, which the convolutions prefer.
    x = torch.from_numpy(np.array(images_nhwc, copy=True)).permute(0, 3, 1, 2)
    with torch.inference_mode(), capture_features(net, layer, num_classes) as captured:
        for s in range(0, len(x), batch_size):
            net(normalize(x[s : s + batch_size]))
    if not captured:
        return np.zeros((0, 0), dtype=np.float32)
    feats = captured[0] if len(captured) == 1 else torch.cat(captured)
    return feats.to(torch.float32).numpy()


def build_extractor(config: FeatureConfig) -> Extractor:
    """The network of ``config`` with its weights, in eval mode, as an extractor."""
    from sparkvision.models.weights import trained_network

    net = trained_network(config.model, config.num_classes, config.image_shape,
                          config.weights)

    def run(images_nhwc: np.ndarray) -> np.ndarray:
        return extract_features(net, images_nhwc, config.layer, config.num_classes,
                                config.batch_size)

    return run


def feature_dimension(config: FeatureConfig) -> int:
    """Length of one feature vector (driver side: builds the network and runs one blank
    image through it; an unknown layer raises ``InvalidParameterError`` here, before any
    job)."""
    probe = np.zeros((1, *config.image_shape), dtype=np.uint8)
    return int(build_extractor(config)(probe).shape[1])


def _extractor_for(config: FeatureConfig, key: str) -> Extractor:
    extractor = _CACHE.get(key)
    if extractor is None:  # keep one network per worker
        _CACHE.clear()
        extractor = _CACHE[key] = build_extractor(config)
    return extractor


def _list_array(values: np.ndarray) -> pa.ListArray:
    n, d = values.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * d)
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), pa.float32()))


def features_arrays_iter(arrays: Iterator[pa.Array], config: FeatureConfig,
                         key: str) -> Iterator[pa.Array]:
    """Arrow UDF body: image Binary arrays (raw or encoded) in, ``list<float>`` arrays of
    features out, one per ``batch_size`` images (so a wide layer's features of a whole
    Arrow batch are never in memory at once)."""
    import torch

    from sparkvision.data.feed import binary_column_to_array

    torch.set_num_threads(1)
    extractor = _extractor_for(config, key)
    h, w, c = config.image_shape
    step = config.batch_size
    for arr in arrays:
        n = len(arr)
        if not n:
            yield _list_array(np.zeros((0, 0), dtype=np.float32))
            continue
        images = binary_column_to_array(arr, h * w * c, (h, w, c)).reshape(n, h, w, c)
        for s in range(0, n, step):
            yield _list_array(np.ascontiguousarray(extractor(images[s : s + step])))


def make_features_udf(config: FeatureConfig, key: str | None = None) -> Any:
    """A non-deterministic (so evaluated once per row) iterator Arrow UDF returning
    ``array<float>``."""
    from pyspark.sql.functions import arrow_udf

    cache_key = key or config.key()

    def features(arrays: Iterator[pa.Array]) -> Iterator[pa.Array]:
        return features_arrays_iter(arrays, config, cache_key)

    return arrow_udf(features, FEATURES_DDL).asNondeterministic()
