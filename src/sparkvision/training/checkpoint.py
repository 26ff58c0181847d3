"""Checkpoints: model + optimizer tensors in safetensors, everything else as JSON metadata."""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Iterator
from typing import Any

import torch
from safetensors.torch import load_file, save

from sparkvision import storage
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


def checkpoint_path(directory: str, epoch: int) -> str:
    return storage.join(directory, f"epoch-{epoch:04d}.safetensors")


def save_checkpoint(
    directory: str,
    epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
) -> str:
    """Write ``epoch-NNNN.safetensors`` atomically into ``directory`` (a local folder or any
    fsspec URL every rank can read); ``epoch`` = epochs completed."""
    tensors = {f"model.{k}": v for k, v in cpu_state(model).items()}
    opt_tensors, groups = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    info = dict(meta, epoch=epoch, param_groups=groups)
    path = checkpoint_path(directory, epoch)
    storage.makedirs(directory)
    storage.write_bytes(path, save(tensors, metadata={_META_KEY: json.dumps(info)}))
    return path


def latest_epoch(directory: str) -> int:
    """Highest completed epoch with a checkpoint in ``directory`` (0 if none)."""
    if not directory:
        return 0
    epochs = [int(m.group(1)) for n in storage.listdir(directory) if (m := _NAME.match(n))]
    return max(epochs, default=0)


@contextlib.contextmanager
def _local_file(path: str) -> Iterator[str]:
    """A local file name for ``path``: itself, or a downloaded temporary copy."""
    local = storage.local_path(path)
    if local is not None:
        yield local
        return
    with tempfile.NamedTemporaryFile(prefix="sparkvision-ckpt-", suffix=".safetensors") as fh:
        fh.write(storage.read_bytes(path))
        fh.flush()
        yield fh.name


def load_checkpoint(
    directory: str, epoch: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Return (model state dict, optimizer state dict, metadata) of one checkpoint."""
    from safetensors import safe_open

    with _local_file(checkpoint_path(directory, epoch)) as path:
        with safe_open(path, framework="pt") as fh:
            info = json.loads(fh.metadata()[_META_KEY])
        tensors = load_file(path)
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    optim_state = _unflatten_optimizer(tensors, info.pop("param_groups"))
    return model_state, optim_state, info
