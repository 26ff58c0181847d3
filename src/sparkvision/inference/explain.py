"""Executor side of ``sparkvision explain`` and ``ImageExplainer``: attribution maps of a
trained network computed with Captum, on Arrow batches of images.

Methods (all Captum's own, nothing hand-written):

* ``gradcam`` — ``LayerGradCam`` on the network's last ``nn.Conv2d`` (found with
  ``named_modules()``), ReLU applied, then ``LayerAttribution.interpolate`` (bilinear) to
  the image's H×W: ≥ 0;
* ``saliency`` — ``Saliency`` (|∂ target logit / ∂ pixel|), the maximum over channels: ≥ 0;
* ``integrated_gradients`` — ``IntegratedGradients`` from a black image, summed over
  channels: signed;
* ``occlusion`` — ``Occlusion`` with a black square sliding over the image, summed over
  channels: signed.

Every map is float32 (H, W) for the image as the network sees it (``prepare``'s size,
scaled by ``models.preprocess.normalize``), for one target class per image. The network
(and the Captum method object) is built once per Python worker and cached, as
``inference/batch.py`` does for predictions; ``torch.set_num_threads(1)`` on executors.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from sparkvision.errors import InvalidParameterError, MissingDependencyError

METHODS = ("gradcam", "saliency", "integrated_gradients", "occlusion")
#: Methods whose maps can be negative (evidence against the target class).
SIGNED_METHODS = frozenset({"integrated_gradients", "occlusion"})
#: What the attribution is computed for: the predicted class, or the true label.
TARGETS = ("predicted", "true")
CAPTUM_INSTALL_HINT = "pip install 'sparkvision[explain]' (or pip install captum)"

#: ``make_attribution_udf``'s return type: H·W float32 values, row-major.
ATTRIBUTION_DDL = "ARRAY<FLOAT>"

#: Rows ``explain_partition`` returns: ``kind`` = ``image`` (a chosen row: its image and
#: map) or ``sum`` (one per class and partition: the sums of maps and pixels, the count).
EXPLAIN_DDL = (
    "kind STRING, cls BIGINT, grp INT, key BIGINT, path STRING, label BIGINT, "
    "prediction BIGINT, target BIGINT, score DOUBLE, image BINARY, attribution ARRAY<FLOAT>, "
    "attribution_sum ARRAY<DOUBLE>, pixel_sum ARRAY<DOUBLE>, count BIGINT"
)

_CACHE: dict[str, Explainer] = {}  # config key → explainer (one network per worker)


def missing_captum() -> bool:
    return importlib.util.find_spec("captum") is None


def require_captum(what: str) -> None:
    """MissingDependencyError naming the install command when captum is not installed."""
    if missing_captum():
        raise MissingDependencyError(
            f"{what} needs captum, which is not installed: {CAPTUM_INSTALL_HINT} (on the "
            "driver and every executor)")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise InvalidParameterError("method", method, f"use one of {', '.join(METHODS)}")
    return method


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise InvalidParameterError("target", target,
                                    "use predicted (the model's class) or true (the label)")
    return target


def last_conv_layer(net) -> str | None:
    """The ``named_modules()`` name of the last ``nn.Conv2d`` of ``net`` (None: none)."""
    from torch import nn

    found = None
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            found = name
    return found


def occlusion_window(image_shape: tuple[int, int, int]) -> tuple[int, int]:
    """(window, stride) of the occlusion square: about 1/7 of the smaller side, ≥ 2 px,
    stride half of it (4 and 2 for 28×28)."""
    side = min(image_shape[0], image_shape[1])
    window = max(2, min(side, round(side / 7)))
    return window, max(1, window // 2)


@dataclass(frozen=True)
class ExplainConfig:
    """What an attribution task needs; the weights travel as safetensors bytes."""

    model: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (height, width, channels)
    weights: bytes
    method: str = "gradcam"
    batch_size: int = 64  # images per attribution call
    ig_steps: int = 32  # integrated_gradients: points on the path

    def key(self) -> str:
        """The per-worker cache key: weights' SHA-1, method and network."""
        h, w, c = self.image_shape
        return (f"{hashlib.sha1(self.weights).hexdigest()}:{self.method}:{self.model}:"
                f"{self.num_classes}:{h}x{w}x{c}:{self.batch_size}:{self.ig_steps}")


