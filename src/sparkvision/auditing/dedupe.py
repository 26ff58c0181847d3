"""A deduplicated copy of a prepared folder: every split without the images an audit's
duplicate groups drop (each group keeps one copy: the test one first, so a leaked training
copy goes), and ``removed.parquet`` recording each dropped image and the copy kept."""

from __future__ import annotations

import json
from typing import Any

from sparkvision import storage
from sparkvision.errors import DataError

REMOVED_FILE = "removed.parquet"


def dedupe_copy(spark, source: str, audit_dir: str, out: str) -> dict[str, Any]:
    """Write ``out``: ``source``'s splits (Parquet) less the duplicates ``audit_dir``'s
    ``groups.parquet`` drops, its ``dataset.json`` with the new counts and a ``dedupe``
    record, and ``removed.parquet``. Returns that record."""
    from pyspark.sql import functions as F

    from sparkvision.auditing.job import GROUPS_FILE
    from sparkvision.data.manifest import MANIFEST, SPLITS, read_manifest, write_manifest
    from sparkvision.data.prepared_splits import load_prepared

    if not storage.exists(storage.join(source, MANIFEST)):
        raise DataError(f"--dedupe-out needs a prepared folder ({MANIFEST}); {source} is an "
                        "image folder: prepare it first, then audit the prepared folder")
    if storage.absolute(out) == storage.absolute(source):
        raise DataError(f"--dedupe-out {out} is the audited folder: give a new folder")
    out = storage.absolute(out)
    manifest = read_manifest(source)
    groups = spark.read.parquet(storage.join(audit_dir, GROUPS_FILE))
    kept = groups.filter("keep").select("group", F.col("split").alias("kept_split"),
                                        F.col("path").alias("kept_path"))
    removed = groups.filter(~F.col("keep")).join(kept, "group").select(
        "split", "path", "label", "class_name", "group", "kept_split", "kept_path")
    storage.makedirs(out)
    removed.write.mode("overwrite").parquet(storage.join(out, REMOVED_FILE))
    removed = spark.read.parquet(storage.join(out, REMOVED_FILE))
    classes = manifest["classes"]
    splits: dict[str, int] = {}
    per_class: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        if not manifest.get("splits", {}).get(split, 0):
            splits[split], per_class[split] = 0, dict.fromkeys(classes, 0)
            continue
        gone = removed.filter(F.col("split") == split).select("path")
        rows = load_prepared(spark, source, split).join(gone, "path", "left_anti")
        rows.write.mode("overwrite").parquet(storage.join(out, split))
        counts = {int(r.label): int(r["count"]) for r in spark.read.parquet(
            storage.join(out, split)).groupBy("label").count().collect()}
        per_class[split] = {c: counts.get(i, 0) for i, c in enumerate(classes)}
        splits[split] = sum(counts.values())
    record = {"source": storage.absolute(source), "audit": storage.absolute(audit_dir),
              "removed": removed.count(),
              "removed_per_split": {r.split: int(r["count"]) for r in
                                    removed.groupBy("split").count().collect()},
              "removed_file": REMOVED_FILE}
    manifest.update(out=out, format="parquet", splits=splits, per_class=per_class,
                    paths={s: s for s in SPLITS}, dedupe=record)
    write_manifest(out, manifest)
    storage.write_text(storage.join(out, "dedupe.json"), json.dumps(record, indent=2) + "\n")
    return record
