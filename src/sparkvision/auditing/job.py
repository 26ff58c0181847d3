"""``audit``: duplicates, leakage, label conflicts and outliers of a prepared data set or an
image folder, computed by Spark and written to a folder.

1. one pass decodes every image in Spark tasks and writes ``images.parquet``: per image its
   split, path, label, content hash, two perceptual hashes, two 16×16 fingerprints and its
   statistics (:mod:`sparkvision.auditing.fingerprints`); the rest reads that table;
2. exact pairs (equal content hash) and near pairs (banded perceptual hashes, Hamming
   filter, fingerprint check: :mod:`sparkvision.auditing.pairs`) → ``pairs.parquet`` with
   both sides described, ``leak`` and ``conflict`` flags, worst first;
3. the groups the pairs connect, and which copy each keeps → ``groups.parquet``;
4. per-class outliers (:mod:`sparkvision.auditing.outliers`) → ``outliers.parquet``;
5. counts (aggregates), the first pairs and outliers, thumbnails of the worst cases
   (``worst/*.png``, :mod:`sparkvision.auditing.files`) and ``audit.json``.

The driver only receives counts and the few rows it lists; no image goes through it except
the handful it draws.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sparkvision import storage
from sparkvision.auditing.fingerprints import FINGERPRINT_DDL, folder_batches, prepared_batches
from sparkvision.auditing.outliers import outliers
from sparkvision.auditing.pairs import (
    components,
    described,
    exact_pairs,
    kept_and_removed,
    near_candidates,
)
from sparkvision.errors import DataError, InvalidParameterError
from sparkvision.extras import require

AUDIT_FILE = "audit.json"
IMAGES_FILE = "images.parquet"
PAIRS_FILE = "pairs.parquet"
GROUPS_FILE = "groups.parquet"
OUTLIERS_FILE = "outliers.parquet"
VERSION = 1
#: Pairs and outliers listed in ``audit.json`` (all of them are in the Parquet files).
LISTED = 50
#: Worst cases drawn as thumbnails (pairs, outliers).
DRAWN = 12


@dataclass(frozen=True)
class AuditConfig:
    """How near is a near duplicate, and how far an outlier."""

    #: largest Hamming distance (of 64 bits) of the nearer of the two perceptual hashes
    radius: int = 4
    #: largest mean grey difference (0..1) of the two 16×16 fingerprints
    max_pixel_distance: float = 0.005
    #: robust z-score (within the class) beyond which a size, brightness or contrast is odd
    outlier_z: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.radius <= 31:
            raise InvalidParameterError("radius", self.radius,
                                        "give a Hamming radius from 0 to 31 bits, e.g. 4")
        if not 0.0 <= self.max_pixel_distance <= 1.0:
            raise InvalidParameterError("max-pixel-distance", self.max_pixel_distance,
                                        "give a mean grey difference from 0 to 1, e.g. 0.005")
        if not self.outlier_z > 0:
            raise InvalidParameterError("outlier-z", self.outlier_z,
                                        "give a positive robust z-score, e.g. 5")


@dataclass
class AuditResult:
    """What ``audit`` found (``audit.json``, versioned)."""

    source: str
    out: str
    kind: str  # "prepared" | "folder"
    config: dict[str, Any]
    images: int
    unreadable: int
    splits: dict[str, int]
    exact_pairs: int
    near_pairs: int
    candidates: int  # pairs within the radius before the fingerprint check
    crowded_buckets: int  # band buckets skipped (more than MAX_BUCKET members)
    groups: int
    duplicates: int  # images a deduplicated copy drops (group members but one)
    leaking_pairs: int
    leaking_groups: int
    leaked: dict[str, int]  # per split: images with a copy in another split
    conflicting_pairs: int
    conflicting_groups: int
    outliers: int
    outlier_reasons: dict[str, int]
    top_pairs: list[dict[str, Any]] = field(default_factory=list)
    top_outliers: list[dict[str, Any]] = field(default_factory=list)
    worst: list[dict[str, Any]] = field(default_factory=list)  # drawn PNGs + captions
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    version: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditResult:
        if data.get("version") != VERSION:
            raise DataError(f"{AUDIT_FILE} has version {data.get('version')!r}; this "
                            f"sparkvision reads version {VERSION}: re-run `sparkvision audit`")
        return cls(**data)


def read_audit(folder: str) -> AuditResult:
    """The ``audit.json`` of an audit folder."""
    path = storage.join(folder, AUDIT_FILE)
    if not storage.exists(path):
        raise DataError(f"no {AUDIT_FILE} in {folder}: point at a folder `sparkvision audit` "
                        "wrote")
    return AuditResult.from_dict(json.loads(storage.read_text(path)))


def check_audit(source: str) -> str:
    """Before Spark starts: imagehash is installed and ``source`` is a prepared folder or an
    image folder; returns its kind (``prepared`` or ``folder``)."""
    from sparkvision.data.manifest import MANIFEST
    from sparkvision.data.prediction_input import is_image_folder

    require("audit", "`sparkvision audit`", ("imagehash",))
    if storage.exists(storage.join(source, MANIFEST)):
        return "prepared"
    if is_image_folder(source):
        return "folder"
    raise DataError(f"{source} is neither a prepared folder ({MANIFEST}) nor a folder of "
                    "images: give a folder made by `sparkvision prepare` or an image folder "
                    "(CLASS/… or SPLIT/CLASS/… with SPLIT train, val or test)")


def image_rows(spark, source: str, kind: str):
    """The fingerprint rows of every image of ``source`` (one decoding pass, lazy)."""
    from pyspark.sql import functions as F

    if kind == "prepared":
        from sparkvision.data.manifest import SPLITS, read_manifest
        from sparkvision.data.prepared_splits import load_prepared
        from sparkvision.data.schema import literal_map

        manifest = read_manifest(source)
        names = literal_map(dict(enumerate(manifest["classes"])))
        frames = [load_prepared(spark, source, s).mapInArrow(
                      functools.partial(prepared_batches, split=s), FINGERPRINT_DDL)
                  for s in SPLITS if manifest.get("splits", {}).get(s, 0)]
        if not frames:
            raise DataError(f"{source} holds no images: every split is empty")
        rows = functools.reduce(lambda a, b: a.unionByName(b), frames)
        return rows.withColumn("class_name", names[F.col("label")])
    from sparkvision.data.decoding import path_listing, scan_files

    root = str(Path(source).resolve())
    files, _bad = scan_files(Path(root))
    if not files:
        raise DataError(f"no files under {source}: give a folder of images")
    from sparkvision.data.decoding import fewer_tasks

    rows = fewer_tasks(path_listing(spark, root), files).mapInArrow(
        functools.partial(folder_batches, root=root), FINGERPRINT_DDL)
    return rows


def _label_folder_classes(spark, images):
    """An image folder's rows with ``label`` = index of the class name (sorted)."""
    from pyspark.sql import functions as F

    from sparkvision.data.schema import literal_map

    names = sorted(r[0] for r in images.select("class_name").distinct().collect()
                   if r[0] is not None)
    index = literal_map({n: i for i, n in enumerate(names)}) if names else None
    if index is None:
        return images
    return images.withColumn("label", index[F.col("class_name")].cast("bigint"))


