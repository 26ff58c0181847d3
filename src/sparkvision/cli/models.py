"""`sparkvision models`: the networks ``--model`` takes (built-in, and timm's and
torchvision's when the zoo is installed). Starts no Spark session."""

from __future__ import annotations

import argparse
import fnmatch
from typing import Any

from sparkvision.cli.common import emit


def _split(pattern: str) -> tuple[str, str]:
    """(source or '', pattern): ``timm:*vit*`` looks in timm only."""
    source, sep, rest = pattern.partition(":")
    if sep and source in ("builtin", "timm", "torchvision"):
        return source, rest or "*"
    return "", pattern or "*"


def run(args: argparse.Namespace) -> int:
    from sparkvision.errors import MissingDependencyError
    from sparkvision.extras import install_hint
    from sparkvision.models.registry import MODEL_NAMES
    from sparkvision.models.zoo import list_zoo_models, zoo_config

    if args.show:
        config = zoo_config(args.show)  # an unknown name: one line, exit 2
        payload: dict[str, Any] = {"model": args.show, **config}
        human = (f"{args.show}: " + ", ".join(f"{k} {v}" for k, v in config.items())
                 if config else f"{args.show}: no pretrained configuration (not a "
                 "timm: or torchvision: network)")
        emit(args, payload, human)
        return 0
    source, pattern = _split(args.filter)
    found: dict[str, list[str]] = {}
    if source in ("", "builtin"):
        found["builtin"] = [n for n in MODEL_NAMES if fnmatch.fnmatchcase(n, pattern)]
    note = ""
    if source != "builtin":
        try:
            zoo = list_zoo_models(pattern)
        except MissingDependencyError:
            note = (f"timm: and torchvision: networks need the zoo: {install_hint('zoo')} "
                    "(then onnx:FILE imports ONNX models too)")
        else:
            found.update({k: v for k, v in zoo.items() if source in ("", k)})
    payload = {"filter": args.filter, "models": found, "count": sum(map(len, found.values()))}
    if note:
        payload["zoo"] = note
    lines = []
    for where, names in found.items():
        lines.append(f"{where} ({len(names)}):")
        lines.extend(f"  {n}" for n in names)
    if note:
        lines.append(note)
    emit(args, payload, "\n".join(lines))
    return 0


def register(sub) -> None:
    p = sub.add_parser("models", help="list the networks --model takes (built-in, timm:, "
                       "torchvision:)")
    p.add_argument("--filter", default="*", metavar="PATTERN",
                   help="fnmatch pattern over the names, e.g. '*resnet*'; 'timm:*vit*' looks "
                   "in one source (builtin, timm, torchvision); default: all")
    p.add_argument("--show", default="", metavar="MODEL",
                   help="the pretrained configuration of one zoo network (input_size, mean, "
                   "std, interpolation), e.g. timm:resnet18")
    p.add_argument("--json", action="store_true", help="print one JSON object as last line")
    p.add_argument("-q", "--quiet", action="store_true", help="(no progress to show)")
    p.add_argument("-v", "--verbose", action="store_true", help="INFO logs")
    p.set_defaults(func=run)
