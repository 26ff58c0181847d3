"""`prepare` of raw TFRecords (image bytes + height/width/channels): the shape comes from
one aggregate over every record, so records of two sizes are one clear error unless
``--image-size`` resizes them to one, and records of one size keep it."""

from __future__ import annotations

import numpy as np
import pytest

from sparkvision import PrepareConfig, prepare
from sparkvision.data import tf_example, tfrecord
from sparkvision.errors import DataError


def _raw_records(path, sizes: list[tuple[int, int]]) -> None:
    rng = np.random.default_rng(0)
    with tfrecord.open_for_write(str(path)) as fh:
        for i, (h, w) in enumerate(sizes):
            image = rng.integers(0, 256, (h, w, 1), dtype=np.uint8)
            tfrecord.write_record(fh, tf_example.encode_example({
                "image": ("bytes", [image.tobytes()]), "label": ("int64", [i % 2]),
                "height": ("int64", [h]), "width": ("int64", [w]), "channels": ("int64", [1]),
            }))


def test_raw_records_of_one_size_keep_it(spark, tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    _raw_records(src / "a.tfrecord", [(12, 9)] * 20)
    result = prepare(spark, PrepareConfig(source=str(src), out=str(tmp_path / "out")))
    assert result.image_shape == [12, 9, 1] and sum(result.splits.values()) == 20


def test_raw_records_of_two_sizes_need_an_image_size(spark, tmp_path):
    src = tmp_path / "mixed"
    src.mkdir()
    _raw_records(src / "a.tfrecord", [(12, 9)] * 10 + [(8, 8)] * 10)
    with pytest.raises(DataError, match=r"different sizes \(height 8\.\.12, width 8\.\.9, "
                       r"channels 1\.\.1\): give --image-size"):
        prepare(spark, PrepareConfig(source=str(src), out=str(tmp_path / "out")))
    resized = prepare(spark, PrepareConfig(source=str(src), out=str(tmp_path / "out2"),
                                           image_size=(6, 6)))
    assert resized.image_shape == [6, 6, 1] and sum(resized.splits.values()) == 20