class Explainer:
    """A trained network and its Captum method: ``(images, targets) → maps``."""

    def __init__(self, net, config: ExplainConfig) -> None:
        from captum.attr import IntegratedGradients, LayerGradCam, Occlusion, Saliency

        check_method(config.method)
        self.net = net.eval()
        self.config = config
        self.layer = ""
        if config.method == "gradcam":
            layer = last_conv_layer(net)
            if layer is None:
                raise no_conv_error()
            self.layer = layer
            self.method: Any = LayerGradCam(net, net.get_submodule(layer))
        elif config.method == "saliency":
            self.method = Saliency(net)
        elif config.method == "integrated_gradients":
            self.method = IntegratedGradients(net)
        else:
            self.method = Occlusion(net)

    def logits(self, images_nhwc: np.ndarray) -> np.ndarray:
        """float32 (N, K) logits of uint8 (N, H, W, C) images."""
        import torch

        with torch.no_grad():
            return self.net(_scaled(images_nhwc)).to(torch.float32).numpy()

    def attribute(self, images_nhwc: np.ndarray, targets: Iterable[int]) -> np.ndarray:
        """float32 (N, H, W) maps of uint8 (N, H, W, C) images for class ``targets[i]``,
        ``batch_size`` images per Captum call."""
        targets = np.asarray(list(targets) if not isinstance(targets, np.ndarray)
                             else targets, dtype=np.int64)
        n = len(images_nhwc)
        h, w, _ = self.config.image_shape
        out = np.empty((n, h, w), dtype=np.float32)
        size = max(1, self.config.batch_size)
        for s in range(0, n, size):
            out[s : s + size] = self._attribute(images_nhwc[s : s + size], targets[s : s + size])
        return out

    def _attribute(self, images_nhwc: np.ndarray, targets: np.ndarray) -> np.ndarray:
        import torch
        from captum.attr import LayerAttribution

        x = _scaled(images_nhwc)
        target = torch.from_numpy(np.ascontiguousarray(targets))
        method, config = self.config.method, self.config
        h, w, c = config.image_shape
        if method == "gradcam":
            cam = self.method.attribute(x, target=target, relu_attributions=True)
            maps = LayerAttribution.interpolate(cam, (h, w), interpolate_mode="bilinear")[:, 0]
        elif method == "saliency":
            x.requires_grad_()  # (else Captum warns that it sets it)
            maps = self.method.attribute(x, target=target, abs=True).amax(dim=1)
        elif method == "integrated_gradients":
            maps = self.method.attribute(
                x, baselines=-1.0, target=target, n_steps=config.ig_steps,
                internal_batch_size=max(config.batch_size, len(x))).sum(dim=1)
        else:
            window, stride = occlusion_window(config.image_shape)
            maps = self.method.attribute(
                x, sliding_window_shapes=(c, window, window), strides=(c, stride, stride),
                baselines=-1.0, target=target, perturbations_per_eval=16).sum(dim=1)
        return maps.detach().to(torch.float32).numpy()


def _scaled(images_nhwc: np.ndarray):
    """uint8 NHWC numpy → float32 NCHW in [-1, 1] (``normalize``, as in training)."""
    import torch

    from sparkvision.models.preprocess import normalize

    # The copy makes a read-only (Arrow-owned) array writable for torch.
    x = torch.from_numpy(np.array(images_nhwc, copy=True)).permute(0, 3, 1, 2)
    return normalize(x.contiguous())


def no_conv_error() -> InvalidParameterError:
    return InvalidParameterError(
        "method", "gradcam", "the network has no convolutional layer (nn.Conv2d) for "
        "Grad-CAM; use saliency, integrated_gradients or occlusion")


