"""`sparkvision train`: fit an ImageClassifier on a prepared folder and save the model."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparkvision import settings
from sparkvision.cli.common import accuracy, add_common, emit, spark_session
from sparkvision.cli.mlflow_flags import Tracking, add_mlflow_flags, tracked
from sparkvision.settings import TrainSettings

if TYPE_CHECKING:
    from sparkvision.training.history import EpochRecord

#: the training settings that have a CLI flag
_FLAG_ROWS = tuple(r for r in settings.rows(TrainSettings) if r.setting.flag)


def _epoch_row(e: EpochRecord) -> dict[str, Any]:
    """One epoch as ``train --json`` lists it under ``history``."""
    return {"epoch": e.epoch, "train_loss": e.train_loss, "val_loss": e.val_loss,
            "val_accuracy": e.val_accuracy, "seconds": e.seconds,
            "steps_per_rank": e.steps_per_rank}


def _flag_value(r: settings.Row, value: Any) -> Any:
    """A flag's parsed value as its Param takes it."""
    if r.base_type is bool:
        return value == "true"
    if r.param == "classWeights":
        return _class_weights(value)
    return value


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


def classifier_params(args: argparse.Namespace, manifest: dict[str, Any]) -> dict[str, Any]:
    """ImageClassifier Params from the train flags (shared by commands that train)."""
    if args.model is None:  # --init-from without --model: the network of that model
        from sparkvision.ml.transfer import saved_network

        args.model = (saved_network(args.init_from) if args.init_from
                      else settings.row(TrainSettings, "model").default)
    params = {r.param: _flag_value(r, getattr(args, r.field)) for r in _FLAG_ROWS}
    params.update(classes=list(manifest["classes"]), imageShape=list(manifest["image_shape"]))
    if args.dp_epsilon is not None:
        params.update(privacy="dp", targetEpsilon=args.dp_epsilon)
    return params


def checked_classifier(params: dict[str, Any]):
    """The ImageClassifier of ``params`` (``classifier_params``), after every check of them
    that needs no Spark (``validateParams``, a network's import path included): they fail
    before the JVM starts."""
    from sparkvision.ml.classifier import ImageClassifier

    clf = ImageClassifier(**params)
    clf.validateParams()
    return clf


@tracked
def run(args: argparse.Namespace, tracking: Tracking) -> int:
    from sparkvision.data.manifest import copy_manifest, read_manifest
    from sparkvision.data.prepared_splits import load_prepared

    started = time.monotonic()
    manifest = read_manifest(args.data)  # a wrong folder fails first (no torch, no pyspark)
    clf = checked_classifier(classifier_params(args, manifest))
    if args.calibration == "temperature" and not manifest["splits"].get("val"):
        from sparkvision.errors import InvalidParameterError

        raise InvalidParameterError("calibrate", "temperature", f"{args.data} has no val "
                                    "split to fit the temperature on: prepare it with one")
    tracking.train_started(clf)  # --mlflow: the run, its Params, an epoch logger
    spark = spark_session(args)
    train_df = load_prepared(spark, args.data, "train")
    if manifest["splits"].get("val"):
        clf.setValidationDf(load_prepared(spark, args.data, "val"))
    model = clf.fit(train_df)
    model.write().overwrite().save(args.out)
    copy_manifest(args.data, args.out)  # `report MODEL_DIR` shows the data set
    h = model.history
    test_acc = None
    if manifest["splits"].get("test"):
        test_acc = accuracy(model.transform(load_prepared(spark, args.data, "test")))
    last = h.last_epoch
    privacy = h.privacy
    payload: dict[str, Any] = {
        "model": str(Path(args.out)),
        "world_size": h.world_size,
        "epochs": len(h.epochs),
        "history": [_epoch_row(e) for e in h.epochs],
        "val_accuracy": last.val_accuracy if last else None,
        "test_accuracy": test_acc,
        "balance": h.balance.to_dict() if h.balance else None,
        "resumed_from_epoch": h.resumed_from_epoch,
        "transfer": h.transfer.to_dict() if h.transfer else None,
        "privacy": privacy.to_dict() if privacy else None,
        "topology": h.topology.to_dict() if h.topology else None,
        "epsilon": privacy.epsilon if privacy else None,
        "delta": privacy.delta if privacy else None,
        "temperature": model.getOrDefault("temperature"),  # 1 unless --calibrate fitted one
        "seconds": round(time.monotonic() - started, 3),
    }
    payload.update(tracking.train_finished(model, payload, train_df))  # + mlflow_run_id
    lines = [f"trained {args.model} on {h.world_size} workers → {args.out}"]
    if h.topology and h.topology.hosts > 1:
        compressed = h.topology.compression not in (None, "none")
        lines.append(f"  on {h.topology.hosts} hosts (ranks per host "
                     f"{h.topology.ranks_per_host}; between hosts: {h.topology.inter_host}"
                     f"{f' in {h.topology.compression}' if compressed else ''}, "
                     f"within a host: {h.topology.intra_host or '-'})")
    transfer = h.transfer
    if transfer and transfer.init_summary:
        lines.append(f"  started from: {transfer.init_summary}")
    if transfer and transfer.freeze == "backbone":
        lines.append(f"  frozen: the backbone ({transfer.frozen_tensors} tensors); "
                     f"trained: {transfer.head}")
    lines += [
        f"  epoch {e.epoch}: train_loss={e.train_loss:.4f} val_accuracy={e.val_accuracy}"
        for e in h.epochs
    ]
    lines.append(f"  test accuracy: {test_acc}")
    if args.calibration == "temperature":
        lines.append(f"  calibrated: temperature {model.getOrDefault('temperature'):.4f} "
                     "(fitted on the val split)")
    if privacy:
        lines.append(f"  privacy: (ε = {privacy.epsilon:.2f}, δ = {privacy.delta:g})-"
                     f"differentially private ({privacy.accountant} accountant, "
                     f"noise multiplier {privacy.noise_multiplier:.3f}, "
                     f"clipping norm {privacy.max_grad_norm:g})")
    emit(args, payload, "\n".join(lines))
    return 0


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """A flag for every row of ``settings.TrainSettings`` that names one, and --dp-epsilon
    (which sets privacy and targetEpsilon)."""
    for r in _FLAG_ROWS:
        s = r.setting
        kw: dict[str, Any] = {"dest": r.field, "help": s.help or s.doc, "metavar": s.metavar}
        if r.base_type is bool:
            kw.update(choices=("true", "false"), default="true" if r.default else "false")
        elif r.base_type in (int, float):
            kw.update(type=r.base_type, default=r.default)
        else:
            kw.update(default=None if r.param == "model" else (r.default or None))
        if s.choices:
            kw["choices"] = s.choices
        p.add_argument(s.flag, **kw)
    eps = settings.row(TrainSettings, "targetEpsilon")
    p.add_argument("--dp-epsilon", type=float, default=None, metavar="E",
                   help="train with differential privacy (Opacus DP-SGD) spending at most "
                   f"ε = E (privacy='dp', targetEpsilon=E; {eps.setting.doc})")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a classifier on a prepared data set")
    p.add_argument("data", help="folder written by `sparkvision prepare`")
    p.add_argument("--out", required=True, help="model output folder")
    add_train_flags(p)
    add_mlflow_flags(p, model=True)
    add_common(p)
    p.set_defaults(func=run)
