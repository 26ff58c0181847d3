"""`sparkvision predict`: batch prediction of any input to Parquet."""

from __future__ import annotations

import argparse
import time

from sparkvision.cli.common import accuracy, add_common, emit, spark_session

OUTPUT_COLUMNS = ("prediction", "predictedLabel", "confidence", "probability", "rawPrediction")


def load_model(args: argparse.Namespace):
    """The model of MODEL_DIR with ``--backend``, after every check of MODEL_DIR and DATA
    that needs no Spark (so they fail before the JVM starts): the folder, the input's
    existence, then the load's own checks (weights, trust)."""
    from sparkvision.checks import check_prediction_input
    from sparkvision.ml.model import ImageClassificationModel, check_model_folder

    check_model_folder(args.model_dir)
    check_prediction_input(args.input)
    model = ImageClassificationModel.load(args.model_dir, trust_code=args.trust_code)
    model.setInferenceBackend(args.backend)
    return model


def load_model_and_input(args: argparse.Namespace, model=None):
    """(spark, model with ``--backend``, input DataFrame, rejected files) for the MODEL_DIR
    and DATA of ``add_input_flags``; ``model``: already ``load_model(args)``."""
    from sparkvision.data.prediction_input import load_prediction_input

    if model is None:
        model = load_model(args)
    spark = spark_session(args)
    df, rejected = load_prediction_input(
        spark, args.input, tuple(model.getImageShape()), model.getClasses(), args.split
    )
    return spark, model, df, rejected


def load_model_and_predictions(args: argparse.Namespace, image: bool = False, model=None):
    """(spark, model with ``--backend``, its predictions of DATA, rejected files): an image
    folder is decoded and predicted in one pass (``inference.predictions.load_predictions``);
    ``image``: keep the image column; ``model``: already ``load_model(args)``."""
    from sparkvision.inference.predictions import load_predictions

    if model is None:
        model = load_model(args)
    spark = spark_session(args)
    predictions, rejected = load_predictions(spark, model, args.input, args.split, image=image)
    return spark, model, predictions, rejected


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    spark, model, out_df, rejected = load_model_and_predictions(args)
    keep = [c for c in ("path", "label") if c in out_df.columns] + list(OUTPUT_COLUMNS)
    out_df.select(*keep).write.mode("overwrite").parquet(args.out)
    written = spark.read.parquet(args.out)
    rows = written.count()
    payload = {
        "rows": rows,
        "out": args.out,
        "accuracy": accuracy(written),
        "rejected": rejected,
        "seconds": round(time.monotonic() - started, 3),
    }
    emit(args, payload, f"predicted {rows} rows → {args.out} (accuracy: {payload['accuracy']})")
    return 0


def add_input_flags(p: argparse.ArgumentParser) -> None:
    """MODEL_DIR and DATA (anything `predict` accepts), with --split."""
    from sparkvision.data.manifest import SPLITS

    p.add_argument("model_dir", help="folder written by `sparkvision train`")
    p.add_argument("input", help="prepared folder, split folder, TFRecords, Parquet or images")
    p.add_argument("--split", default="test", choices=SPLITS,
                   help="split of a prepared folder (default test)")


def add_trust_flag(p: argparse.ArgumentParser) -> None:
    """--trust-code: allow loading a model whose network is an import path (runs its code)."""
    p.add_argument("--trust-code", action="store_true",
                   help="load a model whose network is a 'package.module:function' import "
                   "path (that code runs here and on the executors)")


def add_backend_flag(p: argparse.ArgumentParser) -> None:
    """--backend: the model's inferenceBackend Param (default: settings.OutputSettings)."""
    from sparkvision.settings import OutputSettings, row

    backend = row(OutputSettings, "inferenceBackend")
    p.add_argument("--backend", choices=backend.setting.choices, default=backend.default,
                   help="what runs the network: onnxruntime, torch, or auto (onnxruntime "
                   "when installed, else torch); default %(default)s")


def register(sub) -> None:
    p = sub.add_parser("predict", help="batch prediction to Parquet")
    add_input_flags(p)
    p.add_argument("--out", required=True, help="output Parquet folder")
    add_backend_flag(p)
    add_trust_flag(p)
    add_common(p)
    p.set_defaults(func=run)
