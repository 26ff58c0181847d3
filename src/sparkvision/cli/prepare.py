"""`sparkvision prepare`: images / built-in data set / TFRecords → split shards + manifest."""

from __future__ import annotations

import argparse

from sparkvision.cli.common import add_common, emit, spark_progress, spark_session


def run(args: argparse.Namespace) -> int:
    from sparkvision.data.prepare import (
        PrepareConfig,
        parse_image_size,
        parse_split,
        plan_prepare,
        run_prepare,
    )

    config = PrepareConfig(
        source=args.source,
        out=args.out,
        split=parse_split(args.split),
        seed=args.seed,
        fmt=args.format,
        image_size=parse_image_size(args.image_size),
        channels=args.channels,
        num_shards=args.num_shards,
        imbalance=args.imbalance,
        store=args.store,
        encoding=args.encoding,
    )
    with plan_prepare(config) as planned:  # listed before Spark starts: bad input fails fast
        spark = spark_session(args)
        with spark_progress(spark, "prepare"):
            result = run_prepare(spark, planned)
    payload = {
        "out": result.out,
        "classes": result.classes,
        "splits": result.splits,
        "per_class": result.per_class,
        "rejected": result.rejected,
        "rejected_count": result.rejected_count,
        "rejected_file": result.rejected_file,
        "image_shape": result.image_shape,
        "format": result.format,
        "storage": result.storage,
        "imbalance": result.imbalance,
        "seconds": result.seconds,
        "phases": result.phases,
    }
    lines = [
        f"prepared {args.source} → {result.out} ({result.format})",
        f"  classes: {len(result.classes)}  image shape: {tuple(result.image_shape)}",
        "  " + "  ".join(f"{k}: {v}" for k, v in result.splits.items()),
        f"  rejected files: {result.rejected_count}",
    ]
    lines += [f"    {r['path']}: {r['reason']}" for r in result.rejected[:20]]
    if result.rejected_count > 20:
        lines.append(f"    … all {result.rejected_count} in {result.rejected_file} beside "
                     "dataset.json")
    emit(args, payload, "\n".join(lines))
    return 0


def register(sub) -> None:
    p = sub.add_parser("prepare", help="images / built-in data set → split shards + dataset.json")
    p.add_argument("source", help="digits | mnist | faces | scenes | IMAGE_FOLDER | TFRECORD_PATH")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--format", choices=["tfrecords", "parquet"], default="tfrecords")
    p.add_argument("--image-size", default=None, help="N or HxW (default: source size; 32)")
    p.add_argument("--channels", type=int, choices=[1, 3], default=None)
    p.add_argument("--num-shards", type=int, default=None,
                   help="files per split, one task each (default: one per 1,000-10,000 "
                        "images, about 64 tasks)")
    p.add_argument("--store", choices=["raw", "encoded"], default="raw",
                   help="raw: uint8 pixels; encoded: PNG/JPEG bytes at the target size "
                        "(smaller shards; decoded when training and predicting)")
    p.add_argument("--encoding", choices=["png", "jpeg"], default="png",
                   help="with --store encoded: png (lossless, default) or jpeg (quality 95)")
    p.add_argument("--imbalance", type=float, default=None, metavar="RATIO",
                   help="> 1: the first half of the classes keep 1/RATIO of their training "
                   "images (val/test untouched)")
    add_common(p)
    p.set_defaults(func=run)