def build_explainer(config: ExplainConfig) -> Explainer:
    """The network of ``config`` with its weights, in eval mode, and its Captum method."""
    from sparkvision.models.weights import trained_network

    require_captum(f"method={config.method!r}")
    net = trained_network(config.model, config.num_classes, config.image_shape,
                          config.weights)
    return Explainer(net, config)


def check_config(config: ExplainConfig) -> str:
    """Driver side, before any job: captum importable, the method known, the network built
    (for ``gradcam``: it has a conv layer). Returns Grad-CAM's layer name ('' otherwise)."""
    check_method(config.method)
    return build_explainer(config).layer


def _explainer_for(config: ExplainConfig) -> Explainer:
    key = config.key()
    explainer = _CACHE.get(key)
    if explainer is None:  # keep one network per worker
        _CACHE.clear()
        explainer = _CACHE[key] = build_explainer(config)
    return explainer


def _images(column: Any, image_shape: tuple[int, int, int]) -> np.ndarray:
    from sparkvision.data.feed import binary_column_to_array

    h, w, c = image_shape
    return binary_column_to_array(column, h * w * c, (h, w, c)).reshape(-1, h, w, c)


def _float_lists(values: np.ndarray, kind: Any) -> pa.ListArray:
    n = values.shape[0]
    d = int(np.prod(values.shape[1:])) if values.ndim > 1 else 0
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * d)
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), kind))


# --- ImageExplainer: one map per row -----------------------------------------------------


def attribution_arrays_iter(batches: Iterator[tuple[pa.Array, pa.Array]],
                            config: ExplainConfig) -> Iterator[pa.Array]:
    """Arrow UDF body: (image Binary, target int or null) arrays in, ``list<float>`` maps
    (H·W values each) out. A null target means the predicted class."""
    import torch

    torch.set_num_threads(1)
    explainer = _explainer_for(config)
    h, w, _ = config.image_shape
    for images_arr, targets_arr in batches:
        n = len(images_arr)
        if not n:
            yield _float_lists(np.zeros((0, h * w), np.float32), pa.float32())
            continue
        images = _images(images_arr, config.image_shape)
        targets = np.asarray(targets_arr.to_numpy(zero_copy_only=False), dtype=np.float64)
        missing = np.isnan(targets)
        if missing.any():
            predicted = explainer.logits(images[missing]).argmax(axis=1)
            targets[missing] = predicted
        maps = explainer.attribute(images, targets.astype(np.int64))
        yield _float_lists(maps.reshape(n, h * w), pa.float32())


def make_attribution_udf(config: ExplainConfig):
    """An iterator Arrow UDF ``(image, target) → ARRAY<FLOAT>`` (H·W values, row-major)."""
    from pyspark.sql.functions import arrow_udf

    def explain(batches: Iterator[tuple[pa.Array, pa.Array]]) -> Iterator[pa.Array]:
        return attribution_arrays_iter(batches, config)

    return arrow_udf(explain, ATTRIBUTION_DDL)


# --- sparkvision explain: chosen rows + per-class sums --------------------------------------


