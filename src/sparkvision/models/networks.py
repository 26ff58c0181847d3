"""Built-in networks. Each works for any input size and channel count.

``input_shape`` is (height, width, channels); inputs are (N, C, H, W) float tensors.
"""

from __future__ import annotations

import torch
from torch import nn


def _flat_features(features: nn.Module, input_shape: tuple[int, int, int]) -> int:
    h, w, c = input_shape
    with torch.no_grad():
        return int(features(torch.zeros(1, c, h, w)).numel())


def _pool(size: int) -> nn.Module:
    # Pooling only while the feature map is big enough keeps tiny images (8x8) working.
    return nn.MaxPool2d(2) if size >= 2 else nn.Identity()


def simple_cnn(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """conv-relu-pool ×2 + dense: the plain CNN used as the benchmark baseline network."""
    h, w, c = input_shape
    features = nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), _pool(min(h, w)),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), _pool(min(h, w) // 2),
        nn.Flatten(),
    )
    flat = _flat_features(features, input_shape)
    return nn.Sequential(
        features, nn.Linear(flat, 128), nn.ReLU(), nn.Linear(128, num_classes)
    )


def small_cnn(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """The default: conv-BN-relu-pool ×2 + dropout + dense."""
    h, w, c = input_shape
    features = nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        _pool(min(h, w)),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        _pool(min(h, w) // 2),
        nn.Flatten(),
    )
    flat = _flat_features(features, input_shape)
    return nn.Sequential(
        features, nn.Dropout(0.25), nn.Linear(flat, 128), nn.ReLU(), nn.Dropout(0.25),
        nn.Linear(128, num_classes),
    )


def lenet5(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """LeNet-5 (conv5-pool-conv5-pool-120-84), padded so small images keep working."""
    h, w, c = input_shape
    features = nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2, ceil_mode=True),
        nn.Conv2d(6, 16, 5, padding=2 if min(h, w) < 20 else 0), nn.Tanh(),
        nn.AvgPool2d(2, ceil_mode=True),
        nn.Flatten(),
    )
    flat = _flat_features(features, input_shape)
    return nn.Sequential(
        features, nn.Linear(flat, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(),
        nn.Linear(84, num_classes),
    )


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def resnet8(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """A narrow ResNet-8 (3 stages of one basic block: 16, 32, 64 channels)."""
    _, _, c = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        _BasicBlock(16, 16, 1), _BasicBlock(16, 32, 2), _BasicBlock(32, 64, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )
