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


def check_weights(data: bytes, name: str, num_classes: int,
                  input_shape: tuple[int, int, int], source: str) -> None:
    """Raise ``ModelLoadError`` unless ``data`` is a readable safetensors file whose tensors
    fit the network ``name`` exactly (every key, every shape). ``source`` names the file."""
    from safetensors import SafetensorError

    from sparkvision.errors import ModelLoadError
    from sparkvision.models.registry import build_model

    try:
        state = load_state_dict_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(
            f"{source} is not a readable safetensors file ({len(data)} bytes: {exc}): the "
            "file is damaged or truncated; copy the model folder again or re-train it"
        ) from None
    net = build_model(name, num_classes, input_shape)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing or unexpected or wrong:
        details = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                   f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                   "wrong shapes: " + ", ".join(f"{k} {found[k]} != {expected[k]}"
                                                for k in wrong[:3]) if wrong else ""]
        raise ModelLoadError(
            f"{source} does not fit the network {name!r} for {num_classes} classes and "
            f"input {tuple(input_shape)}: " + "; ".join(d for d in details if d)
            + "; the weights belong to another model: re-train or restore this folder"
        )
