"""`sparkvision featurize`: a trained network's features of any input, to Parquet."""

from __future__ import annotations

import argparse
import time

from sparkvision.cli.common import add_common, emit, spark_session
from sparkvision.cli.predict import add_input_flags, add_trust_flag


def run(args: argparse.Namespace) -> int:
    from sparkvision.checks import check_prediction_input
    from sparkvision.data.prediction_input import load_prediction_input
    from sparkvision.ml.featurizer import ImageFeaturizer
    from sparkvision.ml.model import check_model_folder

    started = time.monotonic()
    # a wrong folder, input or --layer fails before Spark starts
    check_model_folder(args.model_dir)
    check_prediction_input(args.input)
    featurizer = ImageFeaturizer.fromModelDir(args.model_dir, layer=args.layer,
                                              trust_code=args.trust_code)
    dimension = featurizer.featureDimension()
    spark = spark_session(args)
    df, rejected = load_prediction_input(
        spark, args.input, tuple(featurizer.getImageShape()), featurizer.getClasses(),
        args.split,
    )
    out_df = featurizer.transform(df)
    keep = [c for c in ("path", "label") if c in out_df.columns]
    out_df.select(*keep, featurizer.getOutputCol()).write.mode("overwrite").parquet(args.out)
    rows = spark.read.parquet(args.out).count()
    payload = {
        "rows": rows,
        "out": args.out,
        "dimension": dimension,
        "layer": args.layer,
        "rejected": rejected,
        "seconds": round(time.monotonic() - started, 3),
    }
    where = f"layer {args.layer!r}" if args.layer else "penultimate layer"
    emit(args, payload, f"featurized {rows} rows ({dimension} features, {where}) → "
                        f"{args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("featurize", help="a trained network's features of images, to "
                       "Parquet (for MLlib)")
    add_input_flags(p)
    p.add_argument("--layer", default="",
                   help="module whose output is taken (a name from the network's "
                   "named_modules(), e.g. 0 or 0.4); default: the classifier head's input "
                   "(penultimate features)")
    p.add_argument("--out", required=True, help="output Parquet folder (path, label, "
                   "features)")
    add_trust_flag(p)
    add_common(p)
    p.set_defaults(func=run)
