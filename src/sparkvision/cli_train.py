"""`sparkvision train` and `sparkvision predict`."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "val_accuracy", "seconds", "steps_per_rank")


def _accuracy(df) -> float | None:
    from pyspark.sql import functions as F

    if "label" not in df.columns:
        return None
    row = df.filter(F.col("label").isNotNull()).agg(
        F.avg((F.col("label") == F.col("prediction")).cast("double")).alias("acc"),
    ).first()
    return None if row is None or row.acc is None else float(row.acc)


def cmd_train(args: argparse.Namespace) -> int:
    from sparkvision.cli import _emit, _spark
    from sparkvision.data.loading import load_prepared
    from sparkvision.data.prepare import read_manifest
    from sparkvision.training.estimator import ImageClassifier

    started = time.monotonic()
    manifest = read_manifest(args.data)
    spark = _spark(args)
    train_df = load_prepared(spark, args.data, "train")
    val_df = load_prepared(spark, args.data, "val") if manifest["splits"].get("val") else None
    clf = ImageClassifier(
        model=args.model, epochs=args.epochs, batchSize=args.batch_size,
        learningRate=args.lr, optimizer=args.optimizer, loss=args.loss,
        numWorkers=args.workers, seed=args.seed, checkpointDir=args.checkpoint_dir or "",
        classes=list(manifest["classes"]), imageShape=list(manifest["image_shape"]),
        classWeights=_class_weights(args.class_weights), augment=args.augment,
        validationDf=val_df,
    )
    model = clf.fit(train_df)
    model.write().overwrite().save(args.out)
    history = [{k: e.get(k) for k in HISTORY_KEYS} for e in model.history["epochs"]]
    test_acc = None
    if manifest["splits"].get("test"):
        test_acc = _accuracy(model.transform(load_prepared(spark, args.data, "test")))
    payload: dict[str, Any] = {
        "model": str(Path(args.out)),
        "world_size": model.history["world_size"],
        "epochs": len(history),
        "history": history,
        "val_accuracy": history[-1]["val_accuracy"] if history else None,
        "test_accuracy": test_acc,
        "resumed_from_epoch": model.history.get("resumed_from_epoch"),
        "seconds": round(time.monotonic() - started, 3),
    }
    lines = [f"trained {args.model} on {payload['world_size']} workers → {args.out}"]
    lines += [
        f"  epoch {e['epoch']}: train_loss={e['train_loss']:.4f} val_accuracy={e['val_accuracy']}"
        for e in history
    ]
    lines.append(f"  test accuracy: {test_acc}")
    _emit(args, payload, "\n".join(lines))
    return 0


def _class_weights(text: str | None) -> Any:
    if not text:
        return None
    if text == "balanced":
        return text
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        from sparkvision.errors import InvalidParameterError

        raise InvalidParameterError(
            "class-weights", text, "use 'balanced' or comma-separated floats, one per class"
        ) from None


def cmd_predict(args: argparse.Namespace) -> int:
    from sparkvision.cli import _emit, _spark
    from sparkvision.inference.inputs import load_prediction_input
    from sparkvision.training.estimator import ImageClassificationModel

    started = time.monotonic()
    spark = _spark(args)
    model = ImageClassificationModel.load(args.model_dir)
    shape = tuple(model.getOrDefault(model.imageShape))
    df, rejected = load_prediction_input(
        spark, args.input, shape, list(model.getOrDefault(model.classes)), args.split
    )
    out_df = model.transform(df)
    keep = [c for c in ("path", "label") if c in out_df.columns]
    keep += ["prediction", "predictedLabel", "probability", "probabilities"]
    result = out_df.select(*keep)
    result.write.mode("overwrite").parquet(args.out)
    written = spark.read.parquet(args.out)
    rows = written.count()
    payload = {
        "rows": rows,
        "out": args.out,
        "accuracy": _accuracy(written),
        "rejected": rejected,
        "seconds": round(time.monotonic() - started, 3),
    }
    _emit(args, payload, f"predicted {rows} rows → {args.out} (accuracy: {payload['accuracy']})")
    return 0


def add_train_commands(sub, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("train", help="train a classifier on a prepared data set")
    p.add_argument("data", help="folder written by `sparkvision prepare`")
    p.add_argument("--out", required=True, help="model output folder")
    p.add_argument(
        "--model", default="cnn", help="cnn | simple_cnn | lenet5 | resnet8 | pkg.mod:fn"
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64, help="per worker")
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--loss", choices=["cross_entropy", "mse"], default="cross_entropy")
    p.add_argument("--augment", choices=["shift", "none"], default="shift")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", default=None, help="shared folder; resumes from it")
    p.add_argument("--class-weights", default=None, help="'balanced' or w0,w1,...")
    common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="batch prediction to Parquet")
    p.add_argument("model_dir", help="folder written by `sparkvision train`")
    p.add_argument("input", help="prepared folder, split folder, TFRecords, Parquet or images")
    p.add_argument("--out", required=True, help="output Parquet folder")
    p.add_argument("--split", default="test", help="split of a prepared folder (default test)")
    common(p)
    p.set_defaults(func=cmd_predict)

