"""`sparkvision report`: one self-contained HTML page about a model, tuning study, stream
output or a run folder holding them (no Spark session is started)."""

from __future__ import annotations

import argparse

from sparkvision import storage
from sparkvision.cli.common import add_common, emit

DEFAULT_NAME = "report.html"


def run(args: argparse.Namespace) -> int:
    from sparkvision.reporting import build_report

    out = args.out or storage.join(args.path, DEFAULT_NAME)
    result = build_report(args.path, out)
    payload = result.to_dict()
    emit(args, payload, f"report on {args.path} → {result.out} ({', '.join(result.sections)}; "
                        f"{result.images} images, {result.bytes / 1024:.0f} KiB)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML report of a model, study, "
                                      "stream or run folder")
    p.add_argument("path", metavar="RUN_OR_MODEL_DIR",
                   help="a model folder, a tuning study, a stream output, or a folder holding "
                        "any of them (searched 4 levels down)")
    p.add_argument("--out", default=None,
                   help=f"HTML file to write (default RUN_OR_MODEL_DIR/{DEFAULT_NAME})")
    add_common(p)
    p.set_defaults(func=run)
