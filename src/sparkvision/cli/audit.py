"""`sparkvision audit`: exact and near duplicates, leakage between splits, label conflicts
and per-class outliers of a prepared folder or an image folder, computed by Spark;
``--dedupe-out`` writes a copy of a prepared folder with one image per duplicate group."""

from __future__ import annotations

import argparse
from pathlib import Path

from sparkvision import storage
from sparkvision.cli.common import add_common, emit, spark_session

DEFAULT_DIR = "audit"


def default_out(data: str, kind: str) -> str:
    """DATA/audit for a prepared folder; beside an image folder (never inside it, where a
    second audit would read the first one's PNGs) for an image folder."""
    if kind == "prepared":
        return storage.join(data, DEFAULT_DIR)
    path = Path(data).resolve()
    return str(path.parent / f"{path.name}-{DEFAULT_DIR}")


def run(args: argparse.Namespace) -> int:
    from sparkvision.auditing.job import AuditConfig, audit, check_audit

    # Everything that needs no data is checked before the JVM starts.
    config = AuditConfig(radius=args.radius, max_pixel_distance=args.max_pixel_distance,
                         outlier_z=args.outlier_z)
    kind = check_audit(args.data)
    if args.dedupe_out and kind != "prepared":
        from sparkvision.errors import InvalidParameterError

        raise InvalidParameterError("dedupe-out", args.dedupe_out,
                                    "audit a prepared folder (sparkvision prepare) to get a "
                                    "deduplicated copy; an image folder is only audited")
    out = args.out or default_out(args.data, kind)
    spark = spark_session(args)
    result = audit(spark, args.data, out, config)
    payload = result.to_dict()
    human = (f"audited {result.images} images of {args.data} → {result.out} "
             f"({result.seconds:.1f} s): {result.exact_pairs} exact and {result.near_pairs} "
             f"near duplicate pairs in {result.groups} groups, {result.leaking_groups} groups "
             f"leak across splits, {result.conflicting_groups} with conflicting labels, "
             f"{result.outliers} outliers")
    if args.dedupe_out:
        from sparkvision.auditing.dedupe import dedupe_copy

        record = dedupe_copy(spark, args.data, result.out, args.dedupe_out)
        payload["dedupe"] = record
        human += f"; {record['removed']} duplicates left out of {args.dedupe_out}"
    emit(args, payload, human)
    return 0


def register(sub) -> None:
    from sparkvision.auditing.job import AuditConfig

    d = AuditConfig()
    p = sub.add_parser("audit", help="duplicates, leakage between splits, label conflicts "
                                     "and outliers of a data set (Spark)")
    p.add_argument("data", help="a prepared folder (sparkvision prepare) or an image folder "
                   "(CLASS/… or SPLIT/CLASS/… with SPLIT train, val or test)")
    p.add_argument("--out", default=None,
                   help="output folder: audit.json, Parquet of images, pairs, groups and "
                   "outliers, worst/*.png (default DATA/audit; DATA-audit beside an image "
                   "folder)")
    p.add_argument("--radius", type=int, default=d.radius, metavar="BITS",
                   help="near duplicates: largest Hamming distance of the perceptual hashes "
                   "(of 64 bits; default %(default)s)")
    p.add_argument("--max-pixel-distance", type=float, default=d.max_pixel_distance,
                   metavar="D", help="near duplicates: largest mean grey difference (0..1) "
                   "of the 16x16 fingerprints (default %(default)s)")
    p.add_argument("--outlier-z", type=float, default=d.outlier_z, metavar="Z",
                   help="outliers: robust z-score within the class beyond which a size, "
                   "brightness or contrast is odd (default %(default)s)")
    p.add_argument("--dedupe-out", default=None, metavar="FOLDER",
                   help="also write a copy of the prepared folder with one image per "
                   "duplicate group (the test copy kept first) and removed.parquet")
    add_common(p)
    p.set_defaults(func=run)