class _Sums:
    """Per-class running sums of maps (H·W) and pixels (H·W·C), float64, and counts."""

    def __init__(self, image_shape: tuple[int, int, int]) -> None:
        h, w, c = image_shape
        self.size = (h * w, h * w * c)
        self.maps: dict[int, np.ndarray] = {}
        self.pixels: dict[int, np.ndarray] = {}
        self.counts: dict[int, int] = {}

    def add(self, classes: np.ndarray, maps: np.ndarray, images: np.ndarray) -> None:
        n = len(classes)
        flat_maps = maps.reshape(n, -1).astype(np.float64)
        flat_pixels = images.reshape(n, -1)
        for cls in np.unique(classes):
            rows = classes == cls
            k = int(cls)
            if k not in self.maps:
                self.maps[k] = np.zeros(self.size[0], np.float64)
                self.pixels[k] = np.zeros(self.size[1], np.float64)
                self.counts[k] = 0
            self.maps[k] += flat_maps[rows].sum(axis=0)
            self.pixels[k] += flat_pixels[rows].sum(axis=0, dtype=np.float64)
            self.counts[k] += int(rows.sum())

    def batch(self, schema: pa.Schema) -> pa.RecordBatch:
        classes = sorted(self.maps)
        n = len(classes)
        maps = np.stack([self.maps[k] for k in classes]) if n else np.zeros((0, 0))
        pixels = np.stack([self.pixels[k] for k in classes]) if n else np.zeros((0, 0))
        columns = {name: pa.nulls(n, schema.field(name).type) for name in schema.names}
        columns.update(
            kind=pa.array(["sum"] * n, pa.string()),
            cls=pa.array(classes, pa.int64()),
            attribution_sum=_float_lists(maps, pa.float64()),
            pixel_sum=_float_lists(pixels, pa.float64()),
            count=pa.array([self.counts[k] for k in classes], pa.int64()),
        )
        return pa.RecordBatch.from_arrays([columns[name] for name in schema.names],
                                          schema=schema)


def explain_partition(batches: Iterator[pa.RecordBatch], config: ExplainConfig,
                      chosen: frozenset[int], schema: pa.Schema
                      ) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` body over every row of a partition (columns ``image``, ``cls``,
    ``grp``, ``key``, ``target``, ``score``, ``label``, ``prediction``, ``path``): the map
    of every row is computed and added to its class's sums; the rows whose ``key`` is in
    ``chosen`` come back whole (image + map), then one ``sum`` row per class seen."""
    import torch

    torch.set_num_threads(1)
    explainer = _explainer_for(config)
    sums = _Sums(config.image_shape)
    wanted = np.fromiter(chosen, np.int64, len(chosen))
    h, w, _ = config.image_shape
    for batch in batches:
        n = batch.num_rows
        if not n:
            continue
        images = _images(batch.column("image"), config.image_shape)
        targets = batch.column("target").to_numpy(zero_copy_only=False).astype(np.int64)
        classes = batch.column("cls").to_numpy(zero_copy_only=False).astype(np.int64)
        maps = explainer.attribute(images, targets)
        sums.add(classes, maps, images)
        keys = batch.column("key").to_numpy(zero_copy_only=False)
        picked = np.flatnonzero(np.isin(keys, wanted))
        if not len(picked):
            continue
        rows = batch.take(pa.array(picked))
        m = len(picked)
        columns = {name: pa.nulls(m, schema.field(name).type) for name in schema.names}
        for name in ("cls", "grp", "key", "path", "label", "prediction", "target", "score",
                     "image"):
            if name in rows.schema.names:
                columns[name] = rows.column(name).cast(schema.field(name).type)
        columns["kind"] = pa.array(["image"] * m, pa.string())
        columns["attribution"] = _float_lists(maps[picked].reshape(m, h * w), pa.float32())
        yield pa.RecordBatch.from_arrays([columns[name] for name in schema.names],
                                         schema=schema)
    yield sums.batch(schema)


def explain_schema() -> pa.Schema:
    """The Arrow schema of ``EXPLAIN_DDL`` (built here: executors have no JVM to parse DDL)."""
    return pa.schema([
        ("kind", pa.string()), ("cls", pa.int64()), ("grp", pa.int32()), ("key", pa.int64()),
        ("path", pa.string()), ("label", pa.int64()), ("prediction", pa.int64()),
        ("target", pa.int64()), ("score", pa.float64()), ("image", pa.binary()),
        ("attribution", pa.list_(pa.float32())), ("attribution_sum", pa.list_(pa.float64())),
        ("pixel_sum", pa.list_(pa.float64())), ("count", pa.int64()),
    ])


def explain_partition_fn(config: ExplainConfig, chosen: frozenset[int]
                         ) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function to give ``DataFrame.mapInArrow`` with ``EXPLAIN_DDL``."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return explain_partition(batches, config, chosen, explain_schema())

    return run
