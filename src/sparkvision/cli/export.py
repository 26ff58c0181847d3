"""`sparkvision export`: a trained model as an ONNX or TorchScript file for serving outside
Spark, with a JSON description beside it."""

from __future__ import annotations

import argparse
import json
import os
import time

from sparkvision.cli.common import add_common, emit

#: Same as ``sparkvision.models.export.FORMATS`` / ``OUTPUTS`` (kept here so that
#: ``--help`` does not import torch).
FORMATS = ("onnx", "torchscript")
OUTPUTS = ("probability", "logits")


def run(args: argparse.Namespace) -> int:
    from sparkvision.ml.model import ImageClassificationModel

    started = time.monotonic()
    # No Spark session: a model folder is read and exported without one.
    model = ImageClassificationModel.load(args.model_dir, trust_code=args.trust_code)
    path = model.export(args.out, format=args.format, output=args.output)
    with open(path + ".json", encoding="utf-8") as fh:
        sidecar = json.load(fh)
    payload = {
        "out": path,
        "json": path + ".json",
        "format": args.format,
        "bytes": os.path.getsize(path),
        "output": args.output,
        "classes": sidecar["classes"],
        "input_shape": sidecar["input_shape"],
        "seconds": round(time.monotonic() - started, 3),
    }
    emit(args, payload, f"exported {args.model_dir} as {args.format} → {path} "
                        f"({payload['bytes']} bytes; description in {path}.json)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("export", help="write a model as an ONNX or TorchScript file")
    p.add_argument("model_dir", help="folder written by `sparkvision train`")
    p.add_argument("--format", choices=FORMATS, default="onnx",
                   help="onnx (run with onnxruntime) or torchscript (torch.jit.load); "
                   "default onnx")
    p.add_argument("--out", required=True, help="output file; FILE.json describes it")
    p.add_argument("--output", choices=OUTPUTS, default="probability",
                   help="what the graph returns: softmax probabilities (default) or logits")
    from sparkvision.cli.predict import add_trust_flag

    add_trust_flag(p)
    add_common(p)
    p.set_defaults(func=run)
