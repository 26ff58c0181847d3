"""What every subcommand shares: flags, ``--json`` output, exit codes, the Spark session."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from sparkvision.session.health import Death, DriverWatch

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
    p.add_argument("--conf", action="append", default=[], type=_conf_pair,
                   metavar="KEY=VALUE",
                   help="a Spark conf for the session (repeatable); wins over sparkvision's "
                   "and spark-defaults.conf's. The driver JVM's own (spark.driver.memory, "
                   "spark.driver.extraJavaOptions) apply where this command starts it, not "
                   "over --remote")
    p.add_argument("--driver-memory", default=None, type=_memory_size, metavar="SIZE",
                   help="the driver JVM's heap, e.g. 4g (spark.driver.memory; Spark's "
                   "default 1g; with a local master, tasks run in it too)")


def _conf_pair(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not KEY=VALUE (e.g. --conf spark.sql.shuffle.partitions=8)")
    return key.strip(), value


def _memory_size(text: str) -> str:
    if re.fullmatch(r"\d+[kmgt]b?", text.strip(), re.IGNORECASE) is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a JVM memory size: use a number with k, m, g or t (e.g. 4g)")
    return text.strip()


def spark_confs(args: argparse.Namespace) -> dict[str, str]:
    """The Spark confs the command line gives: each ``--conf``, then ``--driver-memory``."""
    confs = dict(getattr(args, "conf", None) or [])
    if getattr(args, "driver_memory", None):
        confs["spark.driver.memory"] = args.driver_memory
    return confs


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
    """The SparkSession for ``--master`` (started on first use, with the ``--conf`` /
    ``--driver-memory`` confs) or ``--remote`` (a Spark Connect client). Unless ``-v``, the
    JVM's own output goes to the run's log file (``args.log_file``), not the terminal.

    A driver JVM this process started is watched (``sparkvision.session.health``): when it
    dies — out of memory, killed, crashed, or wedged by an OutOfMemoryError in one of its
    threads (then the watch ends it) — the command ends with one line on stderr and exit
    code 1 within seconds (``driver_died``), whatever it was waiting for."""
    from sparkvision.session import get_spark

    log = getattr(args, "log_file", None)
    jvm_log = None if args.verbose or log is None else str(log)
    root = logging.getLogger()
    if not args.verbose and not any(isinstance(f, _Py4jOnRoot) for f in root.filters):
        root.addFilter(_Py4jOnRoot())
    from sparkvision.session.health import start_failure

    offset = os.path.getsize(jvm_log) if jvm_log and os.path.exists(jvm_log) else 0
    try:
        spark = get_spark(args.master, conf=spark_confs(args) or None, jvm_log=jvm_log,
                          remote=getattr(args, "remote", None))
    except BaseException as exc:
        if "JAVA_GATEWAY_EXITED" in str(exc):  # pyspark's: it never answered
            raise start_failure(jvm_log, offset) from exc
        with contextlib.suppress(Exception):  # a JVM that died starting: driver_died says so
            _watch_driver(None, args, jvm_log)
        raise
    _watch_driver(spark, args, jvm_log)
    return spark


class _Py4jOnRoot(logging.Filter):
    """Drops what py4j logs on the root logger (``logging.exception("Exception while
    sending command.")`` when the JVM's connection breaks): like its own loggers', which
    the CLI silences without ``-v``, it only repeats what the exception says."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "root"
                    and f"{os.sep}py4j{os.sep}" in (record.pathname or ""))


#: After the driver JVM died: seconds the main thread has to fail its Spark call and say so
#: itself (``driver_died``; its ``finally`` blocks run) before the watch says it and ends
#: the process; then, once it said so, seconds the process has to exit (a thread or an exit
#: handler waiting on the dead JVM) before the watch ends it.
DRIVER_REPORT_GRACE_S = 3.0
DRIVER_EXIT_GRACE_S = 5.0
#: Seconds a failed Spark call waits for the JVM process to be reaped (its connection
#: closes a moment before).
DRIVER_DEATH_WAIT_S = 2.0


class _DriverState:
    """The watched driver JVM of this process and whether its death was reported."""

    def __init__(self, watch: DriverWatch, command: str, memory_fix: str) -> None:
        self.watch = watch
        self.command = command
        self.memory_fix = memory_fix
        self.reported = threading.Event()
        self.lock = threading.Lock()

    def report(self, death: Death, command: str | None = None) -> None:
        """The one line, once (from the main thread or the watch, whichever is first)."""
        from sparkvision import display

        with self.lock:
            if self.reported.is_set():
                return
            display.error_line(f"sparkvision {command or self.command}: error: "
                               f"{death.describe(self.memory_fix)}")
            self.reported.set()

    def on_death(self, death: Death) -> None:  # on the watch's thread
        if not self.reported.wait(DRIVER_REPORT_GRACE_S):
            self.report(death)  # the main thread waits on something else: end it here
            os._exit(EXIT_INTERNAL_ERROR)
        main = threading.main_thread()
        main.join(DRIVER_EXIT_GRACE_S)
        if main.is_alive():
            return  # the CLI's main() was called in a process that goes on
        time.sleep(DRIVER_EXIT_GRACE_S)  # exiting: end it if it hangs
        os._exit(EXIT_INTERNAL_ERROR)


_driver: _DriverState | None = None


def _watch_driver(spark, args: argparse.Namespace, jvm_log: str | None) -> None:
    """Start watching the driver JVM pyspark launched in this process (none over Spark
    Connect, or when the JVM was started elsewhere: ``PYSPARK_GATEWAY_PORT``); ``spark``:
    its session, None when starting it failed."""
    global _driver, _next_excepthook
    from pyspark import SparkContext

    from sparkvision.session import is_connect
    from sparkvision.session.health import DEFAULT_DRIVER_MEMORY, DriverWatch, more_memory

    if spark is not None and is_connect(spark):
        return
    proc = getattr(SparkContext._gateway, "proc", None)
    if proc is None or (_driver is not None and _driver.watch.proc is proc
                        and not _driver.watch.stopped):
        return
    memory = _driver_memory(args)
    now = memory or f"{DEFAULT_DRIVER_MEMORY}, Spark's default"
    watch = DriverWatch(proc, jvm_log)
    state = _DriverState(watch, args.command,
                         f"--driver-memory {more_memory(memory)} (now {now})")
    watch.on_death = state.on_death
    _driver = state
    if threading.excepthook is not _thread_excepthook:
        _next_excepthook = threading.excepthook
        threading.excepthook = _thread_excepthook
    server = getattr(SparkContext._active_spark_context, "_accumulatorServer", None)
    if server is not None and not isinstance(server.handle_error, _QuietAfterDeath):
        server.handle_error = _QuietAfterDeath(server.handle_error)
    watch.start()
    atexit.register(watch.stop)  # the JVM ends after this process: expected


def _driver_memory(args: argparse.Namespace) -> str | None:
    """The driver JVM's ``spark.driver.memory`` (None: Spark's default): the live conf,
    else what the command line or Spark's launcher gave."""
    from pyspark import SparkContext

    from sparkvision.session.conf import launch_conf

    sc = SparkContext._active_spark_context
    if sc is not None:
        with contextlib.suppress(Exception):  # a JVM that is gone already
            return sc.getConf().get("spark.driver.memory", None)
    return spark_confs(args).get("spark.driver.memory") or launch_conf().get(
        "spark.driver.memory")


class _QuietAfterDeath:
    """A socket server's ``handle_error`` (pyspark's accumulator server: the JVM sends it
    updates) that writes no traceback for a connection broken by the driver JVM's end."""

    def __init__(self, handle_error: Any) -> None:
        self.handle_error = handle_error

    def __call__(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        state = _driver
        if state is not None and not state.watch.stopped and exc is not None and (
                state.watch.death(DRIVER_DEATH_WAIT_S if _spark_call_failed(exc) else 0.0)):
            return
        self.handle_error(request, client_address)


_next_excepthook = threading.excepthook


def _thread_excepthook(hook: Any) -> None:
    """A thread's uncaught exception once the driver JVM has died is that death, which
    the command's one line says: no traceback for it (any other goes on as before)."""
    state = _driver
    exc = hook.exc_value
    if state is not None and not state.watch.stopped and exc is not None and (
            state.watch.death(DRIVER_DEATH_WAIT_S if _spark_call_failed(exc) else 0.0)):
        return
    _next_excepthook(hook)


def _spark_call_failed(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it came from) is a py4j call that got no answer or
    a broken connection: what a Spark call raises when the JVM has gone (not a Java
    exception the JVM answered with: ``Py4JJavaError``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if ((type(current).__module__.startswith("py4j")
                and type(current).__name__ != "Py4JJavaError")
                or isinstance(current, (ConnectionError, EOFError))):
            return True
        current = current.__cause__ or current.__context__
    return False


def driver_died(args: argparse.Namespace, exc: BaseException | None = None) -> bool:
    """True when the driver JVM this command watches has died; its one line (what
    happened, what to do) is then on stderr. ``exc``: what the command raised (a failed
    Spark call waits a moment for the JVM's end to show)."""
    from sparkvision.display import error_line
    from sparkvision.session.health import DriverStartError

    if isinstance(exc, DriverStartError):
        error_line(f"sparkvision {getattr(args, 'command', '')}: error: {exc}")
        return True
    state = _driver
    if state is None or state.watch.stopped:
        return False
    wait = DRIVER_DEATH_WAIT_S if exc is not None and _spark_call_failed(exc) else 0.0
    death = state.watch.death(wait)
    if death is None:
        return False
    state.report(death, getattr(args, "command", None))
    return True


def end_driver_watch() -> None:
    """Stop watching the driver JVM (the command is over)."""
    if _driver is not None:
        _driver.watch.stop()


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
        while not stop.wait(poll_s) and not _driver_gone():
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
        if _driver_gone():
            display.discard(bar)  # its counts stopped with the JVM: no final line
        else:
            bar.close()


def _driver_gone() -> bool:
    """Whether the watched driver JVM has ended (no Spark call can answer any more)."""
    state = _driver
    return state is not None and not state.watch.stopped and state.watch.proc.poll() is not None


def accuracy(df, label_col: str = "label", prediction_col: str = "prediction") -> float | None:
    """Share of labelled rows predicted right (None without labels)."""
    from pyspark.sql import functions as F

    if label_col not in df.columns:
        return None
    row = df.filter(F.col(label_col).isNotNull()).agg(
        F.avg((F.col(label_col) == F.col(prediction_col)).cast("double")).alias("acc"),
    ).first()
    return None if row is None or row.acc is None else float(row.acc)
