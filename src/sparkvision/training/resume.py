"""Where one rank's training starts: the starting weights (transfer learning) and, after a
failed stage attempt or a restarted fit, the last checkpoint of the same training."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sparkvision.config import TrainConfig
from sparkvision.training.history import EpochRecord

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def fingerprint(config: TrainConfig) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed by this training."""
    return {
        "model": config.model, "num_classes": config.num_classes,
        "image_shape": list(config.image_shape), "num_workers": config.num_workers,
        "batch_size": config.batch_size, "optimizer": config.optimizer,
        "epochs": config.epochs, "seed": config.seed, "freeze": config.freeze,
        "backbone_lr_scale": config.backbone_lr_scale, "privacy": config.privacy,
        "target_epsilon": config.target_epsilon if config.privacy == "dp" else None,
        "init_sha1": hashlib.sha1(config.init_state).hexdigest() if config.init_state else "",
    }


def transfer(model: torch.nn.Module, config: TrainConfig) -> Iterable[Any]:
    """Load the starting tensors (the rest keep their seeded initialisation), freeze the
    backbone; return what the optimizer trains (parameter groups when the backbone's
    learning rate differs from the head's)."""
    from sparkvision.models.parts import freeze_backbone, head_name, parameter_groups
    from sparkvision.models.weights import load_state_dict_bytes

    if config.init_state:
        model.load_state_dict(load_state_dict_bytes(config.init_state), strict=False)
    if config.freeze == "none" and config.backbone_lr_scale == 1.0:
        return model.parameters()
    head = head_name(model, config.num_classes)
    if config.freeze == "backbone":
        freeze_backbone(model, head)
    return parameter_groups(model, head, config.backbone_lr_scale)


@dataclass
class Resumed:
    """The epoch a rank starts after (0: from the start) and the history so far."""

    start_epoch: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    resumed_from: int | None = None


def restore(config: TrainConfig, rank: int, model: torch.nn.Module,
            optimizer: torch.optim.Optimizer) -> Resumed:
    """Load the latest checkpoint of ``config.checkpoint_dir`` into ``model`` and
    ``optimizer`` (collective: rank 0 picks the checkpoint so every rank loads the same one);
    ``TrainingError`` when the folder holds checkpoints of another training."""
    from sparkvision.training import checkpoint as ckpt
    from sparkvision.training.process_group import allreduce

    latest = allreduce([ckpt.latest_epoch(config.checkpoint_dir) if rank == 0 else 0])[0]
    start_epoch = int(latest)
    if start_epoch == 0:
        return Resumed()
    state, opt_state, info = ckpt.load_checkpoint(config.checkpoint_dir, start_epoch)
    if info.get("fingerprint") != fingerprint(config):
        from sparkvision.errors import TrainingError

        raise TrainingError(
            f"checkpointDir {config.checkpoint_dir} holds checkpoints of another training "
            f"({info.get('fingerprint')}); use an empty folder to start a new one"
        )
    model.load_state_dict(state)
    optimizer.load_state_dict(opt_state)
    if rank == 0:
        log.warning("resuming from checkpoint after epoch %d", start_epoch)
    where = f"the checkpoint of epoch {start_epoch} in {config.checkpoint_dir}"
    history = [EpochRecord.from_dict(e, where) for e in info.get("history", [])]
    return Resumed(start_epoch, history, start_epoch)
