"""Input scaling and batched forward passes, shared by training and inference."""

from __future__ import annotations

import torch
from torch import nn


def normalize(x_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW → float32 in [-1, 1]; used identically for training and inference."""
    return x_u8.to(torch.float32).mul_(2.0 / 255.0).sub_(1.0)


@torch.inference_mode()
def predict_logits(model: nn.Module, x_u8: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits (N, K) for uint8 NCHW images, ``batch_size`` images per forward pass."""
    model.eval()
    outs = [model(normalize(x_u8[s : s + batch_size])) for s in range(0, len(x_u8), batch_size)]
    if not outs:
        return torch.empty(0, 0)
    return torch.cat(outs)


def predict_proba(model: nn.Module, x_u8: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Softmax probabilities for uint8 NCHW images."""
    logits = predict_logits(model, x_u8, batch_size)
    return torch.softmax(logits, dim=1) if logits.numel() else logits
