"""Executor side of ``ImageFeaturizer.transform``: Arrow batches of images in, feature
vectors out (the classifier head's input, or the output of a named module).

The network comes from the worker's network cache (``network_cache.py``: built once per
Python worker, keyed by the weights' content); only the image column travels to Python,
and the features come back as ``array<float>``, made pyspark.ml vectors in the JVM
(``array_to_vector``), as ``inference/batch.py`` does for predictions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from sparkvision.inference.arrays import image_batch, list_array, typed_arrow_udf
from sparkvision.inference.network_cache import NETWORKS, TrainedNetwork

#: A feature extractor maps uint8 (N, H, W, C) images (numpy) to float32 (N, D) features.
Extractor = Callable[[np.ndarray], np.ndarray]

#: The UDF's return type.
FEATURES_DDL = "ARRAY<FLOAT>"


@dataclass(frozen=True)
class FeatureConfig:
    """What a feature task needs; the weights travel as safetensors bytes."""

    model: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (height, width, channels)
    weights: bytes
    layer: str = ""  # "" = the classifier head's input (penultimate features)
    batch_size: int = 1024
    input_mean: tuple[float, ...] = ()  # the model's normalisation (empty: [-1, 1])
    input_std: tuple[float, ...] = ()


def extract_features(net: Any, images_nhwc: np.ndarray, layer: str, num_classes: int,
                     batch_size: int, mean: tuple[float, ...] = (),
                     std: tuple[float, ...] = ()) -> np.ndarray:
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
            net(normalize(x[s : s + batch_size], mean, std))
    if not captured:
        return np.zeros((0, 0), dtype=np.float32)
    feats = captured[0] if len(captured) == 1 else torch.cat(captured)
    return feats.to(torch.float32).numpy()


def build_extractor(config: FeatureConfig, net: Any) -> Extractor:
    """The network ``net`` (``config``'s, eval mode) as an extractor at ``config.layer``."""

    def run(images_nhwc: np.ndarray) -> np.ndarray:
        return extract_features(net, images_nhwc, config.layer, config.num_classes,
                                config.batch_size, config.input_mean, config.input_std)

    return run


def feature_dimension(config: FeatureConfig) -> int:
    """Length of one feature vector (driver side: builds the network, uncached, and runs one
    blank image through it; an unknown layer raises ``InvalidParameterError`` here, before
    any job)."""
    probe = np.zeros((1, *config.image_shape), dtype=np.uint8)
    net = TrainedNetwork.of(config).build()
    return int(build_extractor(config, net)(probe).shape[1])


def extractor_for(config: FeatureConfig, trained: TrainedNetwork) -> Extractor:
    """This worker's extractor of ``trained`` at ``config``'s layer and batch size (built
    once, on the worker's cached network)."""
    return NETWORKS.part(trained, f"features:{config.layer}:{config.batch_size}",
                         lambda net: build_extractor(config, net))


def features_arrays_iter(arrays: Iterator[pa.Array], config: FeatureConfig,
                         trained: TrainedNetwork) -> Iterator[pa.Array]:
    """Arrow UDF body: image Binary arrays (raw or encoded) in, ``list<float>`` arrays of
    features out, one per ``batch_size`` images (so a wide layer's features of a whole
    Arrow batch are never in memory at once)."""
    import torch

    torch.set_num_threads(1)
    extractor = extractor_for(config, trained)
    step = config.batch_size
    for arr in arrays:
        if not len(arr):
            yield list_array(np.zeros((0, 0), dtype=np.float32), pa.float32())
            continue
        images = image_batch(arr, config.image_shape)
        for s in range(0, len(images), step):
            yield list_array(extractor(images[s : s + step]), pa.float32())


def make_features_udf(config: FeatureConfig) -> Any:
    """A non-deterministic (so evaluated once per row) iterator Arrow UDF returning
    ``array<float>``. The weights are hashed here, on the driver, once."""
    trained = TrainedNetwork.of(config)

    def features(arrays: Iterator[pa.Array]) -> Iterator[pa.Array]:
        return features_arrays_iter(arrays, config, trained)

    return typed_arrow_udf(features, FEATURES_DDL).asNondeterministic()
