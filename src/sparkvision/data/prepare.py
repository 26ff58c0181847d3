"""`prepare`: its config and result, and the run that ties the path together: source →
listing (hashes per class) → where each split starts → one job that decodes, validates,
resizes, splits and writes → shards + manifest.

The driver lists and hashes (:mod:`sparkvision.data.listing`) and only sees metadata
(class names, counts, rejected file names); the tasks (:mod:`sparkvision.data.prepare_tasks`)
read the files and write the shards (:mod:`sparkvision.data.shards`); the split is
:mod:`sparkvision.data.splitting`; ingested TFRecords are
:mod:`sparkvision.data.ingest_tfrecords`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sparkvision import storage
from sparkvision.data.builtin import BUILTIN_SOURCES, load_builtin
from sparkvision.data.decoding import (
    DEFAULT_FOLDER_SIZE,
    MAX_LISTED_REJECTED,
    REJECTED_FILE,
    looks_like_tfrecords,
)
from sparkvision.data.images import ENCODINGS, ImageSpec
from sparkvision.data.ingest_tfrecords import tfrecords_frame
from sparkvision.data.listing import LISTING_DIR, Listing, list_builtin, list_folder
from sparkvision.data.manifest import SPLITS, write_manifest
from sparkvision.data.prepare_tasks import (
    CHECKED_DDL,
    COUNTS_DDL,
    TaskPlan,
    run_check_tasks,
    run_write_rows,
    run_write_tasks,
)
from sparkvision.data.shards import ShardFormat, commit_splits, merge_rejected
from sparkvision.data.splitting import minority_classes, path_hash, split_starts
from sparkvision.errors import DataError, InvalidParameterError

log = logging.getLogger(__name__)

FORMATS = ("tfrecords", "parquet")
STORES = ("raw", "encoded")


@dataclass(frozen=True)
class PrepareConfig:
    source: str
    out: str
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 42
    fmt: str = "tfrecords"
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    #: shard files per split = tasks; None: one task per ``ROWS_PER_TASK``..
    #: ``MAX_ROWS_PER_TASK`` rows (:func:`task_count`)
    num_shards: int | None = None
    #: > 1: the first half of the classes keep 1/imbalance of their training images
    #: (val/test untouched): a deliberately imbalanced training split for tests and demos.
    imbalance: float | None = None
    #: raw (uint8 pixels) or encoded (PNG/JPEG bytes at the target size, ``encoding``)
    store: str = "raw"
    encoding: str = "png"

    def __post_init__(self) -> None:
        """Validate on construction, so a CLI fails before Spark starts."""
        if self.fmt not in FORMATS:
            raise InvalidParameterError("format", self.fmt, f"use one of {', '.join(FORMATS)}")
        if self.channels not in (None, 1, 3):
            raise InvalidParameterError("channels", self.channels,
                                        "use 1 (grayscale) or 3 (RGB)")
        if self.store not in STORES:
            raise InvalidParameterError("store", self.store, f"use one of {', '.join(STORES)}")
        if self.encoding not in ENCODINGS:
            raise InvalidParameterError("encoding", self.encoding,
                                        f"use one of {', '.join(ENCODINGS)}")
        if self.num_shards is not None and self.num_shards < 1:
            raise InvalidParameterError("num-shards", self.num_shards, "use 1 or more")
        if self.imbalance is not None and not self.imbalance > 1:
            raise InvalidParameterError(
                "imbalance", self.imbalance, "give a ratio > 1, e.g. 10 (the first half of "
                "the classes keep 1/10 of their training images)")


@dataclass
class PrepareResult:
    out: str
    classes: list[str]
    image_shape: list[int]
    splits: dict[str, int]
    per_class: dict[str, dict[str, int]]
    rejected: list[dict[str, str]]  # the first MAX_LISTED_REJECTED, by path
    rejected_count: int
    rejected_file: str | None  # all of them (JSON lines), beside dataset.json
    source: str
    seed: int
    format: str
    split_fractions: list[float]
    imbalance: dict[str, Any] | None = None
    storage: str = "raw"  # raw | png | jpeg
    seconds: float = 0.0
    #: seconds per phase: list (the driver's listing), session (from the listing to the
    #: Spark part: the JVM's start when the CLI starts it), check (small classes), write
    #: (the one job), commit (rejected files merged, splits swapped in)
    phases: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        data.pop("phases")
        data["image_shape"] = list(self.image_shape)
        data["paths"] = {s: s for s in SPLITS}
        data["version"] = 1
        return data


# ----------------------------------------------------------------------------- parsing


def parse_split(text: str) -> tuple[float, float, float]:
    """Parse ``"0.8,0.1,0.1"`` into three fractions that sum to 1."""
    fix = "give three non-negative fractions train,val,test that sum to 1, e.g. 0.8,0.1,0.1"
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 3:
        raise InvalidParameterError("split", text, fix)
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise InvalidParameterError("split", text, fix) from None
    if any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6 or values[0] <= 0:
        raise InvalidParameterError("split", text, fix)
    return values  # type: ignore[return-value]


def parse_image_size(text: str | int | None) -> tuple[int, int] | None:
    """Parse ``28`` or ``"32x24"`` (height x width)."""
    if text is None:
        return None
    fix = "give one size like 28 or HEIGHTxWIDTH like 32x24 (1..4096)"
    try:
        parts = [int(p) for p in str(text).lower().split("x")]
    except ValueError:
        raise InvalidParameterError("image-size", text, fix) from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(1 <= p <= 4096 for p in parts):
        raise InvalidParameterError("image-size", text, fix)
    return parts[0], parts[1]


# ----------------------------------------------------------------------------- main entry


def check_source(source: str) -> None:
    """Raise a clear DataError unless ``source`` is a built-in data set or an existing path."""
    if source not in BUILTIN_SOURCES and not Path(source).exists():
        raise DataError(
            f"unknown source {source!r}: not a built-in data set and no such path; use one "
            f"of {', '.join(BUILTIN_SOURCES)}, an image folder (one sub-folder per class) "
            "or a TFRecord folder"
        )


def _resolve_spec(config: PrepareConfig, default_hw: tuple[int, int], default_c: int) -> ImageSpec:
    h, w = config.image_size or default_hw
    return ImageSpec(h, w, config.channels or default_c)


#: Rows per task: at least ``ROWS_PER_TASK`` (a Python task costs ~45 ms of its own here),
#: at most ``MAX_ROWS_PER_TASK`` (a retry redoes a task's rows), aiming at ``TASKS`` tasks.
ROWS_PER_TASK = 1000
MAX_ROWS_PER_TASK = 10000
TASKS = 64
#: Classes with fewer files than this are decoded once before the split is decided, so
#: that rejected files leave no hole in them (a class of 3 good files gets one in each split
#: whatever else its folder holds); in larger classes a rejected file leaves its place empty.
CHECKED_CLASS_SIZE = 1000


def task_count(rows: int, num_shards: int | None) -> int:
    """How many tasks (= shard files per split, at most) ``prepare`` runs for ``rows``
    rows: ``num_shards`` when given."""
    if num_shards is not None:
        return num_shards
    per_task = min(MAX_ROWS_PER_TASK, max(ROWS_PER_TASK, -(-rows // TASKS)))
    return max(1, -(-rows // per_task))


def _tasks_frame(spark, tasks: int):
    return spark.range(0, tasks, 1, tasks)


def _check_small_classes(spark, plan: TaskPlan, listing: Listing) -> list[tuple[str, str, str]]:
    """Decode the files of the small classes (:data:`CHECKED_CLASS_SIZE`); drop the bad
    ones from the listing's hashes; return their (relative path, path, reason)."""
    import numpy as np

    small = frozenset(c for c, h in listing.hashes.items() if len(h) < CHECKED_CLASS_SIZE)
    if not small:
        return []
    rows = _tasks_frame(spark, plan.tasks).mapInArrow(
        functools.partial(run_check_tasks, plan=plan, classes=small), CHECKED_DDL).collect()
    bad = sorted((r.rel, r.path, r.error) for r in rows)
    gone: dict[str, list[int]] = {}
    for rel, _, _ in bad:
        gone.setdefault(rel.split("/", 1)[0], []).append(path_hash(rel, plan.seed))
    for name, hashes in gone.items():
        values = listing.hashes[name]
        listing.hashes[name] = values[~np.isin(values, np.array(hashes, np.uint64))]
    return bad


