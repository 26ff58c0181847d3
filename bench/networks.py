"""Networks for the benchmarks, named by import path (``bench.networks:wide_mlp``): the
repository root must be on the executors' ``PYTHONPATH`` (``bench/multihost.py`` sets it
for its cluster), and the driver runs from the root."""

from __future__ import annotations

from torch import nn

#: Width of ``wide_mlp``'s hidden layers: 10.0M parameters on 28x28x1 MNIST.
WIDTH = 2048


def wide_mlp(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """Three hidden layers of :data:`WIDTH` (ReLU): a gradient of ~40 MB in float32 per step,
    for little compute per sample — the network whose training the link limits."""
    h, w, c = input_shape
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(h * w * c, WIDTH), nn.ReLU(),
        nn.Linear(WIDTH, WIDTH), nn.ReLU(),
        nn.Linear(WIDTH, WIDTH), nn.ReLU(),
        nn.Linear(WIDTH, num_classes),
    )