def _as_dicts(rows) -> list[dict[str, Any]]:
    return [{k: (list(v) if isinstance(v, list | tuple) else v)
             for k, v in r.asDict().items()} for r in rows]


def audit(spark, source: str, out: str, config: AuditConfig | None = None) -> AuditResult:
    """Audit ``source`` (a prepared folder or an image folder) into the folder ``out``."""
    from pyspark.sql import functions as F

    from sparkvision.auditing.files import draw_worst

    config = config or AuditConfig()
    started = time.monotonic()
    kind = check_audit(source)
    out = storage.absolute(out)
    storage.makedirs(out)
    path = {name: storage.join(out, name)
            for name in (IMAGES_FILE, PAIRS_FILE, GROUPS_FILE, OUTLIERS_FILE)}

    rows = image_rows(spark, source, kind).withColumn("id", F.monotonically_increasing_id())
    rows.write.mode("overwrite").parquet(path[IMAGES_FILE])
    images = spark.read.parquet(path[IMAGES_FILE])
    if kind == "folder":
        images = _label_folder_classes(spark, images)
    good = images.filter(F.col("error").isNull())
    counts = {r.split: int(r["count"]) for r in images.groupBy("split").count().collect()}
    unreadable = images.filter(F.col("error").isNotNull()).count()

    unique = good.join(good.groupBy("content").agg(F.min("id").alias("id")), "id", "left_semi")
    measured, crowded = near_candidates(unique, config.radius)
    measured = measured.localCheckpoint()
    near = measured.filter(F.col("pixel_distance") <= config.max_pixel_distance)
    pairs = (exact_pairs(good).withColumn("kind", F.lit("exact"))
             .unionByName(near.withColumn("kind", F.lit("near"))))
    described(pairs, good).write.mode("overwrite").parquet(path[PAIRS_FILE])
    pairs = spark.read.parquet(path[PAIRS_FILE])

    groups = kept_and_removed(components(pairs.select("id_a", "id_b")), good)
    groups.write.mode("overwrite").parquet(path[GROUPS_FILE])
    groups = spark.read.parquet(path[GROUPS_FILE])
    per_group = groups.groupBy("group").agg(
        F.countDistinct("split").alias("splits"),
        F.countDistinct(F.coalesce(F.col("label").cast("string"), F.col("class_name"))
                        ).alias("labels"))
    leaky = per_group.filter(F.col("splits") > 1)
    leaked = {r.split: int(r["count"]) for r in groups.join(leaky, "group", "left_semi")
              .groupBy("split").count().collect()}

    outliers(good, config.outlier_z).write.mode("overwrite").parquet(path[OUTLIERS_FILE])
    odd = spark.read.parquet(path[OUTLIERS_FILE])
    reasons = {r.reason: int(r["count"]) for r in
               odd.select(F.explode("reasons").alias("reason")).groupBy("reason").count()
               .collect()}

    pair_counts = pairs.agg(
        F.count("*").alias("all"), F.sum(F.when(F.col("kind") == "exact", 1)).alias("exact"),
        F.sum(F.col("leak").cast("int")).alias("leak"),
        F.sum(F.col("conflict").cast("int")).alias("conflict")).first()
    group_counts = per_group.agg(
        F.count("*").alias("all"), F.sum((F.col("splits") > 1).cast("int")).alias("leak"),
        F.sum((F.col("labels") > 1).cast("int")).alias("conflict")).first()
    top_pairs = _as_dicts(pairs.limit(LISTED).collect())
    top_outliers = _as_dicts(odd.limit(LISTED).collect())
    worst_pairs = pairs.orderBy(F.desc("leak"), F.desc("conflict"), "kind", "pixel_distance",
                                "hamming").limit(DRAWN).collect()
    worst = draw_worst(spark, source, kind, out, _as_dicts(worst_pairs),
                       top_outliers[:DRAWN])

    result = AuditResult(
        source=storage.absolute(source), out=out, kind=kind, config=asdict(config),
        images=sum(counts.values()) - unreadable, unreadable=unreadable, splits=counts,
        exact_pairs=int(pair_counts["exact"] or 0),
        near_pairs=int(pair_counts["all"] or 0) - int(pair_counts["exact"] or 0),
        candidates=measured.count(), crowded_buckets=crowded.count(),
        groups=int(group_counts["all"] or 0),
        duplicates=groups.filter(~F.col("keep")).count(),
        leaking_pairs=int(pair_counts["leak"] or 0),
        leaking_groups=int(group_counts["leak"] or 0), leaked=leaked,
        conflicting_pairs=int(pair_counts["conflict"] or 0),
        conflicting_groups=int(group_counts["conflict"] or 0),
        outliers=odd.count(), outlier_reasons=reasons,
        top_pairs=top_pairs, top_outliers=top_outliers, worst=worst,
        files={name: name for name in path},
    )
    result.seconds = round(time.monotonic() - started, 3)
    storage.write_text(storage.join(out, AUDIT_FILE),
                       json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    return result