def _write(spark, plan: TaskPlan, frame=None) -> dict[tuple[str, int], int]:
    """Run the writing job (over ``frame``'s rows, else over the plan's tasks); rows
    written per (split, label)."""
    if frame is None:
        written = _tasks_frame(spark, plan.tasks).mapInArrow(
            functools.partial(run_write_tasks, plan=plan), COUNTS_DDL)
    else:
        written = frame.mapInArrow(functools.partial(run_write_rows, plan=plan), COUNTS_DDL)
    totals = written.groupBy("split", "label").sum("rows").collect()
    return {(r.split, int(r.label)): int(r["sum(rows)"]) for r in totals}


def _tfrecords_hashes(decoded, seed: int) -> dict[str, Any]:
    """Per label (as a class name), the hashes of the paths of ingested rows (streamed
    to the driver: 8 bytes a row are kept)."""
    from array import array

    import numpy as np

    hashes: dict[str, array] = {}
    for row in decoded.select("label", "path").toLocalIterator():
        hashes.setdefault(str(row.label), array("Q")).append(path_hash(row.path, seed))
    return {c: np.frombuffer(h, dtype=np.uint64) for c, h in hashes.items()}


@dataclass
class PreparePlan:
    """What ``prepare`` knows before Spark starts: the output, the run's temporary folder,
    and for a folder or a built-in data set the listing and the tasks' plan."""

    config: PrepareConfig
    out: str
    work: str
    started: float
    listed: float = 0.0  # time.monotonic() when the listing ended
    listing: Listing | None = None  # None: ingested TFRecords (listed with Spark)
    tasks: TaskPlan | None = None
    classes: list[str] = field(default_factory=list)
    image_shape: tuple[int, ...] = ()


