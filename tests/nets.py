"""Networks for tests, named by import path (Spark's Python workers start in the repo root,
so ``tests.nets:...`` imports on executors as it does on the driver)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn


class _Overflowing(nn.Module):
    """Logits scaled past float32's range: the loss is NaN from the first step."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        h, w, c = input_shape
        self.linear = nn.Linear(h * w * c, num_classes)
        self.scale = nn.Parameter(torch.tensor(1e38))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)) * self.scale * self.scale


def overflowing(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    return _Overflowing(num_classes, input_shape)


class _Spectral(nn.Module):
    """A network torch.onnx cannot export (``aten::fft_fft`` has no ONNX symbolic) but
    TorchScript can trace."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        h, w, c = input_shape
        self.linear = nn.Linear(h * w * c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.fft.fft(x.flatten(1)).abs())


def spectral(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    return _Spectral(num_classes, input_shape)


def linear(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """One linear layer over the pixels: for tests about data and memory, not about
    learning (a step costs ~1 ms where ``cnn`` takes seconds on big images)."""
    h, w, c = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(h * w * c, num_classes))


#: A file that ``fails_in_task`` appends one line to per call inside a task (when set).
BUILD_MARKER_ENV = "SPARKVISION_TEST_BUILD_MARKER"


def fails_in_task(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """Builds on the driver, raises inside a Spark task (an executor without some resource);
    each call in a task leaves a line in the file ``BUILD_MARKER_ENV`` names, if any."""
    import os

    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is not None:
        marker = os.environ.get(BUILD_MARKER_ENV)
        if marker:
            with open(marker, "a", encoding="utf-8") as fh:
                fh.write(f"partition {ctx.partitionId()} task {ctx.taskAttemptId()}\n")
        raise RuntimeError("CUDA driver not found on this executor")
    h, w, c = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(h * w * c, num_classes))


class _StallsOnRank1(nn.Module):
    """Rank 1 (the second barrier task) hangs in its 5th training forward pass: an executor
    stuck in user code, for the hang watchdog."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        h, w, c = input_shape
        self.linear = nn.Linear(h * w * c, num_classes)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if self.training and ctx is not None and ctx.partitionId() == 1:
            self.calls += 1
            if self.calls == 5:
                import time

                time.sleep(3600)
        return self.linear(x.flatten(1))


def stalls_on_rank1(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    return _StallsOnRank1(num_classes, input_shape)


#: The Spark local property through which :func:`failing_once` tells ``fails_once``'s tasks
#: where to fail (local properties of the thread that submits a job reach its tasks).
FAULT_PROPERTY = "tests.nets.fault"


@contextlib.contextmanager
def failing_once(spark: Any, epoch: int, rank: int, marker: Path,
                 stall: bool = False) -> Iterator[None]:
    """While this block runs, a ``tests.nets:fails_once`` network trained by the calling
    thread raises (or, with ``stall``, hangs for an hour) in the first training step of its
    ``epoch``-th epoch on rank ``rank``, once: it writes ``marker`` first, and a retried
    task that finds the marker trains on (the way a transient failure of user code, or a
    transient hang, meets a task)."""
    sc = spark.sparkContext
    sc.setLocalProperty(FAULT_PROPERTY, json.dumps(
        {"epoch": epoch, "rank": rank, "marker": str(marker), "stall": stall}))
    try:
        yield
    finally:
        sc.setLocalProperty(FAULT_PROPERTY, None)


class _FailsOnce(nn.Module):
    """The built-in ``cnn``, plus the fault :func:`failing_once` plans. Epochs are counted by
    the switches to training mode (each epoch's ``train()``, after the last one's
    validation in eval mode)."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        from sparkvision.models import build_model

        self.net = build_model("cnn", num_classes, input_shape)
        self.epoch = 0
        self.steps_in_epoch = 0

    def train(self, mode: bool = True) -> _FailsOnce:
        if mode:
            self.epoch += 1
            self.steps_in_epoch = 0
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.steps_in_epoch += 1
            if self.steps_in_epoch == 1:
                self._maybe_fail()
        return self.net(x)

    def _maybe_fail(self) -> None:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        plan = ctx.getLocalProperty(FAULT_PROPERTY) if ctx is not None else None
        if not plan:
            return
        fault = json.loads(plan)
        if (self.epoch, ctx.partitionId()) != (fault["epoch"], fault["rank"]):
            return
        marker = Path(fault["marker"])
        if marker.exists():  # the retry of the failed stage
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        if fault.get("stall"):
            import time

            time.sleep(3600)
        raise RuntimeError(f"injected failure in epoch {self.epoch} on rank {ctx.partitionId()}")


def fails_once(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    return _FailsOnce(num_classes, input_shape)


def returns_a_string(num_classes: int, input_shape: tuple[int, int, int]) -> str:
    """Not a network: the driver-side check refuses it before any job."""
    return "cnn"


def conv_head(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """Classifies with a 1x1 convolution and global pooling: no Linear head to recognise."""
    _, _, c = input_shape
    return nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def linear_only(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """Flatten + Linear: no convolutional layer (Grad-CAM has nothing to look at)."""
    h, w, c = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(h * w * c, num_classes))


class _RunningScale(nn.Module):
    """A trainable scale with a running-mean buffer: statistics of the batch that Opacus
    can neither privatise nor replace."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(features))
        self.register_buffer("running_mean", torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.running_mean.mul_(0.9).add_(0.1 * x.detach().mean(0))
        return x * self.scale


def running_scale(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    h, w, c = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(h * w * c, 16), _RunningScale(16),
                         nn.Linear(16, num_classes))
