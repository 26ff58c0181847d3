"""What differs on the oldest supported pyspark (4.0): the tfrecords source cannot be
streamed (Python stream sources got read limits in 4.1), which is one clear error; the
inference UDFs run as pandas UDFs there (``make test-compat`` runs their Spark tests)."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pytest

from sparkvision.data import datasource
from sparkvision.errors import DataError
from sparkvision.inference.arrays import pandas_function


def test_streaming_the_source_without_read_limits_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(datasource, "STREAM_READER", None)
    source = datasource.TFRecordDataSource({"path": str(tmp_path)})
    with pytest.raises(DataError, match=r"needs pyspark 4\.1 or newer \(this is pyspark "
                       r"[0-9.]+, .*\): upgrade pyspark, or stream image files"):
        source.streamReader(None)


def test_the_pandas_twin_converts_at_its_edges():
    """The function pyspark 4.0 runs: Series in, Arrow to ``fn``, a Series or a DataFrame
    (struct) out — called here as pandas_udf's iterator form calls it."""
    import pandas as pd

    def sizes(arrays: Iterator[tuple[pa.Array, pa.Array]]) -> Iterator[pa.Array]:
        for images, scale in arrays:
            yield pa.StructArray.from_arrays(
                [pa.array([len(b.as_py()) * s.as_py() for b, s in zip(images, scale,
                                                                       strict=True)]),
                 pa.array([[0.5, 0.5]] * len(images), pa.list_(pa.float64()))],
                names=["n", "p"])

    twin = pandas_function(sizes)
    out = list(twin(iter([(pd.Series([b"ab", b"cde"]), pd.Series([1, 10]))])))
    assert len(out) == 1 and isinstance(out[0], pd.DataFrame)
    assert out[0]["n"].tolist() == [2, 30] and [list(p) for p in out[0]["p"]] == [[0.5] * 2] * 2
