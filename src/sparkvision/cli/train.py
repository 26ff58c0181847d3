"""`sparkvision train`: fit an ImageClassifier on a prepared folder and save the model."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from sparkvision.cli.common import accuracy, add_common, emit, spark_session
from sparkvision.cli.tracking import Tracking, add_mlflow_flags, tracked
from sparkvision.config import CLASSIFIER_DEFAULTS as D

HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "val_accuracy", "seconds", "steps_per_rank")


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
    model = args.model
    if model is None:  # --init-from without --model: the network of that model
        from sparkvision.ml.transfer import saved_network

        model = saved_network(args.init_from) if args.init_from else D["model"]
        args.model = model
    return {
        "model": model, "epochs": args.epochs, "batchSize": args.batch_size,
        "learningRate": args.lr, "optimizer": args.optimizer, "loss": args.loss,
        "focalGamma": args.focal_gamma, "numWorkers": args.workers, "seed": args.seed,
        "checkpointDir": args.checkpoint_dir or "", "balance": args.balance,
        "classes": list(manifest["classes"]), "imageShape": list(manifest["image_shape"]),
        "classWeights": _class_weights(args.class_weights), "augment": args.augment,
        "stallTimeout": args.timeout, "memoryBudgetMB": args.memory_budget,
        "initWeights": args.init_weights or "", "initStrict": args.init_strict == "true",
        "initFrom": args.init_from or "", "freeze": args.freeze,
        "backboneLrScale": args.backbone_lr_scale,
        "privacy": "dp" if args.dp_epsilon is not None else "none",
        "targetEpsilon": args.dp_epsilon if args.dp_epsilon is not None else D["targetEpsilon"],
        "targetDelta": args.dp_delta, "maxGradNorm": args.max_grad_norm,
    }


@tracked
def run(args: argparse.Namespace, tracking: Tracking) -> int:
    from sparkvision.data.loading import load_prepared
    from sparkvision.data.manifest import copy_manifest, read_manifest
    from sparkvision.ml.classifier import ImageClassifier

    started = time.monotonic()
    manifest = read_manifest(args.data)
    clf = ImageClassifier(**classifier_params(args, manifest))
    clf.validateParams()  # bad flags fail before Spark starts
    tracking.train_started(clf)  # --mlflow: the run, its Params, an epoch logger
    spark = spark_session(args)
    train_df = load_prepared(spark, args.data, "train")
    if manifest["splits"].get("val"):
        clf.setValidationDf(load_prepared(spark, args.data, "val"))
    model = clf.fit(train_df)
    model.write().overwrite().save(args.out)
    copy_manifest(args.data, args.out)  # `report MODEL_DIR` shows the data set
    history = [{k: e.get(k) for k in HISTORY_KEYS} for e in model.history["epochs"]]
    test_acc = None
    if manifest["splits"].get("test"):
        test_acc = accuracy(model.transform(load_prepared(spark, args.data, "test")))
    payload: dict[str, Any] = {
        "model": str(Path(args.out)),
        "world_size": model.history["world_size"],
        "epochs": len(history),
        "history": history,
        "val_accuracy": history[-1]["val_accuracy"] if history else None,
        "test_accuracy": test_acc,
        "balance": model.history.get("balance"),
        "resumed_from_epoch": model.history.get("resumed_from_epoch"),
        "transfer": model.history.get("transfer"),
        "privacy": model.history.get("privacy"),
        "epsilon": (model.history.get("privacy") or {}).get("epsilon"),
        "delta": (model.history.get("privacy") or {}).get("delta"),
        "seconds": round(time.monotonic() - started, 3),
    }
    payload.update(tracking.train_finished(model, payload))  # + mlflow_run_id
    lines = [f"trained {args.model} on {payload['world_size']} workers → {args.out}"]
    transfer = model.history.get("transfer") or {}
    if transfer.get("init_summary"):
        lines.append(f"  started from: {transfer['init_summary']}")
    if transfer.get("freeze") == "backbone":
        lines.append(f"  frozen: the backbone ({transfer.get('frozen_tensors')} tensors); "
                     f"trained: {transfer.get('head')}")
    lines += [
        f"  epoch {e['epoch']}: train_loss={e['train_loss']:.4f} val_accuracy={e['val_accuracy']}"
        for e in history
    ]
    lines.append(f"  test accuracy: {test_acc}")
    if payload["privacy"]:
        lines.append(f"  privacy: (ε = {payload['epsilon']:.2f}, δ = {payload['delta']:g})-"
                     f"differentially private ({payload['privacy']['accountant']} accountant, "
                     f"noise multiplier {payload['privacy']['noise_multiplier']:.3f}, "
                     f"clipping norm {payload['privacy']['max_grad_norm']:g})")
    emit(args, payload, "\n".join(lines))
    return 0


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """The flags that set ImageClassifier Params (defaults: config.CLASSIFIER_DEFAULTS)."""
    from sparkvision.ml.params import AUGMENTS, BALANCES, FREEZE_CHOICES, LOSSES, OPTIMIZERS

    p.add_argument("--model", default=None,
                   help="cnn | simple_cnn | lenet5 | resnet8 | pkg.mod:fn (default: "
                   f"{D['model']}, or the network of --init-from)")
    p.add_argument("--epochs", type=int, default=D["epochs"])
    p.add_argument("--batch-size", type=int, default=D["batchSize"], help="per worker")
    p.add_argument("--lr", type=float, default=D["learningRate"])
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=D["optimizer"])
    p.add_argument("--loss", choices=LOSSES, default=D["loss"])
    p.add_argument("--focal-gamma", type=float, default=D["focalGamma"],
                   help="gamma of --loss focal")
    p.add_argument("--augment", choices=AUGMENTS, default=D["augment"])
    p.add_argument("--workers", type=int, default=D["numWorkers"])
    p.add_argument("--seed", type=int, default=D["seed"])
    p.add_argument("--checkpoint-dir", default=None, help="shared folder; resumes from it")
    p.add_argument("--class-weights", default=None, help="'balanced' or w0,w1,...")
    p.add_argument("--memory-budget", type=float, default=D["memoryBudgetMB"], metavar="MB",
                   help="MB of images a training task keeps in memory; more is spilled to "
                        "the executor's local dir and memory-mapped (default 0: auto)")
    p.add_argument("--timeout", type=float, default=D["stallTimeout"], metavar="S",
                   help="fail the training when a worker makes no progress (or does not "
                   "start) for S seconds, naming it (default %(default)g)")
    p.add_argument("--init-weights", default=None, metavar="FILE.safetensors",
                   help="start from this state dict (strict unless --init-strict false)")
    p.add_argument("--init-strict", choices=("true", "false"),
                   default="true" if D["initStrict"] else "false",
                   help="false: load the tensors that fit and print what did not")
    p.add_argument("--init-from", default=None, metavar="MODEL_DIR",
                   help="start from a trained model (its head is re-initialised when its "
                   "classes differ)")
    p.add_argument("--freeze", choices=FREEZE_CHOICES, default=D["freeze"],
                   help="backbone: train only the classifier head")
    p.add_argument("--backbone-lr-scale", type=float, default=D["backboneLrScale"],
                   metavar="F", help="the backbone's learning rate = F × --lr")
    p.add_argument("--dp-epsilon", type=float, default=None, metavar="E",
                   help="train with differential privacy (Opacus DP-SGD) spending at most "
                   "ε = E")
    p.add_argument("--dp-delta", type=float, default=D["targetDelta"], metavar="D",
                   help="δ of the privacy guarantee, below 1/training rows (default "
                   "%(default)g)")
    p.add_argument("--max-grad-norm", type=float, default=D["maxGradNorm"], metavar="C",
                   help="clip each example's gradient to L2 norm C under --dp-epsilon "
                   "(default %(default)g)")
    p.add_argument("--balance", choices=BALANCES, default=D["balance"],
                   help="class imbalance: over/under-sample the training rows, or "
                   "weights (= --class-weights balanced)")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a classifier on a prepared data set")
    p.add_argument("data", help="folder written by `sparkvision prepare`")
    p.add_argument("--out", required=True, help="model output folder")
    add_train_flags(p)
    add_mlflow_flags(p)
    add_common(p)
    p.set_defaults(func=run)
