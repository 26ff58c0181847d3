"""Input scaling and batched forward passes, shared by training, inference and export.

A network's input normalisation is part of the model: ``inputMean``/``inputStd`` (per
channel, on pixels scaled to [0, 1]) travel with its weights. Empty statistics mean the
fixed scaling to [-1, 1] every model used before normalisation was stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: ImageNet's per-channel statistics (what timm and torchvision pretrained weights expect)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def channel_stats(values: Sequence[float], channels: int, what: str = "inputMean"
                  ) -> tuple[float, ...]:
    """``values`` as one float per channel: empty → 0.5 each, one value → repeated; a
    3-channel statistic on 1-channel images → their mean (grayscale of an RGB config)."""
    vals = tuple(float(v) for v in values)
    if not vals:
        return (0.5,) * channels
    if len(vals) == channels:
        return vals
    if len(vals) == 1:
        return vals * channels
    if channels == 1:
        return (sum(vals) / len(vals),)
    from sparkvision.errors import InvalidParameterError

    raise InvalidParameterError(what, list(vals), f"give one value per channel ({channels})")


def normalize(x_u8: torch.Tensor, mean: Sequence[float] = (), std: Sequence[float] = ()
              ) -> torch.Tensor:
    """uint8 NCHW (or float32 pixel values in [0, 255], as augmentation leaves them) →
    float32 ``(x / 255 - mean) / std`` per channel; with no statistics the fixed scaling to
    [-1, 1]. Used identically by training, inference and export. Never changes ``x``."""
    if not len(mean) and not len(std):
        return x_u8.to(torch.float32, copy=True).mul_(2.0 / 255.0).sub_(1.0)
    c = x_u8.shape[1]
    m = torch.tensor(channel_stats(mean, c, "inputMean"), dtype=torch.float32)
    s = torch.tensor(channel_stats(std, c, "inputStd"), dtype=torch.float32)
    scale = (1.0 / (255.0 * s)).view(1, c, 1, 1)
    shift = (m / s).view(1, c, 1, 1)
    return x_u8.to(torch.float32, copy=True).mul_(scale).sub_(shift)


@torch.inference_mode()
def predict_logits(model: nn.Module, x_u8: torch.Tensor, batch_size: int = 1024,
                   mean: Sequence[float] = (), std: Sequence[float] = ()) -> torch.Tensor:
    """Logits (N, K) for uint8 NCHW images, ``batch_size`` images per forward pass."""
    model.eval()
    outs = [model(normalize(x_u8[s : s + batch_size], mean, std))
            for s in range(0, len(x_u8), batch_size)]
    if not outs:
        return torch.empty(0, 0)
    return torch.cat(outs)


def predict_proba(model: nn.Module, x_u8: torch.Tensor, batch_size: int = 1024,
                  mean: Sequence[float] = (), std: Sequence[float] = ()) -> torch.Tensor:
    """Softmax probabilities for uint8 NCHW images."""
    logits = predict_logits(model, x_u8, batch_size, mean, std)
    return torch.softmax(logits, dim=1) if logits.numel() else logits
