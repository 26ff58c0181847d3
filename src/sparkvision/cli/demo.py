"""`sparkvision demo`: the whole mission on real data in one Spark session — prepare →
train (2 workers) → evaluate → batch predict → a short stream → report — ending with a
summary (test accuracy, macro F1, where the report is)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sparkvision.cli.common import add_common, emit, spark_session

#: Marks a folder as a demo's, so a later demo may clear it.
MARKER = "demo.json"
#: The demo's sub-folders (cleared before a new run).
PARTS = ("data", "model", "predictions.parquet", "landing", "stream", "stream-checkpoint",
         "report.html")


def _prepare_out(out: Path) -> None:
    from sparkvision.errors import InvalidParameterError

    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise InvalidParameterError(
            "out", str(out), "the folder holds other files; use a new or empty folder (or a "
            "previous demo's, which is cleared)")
    for part in PARTS:
        target = out / part
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_landing_images(spark, data: Path, landing: Path, n: int) -> int:
    """``n`` test images as PNG files in class sub-folders (written, then renamed, as a
    producer should), for the stream step."""
    from PIL import Image

    from sparkvision.data.images import stored_to_array
    from sparkvision.data.manifest import read_manifest
    from sparkvision.data.prepared_splits import load_prepared

    classes = read_manifest(data)["classes"]
    rows = (load_prepared(spark, str(data), "test")
            .select("image", "label", "height", "width", "channels").limit(n).collect())
    for i, row in enumerate(rows):
        pixels = stored_to_array(bytes(row.image), (row.height, row.width, row.channels))
        folder = landing / str(classes[int(row.label)])
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(pixels[:, :, 0] if row.channels == 1 else pixels)
        tmp = folder / f".{i:04d}.png.tmp"
        image.save(tmp, format="PNG")
        tmp.rename(folder / f"{i:04d}.png")
    return len(rows)


class _Steps:
    """Runs subcommands in this process with ``--json``, keeping their payloads."""

    def __init__(self, args: argparse.Namespace, total: int) -> None:
        from sparkvision.cli import build_parser

        self.args = args
        self.parser = build_parser()
        self.total = total
        self.done = 0
        self.payloads: dict[str, dict[str, Any]] = {}

    def run(self, name: str, argv: list[str], line: Callable[[dict[str, Any]], str]) -> None:
        flags = ["--json"] + (["--master", self.args.master] if self.args.master else [])
        flags += ["--remote", self.args.remote] if getattr(self.args, "remote", None) else []
        flags += ["-q"] if self.args.quiet else []
        flags += ["-v"] if self.args.verbose else []
        for key, value in getattr(self.args, "conf", None) or []:  # the session's confs
            flags += ["--conf", f"{key}={value}"]
        if getattr(self.args, "driver_memory", None):
            flags += ["--driver-memory", self.args.driver_memory]
        sub = self.parser.parse_args([name, *argv, *flags])
        sub.log_file = self.args.log_file
        started = time.monotonic()
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            sub.func(sub)
        payload = json.loads(buffer.getvalue().strip().splitlines()[-1])
        self.payloads[name] = payload
        self.done += 1
        if not self.args.json:
            print(f"[{self.done}/{self.total}] {name:<8s} {line(payload)} "
                  f"({time.monotonic() - started:.0f} s)", flush=True)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    out = Path(args.out)
    _prepare_out(out)
    (out / MARKER).write_text(json.dumps({"source": args.source, "epochs": args.epochs,
                                          "workers": args.workers}) + "\n", encoding="utf-8")
    data, model = out / "data", out / "model"
    steps = _Steps(args, total=6)
    steps.run("prepare", [args.source, "--out", str(data), "--seed", "42"], lambda p: (
        f"{args.source} → {p['out']}: {len(p['classes'])} classes, "
        + ", ".join(f"{n} {k}" for k, n in p["splits"].items())))
    steps.run("train", [str(data), "--out", str(model), "--epochs", str(args.epochs),
                        "--workers", str(args.workers), "--seed", "0"], lambda p: (
        f"{args.model} on {p['world_size']} workers, {p['epochs']} epochs: "
        f"val accuracy {p['val_accuracy']:.4f}"))
    steps.run("evaluate", [str(model), str(data), "--split", "test"], lambda p: (
        f"test split: accuracy {p['accuracy']:.4f}, macro F1 {p['macro_f1']:.4f} → {p['out']}"))
    steps.run("predict", [str(model), str(data), "--split", "test", "--out",
                          str(out / "predictions.parquet")],
              lambda p: f"{p['rows']} rows → {p['out']}")
    spark = spark_session(args)
    landed = _write_landing_images(spark, data, out / "landing", args.stream_images)
    steps.run("stream", [str(model), "--input", str(out / "landing"), "--out",
                         str(out / "stream"), "--checkpoint", str(out / "stream-checkpoint"),
                         "--available-now"], lambda p: (
        f"{landed} image files → {p['rows']} predictions in {p['batches']} micro-batch"
        f"{'es' if p['batches'] != 1 else ''}, p50 latency {p['p50_ms']:.0f} ms → {p['out']}"))
    steps.run("report", [str(out), "--out", str(out / "report.html")],
              lambda p: f"{p['out']} ({', '.join(p['sections'])})")
    evaluation = steps.payloads["evaluate"]
    payload = {
        "out": str(out),
        "test_accuracy": evaluation["accuracy"],
        "macro_f1": evaluation["macro_f1"],
        "report": steps.payloads["report"]["out"],
        "streamed": steps.payloads["stream"]["rows"],
        "world_size": steps.payloads["train"]["world_size"],
        "seconds": round(time.monotonic() - started, 1),
        "steps": steps.payloads,
    }
    emit(args, payload,
         f"demo done in {payload['seconds']:.0f} s: test accuracy "
         f"{payload['test_accuracy']:.4f} · macro F1 {payload['macro_f1']:.4f} · "
         f"report {payload['report']}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="the whole mission on real data: prepare → train → "
                       "evaluate → predict → stream → report")
    p.add_argument("--out", default="demo-output", help="folder for everything (default "
                   "demo-output; a previous demo's is cleared)")
    p.add_argument("--source", default="mnist", choices=["mnist", "digits", "faces"],
                   help="built-in data set (default mnist: 5,000 real MNIST digits)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--stream-images", type=int, default=24,
                   help="test images dropped into the stream's input folder")
    add_common(p)
    p.set_defaults(func=run, model="cnn")
