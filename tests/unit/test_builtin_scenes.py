"""The built-in ``scenes`` data set: seeded random crops of real sample photos."""

from __future__ import annotations

import numpy as np

from sparkvision.data.builtin import (
    BUILTIN_SOURCES,
    SCENE_PHOTOS,
    SCENES_PER_CLASS,
    load_builtin,
    load_scenes,
    scene_crops,
)


def test_scenes_is_a_builtin_source_of_128px_rgb_uint8_images():
    assert "scenes" in BUILTIN_SOURCES
    ds = load_builtin("scenes")
    k = len(SCENE_PHOTOS)
    assert 5 <= k <= 6
    assert ds.name == "scenes"
    assert ds.images.shape == (k * SCENES_PER_CLASS, 128, 128, 3)
    assert ds.images.dtype == np.uint8 and ds.images.flags.c_contiguous
    assert ds.image_shape == (128, 128, 3)
    assert ds.labels.dtype == np.int64
    assert ds.classes == tuple(c for c, _, _ in SCENE_PHOTOS)
    assert len(set(ds.classes)) == k
    assert np.bincount(ds.labels).tolist() == [SCENES_PER_CLASS] * k
    # photos, not flat fills: every image has contrast (some crops are mostly sky)
    spread = ds.images.reshape(len(ds.images), -1, 3).std(axis=1)
    assert (spread.max(axis=1) > 5).all()


def test_scenes_is_deterministic():
    a, b = load_scenes(per_class=6, size=32), load_scenes(per_class=6, size=32)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    c = load_scenes(per_class=6, size=32, seed=1)
    assert not np.array_equal(a.images, c.images)


def test_crops_differ_within_and_across_classes():
    ds = load_scenes(per_class=10, size=48)
    flat = ds.images.reshape(len(ds.images), -1)
    assert len({row.tobytes() for row in flat}) == len(flat)
    # the first crops of two classes differ more than any pixel noise would
    per_class = flat.reshape(len(SCENE_PHOTOS), 10, -1).astype(np.int16)
    for k in range(1, len(SCENE_PHOTOS)):
        assert np.abs(per_class[0] - per_class[k]).mean() > 10


def test_scene_crops_vary_in_scale_position_and_flip():
    # a horizontal ramp: a crop's mean tells its position, its left-right slope its flip,
    # its span of values its scale
    ramp = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (200, 1, 3))
    crops = scene_crops(ramp, 40, np.random.default_rng(3), size=16).astype(np.int16)
    row = crops[:, 8, :, 0]
    slope = row[:, -1] - row[:, 0]
    assert (slope > 0).any() and (slope < 0).any()  # some flipped, some not
    assert np.ptp(np.abs(slope)) > 30  # different crop sizes
    assert np.ptp(row.mean(axis=1)) > 50  # different positions
    assert (np.abs(slope) >= 0.25 * 200 * 0.8).all()
    assert (np.abs(slope) <= 0.7 * 200).all()
