"""Frozen configuration objects handed from the driver to executors.

Code shipped to executors captures one of these, never an Estimator (``self``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training task needs, validated on the driver."""

    model: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (height, width, channels)
    num_workers: int = 2
    epochs: int = 10
    batch_size: int = 64  # per worker
    learning_rate: float = 0.003
    optimizer: str = "adam"  # adam | sgd (momentum 0.9)
    momentum: float = 0.9
    weight_decay: float = 0.0
    loss: str = "cross_entropy"  # cross_entropy | mse (on one-hot)
    lr_schedule: str = "cosine"  # cosine | constant
    augment: str = "shift"  # shift | none
    seed: int = 0
    class_weights: tuple[float, ...] | None = None
    checkpoint_dir: str = ""
    use_gpu: str = "auto"  # auto | true | false
    progress_url: str = ""
    progress_every_steps: int = 20
    # Test hook: raise inside (epoch, rank) on the first stage attempt only.
    fault_injection: tuple[int, int] | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PredictConfig:
    """What an inference task needs: weights travel as safetensors bytes."""

    model: str
    num_classes: int
    image_shape: tuple[int, int, int]
    weights: bytes
    classes: tuple[str, ...]
    image_col: str = "image"
    prediction_col: str = "prediction"
    predicted_label_col: str = "predictedLabel"
    probability_col: str = "probability"
    probabilities_col: str = "probabilities"
    batch_size: int = 1024