@contextlib.contextmanager
def plan_prepare(config: PrepareConfig) -> Iterator[PreparePlan]:
    """List the source without Spark (bad input fails here, before a JVM starts); the
    run's temporary folder is removed when the block ends."""
    started = time.monotonic()
    source = config.source
    out = storage.absolute(config.out)  # a local folder or any fsspec URL (s3://...)
    if source not in BUILTIN_SOURCES:
        check_source(source)
    storage.makedirs(out)
    work = storage.join(out, f"_prepare-{uuid.uuid4().hex[:12]}")
    shape = ShardFormat(config.fmt, config.store, config.encoding)
    planned = PreparePlan(config, out, work, started)
    try:
        if source in BUILTIN_SOURCES:
            ds = load_builtin(source)
            spec = (_resolve_spec(config, ds.image_shape[:2], ds.image_shape[2])
                    if config.image_size or config.channels else None)
            planned.listing = list_builtin(source, ds.labels, list(ds.classes), config.seed)
            planned.image_shape = spec.shape if spec is not None else tuple(ds.image_shape)
            planned.tasks = TaskPlan(planned.listing.count,
                                     task_count(planned.listing.count, config.num_shards),
                                     config.seed, spec, builtin=source, folder=work, shape=shape)
            planned.classes = list(ds.classes)
        elif not looks_like_tfrecords(Path(source)):
            spec = _resolve_spec(config, (DEFAULT_FOLDER_SIZE, DEFAULT_FOLDER_SIZE), 3)
            root = str(Path(source).resolve())
            listing = list_folder(root, config.seed, storage.join(work, LISTING_DIR))
            if not listing.count:
                raise DataError(
                    f"no usable images under {source}: put images in one sub-folder per "
                    f"class (found {len(listing.rejected)} rejected files)")
            planned.listing = listing
            planned.image_shape = spec.shape
            planned.tasks = TaskPlan(listing.count, task_count(listing.count, config.num_shards),
                                     config.seed, spec, root=root, chunk_dir=listing.chunk_dir,
                                     folder=work, shape=shape)
        planned.listed = time.monotonic()
        yield planned
    finally:
        storage.remove(work)


