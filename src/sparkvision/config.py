"""The frozen configuration objects handed from the driver to executors.

Every setting and its default is written once, in ``sparkvision.settings``; the configs
here extend or read those tables. Code shipped to executors captures a config, never an
Estimator (``self``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sparkvision.settings import OutputSettings, TrainSettings, rows

#: Seconds a training rank waits in a collective (gloo/nccl) for the other ranks before its
#: task fails and Spark retries the stage (env SPARKVISION_COLLECTIVE_TIMEOUT_S overrides).
COLLECTIVE_TIMEOUT_S = 600.0
#: Seconds the ranks try to reach each other while the process group forms (at most the
#: collective timeout): a rank that cannot connect by then fails the training once.
CONNECT_TIMEOUT_S = 120.0


@dataclass(frozen=True, kw_only=True)
class TrainConfig(TrainSettings):
    """Everything a training task needs, validated on the driver: every training setting
    (``settings.TrainSettings``, with ``model``, ``image_shape``, ``classes`` and
    ``class_weights`` resolved from the data) and what the driver adds for the run."""

    num_classes: int
    image_shape: tuple[int, int, int]  # (height, width, channels), from the data
    momentum: float = 0.9
    progress_url: str = ""
    progress_token: str = ""  # the progress endpoint's per-fit secret
    progress_mailbox: str = ""  # folder for events when the endpoint is unreachable
    prefetch: bool = False  # set by a task whose images are memory-mapped (spilled)
    #: safetensors bytes of the tensors that start the network (the rest keep their
    #: seeded initialisation); computed and checked on the driver
    init_state: bytes = b""
    progress_every_steps: int = 20
    extra: dict[str, str] = field(default_factory=dict)


_OUT = {r.param: r.default for r in rows(OutputSettings)}


@dataclass(frozen=True)
class PredictConfig:
    """What an inference task needs: weights travel as safetensors bytes."""

    model: str
    num_classes: int
    image_shape: tuple[int, int, int]
    weights: bytes
    classes: tuple[str, ...]
    batch_size: int = _OUT["inferenceBatchSize"]
    backend: str = _OUT["inferenceBackend"]
    input_mean: tuple[float, ...] = ()  # the model's normalisation (empty: [-1, 1] scaling)
    input_std: tuple[float, ...] = ()
    #: probabilities are softmax(logits / temperature) (the model's calibration)
    temperature: float = _OUT["temperature"]
