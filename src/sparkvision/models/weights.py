"""Network weights as safetensors bytes (no pickle): what models, checkpoints and
inference tasks exchange."""

from __future__ import annotations

import torch
from safetensors.torch import load, save


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as contiguous CPU tensors (what safetensors stores)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def state_dict_bytes(model: torch.nn.Module) -> bytes:
    """Model weights as safetensors bytes."""
    return save(cpu_state(model))


def load_state_dict_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """The state dict stored in safetensors bytes."""
    return load(data)


def trained_network(
    name: str, num_classes: int, input_shape: tuple[int, int, int], weights: bytes
) -> torch.nn.Module:
    """The network ``name`` with the safetensors ``weights`` loaded, in eval mode."""
    from sparkvision.models.registry import build_model

    net = build_model(name, num_classes, input_shape)
    net.load_state_dict(load_state_dict_bytes(weights))
    return net.eval()
