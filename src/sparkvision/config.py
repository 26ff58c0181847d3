"""Defaults and the frozen configuration objects handed from the driver to executors.

Every default is written once, here: the Params, the CLI flags and the configs read it.
Code shipped to executors captures a config, never an Estimator (``self``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Default of every ``ImageClassifier`` Param (camelCase, as the Params are named).
CLASSIFIER_DEFAULTS: dict[str, Any] = {
    "model": "cnn",
    "numWorkers": 2,
    "epochs": 10,
    "batchSize": 64,  # per worker
    "learningRate": 0.003,
    "optimizer": "adam",  # adam | sgd (momentum 0.9)
    "weightDecay": 0.0,
    "loss": "cross_entropy",  # cross_entropy | mse (on one-hot) | focal
    "focalGamma": 2.0,
    "lrSchedule": "cosine",  # cosine | constant
    "augment": "shift",  # shift | none
    "seed": 0,
    "imageCol": "image",
    "labelCol": "label",
    "validationFraction": 0.0,
    "checkpointDir": "",
    "classWeights": [],
    "balance": "none",  # none | oversample | undersample | weights
    "useGpu": "auto",  # auto | true | false
    # seconds a training rank may go without progress before the driver fails the training
    "stallTimeout": 600.0,
    # MB of images a training task holds in memory; a larger partition is spilled to the
    # executor's local dir and memory-mapped. 0: auto (see data.spill.memory_budget)
    "memoryBudgetMB": 0.0,
    "repartition": True,
    # transfer learning: starting weights (a safetensors state dict, or one of our model
    # folders: its head is re-initialised when its classes differ), what to train
    "initWeights": "",
    "initStrict": True,
    "initFrom": "",
    "freeze": "none",  # none | backbone (only the classifier head trains)
    "backboneLrScale": 1.0,  # the backbone's learning rate = learningRate × this
    # differential privacy (Opacus DP-SGD): none | dp
    "privacy": "none",
    "targetEpsilon": 8.0,  # ε the whole training may spend (at targetDelta)
    "targetDelta": 1e-5,  # must be below 1 / training rows
    "maxGradNorm": 1.0,  # each example's gradient is clipped to this L2 norm
    "imageShape": [],
    "classes": [],
}

#: Default of every output-column Param of ``ImageClassificationModel``.
OUTPUT_DEFAULTS: dict[str, Any] = {
    "predictionCol": "prediction",
    "rawPredictionCol": "rawPrediction",
    "probabilityCol": "probability",
    "predictedLabelCol": "predictedLabel",
    "confidenceCol": "confidence",
    "inferenceBatchSize": 1024,
    # auto (onnxruntime where installed and the network exports, else torch) | torch |
    # onnxruntime
    "inferenceBackend": "auto",
}

#: Seconds a training rank waits in a collective (gloo/nccl) for the other ranks before its
#: task fails and Spark retries the stage (env SPARKVISION_COLLECTIVE_TIMEOUT_S overrides).
COLLECTIVE_TIMEOUT_S = 600.0

_D = CLASSIFIER_DEFAULTS


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training task needs, validated on the driver."""

    model: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (height, width, channels)
    num_workers: int = _D["numWorkers"]
    epochs: int = _D["epochs"]
    batch_size: int = _D["batchSize"]
    learning_rate: float = _D["learningRate"]
    optimizer: str = _D["optimizer"]
    momentum: float = 0.9
    weight_decay: float = _D["weightDecay"]
    loss: str = _D["loss"]
    focal_gamma: float = _D["focalGamma"]
    lr_schedule: str = _D["lrSchedule"]
    augment: str = _D["augment"]
    seed: int = _D["seed"]
    class_weights: tuple[float, ...] | None = None
    checkpoint_dir: str = _D["checkpointDir"]
    use_gpu: str = _D["useGpu"]
    progress_url: str = ""
    progress_token: str = ""  # the progress endpoint's per-fit secret
    progress_mailbox: str = ""  # folder for events when the endpoint is unreachable
    stall_timeout_s: float = _D["stallTimeout"]
    prefetch: bool = False  # set by a task whose images are memory-mapped (spilled)
    memory_budget_mb: float = _D["memoryBudgetMB"]
    #: safetensors bytes of the tensors that start the network (the rest keep their
    #: seeded initialisation); computed and checked on the driver
    init_state: bytes = b""
    freeze: str = _D["freeze"]
    backbone_lr_scale: float = _D["backboneLrScale"]
    privacy: str = _D["privacy"]
    target_epsilon: float = _D["targetEpsilon"]
    target_delta: float = _D["targetDelta"]
    max_grad_norm: float = _D["maxGradNorm"]
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
    batch_size: int = OUTPUT_DEFAULTS["inferenceBatchSize"]
    backend: str = OUTPUT_DEFAULTS["inferenceBackend"]
