"""Executor side of ``explain`` (``job.py``): one ``mapInArrow`` pass over every row
computes each row's attribution map (``inference/explain.py``, on the worker's cached
network), adds it to its class's running sums, and returns the chosen rows whole (image +
map) and, per partition, one row per class with the sums of its maps and pixels and its
count."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa

from sparkvision.inference.arrays import image_batch, list_array
from sparkvision.inference.explain import ExplainConfig, explainer_for
from sparkvision.inference.network_cache import TrainedNetwork

#: Rows ``explain_partition`` returns: ``kind`` = ``image`` (a chosen row: its image and
#: map) or ``sum`` (one per class and partition: the sums of maps and pixels, the count).
EXPLAIN_DDL = (
    "kind STRING, cls BIGINT, grp INT, key BIGINT, path STRING, label BIGINT, "
    "prediction BIGINT, target BIGINT, score DOUBLE, image BINARY, attribution ARRAY<FLOAT>, "
    "attribution_sum ARRAY<DOUBLE>, pixel_sum ARRAY<DOUBLE>, count BIGINT"
)


class _Sums:
    """Per-class running sums of maps (H·W) and pixels (H·W·C), float64, and counts."""

    def __init__(self, image_shape: tuple[int, int, int]) -> None:
        h, w, c = image_shape
        self.size = (h * w, h * w * c)
        self.maps: dict[int, np.ndarray] = {}
        self.pixels: dict[int, np.ndarray] = {}
        self.counts: dict[int, int] = {}

    def add(self, classes: np.ndarray, maps: np.ndarray, images: np.ndarray) -> None:
        n = len(classes)
        flat_maps = maps.reshape(n, -1).astype(np.float64)
        flat_pixels = images.reshape(n, -1)
        for cls in np.unique(classes):
            rows = classes == cls
            k = int(cls)
            if k not in self.maps:
                self.maps[k] = np.zeros(self.size[0], np.float64)
                self.pixels[k] = np.zeros(self.size[1], np.float64)
                self.counts[k] = 0
            self.maps[k] += flat_maps[rows].sum(axis=0)
            self.pixels[k] += flat_pixels[rows].sum(axis=0, dtype=np.float64)
            self.counts[k] += int(rows.sum())

    def batch(self, schema: pa.Schema) -> pa.RecordBatch:
        classes = sorted(self.maps)
        n = len(classes)
        maps = np.stack([self.maps[k] for k in classes]) if n else np.zeros((0, 0))
        pixels = np.stack([self.pixels[k] for k in classes]) if n else np.zeros((0, 0))
        columns = {name: pa.nulls(n, schema.field(name).type) for name in schema.names}
        columns.update(
            kind=pa.array(["sum"] * n, pa.string()),
            cls=pa.array(classes, pa.int64()),
            attribution_sum=list_array(maps, pa.float64()),
            pixel_sum=list_array(pixels, pa.float64()),
            count=pa.array([self.counts[k] for k in classes], pa.int64()),
        )
        return pa.RecordBatch.from_arrays([columns[name] for name in schema.names],
                                          schema=schema)


def explain_partition(batches: Iterator[pa.RecordBatch], config: ExplainConfig,
                      trained: TrainedNetwork, chosen: frozenset[int], schema: pa.Schema
                      ) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` body over every row of a partition (columns ``image``, ``cls``,
    ``grp``, ``key``, ``target``, ``score``, ``label``, ``prediction``, ``path``): the map
    of every row is computed and added to its class's sums; the rows whose ``key`` is in
    ``chosen`` come back whole (image + map), then one ``sum`` row per class seen."""
    import torch

    torch.set_num_threads(1)
    explainer = explainer_for(config, trained)
    sums = _Sums(config.image_shape)
    wanted = np.fromiter(chosen, np.int64, len(chosen))
    for batch in batches:
        n = batch.num_rows
        if not n:
            continue
        images = image_batch(batch.column("image"), config.image_shape)
        targets = batch.column("target").to_numpy(zero_copy_only=False).astype(np.int64)
        classes = batch.column("cls").to_numpy(zero_copy_only=False).astype(np.int64)
        maps = explainer.attribute(images, targets)
        sums.add(classes, maps, images)
        keys = batch.column("key").to_numpy(zero_copy_only=False)
        picked = np.flatnonzero(np.isin(keys, wanted))
        if not len(picked):
            continue
        rows = batch.take(pa.array(picked))
        m = len(picked)
        columns = {name: pa.nulls(m, schema.field(name).type) for name in schema.names}
        for name in ("cls", "grp", "key", "path", "label", "prediction", "target", "score",
                     "image"):
            if name in rows.schema.names:
                columns[name] = rows.column(name).cast(schema.field(name).type)
        columns["kind"] = pa.array(["image"] * m, pa.string())
        columns["attribution"] = list_array(maps[picked], pa.float32())
        yield pa.RecordBatch.from_arrays([columns[name] for name in schema.names],
                                         schema=schema)
    yield sums.batch(schema)


def explain_schema() -> pa.Schema:
    """The Arrow schema of ``EXPLAIN_DDL`` (built here: executors have no JVM to parse DDL)."""
    return pa.schema([
        ("kind", pa.string()), ("cls", pa.int64()), ("grp", pa.int32()), ("key", pa.int64()),
        ("path", pa.string()), ("label", pa.int64()), ("prediction", pa.int64()),
        ("target", pa.int64()), ("score", pa.float64()), ("image", pa.binary()),
        ("attribution", pa.list_(pa.float32())), ("attribution_sum", pa.list_(pa.float64())),
        ("pixel_sum", pa.list_(pa.float64())), ("count", pa.int64()),
    ])


def explain_partition_fn(config: ExplainConfig, chosen: frozenset[int]
                         ) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function to give ``DataFrame.mapInArrow`` with ``EXPLAIN_DDL`` (the weights are
    hashed here, on the driver, once)."""
    trained = TrainedNetwork.of(config)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return explain_partition(batches, config, trained, chosen, explain_schema())

    return run
