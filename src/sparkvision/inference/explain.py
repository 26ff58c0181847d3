"""Executor side of ``ImageExplainer`` and of the ``explaining`` job: attribution maps of a
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
and its Captum method come from the worker's network cache (``network_cache.py``: built
once per Python worker, keyed by the weights' content), as predictions and features do;
``torch.set_num_threads(1)`` on executors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from sparkvision import extras
from sparkvision.errors import InvalidParameterError
from sparkvision.inference.arrays import image_batch, list_array, typed_arrow_udf
from sparkvision.inference.network_cache import NETWORKS, TrainedNetwork
from sparkvision.settings import ExplainerSettings, row

#: Methods whose maps can be negative (evidence against the target class).
SIGNED_METHODS = frozenset({"integrated_gradients", "occlusion"})

#: ``make_attribution_udf``'s return type: H·W float32 values, row-major.
ATTRIBUTION_DDL = "ARRAY<FLOAT>"


def require_captum(what: str) -> None:
    """MissingDependencyError naming the ``explain`` extra when captum is not installed."""
    extras.require("explain", what)


def check_method(method: str) -> str:
    row(ExplainerSettings, "method").check(method)
    return method


def check_target(target: str) -> str:
    row(ExplainerSettings, "target").check(target)
    return target


def last_conv_layer(net: Any) -> str | None:
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
    method: str = row(ExplainerSettings, "method").default
    batch_size: int = 64  # images per attribution call
    ig_steps: int = 32  # integrated_gradients: points on the path
    input_mean: tuple[float, ...] = ()  # the model's normalisation (empty: [-1, 1])
    input_std: tuple[float, ...] = ()


class Explainer:
    """A trained network and its Captum method: ``(images, targets) → maps``."""

    def __init__(self, net: Any, config: ExplainConfig) -> None:
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
            return self.net(_scaled(images_nhwc, self.config)).to(torch.float32).numpy()

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

        method, config = self.config.method, self.config
        x = _scaled(images_nhwc, config)
        target = torch.from_numpy(np.ascontiguousarray(targets))
        h, w, c = config.image_shape
        # the baseline is a black image, normalised as the network sees it
        black = _scaled(np.zeros((1, h, w, c), dtype=np.uint8), config)
        if method == "gradcam":
            cam = self.method.attribute(x, target=target, relu_attributions=True)
            maps = LayerAttribution.interpolate(cam, (h, w), interpolate_mode="bilinear")[:, 0]
        elif method == "saliency":
            x.requires_grad_()  # (else Captum warns that it sets it)
            maps = self.method.attribute(x, target=target, abs=True).amax(dim=1)
        elif method == "integrated_gradients":
            maps = self.method.attribute(
                x, baselines=black, target=target, n_steps=config.ig_steps,
                internal_batch_size=max(config.batch_size, len(x))).sum(dim=1)
        else:
            window, stride = occlusion_window(config.image_shape)
            maps = self.method.attribute(
                x, sliding_window_shapes=(c, window, window), strides=(c, stride, stride),
                baselines=black, target=target, perturbations_per_eval=16).sum(dim=1)
        return maps.detach().to(torch.float32).numpy()


def _scaled(images_nhwc: np.ndarray, config: ExplainConfig) -> Any:
    """uint8 NHWC numpy → float32 NCHW normalised as in training (``normalize`` with the
    model's statistics)."""
    import torch

    from sparkvision.models.preprocess import normalize

    # The copy makes a read-only (Arrow-owned) array writable for torch.
    x = torch.from_numpy(np.array(images_nhwc, copy=True)).permute(0, 3, 1, 2)
    return normalize(x.contiguous(), config.input_mean, config.input_std)


def no_conv_error() -> InvalidParameterError:
    return InvalidParameterError(
        "method", "gradcam", "the network has no convolutional layer (nn.Conv2d) for "
        "Grad-CAM; use saliency, integrated_gradients or occlusion")


def check_config(config: ExplainConfig) -> str:
    """Driver side, before any job: captum importable, the method known, the network built
    (uncached; for ``gradcam``: it has a conv layer). Returns Grad-CAM's layer name (''
    otherwise)."""
    check_method(config.method)
    require_captum(f"method={config.method!r}")
    return Explainer(TrainedNetwork.of(config).build(), config).layer


def explainer_for(config: ExplainConfig, trained: TrainedNetwork) -> Explainer:
    """This worker's explainer of ``trained`` for ``config``'s method and batch sizes
    (built once, on the worker's cached network)."""
    require_captum(f"method={config.method!r}")
    return NETWORKS.part(
        trained, f"explain:{config.method}:{config.batch_size}:{config.ig_steps}",
        lambda net: Explainer(net, config))


# --- ImageExplainer: one map per row -----------------------------------------------------


def attribution_arrays_iter(batches: Iterator[tuple[pa.Array, pa.Array]],
                            config: ExplainConfig, trained: TrainedNetwork
                            ) -> Iterator[pa.Array]:
    """Arrow UDF body: (image Binary, target int or null) arrays in, ``list<float>`` maps
    (H·W values each) out. A null target means the predicted class."""
    import torch

    torch.set_num_threads(1)
    explainer = explainer_for(config, trained)
    for images_arr, targets_arr in batches:
        if not len(images_arr):
            yield list_array(np.zeros((0, 0), np.float32), pa.float32())
            continue
        images = image_batch(images_arr, config.image_shape)
        targets = np.asarray(targets_arr.to_numpy(zero_copy_only=False), dtype=np.float64)
        missing = np.isnan(targets)
        if missing.any():
            predicted = explainer.logits(images[missing]).argmax(axis=1)
            targets[missing] = predicted
        maps = explainer.attribute(images, targets.astype(np.int64))
        yield list_array(maps, pa.float32())


def make_attribution_udf(config: ExplainConfig) -> Any:
    """An iterator Arrow UDF ``(image, target) → ARRAY<FLOAT>`` (H·W values, row-major).
    The weights are hashed here, on the driver, once."""
    trained = TrainedNetwork.of(config)

    def explain(batches: Iterator[tuple[pa.Array, pa.Array]]) -> Iterator[pa.Array]:
        return attribution_arrays_iter(batches, config, trained)

    return typed_arrow_udf(explain, ATTRIBUTION_DDL)
