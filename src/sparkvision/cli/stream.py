"""`sparkvision stream`: classify image files (or TFRecords / Parquet) as they arrive in a
folder, appending predictions to Parquet exactly once."""

from __future__ import annotations

import argparse
import time

from sparkvision.cli.common import add_common, emit, spark_session


def run(args: argparse.Namespace) -> int:
    from sparkvision.checks import check_prediction_input, check_stream_input
    from sparkvision.display import end_status, status_line
    from sparkvision.ml.model import check_model_folder
    from sparkvision.streaming import start
    from sparkvision.streaming.drift import DriftSettings
    from sparkvision.streaming.monitor import (
        batch_progress,
        follow,
        live_line,
        summarize,
        write_stats,
    )

    started = time.monotonic()
    check_model_folder(args.model_dir)  # a wrong folder or input fails before Spark starts
    check_stream_input(args.input)
    if args.drift_reference:
        check_prediction_input(args.drift_reference)
    DriftSettings(args.drift_threshold, args.drift_window)  # bad values: before Spark
    spark = spark_session(args)
    query = start(
        args.model_dir, args.input, args.out, args.checkpoint, format=args.format,
        available_now=args.available_now, trigger_seconds=args.trigger_seconds,
        max_files_per_trigger=args.max_files_per_trigger, spark=spark, backend=args.backend,
        trust_code=args.trust_code, drift=not args.no_drift,
        drift_threshold=args.drift_threshold, drift_window=args.drift_window,
        drift_reference=args.drift_reference,
    )
    writer = query.sparkvision_writer

    def on_batch(b) -> None:
        done = {r.batch: r for r in writer.records}
        record = done.get(b.batch)
        status_line(live_line(b, record.rejected if record else None,
                              record.model_version if record else None,
                              record.drift if record else None))

    interrupted = False
    try:
        ended = follow(query, args.timeout, on_batch)
    except KeyboardInterrupt:
        ended, interrupted = False, True
    if not ended:
        query.stop()
    end_status()
    progress = batch_progress(query)
    payload = summarize(progress, writer.summary())
    payload.update(stopped="interrupted" if interrupted else ("done" if ended else "timeout"),
                   seconds=round(time.monotonic() - started, 3))
    write_stats(args.out, dict(payload), progress, writer.records, model=args.model_dir,
                input=args.input, format=args.format, checkpoint=args.checkpoint)
    payload.update(out=args.out, checkpoint=args.checkpoint)
    drift = payload["drift"]
    if drift.get("watched"):
        said = (f"drift: {drift['warnings']} warning window(s), the first at batch "
                f"{drift['first_warning_batch']}" if drift["warnings"] else
                f"drift: no warning (max PSI {drift['max_score']})")
    else:
        said = f"drift not watched: {drift['note']}"
    emit(args, payload,
         f"streamed {payload['rows']} rows in {payload['batches']} batches "
         f"({payload['rejected']} rejected) → {args.out}; p50 {payload['p50_ms']} ms, "
         f"p95 {payload['p95_ms']} ms; {said}")
    return 0


def register(sub) -> None:
    from sparkvision.cli.predict import add_backend_flag, add_trust_flag
    from sparkvision.streaming.sources import FORMATS

    p = sub.add_parser("stream", help="classify files as they arrive (Structured Streaming)")
    p.add_argument("model_dir", help="model folder; a newer model moved there is used from "
                   "the next micro-batch on")
    p.add_argument("--input", required=True, help="folder where files arrive")
    p.add_argument("--out", required=True, help="output folder (Parquet; rejected rows in "
                   "OUT/_rejected)")
    p.add_argument("--checkpoint", required=True, help="query checkpoint folder (one per "
                   "stream; restart with the same one to resume exactly once)")
    p.add_argument("--format", default="image", choices=FORMATS,
                   help="what arrives: image files, TFRecords or Parquet (default image)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--available-now", action="store_true",
                      help="process what is there now, then stop")
    when.add_argument("--trigger-seconds", type=float, default=1.0,
                      help="start a micro-batch every N seconds (default 1)")
    p.add_argument("--max-files-per-trigger", type=int, default=None,
                   help="at most N new files per micro-batch")
    p.add_argument("--timeout", type=float, default=None,
                   help="stop after S seconds (default: run until done or Ctrl-C)")
    from sparkvision.streaming.drift import DEFAULT_THRESHOLD, DEFAULT_WINDOW

    p.add_argument("--drift-threshold", type=float, default=DEFAULT_THRESHOLD, metavar="PSI",
                   help="warn when a window's population stability index against the "
                   "model's reference profile exceeds PSI (default %(default)g)")
    p.add_argument("--drift-window", type=int, default=DEFAULT_WINDOW, metavar="N",
                   help="compare the last N micro-batches together (default %(default)d)")
    p.add_argument("--drift-reference", default=None, metavar="DATA",
                   help="compute the reference profile from DATA (a prepared folder: its val "
                   "split) when the stream starts, instead of the model's own "
                   "drift_profile.json (a model trained without validation data has none)")
    p.add_argument("--no-drift", action="store_true",
                   help="do not watch drift (no pixel statistics, no reference)")
    add_backend_flag(p)
    add_trust_flag(p)
    add_common(p)
    p.set_defaults(func=run)