def prepare(spark, config: PrepareConfig) -> PrepareResult:
    """Run the whole prepare path and write shards plus ``dataset.json``.

    A folder or a built-in data set takes one pass: the driver lists (stat only) and hashes
    the files per class, then one job decodes, validates, resizes, splits and writes every
    split (small classes are checked first, :data:`CHECKED_CLASS_SIZE`). Ingested
    TFRecords take two (their paths are hashed from a first read)."""
    with plan_prepare(config) as planned:
        return run_prepare(spark, planned)


def run_prepare(spark, planned: PreparePlan) -> PrepareResult:
    """The Spark part of :func:`prepare`, after :func:`plan_prepare`."""
    config, out, work = planned.config, planned.out, planned.work
    source = config.source
    marks = {"list": planned.listed or planned.started, "session": time.monotonic()}
    frame, bad = None, []
    listing, plan = planned.listing, planned.tasks
    class_order, image_shape = planned.classes, planned.image_shape
    if listing is None or plan is None:  # TFRecords
        frame, class_order, image_shape = tfrecords_frame(spark, Path(source), config)
        listing = Listing(0, _tfrecords_hashes(frame, config.seed))
        plan = TaskPlan(0, 1, config.seed, None, folder=work,
                        shape=ShardFormat(config.fmt, config.store, config.encoding))
    elif plan.root is not None:  # a folder
        bad = _check_small_classes(spark, plan, listing)
        class_order = sorted(c for c, h in listing.hashes.items() if len(h))
        if not class_order:
            raise DataError(
                f"no usable images under {source}: put images in one sub-folder per "
                f"class (found {len(listing.rejected) + len(bad)} rejected files)")
    classes = list(class_order)
    labels = {name: i for i, name in enumerate(classes)}
    starts = split_starts({labels[c]: h for c, h in listing.hashes.items() if c in labels},
                          config.split, config.imbalance)
    plan = dataclasses.replace(plan, labels=labels, starts=starts,
                               skip=frozenset(rel for rel, _, _ in bad))
    marks["check"] = time.monotonic()
    counts = _write(spark, plan, frame)
    marks["write"] = time.monotonic()
    per_class: dict[str, dict[str, int]] = {s: {c: counts.get((s, labels[c]), 0)
                                                for c in classes} for s in SPLITS}
    known = sorted(listing.rejected + [(p, reason) for _, p, reason in bad])
    rejected_count, rejected = merge_rejected(work, known, storage.join(out, REJECTED_FILE),
                                              MAX_LISTED_REJECTED)
    commit_splits(work, out, config.fmt)
    marks["commit"] = time.monotonic()
    phases, before = {}, planned.started
    for name, at in marks.items():
        phases[name], before = round(at - before, 3), at

    result = PrepareResult(
        out=out,
        classes=list(classes),
        image_shape=list(image_shape),
        splits={s: sum(per_class[s].values()) for s in SPLITS},
        per_class=per_class,
        rejected=rejected,
        rejected_count=rejected_count,
        rejected_file=REJECTED_FILE if rejected_count else None,
        source=source,
        seed=config.seed,
        format=config.fmt,
        split_fractions=list(config.split),
        imbalance=None if config.imbalance is None else {
            "ratio": config.imbalance,
            "minority_classes": [classes[i] for i in minority_classes(len(classes))],
        },
        storage="raw" if config.store == "raw" else config.encoding,
        seconds=round(time.monotonic() - planned.started, 3),
        phases=phases,
    )
    write_manifest(out, result.manifest())
    log.info("prepared %s: %s", out, result.splits)
    return result
