"""What every subcommand shares: flags, ``--json`` output, exit codes, the Spark session."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USER_ERROR)


def add_common(p: argparse.ArgumentParser) -> None:
    """``--master`` or ``--remote``, ``--json``, ``-q`` and ``-v``: on every subcommand."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--master", default=None,
                       help="Spark master URL for a driver in this process (default: "
                       "$SPARK_MASTER, then local[*])")
    where.add_argument("--remote", default=None, metavar="sc://HOST:PORT",
                       help="Spark Connect server URL: run on that server's cluster instead "
                       "of a driver in this process (default: $SPARK_REMOTE unless --master)")
    p.add_argument("--json", action="store_true", help="print one JSON object as last line")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars or progress lines")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="INFO logs, and Spark's own output (JVM banner, executor stack "
                   "traces) on stderr instead of the log file")


def log_file(command: str) -> Path:
    """Where this run's Spark (JVM) output and internal-error tracebacks go:
    ``$SPARKVISION_LOG_DIR`` (default: ``sparkvision-logs`` in the temp folder)."""
    folder = os.environ.get("SPARKVISION_LOG_DIR") or os.path.join(
        tempfile.gettempdir(), "sparkvision-logs")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(folder) / f"{command}-{stamp}-{os.getpid()}.log"


def emit(args: argparse.Namespace, payload: dict[str, Any], human: str) -> None:
    """Print the JSON payload (``--json``) or the human summary."""
    if args.json:
        print(json.dumps(payload, ensure_ascii=False, default=str))
    else:
        print(human)


def spark_session(args: argparse.Namespace):
    """The SparkSession for ``--master`` (started on first use) or ``--remote`` (a Spark
    Connect client). Unless ``-v``, the JVM's own output goes to the run's log file
    (``args.log_file``), not the terminal."""
    from sparkvision.session import get_spark

    log = getattr(args, "log_file", None)
    return get_spark(args.master, jvm_log=None if args.verbose or log is None else str(log),
                     remote=getattr(args, "remote", None))


@contextlib.contextmanager
def spark_progress(spark, desc: str, poll_s: float = 0.5) -> Iterator[None]:
    """Show the tasks of the Spark stages run inside the block as one progress display
    (``sparkvision.display``: a bar on a TTY, lines otherwise, none with ``-q``). Needs the
    classic ``sparkContext`` status tracker; without one (Spark Connect) it shows nothing."""
    from sparkvision import display

    try:
        tracker = spark.sparkContext.statusTracker()
    except Exception:  # noqa: BLE001 - Spark Connect has no SparkContext
        tracker = None
    if tracker is None or display.mode() == "off":
        yield
        return
    bar = display.progress(None, desc, unit="task")
    stages: dict[int, tuple[int, int]] = {}
    stop = threading.Event()

    def refresh() -> None:
        for sid in tracker.getActiveStageIds():
            info = tracker.getStageInfo(sid)
            if info is not None:
                stages[sid] = (info.numCompletedTasks, info.numTasks)
        total = sum(t for _, t in stages.values())
        if total:
            bar.total = total
            bar.update(sum(d for d, _ in stages.values()) - bar.n)

    def poll() -> None:
        while not stop.wait(poll_s):
            with contextlib.suppress(Exception):  # progress must never break the command
                refresh()

    thread = threading.Thread(target=poll, name="sparkvision-progress", daemon=True)
    thread.start()
    try:
        yield
        stages.update({sid: (t, t) for sid, (_, t) in stages.items()})  # all finished
        bar.update(sum(t for _, t in stages.values()) - bar.n)
    finally:
        stop.set()
        thread.join(2 * poll_s + 1)
        bar.close()


def accuracy(df, label_col: str = "label", prediction_col: str = "prediction") -> float | None:
    """Share of labelled rows predicted right (None without labels)."""
    from pyspark.sql import functions as F

    if label_col not in df.columns:
        return None
    row = df.filter(F.col(label_col).isNotNull()).agg(
        F.avg((F.col(label_col) == F.col(prediction_col)).cast("double")).alias("acc"),
    ).first()
    return None if row is None or row.acc is None else float(row.acc)
