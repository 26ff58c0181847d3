"""Checkpoints: model + optimizer tensors in safetensors, everything else as JSON metadata."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sparkvision.models.weights import cpu_state

_NAME = re.compile(r"^epoch-(\d{4})\.safetensors$")
_META_KEY = "sparkvision"


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[Any]]:
    tensors: dict[str, torch.Tensor] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
    return tensors, state["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[Any]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    directory: str,
    epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
) -> str:
    """Write ``epoch-NNNN.safetensors`` atomically; ``epoch`` = epochs completed."""
    os.makedirs(directory, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in cpu_state(model).items()}
    opt_tensors, groups = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    info = dict(meta, epoch=epoch, param_groups=groups)
    path = os.path.join(directory, f"epoch-{epoch:04d}.safetensors")
    tmp = path + f".tmp-{os.getpid()}"
    save_file(tensors, tmp, metadata={_META_KEY: json.dumps(info)})
    os.replace(tmp, path)
    return path


def latest_epoch(directory: str) -> int:
    """Highest completed epoch with a checkpoint in ``directory`` (0 if none)."""
    if not directory or not os.path.isdir(directory):
        return 0
    epochs = [int(m.group(1)) for n in os.listdir(directory) if (m := _NAME.match(n))]
    return max(epochs, default=0)


def load_checkpoint(
    directory: str, epoch: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Return (model state dict, optimizer state dict, metadata) of one checkpoint."""
    path = Path(directory) / f"epoch-{epoch:04d}.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        info = json.loads(fh.metadata()[_META_KEY])
    tensors = load_file(str(path))
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    optim_state = _unflatten_optimizer(tensors, info.pop("param_groups"))
    return model_state, optim_state, info
