"""`sparkvision explain`: what a model looks at — attribution maps (Captum) computed on
Spark, for up to K right and K wrong images per class, and each class's mean map."""

from __future__ import annotations

import argparse

from sparkvision import storage
from sparkvision.cli.common import add_common, emit
from sparkvision.cli.predict import (
    add_backend_flag,
    add_input_flags,
    add_trust_flag,
    load_model,
    load_model_and_input,
)

EXPLANATIONS_DIR = "explanations"


def run(args: argparse.Namespace) -> int:
    from sparkvision.explaining.job import check_explain, explain
    from sparkvision.inference.explain import require_captum

    # Every check that needs no data runs before Spark starts: captum, the model folder,
    # the input's existence, K and, for gradcam, a convolutional layer in the network.
    require_captum(f"`sparkvision explain --method {args.method}`")
    model = load_model(args)
    check_explain(model, args.method, args.per_class, args.target)
    _spark, model, df, rejected = load_model_and_input(args, model)
    out = args.out or storage.join(args.model_dir, EXPLANATIONS_DIR,
                                   f"{args.split}-{args.method}")
    result = explain(model, df, out, method=args.method, per_class=args.per_class,
                     target=args.target, seed=args.seed,
                     source={"model": storage.absolute(args.model_dir),
                             "data": storage.absolute(args.input), "split": args.split})
    payload = result.to_dict()
    payload["rejected"] = rejected
    layer = f" (layer {result.layer})" if result.layer else ""
    emit(args, payload,
         f"explained {args.model_dir} with {result.method}{layer} on {result.rows} rows: "
         f"{result.images} images and {result.classes} class means → {result.out} "
         f"({result.seconds:.1f} s)")
    return 0


def register(sub) -> None:
    from sparkvision.settings import ExplainerSettings, row

    method, target = row(ExplainerSettings, "method"), row(ExplainerSettings, "target")

    p = sub.add_parser("explain", help="what the model looks at: attribution maps (Grad-CAM, "
                                       "saliency, …) of right and wrong images per class")
    add_input_flags(p)
    p.add_argument("--out", default=None,
                   help="output folder (default MODEL_DIR/explanations/SPLIT-METHOD)")
    p.add_argument("--method", default=method.default, choices=method.setting.choices,
                   help="Captum attribution method (default %(default)s: Grad-CAM on the "
                   "last conv layer)")
    p.add_argument("--per-class", type=int, default=8, metavar="K",
                   help="images explained per class: up to K right and K wrong "
                   "(default %(default)s)")
    p.add_argument("--target", default=target.default, choices=target.setting.choices,
                   help="class each map explains: the predicted one or the true label "
                   "(default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the hash that picks the images (default %(default)s)")
    add_backend_flag(p)
    add_trust_flag(p)
    add_common(p)
    p.set_defaults(func=run)
