"""``python -m tests.fatalcli ARGV…``: the `sparkvision` CLI (its ``main``, its Spark
session, its error handling), where a command's work, once it has its Spark session, is
one Spark job (under ``spark_progress``) that puts the driver JVM in a fatal state at a
known moment (``FATALCLI_WORK``):

- ``ship``: what ``prepare`` of a built-in data set once did — everything shipped from
  the driver in one task: one local value of ``FATALCLI_MB`` MiB, which the driver JVM
  holds and then serializes into the task (out of heap when that is under twice the
  value);
- ``sleep``: two tasks that write their Python worker's pid to ``FATALCLI_MARKER`` and
  sleep (a job surely running while the test kills the JVM from outside);
- ``sleep-elsewhere``: that job started from another thread, while the main thread waits
  on something that is not Spark (as training waits for its workers' progress events)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any


def _ship(spark: Any) -> None:
    size = int(os.environ["FATALCLI_MB"]) << 20
    spark.sparkContext.parallelize([b"\0" * size], 1).count()


def _sleep_in_tasks(rows: Any) -> Any:
    Path(os.environ["FATALCLI_MARKER"]).write_text(str(os.getpid()))
    time.sleep(600)
    yield from rows


def _sleep(spark: Any) -> None:
    spark.sparkContext.parallelize(range(2), 2).mapPartitions(_sleep_in_tasks).count()


def _sleep_elsewhere(spark: Any) -> None:
    threading.Thread(target=_sleep, args=(spark,), daemon=True).start()
    threading.Event().wait()


def _work(spark: Any) -> None:
    from sparkvision.cli.common import spark_progress

    works = {"ship": _ship, "sleep": _sleep, "sleep-elsewhere": _sleep_elsewhere}
    with spark_progress(spark, "prepare"):
        works[os.environ["FATALCLI_WORK"]](spark)
    raise AssertionError("the job ended: the driver JVM lived through it")


def main(argv: list[str]) -> int:
    import sparkvision.cli as cli
    from sparkvision.cli import common

    real = common.spark_session

    def session_then_work(args: Any) -> Any:
        _work(real(args))

    common.spark_session = session_then_work  # type: ignore[assignment]
    for command in cli.COMMANDS:  # imported by name
        if getattr(command, "spark_session", None) is real:
            command.spark_session = session_then_work  # type: ignore[attr-defined]
    return cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
