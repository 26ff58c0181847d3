"""`sparkvision tune`: search ImageClassifier Params (grid, random, Bayesian) on Spark."""

from __future__ import annotations

import argparse

from sparkvision.cli.common import add_common, emit, spark_session
from sparkvision.cli.mlflow_flags import Tracking, add_mlflow_flags, tracked
from sparkvision.cli.train import (
    add_train_flags,
    checked_classifier,
    classifier_params,
)


@tracked
def run(args: argparse.Namespace, tracking: Tracking) -> int:
    from sparkvision.data.manifest import read_manifest
    from sparkvision.data.prepared_splits import load_prepared
    from sparkvision.tuning.search import TuneConfig, tune
    from sparkvision.tuning.space import parse_space

    # Everything is checked before Spark starts.
    space = parse_space(args.space)
    config = TuneConfig(out=args.out, strategy=args.strategy, trials=args.trials,
                        parallelism=args.parallel, metric=args.metric, pruner=args.pruner,
                        seed=args.search_seed, storage=args.storage)
    config.check(space)
    manifest = read_manifest(args.data)
    params = classifier_params(args, manifest)
    checked_classifier(params)  # a searched import path: parse_space imported each choice
    has_val = bool(manifest["splits"].get("val"))
    if args.metric.startswith("val_") and not has_val:
        from sparkvision.errors import InvalidParameterError

        raise InvalidParameterError("metric", args.metric, f"{args.data} has no val split: "
                                    "re-run prepare with a val fraction or use a train_* metric")
    spark = spark_session(args)
    train_df = load_prepared(spark, args.data, "train")
    val_df = load_prepared(spark, args.data, "val") if has_val else None
    callbacks = tracking.tune_started(config, space, params)  # --mlflow: parent run
    result = tune(train_df, val_df, space, config, params, show_progress=not args.json,
                  callbacks=callbacks)
    payload = result.to_dict()
    payload.update(tracking.tune_finished(result))  # + mlflow_run_id
    counts = ", ".join(f"{n} {s}" for s, n in result.trials.items() if n)
    lines = [f"tuned {len(space)} Params on {args.data} → {args.out} ({counts})",
             f"  best {result.metric}: {result.best_value}  params: {result.best_params}",
             f"  best model: {result.best_model}"]
    emit(args, payload, "\n".join(lines))
    return 0


def register(sub) -> None:
    from sparkvision.tuning.search import METRICS, PRUNERS, STRATEGIES

    p = sub.add_parser("tune", help="hyper-parameter search; every trial is a Spark job")
    p.add_argument("data", help="folder written by `sparkvision prepare`")
    p.add_argument("--out", required=True,
                   help="study folder: study.db, trials.json, best/, plots; run again to resume")
    p.add_argument("--space", required=True,
                   help='JSON object or .json file: {"learningRate": {"log": [1e-4, 0.1]}, '
                   '"batchSize": [32, 64]}')
    p.add_argument("--strategy", choices=STRATEGIES, default="bayes")
    p.add_argument("--trials", type=int, default=None,
                   help="finished trials to reach (default: the grid size, or 10)")
    p.add_argument("--parallel", type=int, default=1, help="trials running at once")
    p.add_argument("--metric", default="val_accuracy", choices=list(METRICS))
    p.add_argument("--pruner", choices=PRUNERS, default="median")
    p.add_argument("--storage", default=None, help="SQLAlchemy URL (default sqlite in --out)")
    p.add_argument("--search-seed", type=int, default=0, help="seed of the sampler")
    add_train_flags(p)
    add_mlflow_flags(p)
    add_common(p)
    p.set_defaults(func=run)
